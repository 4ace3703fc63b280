"""A softmax head fitted in closed form on cached features: scikit-learn's multinomial logistic regression.

The features are standardised on the training rows and each part of the pooled vector (one block's
means, or its standard deviations) is divided by the square root of its length, so that every part
weighs alike in the L2 penalty whatever its width. Logistic regression's inverse penalty ``C`` is
chosen by accuracy over stratified inner folds of the training rows, then the model is refitted on all
of them. Standardising and the logits are both affine, so the fit folds into the training mean (which the
features are centred on) and one Dense layer's kernel and bias: the saved Keras model computes what
was fitted.

With a recall floor for one class (``engine.training.protocols.RecallFloor``), the inner folds' held-out
logits at the chosen ``C`` also set an offset on that class's bias: one that brings the class's recall over
those held-out images to the floor, midway to the next image it would find.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

MAX_ITER = 3000


@dataclass(frozen=True)
class LinearHead:
    """What was fitted: the features' centre (D,), the Dense kernel (D, K) and bias (K,) on centred features,
    and how ``C`` was chosen."""

    center: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    choice: dict
    history_logs: dict

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return softmax(_logits(features, self.center, self.kernel, self.bias), axis=1)


def _logits(features: np.ndarray, center: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return (np.asarray(features, dtype=np.float64) - center) @ kernel + bias


def _scaling(features: np.ndarray, segments: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Per feature: the mean to subtract and the factor to multiply by after."""
    mean = features.mean(axis=0)
    sd = features.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    weight = np.ones(features.shape[1]) if segments is None else np.repeat(1 / np.sqrt(segments), segments)
    if len(weight) != features.shape[1]:
        raise ValueError(f"segments must add up to the {features.shape[1]} features, got {sum(segments)}")
    return mean, weight / sd


def _fit(x, y, sample_weight, *, c: float, n_classes: int, segments: list[int] | None):
    """Centre (D,), kernel (D, K) and bias (K,) of one logistic regression."""
    center, scale = _scaling(x, segments)
    model = LogisticRegression(C=c, max_iter=MAX_ITER)
    model.fit((x - center) * scale, y, sample_weight=sample_weight)
    if len(model.classes_) != n_classes:
        raise ValueError(f"the training rows hold {len(model.classes_)} of the {n_classes} classes")
    return center, (model.coef_ * scale).T, model.intercept_


def fit_linear_head(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    segments: list[int] | None,
    grid: tuple[float, ...],
    inner_folds: int,
    n_classes: int,
    seed: int,
    sample_weight: np.ndarray | None = None,
    should_stop: Callable[[], bool] | None = None,
    groups: np.ndarray | None = None,
    recall_floor: tuple[int, float] | None = None,
    scored: np.ndarray | None = None,
    floor_sources: np.ndarray | None = None,
) -> LinearHead | None:
    """The head fitted on ``features`` (N, D) of the training rows; None when ``should_stop`` asked to stop.

    With ``groups`` (a patient per row), the inner folds that choose ``C`` keep each patient on one side.
    ``recall_floor`` (class index, recall) adds to that class's bias the offset that brings the inner folds' models
    to that recall over their held-out rows (:func:`logit_offset_for_recall`); the head refitted on every row
    gets it. ``scored`` (a boolean per row) says which rows count there (the images as they are, not their
    augmented views), all of them when None. With ``floor_sources`` (a source index per row) the floor is met in
    each source that has rows of the class: the largest of their offsets is added, each source's kept in the choice.
    """
    if not grid:
        raise ValueError("grid must hold at least one C, got an empty grid")
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if groups is None:
        splits = StratifiedKFold(n_splits=inner_folds, shuffle=True, random_state=seed).split(x, y)
    else:
        splits = StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed).split(x, y, groups)
    scores: dict[float, list[float]] = {c: [] for c in grid}
    held_out = {c: np.zeros((len(y), n_classes)) for c in grid}
    for fit_rows, check_rows in splits:
        for c in grid:
            if should_stop and should_stop():
                return None
            w = None if sample_weight is None else sample_weight[fit_rows]
            center, kernel, bias = _fit(x[fit_rows], y[fit_rows], w, c=c, n_classes=n_classes, segments=segments)
            held_out[c][check_rows] = _logits(x[check_rows], center, kernel, bias)
            scores[c].append(float((held_out[c][check_rows].argmax(axis=1) == y[check_rows]).mean()))
    mean_scores = {c: float(np.mean(v)) for c, v in scores.items()}
    best = max(grid, key=lambda c: (mean_scores[c], -c))
    center, kernel, bias = _fit(x, y, sample_weight, c=best, n_classes=n_classes, segments=segments)
    point = None
    if recall_floor is not None:
        rows = np.ones(len(y), dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
        if rows.shape != y.shape:
            raise ValueError(f"scored must hold one flag per row ({len(y)}), got {rows.shape[0]}")
        point = _floor_point(held_out[best], y, rows, floor_sources, recall_floor)
        bias = bias + np.eye(n_classes)[recall_floor[0]] * point["logit_offset"]
    proba = softmax(_logits(x, center, kernel, bias), axis=1)
    logs = {
        "loss": float(log_loss(y, proba, labels=list(range(n_classes)))),
        "accuracy": float((proba.argmax(axis=1) == y).mean()),
    }
    choice = {
        "C": best,
        "inner_folds": inner_folds,
        "inner_accuracy": {str(c): round(v, 5) for c, v in mean_scores.items()},
        **({"recall_floor": point} if point else {}),
    }
    return LinearHead(center=center, kernel=kernel, bias=bias, choice=choice, history_logs=logs)


def _floor_point(
    logits: np.ndarray, y: np.ndarray, rows: np.ndarray, sources: np.ndarray | None, floor: tuple[int, float]
) -> dict:
    """The recall floor's offset over the scored ``rows`` or, with ``sources``, the largest of the offsets of the
    sources that have the class, with each source's recall before and after the offset applied."""
    target, recall = floor
    if sources is None:
        return logit_offset_for_recall(logits[rows], y[rows], target=target, recall=recall)
    sources = np.asarray(sources)
    if sources.shape != y.shape:
        raise ValueError(f"floor_sources must hold one source per row ({len(y)}), got {sources.shape[0]}")
    overall = logit_offset_for_recall(logits[rows], y[rows], target=target, recall=recall)
    own = {int(s): rows & (sources == s) for s in np.unique(sources[rows & (y == target)])}
    points = {s: logit_offset_for_recall(logits[m], y[m], target=target, recall=recall) for s, m in own.items()}
    offset = max(point["logit_offset"] for point in points.values())
    return {
        **overall,
        "logit_offset": offset,
        "inner_recall_after": _recall_at(logits[rows], y[rows], target, offset),
        "by_source": {
            str(s): {
                "inner_recall": points[s]["inner_recall"],
                "inner_recall_after": _recall_at(logits[m], y[m], target, offset),
            }
            for s, m in own.items()
        },
    }


def _recall_at(logits: np.ndarray, labels: np.ndarray, target: int, offset: float) -> float:
    """The recall of ``target`` (argmax) once ``offset`` is added to its logit."""
    rows = labels == target
    shifted = logits[rows] + offset * np.eye(logits.shape[1])[target]
    return round(float((shifted.argmax(axis=1) == target).mean()), 5)


def logit_offset_for_recall(logits: np.ndarray, labels: np.ndarray, *, target: int, recall: float) -> dict:
    """The offset to add to class ``target``'s logit so that at least ``recall`` of its rows in ``logits`` (N, K)
    are predicted as it (argmax): midway between the margin of the last of them it must find and the next one's,
    so that a head refitted on more rows keeps the choice; 0 when they already are. Returns the offset and the
    recall before and after it."""
    if not 0.0 < recall < 1.0:
        raise ValueError(f"recall must be in (0, 1), got recall={recall!r}")
    if not 0 <= target < logits.shape[1]:
        raise ValueError(f"target must index one of the {logits.shape[1]} classes, got target={target!r}")
    rows = labels == target
    if not rows.any():
        raise ValueError(f"no row has class {target}, so its recall floor cannot be met (target={target!r})")
    others = np.delete(logits[rows], target, axis=1).max(axis=1)
    margin = np.sort(others - logits[rows, target])
    needed = max(1, int(np.ceil(recall * len(margin) - 1e-9)))
    last = margin[needed - 1]
    beyond = margin[needed] if needed < len(margin) else last
    offset = 0.0 if last < 0 else float(max((last + beyond) / 2, last + 1e-6))

    return {
        "target": int(target),
        "inner_recall_floor": recall,
        "inner_recall": _recall_at(logits, labels, target, 0.0),
        "logit_offset": offset,
        "inner_recall_after": _recall_at(logits, labels, target, offset),
    }
