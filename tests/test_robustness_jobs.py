"""A robustness job on the tiny real study (two backbones, two folds, models saved): run by the worker fold by
fold, cancelled before it writes, and failing in one line when the study's images are gone.

Moved from ``test_jobs.py`` (whose store rules for robustness jobs stay there): these tests read the tiny
explorer study that several files share, and a file started later finds it built.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.jobs.store import JobRequest, JobStore
from engine.results import artifacts
from tests import app_fixtures
from tests.app_fixtures import TINY_BACKBONES

TINY_BACKBONE = TINY_BACKBONES[0]
tiny_study = app_fixtures.tiny_study


@pytest.fixture
def tiny_copy(tiny_study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The tiny real study (two backbones, two folds, models saved) in an artifacts folder of its own."""
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_study.root, root)
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return root, tiny_study.study_id


def robustness_files(root: Path, study_id: str) -> list[str]:
    return sorted(p.name for p in (artifacts.study_dir(study_id, root) / "robustness").rglob("*.json"))


@pytest.mark.slow
def test_the_worker_runs_a_robustness_job_fold_by_fold(tiny_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.jobs.worker import run_worker

    root, study_id = tiny_copy
    monkeypatch.setattr("engine.jobs.worker.PROGRESS_EVERY_S", 0.0)
    store = JobStore(root)
    job = store.submit(JobRequest.robustness(study_id, TINY_BACKBONE))
    assert run_worker(root, once=True) == 0
    job = store.get(job.id)
    assert job.state == "done" and job.error is None and job.progress["tasks_done"] == 2
    assert (job.progress["phase"], job.progress["batch"], job.progress["batches"]) == ("robustness", 22, 22)
    saved = robustness_files(root, study_id)
    assert [name.split("-")[1] for name in saved] == ["0", "1"]
    for fold in (0, 1):
        result = json.loads(
            next((artifacts.study_dir(study_id, root) / "robustness").rglob(f"fold-{fold}-*")).read_text()
        )
        unshifted = next(c for c in result["conditions"] if c["shift"] == "none")
        run = artifacts.read_run(artifacts.run_dir(study_id, TINY_BACKBONE, fold, root))
        cm = run.metrics["confusion_matrix"]
        assert sum(unshifted["correct"]) == sum(cm[k][k] for k in range(len(cm)))  # the fold's own test accuracy
        assert len(result["conditions"]) == 22
    log = store.log(job.id)
    assert f"{TINY_BACKBONE} fold 1: done, unshifted accuracy " in log and "lowest" in log


def test_a_cancelled_robustness_job_stops_before_writing(tiny_copy) -> None:
    from engine.jobs.worker import attempt

    root, study_id = tiny_copy
    store = JobStore(root)
    job = store.submit(JobRequest.robustness(study_id, TINY_BACKBONE))
    task = store.claim_next(executor="test")
    with sqlite3.connect(store.path) as con:  # as a cancel seen by a worker that holds the lock
        con.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job.id,))
    assert attempt(store, task).state == "cancelled"
    assert robustness_files(root, study_id) == []


def test_a_robustness_task_fails_in_one_line_without_the_studys_images(tiny_copy) -> None:
    from engine.jobs.worker import attempt

    root, study_id = tiny_copy
    shutil.rmtree(root / "datasets")
    store = JobStore(root)
    job = store.submit(JobRequest.robustness(study_id, TINY_BACKBONE))
    outcome = attempt(store, store.claim_next(executor="test"))
    assert outcome.state == "failed"
    assert outcome.error.startswith(f"DatasetError: the images of study {study_id} ")
    assert "are not on this machine" in outcome.error and "\n" not in outcome.error
    assert robustness_files(root, study_id) == [] and store.get(job.id).state == "running"


@pytest.mark.slow
def test_the_ensemble_of_backbones_is_measured_on_the_mean_of_each_folds_models(tiny_copy) -> None:
    """Unshifted, it is right exactly where the mean of the backbones' held-out probabilities is (the comparison's
    "ensemble" row); it is kept beside the backbones' results, and a fold without every backbone's model is refused."""
    from engine.data.sources import study_dataset
    from engine.evaluation.predictions import ENSEMBLE, ensemble_out_of_fold
    from engine.evaluation.robustness import ensemble_fold_robustness
    from engine.reports.served import accuracy_drops

    root, study_id = tiny_copy
    dataset = study_dataset(artifacts.read_study(study_id, root), root)
    result = ensemble_fold_robustness(study_id, 0, dataset, artifacts_root=root)
    assert result["backbone"] == ENSEMBLE and result["backbones"] == sorted(TINY_BACKBONES)
    assert len(result["conditions"]) == 22 and robustness_files(root, study_id)[0].startswith("fold-0-")
    unshifted = next(c for c in result["conditions"] if c["shift"] == "none")
    oof = ensemble_out_of_fold(study_id, root)
    rows = oof.folds == 0
    right = oof.proba[rows].argmax(axis=1) == oof.y_true[rows]
    assert sum(unshifted["correct"]) == int(right.sum()) and sum(unshifted["n"]) == int(rows.sum())
    assert ensemble_fold_robustness(study_id, 0, dataset, artifacts_root=root) == result, "read back, not rerun"
    assert all(v is not None for v in accuracy_drops(study_id, ENSEMBLE, root).values())

    (artifacts.run_dir(study_id, TINY_BACKBONES[1], 1, root) / "model.keras").unlink()
    with pytest.raises(ValueError, match=rf"fold 1: .*missing \['{TINY_BACKBONES[1]}'\]"):
        ensemble_fold_robustness(study_id, 1, dataset, artifacts_root=root)
    command = ["robustness", "--study", study_id, "--backbone", ENSEMBLE, "--artifacts", str(root)]
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert main([*command, "--fold", "1"]) == 2
    assert "fold=1 is not a fold where every backbone" in err.getvalue() and "those are [0]" in err.getvalue()
