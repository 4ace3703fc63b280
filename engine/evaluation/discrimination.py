"""How well each class is ranked above the others: one-vs-rest ROC and precision-recall curves.

Curves of the pooled out-of-fold predictions mix the k fold models, whose scores need not be on the
same scale; the per-fold curves show each model on its own test fold, and their spread is the
training variability the pooled curve hides. A curve is positive at ``score >= threshold``
(sklearn's rule). Every point carries its threshold, sensitivity and specificity so that a chart can
show them on hover.

AUC and average-precision intervals use the stratified bootstrap of ``bootstrap``, with the same
seeded resamples as the confusion-matrix figures, computed for all resamples at once from
weighted cumulative counts instead of one sklearn call per resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from engine.evaluation.bootstrap import (
    MIN_RESAMPLES,
    Interval,
    check_predictions,
    check_resampling,
    intervals_from_replicates,
    jackknife_weight_blocks,
    json_float,
    resample_counts,
    stratified_resample_indices,
)

WEIGHT_BLOCK_ROWS = 256


@dataclass(frozen=True)
class RocCurve:
    """One class against the rest; ``fold`` is None for the pooled curve. ``tpr`` is the sensitivity.

    ``thresholds[0]`` is None: the point (0, 0) where no image is called positive.
    """

    class_name: str
    fold: int | None
    thresholds: list[float | None]
    fpr: list[float]
    tpr: list[float]
    specificity: list[float]
    auc: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PrCurve:
    """One class against the rest, in sklearn's order (threshold rising). ``recall`` is the sensitivity.

    The last point (recall 0, precision 1) has no threshold: None.
    """

    class_name: str
    fold: int | None
    thresholds: list[float | None]
    precision: list[float]
    recall: list[float]
    specificity: list[float]
    average_precision: float
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MissingCurve:
    """A curve that cannot be drawn: the class has no positive or no negative image in that fold."""

    class_name: str
    fold: int | None
    reason: str


@dataclass(frozen=True)
class CurveSet:
    """Pooled curves (one per class present), per-fold curves (by fold, then class), and the missing ones."""

    pooled: list[RocCurve] | list[PrCurve]
    per_fold: list[RocCurve] | list[PrCurve]
    missing: list[MissingCurve]

    def to_dict(self) -> dict:
        return {
            "pooled": [curve.to_dict() for curve in self.pooled],
            "per_fold": [curve.to_dict() for curve in self.per_fold],
            "missing": [asdict(gap) for gap in self.missing],
        }


def roc_curves(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    folds: np.ndarray | None = None,
) -> CurveSet:
    """One-vs-rest ROC curve and AUC of each class, pooled and, when ``folds`` is given, per fold."""

    def curve(name: str, fold: int | None, positive: np.ndarray, score: np.ndarray) -> RocCurve:
        fpr, tpr, thresholds = roc_curve(positive, score, drop_intermediate=True)
        return RocCurve(
            class_name=name,
            fold=fold,
            thresholds=[json_float(t) for t in thresholds],
            fpr=fpr.tolist(),
            tpr=tpr.tolist(),
            specificity=(1.0 - fpr).tolist(),
            auc=float(auc(fpr, tpr)),
            n_positive=int(positive.sum()),
            n_negative=int((~positive).sum()),
        )

    return _curve_set(y_true, proba, classes, folds, curve)


def pr_curves(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    folds: np.ndarray | None = None,
) -> CurveSet:
    """One-vs-rest precision-recall curve and average precision of each class, pooled and per fold.

    Average precision is sklearn's step-wise sum, precision times the recall each threshold adds (no
    trapezoids, which overstate it); its chance level is the class's prevalence, not 0.5.
    """

    def curve(name: str, fold: int | None, positive: np.ndarray, score: np.ndarray) -> PrCurve:
        precision, recall, thresholds = precision_recall_curve(positive, score, drop_intermediate=True)
        negatives = np.sort(score[~positive])
        false_positives = len(negatives) - np.searchsorted(negatives, thresholds, side="left")
        specificity = 1.0 - false_positives / len(negatives)
        return PrCurve(
            class_name=name,
            fold=fold,
            thresholds=[*thresholds.tolist(), None],
            precision=precision.tolist(),
            recall=recall.tolist(),
            specificity=[*specificity.tolist(), 1.0],
            average_precision=float(average_precision_score(positive, score)),
            n_positive=int(positive.sum()),
            n_negative=len(negatives),
        )

    return _curve_set(y_true, proba, classes, folds, curve)


def _curve_set(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    folds: np.ndarray | None,
    curve: Callable[[str, int | None, np.ndarray, np.ndarray], RocCurve | PrCurve],
) -> CurveSet:
    """Call ``curve`` for every class, pooled and per fold, where the class has positives and negatives."""
    y_true, proba = check_predictions(y_true, proba, classes)
    groups: list[tuple[int | None, np.ndarray]] = [(None, np.arange(len(y_true)))]
    if folds is not None:
        folds = np.asarray(folds)
        if folds.shape != y_true.shape or not np.issubdtype(folds.dtype, np.integer):
            raise ValueError(f"folds must be 1-D fold indices, one per row of y_true, got shape {folds.shape}")
        groups += [(int(fold), np.flatnonzero(folds == fold)) for fold in np.unique(folds)]
    pooled, per_fold, missing = [], [], []
    for fold, rows in groups:
        for k, name in enumerate(classes):
            positive = y_true[rows] == k
            if not positive.any() or positive.all():
                reason = "no image of this class" if not positive.any() else "no image of another class"
                missing.append(MissingCurve(class_name=name, fold=fold, reason=reason))
                continue
            (pooled if fold is None else per_fold).append(curve(name, fold, positive, proba[rows, k]))
    return CurveSet(pooled=pooled, per_fold=per_fold, missing=missing)


def weighted_auc_and_ap(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision for each row of a (m, n) weight matrix over the n images.

    With bootstrap counts as weights this is AUC/AP of each resample, as sklearn computes them on the
    resampled rows: AUC is the Mann-Whitney probability that a positive outranks a negative, ties
    counting one half; AP sums precision at each distinct threshold times the recall it adds.
    """
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    group_ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    is_positive = positive[order]
    ranked_weights = weights[:, order]
    tp = np.cumsum(ranked_weights * is_positive, axis=1)[:, group_ends]
    fp = np.cumsum(ranked_weights * ~is_positive, axis=1)[:, group_ends]
    new_tp = np.diff(tp, axis=1, prepend=0.0)
    new_fp = np.diff(fp, axis=1, prepend=0.0)
    n_positive, n_negative = tp[:, -1], fp[:, -1]
    outranked = n_negative[:, None] - fp + 0.5 * new_fp
    roc_auc = np.sum(new_tp * outranked, axis=1) / (n_positive * n_negative)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    average_precision = np.sum(new_tp * precision, axis=1) / n_positive
    return roc_auc, average_precision


def discrimination_intervals(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    n_resamples: int = MIN_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> dict[str, Interval]:
    """Bootstrap intervals of ``roc_auc[<class>]`` and ``average_precision[<class>]``, and of their means
    over the classes present, ``roc_auc`` (as ``flat_metrics`` has it) and ``average_precision``.

    A class with no image, or with every image, has no AUC: its intervals are NaN on 0 resamples.
    """
    y_true, proba = check_predictions(y_true, proba, classes)
    check_resampling(n_resamples=n_resamples, confidence=confidence, seed=seed, method=method)
    counts = resample_counts(stratified_resample_indices(y_true, n_resamples=n_resamples, seed=seed), len(y_true))
    count_blocks = np.array_split(counts, math.ceil(n_resamples / WEIGHT_BLOCK_ROWS))
    everything = np.ones((1, len(y_true)))
    undefined = np.full(n_resamples, math.nan)
    estimate: dict[str, np.ndarray] = {}
    replicates: dict[str, np.ndarray] = {}
    jackknife: dict[str, np.ndarray] = {}
    present = []
    for k, name in enumerate(classes):
        positive = y_true == k
        auc_key, ap_key = f"roc_auc[{name}]", f"average_precision[{name}]"
        if not positive.any() or positive.all():
            estimate[auc_key] = estimate[ap_key] = np.array([math.nan])
            replicates[auc_key] = replicates[ap_key] = undefined
            continue
        present.append(name)
        score = proba[:, k]
        estimate[auc_key], estimate[ap_key] = weighted_auc_and_ap(positive, score, everything)
        replicates[auc_key], replicates[ap_key] = _stack(positive, score, count_blocks)
        if method == "bca":
            jackknife[auc_key], jackknife[ap_key] = _stack(positive, score, jackknife_weight_blocks(y_true))
    for key in ("roc_auc", "average_precision"):
        keys = [f"{key}[{name}]" for name in present]
        estimate[key] = np.mean([estimate[k] for k in keys], axis=0) if keys else np.array([math.nan])
        replicates[key] = np.mean([replicates[k] for k in keys], axis=0) if keys else undefined
        if jackknife and keys:
            jackknife[key] = np.mean([jackknife[k] for k in keys], axis=0)
    return intervals_from_replicates(
        estimate, replicates, jackknife, confidence=confidence, method=method, strata=y_true
    )


def _stack(positive: np.ndarray, score: np.ndarray, blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``weighted_auc_and_ap`` over blocks of weight rows, concatenated, to bound memory."""
    parts = [weighted_auc_and_ap(positive, score, block) for block in blocks]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
