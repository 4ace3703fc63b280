"""Bootstrap intervals of the confusion-matrix figures (the comparison table's, without AUC), alone or as the
paired difference of two models on the same images; the resampling and interval rules are ``bootstrap``'s.

Speed: every confusion-based figure is a function of sums of per-row terms (the row's
confusion-matrix cell, the paper's one-hot decisions, its log-loss term), so all resamples are
summed at once: one ``np.bincount`` of (resample, cell) codes gives the (resamples, C, C) confusion
matrices, and gathers of the other terms by the (resamples, rows) index array give the rest. No
BLAS call: matrix products with a few columns are slow on cores shared with other work.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from engine.evaluation.bootstrap import (
    MIN_RESAMPLES,
    Interval,
    check_predictions,
    check_resampling,
    interval_from_replicates,
    intervals_from_replicates,
    stratified_resample_indices,
)
from engine.evaluation.metrics import EPSILON

PAPER_THRESHOLD = 0.5


def confusion_metric_names(classes: tuple[str, ...] | list[str]) -> list[str]:
    """The names ``bootstrap_confusion_metrics`` returns, as ``flat_metrics`` spells them (without AUC)."""
    names = ["accuracy", "loss", "precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1"]
    for name in classes:
        names += [f"{key}[{name}]" for key in ("precision", "recall", "f1", "specificity")]
    return names


def bootstrap_confusion_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    n_resamples: int = MIN_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> dict[str, Interval]:
    """Intervals of every figure of the comparison table but AUC, keyed as ``flat_metrics`` names them.

    The figures follow ``engine.evaluation.metrics`` exactly: the paper's pooled one-hot
    precision/recall/F1 at 0.5, sklearn's per-class figures with zero_division=0, Keras' clipped loss.
    """
    y_true, proba = check_predictions(y_true, proba, classes)
    check_resampling(n_resamples=n_resamples, confidence=confidence, seed=seed, method=method)
    terms = _AdditiveTerms.of(y_true, proba)
    indices = stratified_resample_indices(y_true, n_resamples=n_resamples, seed=seed)
    estimate = _confusion_figures(terms.total(), classes)
    replicates = _confusion_figures(terms.resampled(indices), classes)
    jackknife = _confusion_figures(terms.jackknife(y_true), classes) if method == "bca" else {}
    return intervals_from_replicates(
        estimate, replicates, jackknife, confidence=confidence, method=method, strata=y_true
    )


def bootstrap_difference(
    y_true: np.ndarray,
    proba_a: np.ndarray,
    proba_b: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    metric: str,
    n_resamples: int = MIN_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> Interval:
    """Paired interval of ``metric`` of model A minus model B on the same images.

    Both models are scored on the same resampled rows, so what the images have in common cancels out
    and the interval is narrower than two separate intervals suggest. ``metric`` is one of
    ``confusion_metric_names(classes)``.
    """
    y_true, proba_a = check_predictions(y_true, proba_a, classes, proba_name="proba_a")
    _, proba_b = check_predictions(y_true, proba_b, classes, proba_name="proba_b")
    check_resampling(n_resamples=n_resamples, confidence=confidence, seed=seed, method=method)
    names = confusion_metric_names(classes)
    if metric not in names:
        raise ValueError(f"metric must be one of {names}, got metric={metric!r}")
    terms_a, terms_b = _AdditiveTerms.of(y_true, proba_a), _AdditiveTerms.of(y_true, proba_b)
    indices = stratified_resample_indices(y_true, n_resamples=n_resamples, seed=seed)

    def difference(sums_a: np.ndarray, sums_b: np.ndarray) -> np.ndarray:
        return _confusion_figures(sums_a, classes)[metric] - _confusion_figures(sums_b, classes)[metric]

    estimate = difference(terms_a.total(), terms_b.total())
    replicates = difference(terms_a.resampled(indices), terms_b.resampled(indices))
    jackknife = difference(terms_a.jackknife(y_true), terms_b.jackknife(y_true)) if method == "bca" else None
    return interval_from_replicates(
        float(estimate[0]), replicates, confidence=confidence, method=method, jackknife=jackknife, strata=y_true
    )


@dataclass(frozen=True)
class _AdditiveTerms:
    """Each row's additive terms: its confusion-matrix cell (true * C + predicted) and, in ``extras``,
    the paper's true-positive and false-positive one-hot cells at 0.5 and its clipped log-loss term.

    Sums are (m, C*C + 3): the C*C cell counts, then the sums of the three extras.
    """

    cell: np.ndarray
    extras: np.ndarray
    n_cells: int

    @classmethod
    def of(cls, y_true: np.ndarray, proba: np.ndarray) -> _AdditiveTerms:
        n, c = proba.shape
        rows = np.arange(n)
        above = proba > PAPER_THRESHOLD
        paper_tp = above[rows, y_true]
        paper_fp = above.sum(axis=1) - paper_tp
        log_loss = -np.log(np.clip(proba[rows, y_true], EPSILON, 1.0 - EPSILON))
        extras = np.column_stack([paper_tp, paper_fp, log_loss]).astype(np.float64)
        return cls(cell=y_true * c + proba.argmax(axis=1), extras=extras, n_cells=c * c)

    @cached_property
    def dense(self) -> np.ndarray:
        """The terms as an (n, C*C + 3) matrix, the cell one-hot."""
        cells = np.zeros((len(self.cell), self.n_cells))
        cells[np.arange(len(self.cell)), self.cell] = 1.0
        return np.hstack([cells, self.extras])

    def total(self) -> np.ndarray:
        return self.dense.sum(axis=0, keepdims=True)

    def resampled(self, indices: np.ndarray) -> np.ndarray:
        """The sums over the rows of each resample (one row of ``indices`` each)."""
        n_resamples = len(indices)
        codes = self.cell[indices] + (np.arange(n_resamples) * self.n_cells)[:, None]
        counts = np.bincount(codes.ravel(), minlength=n_resamples * self.n_cells).reshape(n_resamples, -1)
        return np.column_stack([counts, *(column[indices].sum(axis=1) for column in self.extras.T)])

    def jackknife(self, strata: np.ndarray) -> np.ndarray:
        """Leave-one-out sums with the weights of ``jackknife_weight_blocks``, one row per deleted image."""
        sizes = np.bincount(strata)
        class_sums = np.stack([self.dense[strata == k].sum(axis=0) for k in range(len(sizes))])
        own = class_sums[strata]
        scale = (sizes / np.maximum(sizes - 1, 1))[strata][:, None]
        deleted = self.total() - own + scale * (own - self.dense)
        return np.where((sizes[strata] > 1)[:, None], deleted, self.total())


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den is 0 (sklearn's zero_division=0, the metrics module's _safe_div)."""
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _confusion_figures(sums: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict[str, np.ndarray]:
    """Every confusion-based figure from (m, C*C + 3) sums of ``_AdditiveTerms``, one value per row of sums."""
    c = len(classes)
    cm = sums[:, : c * c].reshape(-1, c, c)
    paper_tp, paper_fp, log_loss = sums[:, c * c], sums[:, c * c + 1], sums[:, c * c + 2]
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    actual, predicted = cm.sum(axis=2), cm.sum(axis=1)
    tn = total[:, None] - actual - predicted + tp
    precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
    f1 = _ratio(2.0 * tp, actual + predicted)
    specificity = _ratio(tn, tn + predicted - tp)
    paper_precision = _ratio(paper_tp, paper_tp + paper_fp)
    paper_recall = _ratio(paper_tp, total)
    figures = {
        "accuracy": _ratio(tp.sum(axis=1), total),
        "loss": _ratio(log_loss, total),
        "precision": paper_precision,
        "recall": paper_recall,
        "f1": _ratio(2.0 * paper_precision * paper_recall, paper_precision + paper_recall),
        "macro_precision": precision.mean(axis=1),
        "macro_recall": recall.mean(axis=1),
        "macro_f1": f1.mean(axis=1),
    }
    for k, name in enumerate(classes):
        figures[f"precision[{name}]"] = precision[:, k]
        figures[f"recall[{name}]"] = recall[:, k]
        figures[f"f1[{name}]"] = f1[:, k]
        figures[f"specificity[{name}]"] = specificity[:, k]
    return figures
