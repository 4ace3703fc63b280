"""A job and a task as the store keeps them and gives them back: :class:`Job`, :class:`Task`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from engine.jobs.progress import JobProgress
from engine.jobs.request import JobRequest


class UnknownJobError(ValueError):
    """No job has the id that was asked for."""


@dataclass(frozen=True)
class Job:
    """A job as stored, with its live progress (written by the worker, read by the app)."""

    id: str
    request: JobRequest
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    study_id: str | None
    executor: str
    progress: dict = field(default_factory=dict)
    """Every key of :class:`JobProgress` (and any other the writer stored), as a dict."""
    cancel_requested: bool = False

    @property
    def live_progress(self) -> JobProgress:
        """``progress`` typed."""
        return JobProgress.from_dict(self.progress)

    def to_dict(self) -> dict:
        return {**asdict(self), "request": self.request.to_dict()}


@dataclass(frozen=True)
class Task:
    """One (backbone, fold) of a job: trained for a study job, under the shifts for a robustness job."""

    job_id: str
    backbone: str
    fold: int
    state: str
    error: str | None
    started_at: float | None
    finished_at: float | None

    @property
    def label(self) -> str:
        return f"{self.backbone} fold {self.fold}"
