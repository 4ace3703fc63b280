"""How many of n images a recall needs for its interval to clear a bar, against the bootstrap it stands for."""

from __future__ import annotations

import numpy as np
import pytest

from engine.evaluation.confusion_bootstrap import bootstrap_confusion_metrics
from engine.evaluation.sample_size import count_to_clear, lower_end


def _bootstrap_low(k: int, n: int) -> float:
    """The stratified bootstrap's lower end of a recall of k of n, as the evaluation computes it."""
    y = np.zeros(n + 1, dtype=np.int64)
    y[-1] = 1
    proba = np.zeros((n + 1, 2))
    proba[:k, 0] = 1.0
    proba[k:, 1] = 1.0
    found = bootstrap_confusion_metrics(y, proba, ("a", "b"), n_resamples=2000, confidence=0.95, seed=0)
    return found["recall[a]"].low


@pytest.mark.parametrize(("k", "n"), [(88, 93), (89, 93), (203, 219), (214, 219), (244, 252)])
def test_lower_end_is_the_limit_of_the_stratified_bootstrap(k: int, n: int) -> None:
    assert lower_end(k, n) == pytest.approx(_bootstrap_low(k, n), abs=1.0 / n)


def test_the_count_is_the_first_that_clears_the_bar() -> None:
    assert count_to_clear(93, 0.90) == 89
    assert lower_end(88, 93) < 0.90 <= lower_end(89, 93)
    assert count_to_clear(219, 0.95) == 214
    assert lower_end(213, 219) < 0.95 <= lower_end(214, 219)
    assert count_to_clear(5, 1.0) == 5
    assert count_to_clear(10, 0.0) == 0


def test_more_images_need_a_smaller_share() -> None:
    shares = [count_to_clear(n, 0.90) / n for n in (20, 93, 500, 5000)]
    assert shares == sorted(shares, reverse=True)
    assert shares[-1] > 0.90


def test_numpy_counts_are_counts() -> None:
    assert lower_end(np.int64(88), np.int64(93)) == lower_end(88, 93)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: lower_end(3, 0), "n must be a whole number at least 1, got n=0"),
        (lambda: lower_end(4, 3), "k must be a whole number between 0 and 3, got k=4"),
        (lambda: lower_end(True, 3), "k must be"),
        (lambda: lower_end(1, 3, confidence=1.0), "confidence must be"),
        (lambda: count_to_clear(10, 1.5), "bar must be"),
        (lambda: count_to_clear(-1, 0.9), "n must be"),
        (lambda: count_to_clear(93.0, 0.9), "got n=93.0"),
    ],
)
def test_bad_input_names_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_a_verdict_short_of_its_bar_says_what_would_clear_it() -> None:
    from engine.reports.results_sections import interval_verdict

    straddles = {"estimate": 88 / 93, "low": 0.892, "high": 0.989, "n": 93}
    assert interval_verdict(straddles, 0.90) == "undecided: the interval straddles 0.9; about 89 of 93 would clear it"
    short = {"estimate": 0.8, "low": 0.7, "high": 0.85, "n": 20}
    assert interval_verdict(short, 0.90).endswith(f"; about {count_to_clear(20, 0.90)} of 20 would clear it")
    assert interval_verdict({**straddles, "low": 0.91}, 0.90) == "met"
    assert interval_verdict({k: v for k, v in straddles.items() if k != "n"}, 0.90).endswith("straddles 0.9")
    assert interval_verdict({**straddles, "method": "bca"}, 0.90).endswith("straddles 0.9"), "no limit known for BCa"


def test_the_count_asked_for_is_never_the_one_already_found() -> None:
    """A finite bootstrap's lower end can miss the bar at the count whose limit clears it (354 of 382, low 0.8979)."""
    from engine.reports.results_sections import interval_verdict

    k = count_to_clear(382, 0.90)
    found = {"estimate": k / 382, "low": 0.8979, "high": 0.95, "n": 382}
    assert interval_verdict(found, 0.90).endswith(f"; about {k + 1} of 382 would clear it")
