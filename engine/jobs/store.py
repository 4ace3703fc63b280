"""The persistent job store: study requests queued by the app or the CLI, run by the worker.

One SQLite file beside the artifacts (``<artifacts>/jobs.sqlite``) in WAL mode, so the app reads
while the worker writes. A job (:class:`~engine.jobs.request.JobRequest`) is a study request,
expanded into one task per (backbone, fold), or the robustness analysis of one backbone of a
finished study, one task per fold with a saved model; tasks run in submission order. Every change
is one transaction: a reader sees a job either before or after a change, never half of one,
whatever moment the worker is killed at. The worker holds an ``flock`` on
``<artifacts>/worker.lock`` while it lives; a ``running`` row only means something while that lock
is held, which is how a killed worker's task is found and queued again.

Reading jobs needs only the standard library: :mod:`engine.training.study` (and scikit-learn behind it)
is imported when a request is checked, so ``jobs``/``logs`` commands and app readers start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import TypeVar

from engine import settings
from engine.jobs.progress import JobProgress
from engine.jobs.records import Job, Task, UnknownJobError
from engine.jobs.request import JobRequest
from engine.jobs.states import ACTIVE_SQL, ACTIVE_STATES, END_STATES, FINISHED_STATES, STATES
from engine.results import artifacts

DB_NAME = "jobs.sqlite"
LOCK_NAME = "worker.lock"
BUSY_TIMEOUT_S = 30.0
SCHEMA_VERSION = 1
Record = TypeVar("Record", Job, Task)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    study_id TEXT,
    executor TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{{}}',
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active_per_request
    ON jobs (request_hash) WHERE state IN {ACTIVE_SQL} AND cancel_requested = 0;
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    position INTEGER NOT NULL,
    backbone TEXT NOT NULL,
    fold INTEGER NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    started_at REAL,
    finished_at REAL,
    PRIMARY KEY (job_id, position)
);
CREATE TABLE IF NOT EXISTS job_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    at REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_by_job ON job_logs (job_id, seq);
"""


def worker_lock_path(artifacts_root: Path) -> Path:
    return artifacts_root / LOCK_NAME


def lock_is_held(path: Path) -> bool:
    """True while some process (this one included, through another descriptor) holds ``path``'s flock."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _now() -> float:
    return time.time()


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


class JobStore:
    """Jobs, tasks and logs of one artifacts folder, safe to use from many processes at once."""

    def __init__(self, artifacts_root: Path | None = None) -> None:
        self.root = artifacts.ensure_root(Path(artifacts_root) if artifacts_root else settings.artifacts_dir())
        self.path = self.root / DB_NAME
        self._create_schema()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    def _create_schema(self) -> None:
        """Create the tables once; an flock keeps two first-time openers from racing on the WAL switch."""
        probe = self._connect()
        try:
            ready = probe.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        finally:
            probe.close()
        if ready:
            return
        fd = os.open(self.root / f"{DB_NAME}.init-lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            con = self._connect()
            try:
                if con.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    con.execute("PRAGMA journal_mode = WAL")
                    con.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            finally:
                con.close()
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction; a writer takes the write lock up front, so two writers never deadlock."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    # --- what the app and the CLI use ---

    def submit(self, request: JobRequest) -> Job:
        """Queue ``request``, or return the queued or running job that asks for the same thing."""
        settings.refuse_if_read_only()
        request = request.validated(self.root)
        digest = request.canonical_hash()
        tasks = request.task_list(self.root)
        for _ in range(3):
            try:
                with self._transaction(write=True) as con:
                    existing = self._active_with_hash(con, digest)
                    if existing is not None:
                        return self._job(con, existing)
                    job_id = secrets.token_hex(4)
                    self._insert(con, job_id, request, digest, tasks)
                    return self._job(con, job_id)
            except sqlite3.IntegrityError:
                continue
        raise RuntimeError(f"could not queue the job ({request.describe()}): the job store kept refusing the insert")

    def list_jobs(self) -> list[Job]:
        """Every job, newest first."""
        with self._transaction(write=False) as con:
            ids = [row["id"] for row in con.execute("SELECT id FROM jobs ORDER BY seq DESC")]
            return [self._job(con, job_id) for job_id in ids]

    def get(self, job_id: str) -> Job:
        with self._transaction(write=False) as con:
            return self._job(con, job_id)

    def tasks(self, job_id: str) -> list[Task]:
        with self._transaction(write=False) as con:
            self._row(con, job_id)
            rows = con.execute("SELECT * FROM tasks WHERE job_id = ? ORDER BY position", (job_id,))
            return [_task(row) for row in rows]

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: at once when queued or when no worker is alive, else within one batch of the worker."""
        with self._transaction(write=True) as con:
            row = self._row(con, job_id)
            if row["state"] in ACTIVE_STATES and not row["cancel_requested"]:
                con.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                self._log(con, job_id, "cancel requested")
                if row["state"] == "queued" or not lock_is_held(worker_lock_path(self.root)):
                    self._finish_job(con, job_id)
            return self._job(con, job_id)

    def log(self, job_id: str) -> str:
        """The job's log, one line per event, oldest first."""
        return "".join(f"{_clock(at)}  {line}\n" for at, line in self.log_entries(job_id))

    def log_entries(self, job_id: str) -> list[tuple[float, str]]:
        """The log as (time, line) pairs, oldest first, with the exact times."""
        with self._transaction(write=False) as con:
            self._row(con, job_id)
            rows = con.execute("SELECT at, line FROM job_logs WHERE job_id = ? ORDER BY seq", (job_id,))
            return [(r["at"], r["line"]) for r in rows]

    # --- what the worker uses ---

    def requeue_interrupted(self) -> list[Task]:
        """Queue again the tasks a killed worker left running; call only while holding the worker lock."""
        with self._transaction(write=True) as con:
            rows = con.execute("SELECT * FROM tasks WHERE state = 'running' ORDER BY job_id, position").fetchall()
            for row in rows:
                con.execute(
                    "UPDATE tasks SET state = 'queued', started_at = NULL WHERE job_id = ? AND position = ?",
                    (row["job_id"], row["position"]),
                )
                label = f"{row['backbone']} fold {row['fold']}"
                self._log(con, row["job_id"], f"{label}: interrupted (worker stopped); queued again")
            return [_task(row) for row in rows]

    def claim_next(self, *, executor: str, hold: Collection[tuple[str, str]] = ()) -> Task | None:
        """Mark the first queued task (oldest job first) running and return it; ``None`` when nothing is queued.

        ``hold`` lists (job id, backbone) pairs not to start now: a parallel executor holds a backbone's
        other folds back until its first fold has cached the features they share.
        """
        with self._transaction(write=True) as con:
            jobs = con.execute(
                f"SELECT id, cancel_requested FROM jobs WHERE state IN {ACTIVE_SQL} ORDER BY seq"
            ).fetchall()
            for job in jobs:
                if job["cancel_requested"]:
                    self._finish_job(con, job["id"])
                    continue
                queued = con.execute(
                    "SELECT * FROM tasks WHERE job_id = ? AND state = 'queued' ORDER BY position", (job["id"],)
                ).fetchall()
                row = next((r for r in queued if (job["id"], r["backbone"]) not in hold), None)
                if row is None:
                    if not queued and not self._count(con, job["id"], ("running",)):
                        self._finish_job(con, job["id"])
                    continue
                now = _now()
                con.execute(
                    "UPDATE tasks SET state = 'running', started_at = ?, error = NULL "
                    "WHERE job_id = ? AND position = ?",
                    (now, row["job_id"], row["position"]),
                )
                con.execute(
                    "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?), executor = ? "
                    "WHERE id = ?",
                    (now, executor, job["id"]),
                )
                self._log(con, job["id"], f"{row['backbone']} fold {row['fold']}: started ({executor})")
                return replace(_task(row), state="running", started_at=now)
        return None

    def finish_task(self, task: Task, *, state: str, error: str | None = None, note: str = "") -> None:
        """Record a task's outcome; the job ends once no task is left, or at once when it was cancelled."""
        if state not in END_STATES:
            raise ValueError(f"a task finishes as done, failed or cancelled, got state={state!r}")
        with self._transaction(write=True) as con:
            con.execute(
                "UPDATE tasks SET state = ?, error = ?, finished_at = ? WHERE job_id = ? AND backbone = ? AND fold = ?",
                (state, error, _now(), task.job_id, task.backbone, task.fold),
            )
            self._log(con, task.job_id, f"{task.label}: {state}" + (f": {error}" if error else "") + note)
            row = self._row(con, task.job_id)
            if row["cancel_requested"] or not self._count(con, task.job_id, ACTIVE_STATES):
                self._finish_job(con, task.job_id)

    def set_progress(self, job_id: str, progress: JobProgress | Mapping, *, log_line: str | None = None) -> None:
        """Replace the job's live progress (a :class:`JobProgress`, or its dict as relayed from a Dask worker)."""
        data = progress.to_dict() if isinstance(progress, JobProgress) else dict(progress)
        with self._transaction(write=True) as con:
            con.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(data, allow_nan=False), job_id))
            if log_line:
                self._log(con, job_id, log_line)

    def set_study_id(self, job_id: str, study_id: str) -> None:
        with self._transaction(write=True) as con:
            con.execute("UPDATE jobs SET study_id = ? WHERE id = ? AND study_id IS NULL", (study_id, job_id))

    def cancel_requested(self, job_id: str) -> bool:
        with self._transaction(write=False) as con:
            return bool(self._row(con, job_id)["cancel_requested"])

    def has_pending(self) -> bool:
        with self._transaction(write=False) as con:
            return con.execute(f"SELECT 1 FROM jobs WHERE state IN {ACTIVE_SQL} LIMIT 1").fetchone() is not None

    def task_counts(self, job_id: str) -> tuple[int, int]:
        """(tasks finished, done or failed; all tasks) of a job."""
        with self._transaction(write=False) as con:
            return self._count(con, job_id, FINISHED_STATES), self._count(con, job_id, STATES)

    # --- internals ---

    def _row(self, con: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no job with id {job_id!r} in {self.path}")
        return row

    def _job(self, con: sqlite3.Connection, job_id: str) -> Job:
        row = self._row(con, job_id)
        done, total = self._count(con, job_id, FINISHED_STATES), self._count(con, job_id, STATES)
        stored = json.loads(row["progress"])
        progress = replace(JobProgress.from_dict(stored), tasks_done=done, tasks_total=total)
        if row["state"] != "running":
            progress = replace(progress, fraction=done / total if total else 0.0, eta_seconds=None)
        return _record(
            Job,
            row,
            request=JobRequest.from_dict(json.loads(row["request"])),
            progress={**stored, **progress.to_dict()},
            cancel_requested=bool(row["cancel_requested"]),
        )

    @staticmethod
    def _count(con: sqlite3.Connection, job_id: str, states: tuple[str, ...]) -> int:
        marks = ", ".join("?" * len(states))
        query = f"SELECT COUNT(*) FROM tasks WHERE job_id = ? AND state IN ({marks})"
        return con.execute(query, (job_id, *states)).fetchone()[0]

    @staticmethod
    def _active_with_hash(con: sqlite3.Connection, digest: str) -> str | None:
        row = con.execute(
            f"SELECT id FROM jobs WHERE request_hash = ? AND state IN {ACTIVE_SQL} AND cancel_requested = 0",
            (digest,),
        ).fetchone()
        return row["id"] if row else None

    def _insert(
        self, con: sqlite3.Connection, job_id: str, request: JobRequest, digest: str, tasks: list[tuple[str, int]]
    ) -> None:
        con.execute(
            "INSERT INTO jobs (id, request, request_hash, state, created_at, study_id) "
            "VALUES (?, ?, ?, 'queued', ?, ?)",
            (job_id, json.dumps(request.to_dict()), digest, _now(), request.study_id),
        )
        con.executemany(
            "INSERT INTO tasks (job_id, position, backbone, fold, state) VALUES (?, ?, ?, ?, 'queued')",
            [(job_id, i, b, k) for i, (b, k) in enumerate(tasks)],
        )
        self._log(con, job_id, f"submitted: {request.job_kind.submitted(request, tasks)}")

    def _finish_job(self, con: sqlite3.Connection, job_id: str) -> None:
        """End a job: cancelled if asked, else failed if any task failed (errors listed), else done."""
        row = self._row(con, job_id)
        now = _now()
        if row["cancel_requested"]:
            con.execute(
                f"UPDATE tasks SET state = 'cancelled', finished_at = ? WHERE job_id = ? AND state IN {ACTIVE_SQL}",
                (now, job_id),
            )
            state, error = "cancelled", None
        else:
            failed = con.execute(
                "SELECT backbone, fold, error FROM tasks WHERE job_id = ? AND state = 'failed' ORDER BY position",
                (job_id,),
            ).fetchall()
            total = self._count(con, job_id, STATES)
            state, error = ("failed", _failure_summary(failed, total)) if failed else ("done", None)
        con.execute("UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ?", (state, error, now, job_id))
        done = self._count(con, job_id, ("done",))
        self._log(con, job_id, f"job {state}: {done} of {self._count(con, job_id, STATES)} tasks done")

    @staticmethod
    def _log(con: sqlite3.Connection, job_id: str, line: str) -> None:
        con.execute("INSERT INTO job_logs (job_id, at, line) VALUES (?, ?, ?)", (job_id, _now(), line))


def _failure_summary(failed: list[sqlite3.Row], total: int) -> str:
    lines = [f"{row['backbone']} fold {row['fold']}: {row['error']}" for row in failed]
    return f"{len(failed)} of {total} tasks failed:\n" + "\n".join(lines)


def _record(record: type[Record], row: sqlite3.Row, **converted: object) -> Record:
    """A ``record`` whose fields are the row's columns of the same names, as stored, but for those in ``converted``."""
    return record(**{f.name: row[f.name] for f in fields(record) if f.name not in converted}, **converted)


def _task(row: sqlite3.Row) -> Task:
    return _record(Task, row)
