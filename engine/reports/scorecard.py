"""The served model's targets at a glance: one row per target with what was measured and its verdict, so Home and
the report's summary open on the answer, before the sentences (``summary_sections.served_details``) that give
every other figure."""

from __future__ import annotations

from dataclasses import astuple, dataclass
from pathlib import Path

from engine.evaluation.bootstrap import interval_text
from engine.evaluation.robustness import SHIFTS_BY_NAME
from engine.reports.markdown import markdown_table
from engine.reports.results_sections import interval_verdict
from engine.reports.served import (
    ADULT_NORMALS,
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
    split: str
    rows: tuple[TargetRow, ...]
    met: int
    judged: int

    @property
    def headline(self) -> str:
        """The sentence the report's summary and Home open on, above :meth:`markdown`'s table."""
        return (
            f"**The {self.model}** (`{self.protocol}`, study `{self.study_id}`, {self.split}-level folds) is the model "
            "to use outside the source, chosen on what holds outside the source, not on in-fold accuracy. It meets "
            f"**{self.met} of {self.judged}** targets; a target is met only when the whole 95 % interval clears its "
            "bar."
        )

    def markdown(self) -> str:
        return markdown_table(["target", "measured", "verdict"], [list(astuple(row)) for row in self.rows])


def _measured(figure: dict | float | None) -> str:
    """An interval with its count of images where it knows its ``n``; an accuracy drop as a fraction."""
    if figure is None:
        return "not measured"
    if not isinstance(figure, dict):
        return f"{round(figure, 3) + 0.0:.3f}"
    if figure.get("n") and figure.get("estimate") is not None:
        return f"{round(figure['estimate'] * figure['n'])} of {figure['n']:,}: {interval_text(figure)}"
    return interval_text(figure)


def _verdict(figure: dict | float | None, bar: float, met: bool | None) -> str:
    """``met`` is the serving rule's own verdict (``served.json``), so the table and the count never disagree; the
    words say why a figure short of it is not met."""
    if met:
        return "met"
    if figure is None:
        return "not measured"
    if not isinstance(figure, dict):
        return "not met"
    words = interval_verdict(figure, bar)
    return "not counted as met: no interval" if words.startswith("met") else words


def served_scorecard(artifacts_root: Path | None = None) -> Scorecard | None:
    """The served model's figure and verdict on every target, then its adult viral pneumonia recall (reported, no
    bar); None before ``python -m engine serve --choose``."""
    choice = read_choice(artifacts_root)
    if not choice:
        return None
    served = served_candidate(choice)
    shifts = [f"accuracy drop ≤ 0.05 under {SHIFTS_BY_NAME[shift].label(value)}" for shift, value in SHIFTS]
    held_out = f"({ADULT_NORMALS}, {served['adult_normals_how']})"
    names = [name.replace(f"({ADULT_NORMALS})", held_out) for name in list(TARGETS)[: len(TARGETS) - len(SHIFTS)]]
    names += shifts
    rows = [
        TargetRow(target=name, measured=_measured(figure), verdict=_verdict(figure, bar, served["met"].get(key)))
        for name, (key, bar), figure in zip(names, TARGETS.items(), target_figures(served).values(), strict=True)
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
        split=served["split"],
        rows=tuple(rows),
        met=sum(map(bool, served["met"].values())),
        judged=len(served["met"]),
    )
