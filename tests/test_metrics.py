"""Metric definitions against values computed by hand and against Keras' own metrics."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from engine.evaluation.metrics import (
    categorical_crossentropy,
    flat_metrics,
    fold_metrics,
    paper_metrics,
    per_class_from_confusion,
)

CLASSES = ("COVID-19", "Normal", "Viral Pneumonia")
Y = np.array([0, 0, 1, 1, 2, 2])
P = np.array(
    [
        [0.9, 0.05, 0.05],
        [0.4, 0.35, 0.25],
        [0.1, 0.8, 0.1],
        [0.2, 0.2, 0.6],
        [0.1, 0.1, 0.8],
        [0.3, 0.3, 0.4],
    ]
)


def test_paper_precision_recall_by_hand():
    # cells above 0.5: (0,0) TP, (2,1) TP, (3,2) FP, (4,2) TP -> TP 3, FP 1, FN 6 - 3 = 3 (row 5 has none)
    m = paper_metrics(Y, P)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 6)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)


def test_paper_metrics_equal_keras_precision_and_recall():
    onehot = np.eye(3)[Y]
    kp, kr = keras.metrics.Precision(), keras.metrics.Recall()
    kp.update_state(onehot, P)
    kr.update_state(onehot, P)
    m = paper_metrics(Y, P)
    assert m["precision"] == pytest.approx(float(kp.result()), abs=1e-6)
    assert m["recall"] == pytest.approx(float(kr.result()), abs=1e-6)


def test_paper_precision_can_exceed_accuracy_as_in_the_paper():
    # two confident right answers, two unsure wrong ones with no class above 0.5 (so no false positive)
    y = np.array([0, 1, 2, 0])
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    m = fold_metrics(y, p, CLASSES)
    assert m["accuracy"] == 0.5
    assert m["paper"]["precision"] == 1.0 and m["paper"]["recall"] == 0.5


def test_proper_metrics_by_hand():
    m = fold_metrics(Y, P, CLASSES)
    # predictions: 0, 0, 1, 2, 2, 2
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [0, 0, 2]]
    pc = m["per_class"]
    assert pc["COVID-19"]["recall"] == 1.0 and pc["COVID-19"]["precision"] == 1.0
    assert pc["Normal"]["recall"] == 0.5 and pc["Normal"]["specificity"] == 1.0
    assert pc["Viral Pneumonia"]["precision"] == pytest.approx(2 / 3)
    assert pc["Viral Pneumonia"]["specificity"] == pytest.approx(3 / 4)
    assert m["macro"]["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["roc_auc_ovr"] is not None and 0.5 < m["roc_auc_ovr"] <= 1.0


def test_loss_matches_keras_crossentropy():
    expected = float(keras.losses.SparseCategoricalCrossentropy()(Y, P))
    assert categorical_crossentropy(Y, P) == pytest.approx(expected, rel=1e-5)


def test_npv_and_specificity_from_confusion():
    stats = per_class_from_confusion(np.array([[8, 2], [1, 9]]))
    assert stats["sensitivity"].tolist() == pytest.approx([0.8, 0.9])
    assert stats["specificity"].tolist() == pytest.approx([0.9, 0.8])
    assert stats["npv"].tolist() == pytest.approx([9 / 11, 8 / 9])


def test_flat_metrics_have_stable_keys():
    flat = flat_metrics(fold_metrics(Y, P, CLASSES))
    for key in ("accuracy", "loss", "precision", "recall", "f1", "macro_f1", "recall[COVID-19]", "specificity[Normal]"):
        assert key in flat


def test_shape_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"proba must have shape \(6, 3\), got \(6, 2\)"):
        fold_metrics(Y, P[:, :2], CLASSES)
