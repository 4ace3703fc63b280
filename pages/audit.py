"""Shortcut audit: did the models learn disease, or the dataset? The study's headline figure beside what judges it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from engine.evaluation.image_statistics import SUMMARY
from engine.evaluation.predictions import ENSEMBLE
from engine.evaluation.shortcuts import BASELINE, CONDITIONS
from engine.reports import generalisation
from engine.reports.served import ADULT_NORMALS
from pages import common

common.require_router(__file__)

NEAR_CHANCE = 0.05  # a probe within this much of chance reads as the features not encoding the source

INTRO = (
    "A network can score well on the public COVID-19 sets without looking at the lungs: the classes differ in how "
    "their films were made (the COVID-19 images were published downscaled, much smoother than the others) and "
    "in whom they show (children in Normal and Viral Pneumonia, mostly adults in COVID-19). This page puts each "
    "model's figure beside four checks, each under the study's own folds: a classifier of global image "
    "statistics that sees no anatomy; the same model with the lung fields hidden, and with only them kept; how "
    "well its features tell the image's source apart; and, where they were run, sets from other sources."
)


@st.cache_data(show_spinner="Reading the audit…", max_entries=16)
def study_generalisation(artifacts_root: str, study_id: str, key: tuple) -> generalisation.Generalisation:
    return generalisation.generalisation(study_id, Path(artifacts_root))


@st.cache_data(show_spinner=False, max_entries=16)
def acquisition(artifacts_root: str, study_id: str, model: str, key: tuple) -> pd.DataFrame | None:
    return generalisation.acquisition_table(study_id, model, Path(artifacts_root))


def headline(found: generalisation.Generalisation) -> None:
    st.subheader("Each model beside what judges it")
    st.dataframe(pd.DataFrame(generalisation.headline_rows(found)), hide_index=True)
    notes = [
        f"Folds: **{found.split}-level**"
        + (" (no patient in two folds)." if found.split == "patient" else " (a patient can be on both sides)."),
        "95 % bootstrap intervals of the pooled out-of-fold predictions.",
    ]
    if found.region:
        notes.append(f"Lungs hidden / lungs only: {found.region}; the fill is each image's median grey level.")
    if found.twin:
        notes.append(f"Image-level folds: study `{found.twin}`, same data, protocol and settings.")
    st.caption(" ".join(notes))


def leakage_chart(found: generalisation.Generalisation) -> None:
    pairs = [(m.model, m.in_fold["accuracy"], m.image_level) for m in found.models if m.image_level]
    if not pairs:
        return
    st.subheader("Leakage: the same models with image-level folds")
    figure = go.Figure()
    for label, index in (("patient-level folds", 1), ("image-level folds", 2)):
        values = [p[index] for p in pairs]
        figure.add_bar(
            name=label,
            x=[p[0] for p in pairs],
            y=[v["estimate"] for v in values],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [v["high"] - v["estimate"] for v in values],
                "arrayminus": [v["estimate"] - v["low"] for v in values],
            },
        )
    figure.update_layout(
        barmode="group", yaxis_title="accuracy", yaxis_range=[0.8, 1.0], height=300, margin={"t": 20, "b": 20}
    )
    st.plotly_chart(figure)
    st.caption("When a patient's films sit on both sides, the model is tested partly on patients it trained on.")


def occlusion_chart(found: generalisation.Generalisation) -> None:
    rows = [
        {"model": m.model, "condition": c, **m.occlusion[c]} for m in found.models if m.occlusion for c in CONDITIONS
    ]
    if not rows:
        return
    st.subheader("Occlusion: the lung fields hidden, or kept alone")
    table = pd.DataFrame(rows)
    figure = px.bar(table, x="model", y="estimate", color="condition", barmode="group", height=340)
    figure.update_traces(error_y={"type": "data", "symmetric": False})
    for trace in figure.data:
        part = table[table["condition"] == trace.name]
        trace.error_y.array = part["high"] - part["estimate"]
        trace.error_y.arrayminus = part["estimate"] - part["low"]
    figure.update_layout(yaxis_title="accuracy", yaxis_range=[0, 1], margin={"t": 20, "b": 20})
    st.plotly_chart(figure)
    st.caption(
        "A model that still scores well with the lung fields hidden reads something other than the lungs; one that "
        "fails with only the lung fields kept depended on what lies outside them."
    )


def features_by_class(study_id: str) -> None:
    st.subheader("Acquisition by class, with the model's mistakes on it")
    models = [m for m in common.study_cached(common.model_names_of, study_id) if m != ENSEMBLE]
    model = common.choose("Mistakes of", models, param="audit_model", format_func=common.model_label)
    table = common.study_cached(acquisition, study_id, model)
    if table is None:
        return
    left, right = st.columns(2)
    for column, name in zip((left, right, left, right), SUMMARY, strict=True):
        if table[name].max() <= 0:
            column.caption(f"{name}: not recorded by the import of this dataset.")
            continue
        if table[name].nunique() == 1:
            column.caption(f"{name}: {table[name].iloc[0]:g} for every image, so it cannot tell the classes apart.")
            continue
        figure = px.box(
            table, x="class", y=name, color="source" if table["source"].nunique() > 1 else None, points=False
        )
        wrong = table[table["model wrong"]]
        figure.add_scatter(
            x=wrong["class"],
            y=wrong[name],
            mode="markers",
            name=f"{model} wrong",
            marker={"color": "crimson", "size": 6, "symbol": "x"},
            text=wrong["file"] + " → " + wrong["predicted"],
        )
        figure.update_layout(height=300, margin={"t": 30})
        column.plotly_chart(figure)
    st.caption(
        "Sharpness: variance of the Laplacian; contrast: 5th to 95th percentile range; intensity: mean grey level; "
        "source size: the longer side of the file as imported. Crosses: images the model got wrong, at their class."
    )


def source_probe(found: generalisation.Generalisation) -> None:
    rows = [
        {"model": m.model, "class": cls, **probe}
        for m in found.models
        if m.source_probe and m.source_probe.get("applicable")
        for cls, probe in m.source_probe["by_class"].items()
    ]
    st.subheader("Source probe")
    if not rows:
        st.caption("The study's images come from one dataset folder: there is no source to tell apart.")
        return
    table = pd.DataFrame(rows)
    table["counts"] = table["counts"].map(lambda c: ", ".join(f"{k} {v}" for k, v in c.items()))
    st.dataframe(table, hide_index=True)
    best = table.loc[(table["balanced_accuracy"] - table["chance"]).idxmax()]
    if best["balanced_accuracy"] - best["chance"] < NEAR_CHANCE:
        reading = "Near chance: the features do not encode the source."
    else:
        reading = (
            f"Here they do: {best['balanced_accuracy']:.3f} for {best['model']} within {best['class']}, against "
            f"{best['chance']:.2f} by chance"
        )
        if ADULT_NORMALS in found.sources and best["class"] == "Normal":
            reading += (
                ". Where the sources also differ in their patients (the NIH set's normals are adults, the paper's "
                "children) that is anatomy as much as acquisition; either way a head can use it, and"
            )
        else:
            reading += ": a head can use the source, and"
        reading += " the external sets measure whether it did."
    st.caption(
        "Balanced accuracy of a logistic regression telling the source of an image from the model's own pooled "
        f"features, within one class, out of fold. {reading}"
    )


st.title("Shortcut audit")
st.warning(common.NOT_A_DEVICE, icon=":material/warning:")
study_id = common.require_study()
common.study_caption(study_id)
st.markdown(INTRO)
found = common.study_cached(study_generalisation, study_id)
if found.baseline is None and not any(m.occlusion for m in found.models):
    st.info(
        "This study has no audit yet. Run it where the study's images are: "
        f"`python -m engine audit --study {study_id}` (add `--data FOLDER` for each source if they are not cached)."
    )
headline(found)
if found.baseline:
    st.caption(f"No-anatomy baseline: {BASELINE}.")
leakage_chart(found)
occlusion_chart(found)
if found.baseline:
    features_by_class(study_id)
source_probe(found)
common.page_link("external", "Evaluate a model on images from another source", query_params={"study": study_id})
