"""Read-side tables of the ROC, precision-recall and reliability curves of one model's out-of-fold predictions.

The curves come from ``evaluation.discrimination`` and ``evaluation.calibration``; this module only
lays them out as long tables (one row per point or bin) that a chart draws and a page shows, and
reads the figures that ``evaluation.summary.model_summary`` caches (intervals, ECE, Brier,
temperatures) into tables, so that a page shows the report's numbers and not a recomputation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.evaluation.calibration import TOP_LABEL, cross_fitted_temperature, reliability
from engine.evaluation.discrimination import CurveSet, PrCurve, RocCurve, pr_curves, roc_curves
from engine.evaluation.predictions import OutOfFold

POOLED = "pooled"
ROC_POINTS = {"fpr": "fpr", "sensitivity": "tpr", "specificity": "specificity", "threshold": "thresholds"}
"""The columns of a ROC point, after its curve's, each with the :class:`RocCurve` attribute it comes from."""
PR_POINTS = {
    "recall": "recall",
    "precision": "precision",
    "sensitivity": "recall",
    "specificity": "specificity",
    "threshold": "thresholds",
}
"""The columns of a precision-recall point, after its curve's, each with the :class:`PrCurve` attribute."""
AREA_COLUMNS = ["class", "curve", "fold", "area", "n_positive", "n_negative", "prevalence"]
BIN_COLUMNS = ["label", "bin", "lower", "upper", "count", "mean_predicted", "observed_frequency", "gap"]


def curve_name(fold: int | None) -> str:
    return POOLED if fold is None else f"fold {fold}"


def threshold_text(threshold: float | None) -> str:
    """A threshold for a hover label: enough digits to tell 0.99996 from 1, and what a missing one means."""
    return "none (no image called positive)" if threshold is None else f"≥ {threshold:.6g}"


def roc_points(curves: CurveSet) -> pd.DataFrame:
    """One row per point of every ROC curve (pooled first, then each fold), ``fpr`` = 1 − specificity."""
    return _points(curves, ROC_POINTS)


def pr_points(curves: CurveSet) -> pd.DataFrame:
    """One row per point of every precision-recall curve; ``recall`` is the sensitivity."""
    return _points(curves, PR_POINTS)


def _points(curves: CurveSet, point_columns: dict[str, str]) -> pd.DataFrame:
    """One row per point of every curve (pooled first, then each fold): the curve's class, name and fold, then
    each of ``point_columns`` (column: the curve's attribute that lists it, point by point)."""
    rows = [
        [curve.class_name, curve_name(curve.fold), curve.fold, *point]
        for curve in [*curves.pooled, *curves.per_fold]
        for point in zip(*(getattr(curve, attribute) for attribute in point_columns.values()), strict=True)
    ]
    table = pd.DataFrame(rows, columns=["class", "curve", "fold", *point_columns])
    table["fold"] = table["fold"].astype("Int64")
    table["threshold_text"] = [threshold_text(None if pd.isna(t) else float(t)) for t in table["threshold"]]
    table["threshold"] = table["threshold"].astype("float64")
    return table


def curve_areas(curves: CurveSet) -> pd.DataFrame:
    """The area of every curve: AUC of a ROC curve, average precision of a PR curve, with its counts."""

    def area(curve: RocCurve | PrCurve) -> float:
        return curve.auc if isinstance(curve, RocCurve) else curve.average_precision

    rows = [
        {
            "class": curve.class_name,
            "curve": curve_name(curve.fold),
            "fold": curve.fold,
            "area": area(curve),
            "n_positive": curve.n_positive,
            "n_negative": curve.n_negative,
            "prevalence": curve.n_positive / (curve.n_positive + curve.n_negative),
        }
        for curve in [*curves.pooled, *curves.per_fold]
    ]
    table = pd.DataFrame(rows, columns=AREA_COLUMNS)
    table["fold"] = table["fold"].astype("Int64")
    return table


def missing_curves(curves: CurveSet) -> pd.DataFrame:
    """The curves that cannot be drawn (a class with no positive or no negative image in a fold)."""
    table = pd.DataFrame(
        [{"class": gap.class_name, "curve": curve_name(gap.fold), "reason": gap.reason} for gap in curves.missing],
        columns=["class", "curve", "reason"],
    )
    return table


@dataclass(frozen=True)
class DiscriminationView:
    """Everything the ROC and precision-recall page draws for one model."""

    classes: tuple[str, ...]
    folds: list[int]
    n_images: int
    members: tuple[str, ...]
    roc: pd.DataFrame
    roc_areas: pd.DataFrame
    pr: pd.DataFrame
    pr_areas: pd.DataFrame
    missing: pd.DataFrame


def discrimination_view(oof: OutOfFold) -> DiscriminationView:
    """One-vs-rest ROC and PR curves of every class, pooled over the folds and per fold."""
    roc = roc_curves(oof.y_true, oof.proba, oof.classes, folds=oof.folds)
    pr = pr_curves(oof.y_true, oof.proba, oof.classes, folds=oof.folds)
    return DiscriminationView(
        classes=tuple(oof.classes),
        folds=oof.fold_ids,
        n_images=len(oof),
        members=tuple(oof.members),
        roc=roc_points(roc),
        roc_areas=curve_areas(roc),
        pr=pr_points(pr),
        pr_areas=curve_areas(pr),
        missing=missing_curves(roc),
    )


def interval_table(summary: dict, classes: tuple[str, ...] | list[str], metric: str) -> pd.DataFrame:
    """``metric[<class>]`` of every class from a model summary: estimate and interval (NaN where undefined)."""
    rows = []
    for name in classes:
        found = summary["metrics"].get(f"{metric}[{name}]") or {}
        rows.append(
            {
                "class": name,
                "estimate": _number(found.get("estimate")),
                "low": _number(found.get("low")),
                "high": _number(found.get("high")),
            }
        )
    return pd.DataFrame(rows, columns=["class", "estimate", "low", "high"])


def model_comparison(summaries: dict[str, dict], classes: tuple[str, ...] | list[str], metric: str) -> pd.DataFrame:
    """One row per model: ``metric`` of each class with its interval, and their mean over classes.

    Columns ``<class>``, ``<class> low``, ``<class> high``, ``mean``, ``mean low``, ``mean high``,
    beside ``model``, ``folds`` and ``images`` (models of one study may cover different folds).
    """
    rows = []
    for model, summary in summaries.items():
        row: dict[str, object] = {"model": model, "folds": len(summary["folds"]), "images": summary["n_images"]}
        for name in [*classes, None]:
            found = summary["metrics"].get(metric if name is None else f"{metric}[{name}]") or {}
            column = "mean" if name is None else name
            row[column] = _number(found.get("estimate"))
            row[f"{column} low"] = _number(found.get("low"))
            row[f"{column} high"] = _number(found.get("high"))
        rows.append(row)
    return pd.DataFrame(rows)


def _number(value: object) -> float:
    return math.nan if value is None else float(value)


def reliability_bins(curves) -> pd.DataFrame:
    """One row per bin of each reliability curve (``curves``: ``ReliabilityCurve`` objects), bins numbered from 1.

    ``gap`` is observed frequency − mean predicted probability: negative where the model is over-confident.
    Empty bins are kept, with a count of 0 and NaN means.
    """
    rows = [
        {
            "label": curve.label,
            "bin": index + 1,
            "lower": lower,
            "upper": upper,
            "count": count,
            "mean_predicted": _number(predicted),
            "observed_frequency": _number(observed),
        }
        for curve in curves
        for index, (lower, upper, count, predicted, observed) in enumerate(
            zip(
                curve.bin_lower,
                curve.bin_upper,
                curve.count,
                curve.mean_predicted,
                curve.observed_frequency,
                strict=True,
            )
        )
    ]
    table = pd.DataFrame(rows, columns=BIN_COLUMNS[:-1])
    table["count"] = table["count"].astype("int64")
    table["gap"] = table["observed_frequency"] - table["mean_predicted"]
    return table


@dataclass(frozen=True)
class Diagrams:
    """Reliability bins of the top label and of each class, their ECE and Brier score, with one binning."""

    bins: pd.DataFrame
    figures: pd.DataFrame
    brier: float


@dataclass(frozen=True)
class CalibrationView:
    """The reliability diagrams of one model, as predicted and after cross-fitted temperature scaling.

    ``scaled`` and ``temperatures`` are None when the model has fewer than 2 folds (nothing to fit on).
    """

    classes: tuple[str, ...]
    folds: list[int]
    n_images: int
    members: tuple[str, ...]
    strategy: str
    n_bins: int
    raw: Diagrams
    scaled: Diagrams | None
    temperatures: dict[int, float] | None


def diagrams(y_true: np.ndarray, proba: np.ndarray, classes, *, n_bins: int, strategy: str) -> Diagrams:
    found = reliability(y_true, proba, classes, n_bins=n_bins, strategy=strategy)
    curves = [found.top_label, *found.per_class]
    figures = pd.DataFrame(
        [{"label": c.label, "ece": c.ece, "brier": c.brier, "images": int(sum(c.count))} for c in curves],
        columns=["label", "ece", "brier", "images"],
    )
    return Diagrams(bins=reliability_bins(curves), figures=figures, brier=found.brier)


def calibration_view(oof: OutOfFold, *, n_bins: int = 10, strategy: str = "uniform") -> CalibrationView:
    """Reliability per class and for the top label, before and after cross-fitted temperature scaling."""
    scaled = temperatures = None
    if len(oof.fold_ids) >= 2:
        calibrated, temperatures = cross_fitted_temperature(oof.y_true, oof.proba, oof.folds)
        scaled = diagrams(oof.y_true, calibrated, oof.classes, n_bins=n_bins, strategy=strategy)
    return CalibrationView(
        classes=tuple(oof.classes),
        folds=oof.fold_ids,
        n_images=len(oof),
        members=tuple(oof.members),
        strategy=strategy,
        n_bins=n_bins,
        raw=diagrams(oof.y_true, oof.proba, oof.classes, n_bins=n_bins, strategy=strategy),
        scaled=scaled,
        temperatures=temperatures,
    )


def calibration_figures(summary: dict, classes: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Top-label ECE, ECE of each class and the Brier score from a model summary, before and after scaling.

    ``after`` and ``change`` are NaN when the summary has no temperature scaling (a single fold).
    """
    before, after = summary["calibration"]["before"], summary["calibration"]["after"]

    def figures(found: dict | None) -> list[float]:
        if found is None:
            return [math.nan] * (len(classes) + 2)
        return [found["ece_top_label"], *(found["ece"][name] for name in classes), found["brier"]]

    table = pd.DataFrame(
        {
            "measure": [f"ECE ({TOP_LABEL})", *(f"ECE ({name})" for name in classes), "Brier score"],
            "before": figures(before),
            "after": figures(after),
        }
    )
    table["change"] = table["after"] - table["before"]
    return table


def temperature_table(summary: dict) -> pd.DataFrame:
    """Each fold's temperature from a model summary, the folds it was fitted on, and what it does."""
    temperatures = {int(fold): float(t) for fold, t in (summary["calibration"]["temperatures"] or {}).items()}
    return pd.DataFrame(
        [
            {
                "fold": fold,
                "temperature": t,
                "fitted on folds": ", ".join(str(f) for f in sorted(temperatures) if f != fold),
                "effect": "softens: over-confident on the folds it was fitted on"
                if t > 1
                else "sharpens: under-confident on the folds it was fitted on",
            }
            for fold, t in sorted(temperatures.items())
        ],
        columns=["fold", "temperature", "fitted on folds", "effect"],
    )
