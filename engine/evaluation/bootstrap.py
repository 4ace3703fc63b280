"""Stratified bootstrap confidence intervals for figures of pooled out-of-fold predictions.

The predictions are held fixed and the images are resampled (Efron & Tibshirani 1993, *An
Introduction to the Bootstrap*): the interval says how much a figure moves with the choice of test
images, not with retraining. Each class is resampled with replacement to its own size, so every
resample keeps the study's class mix and a rare class such as COVID-19 never drops out.

Two methods: ``percentile`` (Efron & Tibshirani ch. 13) and ``bca``, the bias-corrected and
accelerated interval (Efron 1987, *JASA* 82:171), whose acceleration comes from within-class
jackknife influence values as the stratified bootstrap requires (Davison & Hinkley 1997,
*Bootstrap Methods and their Application*, sec. 3.7). The within-class jackknife deletes one image
and re-weights the rest of its class, which needs figures that accept row weights: the
confusion-matrix figures (``confusion_bootstrap``) and AUC/AP (``discrimination``) do, so they offer
BCa; a black-box ``metrics`` callable only sees rows and gets the percentile interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

MIN_RESAMPLES = 2000
METHODS = ("percentile", "bca")
ROW_SUM_TOLERANCE = 1e-3
JACKKNIFE_BLOCK_ROWS = 512
TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Interval:
    """A point estimate on all rows and its bootstrap interval.

    ``n_resamples`` is the number of resamples the interval rests on: those where the figure was
    defined (not NaN). Undefined bounds are NaN, and ``None`` in ``to_dict``.
    """

    estimate: float
    low: float
    high: float
    method: str
    n_resamples: int
    confidence: float

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {
            "estimate": json_float(self.estimate),
            "low": json_float(self.low),
            "high": json_float(self.high),
            "method": self.method,
            "n_resamples": self.n_resamples,
            "confidence": self.confidence,
        }


def interval_text(found: dict | None, *, missing: str = "–") -> str:
    """``0.975 [0.969, 0.980]`` from an interval's ``to_dict``; the estimate alone when no resample defined the
    bounds, and ``missing`` when there is no estimate."""
    if not found or found.get("estimate") is None:
        return missing
    if found.get("low") is None:
        return f"{found['estimate']:.3f}"
    return f"{found['estimate']:.3f} [{found['low']:.3f}, {found['high']:.3f}]"


def json_float(value: float) -> float | None:
    """A float for a JSON artifact: NaN and infinities become ``None``."""
    return float(value) if math.isfinite(value) else None


def check_predictions(
    y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...] | list[str], *, proba_name: str = "proba"
) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` as int64 class indices and ``proba`` as float64 rows of probabilities, or a ValueError."""
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must name at least 2 distinct classes, got classes={tuple(classes)!r}")
    y_true = np.asarray(y_true)
    if y_true.ndim != 1 or y_true.size == 0 or not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must be a non-empty 1-D array of class indices, got shape {y_true.shape}")
    if y_true.min() < 0 or y_true.max() >= len(classes):
        raise ValueError(f"y_true must hold indices in [0, {len(classes)}), got values {np.unique(y_true).tolist()}")
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(y_true), len(classes)):
        raise ValueError(f"{proba_name} must have shape ({len(y_true)}, {len(classes)}), got {proba.shape}")
    if not np.all(np.isfinite(proba)) or proba.min() < 0 or proba.max() > 1:
        raise ValueError(f"{proba_name} must hold probabilities in [0, 1]")
    worst = float(np.max(np.abs(proba.sum(axis=1) - 1.0)))
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(f"rows of {proba_name} must sum to 1, got a row off by {worst:.3g}")
    return y_true.astype(np.int64), proba


def check_resampling(*, n_resamples: int, confidence: float, seed: int, method: str) -> None:
    """Refuse resampling options that would give a misleading interval, naming the option."""
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < MIN_RESAMPLES:
        raise ValueError(f"n_resamples must be at least {MIN_RESAMPLES}, got n_resamples={n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got confidence={confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an int so that results are reproducible, got seed={seed!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")


def stratified_resample_indices(y_true: np.ndarray, *, n_resamples: int, seed: int) -> np.ndarray:
    """A (n_resamples, n) array of row indices: each class resampled with replacement to its own size.

    Columns are grouped by class; the draws depend only on ``y_true`` and ``seed``, so every figure
    and every model of a study computed with the same seed sees the same resampled images.
    """
    rng = np.random.default_rng(seed)
    indices = np.empty((n_resamples, len(y_true)), dtype=np.intp)
    start = 0
    for k in np.unique(y_true):
        members = np.flatnonzero(y_true == k)
        draws = rng.integers(0, len(members), size=(n_resamples, len(members)), dtype=np.int32)
        indices[:, start : start + len(members)] = members[draws]
        start += len(members)
    return indices


def resample_counts(indices: np.ndarray, n_rows: int) -> np.ndarray:
    """How often each row was drawn in each resample: a (resamples, n_rows) float matrix of weights."""
    n_resamples = indices.shape[0]
    codes = (indices + (np.arange(n_resamples) * n_rows)[:, None]).ravel()
    return np.bincount(codes, minlength=n_resamples * n_rows).reshape(n_resamples, n_rows).astype(np.float64)


def jackknife_weight_blocks(strata: np.ndarray, *, block_rows: int = JACKKNIFE_BLOCK_ROWS) -> Iterator[np.ndarray]:
    """Leave-one-out weights, one row of weights per deleted image, in blocks of ``block_rows``.

    Deleting image i of class k gives it weight 0 and the other images of class k weight
    n_k / (n_k - 1), so the class keeps its size as in every stratified resample; a class of one image
    cannot be jackknifed within itself and keeps weight 1 (its influence value is 0).
    """
    sizes = np.bincount(strata).astype(np.float64)
    scale = np.where(sizes > 1, sizes / np.maximum(sizes - 1, 1), 1.0)
    for start in range(0, len(strata), block_rows):
        rows = np.arange(start, min(start + block_rows, len(strata)))
        own = strata[rows]
        weights = np.where(strata[None, :] == own[:, None], scale[own][:, None], 1.0)
        weights[np.arange(len(rows)), rows] = np.where(sizes[own] > 1, 0.0, 1.0)
        yield weights


def interval_from_replicates(
    estimate: float,
    replicates: np.ndarray,
    *,
    confidence: float,
    method: str,
    jackknife: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> Interval:
    """The interval of one figure from its bootstrap replicates; NaN replicates are left out.

    ``bca`` needs the leave-one-out values ``jackknife`` and the class of each row ``strata``. When
    BCa's bias correction is infinite (the estimate lies outside every replicate), the interval is the
    percentile one and says so in ``method``.
    """
    finite = replicates[np.isfinite(replicates)]
    if not math.isfinite(estimate) or finite.size == 0:
        return Interval(float(estimate), math.nan, math.nan, method, int(finite.size), confidence)
    tail = (1.0 - confidence) / 2.0
    levels = np.array([tail, 1.0 - tail])
    if method == "bca":
        if jackknife is None or strata is None:
            raise ValueError("method='bca' needs the leave-one-out values (jackknife) and each row's class (strata)")
        adjusted = _bca_levels(estimate, finite, levels, jackknife, strata)
        if adjusted is None:
            method = "percentile"
        else:
            levels = adjusted
    low, high = np.quantile(finite, levels)
    return Interval(float(estimate), float(low), float(high), method, int(finite.size), confidence)


def intervals_from_replicates(
    estimate: dict[str, np.ndarray],
    replicates: dict[str, np.ndarray],
    jackknife: dict[str, np.ndarray],
    *,
    confidence: float,
    method: str,
    strata: np.ndarray,
) -> dict[str, Interval]:
    """:func:`interval_from_replicates` of every figure of ``estimate`` (each figure one value in an array), with
    its leave-one-out values where ``jackknife`` has them: how the vectorised bootstraps end."""
    return {
        name: interval_from_replicates(
            float(estimate[name][0]),
            replicates[name],
            confidence=confidence,
            method=method,
            jackknife=jackknife.get(name),
            strata=strata,
        )
        for name in estimate
    }


def _bca_levels(
    estimate: float, replicates: np.ndarray, levels: np.ndarray, jackknife: np.ndarray, strata: np.ndarray
) -> np.ndarray | None:
    """BCa's adjusted quantile levels; ties with the estimate count half below (the figures are discrete)."""
    ties = np.abs(replicates - estimate) <= TIE_TOLERANCE * max(1.0, abs(estimate))
    below = np.count_nonzero((replicates < estimate) & ~ties) + 0.5 * np.count_nonzero(ties)
    proportion = below / replicates.size
    if proportion <= 0.0 or proportion >= 1.0:
        return None
    bias = ndtri(proportion)
    acceleration = _acceleration(jackknife, strata)
    z = ndtri(levels)
    denominator = 1.0 - acceleration * (bias + z)
    if np.any(denominator <= 0):
        return None
    return ndtr(bias + (bias + z) / denominator)


def _acceleration(jackknife: np.ndarray, strata: np.ndarray) -> float:
    """Skewness / 6 of the linear approximation of a stratified bootstrap (Davison & Hinkley sec. 3.7).

    With within-class influence values l = (n_k - 1)(mean_k - theta_(i)):
    a = sum_k n_k^-3 sum l^3 / (6 (sum_k n_k^-2 sum l^2)^(3/2)). Undefined leave-one-out values are left out.
    """
    third = second = 0.0
    for k in np.unique(strata):
        values = jackknife[strata == k]
        n_k = values.size
        values = values[np.isfinite(values)]
        if n_k < 2 or values.size == 0:
            continue
        influence = (n_k - 1) * (values.mean() - values)
        third += float(np.sum(influence**3)) / n_k**3
        second += float(np.sum(influence**2)) / n_k**2
    return third / (6.0 * second**1.5) if second > 0 else 0.0


def bootstrap_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    n_resamples: int = MIN_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Percentile intervals of any figures ``metrics(y_true, proba)`` returns, one call per resample.

    The figures are those of the call on all rows; a figure that is NaN or missing in a resample is
    left out of that resample. For the comparison table's figures use ``bootstrap_confusion_metrics``,
    which is the same bootstrap computed without a call per resample.
    """
    y_true, proba = check_predictions(y_true, proba, classes)
    check_resampling(n_resamples=n_resamples, confidence=confidence, seed=seed, method="percentile")
    estimate = {name: _as_float(value) for name, value in metrics(y_true, proba).items()}
    indices = stratified_resample_indices(y_true, n_resamples=n_resamples, seed=seed)
    replicates = {name: np.full(n_resamples, math.nan) for name in estimate}
    for b, rows in enumerate(indices):
        figures = metrics(y_true[rows], proba[rows])
        for name, values in replicates.items():
            values[b] = _as_float(figures.get(name))
    return {
        name: interval_from_replicates(estimate[name], replicates[name], confidence=confidence, method="percentile")
        for name in estimate
    }


def _as_float(value: float | None) -> float:
    """A figure as a float; ``None`` (undefined, as ``fold_metrics`` says it) becomes NaN."""
    return math.nan if value is None else float(value)
