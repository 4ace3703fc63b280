"""Calibration: when the model says 90 %, is it right 90 % of the time? Reliability before and after temperature."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from engine.evaluation.calibration import TOP_LABEL
from engine.evaluation.summary import RELIABILITY_BINS
from engine.reports import roc_calibration
from pages import common

common.require_router(__file__)

FIRST_CLASS = "COVID-19"
BINS = {
    "uniform": f"{RELIABILITY_BINS} uniform bins (equal widths)",
    "quantile": f"{RELIABILITY_BINS} quantile bins (about equal counts)",
}
ON = "on"
RAW_COLOUR, SCALED_COLOUR = "#1f77b4", "#d62728"
BIN_HOVER = (
    "<b>%{fullData.name}</b><br>bin %{customdata[0]}: %{customdata[1]:,} images<br>"
    "mean predicted %{x:.3f}<br>observed frequency %{y:.3f}<br>gap %{customdata[2]:+.3f}<extra></extra>"
)


@st.cache_data(show_spinner="Binning the probabilities…", max_entries=32)
def _view(artifacts_root: str, study_id: str, model: str, strategy: str, key: tuple) -> roc_calibration.CalibrationView:
    oof = common.out_of_fold_of(artifacts_root, study_id, model, key)
    return roc_calibration.calibration_view(oof, n_bins=RELIABILITY_BINS, strategy=strategy)


def bin_range(row: pd.Series) -> str:
    """``[lower, upper)`` with enough digits to tell narrow quantile bins apart (the last bin is closed)."""
    width = row["upper"] - row["lower"]
    digits = 2 if width >= 0.01 else min(6, 1 + math.ceil(-math.log10(max(width, 1e-9))))
    return f"[{row['lower']:.{digits}f}, {row['upper']:.{digits}f}{']' if row['upper'] >= 1 else ')'}"


def data_caption(view: roc_calibration.CalibrationView) -> str:
    members = f" · ensemble of {', '.join(view.members)}" if len(view.members) > 1 else ""
    return (
        f"Pooled out-of-fold predictions of {len(view.folds)} folds, {view.n_images:,} images{members}: every image "
        "scored by the fold model that never saw it."
    )


def marker_sizes(counts: pd.Series, smallest: float) -> list[float]:
    """Markers whose area grows with the bin's count, so that a bin of 2 images does not look like one of 2,000."""
    largest = max(int(counts.max()), 1)
    return [smallest + 14 * (count / largest) ** 0.5 for count in counts]


def add_curve(figure: go.Figure, bins: pd.DataFrame, *, name: str, colour: str, faint: bool) -> None:
    filled = bins[bins["count"] > 0]
    figure.add_trace(
        go.Scatter(
            x=filled["mean_predicted"],
            y=filled["observed_frequency"],
            name=name,
            mode="lines+markers",
            line={"color": colour, "width": 1.5 if faint else 2.5, "dash": "dot" if faint else "solid"},
            marker={"size": marker_sizes(filled["count"], 4 if faint else 6)},
            opacity=0.6 if faint else 1.0,
            customdata=list(zip(filled.apply(bin_range, axis=1), filled["count"], filled["gap"], strict=True)),
            hovertemplate=BIN_HOVER,
        ),
        row=1,
        col=1,
    )


def diagram(
    label: str, shown: roc_calibration.Diagrams, before: roc_calibration.Diagrams | None, *, height: int
) -> go.Figure:
    """Observed frequency against mean predicted probability per bin, the diagonal, and each bin's count below."""
    bins = shown.bins[shown.bins["label"] == label]
    ece = float(shown.figures.set_index("label").loc[label, "ece"])
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.74, 0.26], vertical_spacing=0.05)
    figure.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={"color": "grey", "dash": "dash"}
        ),
        row=1,
        col=1,
    )
    if before is not None:
        add_curve(
            figure, before.bins[before.bins["label"] == label], name="as predicted", colour=RAW_COLOUR, faint=True
        )
    name = "after temperature scaling" if before is not None else "as predicted"
    add_curve(figure, bins, name=name, colour=SCALED_COLOUR if before is not None else RAW_COLOUR, faint=False)
    figure.add_trace(
        go.Bar(
            x=(bins["lower"] + bins["upper"]) / 2,
            y=bins["count"].where(bins["count"] > 0),
            width=bins["upper"] - bins["lower"],
            name="images per bin",
            marker={"color": "rgba(120,120,120,0.55)", "line": {"color": "white", "width": 1}},
            customdata=bins.apply(bin_range, axis=1),
            hovertemplate="bin %{customdata}: %{y:,} images<extra></extra>",
            showlegend=False,
        ),
        row=2,
        col=1,
    )
    title = "Top label (the predicted class)" if label == TOP_LABEL else f"{label} against the rest"
    figure.update_layout(
        title={"text": f"{title} · ECE {ece:.3f}", "font": {"size": 15}},
        height=height,
        margin={"t": 50, "l": 10, "r": 10, "b": 10},
        legend={"orientation": "h", "y": -0.16},
        hovermode="closest",
    )
    figure.update_xaxes(range=[0, 1], row=1, col=1)
    figure.update_xaxes(range=[0, 1], title_text="mean predicted probability", row=2, col=1)
    figure.update_yaxes(range=[-0.02, 1.02], title_text="observed frequency", row=1, col=1)
    figure.update_yaxes(type="log", dtick=1, title_text="images", row=2, col=1)  # a tick a decade: 1, 10, 100
    return figure


def bins_table(shown: roc_calibration.Diagrams, labels: list[str]) -> None:
    """Every bin's range, count and means; an empty bin has a count of 0 and no means."""
    rows = shown.bins[shown.bins["label"].isin(labels)]
    table = pd.DataFrame(
        {
            "range": rows.apply(bin_range, axis=1),
            "images": rows["count"],
            "predicted": [number(v, "{:.3f}") for v in rows["mean_predicted"]],
            "observed": [number(v, "{:.3f}") for v in rows["observed_frequency"]],
            "gap": [number(v, "{:+.3f}") for v in rows["gap"]],
        }
    )
    if len(labels) > 1:
        table.insert(0, "label", rows["label"].to_numpy())
    st.dataframe(table, hide_index=True)


def number(value: float, style: str) -> str:
    return "—" if pd.isna(value) else style.format(value)


def headline(found: dict, scaled: bool) -> None:
    """Top-label ECE and Brier score as the report has them, with the change temperature scaling makes."""
    before, after = found["calibration"]["before"], found["calibration"]["after"]
    columns = st.columns(4)
    for column, key, label in zip(columns, ("ece_top_label", "brier"), ("Top-label ECE", "Brier score"), strict=False):
        if scaled and after is not None:
            column.metric(
                f"{label}, after scaling",
                f"{after[key]:.4f}",
                delta=f"{after[key] - before[key]:+.4f}",
                delta_color="inverse",
            )
        else:
            column.metric(label, f"{before[key]:.4f}")
    accuracy = found["metrics"]["accuracy"]["estimate"]
    columns[2].metric("Accuracy (unchanged by scaling)", f"{accuracy:.4f}")
    columns[3].metric("Images", f"{found['n_images']:,}")


def figures_table(found: dict, classes: list[str], scaled: bool) -> None:
    st.subheader("ECE and Brier score, as in the report")
    table = roc_calibration.calibration_figures(found, classes)
    if not scaled:
        table = table[["measure", "before"]]
    table = table.rename(columns={"before": "as predicted", "after": "after temperature scaling"})
    numbers = [c for c in table.columns if c != "measure"]
    st.dataframe(table.style.format("{:.4f}", subset=numbers, na_rep="—"), hide_index=True)
    st.caption(
        f"ECE: the count-weighted mean |observed frequency − mean predicted| over {RELIABILITY_BINS} uniform bins "
        "(per class one-vs-rest, and for the top label: the predicted class's probability against whether it was "
        "right). Brier score: the mean squared distance between the probabilities and the one-hot truth (lower is "
        "better for both)."
    )


def temperatures_table(found: dict) -> None:
    st.subheader("Each fold's temperature")
    table = roc_calibration.temperature_table(found)
    st.dataframe(table.style.format("{:.3f}", subset=["temperature"]), hide_index=True)
    st.caption(
        "Cross-fitted temperature scaling (Guo et al. 2017): fold k's probabilities are divided in log space by a "
        "temperature T fitted by maximum likelihood on the other folds' out-of-fold predictions only, never on the "
        "images it is applied to. T > 1 softens over-confident probabilities; the predicted class, hence accuracy, "
        "never changes."
    )


def classify_note(view: roc_calibration.CalibrationView) -> None:
    """What this means for the probabilities the Classify page shows, from the top-label bin of the surest."""
    top = view.raw.bins[(view.raw.bins["label"] == TOP_LABEL) & (view.raw.bins["count"] > 0)].iloc[-1]
    st.info(
        f"**For the Classify page.** It shows a model's raw probabilities, without temperature scaling: a "
        f'"100.0 %" from an over-confident model is not a 100 % chance. Here, of the {top["count"]:,} held-out '
        f"images given a top probability in {bin_range(top)} (mean {top['mean_predicted']:.1%}), "
        f"{top['observed_frequency']:.1%} were classified right.",
        icon=":material/info:",
    )


def class_order(classes: tuple[str, ...]) -> list[str]:
    return sorted(classes, key=lambda name: name != FIRST_CLASS)


study_id = common.study_page("Calibration")
models = common.require_models(study_id)
model_column, bins_column, toggle_column = st.columns([2, 2, 1.4])
model = common.choose("Model", models, param="model", where=model_column, format_func=common.model_label)
strategy = common.choose("Bins", list(BINS), param="bins", where=bins_column, format_func=BINS.get)
view = common.study_cached(_view, study_id, model, strategy)
found = common.study_cached(common.summary_of, study_id, model)
can_scale = view.scaled is not None
scaled = toggle_column.toggle(
    "Temperature scaling",
    value=can_scale and common.remembered("temperature") == ON,
    disabled=not can_scale,
    help="Cross-fitted: each fold's temperature is fitted on the other folds only."
    if can_scale
    else "Needs at least 2 finished folds: each fold's temperature is fitted on the others.",
)
common.remember(temperature=ON if scaled else None)
st.caption(
    f"When the model says 90 %, is it right 90 % of the time? {data_caption(view)} Points: the mean predicted "
    f"probability and the observed frequency of each of {BINS[strategy]}; on the dashed diagonal the model means "
    "what it says, below it it is over-confident. Bars: how many images each bin holds (log scale)."
)
if not can_scale:
    st.info(
        f"{model} has {len(view.folds)} finished fold: temperature scaling needs at least 2 (fitted on the others)."
    )
if scaled:
    st.info(
        "Temperature scaling, cross-fitted: each fold's probabilities are rescaled with a temperature fitted on the "
        "other folds only, so the diagram after scaling is an honest held-out estimate. The faint dotted line is "
        "the diagram as predicted.",
        icon=":material/tune:",
    )
shown, before = (view.scaled, view.raw) if scaled else (view.raw, None)
headline(found, scaled)
classes = class_order(view.classes)
st.subheader("Top label: is the predicted class as likely as its probability says?")
chart, side = st.columns([3, 2])
chart.plotly_chart(diagram(TOP_LABEL, shown, before, height=520), width="stretch", key="reliability-top")
with side:
    st.markdown("**Images in each bin**")
    bins_table(shown, [TOP_LABEL])
    st.caption(
        "predicted: the bin's mean predicted probability; observed: the share of its images that were right "
        "(for a class: that were of the class); gap = observed − predicted, negative where over-confident."
    )
st.subheader("Each class against the rest")
for column, name in zip(st.columns(len(classes)), classes, strict=True):
    column.plotly_chart(diagram(name, shown, before, height=440), width="stretch", key=f"reliability-{name}")
with st.expander("Images in each bin of every class"):
    bins_table(shown, classes)
if strategy != "uniform":
    st.caption(
        f"The diagrams' ECE uses {BINS[strategy]}; the table below uses {RELIABILITY_BINS} uniform bins, as the report."
    )
figures_table(found, classes, scaled)
if scaled:
    temperatures_table(found)
classify_note(view)
common.page_link(
    "discrimination",
    "How well does it rank the classes? ROC and precision-recall",
    query_params={"study": study_id, "model": model},
)
