"""Faults in a real worker process: SIGKILL at many random points, and a write that fails.

Kill points come from a seeded generator, two ways: at the Nth file put in place by the process
(``os.replace``, the last step of every atomic write: the dataset cache's three files, the study, the
backbone's feature cache, then ``WRITES_PER_FOLD`` per fold, the model, its OOD detector and the run's
files with ``status.json`` last; N up to all of them spans the whole job), which
reaches the moments around the writes that a timer almost never hits; and after a random delay,
which lands anywhere (import, training, a write half done). After every kill, whatever the
artifacts folder lists as a result must be whole.

The jobs use the ``frozen`` protocol: every write a fine-tuning job makes is there too (a saved
``model.keras`` of backbone and head, the detector, the run's files) plus the feature cache, and a
worker process finishes the job in about a third of a ``paper`` job's time (no augmentation layer to
trace), so each of the many restarts costs less.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.jobs.store import JobRequest, JobStore
from engine.results import artifacts
from tests.synthetic import make_dataset
from tests.test_jobs import start_worker

BACKBONE = "MobileNet-0.25"
FOLDS = 3
KILL_CYCLES = 6
SETUP_WRITES = 5
WRITES_PER_FOLD = 7

KILL_AT_NTH_REPLACE = """
import os, signal, sys
target, count, real_replace = int(sys.argv[1]), 0, os.replace

def replace(src, dst):
    global count
    count += 1
    if count == target:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

os.replace = replace
from engine.cli.main import main
sys.exit(main(["worker", "--once", "--artifacts", sys.argv[2]]))
"""


def job_request(data: Path, *, folds: int = FOLDS) -> JobRequest:
    return JobRequest(
        data=str(data), backbones=(BACKBONE,), protocol="frozen", folds=folds, epochs=1, input_size=32, weights="none"
    )


def worker(root: Path, log: Path, *, kill_at_replace: int | None = None, **popen) -> subprocess.Popen:
    """A ``--once`` worker; with ``kill_at_replace=N`` it SIGKILLs itself as it puts its Nth file in place."""
    if kill_at_replace is None:
        return start_worker(root, log, **popen)
    command = [sys.executable, "-c", KILL_AT_NTH_REPLACE, str(kill_at_replace), str(root)]
    return start_worker(root, log, command=command, **popen)


def assert_every_listed_result_is_whole(store: JobStore, job_id: str) -> int:
    """Each run the folder calls finished has all its files, readable and consistent; returns how many."""
    study_id = store.get(job_id).study_id
    if study_id is None:
        return 0
    runs = artifacts.study_runs(study_id, store.root)
    study = artifacts.read_study(study_id, store.root)
    for run in runs:
        n_test = len(study.folds[run.fold])
        assert run.config["n_test"] == n_test and run.status["state"] == "done"
        assert len(artifacts.read_predictions(run)) == n_test
        assert len(run.history["loss"]) == 1 and 0.0 <= run.metrics["accuracy"] <= 1.0
        with zipfile.ZipFile(run.path / "model.keras") as model:
            assert model.testzip() is None
    return len(runs)


@pytest.mark.slow
def test_worker_killed_at_random_points_never_leaves_a_half_result_and_a_restart_finishes(
    artifacts_root: Path, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=10, size=48)
    store = JobStore(artifacts_root)
    job = store.submit(job_request(data))
    log = tmp_path / "worker.log"
    rng = np.random.default_rng(20261126)
    kills: list[tuple[str, int]] = []
    for _ in range(KILL_CYCLES):
        if rng.random() < 0.6:
            point = int(rng.integers(1, SETUP_WRITES + WRITES_PER_FOLD * FOLDS + 1))
            proc = worker(artifacts_root, log, kill_at_replace=point)
            what = f"at file write {point}"
        else:
            proc = worker(artifacts_root, log)
            delay = float(rng.uniform(2.0, 15.0))
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
            what = f"after {delay:.1f} s"
        code = proc.wait(timeout=300)
        if code == -signal.SIGKILL:
            kills.append((what, assert_every_listed_result_is_whole(store, job.id)))
        if store.get(job.id).state == "done":
            break
    print("kills (where, folds finished at that moment):", kills)
    assert len(kills) >= 3, f"too few kills landed before the job ended: {kills}"
    assert len({finished for _, finished in kills}) >= 2, f"every kill landed at the same stage: {kills}"

    restarted = worker(artifacts_root, log)
    assert restarted.wait(timeout=600) == 0, log.read_text()[-3000:]
    final = store.get(job.id)
    errors = [t.error for t in store.tasks(job.id) if t.error]
    assert final.state == "done" and final.error is None, (kills, final.error, errors, log.read_text()[-3000:])
    assert [t.state for t in store.tasks(job.id)] == ["done"] * FOLDS
    assert assert_every_listed_result_is_whole(store, job.id) == FOLDS
    done_lines = [line for _, line in store.log_entries(job.id) if ": done" in line]
    assert sorted(done_lines) == sorted(set(done_lines)) and len(done_lines) == FOLDS, done_lines
    runs_root = artifacts.study_dir(final.study_id, artifacts_root) / "runs"
    files = {len(list(run.iterdir())) for run in runs_root.glob("*/fold-*")}
    assert files == {WRITES_PER_FOLD}, f"a run has {files} files: update WRITES_PER_FOLD so kills span the job"
    assert not [p for p in runs_root.rglob("*") if ".tmp" in p.name], "a killed write's temp file is left in a run"


def limit_file_size(limit: int):
    """For ``preexec_fn``: writes past ``limit`` bytes fail with EFBIG, as on a full disk, instead of killing."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_write_that_fails_marks_the_task_failed_and_keeps_earlier_results(
    artifacts_root: Path, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=6, size=48)
    store = JobStore(artifacts_root)
    log = tmp_path / "worker.log"
    first = store.submit(job_request(data, folds=2))
    assert worker(artifacts_root, log).wait(timeout=600) == 0, log.read_text()[-3000:]
    done = store.get(first.id)
    assert done.state == "done"
    before = {run.fold: json.dumps(run.metrics) for run in artifacts.study_runs(done.study_id, artifacts_root)}
    model_bytes = (artifacts.run_dir(done.study_id, BACKBONE, 0, artifacts_root) / "model.keras").stat().st_size

    again = store.submit(dataclasses.replace(job_request(data, folds=2), backbones=("MobileNet",)))
    proc = worker(artifacts_root, log, preexec_fn=limit_file_size(model_bytes // 4))
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    failed = store.get(again.id)
    assert failed.state == "failed", failed
    tasks = store.tasks(again.id)
    assert [t.state for t in tasks] == ["failed"] * 2
    assert all(t.error.startswith("OSError") and "File too large" in t.error for t in tasks), tasks[0].error
    assert "2 of 2 tasks failed" in failed.error

    runs = artifacts.study_runs(done.study_id, artifacts_root)
    assert {run.fold: json.dumps(run.metrics) for run in runs if run.backbone == BACKBONE} == before
    assert not [run for run in runs if run.backbone == "MobileNet"]
    failed_runs = artifacts.study_dir(done.study_id, artifacts_root) / "runs" / "MobileNet"
    assert not [p for p in failed_runs.rglob("*") if p.name.startswith(".model.keras")], "a failed write left a file"
