"""Job commands (submit, jobs, cancel, logs, worker): filled in by the background-jobs work."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the job commands to the ``python -m engine`` parser."""
