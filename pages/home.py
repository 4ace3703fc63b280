"""Home: the model to use outside the source and why, what the selected study found, what it is, which data and
weights produced it, and where to start."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.reports import explore, generalisation, summary_sections
from engine.reports.scorecard import served_scorecard
from pages import common

common.require_router(__file__)


@st.cache_data(show_spinner="Reading the study's figures…", max_entries=16)
def findings(artifacts_root: str, study_id: str, key: tuple) -> list[str]:
    return summary_sections.study_findings(generalisation.generalisation(study_id, Path(artifacts_root)))


st.title("Transfer learning for COVID-19 chest X-rays: study explorer")
st.warning(common.NOT_A_DEVICE, icon=":material/warning:")
study_id = common.selected_study()
if study_id is None:
    st.info(common.NO_STUDY_HELP.format(root=common.artifacts_root()))
    st.stop()

scorecard = served_scorecard(common.artifacts_root())
if scorecard:
    st.header("The model to use outside the source")
    st.markdown(scorecard.headline)
    st.table(pd.DataFrame([asdict(row) for row in scorecard.rows]), hide_index=True, border="horizontal")
    with st.expander("Every figure behind it, and the models trained without adult normals"):
        st.markdown(summary_sections.served_details(common.artifacts_root()))
    common.page_link("classify", "Try the served model on your own X-ray")
    common.page_link("report", "Read how every figure was measured, in the reproduction report")

st.header("What this study found")
common.study_caption(study_id)
for line in common.study_cached(findings, study_id):
    st.markdown(f"- {line}")
common.page_link(
    "audit", "See the shortcut audit and every model's outside-the-source figures", query_params={"study": study_id}
)

st.header("What this explorer is")
st.markdown(
    """
This explorer reproduces and extends *On Transfer Learning for Classifying COVID-19 in Chest X-Rays
Images* (Santos, Silva, Cortes): ImageNet-pretrained `keras.applications` CNNs are retrained to tell
**COVID-19**, **Normal** and **Viral Pneumonia** chest X-rays apart, and each one is evaluated with
stratified k-fold cross-validation on the same folds, so backbones can be compared fold by fold.
It shows each backbone's mean and spread over folds, the paper's Table 1 beside them, confusion
matrices, training curves, and lets you classify your own X-rays with a trained model and see where it looked.
"""
)
st.caption(
    "Known caveat of the public data: Normal and Viral Pneumonia images are of children, COVID-19 images mostly "
    "of adults, and the classes were published at different resolutions, so a model can learn anatomy or "
    "acquisition instead of disease (DeGrave et al., Nature Machine Intelligence 2021). The Shortcut audit page "
    "measures how much of a study's figure that explains."
)

source = common.cached(explore.provenance, study_id)
st.header("Where these results come from")
data_col, protocol_col = st.columns(2)
with data_col:
    st.subheader("Dataset")
    st.markdown(
        f"**{source.dataset}** · fingerprint `{source.fingerprint}` · "
        f"{sum(source.class_counts.values()):,} images at {source.input_size}×{source.input_size} px"
    )
    counts = st.columns(len(source.class_counts))
    for column, (name, count) in zip(counts, source.class_counts.items(), strict=True):
        column.metric(name, f"{count:,}")
    st.caption(f"Imported from `{source.source}`; the fingerprint identifies its files.")
    if len(source.by_source) > 1:
        st.caption("Images by source and class:")
        st.dataframe(source.by_source)
with protocol_col:
    st.subheader("Protocol")
    st.markdown(
        f"**{source.protocol}** · {source.n_folds}-fold stratified cross-validation, {source.split} · "
        f"seed {source.seed}"
    )
    st.caption(source.protocol_description)
st.subheader("Weights")
st.dataframe(
    source.weights,
    hide_index=True,
    column_config={
        "weights": "initial weights",
        "file": "weights file",
        "sha256": st.column_config.TextColumn("sha256 (first 16 hex)"),
        "keras": "Keras version",
    },
)

st.header("Where to start")
params = {"study": study_id}
common.page_link("comparison", "Compare backbones, and this study with the paper's Table 1", query_params=params)
common.page_link("confusion", "See which classes each model confuses", query_params=params)
common.page_link("curves", "Check training and validation curves for over-fitting", query_params=params)
common.page_link("classify", "Classify your own X-rays, with Grad-CAM heatmaps")
common.page_link("jobs", "Follow training jobs")

st.header("All studies in this artifacts folder")
st.dataframe(
    common.studies(),
    hide_index=True,
    column_config={"created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm")},
)
