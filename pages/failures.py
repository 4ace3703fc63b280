"""Failure analysis: every misclassified out-of-fold image of a model, its thumbnail and the fold model's Grad-CAM.

The table needs only the study's out-of-fold predictions, so it works anywhere (a hosted demo, a fresh
clone). Thumbnails need the study's imported images on this machine, and heat maps need the saved
model of the fold that scored the image; where either is missing the page says which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from engine.data.datasets import DatasetError
from engine.evaluation.predictions import ENSEMBLE, OutOfFold
from engine.models.inference import Classifier, load_classifier
from engine.reports import failures
from engine.reports.failures import FoldModel, StudyImages
from engine.results import artifacts
from pages import common

common.require_router(__file__)

ALL = "all"
GRID_SIZE = 12
GRID_COLUMNS = 6


@st.cache_data(show_spinner=False, max_entries=16)
def _mistakes(artifacts_root: str, study_id: str, model: str, key: tuple) -> tuple[pd.DataFrame, pd.DataFrame]:
    oof = common.out_of_fold_of(artifacts_root, study_id, model, key)
    return failures.mistakes(oof), failures.pair_counts(oof)


@st.cache_data(show_spinner=False, max_entries=16)
def _fold_models(artifacts_root: str, study_id: str, members: tuple[str, ...], key: tuple) -> dict:
    return failures.fold_models(study_id, members, Path(artifacts_root))


@st.cache_data(show_spinner=False, max_entries=32)
def _images(artifacts_root: str, source: StudyImages, files: tuple[str, ...]) -> np.ndarray:
    """The images of ``files`` (raises ``DatasetError``, which is not cached, when they are not here)."""
    return failures.images_of(source, list(files), Path(artifacts_root))


@st.cache_resource(max_entries=2, show_spinner="Loading the fold model…")
def _classifier(path: str, artifacts_root: str) -> Classifier:
    """One loaded model per path, shared by every session (at most two kept in memory)."""
    return load_classifier(path, artifacts_root=Path(artifacts_root))


@st.cache_data(show_spinner="Computing Grad-CAM…", max_entries=64)
def _heat_maps(
    path: str, stamp: float, artifacts_root: str, source: StudyImages, files: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The fold model's probabilities and Grad-CAM maps (of the class it predicts) for ``files``."""
    return _classifier(path, artifacts_root).predict_arrays(_images(artifacts_root, source, files))


def heat_maps(model: FoldModel, artifacts_root: str, source: StudyImages, files: list[str]) -> tuple | str:
    """(probabilities, maps) of ``files`` by ``model``, or one line saying why there are none."""
    if model.path is None:
        return model.missing
    try:
        return _heat_maps(str(model.path), model.path.stat().st_mtime, artifacts_root, source, tuple(files))
    except Exception as exc:  # a model that fails to load must not take the table down with it
        return f"{model.backbone} fold {model.fold}'s model could not be run: {exc}"


def pair_option(pair: str, counts: pd.DataFrame) -> str:
    if pair == ALL:
        return f"every pair ({int(counts['mistakes'].sum()):,})"
    return f"{pair} ({int(counts.set_index('pair').loc[pair, 'mistakes']):,})"


def fold_option(fold: object, saved: dict[int, int], members: int) -> str:
    """``fold 3 (model saved)``; for an ensemble, how many of its members' models of that fold are saved."""
    if fold == ALL:
        return "all folds"
    if not saved.get(fold):
        return f"fold {fold}"
    return f"fold {fold} ({'model saved' if members == 1 else f'{saved[fold]} of {members} models saved'})"


def shortcut_note(source: StudyImages) -> None:
    note = failures.known_dataset_note(source.fingerprint)
    text = failures.SHORTCUT_NOTE
    if note:
        text += f"\n\n**About this dataset** ({source.name}, known by its fingerprint `{source.fingerprint}`): {note}"
    st.info(text, icon=":material/visibility:")


def pairs_table(counts: pd.DataFrame) -> None:
    st.subheader("Mistakes per (true → predicted) pair")
    st.dataframe(
        counts.drop(columns=["pair"]),
        hide_index=True,
        column_config={"share of the true class": st.column_config.NumberColumn(format="percent")},
    )


def mistakes_table(table: pd.DataFrame, classes: tuple[str, ...]) -> None:
    shown = table.drop(columns=["row"])
    st.dataframe(
        shown,
        hide_index=True,
        column_config={
            **{failures.probability_column(c): st.column_config.NumberColumn(format="%.4f") for c in classes},
            "confidence": st.column_config.ProgressColumn(
                "confidence", help="probability of the predicted class", min_value=0.0, max_value=1.0, format="%.3f"
            ),
        },
    )
    st.caption(
        "Most confident mistakes first; click a column header to sort. confidence = the probability of the "
        "predicted class (the arg max of the out-of-fold probabilities)."
    )


def folds_text(folds: list[int]) -> str:
    """``fold 2`` or ``folds 0, 1 and 4``."""
    if len(folds) == 1:
        return f"fold {folds[0]}"
    return f"folds {', '.join(map(str, folds[:-1]))} and {folds[-1]}"


def saved_models_line(folds: list[int], models: dict) -> str:
    """Which fold models are saved, for a backbone or each member of the ensemble."""
    lines = []
    for backbone in sorted({b for b, _ in models}):
        saved = [f for f in folds if models[(backbone, f)].path is not None]
        missing = [f for f in folds if f not in saved]
        if not missing:
            lines.append(f"every fold model of {backbone} is saved")
        elif not saved:
            lines.append(f"no fold model of {backbone} was saved")
        else:
            lines.append(
                f"{backbone}: the model{'s' if len(saved) > 1 else ''} of {folds_text(saved)} "
                f"{'are' if len(saved) > 1 else 'is'} saved, the model{'s' if len(missing) > 1 else ''} of "
                f"{folds_text(missing)} {'were' if len(missing) > 1 else 'was'} not saved"
            )
    return "; ".join(lines)


def caption_of(row: pd.Series) -> str:
    return f"fold {row['fold']} · {row['true']} → {row['predicted']} ({row['confidence']:.1%}) · {row['file']}"


def grid(
    table: pd.DataFrame, *, model: str, models: dict, artifacts_root: str, source: StudyImages, with_maps: bool
) -> None:
    """The most confident mistakes of the filtered table, with the fold model's heat map where it was saved."""
    top = table.head(GRID_SIZE)
    files = list(top["file"])
    try:
        images = _images(artifacts_root, source, tuple(files))
    except DatasetError as exc:
        st.info(f"No thumbnails: {exc}. The table above needs only the predictions.", icon=":material/image:")
        return
    maps: dict[str, np.ndarray] = {}
    unsaved: list[int] = []
    if with_maps and model != ENSEMBLE:
        for fold, rows in top.groupby("fold"):
            found = heat_maps(models[(model, int(fold))], artifacts_root, source, list(rows["file"]))
            if isinstance(found, str):
                if models[(model, int(fold))].path is None:
                    unsaved.append(int(fold))
                else:
                    st.warning(found)
                continue
            maps.update(zip(rows["file"], found[1], strict=True))
    if unsaved:
        verb = "was" if len(unsaved) == 1 else "were"
        st.caption(
            f"{model}'s model of {folds_text(unsaved)} {verb} not saved: "
            f"{'its' if len(unsaved) == 1 else 'their'} mistakes show without a heat map."
        )
    if with_maps and model == ENSEMBLE:
        st.caption("The ensemble has no heat map of its own: look closer at one image below to see each member's.")
    columns = st.columns(GRID_COLUMNS)
    for i, (image, (_, row)) in enumerate(zip(images, top.iterrows(), strict=True)):
        with columns[i % GRID_COLUMNS]:
            caption = f"{row['true']} → {row['predicted']} ({row['confidence']:.1%}) · fold {row['fold']} · "
            st.image(
                failures.overlay(image, maps.get(row["file"])),
                caption=caption + Path(row["file"]).name,
                width="stretch",
            )


def probability_chart(row: pd.Series, classes: tuple[str, ...]) -> go.Figure:
    table = pd.DataFrame(
        {"class": list(classes), "probability": [row[failures.probability_column(c)] for c in classes]}
    )
    figure = px.bar(table, x="probability", y="class", orientation="h", range_x=[0, 1], text_auto=".1%")
    figure.update_layout(height=200, margin={"t": 10, "l": 10, "r": 10, "b": 10}, yaxis={"title": None})
    return figure


def closer_look(row: pd.Series, oof: OutOfFold, *, models: dict, artifacts_root: str, source: StudyImages) -> None:
    """One mistake: its image, the heat map of each fold model that scored it, and its probabilities."""
    fold = int(row["fold"])
    try:
        image = _images(artifacts_root, source, (row["file"],))[0]
    except DatasetError as exc:
        image = None
        st.info(f"No image: {exc}.", icon=":material/image:")
    panels, absent = [], []
    if image is not None:
        panels.append((failures.overlay(image, None), "the image"))
        for backbone in oof.members:
            found = heat_maps(models[(backbone, fold)], artifacts_root, source, [row["file"]])
            if isinstance(found, str):
                absent.append(found)
                continue
            proba, maps = found
            called = oof.classes[int(proba[0].argmax())]
            panels.append(
                (
                    failures.overlay(image, maps[0]),
                    f"Grad-CAM of {backbone} fold {fold} (for {called}, {proba[0].max():.1%} now)",
                )
            )
    if absent:
        st.caption(f"No heat map: {'; '.join(absent)}.")
    columns = st.columns([1] * max(len(panels), 2) + [1.3])
    for column, (picture, caption) in zip(columns, panels, strict=False):
        column.image(picture, caption=caption, width="stretch")
    with columns[-1]:
        st.markdown(f"**{row['file']}** · fold {fold}  \ntrue **{row['true']}**, called **{row['predicted']}**")
        st.plotly_chart(probability_chart(row, oof.classes), width="stretch", key="closer-probabilities")
        st.caption("Out-of-fold probabilities" + (" (mean of the members)" if oof.model == ENSEMBLE else "") + ".")


study_id = common.study_page("Failure analysis")
root = common.artifacts_root()
key = artifacts.changed_key(root, study_id)
models_available = common.require_models(
    study_id, none_yet="This study has no finished fold yet: its mistakes appear here when one finishes."
)
model = common.choose("Model", models_available, param="model")
oof = common.out_of_fold_of(str(root), study_id, model, key)
table, counts = _mistakes(str(root), study_id, model, key)
source = failures.study_images(study_id, root)
n_folds = len(oof.fold_ids)
st.caption(
    f"{model}{' (mean of ' + ', '.join(oof.members) + ')' if model == ENSEMBLE else ''}: pooled out-of-fold "
    f"predictions of {n_folds} fold{'s' if n_folds != 1 else ''}, {len(oof):,} images, every one scored by a fold "
    f"model that never saw it. {len(table):,} are misclassified ({len(table) / len(oof):.1%}): the predicted class "
    "(the highest probability) is not the true one."
)
shortcut_note(source)
if table.empty:
    st.success(f"Every one of the {len(oof):,} out-of-fold images is classified correctly by {model}.")
    st.stop()
pairs_table(counts)

st.subheader("Every mistake")
fold_models = _fold_models(str(root), study_id, oof.members, key)
saved = {f: sum(fold_models[(b, f)].path is not None for b in oof.members) for f in oof.fold_ids}
pair_column, fold_column = st.columns(2)
pair = common.choose(
    "True → predicted",
    [ALL, *counts["pair"]],
    param="pair",
    where=pair_column,
    format_func=lambda p: pair_option(p, counts),
)
fold = common.choose(
    "Fold",
    [ALL, *oof.fold_ids],
    param="fold",
    where=fold_column,
    format_func=lambda f: fold_option(f, saved, len(oof.members)),
)
chosen = table
if pair != ALL:
    chosen = chosen[
        [failures.pair_label(t, p) == pair for t, p in zip(chosen["true"], chosen["predicted"], strict=True)]
    ]
if fold != ALL:
    chosen = chosen[chosen["fold"] == int(fold)]
chosen = chosen.reset_index(drop=True)
if chosen.empty:
    st.info(f"No mistake of {pair_option(pair, counts).rsplit(' (', 1)[0]} in fold {fold}.")
    st.stop()
mistakes_table(chosen, oof.classes)

st.subheader(f"The {min(GRID_SIZE, len(chosen))} most confident of these mistakes")
any_saved = any(m.path is not None for m in fold_models.values())
with_maps = st.toggle(
    "Overlay the Grad-CAM heat map (runs the fold's saved model)",
    value=any_saved,
    disabled=not any_saved,
    help=None if any_saved else f"No fold model of {model} is in this copy (model.keras): nothing to run.",
)
st.caption(
    f"Heat maps: Grad-CAM of the class the fold model predicts, on the image at {source.input_size} px; red is "
    f"where the evidence for it is strongest. Saved models: {saved_models_line(oof.fold_ids, fold_models)}."
)
grid(chosen, model=model, models=fold_models, artifacts_root=str(root), source=source, with_maps=with_maps)

st.subheader("A closer look")
by_file = chosen.set_index("file", drop=False)
picked = common.choose("Mistake", list(chosen["file"]), param="image", format_func=lambda f: caption_of(by_file.loc[f]))
closer_look(by_file.loc[picked], oof, models=fold_models, artifacts_root=str(root), source=source)
