"""Where the worker's tasks run: in the worker's own process (``local``, the default) or on a Dask cluster.

Choosing one is configuration, read from the environment by :func:`executor_settings`:

| variable | meaning | default |
| --- | --- | --- |
| ``CXR_EXECUTOR`` | ``local`` (one task at a time in the worker process) or ``dask`` | ``local`` |
| ``CXR_DASK_SCHEDULER`` | the Dask scheduler's address, e.g. ``tcp://10.0.0.5:8786`` | needed with ``dask`` |

With ``dask`` the worker process that the app starts stays the only one that claims tasks and
records their outcomes. It ships each (backbone, fold) to a Dask worker with a free ``GPU``
resource, keeps as many in flight as the cluster has GPUs, and cancels a cancelled job's futures.
The shipped :func:`remote_task` reads and writes run files in the shared artifacts folder, but
never opens the SQLite job store there (SQLite's WAL mode needs all its users on one host): its
progress comes back as Dask worker events, which this process writes to the store. A Dask worker
that dies mid-task has its task run again on another worker by the scheduler. See docs/scale-out.md.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.jobs.progress import JobProgress
from engine.jobs.store import DB_NAME, Job, JobStore, Task
from engine.jobs.worker import Outcome, attempt, error_text, say

if TYPE_CHECKING:
    from distributed import Client, Future

KINDS = ("local", "dask")
GPU = "GPU"
POLL_S = 0.5
CONNECT_TIMEOUT_S = 30.0
RETRIES = 2
TOPIC = "cxr-task-progress"


@dataclass(frozen=True)
class ExecutorSettings:
    """Which executor runs the tasks; ``retries`` is how often Dask reruns a task whose function raised."""

    kind: str = "local"
    scheduler: str | None = None
    retries: int = RETRIES

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"the executor (CXR_EXECUTOR) must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "dask" and not self.scheduler:
            raise ValueError(
                "the dask executor needs the scheduler's address (CXR_DASK_SCHEDULER, e.g. tcp://10.0.0.5:8786), "
                f"got scheduler={self.scheduler!r}"
            )
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, got retries={self.retries!r}")

    @property
    def name(self) -> str:
        """What the Jobs page shows as the job's executor."""
        return "local" if self.kind == "local" else f"dask {self.scheduler}"


def executor_settings(environ: Mapping[str, str] | None = None) -> ExecutorSettings:
    """The executor the environment asks for (``CXR_EXECUTOR``, ``CXR_DASK_SCHEDULER``); ``local`` when unset."""
    env = os.environ if environ is None else environ
    kind = env.get("CXR_EXECUTOR", "").strip().lower() or "local"
    scheduler = env.get("CXR_DASK_SCHEDULER", "").strip() or None
    return ExecutorSettings(kind=kind, scheduler=scheduler if kind == "dask" else None)


def open_executor(settings: ExecutorSettings) -> LocalExecutor | DaskExecutor:
    """The executor for ``settings``, to use as a context manager (the Dask one holds a client connection)."""
    return DaskExecutor(settings) if settings.kind == "dask" else LocalExecutor()


class LocalExecutor:
    """One task at a time in this process: the embedded default, nothing to install or start."""

    name = "local"

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def drain(self, store: JobStore) -> None:
        """Run queued tasks in order until none is left."""
        while (task := store.claim_next(executor=self.name)) is not None:
            say(f"running {task.label} of job {task.job_id}")
            attempt(store, task).record(store, task)


def cancel_event_name(job_id: str) -> str:
    """The Dask ``Event`` that tells a job's running tasks to stop."""
    return f"cxr-cancel-{job_id}"


class RelayedStore:
    """The job store as a task on a Dask worker sees it, without opening the SQLite file there.

    SQLite in WAL mode needs every user of the file on one host, and the shared folder may be a
    network one. So the job and its task counts travel with the task, cancel is a Dask ``Event``
    set by the executor, and progress goes back as worker events (topic ``TOPIC``) that the
    executor writes to the store.
    """

    def __init__(self, artifacts_root: Path, job: Job, counts: tuple[int, int]) -> None:
        from distributed import Event, get_worker

        self.root = artifacts_root
        self.job = job
        self.counts = counts
        self.worker = get_worker()
        self.cancel_event = Event(cancel_event_name(job.id))

    def get(self, job_id: str) -> Job:
        return self.job

    def task_counts(self, job_id: str) -> tuple[int, int]:
        return self.counts

    def set_progress(self, job_id: str, progress: JobProgress, *, log_line: str | None = None) -> None:
        self.worker.log_event(TOPIC, {"job_id": job_id, "progress": progress.to_dict(), "log_line": log_line})

    def set_study_id(self, job_id: str, study_id: str) -> None:
        self.worker.log_event(TOPIC, {"job_id": job_id, "study_id": study_id})

    def cancel_requested(self, job_id: str) -> bool:
        return self.cancel_event.is_set()


def remote_task(artifacts_root: str, job: Job, task: Task, counts: tuple[int, int], *, parallel: int = 1) -> Outcome:
    """Run one task on a Dask worker against the shared artifacts folder (TensorFlow loads here, not in the caller).

    A node that does not see the shared folder raises, so Dask retries the task (perhaps elsewhere)
    instead of this node creating an empty artifacts folder of its own.
    """
    from distributed import get_worker

    where = f"{socket.gethostname()}:{os.getpid()} (dask worker {get_worker().address})"
    root = Path(artifacts_root)
    if not (root / DB_NAME).is_file():
        raise FileNotFoundError(
            f"artifacts_root={artifacts_root!r} has no {DB_NAME} on {where}: "
            "mount the shared artifacts folder at the same path on every node"
        )
    return attempt(RelayedStore(root, job, counts), task, where=where, parallel=parallel)


@dataclass
class _Features:
    """Which (job, backbone) pairs may run folds side by side: a cached-features protocol shares one
    feature file per backbone, so its first fold runs alone and writes it, and the others read it."""

    shared: dict[str, bool] = field(default_factory=dict)
    ready: set[tuple[str, str]] = field(default_factory=set)

    def held(self, store: JobStore, running: list[Task]) -> set[tuple[str, str]]:
        return {
            (t.job_id, t.backbone)
            for t in running
            if self._shares(store, t.job_id) and (t.job_id, t.backbone) not in self.ready
        }

    def _shares(self, store: JobStore, job_id: str) -> bool:
        if job_id not in self.shared:
            request = store.get(job_id).request
            self.shared[job_id] = request.job_kind.first_fold_alone(request)
            self.ready.update((job_id, t.backbone) for t in store.tasks(job_id) if t.state == "done")
        return self.shared[job_id]


class DaskExecutor:
    """Tasks on a Dask cluster, one per free ``GPU`` resource; this process claims, submits and records them."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.client: Client | None = None
        self.features = _Features()
        self.jobs: dict[str, Job] = {}
        self.relayed: deque[tuple[float, dict]] = deque()
        self.said_waiting = False

    def __enter__(self) -> DaskExecutor:
        from distributed import Client

        try:
            self.client = Client(self.settings.scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"cannot reach the Dask scheduler at CXR_DASK_SCHEDULER={self.settings.scheduler!r}: {exc}"
            ) from exc
        self.client.subscribe_topic(TOPIC, self.relayed.append)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def gpu_slots(self) -> int:
        """GPUs the cluster offers now (the ``GPU`` resources of its live workers)."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        return int(sum(w.get("resources", {}).get(GPU, 0) for w in workers))

    def drain(self, store: JobStore) -> None:
        """Keep one task per GPU in flight until none is queued or running; record each outcome as it comes."""
        flights: dict[Future, Task] = {}
        while True:
            self._write_relayed(store)
            self._collect(store, flights)
            self._cancel_requested(store, flights)
            slots = self.gpu_slots()
            while len(flights) < slots:
                task = store.claim_next(executor=self.name, hold=self.features.held(store, list(flights.values())))
                if task is None:
                    break
                flights[self._submit(store, task, parallel=slots)] = task
            if not flights:
                if slots or not store.has_pending():
                    self._write_relayed(store)
                    return
                self._say_waiting()
            time.sleep(POLL_S)

    def _submit(self, store: JobStore, task: Task, *, parallel: int) -> Future:
        key = f"{task.backbone}-fold{task.fold}-{task.job_id}-{secrets.token_hex(3)}"
        say(f"submitting {task.label} of job {task.job_id} to {self.name} as {key}")
        self.said_waiting = False
        if task.job_id not in self.jobs:
            self.jobs[task.job_id] = store.get(task.job_id)
        return self.client.submit(
            remote_task,
            str(store.root),
            self.jobs[task.job_id],
            task,
            store.task_counts(task.job_id),
            parallel=parallel,
            key=key,
            resources={GPU: 1},
            retries=self.settings.retries,
            pure=False,
        )

    def _write_relayed(self, store: JobStore) -> None:
        """Write the progress that this executor's tasks sent (other executors may share the scheduler)."""
        while self.relayed:
            _, message = self.relayed.popleft()
            job_id = message.get("job_id")
            if job_id not in self.jobs:
                continue
            if "study_id" in message:
                store.set_study_id(job_id, message["study_id"])
            else:
                store.set_progress(job_id, JobProgress.from_dict(message["progress"]), log_line=message["log_line"])

    def _collect(self, store: JobStore, flights: dict[Future, Task]) -> None:
        for future, task in list(flights.items()):
            if not future.done():
                continue
            del flights[future]
            outcome = self._outcome(future, task)
            if outcome.state == "done":
                self.features.ready.add((task.job_id, task.backbone))
            outcome.record(store, task)

    def _outcome(self, future: Future, task: Task) -> Outcome:
        """The task's own outcome, or ``failed`` when Dask gave up on it (its workers kept dying, the
        shared folder was missing on every try); a future lost with the scheduler stops this worker,
        and the next one queues the task again."""
        if future.status == "finished":
            return future.result()
        if future.status == "error":
            error = error_text(future.exception())
            say(f"{task.label} of job {task.job_id} failed on the cluster: {error}")
            return Outcome("failed", error=error)
        raise ConnectionError(
            f"the Dask scheduler at {self.settings.scheduler} dropped {task.label} of job {task.job_id} "
            f"(future {future.key} is {future.status}); start the worker again to queue it again"
        )

    def _cancel_requested(self, store: JobStore, flights: dict[Future, Task]) -> None:
        """Cancel the futures of cancelled jobs: queued ones never start, running ones stop within a batch
        (their ``should_stop`` reads the job's cancel event)."""
        from distributed import Event

        for job_id in {t.job_id for t in flights.values()}:
            if not store.cancel_requested(job_id):
                continue
            futures = [f for f, t in flights.items() if t.job_id == job_id]
            Event(cancel_event_name(job_id), client=self.client).set()
            self.client.cancel(futures)
            tasks = [flights.pop(f) for f in futures]
            say(f"cancelled {len(tasks)} task(s) of job {job_id} on {self.name}")
            Outcome("cancelled").record(store, tasks[0])  # ends the job, which cancels its other unfinished tasks

    def _say_waiting(self) -> None:
        if not self.said_waiting:
            say(f"no worker of {self.name} offers a {GPU} resource; waiting (start workers with --resources {GPU}=1)")
            self.said_waiting = True
