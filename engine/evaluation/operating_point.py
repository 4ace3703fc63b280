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
"""

from __future__ import annotations

import math
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


def _proportion(successes: int, trials: int) -> float | None:
    return successes / trials if trials else None


def _bayes(numerator: float, other: float) -> float | None:
    total = numerator + other
    return numerator / total if total > 0 else None


def operating_point(
    y_true_binary: np.ndarray,
    score: np.ndarray,
    *,
    threshold: float,
    prevalence: float | None = None,
    confidence: float = 0.95,
) -> dict:
    """Counts and rates at ``score >= threshold``, with Wilson intervals; undefined rates are None.

    At a ``prevalence`` p strictly between 0 and 1, by Bayes' rule:
    PPV = sens p / (sens p + (1 - spec)(1 - p)) and NPV = spec (1 - p) / (spec (1 - p) + (1 - sens) p).
    """
    positive, score = _check_binary(y_true_binary, score)
    if not (_is_number(threshold) and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number, got threshold={threshold!r}")
    if prevalence is not None and not (_is_number(prevalence) and 0.0 < prevalence < 1.0):
        raise ValueError(f"prevalence must be strictly between 0 and 1, got prevalence={prevalence!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got confidence={confidence!r}")
    called = score >= threshold
    tp = int(np.sum(called & positive))
    fp = int(np.sum(called & ~positive))
    fn = int(np.sum(~called & positive))
    tn = int(np.sum(~called & ~positive))
    sensitivity, specificity = _proportion(tp, tp + fn), _proportion(tn, tn + fp)
    ppv_at_prevalence = npv_at_prevalence = None
    if prevalence is not None and sensitivity is not None and specificity is not None:
        ppv_at_prevalence = _bayes(sensitivity * prevalence, (1.0 - specificity) * (1.0 - prevalence))
        npv_at_prevalence = _bayes(specificity * (1.0 - prevalence), (1.0 - sensitivity) * prevalence)

    def interval(successes: int, trials: int) -> dict[str, float] | None:
        bounds = wilson_interval(successes, trials, confidence=confidence)
        return None if bounds is None else {"low": bounds[0], "high": bounds[1]}

    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_positive": tp + fn,
        "n_negative": tn + fp,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _proportion(tp, tp + fp),
        "npv": _proportion(tn, tn + fn),
        "sensitivity_interval": interval(tp, tp + fn),
        "specificity_interval": interval(tn, tn + fp),
        "ppv_interval": interval(tp, tp + fp),
        "npv_interval": interval(tn, tn + fn),
        "interval_method": INTERVAL_METHOD,
        "confidence": confidence,
        "sample_prevalence": (tp + fn) / len(positive),
        "prevalence": prevalence,
        "ppv_at_prevalence": ppv_at_prevalence,
        "npv_at_prevalence": npv_at_prevalence,
    }
