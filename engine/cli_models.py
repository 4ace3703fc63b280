"""Model commands (evaluate, classify, report)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model commands to the ``python -m engine`` parser."""
