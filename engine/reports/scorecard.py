"""The served model's targets at a glance: one row per target with what was measured and its verdict, so the Home
page can open on the answer before the sentences (``summary_sections.served_summary``) that give every figure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.evaluation.bootstrap import interval_text
from engine.evaluation.robustness import SHIFTS_BY_NAME
from engine.reports.results_sections import interval_verdict
from engine.reports.served import (
    EXTERNAL_ADULTS,
    SHIFTS,
    TARGETS,
    candidate_name,
    read_choice,
    served_candidate,
    target_figures,
)

NO_BAR = "reported, no bar"
"""The verdict of a figure the issue asks to report without a bar to clear."""


@dataclass(frozen=True)
class TargetRow:
    """One target: its name with its bar, the figure (a count of images where the figure is a recall), and the
    verdict (met only when the whole 95 % interval clears the bar)."""

    target: str
    measured: str
    verdict: str


@dataclass(frozen=True)
class Scorecard:
    """The served model named, its targets in the order of :data:`engine.reports.served.TARGETS`, and how many
    of them it meets by the serving rule's own verdicts (``served.json``)."""

    model: str
    protocol: str
    study_id: str
    rows: tuple[TargetRow, ...]
    met: int
    judged: int


def _measured(figure: dict | float | None) -> str:
    """An interval with its count of images where it knows its ``n``; an accuracy drop as a fraction."""
    if figure is None:
        return "not measured"
    if not isinstance(figure, dict):
        return f"{figure:.3f}"
    if figure.get("n") and figure.get("estimate") is not None:
        return f"{round(figure['estimate'] * figure['n'])} of {figure['n']:,}: {interval_text(figure)}"
    return interval_text(figure)


def _verdict(figure: dict | float | None, bar: float) -> str:
    if isinstance(figure, dict) or figure is None:
        return interval_verdict(figure, bar).split(";")[0]
    return "met" if figure <= bar else "not met"


def served_scorecard(artifacts_root: Path | None = None) -> Scorecard | None:
    """The served model's figure and verdict on every target, then its adult viral pneumonia recall (reported, no
    bar); None before ``python -m engine serve --choose``."""
    choice = read_choice(artifacts_root)
    if not choice:
        return None
    served = served_candidate(choice)
    shifts = [f"accuracy drop ≤ 0.05 under {SHIFTS_BY_NAME[shift].label(value)}" for shift, value in SHIFTS]
    names = list(TARGETS)[: len(TARGETS) - len(SHIFTS)] + shifts
    rows = [
        TargetRow(target=name, measured=_measured(figure), verdict=_verdict(figure, bar))
        for name, bar, figure in zip(names, TARGETS.values(), target_figures(served).values(), strict=True)
    ]
    rows.append(
        TargetRow(
            target=f"Viral Pneumonia recall ({EXTERNAL_ADULTS})",
            measured=_measured(served["external_viral"]),
            verdict=NO_BAR,
        )
    )
    return Scorecard(
        model=candidate_name(served["backbone"]),
        protocol=served["protocol"],
        study_id=served["study_id"],
        rows=tuple(rows),
        met=sum(map(bool, served["met"].values())),
        judged=len(served["met"]),
    )
