"""A job's live progress (JobProgress) and the job kinds' registry, without training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.jobs.kinds import JobKind, kind_names, kind_of
from engine.jobs.progress import JobProgress
from engine.jobs.store import JobRequest, JobStore
from engine.jobs.worker import ProgressWriter
from engine.training.progress import Progress

KEYS = [f.name for f in dataclasses.fields(JobProgress)]


def test_a_queued_job_and_the_workers_writes_have_every_key(artifacts_root: Path, tiny_data: Path) -> None:
    store = JobStore(artifacts_root)
    request = JobRequest(data=str(tiny_data), backbones=("MobileNet-0.25",), folds=2, input_size=32, weights="none")
    job = store.submit(request)
    assert list(job.progress) == KEYS and job.live_progress == JobProgress(tasks_total=2)
    task = store.claim_next(executor="test")
    writer = ProgressWriter(store, store.get(job.id), task)
    writer.start()
    started = store.get(job.id).live_progress
    assert (started.phase, started.backbone, started.fold, started.epochs) == ("starting", "MobileNet-0.25", 0, 60)
    writer(Progress("MobileNet-0.25", 0, "train", 1, 60, 0, 4, logs={"val_accuracy": 0.5}, images_per_second=12.0))
    running = store.get(job.id)
    assert list(running.progress) == KEYS
    assert running.live_progress.images_per_second == 12.0 and running.live_progress.logs == {"val_accuracy": 0.5}


def test_an_older_progress_reads_with_defaults_and_round_trips() -> None:
    older = {"fraction": 0.5, "backbone": "MobileNet", "fold": 1, "logs": None, "tasks_done": 1, "tasks_total": 2}
    progress = JobProgress.from_dict({**older, "written_by": "someone else"})
    assert progress.images_per_second is None and progress.logs == {} and progress.fold == 1
    assert JobProgress.from_dict(progress.to_dict()) == progress
    assert JobProgress.from_dict({}) == JobProgress()


def test_every_kind_is_registered_and_an_unknown_one_is_named() -> None:
    assert kind_names() == ("study", "robustness")
    assert all(isinstance(kind_of(name), JobKind) for name in kind_names())
    request = JobRequest.robustness("abc", "MobileNet")
    assert request.job_kind is kind_of("robustness")
    assert request.describe() == "robustness of MobileNet in study abc"
    with pytest.raises(ValueError, match="kind must be one of study, robustness, got kind='evaluate'"):
        kind_of("evaluate")
