"""What a set of n images can tell: how many of them a model must get right for a recall's interval to clear a bar.

A recall is k of the n images of one class. The stratified bootstrap (``engine.evaluation.bootstrap``) resamples
within each class, so its replicates of that recall are Binomial(n, k / n) / n, and the percentile interval's
lower end tends to that distribution's quantile as resamples grow. With 93 images and 88 found, the lower end is
0.892, under a bar of 0.90; 89 of 93 gives 0.914. That count tells a reader whether "undecided" means one image
or twenty.
"""

from __future__ import annotations

from scipy.stats import binom


def lower_end(k: int, n: int, *, confidence: float = 0.95) -> float:
    """The percentile bootstrap's lower end, in its limit, of a recall of ``k`` of ``n``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of images, got n={n!r}")
    if not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be a count between 0 and n={n}, got k={k!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got confidence={confidence!r}")
    return float(binom.ppf((1.0 - confidence) / 2.0, n, k / n)) / n


def count_to_clear(n: int, bar: float, *, confidence: float = 0.95) -> int:
    """The fewest of ``n`` images a model must get right for the interval's lower end to reach ``bar``."""
    if not 0.0 <= bar <= 1.0:
        raise ValueError(f"bar must be a proportion between 0 and 1, got bar={bar!r}")
    return next(k for k in range(n + 1) if lower_end(k, n, confidence=confidence) >= bar)
