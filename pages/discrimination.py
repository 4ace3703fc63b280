"""ROC and precision-recall: how well a model ranks each class above the others, pooled and fold by fold."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st

from engine.reports import roc_calibration
from pages import common

common.require_router(__file__)

FIRST_CLASS = "COVID-19"
PALETTE = plotly.colors.qualitative.D3
HOVER = (
    "<b>%{fullData.name}</b><br>threshold %{customdata[0]}<br>sensitivity %{customdata[1]:.3f}"
    "<br>specificity %{customdata[2]:.3f}"
)
PR_HOVER = HOVER + "<br>precision %{customdata[3]:.3f}"
FOLD_LINE = {"width": 1}
FULL = [-0.01, 1.01]
ZOOM = {"roc": ([-0.005, 0.2], [0.8, 1.005]), "pr": ([0.8, 1.005], [0.8, 1.005])}
ON = "on"
POOLED_LINE = {"width": 3}


@st.cache_data(show_spinner="Computing the curves…", max_entries=32)
def _view(artifacts_root: str, study_id: str, model: str, key: tuple) -> roc_calibration.DiscriminationView:
    return roc_calibration.discrimination_view(common.out_of_fold_of(artifacts_root, study_id, model, key))


def class_order(classes: tuple[str, ...]) -> list[str]:
    return sorted(classes, key=lambda name: name != FIRST_CLASS)


def colour_of(view: roc_calibration.DiscriminationView, name: str) -> str:
    return PALETTE[view.classes.index(name) % len(PALETTE)]


def rgba(colour: str, alpha: float) -> str:
    red, green, blue = plotly.colors.hex_to_rgb(colour)
    return f"rgba({red},{green},{blue},{alpha})"


def data_caption(view: roc_calibration.DiscriminationView) -> str:
    members = f" · ensemble of {', '.join(view.members)}" if len(view.members) > 1 else ""
    return f"Pooled out-of-fold predictions of {len(view.folds)} folds, {view.n_images:,} images{members}."


def missing_note(view: roc_calibration.DiscriminationView) -> None:
    if view.missing.empty:
        return
    gaps = "; ".join(f"{row['class']} in {row['curve']} ({row['reason']})" for _, row in view.missing.iterrows())
    st.info(f"No curve for {gaps}: a one-vs-rest curve needs images of the class and of the others.")


def curve_figure(
    points: pd.DataFrame, areas: pd.DataFrame, *, x: str, y: str, colour: str, area_name: str, chance: dict
) -> go.Figure:
    """Each fold's curve as a thin line, the pooled curve on top, and the chance level dashed."""
    figure = go.Figure(go.Scatter(**chance, mode="lines", line={"dash": "dash", "color": "grey", "width": 1}))
    area_of = dict(zip(areas["curve"], areas["area"], strict=True))
    hover = PR_HOVER if "precision" in points else HOVER
    for name, rows in sorted(points.groupby("curve", sort=False), key=lambda item: item[0] == roc_calibration.POOLED):
        pooled = name == roc_calibration.POOLED
        figure.add_trace(
            go.Scatter(
                x=rows[x],
                y=rows[y],
                mode="lines",
                name=f"{name} · {area_name} {area_of[name]:.3f}",
                legendgroup=name if pooled else "folds",
                line={**(POOLED_LINE if pooled else FOLD_LINE), "color": colour if pooled else rgba(colour, 0.45)},
                line_shape="hv" if "precision" in points else "linear",
                customdata=rows[
                    ["threshold_text", "sensitivity", "specificity", *(["precision"] if "precision" in points else [])]
                ],
                hovertemplate=hover + "<extra></extra>",
            )
        )
    figure.update_layout(
        height=440,
        margin={"t": 30, "l": 10, "r": 10, "b": 10},
        legend={"orientation": "v", "x": 1.02, "y": 1, "font": {"size": 11}},
        hovermode="closest",
    )
    return figure


def roc_figure(view: roc_calibration.DiscriminationView, name: str, *, zoom: bool) -> go.Figure:
    figure = curve_figure(
        view.roc[view.roc["class"] == name],
        view.roc_areas[view.roc_areas["class"] == name],
        x="fpr",
        y="sensitivity",
        colour=colour_of(view, name),
        area_name="AUC",
        chance={"x": [0, 1], "y": [0, 1], "name": "chance (AUC 0.5)"},
    )
    figure.update_layout(xaxis_title="1 − specificity (false-positive rate)", yaxis_title="sensitivity")
    figure.update_xaxes(range=ZOOM["roc"][0] if zoom else FULL)
    figure.update_yaxes(range=ZOOM["roc"][1] if zoom else FULL)
    return figure


def pr_figure(view: roc_calibration.DiscriminationView, name: str, *, zoom: bool) -> go.Figure:
    areas = view.pr_areas[view.pr_areas["class"] == name]
    prevalence = float(areas.loc[areas["curve"] == roc_calibration.POOLED, "prevalence"].iloc[0])
    figure = curve_figure(
        view.pr[view.pr["class"] == name],
        areas,
        x="recall",
        y="precision",
        colour=colour_of(view, name),
        area_name="AP",
        chance={"x": [0, 1], "y": [prevalence, prevalence], "name": f"chance (prevalence {prevalence:.3f})"},
    )
    figure.update_layout(xaxis_title="recall (sensitivity)", yaxis_title="precision (PPV)")
    figure.update_xaxes(range=ZOOM["pr"][0] if zoom else FULL)
    figure.update_yaxes(range=ZOOM["pr"][1] if zoom else FULL)
    return figure


def fold_spread(areas: pd.DataFrame, name: str, area_name: str) -> str:
    folds = areas[(areas["class"] == name) & (areas["curve"] != roc_calibration.POOLED)]["area"]
    if folds.empty:
        return ""
    return f"Fold {area_name}s of {name}: {folds.min():.3f} to {folds.max():.3f} over {len(folds)} folds. "


def interval_panel(found: dict, view: roc_calibration.DiscriminationView, *, metric: str, area_name: str) -> None:
    """Every class's AUC (or AP) with its bootstrap interval, as the report has it."""
    table = roc_calibration.interval_table(found, class_order(view.classes), metric)
    table = table.rename(columns={"estimate": area_name})
    if metric == "average_precision":
        pooled = view.pr_areas[view.pr_areas["curve"] == roc_calibration.POOLED].set_index("class")["prevalence"]
        table["prevalence"] = table["class"].map(pooled)
    numbers = [c for c in table.columns if c != "class"]
    st.dataframe(table.style.format("{:.4f}", subset=numbers, na_rep="no curve"), hide_index=True)


@dataclass(frozen=True)
class Curve:
    """What differs between the ROC and the precision-recall sections: names, the chart's key, the summary's metric."""

    title: str
    key: str
    metric: str
    area: str
    area_name: str


ROC = Curve(title="ROC curve", key="roc", metric="roc_auc", area="AUC", area_name="AUC")
PR = Curve(
    title="Precision-recall curve", key="pr", metric="average_precision", area="Average precision", area_name="AP"
)


def roc_note(found: dict, view: roc_calibration.DiscriminationView, name: str) -> str:
    return (
        f"{fold_spread(view.roc_areas, name, 'AUC')}{found['intervals']['description']}. "
        f"The pooled curve mixes the {len(view.folds)} fold models (whose scores need not share a scale); "
        "each thin line is one fold model on its own test fold. Hover a point for its threshold "
        "(an image is called positive at probability ≥ threshold)."
    )


def pr_note(view: roc_calibration.DiscriminationView, name: str) -> str:
    return (
        f"{fold_spread(view.pr_areas, name, 'AP')}Intervals, pooled and thin lines as for the ROC curve. "
        "Average precision is the step-wise sum of precision times the recall each threshold adds; its chance "
        "level is the class's prevalence, not 0.5, so it shows what AUC hides on a small class."
    )


def curve_section(
    curve: Curve, figure: go.Figure, note: str, *, found: dict, view: roc_calibration.DiscriminationView, name: str
) -> None:
    """One class's curve, beside every class's area under it with its interval and a note on reading them."""
    st.subheader(f"{curve.title}: {name} against the rest")
    chart, side = st.columns([3, 2])
    chart.plotly_chart(figure, width="stretch", key=curve.key)
    with side:
        st.markdown(f"**{curve.area} of every class, {found['intervals']['confidence']:.0%} interval**")
        interval_panel(found, view, metric=curve.metric, area_name=curve.area_name)
        st.caption(note)


def with_interval(table: pd.DataFrame, column: str) -> pd.Series:
    return [
        "no curve" if pd.isna(e) else f"{e:.4f} ({lo:.4f}–{hi:.4f})"
        for e, lo, hi in zip(table[column], table[f"{column} low"], table[f"{column} high"], strict=True)
    ]


def mark_best(shown: pd.DataFrame, table: pd.DataFrame, columns: dict[str, str]):
    """Highlight the model with the highest estimate of each column (``columns``: shown name -> numeric name)."""
    best = {label: table.loc[table[column].idxmax(), "model"] for label, column in columns.items()}

    def highlight(column: pd.Series) -> list[str]:
        winner = best.get(column.name)
        return ["background-color: #d4edda; font-weight: 700" if m == winner else "" for m in shown["model"]]

    return shown.style.apply(highlight, subset=list(columns))


def models_section(study_id: str, models: list[str], classes: list[str], name: str) -> None:
    """AUC of every class for every model of the study, best first by the chosen class."""
    st.subheader("Every model of this study")
    found = {model: common.study_cached(common.summary_of, study_id, model) for model in models}
    table = roc_calibration.model_comparison(found, classes, "roc_auc").sort_values([name, "mean"], ascending=False)
    table = table.reset_index(drop=True)
    columns = {f"AUC {c}": c for c in classes} | {"mean AUC over classes": "mean"}
    shown = table[["model", "folds", "images"]].copy()
    for label, column in columns.items():
        shown[label] = with_interval(table, column)
    st.dataframe(mark_best(shown, table.fillna(-1.0), columns), hide_index=True)
    confidence = next(iter(found.values()))["intervals"]["confidence"]
    st.caption(
        f"One-vs-rest AUC with {confidence:.0%} bootstrap intervals, sorted by the AUC of {name}; green: the highest "
        "estimate of each column. Each model's interval is computed on its own predictions: overlapping intervals "
        "do not test a difference (the Comparison page has a corrected paired test over folds). The ensemble "
        "covers only the folds every backbone finished."
    )


study_id = common.study_page("ROC and precision-recall curves")
models = common.require_models(study_id)
model_column, class_column, zoom_column = st.columns([2, 2, 1.4])
model = common.choose("Model", models, param="model", where=model_column, format_func=common.model_label)
view = common.study_cached(_view, study_id, model)
classes = class_order(view.classes)
name = common.choose("Class (one against the rest)", classes, param="class", where=class_column)
zoom = zoom_column.toggle(
    "Zoom on the corner",
    value=common.remembered("zoom") == ON,
    help="Sensitivity, specificity, precision and recall from 0.8 to 1: where curves of good models differ.",
)
common.remember(zoom=ON if zoom else None)
st.caption(data_caption(view))
missing_note(view)
found = common.study_cached(common.summary_of, study_id, model)
if name not in set(view.roc_areas.loc[view.roc_areas["curve"] == roc_calibration.POOLED, "class"]):
    st.info(f"{name} has no curve: the pooled predictions of {model} need images of it and of the other classes.")
else:
    curve_section(
        ROC, roc_figure(view, name, zoom=zoom), roc_note(found, view, name), found=found, view=view, name=name
    )
    curve_section(PR, pr_figure(view, name, zoom=zoom), pr_note(view, name), found=found, view=view, name=name)
models_section(study_id, models, classes, name)
common.page_link("calibration", "Are these probabilities calibrated?", query_params={"study": study_id, "model": model})
