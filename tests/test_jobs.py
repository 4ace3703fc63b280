"""Background jobs: the store's rules, the CLI, and a real worker process killed, resumed and cancelled.

The worker tests run ``python -m engine worker`` as a real subprocess on tiny synthetic images
(MobileNet-0.25 at 32 px, random weights) and watch it only through the job store, as the app does.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine import settings
from engine.cli.main import main as cli_main
from engine.jobs.store import JobRequest, JobStore, UnknownJobError
from engine.jobs.worker import ProgressWriter, worker_alive
from engine.results import artifacts
from engine.settings import ReadOnlyError
from engine.training.progress import WARM_UP_END, Progress
from tests.conftest import SHARED, requires_shared
from tests.synthetic import make_dataset, study_json

BACKBONE = "MobileNet-0.25"
POLL_S = 0.1


def request(folder: Path, **changes) -> JobRequest:
    options = dict(
        data=str(folder), backbones=(BACKBONE,), protocol="frozen", folds=2, epochs=1, input_size=32, weights="none"
    )
    return JobRequest(**{**options, **changes})


# --- the store's rules, no training ---


def test_submit_expands_one_task_per_backbone_and_fold(artifacts_root: Path, tiny_data: Path) -> None:
    store = JobStore(artifacts_root)
    job = store.submit(request(tiny_data, backbones=(BACKBONE, "MobileNetV2-0.35", BACKBONE), folds=3))
    assert re.fullmatch(r"[0-9a-f]{8}", job.id)
    assert job.state == "queued" and job.executor == "" and job.study_id is None
    assert job.request.backbones == (BACKBONE, "MobileNetV2-0.35")
    assert job.request.data == str(tiny_data.resolve())
    tasks = store.tasks(job.id)
    assert [(t.backbone, t.fold, t.state) for t in tasks] == [
        (b, k, "queued") for b in (BACKBONE, "MobileNetV2-0.35") for k in range(3)
    ]
    assert job.progress["tasks_total"] == 6 and job.progress["tasks_done"] == 0 and job.progress["fraction"] == 0.0
    assert (artifacts_root / "jobs.sqlite").is_file()
    assert "submitted: MobileNet-0.25, MobileNetV2-0.35" in store.log(job.id)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"backbones": ("ResNet5O",)}, "ResNet5O"),
        ({"backbones": ()}, "empty list"),
        ({"folds": 1}, "folds=1"),
        ({"protocol": "fast"}, "'fast'"),
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"weights": "random"}, "weights='random'"),
        ({"seed": "7"}, "seed='7'"),
        ({"input_size": 16}, "input_size=16"),
        ({"data": "/no/such/folder"}, "/no/such/folder"),
    ],
)
def test_submit_refuses_a_bad_request_naming_it(artifacts_root: Path, tiny_data: Path, changes, named) -> None:
    store = JobStore(artifacts_root)
    with pytest.raises(ValueError, match=re.escape(named)):
        store.submit(request(tiny_data, **changes))
    assert store.list_jobs() == []


def test_identical_requests_share_one_active_job(artifacts_root: Path, tiny_data: Path) -> None:
    store = JobStore(artifacts_root)
    first = store.submit(request(tiny_data, epochs=None))
    assert store.submit(request(Path(f"{tiny_data}/"), epochs=60)).id == first.id  # frozen's own 60 epochs
    assert store.submit(request(tiny_data, epochs=None, weights=None)).id == first.id  # None is "none"
    assert store.submit(request(tiny_data, epochs=None, weights="imagenet")).id != first.id
    other_seed = store.submit(request(tiny_data, epochs=None, seed=7))
    assert other_seed.id != first.id
    store.cancel(first.id)
    again = store.submit(request(tiny_data, epochs=None))
    assert again.id not in (first.id, other_seed.id)
    assert [j.id for j in store.list_jobs()][:2] == [again.id, other_seed.id]
    assert len(store.list_jobs()) == 4


def _submit_at_barrier(root: str, data: str, barrier, seeds: list[int], out) -> None:
    os.environ["CXR_ARTIFACTS"] = root
    store = JobStore(Path(root))
    for seed in seeds:
        barrier.wait(timeout=60)
        out.put((seed, store.submit(request(Path(data), seed=seed)).id))


@pytest.mark.slow
def test_two_processes_submitting_the_same_job_at_once_get_one_job(artifacts_root: Path, tiny_data: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    seeds = [1, 2, 3, 4, 5]
    procs = [
        ctx.Process(target=_submit_at_barrier, args=(str(artifacts_root), str(tiny_data), barrier, seeds, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(2 * len(seeds))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ids_by_seed: dict[int, set[str]] = {}
    for seed, job_id in results:
        ids_by_seed.setdefault(seed, set()).add(job_id)
    assert all(len(ids) == 1 for ids in ids_by_seed.values()), ids_by_seed
    jobs = JobStore(artifacts_root).list_jobs()
    assert sorted(j.request.seed for j in jobs) == seeds
    assert {j.id for j in jobs} == set().union(*ids_by_seed.values())


def test_read_only_setting_refuses_submission_in_the_engine(
    artifacts_root: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_READ_ONLY", "1")
    store = JobStore(artifacts_root)
    with pytest.raises(ReadOnlyError, match="read-only"):
        store.submit(request(tiny_data))
    assert store.list_jobs() == []
    assert cli_main(["submit", "--data", str(tiny_data), "--arch", BACKBONE, "--no-worker"]) == 2


def test_cancel_of_a_queued_job_is_immediate(artifacts_root: Path, tiny_data: Path) -> None:
    store = JobStore(artifacts_root)
    job = store.cancel(store.submit(request(tiny_data)).id)
    assert job.state == "cancelled" and job.finished_at is not None and job.cancel_requested
    assert [t.state for t in store.tasks(job.id)] == ["cancelled", "cancelled"]
    assert store.claim_next(executor="local") is None
    assert store.cancel(job.id).state == "cancelled"


def test_a_task_left_running_by_a_dead_worker_is_queued_again(artifacts_root: Path, tiny_data: Path) -> None:
    store = JobStore(artifacts_root)
    job = store.submit(request(tiny_data))
    claimed = store.claim_next(executor="local")
    assert (claimed.backbone, claimed.fold, claimed.state) == (BACKBONE, 0, "running")
    assert store.get(job.id).state == "running" and store.get(job.id).executor == "local"
    assert [t.label for t in store.requeue_interrupted()] == [f"{BACKBONE} fold 0"]
    assert [t.state for t in store.tasks(job.id)] == ["queued", "queued"]
    assert store.claim_next(executor="local").fold == 0
    assert "interrupted (worker stopped); queued again" in store.log(job.id)
    assert store.cancel(job.id).state == "cancelled"  # no worker holds the lock: nothing would stop it later


def test_a_failed_task_fails_alone_and_the_job_lists_the_errors(artifacts_root: Path, tiny_data: Path) -> None:
    store = JobStore(artifacts_root)
    job = store.submit(request(tiny_data, folds=3))
    outcomes = [("failed", "OSError: [Errno 28] No space left on device"), ("done", None), ("failed", "MemoryError")]
    for state, error in outcomes:
        task = store.claim_next(executor="local")
        assert store.get(job.id).state == "running"
        store.finish_task(task, state=state, error=error)
    job = store.get(job.id)
    assert [t.state for t in store.tasks(job.id)] == ["failed", "done", "failed"]
    assert job.state == "failed" and job.finished_at is not None
    assert job.error.splitlines() == [
        "2 of 3 tasks failed:",
        f"{BACKBONE} fold 0: OSError: [Errno 28] No space left on device",
        f"{BACKBONE} fold 2: MemoryError",
    ]
    assert job.progress["fraction"] == 1.0 and job.progress["tasks_done"] == 3


def test_the_cli_and_the_form_build_one_request(artifacts_root: Path, tiny_data: Path, tmp_path: Path) -> None:
    """``JobRequest.for_study``: what the form submits, and what ``study`` runs and ``submit`` queues from the same
    options; checked and in canonical form before any work."""
    from engine.cli.main import build_parser, study_job_request

    built = JobRequest.for_study(
        [tiny_data], backbones=(BACKBONE, BACKBONE), folds=2, epochs=1, input_size=32, weights="none", split="image"
    )
    assert built == request(tiny_data, split="image").validated(artifacts_root)
    assert built.data == str(tiny_data.resolve()) and built.backbones == (BACKBONE,)
    argv = ["--data", str(tiny_data), "--arch", BACKBONE, "--folds", "2", "--epochs", "1", "--input-size", "32"]
    for command in ("study", "submit"):
        args = build_parser().parse_args([command, *argv, "--weights", "none", "--split", "image"])
        assert study_job_request(args) == built
    assert built.study_request().weights is None and built.study_request().n_folds == 2
    with pytest.raises(ValueError, match="no such folder"):
        JobRequest.for_study(tmp_path / "missing", backbones=(BACKBONE,))
    with pytest.raises(ValueError, match="folds must be an integer of at least 2"):
        JobRequest.for_study(tiny_data, backbones=(BACKBONE,), folds=1)


def test_cli_job_commands(artifacts_root: Path, tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--data", str(tiny_data), "--arch", BACKBONE, "--folds", "2", "--input-size", "32", "--weights", "none"]
    assert cli_main(["submit", *args, "--no-worker"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert re.fullmatch(r"[0-9a-f]{8}", job_id)
    assert cli_main(["submit", *args, "--no-worker"]) == 0
    again = capsys.readouterr()
    assert again.out.strip() == job_id and f"already queued as job {job_id}" in again.err
    assert not worker_alive(artifacts_root)

    assert cli_main(["jobs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["jobs"]
    assert [(j["id"], j["state"], j["progress"]["tasks_total"]) for j in listed] == [(job_id, "queued", 2)]
    assert cli_main(["jobs"]) == 0
    assert re.search(rf"^{job_id}\s+queued\s", capsys.readouterr().out, re.M)

    assert cli_main(["cancel", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: cancelled"
    assert cli_main(["logs", job_id]) == 0
    assert "cancel requested" in capsys.readouterr().out

    for command in (["logs", "zz"], ["cancel", "0000beef"]):
        assert cli_main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: no job with id") and command[1] in err
    with pytest.raises(UnknownJobError):
        JobStore(artifacts_root).get("zz")


def timed_writer(root: Path, data: Path, monkeypatch: pytest.MonkeyPatch, *, folds: int):
    """A running task's progress writer on a fake clock: ``at(seconds, progress)`` sends it, returns the ETA."""
    store = JobStore(root)
    job = store.submit(request(data, folds=folds))
    task = store.claim_next(executor="test")
    clock = [1000.0]
    monkeypatch.setattr("engine.jobs.worker.time.monotonic", lambda: clock[0])
    writer = ProgressWriter(store, store.get(job.id), task)

    def at(seconds: float, progress: Progress) -> float | None:
        clock[0] = 1000.0 + seconds
        writer(progress)
        return writer.eta_seconds(progress)

    return at


def test_eta_covers_the_feature_step_alone_then_the_job_from_training_speed(
    artifacts_root: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = timed_writer(artifacts_root, tiny_data, monkeypatch, folds=4)
    assert at(0, Progress(BACKBONE, 0, "features", 0, 60, 1, 100)) is None
    assert at(50, Progress(BACKBONE, 0, "features", 0, 60, 50, 100)) == pytest.approx(50.0)
    assert at(100, Progress(BACKBONE, 0, "train", 0, 60, 1, 10)) is None
    # a quarter of the fold's training in 30 s: 90 s more for it, then 3 more folds of 120 s each
    assert at(130, Progress(BACKBONE, 0, "train", 15, 60, 0, 10)) == pytest.approx(90.0 + 3 * 120.0)


def test_a_head_warm_up_on_cached_features_is_timed_as_its_own_phase(
    artifacts_root: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its 60 quick epochs say nothing of the 6 on images: counted with them, the fold would look 91 % done."""
    at = timed_writer(artifacts_root, tiny_data, monkeypatch, folds=2)
    at(0, Progress(BACKBONE, 0, "head", 0, 60, 1, 10))
    assert at(6, Progress(BACKBONE, 0, "head", 30, 60, 0, 10)) == pytest.approx(6.0), "the head's time left only"
    warm = Progress(BACKBONE, 0, "head", 60, 60, 0, 10, end=WARM_UP_END)
    assert warm.fraction == pytest.approx(0.1)
    at(12, Progress(BACKBONE, 0, "train", 0, 6, 1, 10, start=0.1))
    # one of 6 image epochs in 60 s: 300 s more for this fold, then 1 more fold of 360 s
    images = Progress(BACKBONE, 0, "train", 1, 6, 0, 10, start=0.1)
    assert at(72, images) == pytest.approx(300.0 + 360.0)
    assert images.fraction == pytest.approx(0.1 + 0.9 / 6)


# --- a real worker process ---


@dataclass
class Seen:
    """One look at a job from this (test) process, as the app would take it."""

    at: float
    state: str
    progress: dict
    tasks: list[str]


def start_worker(
    root: Path, log: Path, *, once: bool = True, env: dict | None = None, command: list[str] | None = None, **popen
) -> subprocess.Popen:
    """``python -m engine worker`` (or ``command``) on ``root`` from the project folder, output appended to ``log``."""
    command = command or [
        sys.executable,
        "-m",
        "engine",
        "worker",
        "--artifacts",
        str(root),
        *(["--once"] if once else []),
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            cwd=settings.PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
            **popen,
        )


def watch(store: JobStore, job_id: str, until, *, timeout: float, worker: subprocess.Popen, log: Path) -> list[Seen]:
    """Poll the job every ``POLL_S`` until ``until(seen)``; fails with the worker's output on timeout or exit."""
    seen: list[Seen] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        seen.append(Seen(time.time(), job.state, job.progress, [t.state for t in store.tasks(job_id)]))
        if until(seen[-1]):
            return seen
        if worker.poll() is not None and job.state in ("queued", "running"):
            break
        time.sleep(POLL_S)
    worker.kill()
    pytest.fail(f"job {job_id} never reached the awaited point; last: {seen[-1]}\n{log.read_text()[-3000:]}")


def assert_epoch_ends_seen_within(seconds: float, store: JobStore, job_id: str, seen: list[Seen]) -> int:
    """Every epoch end the worker logged was visible here (that epoch or a later one) within ``seconds``."""
    ends = [
        (at, int(m["fold"]), int(m["epoch"]))
        for at, line in store.log_entries(job_id)
        if (m := re.match(rf"{re.escape(BACKBONE)} fold (?P<fold>\d+): epoch (?P<epoch>\d+)/", line))
    ]
    for at, fold, epoch in ends:
        assert any(
            s.at <= at + seconds
            and s.progress["fold"] is not None
            and (s.progress["fold"], s.progress["epoch"]) >= (fold, epoch)
            for s in seen
        ), f"fold {fold} epoch {epoch} (ended {at:.1f}) was not visible within {seconds} s"
    return len(ends)


def file_times(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_worker_killed_mid_fold_resumes_without_retraining_finished_folds(artifacts_root: Path, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=40)
    store = JobStore(artifacts_root)
    epochs = 30
    job = store.submit(request(data, epochs=epochs, batch_size=4))
    log = tmp_path / "worker.log"
    first = start_worker(artifacts_root, log, once=False)

    def mid_second_fold(s: Seen) -> bool:
        p = s.progress
        return s.tasks == ["done", "running"] and p["fold"] == 1 and p["phase"] == "train" and p["epoch"] >= 1

    seen = watch(store, job.id, mid_second_fold, timeout=240, worker=first, log=log)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    killed_at = store.get(job.id)
    assert killed_at.state == "running" and 1 <= killed_at.progress["epoch"] < epochs
    assert 0.5 < killed_at.progress["fraction"] < 1.0
    assert not worker_alive(artifacts_root)
    fold0 = artifacts.run_dir(killed_at.study_id, BACKBONE, 0, artifacts_root)
    fold1 = artifacts.run_dir(killed_at.study_id, BACKBONE, 1, artifacts_root)
    assert artifacts.read_run(fold0) is not None and artifacts.read_run(fold1) is None
    before = file_times(fold0)
    assert {"status.json", "metrics.json", "model.keras"} <= set(before)

    second = start_worker(artifacts_root, log)
    seen += watch(store, job.id, lambda s: s.state not in ("queued", "running"), timeout=240, worker=second, log=log)
    assert second.wait(timeout=60) == 0
    job = store.get(job.id)
    assert job.state == "done" and job.error is None and job.progress["fraction"] == 1.0 and job.executor == "local"
    assert [t.state for t in store.tasks(job.id)] == ["done", "done"]
    runs = artifacts.study_runs(job.study_id, artifacts_root)
    assert [(r.backbone, r.fold) for r in runs] == [(BACKBONE, 0), (BACKBONE, 1)]
    assert sum(r.config["n_test"] for r in runs) == 120
    assert all(0.0 <= r.metrics["accuracy"] <= 1.0 and len(r.history["loss"]) == epochs for r in runs)
    assert file_times(fold0) == before
    lines = [line for _, line in store.log_entries(job.id)]
    for fold, starts in ((0, 1), (1, 2)):
        label = f"{BACKBONE} fold {fold}"
        assert sum(line.startswith(f"{label}: started") for line in lines) == starts
        assert sum(line.startswith(f"{label}: done") for line in lines) == 1
    assert sum("interrupted" in line for line in lines) == 1

    assert assert_epoch_ends_seen_within(5.0, store, job.id, seen) > 2 * epochs
    running = [s.progress for s in seen if s.state == "running"]
    assert any(p["eta_seconds"] is not None and p["eta_seconds"] >= 0 for p in running)
    assert all(0.0 <= p["fraction"] <= 1.0 and p["tasks_total"] == 2 for p in running)
    assert any("val_accuracy" in p["logs"] for p in running)


@pytest.mark.slow
def test_cancel_stops_a_running_job_within_a_batch_and_keeps_finished_folds(
    artifacts_root: Path, tmp_path: Path
) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=40)
    store = JobStore(artifacts_root)
    epochs = 40
    job = store.submit(request(data, epochs=epochs, batch_size=4))
    log = tmp_path / "worker.log"
    worker = start_worker(artifacts_root, log)

    def training_second_fold(s: Seen) -> bool:
        return s.tasks == ["done", "running"] and s.progress["fold"] == 1 and s.progress["epoch"] >= 1

    seen = watch(store, job.id, training_second_fold, timeout=240, worker=worker, log=log)
    asked = time.time()
    assert store.cancel(job.id).cancel_requested
    seen += watch(store, job.id, lambda s: s.state == "cancelled", timeout=60, worker=worker, log=log)
    stopped = seen[-1].at - asked
    assert worker.wait(timeout=60) == 0
    assert stopped < 4.0, f"the worker took {stopped:.1f} s to stop"

    job = store.get(job.id)
    assert [t.state for t in store.tasks(job.id)] == ["done", "cancelled"]
    assert job.finished_at is not None and job.error is None
    fold0 = artifacts.read_run(artifacts.run_dir(job.study_id, BACKBONE, 0, artifacts_root))
    assert fold0 is not None and len(fold0.history["loss"]) == epochs
    assert artifacts.read_run(artifacts.run_dir(job.study_id, BACKBONE, 1, artifacts_root)) is None
    fold1_epochs = [
        int(m.group(1))
        for _, line in store.log_entries(job.id)
        if (m := re.match(rf"{BACKBONE} fold 1: epoch (\d+)/", line))
    ]
    assert fold1_epochs and max(fold1_epochs) < epochs - 10
    assert assert_epoch_ends_seen_within(5.0, store, job.id, seen) >= epochs + 1
    assert not worker_alive(artifacts_root)


@pytest.mark.slow
@requires_shared
def test_missing_weights_fail_their_backbone_alone(artifacts_root: Path, tiny_data: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5", weights)
    (tmp_path / "keras").mkdir()
    offline = "http://127.0.0.1:9"  # the Keras download fails at once, online or not
    env = {"CXR_WEIGHTS_DIR": str(weights), "KERAS_HOME": str(tmp_path / "keras"), "https_proxy": offline}
    store = JobStore(artifacts_root)
    job = store.submit(request(tiny_data, backbones=("DenseNet121", BACKBONE), weights="imagenet"))
    log = tmp_path / "worker.log"
    worker = start_worker(artifacts_root, log, env={**env, "HTTPS_PROXY": offline})
    watch(store, job.id, lambda s: s.state not in ("queued", "running"), timeout=240, worker=worker, log=log)
    assert worker.wait(timeout=60) == 0

    job = store.get(job.id)
    tasks = store.tasks(job.id)
    assert [(t.backbone, t.state) for t in tasks] == [("DenseNet121", "failed")] * 2 + [(BACKBONE, "done")] * 2
    for task in tasks[:2]:
        assert task.error.startswith("MissingWeightsError: ImageNet weights for DenseNet121 are missing")
        assert "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5" in task.error
    assert job.state == "failed"
    assert job.error.splitlines()[:2] == ["2 of 4 tasks failed:", f"DenseNet121 fold 0: {tasks[0].error}"]
    runs = artifacts.study_runs(job.study_id, artifacts_root)
    assert [(r.backbone, r.fold) for r in runs] == [(BACKBONE, 0), (BACKBONE, 1)]
    assert {r.config["weights"]["file"] for r in runs} == {"mobilenet_2_5_224_tf_no_top.h5"}
    assert "DenseNet121 fold 1: failed: MissingWeightsError" in store.log(job.id)


# --- robustness jobs: the store's rules on a study laid out on disk (the worker: test_robustness_jobs.py) ---


def fake_study(root: Path, *, models: dict[tuple[str, int], bool], study_id: str = "5eed5eed5eed") -> str:
    """A study of finished runs on disk (no training); ``models`` says which (backbone, fold) kept a model.keras."""
    folder = artifacts.study_dir(study_id, root)
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(study_json(study_id, folds=[[0], [1], [2]], input_size=32)))
    for (backbone, fold), saved in models.items():
        path = artifacts.run_dir(study_id, backbone, fold, root)
        config = {"study_id": study_id, "backbone": backbone, "fold": fold}
        artifacts.write_run(path, config=config, history={}, metrics={}, predictions="", status={})
        if saved:
            (path / "model.keras").write_bytes(b"not read by the store")
    return study_id


def test_a_robustness_job_has_one_task_per_saved_fold_model(artifacts_root: Path) -> None:
    study_id = fake_study(artifacts_root, models={(BACKBONE, 0): True, (BACKBONE, 1): False, (BACKBONE, 2): True})
    store = JobStore(artifacts_root)
    job = store.submit(JobRequest.robustness(study_id, BACKBONE))
    assert (job.request.kind, job.request.study_id, job.request.backbones) == ("robustness", study_id, (BACKBONE,))
    assert job.state == "queued" and job.study_id == study_id
    assert [(t.backbone, t.fold, t.state) for t in store.tasks(job.id)] == [
        (BACKBONE, 0, "queued"),
        (BACKBONE, 2, "queued"),
    ]
    assert (
        f"submitted: robustness of {BACKBONE} in study {study_id} · folds 0, 2 (saved models) · 2 tasks"
        in store.log(job.id)
    )
    assert store.submit(JobRequest(kind="robustness", study_id=study_id, backbones=(BACKBONE,))).id == job.id
    assert store.get(job.id).request == job.request  # stored and read back whole
    store.cancel(job.id)
    assert store.submit(JobRequest.robustness(study_id, BACKBONE)).id != job.id


@pytest.mark.parametrize(
    ("request_of", "named"),
    [
        (lambda sid: JobRequest.robustness("0000deadbeef", BACKBONE), "unknown study study_id='0000deadbeef'"),
        (lambda sid: JobRequest.robustness(sid, "MobileNetV2-0.35"), "no saved model of backbone='MobileNetV2-0.35'"),
        (lambda sid: JobRequest(kind="robustness", study_id=sid, backbones=(BACKBONE, "X")), "one backbone"),
        (lambda sid: JobRequest.robustness(sid, BACKBONE, data="/no/such/folder"), "/no/such/folder"),
        (lambda sid: JobRequest(kind="evaluate", study_id=sid, backbones=(BACKBONE,)), "kind='evaluate'"),
    ],
)
def test_a_bad_robustness_request_is_refused_naming_it(artifacts_root: Path, request_of, named: str) -> None:
    study_id = fake_study(artifacts_root, models={(BACKBONE, 0): True, ("MobileNetV2-0.35", 0): False})
    store = JobStore(artifacts_root)
    with pytest.raises(ValueError, match=re.escape(named)):
        store.submit(request_of(study_id))
    assert store.list_jobs() == []


def test_read_only_refuses_a_robustness_job(artifacts_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study_id = fake_study(artifacts_root, models={(BACKBONE, 0): True})
    monkeypatch.setenv("CXR_READ_ONLY", "1")
    with pytest.raises(ReadOnlyError):
        JobStore(artifacts_root).submit(JobRequest.robustness(study_id, BACKBONE))


def test_a_job_stored_before_job_kinds_loads_as_a_study_job_and_still_deduplicates(
    artifacts_root: Path, tiny_data: Path
) -> None:
    store = JobStore(artifacts_root)
    old = {  # a request as the store wrote it before ``kind`` and ``study_id`` existed
        "data": str(tiny_data.resolve()),
        "backbones": [BACKBONE],
        "protocol": "frozen",
        "folds": 2,
        "epochs": 1,
        "batch_size": None,
        "input_size": 32,
        "seed": 42,
        "weights": "none",
    }
    old_hash = artifacts.canonical_hash(
        {
            **{k: old[k] for k in ("data", "backbones", "folds", "input_size", "seed", "weights")},
            "protocol": JobRequest.from_dict(old).study_protocol().to_dict(),
        },
        length=32,
    )
    with sqlite3.connect(store.path) as con:
        con.execute(
            "INSERT INTO jobs (id, request, request_hash, state, created_at) VALUES ('0ld0j0b0', ?, ?, 'queued', 1.0)",
            (json.dumps(old), old_hash),
        )
        con.execute(
            "INSERT INTO tasks (job_id, position, backbone, fold, state) VALUES ('0ld0j0b0', 0, ?, 0, 'queued')",
            (BACKBONE,),
        )
    (job,) = store.list_jobs()
    assert job.request.kind == "study" and job.request.study_id is None and job.request.backbones == (BACKBONE,)
    assert job.request.canonical_hash() == old_hash
    assert store.submit(request(tiny_data, split="image")).id == "0ld0j0b0", "a job stored before splits was by image"
    assert store.submit(request(tiny_data)).id != "0ld0j0b0", "folds by patient are another study"


def test_robustness_progress_counts_conditions_and_its_eta_the_folds_left(
    artifacts_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study_id = fake_study(artifacts_root, models={(BACKBONE, k): True for k in range(3)})
    store = JobStore(artifacts_root)
    job = store.submit(JobRequest.robustness(study_id, BACKBONE))
    task = store.claim_next(executor="test")
    clock = [1000.0]
    monkeypatch.setattr("engine.jobs.worker.time.monotonic", lambda: clock[0])
    writer = ProgressWriter(store, store.get(job.id), task)
    writer.start()
    assert store.get(job.id).progress["epochs"] is None
    clock[0] = 1010.0
    writer.conditions(11, 22)  # half the conditions in 10 s: 10 s more, then 2 more folds of 20 s
    progress = store.get(job.id).progress
    assert (progress["phase"], progress["batch"], progress["batches"]) == ("robustness", 11, 22)
    assert progress["fraction"] == pytest.approx(0.5 / 3)
    assert progress["eta_seconds"] == pytest.approx(10.0 + 2 * 20.0)
