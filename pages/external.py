"""External validation: a saved model on labelled images no fold has seen, checked for overlap first, and
labelled by how the set relates to the study (another source, or more images of a source it already has)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine import settings
from engine.evaluation.bootstrap import interval_text
from engine.evaluation.external import (
    RELATIONS,
    ensemble_studies,
    evaluate_folder,
    evaluate_study_ensemble,
    saved_evaluations,
)
from engine.evaluation.external_results import UNSTATED, ExternalEvaluation
from engine.evaluation.metrics import confusion_rates
from engine.evaluation.predictions import ENSEMBLE
from engine.models.catalog import ModelInfo
from engine.reports.served import read_choice
from engine.results import artifacts
from pages import common

common.require_router(__file__)

# The launch form's upload rules (streamlit_app.saved_upload): one file per content, size-capped, zip only.
ZIP_SIGNATURE = b"PK\x03\x04"
MAX_ZIP_BYTES = 200 * 1024 * 1024
EVALUATE_COMMAND = "python -m engine evaluate --data <folder> --model <a model.keras>"
ENSEMBLE_COMMAND = "python -m engine evaluate --data <folder> --study <study id>"
PROBABILITY_COLUMNS = {name: st.column_config.NumberColumn(name, format="%.3f") for name in ("p(predicted)", "p(true)")}


@st.cache_data(show_spinner=False, max_entries=8)
def _evaluations(artifacts_root: str, key: tuple) -> list[ExternalEvaluation]:
    return saved_evaluations(Path(artifacts_root))


def evaluations() -> list[ExternalEvaluation]:
    """Every saved evaluation, read again when a file of ``<artifacts>/evaluations`` changes."""
    root = common.artifacts_root()
    files = sorted((root / "evaluations").glob("*.json"))
    return _evaluations(str(root), tuple((p.name, p.stat().st_mtime_ns) for p in files))


def model_id(info: ModelInfo) -> str:
    return f"{info.study_id}/{info.backbone}/{'ensemble' if info.is_ensemble else info.fold}"


def model_label(info: ModelInfo) -> str:
    return f"{info.label} · study {info.study_id}"


RELATION_LABELS = {
    "other source": "another source (an external validation)",
    "same source": "a source the study already has (same-source held-out images)",
}


def when(timestamp: float | None) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "–"


def evaluation_model(e: ExternalEvaluation) -> str:
    return f"{e.model_label} · {e.protocol} · study {e.study_id}"


def evaluation_label(e: ExternalEvaluation) -> str:
    return f"{e.data.name} · {e.model_label} · {when(e.evaluated_at)}"


@dataclass(frozen=True)
class Choice:
    """One model the form offers: a saved model, or a study's ensemble of backbones (its ensemble row)."""

    label: str
    study_id: str
    classes: tuple[str, ...]
    model: ModelInfo | None = None

    def evaluate(self, data: str, relation: str) -> ExternalEvaluation:
        root = common.artifacts_root()
        if self.model is None:
            found = evaluate_study_ensemble(self.study_id, data, artifacts_root=root, relation=relation)
        else:
            served = self.model.serving_path
            classifier = common.classifier(str(served), artifacts.changed_key(root))
            found = evaluate_folder(classifier, data, artifacts_root=root, relation=relation)
        return ExternalEvaluation.from_json(found)


@st.cache_data(show_spinner=False, max_entries=8)
def _ensemble_studies(artifacts_root: str, key: tuple) -> dict[str, list[str]]:
    return ensemble_studies(Path(artifacts_root))


def choices(available: list[ModelInfo]) -> dict[str, Choice]:
    """The served model (``list_models``'s first) first, then fold ensembles, each study's ensemble of backbones,
    and single fold models (the engine's order)."""
    # a study's ensemble of backbones is offered once, below, whatever serves it (the engine's one saved evaluation)
    found = {model_id(m): Choice(model_label(m), m.study_id, m.classes, m) for m in available if not m.backbones}
    ensembles = {k: v for k, v in found.items() if v.model.is_ensemble}
    classes = {m.study_id: m.classes for m in available}
    root = common.artifacts_root()
    for study_id, backbones in _ensemble_studies(str(root), artifacts.changed_key(root)).items():
        label = f"ensemble of {', '.join(backbones)} (the study's ensemble row) · study {study_id}"
        ensembles[_backbones_key(study_id)] = Choice(label, study_id, classes[study_id])
    offered = ensembles | found
    first = available[0] if available else None
    served = _backbones_key(first.study_id) if first and first.backbones else first and model_id(first)
    return {key: offered[key] for key in sorted(offered, key=lambda key: key != served)}


def _backbones_key(study_id: str) -> str:
    return f"{study_id}/{ENSEMBLE}/backbones"


def run_evaluation(chosen: Choice, folder: str, upload, relation: str) -> ExternalEvaluation | None:
    """Evaluate and save; bad input is one line on the page and leaves every saved evaluation as it was."""
    try:
        data = str(common.saved_upload(upload)) if upload is not None else folder.strip()
        if not data:
            raise ValueError("give a dataset folder on the server or upload a .zip of class folders")
        with st.spinner(
            f"Importing the images, checking them against study {chosen.study_id}'s and predicting with {chosen.label}…"
        ):
            return chosen.evaluate(data, relation)
    except (settings.ReadOnlyError, ValueError, OSError) as exc:
        st.error(str(exc).strip() or type(exc).__name__)
        return None


def evaluation_form(available: list[ModelInfo]) -> None:
    """Model, folder or zip; a successful evaluation is saved and opened below."""
    by_id = choices(available)
    with st.form("evaluate", border=True):
        chosen = by_id[
            common.choose(
                "Model (the served model first; then fold ensembles, ensembles of backbones and single fold models "
                "by held-out accuracy)",
                list(by_id),
                param="model",
                format_func=lambda key: by_id[key].label,
            )
        ]
        folder = st.text_input(
            "Dataset folder on the server (one sub-folder per class, named like the model's classes)",
            placeholder="/data/my-external-set",
        )
        upload = st.file_uploader("…or upload a .zip of class folders (used instead of the folder)", type=["zip"])
        relation = st.radio(
            "These images come from",
            RELATIONS,
            format_func=RELATION_LABELS.get,
            help="More images of a source the study already has (the rest of one release, say) are unseen but not "
            "external: their figures are same-source held-out figures.",
        )
        submitted = st.form_submit_button("Evaluate", type="primary")
    st.caption(
        f"Classes of the model: {', '.join(chosen.classes)}. Folders are matched loosely (COVID, covid19, NORMAL…); a "
        "set may hold only some of them. Images are decoded at the model's input size and compared with its "
        "study's images first: identical and near-duplicate ones are left out and counted. The evaluation runs in "
        "this page (a few thousand images take a minute or so per model) and is saved; an ensemble of backbones "
        "evaluates each backbone's fold ensemble first and saves it too."
    )
    if submitted:
        result = run_evaluation(chosen, folder, upload, relation)
        if result is not None:
            common.remember(evaluation=result.key)
            st.session_state.pop("choose-evaluation", None)  # the list below opens the new one
            st.success(f"Saved as evaluation `{result.key}` ({result.n_images:,} images); opened below.")


def figure_name(e: ExternalEvaluation) -> str:
    """``accuracy``, or ``<class> recall`` on a set of one class."""
    return f"{next(iter(e.data.counts))} recall" if e.one_class else "accuracy"


def figure_cell(e: ExternalEvaluation) -> str:
    """Accuracy with its interval; on a set of one class, that class's recall (accuracy would only repeat it)."""
    return f"{figure_name(e)} {interval_text(e.figure(e.headline), missing='undefined')}"


def saved_table(found: list[ExternalEvaluation]) -> pd.DataFrame:
    rows = [
        {
            "data": f"{e.data.name} · {e.data.fingerprint}",
            "relation to the study": e.relation,
            "images": e.n_images,
            "model": evaluation_model(e),
            "figure (95% interval)": figure_cell(e),
            "evaluated": when(e.evaluated_at),
            "key": e.key,
        }
        for e in found
    ]
    return pd.DataFrame(rows)


def heatmap(cm: np.ndarray, *, true_classes: list[str], classes: list[str], title: str) -> go.Figure:
    """Counts, with the row % (the share of each true class) beside them; rows only for classes in the set."""
    rows_pct = 100 * confusion_rates(cm)[0]
    keep = [classes.index(c) for c in true_classes]
    counts, rates = cm[keep], rows_pct[keep]
    text = [
        [f"{n:.0f}<br>{p:.1f}%" for n, p in zip(line, pct, strict=True)]
        for line, pct in zip(counts, rates, strict=True)
    ]
    figure = go.Figure(
        go.Heatmap(
            z=rates,
            x=classes,
            y=true_classes,
            text=text,
            texttemplate="%{text}",
            customdata=counts,
            hovertemplate="true %{y} → predicted %{x}<br>count %{customdata:.0f} · row %{z:.1f}%<extra></extra>",
            colorscale="Blues",
            zmin=0,
            zmax=100,
            showscale=False,
        )
    )
    figure.update_layout(
        title=title,
        height=140 + 80 * len(true_classes),
        margin={"t": 40, "l": 10, "r": 10, "b": 10},
        xaxis={"title": "predicted", "side": "bottom"},
        yaxis={"title": "true", "autorange": "reversed"},
    )
    return figure


def class_table(e: ExternalEvaluation) -> pd.DataFrame:
    rows = []
    for c in e.classes:
        recall = (
            interval_text(e.figure(f"recall[{c}]"), missing="undefined")
            if c in e.data.counts
            else "undefined (no image)"
        )
        rows.append(
            {
                "class": c,
                "images": e.data.counts.get(c, 0),
                "recall (sensitivity)": recall,
                "precision": interval_text(e.figure(f"precision[{c}]"), missing="undefined"),
            }
        )
    return pd.DataFrame(rows)


def headline(e: ExternalEvaluation) -> None:
    seen = e.data.overlap
    accuracy, images, left_out, skipped = st.columns(4)
    accuracy.metric(figure_name(e) if e.one_class else "Accuracy", f"{e.estimate(e.headline):.3f}")
    found = e.interval(e.headline)
    if found and found["low"] is not None:
        accuracy.caption(f"95% interval [{found['low']:.3f}, {found['high']:.3f}]")
    images.metric("Images evaluated", f"{e.n_images:,}")
    left_out.metric("Left out: in the model's study", f"{seen.n_left_out:,}")
    left_out.caption(f"of {seen.checked:,} checked")
    skipped.metric("Files skipped", f"{len(e.data.skipped):,}")


def overlap_note(e: ExternalEvaluation) -> None:
    seen = e.data.overlap
    line = (
        f"Overlap check against the images of study {e.study_id}: {seen.identical:,} identical and "
        f"{seen.near_duplicates:,} near-duplicate image(s) of {seen.checked:,} left out ({seen.rule})."
    )
    if seen.left_out:
        st.warning(line)
        with st.expander(f"The {len(seen.left_out):,} image(s) left out"):
            st.dataframe(pd.DataFrame({"file": list(seen.left_out)}), hide_index=True)
    else:
        st.success(line)


def data_notes(e: ExternalEvaluation) -> None:
    data = e.data
    if data.classes_not_in_model:
        st.warning(
            f"Folder(s) not a class of the model, left out: {', '.join(data.classes_not_in_model)} "
            f"(the model knows {', '.join(e.classes)})."
        )
    absent = [c for c in e.classes if c not in data.counts]
    if absent:
        only = list(data.counts)
        note = f"No {', '.join(absent)} image in this set: their recall and the macro figures are undefined"
        st.caption(note + (f"; the only figure here is {only[0]} recall." if len(only) == 1 else "."))
    if data.skipped:
        st.warning(f"{len(data.skipped):,} file(s) skipped: they could not be used.")
        with st.expander("Skipped files and why"):
            st.dataframe(pd.DataFrame(list(data.skipped)), hide_index=True)
    if data.duplicates_dropped:
        st.caption(f"{data.duplicates_dropped:,} byte-identical duplicate file(s) in the set were counted once.")


def mistakes_section(e: ExternalEvaluation) -> None:
    found = e.mistakes()
    if found is None:
        st.caption("Saved before per-image predictions were kept: evaluate again to list the misclassified images.")
        return
    with st.expander(f"The {len(found):,} misclassified image(s), the most confident first"):
        if found:
            st.dataframe(pd.DataFrame(found), hide_index=True, column_config=PROBABILITY_COLUMNS)
        else:
            st.write("None: every evaluated image was classified correctly.")


def show_evaluation(e: ExternalEvaluation) -> None:
    st.subheader(f"{e.data.name} · {evaluation_model(e)}")
    st.caption(f"Data `{e.data.fingerprint}` · evaluated {when(e.evaluated_at)} · evaluation `{e.key}`")
    if e.relation == "same source":
        st.info(
            "Same source as the study: these images are unseen, but come from the release and processing the study's "
            "own images come from. Their figures are same-source held-out figures, not an external validation."
        )
    elif e.relation == UNSTATED:
        st.caption("Saved before sets were labelled by source: how these images relate to the study is not recorded.")
    headline(e)
    intervals = e.intervals
    left, right = st.columns([1, 1])
    with left:
        st.dataframe(class_table(e), hide_index=True)
        if intervals is not None:
            macro = intervals.macro
            if macro:
                st.caption(
                    " · ".join(
                        f"{k.replace('_', ' ')} {interval_text(v, missing='undefined')}" for k, v in macro.items()
                    )
                )
            st.caption(f"{intervals.description}.")
            if intervals.undefined:
                st.caption("Not defined on this set: " + "; ".join(intervals.undefined) + ".")
        else:
            st.caption(
                "Saved before intervals were kept with evaluations: evaluate the same data with the same model again "
                "to add them (the figures are the same)."
            )
        data_notes(e)
    with right:
        classes = list(e.classes)
        present = [c for c in classes if c in e.data.counts]
        title = f"Confusion matrix on {e.data.name}"
        st.plotly_chart(
            heatmap(e.confusion_matrix, true_classes=present, classes=classes, title=title), width="stretch", key="cm"
        )
        st.caption("Rows: the true class (only classes in the set); columns: the prediction; count and row %.")
    mistakes_section(e)
    overlap_note(e)


def saved_section(found: list[ExternalEvaluation]) -> None:
    st.header("Saved evaluations")
    if not found:
        st.info(f"No saved evaluation in `{common.artifacts_root()}` yet.")
        return
    st.dataframe(saved_table(found), hide_index=True)
    by_key = {e.key: e for e in found}
    served = read_choice(common.artifacts_root()) or {}

    def first(e: ExternalEvaluation) -> tuple:
        of_served = (e.study_id, e.backbone) == (served.get("study_id"), served.get("backbone"))
        return (not (of_served and e.relation == "other source"), -(e.evaluated_at or 0))

    key = common.choose(
        "Open an evaluation (the served model's on other sources first, then the newest)",
        [e.key for e in sorted(found, key=first)],
        param="evaluation",
        format_func=lambda k: evaluation_label(by_key[k]),
    )
    show_evaluation(by_key[key])


st.title("External validation")
st.warning(common.NOT_A_DEVICE, icon=":material/warning:")
st.caption(
    "A saved fold model on labelled images that none of its study's folds saw: the test of whether it generalises "
    "beyond the hospitals and devices of its training set. “Unseen” is checked, not assumed."
)
available = common.models()
if settings.read_only():
    st.info(
        "Read-only demo: new evaluations are disabled here; the saved ones are below. On your own copy of the "
        f"project, evaluate from this page or with `{EVALUATE_COMMAND}`; a study's ensemble of backbones with "
        f"`{ENSEMBLE_COMMAND}`."
    )
elif not available:
    st.info(
        f"No trained model in `{common.artifacts_root()}` yet: an external evaluation needs a saved fold model. "
        "Launch a training job from the sidebar, then come back here."
    )
else:
    evaluation_form(available)
saved_section(evaluations())
