"""Stratified k-fold splits, checked before any work and saved with the study.

Two levels: ``"image"`` (the paper's: images are dealt to folds one by one, so two films of one child
can sit on both sides) and ``"patient"`` (scikit-learn's ``StratifiedGroupKFold``: every image of a
patient in one fold). Inner splits (the epoch a fine-tuning keeps, a logistic head's ``C``) follow the
study's level, so model selection never sees a test patient either.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold


def check_folds(
    labels: np.ndarray, classes: tuple[str, ...], *, n_splits: int, groups: np.ndarray | None = None
) -> None:
    """Refuse a fold count the smallest class cannot fill (in patients, with ``groups``), naming both numbers."""
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got n_splits={n_splits!r}")
    counts = np.bincount(labels, minlength=len(classes))
    smallest = int(counts.min())
    if n_splits > smallest:
        name = classes[int(counts.argmin())]
        raise ValueError(
            f"n_splits={n_splits} cannot be greater than the number of members in each class: "
            f"class {name!r} has {smallest} image(s)"
        )
    if groups is None:
        return
    patients = [len(set(groups[labels == k])) for k in range(len(classes))]
    k = int(np.argmin(patients))
    if n_splits > patients[k]:
        raise ValueError(
            f"n_splits={n_splits} cannot be greater than the number of patients in each class: "
            f"class {classes[k]!r} has {patients[k]} patient(s) in {int(counts[k])} image(s); "
            "use fewer folds or --split image"
        )


def stratified_folds(
    labels: np.ndarray,
    classes: tuple[str, ...],
    *,
    n_splits: int,
    seed: int,
    groups: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> list[list[int]]:
    """Held-out indices of each fold (shuffled, seeded); the training set is the rest.

    With ``groups`` (a patient per image) every patient's images share a fold; ``strata`` (default the
    labels) is what each fold keeps in proportion, such as source and class together.
    """
    check_folds(labels, classes, n_splits=n_splits, groups=groups)
    y = labels if strata is None else strata
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [sorted(test.tolist()) for _, test in splitter.split(np.zeros(len(labels)), y)]
    grouped = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [sorted(test.tolist()) for _, test in grouped.split(np.zeros(len(labels)), y, groups)]


def patients_across_folds(folds: list[list[int]], patients: list[str] | tuple[str, ...]) -> dict[str, int]:
    """How many patients have images in more than one fold, and how many images those are: 0 at patient level."""
    fold_of: dict[str, set[int]] = {}
    for k, rows in enumerate(folds):
        for i in rows:
            fold_of.setdefault(patients[i], set()).add(k)
    spread = {p for p, ks in fold_of.items() if len(ks) > 1}
    sizes = Counter(patients)
    return {"patients": len(spread), "images": sum(sizes[p] for p in spread)}


def train_indices(test: list[int], n: int) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask)


def inner_split(
    train: np.ndarray, labels: np.ndarray, *, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``train`` split into (fit, validation) rows, stratified and seeded: the inner split that picks an epoch.

    At least one image of each class is validated on, however small ``fraction`` of a small set is. With
    ``groups``, whole patients go to one side: the validation rows are one of ``round(1 / fraction)``
    stratified patient folds of ``train``.
    """
    if groups is not None:
        n_splits = max(2, round(1 / fraction))
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        fit, validation = next(splitter.split(train, labels[train], groups[train]))
        return np.sort(train[fit]), np.sort(train[validation])
    from sklearn.model_selection import train_test_split

    size = max(round(fraction * len(train)), len(np.unique(labels[train])))
    fit, validation = train_test_split(train, test_size=size, stratify=labels[train], random_state=seed)
    return np.sort(fit), np.sort(validation)
