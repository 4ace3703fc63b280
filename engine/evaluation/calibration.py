"""Do the probabilities mean what they say? Reliability, calibration error, Brier score, temperature.

A model that says "97 % COVID-19" should be right 97 % of the time it says so. The reliability
curve bins the predicted probability and sets the observed frequency beside it; the expected
calibration error (ECE) is the count-weighted mean gap over the bins (Naeini, Cooper & Hauskrecht
2015, AAAI), per class one-vs-rest and for the top label, the argmax class's probability against
whether it was right (Guo, Pleiss, Sun & Weinberger 2017, ICML). The Brier score (Brier 1950) is
the mean squared distance to the one-hot truth, calibration and sharpness together.

Temperature scaling (Guo et al. 2017) divides the logits by one T > 0 fitted by maximum likelihood:
T > 1 softens an over-confident model, and argmax, hence accuracy, never changes. Only
probabilities are saved, so the logits are log-probabilities (softmax is blind to the constant
between them). Fitting T on the predictions it is then applied to flatters the result, so
``cross_fitted_temperature`` fits fold k's T on the other folds' out-of-fold predictions only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from engine.evaluation.bootstrap import check_predictions, json_float
from engine.evaluation.metrics import EPSILON

STRATEGIES = ("uniform", "quantile")
INPUTS = ("probabilities", "logits")
TEMPERATURE_BOUNDS = (0.05, 20.0)
TOP_LABEL = "top label"


@dataclass(frozen=True)
class ReliabilityCurve:
    """Binned predicted probability against observed frequency for one class (or the top label).

    Bins are [lower, upper), the last one closed; an empty bin has count 0 and None for its means.
    ``brier`` is the mean squared gap between the probability and the 0/1 outcome.
    """

    label: str
    bin_lower: list[float]
    bin_upper: list[float]
    count: list[int]
    mean_predicted: list[float | None]
    observed_frequency: list[float | None]
    ece: float
    brier: float


@dataclass(frozen=True)
class Reliability:
    """Per-class curves, the top-label curve, and the multiclass Brier score (the sum of the per-class ones)."""

    strategy: str
    n_bins: int
    per_class: list[ReliabilityCurve]
    top_label: ReliabilityCurve
    brier: float

    def to_dict(self) -> dict:
        return asdict(self)


def reliability(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    n_bins: int = 10,
    strategy: str = "uniform",
) -> Reliability:
    """Reliability curves and ECE per class (one-vs-rest) and for the top label, and Brier scores.

    ``uniform`` bins split [0, 1] in equal widths; ``quantile`` bins hold about equal counts of each
    curve's own probabilities (tied quantiles merge bins, so there may be fewer than ``n_bins``).
    """
    y_true, proba = check_predictions(y_true, proba, classes)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got n_bins={n_bins!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got strategy={strategy!r}")
    onehot = np.eye(len(classes))[y_true]
    per_class = [
        _curve(name, proba[:, k], onehot[:, k], n_bins=n_bins, strategy=strategy) for k, name in enumerate(classes)
    ]
    predicted = proba.argmax(axis=1)
    correct = (predicted == y_true).astype(np.float64)
    top_label = _curve(TOP_LABEL, proba.max(axis=1), correct, n_bins=n_bins, strategy=strategy)
    brier = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))
    return Reliability(strategy=strategy, n_bins=n_bins, per_class=per_class, top_label=top_label, brier=brier)


def _bin_edges(score: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.unique(np.quantile(score, np.linspace(0.0, 1.0, n_bins + 1)))
    return edges if len(edges) > 1 else np.repeat(edges, 2)


def _curve(label: str, score: np.ndarray, outcome: np.ndarray, *, n_bins: int, strategy: str) -> ReliabilityCurve:
    edges = _bin_edges(score, n_bins, strategy)
    n_edges_bins = len(edges) - 1
    bins = np.searchsorted(edges[1:-1], score, side="right")
    count = np.bincount(bins, minlength=n_edges_bins)
    predicted_sum = np.bincount(bins, weights=score, minlength=n_edges_bins)
    observed_sum = np.bincount(bins, weights=outcome, minlength=n_edges_bins)
    filled = count > 0
    mean_predicted = np.divide(predicted_sum, count, out=np.full(n_edges_bins, math.nan), where=filled)
    observed = np.divide(observed_sum, count, out=np.full(n_edges_bins, math.nan), where=filled)
    ece = float(np.sum(count[filled] * np.abs(observed[filled] - mean_predicted[filled])) / len(score))
    return ReliabilityCurve(
        label=label,
        bin_lower=edges[:-1].tolist(),
        bin_upper=edges[1:].tolist(),
        count=count.tolist(),
        mean_predicted=[json_float(v) for v in mean_predicted],
        observed_frequency=[json_float(v) for v in observed],
        ece=ece,
        brier=float(np.mean((score - outcome) ** 2)),
    )


def _logits(logits_or_proba: np.ndarray, inputs: str) -> np.ndarray:
    """Logits as float64; probabilities become log-probabilities, floored at Keras' clipping epsilon."""
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}, got inputs={inputs!r}")
    values = np.asarray(logits_or_proba, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] < 2 or not np.all(np.isfinite(values)):
        raise ValueError(f"logits_or_proba must be a finite (n, C) array, n >= 1, C >= 2, got shape {values.shape}")
    if inputs == "logits":
        return values
    if values.min() < 0 or values.max() > 1 or np.max(np.abs(values.sum(axis=1) - 1.0)) > 1e-3:
        raise ValueError("logits_or_proba must hold rows of probabilities when inputs='probabilities'")
    return np.log(np.clip(values, EPSILON, 1.0))


def apply_temperature(logits_or_proba: np.ndarray, temperature: float, *, inputs: str = "probabilities") -> np.ndarray:
    """softmax(logits / T): the probabilities after temperature scaling."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got temperature={temperature!r}")
    return softmax(_logits(logits_or_proba, inputs) / temperature, axis=1)


def fit_temperature(logits_or_proba: np.ndarray, y_true: np.ndarray, *, inputs: str = "probabilities") -> float:
    """The T in ``TEMPERATURE_BOUNDS`` that minimises the mean negative log-likelihood of softmax(logits / T).

    The NLL is convex in 1/T, so a bounded scalar search over log T finds the minimum; T ends on a
    bound when the data push it there (e.g. every prediction right with a margin drives T to its floor).
    """
    logits = _logits(logits_or_proba, inputs)
    y_true = np.asarray(y_true)
    if y_true.shape != (len(logits),) or not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold one class index per row, got shape {y_true.shape}")
    if len(y_true) == 0 or y_true.min() < 0 or y_true.max() >= logits.shape[1]:
        raise ValueError(f"y_true must hold indices in [0, {logits.shape[1]}), got {np.unique(y_true).tolist()}")
    rows = np.arange(len(y_true))

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / math.exp(log_t), axis=1)[rows, y_true]))

    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def cross_fitted_temperature(
    y_true: np.ndarray, proba: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, dict[int, float]]:
    """Temperature-scaled out-of-fold probabilities, each fold scaled by a T fitted on the other folds only.

    Returns the calibrated probabilities (same order as ``proba``) and the temperature applied to each fold.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"proba must be an (n, C) array, got shape {proba.shape}")
    y_true, proba = check_predictions(y_true, proba, [str(k) for k in range(proba.shape[1])])
    folds = np.asarray(folds)
    if folds.shape != y_true.shape or not np.issubdtype(folds.dtype, np.integer):
        raise ValueError(f"folds must be 1-D fold indices, one per row of y_true, got shape {folds.shape}")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got folds {fold_ids.tolist()}")
    calibrated = np.empty_like(proba)
    temperatures: dict[int, float] = {}
    for fold in fold_ids:
        held_out = folds == fold
        temperature = fit_temperature(proba[~held_out], y_true[~held_out])
        calibrated[held_out] = apply_temperature(proba[held_out], temperature)
        temperatures[int(fold)] = temperature
    return calibrated, temperatures
