"""What a set of n images can tell: about how many of them a model must get right for a recall's interval to clear
a bar.

A recall is k of the n images of one class. The stratified bootstrap (``engine.evaluation.bootstrap``) resamples
within each class, so its replicates of that recall are Binomial(n, k / n) / n, and the percentile interval's
lower end tends to that distribution's quantile as resamples grow. With 93 images and 88 found, the lower end is
0.892, under a bar of 0.90; 89 of 93 gives 0.914. That count tells a reader whether "undecided" means one image
or twenty. A finite bootstrap's lower end lands a little either side of the limit, so the count is approximate.
"""

from __future__ import annotations

from bisect import bisect_left
from numbers import Integral

from scipy.stats import binom


def _check_count(name: str, value: object, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be a whole number {bounds}, got {name}={value!r}")
    return int(value)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got confidence={confidence!r}")


def lower_end(k: int, n: int, *, confidence: float = 0.95) -> float:
    """The percentile bootstrap's lower end, in its limit, of a recall of ``k`` of ``n``."""
    n = _check_count("n", n, low=1)
    k = _check_count("k", k, low=0, high=n)
    _check_confidence(confidence)
    return float(binom.ppf((1.0 - confidence) / 2.0, n, k / n)) / n


def count_to_clear(n: int, bar: float, *, confidence: float = 0.95) -> int:
    """The fewest of ``n`` images a model must get right for the interval's lower end, in its limit, to reach
    ``bar`` (the lower end grows with k, so a bisection finds it)."""
    n = _check_count("n", n, low=1)
    if not 0.0 <= bar <= 1.0:
        raise ValueError(f"bar must be a proportion between 0 and 1, got bar={bar!r}")
    _check_confidence(confidence)
    return bisect_left(range(n + 1), True, key=lambda k: lower_end(k, n, confidence=confidence) >= bar)
