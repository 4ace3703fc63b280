"""The numerical core of the evaluation against hand computations, sklearn and known truths.

Bootstrap intervals (coverage, agreement with ``flat_metrics``, pairing), ROC/PR curves and their
intervals, calibration (ECE, Brier, temperature scaling) and operating points. Every random draw is
seeded, so each test is deterministic; statistical tolerances are stated where they are used.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.special import softmax
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from engine.evaluation.bootstrap import bootstrap_metrics, stratified_resample_indices
from engine.evaluation.calibration import (
    apply_temperature,
    cross_fitted_temperature,
    fit_temperature,
    reliability,
)
from engine.evaluation.confusion_bootstrap import (
    bootstrap_confusion_metrics,
    bootstrap_difference,
    confusion_metric_names,
)
from engine.evaluation.discrimination import discrimination_intervals, pr_curves, roc_curves, weighted_auc_and_ap
from engine.evaluation.metrics import flat_metrics, fold_metrics
from engine.evaluation.operating_point import (
    MEASURES,
    UnreachableTargetError,
    find_operating_point,
    operating_point,
    sweep_thresholds,
    threshold_for_sensitivity,
    threshold_for_specificity,
    threshold_sweep,
)

CLASSES = ("COVID-19", "Normal", "Viral Pneumonia")
CLASS_MIX = (0.08, 0.46, 0.46)  # the demo study's 219 / 1,340 / 1,338


def synthetic_study(n: int, *, seed: int, signal: float = 2.0, n_folds: int = 5):
    """Out-of-fold-like predictions: noisy logits pulled towards the true class, random folds."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(CLASSES), size=n, p=CLASS_MIX)
    logits = rng.normal(size=(n, len(CLASSES))) + signal * np.eye(len(CLASSES))[y]
    return y, softmax(logits, axis=1), rng.integers(0, n_folds, size=n)


def labels_drawn_from(proba: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from the row's probabilities: perfectly calibrated by construction."""
    return (rng.random((len(proba), 1)) > np.cumsum(proba, axis=1)).sum(axis=1)


# --- bootstrap -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_accuracy_interval_covers_a_known_proportion(method: str) -> None:
    # 200 samples of n = 300 images, each right with probability p = 0.805 (241.5 / 300, off the
    # grid of attainable accuracies so that ties at the bounds do not inflate coverage). The
    # coverage estimate has sd sqrt(0.95 * 0.05 / 200) = 0.015; 0.92-0.98 is nominal +- 2 sd.
    p, n, repetitions = 0.805, 300, 200
    covered = 0
    for repetition in range(repetitions):
        rng = np.random.default_rng(repetition)
        y = rng.integers(0, 2, size=n)
        called = np.where(rng.random(n) < p, y, 1 - y)
        proba = np.where(np.eye(2, dtype=bool)[called], 0.9, 0.1)
        interval = bootstrap_confusion_metrics(y, proba, ("a", "b"), seed=10_000 + repetition, method=method)
        covered += interval["accuracy"].low <= p <= interval["accuracy"].high
    assert 0.92 <= covered / repetitions <= 0.98


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_one_class_intervals_agree_with_scipy_bootstrap(method: str) -> None:
    # With a single class the stratified bootstrap is the ordinary one, which scipy implements. The
    # loss is a mean of skewed per-row terms, where BCa and percentile differ. With 50,000 resamples
    # each bound has a Monte Carlo sd near 2e-4 (sd of the figure 0.017 x 0.012); the tolerance is 1.5e-3.
    rng = np.random.default_rng(21)
    p = rng.beta(5, 1, size=200)
    y = np.zeros(200, dtype=int)
    ours = bootstrap_confusion_metrics(y, np.column_stack([p, 1 - p]), ("a", "b"), n_resamples=50_000, method=method)
    reference = scipy_stats.bootstrap(
        (-np.log(p),), np.mean, n_resamples=50_000, method="BCa" if method == "bca" else "percentile", rng=0
    ).confidence_interval
    assert ours["loss"].low == pytest.approx(reference.low, abs=1.5e-3)
    assert ours["loss"].high == pytest.approx(reference.high, abs=1.5e-3)


def test_fast_path_estimates_equal_flat_metrics() -> None:
    y, proba, _ = synthetic_study(900, seed=1)
    flat = flat_metrics(fold_metrics(y, proba, CLASSES))
    intervals = bootstrap_confusion_metrics(y, proba, CLASSES)
    assert list(intervals) == confusion_metric_names(CLASSES) == [k for k in flat if k != "roc_auc"]
    for name, interval in intervals.items():
        assert interval.estimate == pytest.approx(flat[name], abs=1e-12), name


def test_fast_path_follows_zero_division_like_sklearn() -> None:
    # COVID-19 is never the argmax: its precision, recall and F1 are 0 as sklearn's zero_division=0 has it
    y, proba, _ = synthetic_study(400, seed=2)
    proba[:, 0] *= 1e-4
    proba /= proba.sum(axis=1, keepdims=True)
    flat = flat_metrics(fold_metrics(y, proba, CLASSES))
    intervals = bootstrap_confusion_metrics(y, proba, CLASSES)
    assert flat["recall[COVID-19]"] == 0.0
    for name, interval in intervals.items():
        assert interval.estimate == pytest.approx(flat[name], abs=1e-12), name


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_intervals_contain_the_estimate_and_are_json_ready(method: str) -> None:
    y, proba, _ = synthetic_study(900, seed=3)
    intervals = bootstrap_confusion_metrics(y, proba, CLASSES, method=method)
    for name, interval in intervals.items():
        assert interval.low <= interval.estimate <= interval.high, name
        assert interval.method == method and interval.n_resamples == 2000 and interval.confidence == 0.95
    json.dumps({name: interval.to_dict() for name, interval in intervals.items()}, allow_nan=False)


def test_a_fixed_seed_repeats_and_another_seed_differs() -> None:
    y, proba, _ = synthetic_study(600, seed=4)
    first = bootstrap_confusion_metrics(y, proba, CLASSES, seed=7)
    assert bootstrap_confusion_metrics(y, proba, CLASSES, seed=7) == first
    other = bootstrap_confusion_metrics(y, proba, CLASSES, seed=8)
    assert (other["loss"].low, other["loss"].high) != (first["loss"].low, first["loss"].high)
    assert other["loss"].estimate == first["loss"].estimate


def test_resampling_keeps_each_class_at_its_own_size() -> None:
    y, _, _ = synthetic_study(300, seed=5)
    indices = stratified_resample_indices(y, n_resamples=2000, seed=0)
    assert indices.shape == (2000, 300)
    assert np.all(np.sort(y[indices], axis=1) == np.sort(y))


def test_generic_bootstrap_agrees_with_the_fast_path_on_the_same_resamples() -> None:
    y, proba, _ = synthetic_study(300, seed=6)

    def accuracy(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(np.mean(p.argmax(axis=1) == y_true))}

    generic = bootstrap_metrics(y, proba, CLASSES, metrics=accuracy, seed=3)["accuracy"]
    fast = bootstrap_confusion_metrics(y, proba, CLASSES, seed=3)["accuracy"]
    assert (generic.estimate, generic.low, generic.high) == pytest.approx((fast.estimate, fast.low, fast.high))
    assert generic.method == "percentile" and generic.n_resamples == 2000


def test_a_figure_undefined_in_a_resample_is_dropped_and_counted() -> None:
    # the figure is defined only in resamples that drew row 0 (its COVID-19 probability is unique)
    y, proba, _ = synthetic_study(300, seed=7)
    marker = proba[0, 0]

    def needs_row_0(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
        return {"mean_normal": float(np.mean(p[:, 1])) if np.any(p[:, 0] == marker) else math.nan}

    interval = bootstrap_metrics(y, proba, CLASSES, metrics=needs_row_0, seed=11)["mean_normal"]
    drew_row_0 = int(np.any(stratified_resample_indices(y, n_resamples=2000, seed=11) == 0, axis=1).sum())
    assert 0 < drew_row_0 < 2000
    assert interval.n_resamples == drew_row_0
    assert interval.low <= interval.estimate <= interval.high


def test_options_are_checked_before_work_and_named_in_the_error() -> None:
    y, proba, _ = synthetic_study(50, seed=8)
    with pytest.raises(ValueError, match=r"n_resamples must be at least 2000, got n_resamples=10"):
        bootstrap_confusion_metrics(y, proba, CLASSES, n_resamples=10)
    with pytest.raises(ValueError, match=r"confidence=1\.0"):
        bootstrap_confusion_metrics(y, proba, CLASSES, confidence=1.0)
    with pytest.raises(ValueError, match=r"method='studentized'"):
        bootstrap_confusion_metrics(y, proba, CLASSES, method="studentized")
    with pytest.raises(ValueError, match=r"seed=None"):
        bootstrap_confusion_metrics(y, proba, CLASSES, seed=None)
    with pytest.raises(ValueError, match=r"proba must have shape \(50, 3\), got \(50, 2\)"):
        bootstrap_confusion_metrics(y, proba[:, :2], CLASSES)
    with pytest.raises(ValueError, match=r"rows of proba must sum to 1"):
        bootstrap_confusion_metrics(y, proba * 0.5, CLASSES)
    with pytest.raises(ValueError, match=r"metric='auc'"):
        bootstrap_difference(y, proba, proba, CLASSES, metric="auc")


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_paired_difference_of_a_model_with_itself_is_exactly_zero(method: str) -> None:
    y, proba, _ = synthetic_study(400, seed=9)
    for name in confusion_metric_names(CLASSES):
        difference = bootstrap_difference(y, proba, proba, CLASSES, metric=name, method=method)
        assert (difference.estimate, difference.low, difference.high) == (0.0, 0.0, 0.0), name


def test_paired_difference_of_a_better_model_is_positive() -> None:
    # B is A with a quarter of its rows' probabilities shuffled: worse accuracy, worse loss
    y, proba_a, _ = synthetic_study(800, seed=10)
    rng = np.random.default_rng(10)
    proba_b = proba_a.copy()
    spoiled = rng.random(len(y)) < 0.25
    proba_b[spoiled] = rng.permuted(proba_b[spoiled], axis=1)
    accuracy = bootstrap_difference(y, proba_a, proba_b, CLASSES, metric="accuracy")
    macro_f1 = bootstrap_difference(y, proba_a, proba_b, CLASSES, metric="macro_f1", method="bca")
    loss = bootstrap_difference(y, proba_a, proba_b, CLASSES, metric="loss")
    assert accuracy.low > 0 and macro_f1.low > 0
    assert loss.high < 0


# --- discrimination --------------------------------------------------------------------------------


def test_weighted_auc_and_ap_equal_sklearn_on_resampled_rows() -> None:
    y, proba, _ = synthetic_study(500, seed=11)
    proba = np.round(proba, 2)  # ties, which both figures must count as sklearn does
    indices = stratified_resample_indices(y, n_resamples=2000, seed=0)[:5]
    counts = np.stack([np.bincount(rows, minlength=len(y)) for rows in indices]).astype(float)
    for k in range(len(CLASSES)):
        roc_auc, average_precision = weighted_auc_and_ap(y == k, proba[:, k], counts)
        for b, rows in enumerate(indices):
            assert roc_auc[b] == pytest.approx(roc_auc_score(y[rows] == k, proba[rows, k]), abs=1e-12)
            assert average_precision[b] == pytest.approx(
                average_precision_score(y[rows] == k, proba[rows, k]), abs=1e-12
            )


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_auc_and_ap_intervals(method: str) -> None:
    y, proba, _ = synthetic_study(600, seed=12)
    intervals = discrimination_intervals(y, proba, CLASSES, method=method)
    for k, name in enumerate(CLASSES):
        assert intervals[f"roc_auc[{name}]"].estimate == pytest.approx(roc_auc_score(y == k, proba[:, k]), abs=1e-12)
        assert intervals[f"average_precision[{name}]"].estimate == pytest.approx(
            average_precision_score(y == k, proba[:, k]), abs=1e-12
        )
    assert intervals["roc_auc"].estimate == pytest.approx(flat_metrics(fold_metrics(y, proba, CLASSES))["roc_auc"])
    for name, interval in intervals.items():
        assert interval.low <= interval.estimate <= interval.high, name
        assert interval.method == method and interval.n_resamples == 2000
    assert discrimination_intervals(y, proba, CLASSES, method=method) == intervals


def study_with_gaps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five folds where fold 3 has no Viral Pneumonia image and fold 4 only Normal ones."""
    y, proba, folds = synthetic_study(600, seed=13)
    folds[(folds == 3) & (y == 2)] = 0
    folds[(folds == 4) & (y != 1)] = 1
    return y, proba, folds


def test_roc_curves_match_sklearn_and_skip_folds_without_both_classes() -> None:
    y, proba, folds = study_with_gaps()
    curves = roc_curves(y, proba, CLASSES, folds=folds)
    for k, curve in enumerate(curves.pooled):
        fpr, tpr, thresholds = roc_curve(y == k, proba[:, k])
        assert curve.class_name == CLASSES[k] and curve.fold is None
        assert curve.fpr == fpr.tolist() and curve.tpr == tpr.tolist()
        assert curve.thresholds == [None, *thresholds[1:].tolist()]
        assert curve.specificity == pytest.approx((1 - fpr).tolist())
        assert curve.auc == pytest.approx(roc_auc_score(y == k, proba[:, k]), abs=1e-12)
    drawn = {(curve.fold, curve.class_name) for curve in curves.per_fold}
    missing = {(gap.fold, gap.class_name): gap.reason for gap in curves.missing}
    assert drawn == {(f, c) for f in (0, 1, 2) for c in CLASSES} | {(3, "COVID-19"), (3, "Normal")}
    assert missing == {
        (3, "Viral Pneumonia"): "no image of this class",
        (4, "COVID-19"): "no image of this class",
        (4, "Normal"): "no image of another class",
        (4, "Viral Pneumonia"): "no image of this class",
    }
    for curve in curves.per_fold:
        rows, k = folds == curve.fold, CLASSES.index(curve.class_name)
        assert curve.auc == pytest.approx(roc_auc_score(y[rows] == k, proba[rows, k]), abs=1e-12)
    json.dumps(curves.to_dict(), allow_nan=False)


def test_pr_curves_carry_threshold_sensitivity_and_specificity() -> None:
    y, proba, folds = study_with_gaps()
    curves = pr_curves(y, proba, CLASSES, folds=folds)
    assert {(gap.fold, gap.class_name) for gap in curves.missing} == {
        (3, "Viral Pneumonia"),
        (4, "COVID-19"),
        (4, "Normal"),
        (4, "Viral Pneumonia"),
    }
    for k, curve in enumerate(curves.pooled):
        positive, score = y == k, proba[:, k]
        assert curve.average_precision == pytest.approx(average_precision_score(positive, score), abs=1e-12)
        assert curve.thresholds[-1] is None and curve.recall[-1] == 0.0 and curve.specificity[-1] == 1.0
        for threshold, recall, specificity in zip(curve.thresholds[:-1], curve.recall, curve.specificity, strict=False):
            called = score >= threshold
            assert recall == pytest.approx(np.mean(called[positive]))
            assert specificity == pytest.approx(np.mean(~called[~positive]))
    json.dumps(curves.to_dict(), allow_nan=False)


# --- calibration -----------------------------------------------------------------------------------


def test_ece_of_calibrated_predictions_is_near_zero_and_of_sharpened_ones_large() -> None:
    # 100,000 rows, labels drawn from the probabilities. With 10 bins the ECE of a calibrated model is
    # sampling noise, about sum_b (n_b / n) * 0.8 * sqrt(p_b (1 - p_b) / n_b) <= 0.8 * 0.5 * sqrt(10 / n)
    # = 0.004; the tolerance is 0.01. Sharpening (T = 1/3) makes the model over-confident by far more.
    rng = np.random.default_rng(14)
    proba = rng.dirichlet(np.ones(len(CLASSES)), size=100_000)
    y = labels_drawn_from(proba, rng)
    calibrated = reliability(y, proba, CLASSES)
    assert calibrated.top_label.ece < 0.01
    assert all(curve.ece < 0.01 for curve in calibrated.per_class)
    sharpened = reliability(y, softmax(3.0 * np.log(proba), axis=1), CLASSES)
    assert sharpened.top_label.ece > 0.1
    top_bin = [sum(curve.count[-1] for curve in result.per_class) for result in (calibrated, sharpened)]
    assert top_bin[1] > top_bin[0]


def test_ece_and_brier_by_hand() -> None:
    # Two classes, four rows, ten uniform bins.
    #   proba[:, 0] = 0.95, 0.95, 0.85, 0.25; truth 0, 1, 0, 0.
    # Top label: confidences 0.95 (right), 0.95 (wrong), 0.85 (right), 0.75 (wrong: argmax 1, truth 0).
    #   bin [0.9, 1]: 2 rows, mean 0.95, observed 1/2 -> gap 0.45; bin [0.8, 0.9): 0.85 vs 1 -> 0.15;
    #   bin [0.7, 0.8): 0.75 vs 0 -> 0.75.  ECE = (2 * 0.45 + 0.15 + 0.75) / 4 = 0.45.
    # Class 0 one-vs-rest: the same gaps in bins [0.9, 1], [0.8, 0.9), [0.2, 0.3) -> ECE 0.45.
    # Brier per row (sum over classes): 2 * 0.05^2, 2 * 0.95^2, 2 * 0.15^2, 2 * 0.75^2
    #   = 0.005, 1.805, 0.045, 1.125 -> mean 0.745; per class 0.745 / 2 = 0.3725.
    proba = np.array([[0.95, 0.05], [0.95, 0.05], [0.85, 0.15], [0.25, 0.75]])
    result = reliability(np.array([0, 1, 0, 0]), proba, ("a", "b"))
    top = result.top_label
    assert top.count == [0, 0, 0, 0, 0, 0, 0, 1, 1, 2]
    assert top.mean_predicted[7:] == pytest.approx([0.75, 0.85, 0.95])
    assert top.observed_frequency[7:] == pytest.approx([0.0, 1.0, 0.5])
    assert top.mean_predicted[0] is None and top.observed_frequency[0] is None
    assert top.bin_lower[9] == pytest.approx(0.9) and top.bin_upper[9] == 1.0
    assert top.ece == pytest.approx(0.45)
    assert [curve.ece for curve in result.per_class] == pytest.approx([0.45, 0.45])
    assert result.brier == pytest.approx(0.745)
    assert [curve.brier for curve in result.per_class] == pytest.approx([0.3725, 0.3725])
    json.dumps(result.to_dict(), allow_nan=False)


def test_multiclass_brier_by_hand() -> None:
    # (0.7, 0.2, 0.1) truth 0: 0.3^2 + 0.2^2 + 0.1^2 = 0.14; (0.1, 0.3, 0.6) truth 1: 0.01 + 0.49 + 0.36 = 0.86
    result = reliability(np.array([0, 1]), np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), CLASSES)
    assert result.brier == pytest.approx(0.5)
    assert [curve.brier for curve in result.per_class] == pytest.approx([0.05, 0.265, 0.185])


def test_quantile_bins_hold_equal_counts() -> None:
    rng = np.random.default_rng(15)
    proba = rng.dirichlet(np.ones(len(CLASSES)), size=1000)
    result = reliability(labels_drawn_from(proba, rng), proba, CLASSES, n_bins=5, strategy="quantile")
    assert all(curve.count == [200] * 5 for curve in result.per_class)
    with pytest.raises(ValueError, match=r"strategy='equal'"):
        reliability(np.array([0, 1]), np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), CLASSES, strategy="equal")


def over_confident(n: int, temperature: float, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) and a model that reports softmax(z * temperature) instead."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, len(CLASSES)))
    y = labels_drawn_from(softmax(z, axis=1), rng)
    return y, z * temperature, softmax(z * temperature, axis=1)


@pytest.mark.parametrize("true_temperature", [2.5, 0.6])
def test_fit_temperature_recovers_a_known_temperature(true_temperature: float) -> None:
    # 20,000 rows: the maximum-likelihood T has a standard error near 1 %; the tolerance is 5 %.
    y, logits, proba = over_confident(20_000, true_temperature, seed=16)
    assert fit_temperature(logits, y, inputs="logits") == pytest.approx(true_temperature, rel=0.05)
    assert fit_temperature(proba, y) == pytest.approx(true_temperature, rel=0.05)
    rescaled = apply_temperature(proba, fit_temperature(proba, y))
    assert np.array_equal(rescaled.argmax(axis=1), proba.argmax(axis=1))


def test_cross_fitted_temperature_never_uses_the_fold_it_is_applied_to() -> None:
    # Fold 0 is over-confident (T = 3), folds 1-3 are calibrated (T = 1). Fold 0's temperature is
    # fitted on folds 1-3 only, so it stays near 1; any fit that saw fold 0 would be pulled well above.
    parts = [over_confident(3000, 3.0 if fold == 0 else 1.0, seed=17 + fold) for fold in range(4)]
    y = np.concatenate([part[0] for part in parts])
    proba = np.concatenate([part[2] for part in parts])
    folds = np.repeat(np.arange(4), 3000)
    calibrated, temperatures = cross_fitted_temperature(y, proba, folds)
    assert temperatures[0] == pytest.approx(1.0, abs=0.1)
    assert fit_temperature(proba, y) > 1.3
    assert all(temperatures[fold] > 1.3 for fold in (1, 2, 3))
    for fold in range(4):
        rows = folds == fold
        assert temperatures[fold] == fit_temperature(proba[~rows], y[~rows])
        assert np.array_equal(calibrated[rows], apply_temperature(proba[rows], temperatures[fold]))


# --- operating point -------------------------------------------------------------------------------

# Ten rows, worked by hand (an image is positive when score >= threshold):
#   score     0.95 0.90 0.80 0.70 0.60 0.55 0.40 0.30 0.20 0.10
#   truth     1    1    0    1    1    0    0    1    0    0        5 positives, 5 negatives
#   TP (>=)   1    2    2    3    4    4    4    5    5    5
#   FP (>=)   0    0    1    1    1    2    3    3    4    5
#   sens      .2   .4   .4   .6   .8   .8   .8   1    1    1
#   spec      1    1    .8   .8   .8   .6   .4   .4   .2   0
SCORE = np.array([0.95, 0.90, 0.80, 0.70, 0.60, 0.55, 0.40, 0.30, 0.20, 0.10])
TRUTH = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0])


def test_thresholds_for_a_target_by_hand() -> None:
    # sensitivity: the highest threshold that reaches the target; specificity: the lowest
    assert threshold_for_sensitivity(TRUTH, SCORE, 0.8) == 0.60
    assert threshold_for_sensitivity(TRUTH, SCORE, 0.5) == 0.70
    assert threshold_for_sensitivity(TRUTH, SCORE, 1.0) == 0.30
    assert threshold_for_specificity(TRUTH, SCORE, 0.8) == 0.60
    assert threshold_for_specificity(TRUTH, SCORE, 0.9) == 0.90
    assert threshold_for_specificity(TRUTH, SCORE, 0.5) == 0.55


def test_operating_point_by_hand_with_prevalence() -> None:
    # At 0.70: TP 3, FP 1, FN 2, TN 4; sens 3/5, spec 4/5, PPV 3/4, NPV 4/6.
    # At prevalence 0.1: PPV = 0.6 * 0.1 / (0.06 + 0.2 * 0.9) = 0.25; NPV = 0.8 * 0.9 / (0.72 + 0.4 * 0.1) = 18/19.
    # Wilson 95 % for 3/5 is [0.2307, 0.8824], for 4/5 [0.3755, 0.9638] (Brown, Cai & DasGupta 2001).
    point = operating_point(TRUTH, SCORE, threshold=0.70, prevalence=0.1)
    assert (point["tp"], point["fp"], point["fn"], point["tn"]) == (3, 1, 2, 4)
    assert point["sensitivity"] == pytest.approx(0.6) and point["specificity"] == pytest.approx(0.8)
    assert point["ppv"] == pytest.approx(0.75) and point["npv"] == pytest.approx(4 / 6)
    assert point["sample_prevalence"] == 0.5 and point["prevalence"] == 0.1
    assert point["ppv_at_prevalence"] == pytest.approx(0.25)
    assert point["npv_at_prevalence"] == pytest.approx(18 / 19)
    assert point["interval_method"] == "wilson"
    assert point["sensitivity_interval"] == pytest.approx({"low": 0.2307, "high": 0.8824}, abs=1e-4)
    assert point["specificity_interval"] == pytest.approx({"low": 0.3755, "high": 0.9638}, abs=1e-4)
    at_sample_prevalence = operating_point(TRUTH, SCORE, threshold=0.70, prevalence=0.5)
    assert at_sample_prevalence["ppv_at_prevalence"] == pytest.approx(point["ppv"])
    assert at_sample_prevalence["npv_at_prevalence"] == pytest.approx(point["npv"])
    json.dumps(point, allow_nan=False)


def test_operating_point_edge_cases() -> None:
    # the top score is a negative's: no observed threshold reaches specificity 0.9 (the best is 4/5)
    top_negative = np.array([0, 1, 1, 1, 1, 0, 0, 1, 0, 0])
    with pytest.raises(UnreachableTargetError, match="unreachable") as unreachable:
        threshold_for_specificity(top_negative, SCORE, 0.9)
    assert unreachable.value.best == pytest.approx(0.8)
    assert threshold_for_specificity(top_negative, SCORE, 0.8) == 0.60
    no_positive = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match="without positives"):
        threshold_for_sensitivity(no_positive, SCORE, 0.9)
    with pytest.raises(ValueError, match="without negatives"):
        threshold_for_specificity(1 - no_positive, SCORE, 0.9)
    point = operating_point(no_positive, SCORE, threshold=0.5, prevalence=0.2)
    assert point["sensitivity"] is None and point["sensitivity_interval"] is None
    assert point["specificity"] == pytest.approx(0.4) and point["ppv"] == 0.0
    assert point["ppv_at_prevalence"] is None and point["npv_at_prevalence"] is None
    nothing_called = operating_point(TRUTH, SCORE, threshold=0.99)
    assert nothing_called["ppv"] is None and nothing_called["npv"] == 0.5
    for prevalence in (0, 1, 1.5):
        with pytest.raises(ValueError, match=rf"prevalence={prevalence}"):
            operating_point(TRUTH, SCORE, threshold=0.5, prevalence=prevalence)
    with pytest.raises(ValueError, match=r"target=0"):
        threshold_for_sensitivity(TRUTH, SCORE, 0)
    with pytest.raises(ValueError, match="y_true_binary"):
        operating_point(np.array([0, 2]), np.array([0.1, 0.2]), threshold=0.5)


def _as_nan(value: float | None) -> float:
    return math.nan if value is None else value


@pytest.mark.parametrize(
    ("n", "positive_rate", "prevalence"),
    [(900, 0.3, 0.02), (400, 0.5, None), (300, 0.0, 0.2), (300, 1.0, 0.2), (10, 0.5, 0.1)],
)
def test_the_vectorised_sweep_is_the_per_threshold_operating_point(n, positive_rate, prevalence) -> None:
    """Every rate of the sweep is the float ``operating_point`` gives at that threshold: ties, thresholds between
    and outside the scores, no positives, no negatives."""
    rng = np.random.default_rng(n)
    truth = (rng.random(n) < positive_rate).astype(int)
    score = np.round(np.clip(rng.beta(2, 2, n) + 0.25 * truth, 0, 1), 3)  # rounded: ties
    observed = sweep_thresholds(score, max_points=250)
    assert len(observed) <= 250 and np.all(np.diff(observed) > 0) and np.isin(observed, score).all()
    between = np.linspace(-0.05, 1.05, 150)
    for thresholds in (None, np.concatenate([observed, between])):
        sweep = threshold_sweep(truth, score, thresholds=thresholds, max_points=250, prevalence=prevalence)
        assert np.all(np.diff(sweep.threshold) >= 0) and len(sweep) == len(sweep.tp)
        for k, t in enumerate(sweep.threshold):
            point = operating_point(truth, score, threshold=float(t), prevalence=prevalence)
            counts = [int(c[k]) for c in (sweep.tp, sweep.fp, sweep.tn, sweep.fn)]
            assert counts == [point[c] for c in ("tp", "fp", "tn", "fn")]
            for name in (*MEASURES, "ppv_at_prevalence", "npv_at_prevalence"):
                np.testing.assert_array_equal(getattr(sweep, name)[k], _as_nan(point[name]), err_msg=f"{name} at {t}")


def test_the_sweep_by_hand_and_its_points_spaced_by_rank() -> None:
    sweep = threshold_sweep(TRUTH, SCORE)
    np.testing.assert_array_equal(sweep.threshold, np.sort(SCORE))
    np.testing.assert_allclose(sweep.sensitivity, [1, 1, 1, 0.8, 0.8, 0.8, 0.6, 0.4, 0.4, 0.2])
    np.testing.assert_allclose(sweep.specificity, [0, 0.2, 0.4, 0.4, 0.6, 0.8, 0.8, 0.8, 1, 1])
    assert np.isnan(sweep.ppv_at_prevalence).all() and sweep.prevalence is None
    np.testing.assert_array_equal(sweep_thresholds(SCORE, max_points=4), np.sort(SCORE)[[0, 3, 6, 9]])
    with pytest.raises(ValueError, match=r"prevalence=1"):
        threshold_sweep(TRUTH, SCORE, prevalence=1)
    with pytest.raises(ValueError, match="finite"):
        threshold_sweep(TRUTH, SCORE, thresholds=np.array([0.5, np.nan]))


def test_the_operating_point_object_is_the_dict() -> None:
    point = find_operating_point(TRUTH, SCORE, threshold=0.70, prevalence=0.1)
    assert point.to_dict() == operating_point(TRUTH, SCORE, threshold=0.70, prevalence=0.1)
    assert list(point.to_dict())[:7] == ["threshold", "tp", "fp", "tn", "fn", "n_positive", "n_negative"]
    assert (point.n_positive, point.n_negative) == (5, 5)
    assert point.fraction("ppv") == (3, 4) and point.rate("npv") == pytest.approx(4 / 6)
    assert point.at_prevalence("sensitivity") == point.sensitivity
    assert point.at_prevalence("ppv") == point.ppv_at_prevalence
    assert point.interval("sensitivity").to_dict() == point.to_dict()["sensitivity_interval"]
    with pytest.raises(ValueError, match="measure must be one of"):
        point.rate("f1")
