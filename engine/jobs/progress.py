"""A job's live progress as the store keeps it and the app reads it: :class:`JobProgress`.

The worker builds it from training's :class:`~engine.training.progress.Progress` events (one fold's
training, or a robustness task's conditions) and the job's task counts; the store writes it as JSON and
reads it back through :meth:`JobProgress.from_dict`, so a job the worker has not reached yet, and a
progress written by an older worker, has every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class JobProgress:
    """Where a job is (docs/jobs.md lists the keys).

    ``fraction``: 0..1 over the whole job. ``backbone``, ``fold``: the task running. ``phase``: ``starting``,
    ``features``, ``head``, ``train`` or ``robustness``. ``epoch``: epochs completed (the 0-based index of the
    one in progress) of ``epochs``; ``batch`` of ``batches`` within it (a robustness task: conditions done of
    all). ``logs``: the latest ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` (``None`` when not
    finite). ``images_per_second``, ``eta_seconds`` (time left), ``updated_at`` (Unix time of the write).
    ``tasks_done``: tasks done or failed, of ``tasks_total``.
    """

    fraction: float = 0.0
    backbone: str | None = None
    fold: int | None = None
    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    batch: int | None = None
    batches: int | None = None
    logs: dict[str, float | None] = field(default_factory=dict)
    images_per_second: float | None = None
    eta_seconds: float | None = None
    updated_at: float | None = None
    tasks_done: int = 0
    tasks_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Every key, always: what the store writes and ``Job.progress`` holds."""
        return {**asdict(self), "logs": dict(self.logs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobProgress:
        """A stored progress; a missing key takes its default, a key this class does not know is left out."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{**values, "logs": dict(values.get("logs") or {})})
