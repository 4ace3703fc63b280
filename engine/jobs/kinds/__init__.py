"""Job kinds: what a job does, one module each in this package, found by name (``JobRequest.kind``).

A kind is a :class:`JobKind`: it checks a request (``validated``), expands it into its (backbone, fold)
tasks (``tasks``), says in one line what it does (``describe``), names the work for deduplication
(``key``, the request's canonical hash) and does one task (``run``), in the worker's process or on a
Dask worker. The rest (``label``, ``title``, ``short``, ``submitted``, ``epochs``, ``done_note``,
``results``, ``first_fold_alone``) is what the store's log, the worker's progress, the CLI, the pages
and a parallel executor need to know of it, with defaults. Each module of this package registers its
kind with :func:`register` when imported; a new kind is one new module here, and the store, the
worker, the executors, the CLI and the pages need no change.

A kind module imports what a task needs (training, evaluation) inside ``run``: the store, the CLI's
``jobs`` and ``logs`` and the pages read jobs without them.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.jobs.request import JobRequest
    from engine.jobs.store import Job, Task
    from engine.jobs.worker import ProgressWriter, TaskStore
    from engine.training.progress import StopFn

DEFAULT_KIND = "study"
"""What a request stored before job kinds existed (no ``kind``) is."""


@dataclass(frozen=True)
class TaskRun:
    """What a kind's ``run`` gets: the store (or its relay on a Dask worker), the job, the task, the live
    progress writer (``on_progress`` for training) and ``should_stop`` (cancellation, polled)."""

    store: TaskStore
    job: Job
    task: Task
    progress: ProgressWriter
    should_stop: StopFn


@dataclass(frozen=True)
class ResultsLink:
    """Where the app shows a job's results: a page of ``pages.common.PAGES``, its link text and query."""

    page: str
    label: str
    query: dict[str, str] = field(default_factory=dict)


class JobKind:
    """One kind of job. Subclasses set ``name`` and implement the five methods that raise here."""

    name: str = ""
    """``JobRequest.kind``, as stored."""
    label: str = ""
    """What the Jobs page calls it (defaults to ``name``)."""

    def validated(self, request: JobRequest, artifacts_root: Path) -> JobRequest:
        """``request`` checked (one-line ``ValueError`` naming what is wrong) and in canonical form."""
        raise NotImplementedError

    def tasks(self, request: JobRequest, artifacts_root: Path) -> list[tuple[str, int]]:
        """The job's (backbone, fold) tasks, in the order they run."""
        raise NotImplementedError

    def describe(self, request: JobRequest) -> str:
        """One line: what the job does."""
        raise NotImplementedError

    def key(self, request: JobRequest) -> str:
        """The canonical hash: equal for requests that do the same thing, so one active job serves both."""
        raise NotImplementedError

    def run(self, run: TaskRun) -> Any:
        """Do (or read back, when already on disk) one task; raises ``engine.training.progress.Cancelled``
        when ``run.should_stop`` asked, or the task's own error."""
        raise NotImplementedError

    def title(self, request: JobRequest) -> str:
        """The Jobs page's heading of the job, after its label."""
        return self.describe(request)

    def short(self, request: JobRequest) -> str:
        """A word for the CLI's table (``python -m engine jobs``)."""
        return self.name

    def submitted(self, request: JobRequest, tasks: list[tuple[str, int]]) -> str:
        """The log's first line, after ``submitted: ``."""
        return f"{self.describe(request)} · {len(tasks)} tasks"

    def epochs(self, request: JobRequest) -> int | None:
        """A task's epochs, shown before its first progress event; ``None`` when it has no epochs."""
        return None

    def done_note(self, result: Any) -> str:
        """What a finished task adds to its log line."""
        return ""

    def results(self, request: JobRequest, study_id: str) -> ResultsLink | None:
        """Where the app shows the job's results once a task finished, if anywhere."""
        return None

    def first_fold_alone(self, request: JobRequest) -> bool:
        """True when a backbone's first task writes a file its other tasks read (cached features), so a
        parallel executor runs it alone first."""
        return False


_KINDS: dict[str, JobKind] = {}
_LOADED = threading.Event()
_LOADING = threading.Lock()


def register(kind: JobKind) -> JobKind:
    """Add ``kind`` to the registry (a kind module calls it when imported); returns it."""
    if not kind.name or kind.name in _KINDS:
        raise ValueError(f"a job kind needs a name of its own, got {kind.name!r}")
    if not kind.label:
        kind.label = kind.name
    _KINDS[kind.name] = kind
    return kind


def _load() -> dict[str, JobKind]:
    """The registry, once every module of this package has been imported."""
    if not _LOADED.is_set():
        with _LOADING:
            for module in pkgutil.iter_modules(__path__):
                importlib.import_module(f"{__name__}.{module.name}")
            _LOADED.set()
    return _KINDS


def kind_names() -> tuple[str, ...]:
    """Every kind's name, the default first."""
    return tuple(sorted(_load(), key=lambda name: (name != DEFAULT_KIND, name)))


def kind_of(name: str) -> JobKind:
    """The kind called ``name``; a ``ValueError`` listing the kinds when there is none."""
    kinds = _load()
    if name not in kinds:
        raise ValueError(f"kind must be one of {', '.join(kind_names())}, got kind={name!r}")
    return kinds[name]


def data_path(data: str) -> str | None:
    """``data`` as an absolute path when it is a folder or a ``.zip`` file, else ``None``."""
    path = Path(data).expanduser().resolve()
    return str(path) if path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip") else None
