"""Operating point: one class as a yes/no test, at a threshold chosen by target sensitivity, specificity or hand.

The score is the class's out-of-fold probability (one-vs-rest): an image is called positive when its
score is at least the threshold. Sensitivity, specificity, PPV and NPV at that threshold come with
Wilson intervals; PPV and NPV are also recomputed at a chosen prevalence (Bayes' rule), since a
clinic's mix of cases is not the study's. The whole point (model, class, mode, target or threshold,
prevalence) is kept in the URL, so a copied link opens it again.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from engine.evaluation.discrimination import roc_curves
from engine.evaluation.operating_point import (
    OperatingPoint,
    UnreachableTargetError,
    find_operating_point,
    threshold_for_sensitivity,
    threshold_for_specificity,
    threshold_sweep,
)
from engine.evaluation.predictions import ENSEMBLE, OutOfFold
from engine.results import artifacts
from pages import common

common.require_router(__file__)

DEFAULT_CLASS = "COVID-19"
MODES = {
    "sensitivity": "Target sensitivity",
    "specificity": "Target specificity",
    "threshold": "Threshold (drag it)",
}
DEFAULT_TARGET = 0.95
DEFAULT_THRESHOLD = 0.5
TARGET_RANGE = (0.05, 1.0)
SWEEP_POINTS = 600
MEASURES = {
    "sensitivity": "sensitivity (recall)",
    "specificity": "specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
}
OPTIMISM_NOTE = (
    "**A threshold chosen here is optimistic for these images.** It was chosen and evaluated on the same "
    "out-of-fold predictions, so its sensitivity and specificity are the best case for them: confirm it on "
    "external data (images from another source, which no fold saw) before relying on it."
)
PREVALENCE_NOTE = (
    "A clinic's prevalence differs from a curated research set's. PPV and NPV depend on it: at a chosen "
    "prevalence they are recomputed by Bayes' rule from this sensitivity and specificity (the prevalence "
    "is taken as known, so these two have no interval)."
)


@st.cache_data(show_spinner=False, max_entries=32)
def _sweep(artifacts_root: str, study_id: str, model: str, class_name: str, key: tuple) -> pd.DataFrame:
    """Sensitivity and specificity at up to ``SWEEP_POINTS`` observed scores, spaced by rank."""
    positive, score = binary(common.out_of_fold_of(artifacts_root, study_id, model, key), class_name)
    sweep = threshold_sweep(positive, score, max_points=SWEEP_POINTS)
    return pd.DataFrame(
        {"threshold": sweep.threshold, "sensitivity": sweep.sensitivity, "specificity": sweep.specificity}
    )


@st.cache_data(show_spinner=False, max_entries=32)
def _roc(
    artifacts_root: str, study_id: str, model: str, class_name: str, key: tuple
) -> tuple[list, list, float] | None:
    oof = common.out_of_fold_of(artifacts_root, study_id, model, key)
    for curve in roc_curves(oof.y_true, oof.proba, oof.classes).pooled:
        if curve.class_name == class_name:
            return curve.fpr, curve.tpr, curve.auc
    return None


def binary(oof: OutOfFold, class_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The class as yes/no: (is it this class, its probability) per image."""
    k = oof.classes.index(class_name)
    return oof.y_true == k, oof.proba[:, k]


def remembered_number(param: str, default: float, low: float, high: float) -> float:
    """The URL's (or session's) number for ``param`` within [low, high], else ``default``."""
    try:
        value = float(common.remembered(param) or "nan")
    except ValueError:
        return default
    return min(max(value, low), high) if math.isfinite(value) else default


def model_label(model: str, oof_members: dict[str, tuple[str, ...]]) -> str:
    if model == ENSEMBLE:
        return f"ensemble (mean of {', '.join(oof_members.get(model, ()))})"
    return model


def choose_class(classes: tuple[str, ...], where) -> str:
    """The class (COVID-19 first when the study has it); a new class starts at its own prevalence."""
    if common.remembered("class") not in classes and DEFAULT_CLASS in classes:
        common.remember(**{"class": DEFAULT_CLASS})
    class_name = common.choose("Class (one-vs-rest)", list(classes), param="class", where=where)
    previous = st.session_state.get("op-class")
    if previous is not None and previous != class_name:
        common.remember(prevalence=None)
    st.session_state["op-class"] = class_name
    return class_name


def choose_mode(where) -> str:
    wanted = common.remembered("mode")
    modes = list(MODES)
    mode = where.radio(
        "Choose the threshold by",
        modes,
        index=modes.index(wanted) if wanted in MODES else 0,
        format_func=MODES.get,
        key="op-mode",
    )
    common.remember(mode=mode)
    return mode


def choose_target_or_threshold(mode: str, where) -> float:
    """The target (a sensitivity or specificity) or the threshold itself, by mode; only that one is in the URL."""
    if mode == "threshold":
        start = st.session_state.get("op-last-threshold", DEFAULT_THRESHOLD)
        threshold = where.slider(
            "Threshold: called positive when the probability is at least",
            0.0,
            1.0,
            value=remembered_number("threshold", start, 0.0, 1.0),
            step=0.001,
            format="%.3f",
            key="op-threshold",
        )
        common.remember(threshold=repr(float(threshold)), target=None)
        return float(threshold)
    target = where.slider(
        f"Target {mode}",
        *TARGET_RANGE,
        value=remembered_number("target", DEFAULT_TARGET, *TARGET_RANGE),
        step=0.005,
        format="%.3f",
        key=f"op-target-{mode}",
    )
    common.remember(target=f"{target:.6g}", threshold=None)
    return float(target)


def choose_prevalence(sample_prevalence: float, class_name: str, where) -> float:
    """The prevalence (in %) at which PPV and NPV are recomputed; the study's own by default."""
    prevalence = where.number_input(
        f"Prevalence of {class_name} (%)",
        min_value=0.01,
        max_value=99.99,
        value=remembered_number("prevalence", 100 * sample_prevalence, 0.01, 99.99),
        step=0.1,
        format="%.2f",
        key=f"op-prevalence-{class_name}",
        help=f"This study's: {100 * sample_prevalence:.2f} %. Set your clinic's to see its PPV and NPV.",
    )
    common.remember(prevalence=f"{prevalence:.6g}")
    return prevalence / 100.0


def threshold_for(mode: str, value: float, positive: np.ndarray, score: np.ndarray) -> float:
    """The threshold of the chosen mode; an unreachable specificity falls back to the nearest point, with a warning."""
    if mode == "threshold":
        return value
    if mode == "sensitivity":
        return threshold_for_sensitivity(positive, score, value)
    try:
        return threshold_for_specificity(positive, score, value)
    except UnreachableTargetError as exc:
        highest = float(score.max())
        st.warning(
            f"No threshold reaches a specificity of {value:.1%}: negatives hold the highest score "
            f"({highest:.6g}), so even there specificity is {exc.best:.2%}. Showing that nearest achievable "
            "point (the highest threshold); lower the target to reach it.",
            icon=":material/warning:",
        )
        return highest


def percent(value: float | None) -> str:
    """A rate as a percentage, with a second decimal where one would round a rate short of 100 % up to it."""
    if value is None:
        return "undefined"
    digits = 2 if 0.9995 <= value < 1.0 or 0.0 < value < 0.0005 else 1
    return f"{value:.{digits}%}"


def headline(point: OperatingPoint, prevalence: float) -> None:
    columns = st.columns(5)
    columns[0].metric("Threshold", f"{point.threshold:.4g}")
    columns[1].metric("Sensitivity", percent(point.sensitivity))
    columns[2].metric("Specificity", percent(point.specificity))
    columns[3].metric(f"PPV at {prevalence:.2%}", percent(point.ppv_at_prevalence))
    columns[4].metric(f"NPV at {prevalence:.2%}", percent(point.npv_at_prevalence))


def figures_table(point: OperatingPoint) -> pd.DataFrame:
    """Each measure in this sample with its Wilson interval and counts, and PPV/NPV at the chosen prevalence."""
    rows = []
    for key, label in MEASURES.items():
        interval = point.interval(key)
        successes, trials = point.fraction(key)
        rows.append(
            {
                "measure": label,
                "in this sample": point.rate(key),
                "95% low": interval.low if interval else None,
                "95% high": interval.high if interval else None,
                "from": f"{successes:,} / {trials:,}",
                "at the chosen prevalence": point.at_prevalence(key),
            }
        )
    return pd.DataFrame(rows)


def counts_table(point: OperatingPoint, class_name: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "true class": [class_name, f"not {class_name}"],
            f"called {class_name}": [point.tp, point.fp],
            f"called not {class_name}": [point.fn, point.tn],
        }
    )


def chart(sweep: pd.DataFrame, roc: tuple | None, point: OperatingPoint, *, class_name: str, log_x: bool) -> go.Figure:
    """Sensitivity and specificity against the threshold, and the ROC curve, with the chosen point marked."""
    figure = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.62, 0.38],
        horizontal_spacing=0.08,
        subplot_titles=("Sensitivity and specificity against the threshold", "ROC curve"),
    )
    for measure, colour in (("sensitivity", "#1f77b4"), ("specificity", "#d62728")):
        figure.add_trace(
            go.Scatter(
                x=sweep["threshold"],
                y=sweep[measure],
                name=measure,
                mode="lines",
                line={"color": colour, "width": 2},
                hovertemplate="threshold %{x:.4g}: " + measure + " %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        figure.add_trace(
            go.Scatter(
                x=[point.threshold],
                y=[point.rate(measure)],
                mode="markers",
                marker={"color": colour, "size": 11, "symbol": "diamond", "line": {"width": 1, "color": "black"}},
                showlegend=False,
                hovertemplate=f"chosen threshold {point.threshold:.4g}: {measure} {point.rate(measure):.3f}"
                "<extra></extra>",
            ),
            row=1,
            col=1,
        )
    figure.add_vline(x=point.threshold, line={"color": "grey", "dash": "dash", "width": 1}, row=1, col=1)
    if roc is not None:
        fpr, tpr, auc = roc
        figure.add_trace(
            go.Scatter(
                x=fpr,
                y=tpr,
                name=f"ROC (AUC {auc:.3f})",
                mode="lines",
                line={"color": "#2ca02c", "width": 2},
                hovertemplate="1 − specificity %{x:.3f}, sensitivity %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=2,
        )
        figure.add_trace(
            go.Scatter(
                x=[1 - point.specificity],
                y=[point.sensitivity],
                name="chosen point",
                mode="markers",
                marker={"color": "black", "size": 11, "symbol": "x"},
                hovertemplate="chosen point: 1 − specificity %{x:.3f}, sensitivity %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    figure.update_xaxes(title_text=f"threshold on p[{class_name}]", type="log" if log_x else "linear", row=1, col=1)
    figure.update_yaxes(title_text="rate", range=[0, 1.02], row=1, col=1)
    figure.update_xaxes(title_text="1 − specificity", range=[0, 1], row=1, col=2)
    figure.update_yaxes(title_text="sensitivity", range=[0, 1.02], row=1, col=2)
    figure.update_layout(
        height=420, margin={"t": 40, "l": 10, "r": 10, "b": 10}, legend={"orientation": "h", "y": -0.2}
    )
    return figure


def data_caption(oof: OutOfFold, class_name: str, model: str, point: OperatingPoint) -> None:
    n_folds = len(oof.fold_ids)
    st.caption(
        f"Score: {model}'s out-of-fold probability of {class_name} (one-vs-rest); an image is called {class_name} "
        f"when its score is at least the threshold. Pooled out-of-fold predictions of {n_folds} "
        f"fold{'s' if n_folds != 1 else ''}, {len(oof):,} images ({point.n_positive:,} {class_name}, "
        f"{point.n_negative:,} other): every image scored by a fold model that never saw it. Intervals: "
        f"{point.confidence:.0%} Wilson score intervals of each proportion."
    )


study_id = common.study_page("Operating point")
root = common.artifacts_root()
key = artifacts.changed_key(root, study_id)
st.caption(common.NOT_A_DEVICE)
models = common.require_models(
    study_id,
    none_yet="This study has no finished fold yet: its out-of-fold predictions appear here when one finishes.",
)
members = {m: common.out_of_fold_of(str(root), study_id, m, key).members for m in models if m == ENSEMBLE}
model_column, class_column = st.columns(2)
model = common.choose("Model", models, param="model", where=model_column, format_func=lambda m: model_label(m, members))
oof = common.out_of_fold_of(str(root), study_id, model, key)
class_name = choose_class(oof.classes, class_column)
positive, score = binary(oof, class_name)
if positive.all() or not positive.any():
    st.warning(
        f"{model}'s finished folds hold {'only' if positive.all() else 'no'} {class_name} images: "
        "sensitivity and specificity need both."
    )
    st.stop()
mode_column, value_column, prevalence_column = st.columns([1.2, 2, 1.2])
mode = choose_mode(mode_column)
value = choose_target_or_threshold(mode, value_column)
prevalence = choose_prevalence(float(positive.mean()), class_name, prevalence_column)
threshold = threshold_for(mode, value, positive, score)
st.session_state["op-last-threshold"] = threshold
point = find_operating_point(positive, score, threshold=threshold, prevalence=prevalence)
data_caption(oof, class_name, model, point)
headline(point, prevalence)
st.info(OPTIMISM_NOTE, icon=":material/info:")

st.subheader("At this threshold")
st.dataframe(
    figures_table(point),
    hide_index=True,
    column_config={
        c: st.column_config.NumberColumn(format="percent")
        for c in ("in this sample", "95% low", "95% high", "at the chosen prevalence")
    },
)
st.caption(
    f"In this sample {class_name} is {point.sample_prevalence:.2%} of the images; the last column "
    f"recomputes PPV and NPV at {prevalence:.2%}. {PREVALENCE_NOTE}"
)
st.subheader("Confusion counts")
counts_column, _ = st.columns([3, 2])
counts_column.dataframe(counts_table(point, class_name), hide_index=True)
counts_column.caption(
    f"At threshold {point.threshold:.6g}: TP {point.tp:,} (called {class_name}, and it is) · "
    f"FN {point.fn:,} (missed) · FP {point.fp:,} (false alarms) · TN {point.tn:,}."
)

log_x = st.toggle("Log scale for the threshold", value=False, help="Scores of a confident model pile up near 0 and 1.")
st.plotly_chart(
    chart(
        _sweep(str(root), study_id, model, class_name, key),
        _roc(str(root), study_id, model, class_name, key),
        point,
        class_name=class_name,
        log_x=log_x,
    ),
    width="stretch",
    key="operating-point-chart",
)
st.caption(
    f"Left: sensitivity and specificity at {min(SWEEP_POINTS, np.unique(score).size):,} observed scores spaced by "
    "rank; the diamonds mark the chosen threshold. Right: the pooled one-vs-rest ROC curve with the chosen point."
)
st.page_link(
    common.PAGES["external"],
    label="Check a model on external images",
    icon=":material/fact_check:",
    query_params={"study": study_id},
)
