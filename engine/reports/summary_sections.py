"""The report's first screen and what holds outside the source: the answer before the tables that back it.

Every sentence is built from the artifacts: the served model's choice (``engine.reports.served``), each
study's in-fold figures with the split that made them, its image-level twin, its shortcut audit and its
external evaluations (``engine.reports.generalisation``).
"""

from __future__ import annotations

from pathlib import Path

from engine.evaluation.bootstrap import interval_text
from engine.evaluation.predictions import ENSEMBLE
from engine.reports.generalisation import Generalisation, generalisation, headline_rows
from engine.reports.markdown import markdown_table
from engine.reports.scorecard import served_scorecard
from engine.reports.served import (
    ADULT_NORMALS,
    EXTERNAL_ADULTS,
    TARGETS,
    candidate_name,
    is_served,
    read_choice,
    recall_under_shifts,
    served_candidate,
    shifts_text,
)
from engine.results import artifacts


def _table(rows: list[dict[str, str]]) -> str:
    """Rows keyed by column: the columns in the order first met, "–" where a row has none."""
    header = list(dict.fromkeys(k for row in rows for k in row))
    return markdown_table(header, [[row.get(k, "–") for k in header] for row in rows])


def judged_studies(artifacts_root: Path | None) -> list[Generalisation]:
    """Studies with a shortcut audit or patient-level folds: those the first screen speaks of."""
    found = []
    for study_id in artifacts.list_study_ids(artifacts_root):
        study = artifacts.read_study(study_id, artifacts_root)
        if study.split_level == "patient" or (artifacts.study_dir(study_id, artifacts_root) / "audit").is_dir():
            found.append(generalisation(study_id, artifacts_root))
    return sorted(found, key=lambda g: (len(g.sources) == 1, g.protocol, g.study_id))


def _served_details(study_id: str, backbone: str, artifacts_root: Path | None) -> list[str]:
    """How many of the paper's images the in-fold figures are over, and what the served model called the adult
    viral pneumonias; nothing where this artifacts folder lacks the study."""
    if study_id not in artifacts.list_study_ids(artifacts_root):
        return []
    dataset = artifacts.read_study(study_id, artifacts_root).dataset
    line = f"- The in-fold figures are over the paper's {sum(dataset.by_source[dataset.sources[0]].values()):,} images"
    model = generalisation(study_id, artifacts_root).model(backbone)
    external = model.external_set(EXTERNAL_ADULTS) if model else None
    viral = (external.called if external else {}).get("Viral Pneumonia")
    if not viral:
        return [line + ", each held out by its fold."]
    calls = ", ".join(f"{n} called {name}" for name, n in sorted(viral.items(), key=lambda item: -item[1]))
    return [
        line + f", each held out by its fold. Of the {sum(viral.values())} adult viral pneumonias of "
        f"{EXTERNAL_ADULTS}, {calls}."
    ]


def _normals_under_shifts(best: dict, artifacts_root: Path | None) -> str:
    """The held-out adult normals alone under each shift, mild to strong: would healthy adults filmed or processed
    another way still be called Normal?"""
    recalls, folds = recall_under_shifts(
        best["study_id"], best["backbone"], artifacts_root, source=ADULT_NORMALS, class_name="Normal"
    )
    if not recalls:
        return ""
    (unshifted,) = recalls["none"]
    return (
        f"- Adult normals ({ADULT_NORMALS}, held out) called Normal, {unshifted[1]:.3f} as acquired, under each "
        f"shift from mild to strong (pooled over {folds} folds): {shifts_text(recalls)}."
    )


FILMS_WITHOUT_FINDINGS = (
    "A COVID-19 label here is the patient's diagnosis, not a reading of the film, and a film can show nothing: "
    "radiologists called COVID-19 on 73 % of the first chest radiographs of 254 RT-PCR-positive patients (80 % "
    "specificity), and normal or mild films were the main cause of the misses (*Determinants of Chest Radiography "
    "Sensitivity for COVID-19: A Multi-Institutional Study in the United States*, Radiology: Cardiothoracic Imaging "
    "2020, doi:10.1148/ryct.2020200337). These sets carry no reading, so how many of a model's missed COVID-19 "
    "films show no disease is not known; a model that finds nearly all of them while calling adult normals Normal "
    "should be checked for a cue other than the lungs."
)
"""Why the in-fold COVID-19 bar can sit above what a film shows (cited, not measured here)."""


def _in_fold_covid_bullet(choice: dict, artifacts_root: Path | None) -> list[str]:
    """Which candidates clear the in-fold COVID-19 bar, grouped by what they were trained on and how their folds
    were split, with what the ones that clear it call the adult normals: a reader can then tell whether the bar
    is missed for want of a better model or cleared only by a model that fails the adults."""
    name, bar = next((n, b) for n, b in TARGETS.items() if n.startswith("in-fold COVID-19"))
    named = {c["study_id"] for c in choice["candidates"]} | {choice["study_id"]}
    here = named & set(artifacts.list_study_ids(artifacts_root))
    sources = {i: artifacts.read_study(i, artifacts_root).dataset.sources for i in here}
    if choice["study_id"] not in sources:
        return []
    groups: dict[tuple[tuple[str, ...], str], list[dict]] = {}
    for c in choice["candidates"]:
        if c["study_id"] in sources and c["paper_covid_recall"]:
            groups.setdefault((sources[c["study_id"]], c["split"]), []).append(c)
    parts = []
    for (composition, split), members in sorted(groups.items(), key=lambda item: (len(item[0][0]), item[0])):
        served = ", the served model's sources" if composition == sources[choice["study_id"]] else ""
        trained = f"trained on {' + '.join(composition)} ({split}-level folds{served})"
        clear = [c for c in members if (c["paper_covid_recall"].get("low") or 0.0) >= bar]
        best = max(members, key=lambda c: c["paper_covid_recall"]["estimate"])
        worst = max(clear, key=lambda c: c["adult_normals"]["estimate"]) if clear else None
        normals = (
            f"{worst['adult_normals']['estimate']:.3f} of {ADULT_NORMALS} Normal ({worst['adult_normals_how']})"
            if worst
            else ""
        )
        if len(members) == 1:
            verdict = (
                f"clears it and calls {normals}" if clear else f"does not ({interval_text(best['paper_covid_recall'])})"
            )
            parts.append(f"the one {trained} {verdict}")
        elif clear:
            verbs = "clears it and calls" if len(clear) == 1 else "clear it and call at most"
            parts.append(f"of the {len(members)} {trained}, {len(clear)} {verbs} {normals}")
        else:
            parts.append(
                f"none of the {len(members)} {trained} does (the best: {interval_text(best['paper_covid_recall'])})"
            )
    if not parts:
        return []
    return [
        f"- Which candidates clear {name}, whole interval: " + "; ".join(parts) + ".",
        f"  - {FILMS_WITHOUT_FINDINGS}",
    ]


def _earlier_bullets(choice: dict) -> list[str]:
    lines = []
    for c in choice["candidates"]:
        if is_served(c, choice):
            continue
        if c["adult_normals_how"] == "external" and c["adult_normals"]["estimate"] is not None:
            lines.append(
                f"- The {candidate_name(c['backbone'])} (`{c['protocol']}`, study `{c['study_id']}`, "
                f"{c['split']}-level folds), trained without adult normals: calls "
                f"{c['adult_normals']['estimate']:.1%} of {ADULT_NORMALS} Normal "
                f"({interval_text(c['adult_normals'])}) while its in-fold accuracy is "
                f"{interval_text(c['paper_accuracy'])}."
            )
    return lines[:3]


def _model_name(model: str) -> str:
    """A study's model in a table: a backbone (its fold models' held-out predictions), or its ensemble of backbones."""
    return "ensemble of backbones" if model == ENSEMBLE else model


def shortcut_table(studies: list[Generalisation]) -> list[str]:
    """Every audited study in one row: its best in-fold accuracy beside what global image statistics with no anatomy
    reach on the same folds (and, where run, the same backbone on image-level folds)."""
    rows = []
    for g in studies:
        if g.baseline is None:
            continue
        best = max(g.models, key=lambda m: m.in_fold["accuracy"]["estimate"])
        leak = next((m for m in g.models if m.image_level), None)
        rows.append(
            {
                "study": f"`{g.study_id}`",
                "protocol": f"`{g.protocol}`",
                "trained on": f"{' + '.join(g.sources)}, {g.split}-level folds",
                "best in-fold accuracy": f"{interval_text(best.in_fold['accuracy'])} ({_model_name(best.model)})",
                "no-anatomy baseline, same folds": interval_text(g.baseline["figures"]["metrics"]["accuracy"]),
                "image-level folds instead": (
                    f"{leak.model} {leak.image_level['estimate']:.3f} (patient-level "
                    f"{leak.in_fold['accuracy']['estimate']:.3f})"
                    if leak
                    else "–"
                ),
            }
        )
    if not rows:
        return []
    return [
        "",
        "How far a shortcut goes in each audited study: global image statistics with no anatomy (intensity, "
        "sharpness, border content) against the best model, on the same folds:",
        "",
        _table(rows),
    ]


def _metadata_tables(g: Generalisation) -> list[str]:
    """Each model's figures split by the metadata columns its sets give (``metadata.csv``: age band, sex, view)."""
    rows = []
    for m in g.models:
        splits = [("held out (in-fold)", m.by_metadata)] + [(f"`{e.name}`", e.by_metadata) for e in m.external]
        for where, columns in splits:
            for column, groups in columns.items():
                for value, figures in groups.items():
                    metrics = figures["metrics"]
                    recalls = ", ".join(
                        f"{k[7:-1]} {interval_text(v)}" for k, v in metrics.items() if k.startswith("recall[")
                    )
                    rows.append(
                        {
                            "model": m.model,
                            "images": where,
                            "column": column,
                            "value": value,
                            "accuracy": interval_text(metrics.get("accuracy")),
                            "recall per class": recalls,
                        }
                    )
    return ["By the metadata the sets give:", "", _table(rows), ""] if rows else []


def served_details(artifacts_root: Path | None) -> str | None:
    """What the served model's scorecard (``engine.reports.scorecard``) leaves out: what its figures are over, what
    it called the adult viral pneumonias, the adult normals under every shift, which candidates clear the in-fold
    COVID-19 bar, and models trained without adult normals beside it; None before a choice."""
    choice = read_choice(artifacts_root)
    if not choice:
        return None
    served = served_candidate(choice)
    under = _normals_under_shifts(served, artifacts_root)
    return "\n".join(
        _served_details(served["study_id"], served["backbone"], artifacts_root)
        + ([under] if under else [])
        + _in_fold_covid_bullet(choice, artifacts_root)
        + _earlier_bullets(choice)
    )


def served_summary(artifacts_root: Path | None) -> str | None:
    """The answer first, as the report opens: the served model, its targets at a glance, then
    :func:`served_details`; None before a choice."""
    card = served_scorecard(artifacts_root)
    if card is None:
        return None
    return "\n".join([card.headline, "", card.markdown(), "", served_details(artifacts_root) or ""])


def summary_section(artifacts_root: Path | None) -> str:
    """At most one screen: the model to use, how sure, what holds outside the source, what a shortcut explains."""
    studies = judged_studies(artifacts_root)
    lines = [
        served_summary(artifacts_root) or "- No served model has been chosen yet (`python -m engine serve --choose`)."
    ]
    lines.append(
        "- In-fold figures on these public sets say little on their own: read each beside its no-anatomy baseline, "
        "its occlusion and its external figures below. Research use only, not a diagnostic device."
    )
    lines += shortcut_table(studies)
    return "\n".join(lines)


def generalisation_section(artifacts_root: Path | None) -> str:
    """A table per judged study: every model beside its leakage, shortcut and external figures. The occlusion's
    region is said once when every audit used the same one, else under each study."""
    tables = {g.study_id: (g, rows) for g in judged_studies(artifacts_root) if (rows := headline_rows(g))}
    regions = {g.region for g, _ in tables.values() if g.region}
    parts = []
    for g, rows in tables.values():
        parts += [
            f"### `{g.protocol}` · {' + '.join(g.sources)} · {g.split}-level folds · study `{g.study_id}`",
            "",
            _table(rows),
            "",
        ]
        if g.region and len(regions) > 1:
            parts += [_region_sentence(g.region), ""]
        parts += _metadata_tables(g)
    if not parts:
        return "No study with patient-level folds or a shortcut audit yet (`python -m engine audit --study ID`)."
    intro = (
        "95 % bootstrap intervals of the pooled out-of-fold predictions (in-fold, held out by source, occlusion) "
        "or of the set's predictions (external); *same source* marks a set from a source the study already has, "
        "whose figures are same-source held-out figures, not external ones."
    )
    if len(regions) == 1:
        intro += " " + _region_sentence(next(iter(regions)))
    return "\n".join([intro, "", *parts])


def _region_sentence(region: str) -> str:
    return f"Lungs hidden and lungs only (occlusion) use {region}; the fill is each image's median grey level."


def study_findings(g: Generalisation) -> list[str]:
    """What one study found, in a few sentences (the Home page's summary), each with its interval."""
    if not g.models:
        return []
    best = max(g.models, key=lambda m: m.in_fold["accuracy"]["estimate"])
    n = len(g.sources)
    where = f" on the held-out images of {'both' if n == 2 else f'all {n}'} sources" if n > 1 else ""
    lines = [
        f"Best in-fold accuracy{where}: **{best.model}** {interval_text(best.in_fold['accuracy'])}, COVID-19 recall "
        f"{interval_text(best.in_fold.get('recall[COVID-19]'))} ({g.split}-level folds)."
    ]
    if best.image_level:
        lines.append(f"With image-level folds the same model scores {interval_text(best.image_level)}.")
    if g.baseline:
        lines.append(
            "A classifier of global image statistics with no anatomy reaches "
            f"{interval_text(g.baseline['figures']['metrics']['accuracy'])} on the same folds."
        )
    else:
        lines.append(f"No shortcut audit yet: `python -m engine audit --study {g.study_id}`.")
    audited = [m for m in g.models if m.occlusion]
    if audited:
        m = max(audited, key=lambda m: m.in_fold["accuracy"]["estimate"])
        lines.append(
            f"{m.model} with the lung fields hidden: {interval_text(m.occlusion['lungs hidden'])}; with only them "
            f"kept: {interval_text(m.occlusion['lungs only'])}; on the same images as given: "
            f"{interval_text(m.occlusion['as given'])}."
        )
    for m in g.models:
        for source, figures in m.by_source.items():
            if source != g.sources[0] and m is best:
                lines.append(
                    f"{m.model} on `{source}`, held out: accuracy {interval_text(figures['metrics']['accuracy'])}."
                )
        for e in m.external:
            if m is best or not best.external:
                kind = "same source" if e.relation == "same source" else "external"
                recalls = ", ".join(f"{c} recall {interval_text(v)}" for c, v in e.recall.items())
                lines.append(f"{m.model} on `{e.name}` ({kind}): {recalls}.")
    return lines


def commands_section(artifacts_root: Path | None) -> str:
    """The engine commands that make every study, audit, evaluation, analysis and export of the artifacts,
    read from them (``D`` is the folder that holds the dataset folders)."""
    from engine.evaluation.external import list_evaluations

    lines = ["```bash", "D=../shared/data   # the folder holding the dataset folders"]
    for study_id in artifacts.list_study_ids(artifacts_root):
        study = artifacts.read_study(study_id, artifacts_root)
        folders = study.dataset.sources
        backbones = sorted({r.backbone for r in artifacts.study_runs(study_id, artifacts_root)})
        data = " ".join(f"--data $D/{name}" for name in folders)
        split = "" if study.split_level == "patient" else " --split image"
        arches = " ".join(f"--arch {b}" for b in backbones)
        lines.append(f"python -m engine study {data} {arches} --protocol {study.protocol_name}{split}  # {study_id}")
        if (artifacts.study_dir(study_id, artifacts_root) / "audit").is_dir():
            lines.append(f"python -m engine audit --study {study_id}")
        robustness = artifacts.study_dir(study_id, artifacts_root) / "robustness"
        for backbone in sorted(p.name for p in robustness.iterdir()) if robustness.is_dir() else []:
            lines.append(f"python -m engine robustness --study {study_id} --backbone {backbone}")
    for export in sorted((artifacts_root or artifacts.settings.artifacts_dir()).glob("studies/*/runs/*/export/*.json")):
        if export.name.endswith((".card.json", ".ood.json")):
            continue
        study_id, backbone = export.parts[-5], export.parts[-3]
        fmt = "onnx" if ".onnx" in export.name else "litert"
        lines.append(f"python -m engine export --study {study_id} --backbone {backbone} --format {fmt}")
    for manifest in sorted(
        (artifacts_root or artifacts.settings.artifacts_dir()).glob("studies/*/export/ensemble.json")
    ):
        lines.append(f"python -m engine export --study {manifest.parts[-3]} --backbone ensemble")
    seen = set()
    for e in list_evaluations(artifacts_root):
        m = e["model"]
        same = " --same-source" if e["data"].get("relation") == "same source" else ""
        if m.get("backbones"):
            target = f"--study {m['study_id']}"
        elif m.get("fold") is not None:
            target = f"--model artifacts/studies/{m['study_id']}/runs/{m['backbone']}/fold-{m['fold']}/model.keras"
        else:
            target = f"--model artifacts/studies/{m['study_id']}/runs/{m['backbone']}"
        line = f"python -m engine evaluate --data $D/{e['data']['name']} {target}{same}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    lines += ["python -m engine serve --choose", "python -m engine report", "```"]
    return "\n".join(lines)
