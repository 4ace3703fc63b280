"""Is one backbone better than another over the same folds? The corrected resampled t-test.

Folds of a k-fold cross-validation share most of their training images, so the per-fold
differences are correlated and the plain paired t-test is far too eager to call a difference
significant. Nadeau and Bengio (2003) inflate the variance by ``n_test / n_train`` to correct for
that overlap: ``t = mean(d) / sqrt((1/k + n_test/n_train) * var(d, ddof=1))`` with ``k - 1``
degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

DEFAULT_ALPHA = 0.05


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over folds; one fold has no spread, so its sd is 0.

    The one rule for "mean ± sd over folds" everywhere: summaries, the comparison table, curve bands.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("values must hold at least one fold's value, got none")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


@dataclass(frozen=True)
class PairedTest:
    """The result of comparing two models fold by fold; ``mean_difference`` is A minus B."""

    mean_difference: float
    t: float
    df: int
    p_value: float
    k: int


def corrected_resampled_ttest(
    a: list[float] | np.ndarray, b: list[float] | np.ndarray, *, n_train: float, n_test: float
) -> PairedTest:
    """Nadeau-Bengio corrected paired t-test of ``a - b`` over the same k folds (two-sided)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D with one value per fold each, got shapes {a.shape} and {b.shape}")
    k = len(a)
    if k < 2:
        raise ValueError(f"at least 2 folds are needed for a t-test, got k={k}")
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got n_train={n_train!r}, n_test={n_test!r}")
    d = a - b
    mean = float(d.mean())
    variance = float(d.var(ddof=1)) * (1.0 / k + n_test / n_train)
    df = k - 1
    if variance == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p_value = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / math.sqrt(variance)
        p_value = float(2.0 * scipy_stats.t.sf(abs(t), df))
    return PairedTest(mean_difference=mean, t=t, df=df, p_value=p_value, k=k)


def verdict(
    result: PairedTest,
    *,
    name_a: str,
    name_b: str,
    metric: str,
    higher_is_better: bool = True,
    alpha: float = DEFAULT_ALPHA,
) -> str:
    """One plain sentence a reader can act on, that does not overstate a small number of folds."""
    if result.p_value >= alpha:
        return (
            f"No evidence of a difference in {metric} between {name_a} and {name_b} over these {result.k} folds "
            f"(p = {result.p_value:.3f} ≥ {alpha}); these folds cannot tell which is better, "
            "which is not proof that they are equal."
        )
    a_better = (result.mean_difference > 0) == higher_is_better
    winner, loser = (name_a, name_b) if a_better else (name_b, name_a)
    return (
        f"{winner} has a better {metric} than {loser} over these {result.k} folds "
        f"(mean difference {abs(result.mean_difference):.4f}, p = {result.p_value:.3g} < {alpha})."
    )
