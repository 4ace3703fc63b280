"""Which model the app serves by default: the ensemble that holds best outside its source, not the one with the
best in-fold accuracy.

Every backbone's fold ensemble, and every study's ensemble of its backbones, with both an adult-normal figure
and an external COVID-19 figure is a candidate. Candidates are ranked by the lower of those two figures (point
estimates): a model that calls every adult COVID-19 has a high COVID-19 recall and a Normal recall of 0, and
holds nowhere. Then by how many of the robustness targets it meets (an accuracy drop of at most 5 points under
noise of sd 4, a 1 px blur, and 112 px and back), then by in-fold accuracy. Each candidate's verdict on every
target is kept beside it.

``python -m engine serve --choose`` writes the choice with its evidence to ``<artifacts>/served.json``;
``engine.models.catalog.list_models`` puts the model it names first, which is what Classify, ``evaluate``
without ``--model`` and the hosted demo use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from engine import settings
from engine.evaluation.predictions import ENSEMBLE
from engine.evaluation.robustness import pooled_table, saved_results
from engine.models.catalog import SERVED_FILE, list_models
from engine.reports.generalisation import generalisation
from engine.results import artifacts, atomic

ADULT_NORMALS = "nih-adult-normal"
EXTERNAL_ADULTS = "ieee8023-adult"
SHIFTS = (("noise", 4.0), ("blur", 1.0), ("resolution", 112.0))
TARGETS = {
    "in-fold accuracy ≥ 0.95 (paper's images)": 0.95,
    "in-fold COVID-19 recall ≥ 0.95 (paper's images)": 0.95,
    f"adult normals called Normal ≥ 0.90 ({ADULT_NORMALS})": 0.90,
    f"COVID-19 recall ≥ 0.90 ({EXTERNAL_ADULTS})": 0.90,
    **{f"accuracy drop ≤ 0.05 under {shift} {value:g}": 0.05 for shift, value in SHIFTS},
}


@dataclass(frozen=True)
class Candidate:
    """One fold ensemble, or a study's ensemble of backbones, and the figures it is chosen on (intervals as
    ``Interval.to_dict``; drops as floats)."""

    study_id: str
    backbone: str
    protocol: str
    split: str
    folds: tuple[int, ...]
    export: str | None
    paper_accuracy: dict | None
    paper_covid_recall: dict | None
    adult_normals: dict | None
    adult_normals_how: str
    external_covid: dict | None
    external_viral: dict | None
    drops: dict[str, float | None]

    def met(self) -> dict[str, bool | None]:
        """Each of :data:`TARGETS`: met, not met, or None when not measured. A figure with an interval meets its bar
        only when the whole interval clears it (its lower end); the robustness drops have none, so their estimates."""
        found: dict[str, bool | None] = {}
        for (name, bar), figure in zip(TARGETS.items(), target_figures(asdict(self)).values(), strict=True):
            value = figure.get("low", figure.get("estimate")) if isinstance(figure, dict) else figure
            found[name] = (
                None if value is None else (value <= bar if name.startswith("accuracy drop") else value >= bar)
            )
        return found

    def rank(self) -> tuple:
        """The lower outside-the-source figure, then robustness targets met, then in-fold accuracy (the rule above)."""
        outside = [
            v["estimate"] for v in (self.adult_normals, self.external_covid) if v and v.get("estimate") is not None
        ]
        robust = sum(1 for name, ok in self.met().items() if ok and name.startswith("accuracy drop"))
        accuracy = (self.paper_accuracy or {}).get("estimate") or 0.0
        return (min(outside, default=0.0), robust, accuracy)


def target_figures(candidate: dict) -> dict[str, dict | float | None]:
    """What a candidate's record (:class:`Candidate` as a dict) measured for each of :data:`TARGETS`: an interval
    (``Interval.to_dict``), an accuracy drop, or None when not measured."""
    figures = [candidate[key] for key in ("paper_accuracy", "paper_covid_recall", "adult_normals", "external_covid")]
    figures += [candidate["drops"].get(f"{shift} {amount:g}") for shift, amount in SHIFTS]
    return dict(zip(TARGETS, figures, strict=True))


def accuracy_drops(study_id: str, backbone: str, artifacts_root: Path) -> dict[str, float | None]:
    """The pooled accuracy drop of a backbone's fold models under each of :data:`SHIFTS` (None: not measured)."""
    table = pooled_table(saved_results(study_id, backbone, artifacts_root))
    found: dict[str, float | None] = {f"{shift} {value:g}": None for shift, value in SHIFTS}
    for row in table:
        key = f"{row['shift']} {row['parameter']:g}" if row["parameter"] is not None else None
        if key in found:
            found[key] = -float(row["change"])
    return found


def recall_under_shifts(
    study_id: str, backbone: str, artifacts_root: Path | None, *, source: str, class_name: str
) -> tuple[dict[str, list[tuple[str, float | None]]], int]:
    """One source's recall of one class as acquired (under ``"none"``) and under each shift at each strength, as
    (setting, recall) pairs in the files' order (mild to strong), pooled over the folds whose files counted that
    source apart, and how many folds that is; ``({}, 0)`` when none did or they hold no image of the class."""
    table = pooled_table(saved_results(study_id, backbone, artifacts_root), source=source)
    if not table or table[0]["recall"][class_name] is None:
        return {}, 0
    found: dict[str, list[tuple[str, float | None]]] = {}
    for row in table:
        found.setdefault(row["shift"], []).append((row["setting"], row["recall"][class_name]))
    return found, table[0]["folds"]


def shifts_text(recalls: dict[str, list[tuple[str, float | None]]]) -> str:
    """:func:`recall_under_shifts`' figures under the shifts, one shift after another, mild to strong."""
    groups = (
        ", ".join(f"{setting} {value:.3f}" for setting, value in steps if value is not None)
        for shift, steps in recalls.items()
        if shift != "none"
    )
    return "; ".join(group for group in groups if group)


def candidates(artifacts_root: Path | None = None) -> list[Candidate]:
    """Every fold ensemble with an adult-normal and an external COVID-19 figure, best first; one whose fold models
    are not here (a clean clone keeps only the served export) is judged but has no ``folds`` to serve."""
    root = artifacts_root or settings.artifacts_dir()
    ensembles = {(m.study_id, m.backbone): m for m in list_models(root) if m.is_ensemble}
    found = []
    for study_id in artifacts.list_study_ids(root):
        judged = generalisation(study_id, root)
        for model in judged.models:
            info = ensembles.get((study_id, model.model))
            paper = model.by_source.get(judged.sources[0]) if model.by_source else None
            paper_metrics = (paper or {}).get("metrics") if paper else model.in_fold
            held = model.by_source.get(ADULT_NORMALS)
            external = model.external_set(ADULT_NORMALS)
            adult = (held or {}).get("metrics", {}).get("recall[Normal]") if held else None
            how = "held out by patient in its fold" if held else "external"
            if adult is None and external is not None:
                adult = external.recall.get("Normal")
            covid = model.external_set(EXTERNAL_ADULTS)
            if adult is None or covid is None:
                continue
            found.append(
                Candidate(
                    study_id=study_id,
                    backbone=model.model,
                    protocol=judged.protocol,
                    split=judged.split,
                    folds=tuple(info.folds) if info else (),
                    export=info.export.relative_to(root).as_posix() if info and info.export else None,
                    paper_accuracy=paper_metrics.get("accuracy"),
                    paper_covid_recall=paper_metrics.get("recall[COVID-19]"),
                    adult_normals=adult,
                    adult_normals_how=how,
                    external_covid=covid.recall.get("COVID-19"),
                    external_viral=covid.recall.get("Viral Pneumonia"),
                    drops=accuracy_drops(study_id, model.model, root),
                )
            )
    return sorted(found, key=lambda c: c.rank(), reverse=True)


def pick(ranked: list[Candidate]) -> Candidate:
    """The first of ``ranked`` (best first) whose fold models are here. One ranked above it without them is an
    error, not a quiet second choice: a checkout that lacks a study's fold models must not serve a worse model."""
    servable = [c for c in ranked if c.folds]
    if not servable:
        raise ValueError(
            f"no fold ensemble here has both an {ADULT_NORMALS} and an {EXTERNAL_ADULTS} figure; evaluate the "
            "candidates first (python -m engine evaluate --data ... --model .../runs/BACKBONE)"
        )
    best, first = servable[0], ranked[0]
    if first is not best:
        raise ValueError(
            f"{first.backbone} of study {first.study_id} ({first.protocol}) ranks above {best.backbone} of study "
            f"{best.study_id}, but neither its fold models nor its export are in this artifacts folder: run its "
            "study here, then choose again"
        )
    return best


def choose(artifacts_root: Path | None = None) -> dict:
    """Write ``served.json``: the best candidate, why, and every candidate's figures (those whose fold models are
    not here too: their figures come from committed evaluations)."""
    root = artifacts_root or settings.artifacts_dir()
    ranked = candidates(root)
    best = pick(ranked)
    met = best.met()
    choice = {
        "study_id": best.study_id,
        "backbone": best.backbone,
        "folds": list(best.folds),
        "export": best.export,
        "rule": __doc__.split("\n\n")[1].replace("\n", " "),
        "why": (
            f"The {candidate_name(best.backbone)} of study {best.study_id} "
            f"({best.protocol}, {best.split}-level folds) ranks first of {len(ranked)} candidates on the weaker of "
            f"its two figures outside its source: adult normals called Normal "
            f"{best.adult_normals['estimate']:.3f}, adult COVID-19 recall {best.external_covid['estimate']:.3f}; it "
            f"meets {sum(1 for ok in met.values() if ok)} of {len(met)} targets"
        ),
        "targets": met,
        "candidates": [{**asdict(c), "met": c.met()} for c in ranked],
    }
    atomic.write_json(root / SERVED_FILE, choice)
    return choice


def candidate_name(backbone: str) -> str:
    """A candidate in words, one name in every sentence and table: ``MobileNet fold ensemble``, or a study's
    ensemble of its backbones."""
    if backbone == ENSEMBLE:
        return "ensemble of backbones (the mean of each backbone's fold ensemble)"
    return f"{backbone} fold ensemble"


def read_choice(artifacts_root: Path | None = None) -> dict | None:
    path = (artifacts_root or settings.artifacts_dir()) / SERVED_FILE
    return atomic.read_json(path) if path.is_file() else None


def is_served(candidate: dict, choice: dict) -> bool:
    """Whether ``candidate`` (a :class:`Candidate` as a dict) is the model ``choice`` serves."""
    return candidate["study_id"] == choice["study_id"] and candidate["backbone"] == choice["backbone"]


def served_candidate(choice: dict) -> dict:
    """The served model's own record among ``choice``'s candidates."""
    return next(c for c in choice["candidates"] if is_served(c, choice))


def served_study_id(artifacts_root: Path | None = None) -> str | None:
    """The study of the served model, or None before a choice."""
    choice = read_choice(artifacts_root)
    return choice["study_id"] if choice else None
