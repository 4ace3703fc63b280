"""The states of a job and of its tasks (docs/jobs.md), listed once for the store, the worker, the CLI and the pages."""

from __future__ import annotations

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
"""Not finished: waiting for the worker, or started; a cancel still changes them."""
END_STATES = ("done", "failed", "cancelled")
"""How a task or a job ends."""
FINISHED_STATES = ("done", "failed")
"""A task that ran to its end: what the tasks done of a job's progress count."""


def sql_list(states: tuple[str, ...]) -> str:
    """``states`` as SQL's ``IN`` list: ``('queued', 'running')``."""
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


ACTIVE_SQL = sql_list(ACTIVE_STATES)
