"""Stratified k-fold splits, checked before any work and saved with the study."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold


def check_folds(labels: np.ndarray, classes: tuple[str, ...], *, n_splits: int) -> None:
    """Refuse a fold count the smallest class cannot fill, naming both numbers."""
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


def stratified_folds(labels: np.ndarray, classes: tuple[str, ...], *, n_splits: int, seed: int) -> list[list[int]]:
    """Held-out indices of each fold (shuffled, seeded); the training set is the rest."""
    check_folds(labels, classes, n_splits=n_splits)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [sorted(test.tolist()) for _, test in splitter.split(np.zeros(len(labels)), labels)]


def train_indices(test: list[int], n: int) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask)


def inner_split(train: np.ndarray, labels: np.ndarray, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``train`` split into (fit, validation) rows, stratified and seeded: the inner split that picks an epoch.

    At least one image of each class is validated on, however small ``fraction`` of a small set is.
    """
    from sklearn.model_selection import train_test_split

    size = max(round(fraction * len(train)), len(np.unique(labels[train])))
    fit, validation = train_test_split(train, test_size=size, stratify=labels[train], random_state=seed)
    return np.sort(fit), np.sort(validation)
