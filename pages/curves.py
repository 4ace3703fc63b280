"""Training curves: training vs validation accuracy and loss per epoch, per fold and as a mean with a band."""

from __future__ import annotations

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st

from engine.reports import explore
from pages import common

common.require_router(__file__)

ROW_HEIGHT_PX = 35  # a dataframe row's height: a table sized to its rows shows every fold without scrolling

PANELS = {"accuracy": "Accuracy", "loss": "Loss"}
SEPARATOR = ","


def rgba(colour: str, alpha: float) -> str:
    red, green, blue = plotly.colors.hex_to_rgb(colour)
    return f"rgba({red},{green},{blue},{alpha})"


def add_mean_band(figure: go.Figure, bands: pd.DataFrame, *, name: str, colour: str, dash: str) -> None:
    """The mean over folds as a line, and mean ± one standard deviation as a shaded band."""
    upper, lower = bands["mean"] + bands["std"], bands["mean"] - bands["std"]
    figure.add_trace(
        go.Scatter(
            x=pd.concat([bands["epoch"], bands["epoch"][::-1]]),
            y=pd.concat([upper, lower[::-1]]),
            fill="toself",
            fillcolor=rgba(colour, 0.15),
            line={"width": 0},
            hoverinfo="skip",
            showlegend=False,
            legendgroup=name,
        )
    )
    figure.add_trace(
        go.Scatter(
            x=bands["epoch"],
            y=bands["mean"],
            name=name,
            legendgroup=name,
            mode="lines",
            line={"color": colour, "dash": dash, "width": 2.5},
            customdata=bands[["std", "folds"]],
            hovertemplate="epoch %{x}: %{y:.4f} ± %{customdata[0]:.4f} over %{customdata[1]} folds<extra>"
            + name
            + "</extra>",
        )
    )


def panel(
    curves: pd.DataFrame, best: pd.DataFrame, *, metric: str, backbones: list[str], each_fold: bool, log_loss: bool
) -> go.Figure:
    figure = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for index, backbone in enumerate(backbones):
        colour = palette[index % len(palette)]
        for key, kind, dash in ((metric, "training", "dot"), (f"val_{metric}", "validation", "solid")):
            rows = curves[(curves["backbone"] == backbone) & (curves["metric"] == key)]
            if rows.empty:
                continue
            if each_fold:
                for fold, line in rows.groupby("fold"):
                    figure.add_trace(
                        go.Scatter(
                            x=line["epoch"],
                            y=line["value"],
                            mode="lines",
                            line={"color": rgba(colour, 0.35), "width": 1, "dash": dash},
                            name=f"{backbone} {kind} fold {fold}",
                            legendgroup=f"{backbone} {kind}",
                            showlegend=False,
                        )
                    )
            add_mean_band(figure, explore.history_bands(rows), name=f"{backbone} {kind}", colour=colour, dash=dash)
        for _, row in best[best["backbone"] == backbone].iterrows():
            figure.add_vline(x=row["epoch"], line={"color": colour, "dash": "dash", "width": 1})
            if metric == "loss":
                figure.add_trace(
                    go.Scatter(
                        x=[row["epoch"]],
                        y=[row["val_loss"]],
                        mode="markers",
                        marker={"symbol": "star", "size": 14, "color": colour, "line": {"width": 1, "color": "black"}},
                        name=f"{backbone}: lowest mean val loss (epoch {row['epoch']})",
                    )
                )
    figure.update_layout(
        title=PANELS[metric],
        height=420,
        margin={"t": 60, "l": 10, "r": 10, "b": 10},
        xaxis={"title": "epoch", "range": [1, curves["epoch"].max()]},
        yaxis={"title": metric, "type": "log" if log_loss and metric == "loss" else "linear"},
        legend={"orientation": "h", "y": -0.2},
    )
    return figure


study_id = common.study_page("Training curves")
choices = common.cached(explore.head_choices, study_id)
if not choices.empty:
    floor = common.cached(explore.recall_floor, study_id)
    floor_text = (
        f". Its protocol then raised {floor.target}'s logit until those inner folds found {floor.recall:.0%} of "
        f"their {floor.target} images{' in each source' if floor.in_each_source else ''} (the offset and the inner "
        "recalls, per fold):"
        if floor
        else ":"
    )
    st.info(
        "This study's heads were fitted in one step, a logistic regression on the frozen base's cached features, "
        "so there are no epochs to plot. Each fold's L2 strength C was chosen by accuracy over inner folds of its "
        "training images (a smaller C is a stronger penalty)" + floor_text
    )
    st.dataframe(choices, hide_index=True, height=ROW_HEIGHT_PX * (len(choices) + 1) + 3)
    st.stop()
curves = common.cached(explore.histories, study_id)
available = sorted(curves["backbone"].unique())
wanted = [
    b
    for b in (common.remembered("backbones") or common.remembered("backbone") or "").split(SEPARATOR)
    if b in available
]
backbones = st.multiselect("Backbones (overlaid)", available, default=wanted or available[:3])
common.remember(backbones=SEPARATOR.join(backbones) or None)
fold_column, scale_column = st.columns(2)
each_fold = fold_column.toggle("Show each fold", value=True)
log_loss = scale_column.toggle("Log scale for the loss", value=True)
if not backbones:
    st.info("Choose at least one backbone.")
    st.stop()
st.caption(
    "Dotted: training, solid: validation (the held-out fold). Thick lines are the mean over folds with a ±1 sd "
    "band; thin lines are single folds. The dashed vertical line marks the epoch with the lowest mean validation "
    "loss: a validation loss that rises after it while training loss keeps falling means over-fitting."
)
best = explore.best_epochs(curves[curves["backbone"].isin(backbones)])
for metric in PANELS:
    st.plotly_chart(
        panel(curves, best, metric=metric, backbones=backbones, each_fold=each_fold, log_loss=log_loss), width="stretch"
    )
st.dataframe(
    best.rename(columns={"epoch": "epoch of lowest mean val loss", "val_loss": "mean val loss"}), hide_index=True
)
