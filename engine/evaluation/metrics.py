"""Fold metrics in two definitions: the paper's, to reproduce its Table 1, and proper per-class ones.

The paper's precision/recall are Keras ``Precision()``/``Recall()`` on one-hot targets and softmax
outputs with a 0.5 threshold: every (image, class) cell counts as one binary decision, so the
many easy "not this class" cells lift precision above accuracy. The per-class (macro) ones are
what to judge a model by.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

EPSILON = 1e-7


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def paper_metrics(y_true: np.ndarray, proba: np.ndarray, *, threshold: float = 0.5) -> dict[str, float]:
    """Keras ``Precision()``/``Recall()`` on one-hot targets, and F1 from them."""
    onehot = np.eye(proba.shape[1], dtype=bool)[y_true]
    predicted = proba > threshold
    tp = np.sum(onehot & predicted)
    fp = np.sum(~onehot & predicted)
    fn = np.sum(onehot & ~predicted)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def categorical_crossentropy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean cross-entropy with Keras' clipping, so it matches the loss Keras reports."""
    picked = np.clip(proba[np.arange(len(y_true)), y_true], EPSILON, 1.0 - EPSILON)
    return float(-np.mean(np.log(picked)))


def confusion_rates(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row divided by its sum (recall view) and each column by its sum (precision view); empty ones are 0."""
    cm = np.asarray(cm, dtype=np.float64)
    rows, columns = cm.sum(axis=1, keepdims=True), cm.sum(axis=0, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0), np.divide(
        cm, columns, out=np.zeros_like(cm), where=columns > 0
    )


def per_class_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, precision, NPV and F1 of each class (one-vs-rest) from a confusion matrix.

    The one place these are computed: fold metrics, the pages and the report all use it. An
    undefined ratio (no true or no predicted member) is 0, as scikit-learn's ``zero_division=0``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = total - tp - fn - fp
    div = np.vectorize(_safe_div)
    return {
        "sensitivity": div(tp, tp + fn),
        "specificity": div(tn, tn + fp),
        "precision": div(tp, tp + fp),
        "npv": div(tn, tn + fn),
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "support": cm.sum(axis=1),
    }


def fold_metrics(y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict:
    """Every metric of one held-out fold, as plain JSON-ready values with stable keys."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(y_true), len(classes)):
        raise ValueError(f"proba must have shape ({len(y_true)}, {len(classes)}), got {proba.shape}")
    labels = list(range(len(classes)))
    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    per_class = per_class_from_confusion(cm)
    present = np.unique(y_true)
    auc: list[float] = []
    for k in labels:
        auc.append(roc_auc_score(y_true == k, proba[:, k]) if k in present and len(present) > 1 else math.nan)
    valid_auc = [a for a in auc if not math.isnan(a)]
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "loss": categorical_crossentropy(y_true, proba),
        "paper": paper_metrics(y_true, proba),
        "macro": {
            "precision": float(np.mean(per_class["precision"])),
            "recall": float(np.mean(per_class["sensitivity"])),
            "f1": float(np.mean(per_class["f1"])),
        },
        "roc_auc_ovr": float(np.mean(valid_auc)) if valid_auc else None,
        "per_class": {
            name: {
                "precision": float(per_class["precision"][k]),
                "recall": float(per_class["sensitivity"][k]),
                "f1": float(per_class["f1"][k]),
                "specificity": float(per_class["specificity"][k]),
                "npv": float(per_class["npv"][k]),
                "roc_auc": None if math.isnan(auc[k]) else float(auc[k]),
                "support": int(per_class["support"][k]),
            }
            for k, name in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def flat_metrics(metrics: dict) -> dict[str, float]:
    """One level of named figures for tables and summaries.

    ``precision``/``recall``/``f1`` are the paper's definitions; ``macro_*`` the per-class means;
    ``recall[COVID-19]`` and the like are per class.
    """
    flat = {
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "precision": metrics["paper"]["precision"],
        "recall": metrics["paper"]["recall"],
        "f1": metrics["paper"]["f1"],
        "macro_precision": metrics["macro"]["precision"],
        "macro_recall": metrics["macro"]["recall"],
        "macro_f1": metrics["macro"]["f1"],
    }
    if metrics.get("roc_auc_ovr") is not None:
        flat["roc_auc"] = metrics["roc_auc_ovr"]
    for name, values in metrics["per_class"].items():
        for key in ("precision", "recall", "f1", "specificity"):
            flat[f"{key}[{name}]"] = values[key]
    return flat
