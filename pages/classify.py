"""Classify: run a trained model on uploaded X-rays and see its probabilities and Grad-CAM heatmap."""

from __future__ import annotations

import hashlib

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from engine import settings
from engine.evaluation.bootstrap import interval_text
from engine.evaluation.predictions import ENSEMBLE
from engine.models.catalog import ModelInfo
from engine.models.inference import MAX_UPLOAD_BYTES, OOD_WARNING, Prediction
from engine.reports.served import read_choice
from engine.results import artifacts
from pages import common

common.require_router(__file__)

MAX_FILES = 50
ACCEPTED = ("png", "jpg", "jpeg", "dcm", "dicom")


def ensemble_accuracy(chosen: ModelInfo) -> str:
    """An ensemble's pooled out-of-fold accuracy with its interval, the figure the Comparison page and the report
    give it: each held-out image scored by the member(s) that did not train on it."""
    model = ENSEMBLE if chosen.backbones else chosen.backbone
    found = common.study_cached(common.summary_of, chosen.study_id, model)
    if len(found["folds"]) != len(chosen.folds):
        return f"its {chosen.n_members} members' pooled accuracy on their own held-out folds {chosen.accuracy:.3f}"
    scored_by = "each backbone's fold model that" if chosen.backbones else "the fold model that"
    return (
        f"{chosen.n_members} members · held-out accuracy {interval_text(found['metrics']['accuracy'])} on the "
        f"study's {found['n_images']:,} images, each scored by {scored_by} did not train on it"
    )


def classified(path: str, items: list[tuple[str, bytes]]) -> list[Prediction]:
    """The batch's predictions, computed once per (model, files): toggles and reruns do not classify again."""
    changed = artifacts.changed_key(common.artifacts_root())
    key = (path, changed, tuple((name, hashlib.sha256(data).hexdigest()) for name, data in items))
    last = st.session_state.get("classified")
    if last is None or last[0] != key:
        with st.spinner(f"Classifying {len(items)} image(s)…"):
            st.session_state["classified"] = (key, common.classifier(path, key[1]).classify(items))
    return st.session_state["classified"][1]


def model_id(info: ModelInfo) -> str:
    return f"{info.study_id}/{info.backbone}/{'ensemble' if info.is_ensemble else info.fold}"


def probability_chart(prediction: Prediction) -> go.Figure:
    table = pd.DataFrame(
        {"class": list(prediction.probabilities), "probability": list(prediction.probabilities.values())}
    )
    figure = px.bar(table, x="probability", y="class", orientation="h", range_x=[0, 1], text_auto=".1%")
    figure.update_layout(height=220, margin={"t": 10, "l": 10, "r": 10, "b": 10}, yaxis={"title": None})
    return figure


def overlay(prediction: Prediction, *, show_heatmap: bool) -> go.Figure:
    """The resized input in grey with the Grad-CAM map of the predicted class over it."""
    figure = go.Figure(go.Heatmap(z=prediction.image, colorscale="gray", showscale=False, hoverinfo="skip"))
    if show_heatmap and prediction.heatmap is not None:
        figure.add_trace(
            go.Heatmap(
                z=prediction.heatmap,
                colorscale="Jet",
                opacity=0.4,
                zmin=0,
                zmax=1,
                colorbar={"title": "Grad-CAM", "thickness": 10},
                hovertemplate="x %{x}, y %{y}: %{z:.2f}<extra></extra>",
            )
        )
    figure.update_layout(
        height=320,
        margin={"t": 10, "l": 10, "r": 10, "b": 10},
        yaxis={"autorange": "reversed", "scaleanchor": "x", "visible": False},
        xaxis={"visible": False},
    )
    return figure


def checked_uploads(uploads) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Server-side size and count checks (the uploader's type filter is only a hint to the browser)."""
    items, refused = [], []
    for upload in uploads[:MAX_FILES]:
        if upload.size > MAX_UPLOAD_BYTES:
            refused.append(
                f"{upload.name}: {upload.size / 2**20:.1f} MB is over the {MAX_UPLOAD_BYTES // 2**20} MB limit"
            )
            continue
        items.append((upload.name, upload.getvalue()))
    if len(uploads) > MAX_FILES:
        refused.append(
            f"only the first {MAX_FILES} of {len(uploads)} files were used; classify the rest in another batch"
        )
    return items, refused


def results_table(predictions: list[Prediction], classes: tuple[str, ...]) -> pd.DataFrame:
    rows = []
    for p in predictions:
        rows.append(
            {
                "file": p.name,
                "predicted": p.predicted or "",
                **{f"p[{c}]": round(p.probabilities[c], 4) if p.predicted else None for c in classes},
                "ood_score": None if p.ood_score is None else round(p.ood_score, 3),
                "warnings": "; ".join(p.warnings),
                "error": p.error or "",
            }
        )
    return pd.DataFrame(rows)


def show(prediction: Prediction, *, show_heatmap: bool) -> None:
    with st.container(border=True):
        st.markdown(f"**{prediction.name}**")
        if prediction.error:
            st.error(prediction.error)
            return
        for warning in prediction.warnings:
            if warning == OOD_WARNING:
                st.error(
                    f"Out of distribution (score {prediction.ood_score:.2f}, above 1): {warning}.",
                    icon=":material/block:",
                )
            else:
                st.warning(
                    f"This may not be a chest X-ray, or was read unusually: {warning}", icon=":material/warning:"
                )
        image_column, chart_column = st.columns([1, 1])
        image_column.plotly_chart(
            overlay(prediction, show_heatmap=show_heatmap), width="stretch", key=f"img-{prediction.name}"
        )
        verdict = "not meaningful: unlike the training images" if prediction.unlike_training else "predicted"
        chart_column.markdown(
            f"{verdict.capitalize()}: **{prediction.predicted}** ({prediction.probabilities[prediction.predicted]:.1%})"
        )
        if prediction.ood_score is not None:
            chart_column.caption(
                f"Out-of-distribution score {prediction.ood_score:.2f} (1 is the threshold: 99.5 % of the training "
                "images' own cross-fitted scores are below it)."
            )
        chart_column.plotly_chart(probability_chart(prediction), width="stretch", key=f"p-{prediction.name}")


st.title("Classify chest X-rays")
st.error(common.NOT_A_DEVICE, icon=":material/warning:")
root = common.artifacts_root()
available = common.models()
if settings.read_only():
    available = [m for m in available if m.export is not None]
    st.caption("Hosted demo: models are served from their exported LiteRT/ONNX files, without TensorFlow.")
if not available and settings.read_only():
    st.info(
        f"No exported model in `{root}`: the hosted demo classifies only with exported files "
        "(`python -m engine export`, committed with their sidecar, OOD detector and model card)."
    )
    st.stop()
if not available:
    st.info(
        f"No trained model in `{root}` yet. Models are saved by every finished fold: launch a training job from "
        "the sidebar, then come back here."
    )
    st.stop()
by_id = {model_id(m): m for m in available}
chosen = by_id[
    common.choose(
        "Model (the served model first, chosen on what holds outside its source; then fold ensembles and single "
        "folds by held-out accuracy)",
        list(by_id),
        param="model",
        format_func=lambda key: f"{by_id[key].label} · study {by_id[key].study_id}",
    )
]
choice = read_choice(root)
if choice and (choice["study_id"], choice["backbone"]) == (chosen.study_id, chosen.backbone) and chosen.is_ensemble:
    st.info(
        f"The served model: {choice['why']}. Its figures outside its source are in its model card and the "
        "reproduction report.",
        icon=":material/verified:",
    )
if chosen.export and chosen.backbones:
    served = f"exported LiteRT/ONNX files of its {len(chosen.backbones)} backbones, no TensorFlow"
else:
    served = "exported LiteRT/ONNX file, no TensorFlow" if chosen.export else "Keras model"
held_out = ensemble_accuracy(chosen) if chosen.is_ensemble else f"accuracy on its held-out fold {chosen.accuracy:.3f}"
st.caption(
    f"{chosen.title} · trained on {len(chosen.classes)} classes at {chosen.input_size} px · {held_out} · "
    f"served by the {served}"
)
st.caption(
    "Probabilities are the model's softmax outputs, not calibrated chances: the Calibration page shows how "
    "often a given probability was right on the study's held-out images."
)
uploads = st.file_uploader(
    "PNG, JPEG or DICOM chest X-rays (one or many)", type=list(ACCEPTED), accept_multiple_files=True
)
show_heatmap = st.toggle("Show the Grad-CAM heatmap (where the model looked for its prediction)", value=True)
if not uploads:
    st.info("Upload one or more frontal chest X-rays to see the model's class probabilities and heatmap.")
    st.stop()
items, refused = checked_uploads(uploads)
for reason in refused:
    st.error(reason)
predictions = classified(str(chosen.serving_path), items) if items else []
for prediction in predictions:
    show(prediction, show_heatmap=show_heatmap)
table = results_table(predictions, chosen.classes)
st.subheader("Results")
st.dataframe(table, hide_index=True)
st.download_button(
    "Download results (CSV)", table.to_csv(index=False).encode(), file_name="classification.csv", mime="text/csv"
)
