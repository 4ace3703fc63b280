"""Robustness: each saved fold model on its own held-out images under acquisition shifts, pooled over folds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st

from engine import settings
from engine.data.sources import study_dataset
from engine.evaluation import robustness
from engine.evaluation.predictions import ENSEMBLE
from engine.jobs.states import ACTIVE_STATES
from engine.jobs.store import DB_NAME, JobRequest, JobStore
from engine.jobs.worker import ensure_worker
from engine.results import artifacts
from pages import common

common.require_router(__file__)

STRENGTHS = list(robustness.STRENGTHS)
LAST_JOB = "robustness_job"
EVERY_SOURCE = "every source"
NOTHING = {
    "finished": [],
    "with_model": [],
    "analysed": [],
    "classes": [],
    "class_images": {},
    "table": [],
    "sources": {},
}


@st.cache_data(show_spinner=False, max_entries=16)
def _study_state(artifacts_root: str, study_id: str, key: tuple) -> dict[str, dict]:
    """Per backbone: its finished folds, those with a saved model, and its pooled robustness table; and the
    study's ensemble of backbones, when it was analysed (``python -m engine robustness --backbone ensemble``)."""
    runs = artifacts.study_runs(study_id, Path(artifacts_root))
    state = {}
    for backbone in sorted({r.backbone for r in runs}):
        results = robustness.saved_results(study_id, backbone, Path(artifacts_root))
        finished = sorted(r.fold for r in runs if r.backbone == backbone)
        with_model = sorted(r.fold for r in runs if r.backbone == backbone and r.model_path)
        state[backbone] = _state(results, finished=finished, with_model=with_model)
    if results := robustness.saved_results(study_id, ENSEMBLE, Path(artifacts_root)):
        analysed = sorted(int(r["fold"]) for r in results)
        state[ENSEMBLE] = _state(results, finished=analysed, with_model=analysed)
    return state


def _state(results: list[dict], *, finished: list[int], with_model: list[int]) -> dict:
    return {
        "finished": finished,
        "with_model": with_model,
        "analysed": sorted(int(r["fold"]) for r in results),
        "classes": list(results[0]["classes"]) if results else [],
        "class_images": class_images(results),
        "table": robustness.pooled_table(results),
        "sources": source_views(results),
    }


def source_views(results: list[dict]) -> dict[str, dict]:
    """Each counted source's view (:func:`_source_view`), for the sources with held-out images in its folds."""
    views = {source: _source_view(results, source) for source in sources_counted(results)}
    return {source: view for source, view in views.items() if sum(view["class_images"].values())}


def sources_counted(results: list[dict]) -> list[str]:
    """The sources whose images a multi-source study's files counted apart, in the study's order."""
    unshifted = [next(c for c in r["conditions"] if c["shift"] == "none") for r in results]
    return list(dict.fromkeys(name for c in unshifted for name in c.get("by_source", {})))


def _source_view(results: list[dict], source: str) -> dict:
    """The pooled table of one source's held-out images, over the folds that counted them apart (a source with no
    held-out image there is not offered)."""
    counted = robustness.counted_by_source(results, source)
    return {
        "analysed": sorted(int(r["fold"]) for r in counted),
        "class_images": class_images(counted, source=source),
        "table": robustness.pooled_table(counted, source=source),
    }


def class_images(results: list[dict], *, source: str | None = None) -> dict[str, int]:
    """Held-out images of each class (of one source's, when given), added up over the analysed folds (their
    unshifted condition)."""
    counts: dict[str, int] = {}
    for result in results:
        unshifted = next(c for c in result["conditions"] if c["shift"] == "none")
        found = unshifted if source is None else unshifted["by_source"][source]
        for name, n in zip(result["classes"], found["n"], strict=True):
            counts[name] = counts.get(name, 0) + int(n)
    return counts


def study_state(study_id: str) -> dict[str, dict]:
    return _study_state(
        str(common.artifacts_root()), study_id, artifacts.changed_key(common.artifacts_root(), study_id)
    )


@st.cache_data(show_spinner=False, max_entries=8, ttl=60)
def _images_here(artifacts_root: str, study_id: str, key: tuple) -> bool:
    try:
        study_dataset(artifacts.read_study(study_id, Path(artifacts_root)), Path(artifacts_root))
    except ValueError:
        return False
    return True


def images_here(study_id: str) -> bool:
    """Whether the study's decoded images are on this machine (the analysis reads them); checked once a minute."""
    return _images_here(str(common.artifacts_root()), study_id, artifacts.changed_key(common.artifacts_root()))


def folds_text(folds: list[int]) -> str:
    return ", ".join(str(k) for k in folds) or "none"


def backbone_label(state: dict[str, dict]):
    def label(backbone: str) -> str:
        found = state.get(backbone, {})
        if backbone == ENSEMBLE:
            return f"ensemble of backbones · shifts run on {len(found['analysed'])} fold(s)"
        if found.get("analysed"):
            return f"{backbone} · shifts run on {len(found['analysed'])} fold model(s)"
        if found.get("with_model"):
            return f"{backbone} · {len(found['with_model'])} saved fold model(s), not analysed yet"
        return f"{backbone} · no saved fold model"

    return label


def strength_chart(table: list[dict], *, figure_of, unshifted: float, y_title: str, title: str) -> go.Figure:
    """One line per shift across its three strengths; the unshifted figure as a dashed reference line."""
    figure = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for index, shift in enumerate(robustness.SHIFTS):
        rows = sorted((r for r in table if r["shift"] == shift.name), key=lambda r: STRENGTHS.index(r["strength"]))
        rows = [r for r in rows if figure_of(r) is not None]
        if not rows:
            continue
        figure.add_trace(
            go.Scatter(
                x=[r["strength"] for r in rows],
                y=[figure_of(r) for r in rows],
                mode="lines+markers",
                name=shift.name,
                line={"color": palette[index % len(palette)]},
                customdata=[[r["setting"], figure_of(r) - unshifted] for r in rows],
                hovertemplate="%{customdata[0]}: %{y:.3f} (%{customdata[1]:+.3f})<extra>" + shift.name + "</extra>",
            )
        )
    figure.add_hline(
        y=unshifted,
        line={"dash": "dash", "color": "grey"},
        annotation_text=f"unshifted {unshifted:.3f}",
        annotation_position="bottom right",
    )
    figure.update_layout(
        title=title,
        height=420,
        margin={"t": 40, "l": 10, "r": 10, "b": 10},
        xaxis={"title": "strength", "categoryorder": "array", "categoryarray": STRENGTHS},
        yaxis={"title": y_title, "tickformat": ".2f", "range": y_range([figure_of(r) for r in table], unshifted)},
        legend={"title": "shift"},
    )
    return figure


def y_range(values: list[float | None], unshifted: float) -> list[float]:
    """At least 0.1 tall, so that one image's change on a small class does not fill the chart."""
    found = [v for v in values if v is not None] + [unshifted]
    low, high = min(found), max(found)
    return [max(0.0, min(low, high - 0.1)) - 0.01, min(1.0, max(high, low + 0.1)) + 0.01]


def unshifted_row(table: list[dict]) -> dict:
    return next(row for row in table if row["shift"] == "none")


def accuracy_chart(backbone: str, table: list[dict], source: str | None) -> None:
    unshifted = unshifted_row(table)["accuracy"]
    title = f"{backbone}: accuracy" + (f", {source}'s images" if source else "")
    figure = strength_chart(
        table, figure_of=lambda r: r["accuracy"], unshifted=unshifted, y_title="accuracy", title=title
    )
    st.plotly_chart(figure, width="stretch", key="robustness-accuracy")


def recall_chart(backbone: str, table: list[dict], chosen: str, n_images: int) -> None:
    unshifted = unshifted_row(table)["recall"][chosen]
    if unshifted is None:
        st.info(f"The held-out folds hold no {chosen} image: its recall is undefined.")
        return
    figure = strength_chart(
        table,
        figure_of=lambda r: r["recall"][chosen],
        unshifted=unshifted,
        y_title=f"recall of {chosen}",
        title=f"{backbone}: {chosen} recall (sensitivity), {n_images:,} images",
    )
    st.plotly_chart(figure, width="stretch", key="robustness-recall")


def results_table(table: list[dict], classes: list[str], folds: list[int]) -> pd.DataFrame:
    rows = []
    for row in table:
        shift = robustness.SHIFTS_BY_NAME.get(row["shift"])
        rows.append(
            {
                "shift": row["shift"],
                "description": shift.description if shift else "the held-out images as they are",
                "strength": row["strength"],
                "setting": row["setting"],
                "accuracy": row["accuracy"],
                "change": row["change"],
                **{f"recall {c}": row["recall"][c] for c in classes},
                "images": row["n_images"],
                "folds": folds_text(folds),
            }
        )
    return pd.DataFrame(rows)


def classes_present(found: dict) -> list[str]:
    """The classes with held-out images in this view (one source's adult normals: Normal alone)."""
    return [c for c in found["classes"] if found["class_images"].get(c)]


def results_section(backbone: str, found: dict, chosen: str, source: str | None) -> None:
    table, classes, folds = found["table"], classes_present(found), found["analysed"]
    unshifted = unshifted_row(table)
    whose = "The mean of every backbone's model of each fold" if backbone == ENSEMBLE else "Each fold's model"
    which = f"held-out images from {source}" if source else "held-out images"
    st.caption(
        f"{whose} on its own {which}: fold(s) {folds_text(folds)}, {unshifted['n_images']:,} images, "
        f"once as they are and under {len(robustness.SHIFTS)} shifts × {len(STRENGTHS)} strengths applied to the "
        "decoded image at the model's input size; correct counts are added up over the folds. The dashed line is "
        "the unshifted figure; hover a point for its setting and its change from it."
    )
    left, right = st.columns(2)
    with left:
        accuracy_chart(backbone, table, source)
    with right:
        recall_chart(backbone, table, chosen, found["class_images"].get(chosen, 0))
    numbers = ["accuracy", "change", *(f"recall {c}" for c in classes)]
    st.dataframe(
        results_table(table, classes, folds).style.format("{:.3f}", subset=numbers, na_rep="–"),
        hide_index=True,
    )


def active_job(study_id: str, backbone: str):
    """The queued or running robustness job of this backbone, if any (none is looked for on a read-only demo)."""
    root = common.artifacts_root()
    if settings.read_only() or not (root / DB_NAME).is_file():
        return None
    wanted = ("robustness", study_id, (backbone,))
    for job in JobStore(root).list_jobs():
        if job.state in ACTIVE_STATES and (job.request.kind, job.request.study_id, job.request.backbones) == wanted:
            return job
    return None


def jobs_link(job_id: str) -> None:
    common.page_link("jobs", "Follow it on the Jobs page", query_params={"job": job_id})


def queue_analysis(study_id: str, backbone: str) -> None:
    """Queue the robustness job and wake the worker; a refusal is shown as its one line."""
    root = common.artifacts_root()
    try:
        job = JobStore(root).submit(JobRequest.robustness(study_id, backbone))
        ensure_worker(root)
    except (settings.ReadOnlyError, ValueError) as exc:
        st.error(str(exc))
        return
    st.session_state[LAST_JOB] = job.id


def missing_section(study_id: str, backbone: str, found: dict) -> None:
    """What is missing for this backbone, and the button that queues the analysis of its saved fold models."""
    with_model, analysed = found["with_model"], found["analysed"]
    without_model = [k for k in found["finished"] if k not in with_model]
    if not with_model and analysed:
        st.caption(
            f"The results above were computed from {backbone}'s fold models (model.keras), which this copy does not "
            "keep: they can be read here, not run again."
        )
        return
    if not with_model:
        others = [b for b, s in study_state(study_id).items() if s["with_model"] and b != ENSEMBLE]
        st.info(
            f"{backbone} has no saved fold model (model.keras) in this study: robustness runs each fold's own model "
            "on its held-out images, so there is nothing to analyse. "
            + (f"Backbones with saved models: {', '.join(others)}." if others else "No backbone of it has one.")
        )
        return
    if without_model:
        st.caption(
            f"Fold(s) {folds_text(without_model)} of {backbone} kept no model.keras: they cannot be in this analysis."
        )
    pending = [k for k in with_model if k not in analysed]
    if not pending:
        return
    st.info(
        f"Fold(s) {folds_text(pending)} of {backbone} have a saved model but no robustness results yet"
        + (f" (fold(s) {folds_text(analysed)} are shown above)." if analysed else ".")
    )
    command = f"python -m engine robustness --study {study_id} --backbone {backbone}"
    if settings.read_only():
        st.info(f"Read-only demo: the analysis does not run here. On your own copy, run `{command}`.")
        return
    job = active_job(study_id, backbone)
    if job is not None:
        progress = job.live_progress
        st.success(
            f"Job `{job.id}` is {job.state}: {progress.tasks_done} of {progress.tasks_total} "
            "fold model(s) done. Reload the page when it has finished."
        )
        jobs_link(job.id)
        return
    if not images_here(study_id):
        study = artifacts.read_study(study_id, common.artifacts_root())
        st.warning(
            f"The images of this study (dataset {study.dataset.name}, `{study.dataset.fingerprint}`) are "
            f"not on this machine, so the analysis cannot run here. Where they are, run `{command} --data <folder>`."
        )
        return
    if st.button("Run the robustness analysis in the background", type="primary", key="queue-robustness"):
        queue_analysis(study_id, backbone)
    st.caption(
        f"Queues one task per saved fold model ({len(with_model)}) for the background worker: "
        f"{1 + len(robustness.SHIFTS) * len(STRENGTHS)} passes over its held-out images each. "
        f"The same from a terminal: `{command}`."
    )
    last = st.session_state.get(LAST_JOB)
    if last:
        st.success(f"Job `{last}` queued.")
        jobs_link(last)


def shifts_section() -> None:
    with st.expander("The shifts and their strengths"):
        st.dataframe(
            pd.DataFrame(
                [
                    {"shift": s.name, "what it does": s.description}
                    | {strength: s.label(p) for strength, p in zip(STRENGTHS, s.parameters, strict=True)}
                    for s in robustness.SHIFTS
                ]
            ),
            hide_index=True,
        )
        st.caption(f"Noise is drawn with seed {robustness.NOISE_SEED}, so every run sees the same noise.")


study_id = common.study_page("Robustness to acquisition shifts")
state = study_state(study_id)
# The served model, then analysed backbones first: the page opens on results where there are some.
backbones = [*common.backbones_of(study_id), *([ENSEMBLE] if ENSEMBLE in state else [])]
backbones = common.served_first(study_id, sorted(backbones, key=lambda b: not state.get(b, {}).get("analysed")))
picker, class_picker, source_picker = st.columns([2, 1.4, 1.6])
backbone = common.choose("Backbone", backbones, param="backbone", where=picker, format_func=backbone_label(state))
found = state.get(backbone, NOTHING)
if found["table"]:
    source = None
    if found["sources"]:
        source = common.choose(
            "Held-out images from",
            [EVERY_SOURCE, *found["sources"]],
            param="source",
            where=source_picker,
            help="A multi-source study's images of one source alone: follow the adult normals under each shift.",
        )
        source = None if source == EVERY_SOURCE else source
    view = {**found, **found["sources"][source]} if source else found
    chosen = common.choose("Recall of class", classes_present(view), param="class", where=class_picker)
    results_section(backbone, view, chosen, source)
missing_section(study_id, backbone, found)
shifts_section()
