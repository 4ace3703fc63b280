"""The reporting checklist (CLAIM 2024, TRIPOD+AI) answered from one study's own files, not typed in.

Each answer is computed from the study's ``study.json``, its dataset's manifest (sources, classes, patients,
what the import left out), its runs, its shortcut audit and its saved external evaluations; an item the study
cannot answer says so. The rows name the checklists' topics in our words; item numbers are left out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from engine import settings
from engine.data.datasets import DatasetError, read_manifest
from engine.data.patients import OWN
from engine.evaluation.bootstrap import interval_text
from engine.evaluation.summary import DEFAULT_INTERVALS
from engine.reports.generalisation import Generalisation, generalisation
from engine.results import artifacts
from engine.results.studies import Study

POPULATIONS = {
    "Kermany personN": "children aged one to five years (Kermany et al., Cell 2018)",
    "Kermany IM-NNNN": "children aged one to five years (Kermany et al., Cell 2018)",
    "Kermany NORMAL2-IM-NNNN": "children aged one to five years (Kermany et al., Cell 2018)",
    "NIH ChestX-ray14 NNNNNNNN_MMM": "NIH Clinical Center patients (Wang et al., CVPR 2017); age not in these files",
    OWN: "no patient named: age and sex not recorded",
    "patients.csv": "patients named by the user's patients.csv: age and sex not recorded",
}
"""What is known of the people behind each patient rule, from the set's publication; nothing here is read from
an image, keyed by the names of ``engine.data.patients.RULES``."""


@dataclass(frozen=True)
class Item:
    checklist: str
    topic: str
    answer: str
    cannot: str


def _manifest(study: Study, artifacts_root: Path) -> dict | None:
    try:
        return read_manifest(study.dataset.fingerprint, artifacts_root)
    except DatasetError:
        return None


def _sources(study: Study) -> str:
    parts = []
    for source, counts in study.dataset.by_source.items():
        held = ", ".join(f"{c} {n:,}" for c, n in counts.items() if n)
        parts.append(f"`{source}` ({held})")
    return "; ".join(parts)


def _one_source_classes(study: Study) -> list[str]:
    by_source = study.dataset.by_source
    if len(by_source) < 2:
        return []
    classes = study.dataset.classes
    return [c for c in classes if sum(1 for counts in by_source.values() if counts.get(c)) == 1]


def _participants(study: Study, manifest: dict | None) -> str:
    """Per class: images, patients and the population each patient rule stands for."""
    if manifest is None:
        return "not answerable here: the study's dataset manifest is not in this artifacts folder"
    from engine.data.patients import patient_groups

    groups = patient_groups(manifest["files"], manifest.get("patients"))
    classes = manifest["classes"]
    lines = []
    for k, name in enumerate(classes):
        rows = [i for i, label in enumerate(manifest["labels"]) if label == k]
        populations = Counter(POPULATIONS.get(groups.rules[i], groups.rules[i]) for i in rows)
        patients = len({groups.patients[i] for i in rows})
        who = "; ".join(f"{n:,} images: {population}" for population, n in populations.most_common())
        lines.append(f"{name}: {len(rows):,} images of {patients:,} patients ({who})")
    return " · ".join(lines)


def _partitions(study: Study) -> str:
    level = study.split_level
    spread = study.split.patients_in_several_folds
    overlap = (
        f"{spread['patients']:,} patients ({spread['images']:,} images) have images in more than one fold"
        if spread
        else "patients in several folds: not recorded (a study made before patients were counted)"
    )
    how = "StratifiedGroupKFold by patient" if level == "patient" else "StratifiedKFold by image"
    return f"{study.n_folds}-fold {how}, seed {study.seed}; {overlap}."


def _audit(found: Generalisation) -> str:
    if found.baseline is None:
        return "not run (python -m engine audit --study ID)"
    parts = [f"no-anatomy baseline accuracy {interval_text(found.baseline['figures']['metrics']['accuracy'])}"]
    for m in found.models:
        figure = f"{m.model} {interval_text(m.in_fold.get('accuracy'))}"
        if m.occlusion:
            figure += (
                f" (lungs hidden {interval_text(m.occlusion['lungs hidden'])}, "
                f"lungs only {interval_text(m.occlusion['lungs only'])})"
            )
        parts.append(figure)
    return "; ".join(parts)


def _external(found: Generalisation) -> str:
    rows = []
    for m in found.models:
        for e in m.external:
            recalls = ", ".join(f"{c} recall {interval_text(v)}" for c, v in e.recall.items())
            kind = "same-source held-out" if e.relation == "same source" else f"{e.relation}"
            rows.append(f"{m.model} on `{e.name}` ({kind}, {sum(e.counts.values()):,} images): {recalls}")
    return "; ".join(rows) if rows else "none saved"


def limitations(study: Study, found: Generalisation) -> list[str]:
    """What the study's own files say it cannot claim."""
    found_limits = ["folder labels were not checked against a radiologist's reading or RT-PCR"]
    if study.split_level == "image":
        spread = study.split.patients_in_several_folds
        if spread is None:
            found_limits.append("folds are by image, so a patient's films can sit in training and test folds")
        elif spread["patients"]:
            found_limits.append(
                f"folds are by image: {spread['patients']:,} patients ({spread['images']:,} images) have images in "
                "training and test folds"
            )
        else:
            found_limits.append(
                "folds are by image and the files name no patient, so whether one person's films sit in training "
                "and test folds is unknown"
            )
    for cls in _one_source_classes(study):
        found_limits.append(f"every {cls} image comes from one source, so source and class coincide for it")
    if not any(m.external for m in found.models):
        found_limits.append("no evaluation on a set from another source")
    elif not any(e.relation == "other source" and len(e.counts) > 1 for m in found.models for e in m.external):
        found_limits.append("no external set holds more than one class")
    if found.baseline:
        base = found.baseline["figures"]["metrics"]["accuracy"]["estimate"]
        best = max((m.in_fold["accuracy"]["estimate"] for m in found.models), default=None)
        if best is not None:
            found_limits.append(
                f"global image statistics with no anatomy reach {base:.3f} accuracy, {best - base:.3f} below the "
                "best model: most of the in-fold figure is within reach of acquisition alone"
            )
    return found_limits


def study_checklist(study_id: str, artifacts_root: Path | None = None) -> list[Item]:
    """The checklist's answers for one study, each computed from its files."""
    root = artifacts_root or settings.artifacts_dir()
    study = artifacts.read_study(study_id, root)
    manifest = _manifest(study, root)
    found = generalisation(study_id, root)
    report = (manifest or {}).get("report", {})
    left_out = (
        f"{len(report.get('skipped', [])):,} files skipped as unreadable or not images, "
        f"{len(report.get('duplicates', [])):,} byte- or pixel-identical duplicates dropped"
        if manifest
        else "not answerable here: the dataset manifest is not in this artifacts folder"
    )
    return [
        Item("CLAIM", "Data sources", f"{study.dataset.n_images:,} images from {_sources(study)}.", "–"),
        Item(
            "CLAIM",
            "Eligibility",
            f"Every PNG, JPEG or DICOM file inside a class folder; {left_out}.",
            "Acquisition dates, sites and clinical selection are not in the files.",
        ),
        Item(
            "CLAIM",
            "Reference standard",
            "The class folder each image was published in (the datasets' own labels).",
            "No radiologist reading or RT-PCR result was checked by this study.",
        ),
        Item(
            "CLAIM / TRIPOD+AI",
            "Participant characteristics by class",
            _participants(study, manifest) + ".",
            "Age and sex are not in the images or their file names; populations are those the sets' publications give.",
        ),
        Item("CLAIM", "Partitions and their level", _partitions(study), "–"),
        Item(
            "CLAIM",
            "Metrics and uncertainty",
            f"Accuracy, per-class precision, recall and F1, ROC AUC; {DEFAULT_INTERVALS.describe()}.",
            "The intervals resample test images, not training runs.",
        ),
        Item(
            "CLAIM",
            "Shortcut audit (robustness of what was learned)",
            _audit(found) + (f". Lung fields: {found.region}." if found.region else "."),
            "Occlusion without a lung mask uses a fixed central region.",
        ),
        Item("CLAIM / TRIPOD+AI", "External evaluation", _external(found) + ".", "–"),
        Item("CLAIM / TRIPOD+AI", "Limitations", "; ".join(limitations(study, found)) + ".", "–"),
    ]


def checklist_markdown(study_id: str, artifacts_root: Path | None = None) -> str:
    rows = study_checklist(study_id, artifacts_root)
    lines = ["| checklist | topic | what this study answers | what it cannot answer |", "|---|---|---|---|"]
    lines += [f"| {r.checklist} | {r.topic} | {r.answer} | {r.cannot} |" for r in rows]
    return "\n".join(lines)
