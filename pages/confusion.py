"""Confusion matrices: which classes each backbone, and their ensemble, mixes up, per fold or summed over folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.evaluation.metrics import confusion_rates
from engine.evaluation.predictions import ENSEMBLE
from engine.reports import explore
from pages import common

common.require_router(__file__)

ALL_FOLDS = "all"
VIEWS = {
    "counts": "Counts",
    "row": "Row % (recall: share of each true class)",
    "column": "Column % (precision: share of each prediction)",
}


def heatmap(matrix: pd.DataFrame, *, view: str, title: str) -> go.Figure:
    """A heatmap whose hover shows the count, the row % and the column % of every cell."""
    rows, columns = (100 * rates for rates in confusion_rates(matrix.to_numpy()))
    counts = matrix.to_numpy()
    shown = {"counts": counts, "row": rows, "column": columns}[view]
    text = [[f"{v:.0f}" if view == "counts" else f"{v:.1f}%" for v in line] for line in shown]
    figure = go.Figure(
        go.Heatmap(
            z=shown,
            x=list(matrix.columns),
            y=list(matrix.index),
            text=text,
            texttemplate="%{text}",
            customdata=np.dstack([counts, rows, columns]),
            hovertemplate=(
                "true %{y} → predicted %{x}<br>count %{customdata[0]:.0f}<br>"
                "row %{customdata[1]:.1f}% · column %{customdata[2]:.1f}%<extra></extra>"
            ),
            colorscale="Blues",
            showscale=False,
        )
    )
    figure.update_layout(
        title=title,
        height=380,
        margin={"t": 40, "l": 10, "r": 10, "b": 10},
        xaxis={"title": "predicted", "side": "bottom"},
        yaxis={"title": "true", "autorange": "reversed"},
    )
    return figure


def fold_label(fold: object) -> str:
    return "all folds (summed)" if fold == ALL_FOLDS else f"fold {fold}"


def backbone_panel(study_id: str, backbone: str, fold: object, view: str) -> None:
    chosen = None if fold == ALL_FOLDS else int(fold)
    if chosen is not None and chosen not in common.model_folds(study_id, backbone):
        what = "Not every backbone has" if backbone == ENSEMBLE else f"{backbone} has not"
        st.info(f"{what} finished fold {chosen}; showing all its finished folds summed.")
        chosen = None
    matrix = common.cached(explore.confusion_matrix, study_id, backbone, chosen)
    title = f"{backbone} · {fold_label(ALL_FOLDS if chosen is None else chosen)}"
    st.plotly_chart(heatmap(matrix, view=view, title=title), width="stretch", key=f"cm-{backbone}")
    table = explore.per_class_table(matrix)
    st.dataframe(
        table.style.format("{:.3f}", subset=["sensitivity", "specificity", "precision", "npv", "f1"]), hide_index=True
    )


study_id = common.study_page("Confusion matrices")
backbones = common.require_models(study_id)
first, second, fold_column, view_column = st.columns([2, 2, 1.4, 2])
backbone = common.choose("Model", backbones, param="backbone", where=first, format_func=common.model_label)
other = common.choose(
    "Side by side with",
    ["none", *backbones],
    param="vs",
    where=second,
    exclude=backbone,
    format_func=common.model_label,
)
folds = sorted(set(common.model_folds(study_id, backbone)))
fold = common.choose("Fold", [ALL_FOLDS, *folds], param="fold", where=fold_column, format_func=fold_label)
view = view_column.radio("Show", list(VIEWS), format_func=VIEWS.get, horizontal=False)
st.caption(
    "Rows are the true class, columns the prediction. Hover a cell for its count, row % and column %. "
    "Per-class figures are one-vs-rest: sensitivity = recall, NPV = negative predictive value."
)
if other in (None, "none"):
    backbone_panel(study_id, backbone, fold, view)
else:
    left, right = st.columns(2)
    with left:
        backbone_panel(study_id, backbone, fold, view)
    with right:
        backbone_panel(study_id, other, fold, view)

st.header("The paper's confusion matrices (Tables 2-4)")
st.caption("Best fold of each model in the paper, for reference: counts on its held-out fold of about 580 images.")
for column, (name, matrix) in zip(st.columns(3), explore.paper_confusion_matrices().items(), strict=True):
    with column:
        st.plotly_chart(heatmap(matrix, view=view, title=name), width="stretch", key=f"paper-{name}")
common.page_link("curves", "See how these backbones trained", query_params={"study": study_id, "backbone": backbone})
