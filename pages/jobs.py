"""Jobs: every background job (a study's training, or a backbone's robustness analysis) with live progress,
its tasks, its log, and a cancel button."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st

from engine import settings
from engine.jobs.states import ACTIVE_STATES
from engine.jobs.store import DB_NAME, Job, JobStore
from engine.jobs.worker import ensure_worker, worker_alive
from pages import common

common.require_router(__file__)

STATE_ICONS = {
    "queued": ":gray[:material/schedule:]",
    "running": ":blue[:material/autorenew:]",
    "done": ":green[:material/check_circle:]",
    "failed": ":red[:material/error:]",
    "cancelled": ":orange[:material/cancel:]",
}
LOG_TAIL_CHARS = 6000


def when(timestamp: float | None) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "–"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def progress_text(job: Job) -> str:
    """Where the job is: task, backbone, fold, epoch (or feature batch), validation accuracy and ETA."""
    p = job.live_progress
    parts = [f"task {p.tasks_done}/{p.tasks_total}"]
    if job.state != "running":
        return " · ".join(parts)
    if p.backbone:
        parts.append(f"{p.backbone} fold {p.fold}")
    if p.phase == "robustness":
        parts.append(f"shift conditions {p.batch}/{p.batches}")
        parts.append(f"ETA {duration(p.eta_seconds)}")
        return " · ".join(parts)
    if p.phase == "features":
        parts.append(f"ImageNet features, batch {p.batch}/{p.batches}")
        parts.append(f"features done in {duration(p.eta_seconds)}")
        return " · ".join(parts)
    if p.phase == "head":
        parts.append(f"head on cached features, epoch {min(int(p.epoch or 0) + 1, int(p.epochs))}/{p.epochs}")
        parts.append(f"head done in {duration(p.eta_seconds)}, then the epochs on images")
        return " · ".join(parts)
    if p.epochs:
        parts.append(f"epoch {min(int(p.epoch or 0) + 1, int(p.epochs))}/{p.epochs}")
    val_accuracy = p.logs.get("val_accuracy")
    if val_accuracy is not None:
        parts.append(f"val accuracy {val_accuracy:.3f}")
    parts.append(f"ETA {duration(p.eta_seconds)}")
    return " · ".join(parts)


def job_title(job: Job) -> str:
    """The job's kind and what it does: backbones, protocol and folds, or the backbone and study it analyses."""
    kind = job.request.job_kind
    return f"{kind.label} · {kind.title(job.request)}"


def results_link(job: Job) -> None:
    """Where the job's results are shown, once a task finished."""
    if not (job.study_id and job.live_progress.tasks_done):
        return
    link = job.request.job_kind.results(job.request, job.study_id)
    if link is not None:
        common.page_link(link.page, link.label, query_params=link.query)


def job_card(store: JobStore, job: Job, *, can_cancel: bool) -> None:
    request = job.request
    data = f"data `{request.data}`" if request.data else "images: the study's decoded cache"
    with st.container(border=True):
        head, action = st.columns([5, 1])
        head.markdown(f"**{STATE_ICONS.get(job.state, '')} {job.state}** · job `{job.id}` · {job_title(job)}")
        head.caption(
            f"{data} · created {when(job.created_at)} · started {when(job.started_at)} · "
            f"finished {when(job.finished_at)} · executor: {job.executor or 'not yet picked up'}"
        )
        if can_cancel and job.state in ACTIVE_STATES and action.button("Cancel", key=f"cancel-{job.id}"):
            job = store.cancel(job.id)
            st.toast(f"Job {job.id}: {job.state}")
        fraction = float(job.live_progress.fraction or (1.0 if job.state == "done" else 0.0))
        st.progress(min(max(fraction, 0.0), 1.0), text=f"{fraction:.0%} · {progress_text(job)}")
        if job.error:
            st.error(job.error)
        results_link(job)
        with st.expander("Tasks and log"):
            tasks = store.tasks(job.id)
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "backbone": t.backbone,
                            "fold": t.fold,
                            "state": t.state,
                            "started": when(t.started_at),
                            "finished": when(t.finished_at),
                            "error": t.error or "",
                        }
                        for t in tasks
                    ],
                    columns=["backbone", "fold", "state", "started", "finished", "error"],
                ),
                hide_index=True,
            )
            log = store.log(job.id)
            st.code(log[-LOG_TAIL_CHARS:] or "(no log yet)", language="text")


@st.fragment(run_every=2)
def live_jobs() -> None:
    """Re-drawn every two seconds, so progress moves without reloading the page."""
    read_only = settings.read_only()
    root = common.artifacts_root()
    if read_only and not (root / DB_NAME).is_file():
        st.info("Read-only demo: no training jobs run here. The finished studies are on the other pages.")
        return
    store = JobStore(root)
    jobs = store.list_jobs()
    if not jobs:
        st.info(
            "No jobs yet. Launch one from the sidebar form (dataset folder or .zip, backbones, protocol), "
            "or from a terminal with `python -m engine submit --data <folder> --arch MobileNet`."
        )
        return
    alive = worker_alive(root)
    waiting = any(job.state in ACTIVE_STATES for job in jobs)
    if waiting and not alive:
        st.warning("Jobs are waiting but no worker is running.")
        if not read_only and st.button("Start the worker"):
            ensure_worker(root)
    st.caption(f"Worker {'running' if alive else 'stopped'} · refreshed {dt.datetime.now():%H:%M:%S}")
    focus = common.remembered("job")
    ordered = sorted(jobs, key=lambda j: (j.id != focus, j.state not in ACTIVE_STATES, -(j.created_at or 0)))
    for job in ordered:
        job_card(store, job, can_cancel=not read_only)


st.title("Training jobs")
st.caption(
    "A training job trains its backbones on every fold; a robustness job runs each saved fold model of a backbone on "
    "its held-out images under the acquisition shifts. Tasks run one at a time in a background worker; finished "
    "folds are kept, so a cancelled or failed job resumes where it stopped when queued again."
)
live_jobs()
