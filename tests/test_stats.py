"""The corrected resampled t-test against values computed by hand (df = 2 has a closed-form CDF)."""

from __future__ import annotations

import math

import pytest

from engine.evaluation.stats import corrected_resampled_ttest, verdict


def test_matches_hand_computed_values() -> None:
    # d = [0.05, 0, 0.05]: mean 1/30, var(ddof=1) 1/1200; factor 1/3 + 1/2 = 5/6 -> variance 1/1440.
    # t = (1/30) * sqrt(1440) = sqrt(1.6); with df = 2, sf(t) = 1/2 - t / (2 sqrt(2 + t^2)) = 1/6, so p = 1/3.
    result = corrected_resampled_ttest([0.90, 0.80, 0.85], [0.85, 0.80, 0.80], n_train=200, n_test=100)
    assert result.k == 3
    assert result.df == 2
    assert result.mean_difference == pytest.approx(1 / 30)
    assert result.t == pytest.approx(math.sqrt(1.6))
    assert result.p_value == pytest.approx(1 / 3)


def test_correction_makes_the_test_more_conservative_than_the_plain_paired_test() -> None:
    a, b = [0.91, 0.93, 0.92, 0.94, 0.92], [0.90, 0.91, 0.91, 0.92, 0.90]
    corrected = corrected_resampled_ttest(a, b, n_train=80, n_test=20)
    plain = corrected_resampled_ttest(a, b, n_train=1e12, n_test=1e-12)
    assert corrected.t == pytest.approx(plain.t * math.sqrt((1 / 5) / (1 / 5 + 20 / 80)))
    assert corrected.p_value > plain.p_value


def test_swapping_models_flips_the_sign_and_keeps_p() -> None:
    a, b = [0.7, 0.9, 0.8], [0.6, 0.85, 0.82]
    ab = corrected_resampled_ttest(a, b, n_train=10, n_test=5)
    ba = corrected_resampled_ttest(b, a, n_train=10, n_test=5)
    assert ab.t == pytest.approx(-ba.t)
    assert ab.p_value == pytest.approx(ba.p_value)


def test_identical_models_have_p_one_and_constant_gain_has_p_zero() -> None:
    same = corrected_resampled_ttest([0.8, 0.9], [0.8, 0.9], n_train=10, n_test=10)
    assert (same.t, same.p_value) == (0.0, 1.0)
    constant = corrected_resampled_ttest([0.9, 0.95], [0.8, 0.85], n_train=10, n_test=10)
    assert constant.t == math.inf
    assert constant.p_value == 0.0


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        ([0.9], [0.8], {"n_train": 10, "n_test": 5}, "k=1"),
        ([0.9, 0.8], [0.8], {"n_train": 10, "n_test": 5}, "shapes"),
        ([0.9, 0.8], [0.8, 0.7], {"n_train": 0, "n_test": 5}, "n_train=0"),
    ],
)
def test_bad_input_names_the_argument(a, b, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        corrected_resampled_ttest(a, b, **kwargs)


def test_verdict_names_the_winner_only_when_significant() -> None:
    significant = corrected_resampled_ttest([0.9, 0.95, 0.93], [0.8, 0.84, 0.83], n_train=10, n_test=5)
    assert significant.p_value < 0.05
    text = verdict(significant, name_a="A", name_b="B", metric="accuracy")
    assert text.startswith("A has a better accuracy than B")
    loss_text = verdict(significant, name_a="A", name_b="B", metric="loss", higher_is_better=False)
    assert loss_text.startswith("B has a better loss than A")
    weak = corrected_resampled_ttest([0.90, 0.80, 0.85], [0.85, 0.80, 0.80], n_train=200, n_test=100)
    assert verdict(weak, name_a="A", name_b="B", metric="accuracy").startswith("No evidence of a difference")
