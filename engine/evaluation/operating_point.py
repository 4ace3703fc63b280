"""One class as a yes/no test: thresholds for a target sensitivity or specificity, and what they give.

The rule everywhere: an image is called positive when ``score >= threshold``, the score being the
class's probability (one-vs-rest). Thresholds are chosen among the observed scores, so every
operating point calls at least one image positive:

- ``threshold_for_sensitivity``: the highest threshold whose sensitivity reaches the target. Raising
  the threshold never raises sensitivity, so this is the most specific threshold that meets it.
  It is always reachable (the lowest score calls every image positive).
- ``threshold_for_specificity``: the lowest threshold whose specificity reaches the target, the most
  sensitive one that meets it. Unreachable when negatives hold the highest score and the target
  asks for more than is left at that threshold: ``UnreachableTargetError``.

PPV and NPV depend on prevalence, and the study's class mix is not a clinic's: ``operating_point``
also recomputes them at a given prevalence with Bayes' rule. Sensitivity, specificity, PPV and NPV
get Wilson score intervals (Wilson 1927), which keep their coverage near 0 and 1 where the Wald
interval fails (Brown, Cai & DasGupta 2001, *Statistical Science* 16:101).

``find_operating_point`` gives one threshold's figures as an :class:`OperatingPoint` (``operating_point``
the same as a JSON-ready dict); ``threshold_sweep`` gives the rates at every threshold of a sweep at once,
from the counts by threshold, with the same arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real

import numpy as np
from scipy.special import ndtri

TARGET_TOLERANCE = 1e-12
INTERVAL_METHOD = "wilson"


class UnreachableTargetError(ValueError):
    """No observed threshold reaches the target; ``best`` is the closest value one reaches."""

    def __init__(self, message: str, *, best: float) -> None:
        super().__init__(message)
        self.best = best


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_binary(y_true_binary: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(y_true_binary)
    score = np.asarray(score, dtype=np.float64)
    if labels.ndim != 1 or labels.size == 0 or not np.all(np.isin(labels, (0, 1))):
        raise ValueError(f"y_true_binary must be a non-empty 1-D array of 0/1 or booleans, got shape {labels.shape}")
    if score.shape != labels.shape or not np.all(np.isfinite(score)):
        raise ValueError(f"score must be finite with one value per label, got shape {score.shape}")
    return labels.astype(bool), score


def _check_target(target: float, what: str) -> None:
    if not (_is_number(target) and 0.0 < target <= 1.0):
        raise ValueError(f"target {what} must be in (0, 1], got target={target!r}")


def _counts_by_threshold(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores, highest first, with the true and false positives at ``score >= threshold``."""
    order = np.argsort(-score, kind="stable")
    ranked = score[order]
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    tp = np.cumsum(positive[order])[ends]
    fp = np.cumsum(~positive[order])[ends]
    return ranked[ends], tp, fp


def threshold_for_sensitivity(y_true_binary: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest observed threshold with sensitivity >= ``target`` (see the module's rule)."""
    positive, score = _check_binary(y_true_binary, score)
    _check_target(target, "sensitivity")
    if not positive.any():
        raise ValueError("sensitivity is undefined without positives: y_true_binary holds no 1")
    thresholds, tp, _ = _counts_by_threshold(positive, score)
    reached = tp / positive.sum() >= target - TARGET_TOLERANCE
    return float(thresholds[np.argmax(reached)])


def threshold_for_specificity(y_true_binary: np.ndarray, score: np.ndarray, target: float) -> float:
    """The lowest observed threshold with specificity >= ``target`` (see the module's rule)."""
    positive, score = _check_binary(y_true_binary, score)
    _check_target(target, "specificity")
    if positive.all():
        raise ValueError("specificity is undefined without negatives: y_true_binary holds no 0")
    thresholds, _, fp = _counts_by_threshold(positive, score)
    specificity = 1.0 - fp / (~positive).sum()
    reached = np.flatnonzero(specificity >= target - TARGET_TOLERANCE)
    if reached.size == 0:
        raise UnreachableTargetError(
            f"target specificity {target} is unreachable: at the highest score ({thresholds[0]}) negatives "
            f"are still called positive and specificity is {specificity[0]:.4f}",
            best=float(specificity[0]),
        )
    return float(thresholds[reached[-1]])


def wilson_interval(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion, or None without trials."""
    if trials == 0:
        return None
    z = float(ndtri(0.5 + confidence / 2.0))
    centre = (successes + z * z / 2.0) / (trials + z * z)
    half = z * math.sqrt(successes * (trials - successes) / trials + z * z / 4.0) / (trials + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Bounds:
    """A Wilson score interval of one proportion."""

    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}


MEASURES = ("sensitivity", "specificity", "ppv", "npv")
"""The four rates of an operating point, in the order the pages list them."""


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates at ``score >= threshold``, with Wilson intervals; undefined rates are None."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    sensitivity_interval: Bounds | None
    specificity_interval: Bounds | None
    ppv_interval: Bounds | None
    npv_interval: Bounds | None
    interval_method: str
    confidence: float
    sample_prevalence: float
    prevalence: float | None
    ppv_at_prevalence: float | None
    npv_at_prevalence: float | None

    @property
    def n_positive(self) -> int:
        return self.tp + self.fn

    @property
    def n_negative(self) -> int:
        return self.tn + self.fp

    def fraction(self, measure: str) -> tuple[int, int]:
        """(successes, trials) of one of :data:`MEASURES`: sensitivity is TP of TP + FN, and so on."""
        return {
            "sensitivity": (self.tp, self.tp + self.fn),
            "specificity": (self.tn, self.tn + self.fp),
            "ppv": (self.tp, self.tp + self.fp),
            "npv": (self.tn, self.tn + self.fn),
        }[_measure(measure)]

    def rate(self, measure: str) -> float | None:
        """One of :data:`MEASURES` in this sample."""
        return getattr(self, _measure(measure))

    def interval(self, measure: str) -> Bounds | None:
        """The Wilson interval of one of :data:`MEASURES` in this sample."""
        return getattr(self, f"{_measure(measure)}_interval")

    def at_prevalence(self, measure: str) -> float | None:
        """One of :data:`MEASURES` at the chosen prevalence: sensitivity and specificity do not depend on it."""
        measure = _measure(measure)
        return getattr(self, f"{measure}_at_prevalence") if measure in ("ppv", "npv") else self.rate(measure)

    def to_dict(self) -> dict:
        """JSON-ready, every field and ``n_positive``/``n_negative``; intervals as ``{"low", "high"}``."""
        found = {}
        for f in fields(self):
            value = getattr(self, f.name)
            found[f.name] = value.to_dict() if isinstance(value, Bounds) else value
            if f.name == "fn":
                found["n_positive"], found["n_negative"] = self.n_positive, self.n_negative
        return found


def _measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got measure={measure!r}")
    return measure


def _check_threshold(threshold: object) -> None:
    if not (_is_number(threshold) and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number, got threshold={threshold!r}")


def _check_prevalence(prevalence: object) -> None:
    if prevalence is not None and not (_is_number(prevalence) and 0.0 < prevalence < 1.0):
        raise ValueError(f"prevalence must be strictly between 0 and 1, got prevalence={prevalence!r}")


def find_operating_point(
    y_true_binary: np.ndarray,
    score: np.ndarray,
    *,
    threshold: float,
    prevalence: float | None = None,
    confidence: float = 0.95,
) -> OperatingPoint:
    """Counts and rates at ``score >= threshold``, with Wilson intervals; undefined rates are None.

    At a ``prevalence`` p strictly between 0 and 1, by Bayes' rule:
    PPV = sens p / (sens p + (1 - spec)(1 - p)) and NPV = spec (1 - p) / (spec (1 - p) + (1 - sens) p).
    """
    positive, score = _check_binary(y_true_binary, score)
    _check_threshold(threshold)
    _check_prevalence(prevalence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got confidence={confidence!r}")
    called = score >= threshold
    tp = int(np.sum(called & positive))
    fp = int(np.sum(called & ~positive))
    fn = int(np.sum(~called & positive))
    tn = int(np.sum(~called & ~positive))
    figures = {name: _of_one_threshold(value) for name, value in _figures(tp, fp, tn, fn, prevalence).items()}

    def interval(successes: int, trials: int) -> Bounds | None:
        bounds = wilson_interval(successes, trials, confidence=confidence)
        return None if bounds is None else Bounds(*bounds)

    return OperatingPoint(
        threshold=float(threshold),
        **figures,
        sensitivity_interval=interval(tp, tp + fn),
        specificity_interval=interval(tn, tn + fp),
        ppv_interval=interval(tp, tp + fp),
        npv_interval=interval(tn, tn + fn),
        interval_method=INTERVAL_METHOD,
        confidence=confidence,
        sample_prevalence=(tp + fn) / len(positive),
    )


def operating_point(
    y_true_binary: np.ndarray,
    score: np.ndarray,
    *,
    threshold: float,
    prevalence: float | None = None,
    confidence: float = 0.95,
) -> dict:
    """:func:`find_operating_point` as a JSON-ready dict (:meth:`OperatingPoint.to_dict`)."""
    return find_operating_point(
        y_true_binary, score, threshold=threshold, prevalence=prevalence, confidence=confidence
    ).to_dict()


@dataclass(frozen=True)
class ThresholdSweep:
    """Counts and rates at every threshold of a sweep, ascending; NaN where a rate is undefined.

    Each entry is what :func:`find_operating_point` gives at that threshold (the same arithmetic, so
    the same floats); PPV and NPV at ``prevalence`` are all NaN when no prevalence was given.
    """

    threshold: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    ppv: np.ndarray
    npv: np.ndarray
    prevalence: float | None
    ppv_at_prevalence: np.ndarray
    npv_at_prevalence: np.ndarray

    def __len__(self) -> int:
        return len(self.threshold)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, NaN where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    found = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=found, where=denominator != 0)
    return found


def _bayes(numerator: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``numerator / (numerator + other)``, NaN where the total is not positive."""
    total = numerator + other
    found = np.full(total.shape, np.nan)
    np.divide(numerator, total, out=found, where=total > 0)
    return found


def _figures(
    tp: np.ndarray | int, fp: np.ndarray | int, tn: np.ndarray | int, fn: np.ndarray | int, prevalence: float | None
) -> dict[str, object]:
    """Every field :class:`OperatingPoint` and :class:`ThresholdSweep` share, from the four counts: the counts, the
    four rates of :data:`MEASURES` (NaN where undefined), ``prevalence`` and PPV and NPV at it (NaN without one).
    One arithmetic for a single threshold and for a sweep, so that both give the same floats; ``prevalence`` is
    taken as a float, so that any real number the checks accept gives float arrays."""
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    ppv_at_prevalence = npv_at_prevalence = np.full(sensitivity.shape, np.nan)
    if prevalence is not None:
        p = float(prevalence)
        ppv_at_prevalence = _bayes(sensitivity * p, (1.0 - specificity) * (1.0 - p))
        npv_at_prevalence = _bayes(specificity * (1.0 - p), (1.0 - sensitivity) * p)
    counts = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    rates = {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }
    at_prevalence = {"ppv_at_prevalence": ppv_at_prevalence, "npv_at_prevalence": npv_at_prevalence}
    return {**counts, **rates, "prevalence": prevalence, **at_prevalence}


def _of_one_threshold(figure: object) -> object:
    """A figure of :func:`_figures` as :class:`OperatingPoint` holds it: a rate (a 0-d array) as a float, or None
    where the sweep has NaN; a count and the prevalence as they are."""
    if not isinstance(figure, np.ndarray):
        return figure
    return None if np.isnan(figure) else float(figure)


def sweep_thresholds(score: np.ndarray, max_points: int | None = None) -> np.ndarray:
    """The distinct observed scores, ascending; at most ``max_points`` of them, spaced by rank."""
    thresholds = np.unique(np.asarray(score, dtype=np.float64))
    if max_points is not None and thresholds.size > max_points:
        thresholds = thresholds[np.unique(np.linspace(0, thresholds.size - 1, max_points).round().astype(int))]
    return thresholds


def threshold_sweep(
    y_true_binary: np.ndarray,
    score: np.ndarray,
    *,
    thresholds: np.ndarray | None = None,
    max_points: int | None = None,
    prevalence: float | None = None,
) -> ThresholdSweep:
    """Sensitivity, specificity, PPV and NPV (and those two at ``prevalence``) at each threshold, at once.

    ``thresholds``: any finite values, sorted here; by default the observed scores
    (:func:`sweep_thresholds`, at most ``max_points``). Counted once from the counts by threshold, not
    one :func:`operating_point` per threshold.
    """
    positive, score = _check_binary(y_true_binary, score)
    _check_prevalence(prevalence)
    if thresholds is None:
        thresholds = sweep_thresholds(score, max_points)
    else:
        thresholds = np.sort(np.asarray(thresholds, dtype=np.float64).ravel())
        if not np.all(np.isfinite(thresholds)):
            raise ValueError("thresholds must be finite numbers")
    values, tp_by_value, fp_by_value = _counts_by_threshold(positive, score)
    # how many distinct scores are >= each threshold (values run highest first)
    called = np.searchsorted(-values, -thresholds, side="right")
    tp = np.concatenate([[0], tp_by_value])[called]
    fp = np.concatenate([[0], fp_by_value])[called]
    n_positive = int(positive.sum())
    n_negative = int(positive.size - n_positive)
    fn, tn = n_positive - tp, n_negative - fp
    return ThresholdSweep(threshold=thresholds, **_figures(tp, fp, tn, fn, prevalence))
