"""The background worker: runs queued tasks one at a time, in submission order, outside Streamlit.

``python -m engine worker`` holds ``<artifacts>/worker.lock`` (``flock``) for its whole life, so
at most one worker serves an artifacts folder and a killed worker's lock frees itself. On start it
queues again whatever a killed worker left running; finished folds are read back from disk by
``train_fold``, never trained again. What a task does is its job kind's ``run``
(:mod:`engine.jobs.kinds`): train a fold, or run a saved fold model under the acquisition shifts.
:func:`attempt` does one task and only talks to the store, so it runs in this process or on a Dask
worker alike (:mod:`engine.jobs.executors`, chosen by ``CXR_EXECUTOR``); :func:`run_worker` is the
loop that claims tasks and records their outcomes.
"""

from __future__ import annotations

import fcntl
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine import settings
from engine.jobs.kinds import TaskRun
from engine.jobs.progress import JobProgress
from engine.jobs.store import Job, JobStore, Task, lock_is_held, worker_lock_path
from engine.results import artifacts
from engine.training import compiled_models
from engine.training.progress import PHASES_ON_CACHED_FEATURES, Cancelled, Progress

if TYPE_CHECKING:
    from engine.jobs.executors import ExecutorSettings

IDLE_POLL_S = 1.0
STOP_POLL_S = 0.5
PROGRESS_EVERY_S = 1.0
LOCK_WAIT_S = 2.0
LOG_DIR = "logs"
LOG_NAME = "worker.log"
ROBUSTNESS_PHASE = "robustness"


def _root(artifacts_root: Path | None) -> Path:
    return artifacts.ensure_root(Path(artifacts_root) if artifacts_root else settings.artifacts_dir())


def worker_alive(artifacts_root: Path | None = None) -> bool:
    """True while a worker holds this artifacts folder's lock."""
    return lock_is_held(worker_lock_path(_root(artifacts_root)))


def ensure_worker(artifacts_root: Path | None = None) -> bool:
    """Start a detached worker unless one is alive; True if it started one.

    The worker outlives the caller (its own session) and exits once the queue is empty.
    """
    settings.refuse_if_read_only()
    root = _root(artifacts_root)
    if worker_alive(root):
        return False
    log_path = root / LOG_DIR / LOG_NAME
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--artifacts", str(root), "--once"],
            cwd=settings.PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return True


def _acquire_lock(artifacts_root: Path) -> int | None:
    """The worker lock's descriptor, or ``None`` if another worker holds it.

    Retries for a moment, since :func:`worker_alive` probes the lock by taking it briefly.
    """
    fd = os.open(worker_lock_path(artifacts_root), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd


def say(message: str) -> None:
    """One timestamped line on stderr (``logs/worker.log`` for the local worker, the Dask worker's log remotely)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()}: {message}", file=sys.stderr, flush=True)


class TaskStore(Protocol):
    """The part of the job store that a running task uses: :class:`JobStore` itself in this process, a relay
    on a Dask worker (:class:`engine.jobs.executors.RelayedStore`), which never opens the SQLite file."""

    root: Path

    def get(self, job_id: str) -> Job: ...

    def task_counts(self, job_id: str) -> tuple[int, int]: ...

    def set_progress(self, job_id: str, progress: JobProgress, *, log_line: str | None = None) -> None: ...

    def set_study_id(self, job_id: str, study_id: str) -> None: ...

    def cancel_requested(self, job_id: str) -> bool: ...


class StopPoll:
    """``should_stop`` for ``train_fold``: called every batch, reads the store at most every ``STOP_POLL_S``."""

    def __init__(self, store: TaskStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.checked = 0.0
        self.stop = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.stop and now - self.checked >= STOP_POLL_S:
            self.checked = now
            self.stop = self.store.cancel_requested(self.job_id)
        return self.stop


class ProgressWriter:
    """``on_progress`` for ``train_fold``: the job's live progress, written at every epoch end and every second."""

    def __init__(self, store: TaskStore, job: Job, task: Task, *, where: str = "", parallel: int = 1) -> None:
        self.store = store
        self.job = job
        self.task = task
        self.where = where
        self.parallel = max(1, parallel)
        self.tasks_done, self.tasks_total = store.task_counts(job.id)
        self.phase_started: dict[str, float] = {}
        self.started = time.monotonic()
        self.written = 0.0
        self.logs: dict[str, float | None] = {}

    def eta_seconds(self, progress: Progress | None) -> float | None:
        """Time left: of the feature extraction, or of a head's warm-up on cached features, while it runs
        (each is seconds to minutes and says nothing of the epochs on images), else of the job, from this
        fold's training speed."""
        if progress is None:
            return None
        elapsed = time.monotonic() - self.phase_started.setdefault(progress.phase, time.monotonic())
        done = progress.phase_fraction
        if progress.phase in PHASES_ON_CACHED_FEATURES:
            return elapsed / done * (1.0 - done) if done >= 0.02 else None
        if done < 0.02:
            return None
        per_task = elapsed / done
        remaining_tasks = self.tasks_total - self.tasks_done - 1
        return per_task * (1.0 - done) + per_task * remaining_tasks / self.parallel

    def snapshot(self, progress: Progress | None) -> JobProgress:
        """The job's progress from the fold's latest event (``None``: the task is starting)."""
        fold_fraction = progress.fraction if progress else 0.0
        return JobProgress(
            fraction=(self.tasks_done + fold_fraction) / max(1, self.tasks_total),
            backbone=self.task.backbone,
            fold=self.task.fold,
            phase=progress.phase if progress else "starting",
            epoch=progress.epoch if progress else 0,
            epochs=progress.epochs if progress else self._epochs(),
            batch=progress.batch if progress else 0,
            batches=progress.batches if progress else 0,
            logs=dict(self.logs),
            images_per_second=progress.images_per_second if progress else None,
            eta_seconds=self.eta_seconds(progress),
            updated_at=time.time(),
            tasks_done=self.tasks_done,
            tasks_total=self.tasks_total,
        )

    def _epochs(self) -> int | None:
        return self.job.request.job_kind.epochs(self.job.request)

    def start(self) -> None:
        self.started = time.monotonic()
        line = f"{self.task.label}: running on {self.where}" if self.where else None
        self.store.set_progress(self.job.id, self.snapshot(None), log_line=line)
        self.written = time.monotonic()

    def __call__(self, progress: Progress) -> None:
        self.phase_started.setdefault(progress.phase, time.monotonic())
        self.logs.update({k: v if math.isfinite(v) else None for k, v in progress.logs.items()})
        epoch_end = progress.phase == "train" and progress.batch == 0 and progress.epoch > 0
        if not epoch_end and time.monotonic() - self.written < PROGRESS_EVERY_S:
            return
        line = None
        if epoch_end:
            metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(progress.logs.items()))
            line = f"{self.task.label}: epoch {progress.epoch}/{progress.epochs} {metrics}"
        self.store.set_progress(self.job.id, self.snapshot(progress), log_line=line)
        self.written = time.monotonic()

    def conditions(self, step: int, total: int) -> None:
        """``on_progress`` for ``fold_robustness``: ``step`` of ``total`` conditions (unshifted, then the shifts)
        done, as phase ``"robustness"`` (batch ``step`` of ``batches``); its time left counts from the task's start."""
        self.phase_started.setdefault(ROBUSTNESS_PHASE, self.started)
        self(Progress(self.task.backbone, self.task.fold, ROBUSTNESS_PHASE, 0, 1, step, total))


def run_task(store: TaskStore, job: Job, task: Task, *, where: str = "", parallel: int = 1) -> object:
    """Do (or read back, when already on disk) one task of ``job`` through its kind; raises ``Cancelled`` or
    the task's error.

    A study job's task trains a fold and returns its run; a robustness job's task returns the fold
    model's robustness result. ``where`` (host, pid, executor) goes to the job's log when the task
    starts; ``parallel`` is how many tasks run at once, for the time left.
    """
    writer = ProgressWriter(store, job, task, where=where, parallel=parallel)
    writer.start()
    return job.request.job_kind.run(TaskRun(store, job, task, writer, StopPoll(store, job.id)))


@dataclass(frozen=True)
class Outcome:
    """How a task ended, as :meth:`JobStore.finish_task` records it; picklable, so a Dask worker can return it."""

    state: str
    error: str | None = None
    note: str = ""

    def record(self, store: JobStore, task: Task) -> None:
        store.finish_task(task, state=self.state, error=self.error, note=self.note)


def error_text(exc: BaseException) -> str:
    """``ExceptionType: message``, as the job store lists a failed task."""
    return f"{type(exc).__name__}: {str(exc).strip() or type(exc).__name__}"


def attempt(store: TaskStore, task: Task, *, where: str = "", parallel: int = 1) -> Outcome:
    """Run one task and say how it ended; a failing task fails alone, the loop goes on."""
    started = time.monotonic()
    try:
        job = store.get(task.job_id)
        found = run_task(store, job, task, where=where, parallel=parallel)
    except Cancelled:
        return Outcome("cancelled")
    except Exception as exc:  # missing weights, out of memory, bad data, full disk: the task's own failure
        say(f"{task.label} of job {task.job_id} failed\n{traceback.format_exc()}")
        return Outcome("failed", error=error_text(exc))
    return Outcome("done", note=f"{job.request.job_kind.done_note(found)} ({time.monotonic() - started:.1f} s)")


def run_worker(
    artifacts_root: Path | None = None, *, once: bool = False, executor: ExecutorSettings | None = None
) -> int:
    """Serve the queue of one artifacts folder; with ``once``, return when it is empty.

    ``executor`` defaults to the environment's choice (``CXR_EXECUTOR``), so the app starts the same
    worker whether tasks run here or on a cluster.
    """
    from engine.jobs.executors import executor_settings, open_executor

    settings.refuse_if_read_only()
    chosen = executor or executor_settings()
    store = JobStore(artifacts_root)
    fd = _acquire_lock(store.root)
    if fd is None:
        say(f"another worker already serves {store.root}; exiting")
        return 0
    say(f"serving {store.root} (executor: {chosen.name})")
    try:
        with open_executor(chosen) as runner:
            _requeue(store)
            while True:
                runner.drain(store)
                compiled_models.forget()
                if not once:
                    time.sleep(IDLE_POLL_S)
                    continue
                os.close(fd)
                fd = None
                if not store.has_pending():
                    say("queue empty; exiting")
                    return 0
                fd = _acquire_lock(store.root)
                if fd is None:
                    return 0
                _requeue(store)
    finally:
        if fd is not None:
            os.close(fd)


def _requeue(store: JobStore) -> None:
    """Queue again what a killed worker left running; only the lock holder may do this."""
    for task in store.requeue_interrupted():
        say(f"queued again {task.label} of job {task.job_id} (interrupted)")
