"""Studies: one dataset, one protocol, k stratified folds shared by every backbone.

:func:`prepare_study` checks the request before any work (folds against the smallest class, in
patients when folds are by patient; backbone names; protocol) and writes ``study.json`` with the fold
indices and the split that made them once; every backbone of the study then sees the same folds.
:func:`summarize` gives the mean and standard deviation over folds of every metric, with stable keys.

Folds are by patient (``split="patient"``) whenever some patient has several images, else by image,
which is then the same thing; ``split="image"`` keeps the paper's image-level folds. A study made
before the choice existed was split by image, and keeps its id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.datasets import Dataset
from engine.data.patients import SPLITS
from engine.data.splits import patients_across_folds, stratified_folds
from engine.evaluation.metrics import flat_metrics
from engine.evaluation.stats import mean_sd
from engine.models.backbones import get_backbone
from engine.results import artifacts, cache
from engine.results.studies import SplitRecord, Study, StudyDataset
from engine.training.protocols import Protocol


@dataclass(frozen=True)
class StudyRequest:
    """What a user asks for; its canonical form names the study folder."""

    protocol: Protocol
    n_folds: int = 5
    seed: int = 42
    weights: str | None = "imagenet"
    split: str = "patient"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got split={self.split!r}")


def split_level(dataset: Dataset, request: StudyRequest) -> str:
    """The level the folds are made at: by patient when asked and some patient has several images."""
    return "patient" if request.split == "patient" and dataset.patients.repeats else "image"


def study_id_for(dataset: Dataset, request: StudyRequest) -> str:
    inputs = {
        "dataset": dataset.fingerprint,
        "protocol": request.protocol.to_dict(),
        "n_folds": request.n_folds,
        "seed": request.seed,
        "input_size": dataset.input_size,
        "weights": request.weights,
    }
    level = split_level(dataset, request)
    return cache.key(inputs if level == "image" else {**inputs, "split": level})


def _check_sources(dataset: Dataset, n_folds: int, patients: np.ndarray | None) -> None:
    """Each source's share of each class must fill the folds on its own, in patients when folds are by patient."""
    if len(dataset.sources) < 2:
        return
    for s, name in enumerate(dataset.sources):
        rows = dataset.source_index == s
        for k, cls in enumerate(dataset.classes):
            held = rows & (dataset.labels == k)
            if not held.any():
                continue
            n = len(set(patients[held])) if patients is not None else int(held.sum())
            unit = "patient(s)" if patients is not None else "image(s)"
            if n < n_folds:
                raise ValueError(
                    f"source {name!r} brings {n} {unit} of class {cls!r}, fewer than the {n_folds} folds; "
                    "use fewer folds or leave that source out"
                )


def split_record(dataset: Dataset, level: str, requested: str, folds: list[list[int]]) -> SplitRecord:
    """What study.json says of its split: the level, how patients were found, and any patient in two folds."""
    summary = dataset.patients.summary
    return SplitRecord(
        level=level,
        requested=requested,
        patients=summary["n_patients"],
        images_sharing_a_patient=summary["images_sharing_a_patient"],
        patient_rules=summary["by_rule"],
        patients_in_several_folds=patients_across_folds(folds, dataset.patients.patients),
    )


def prepare_study(dataset: Dataset, request: StudyRequest, *, artifacts_root: Path | None = None) -> Study:
    """Create (or find) the study of ``request`` on ``dataset``; returns its ``study.json`` as a :class:`Study`."""
    root = artifacts.ensure_root(artifacts_root)
    study_id = study_id_for(dataset, request)
    path = artifacts.study_dir(study_id, root) / "study.json"
    return cache.remembered(
        path,
        lambda: _new_study(dataset, request, study_id),
        read=artifacts.read_study_file,
        write=artifacts.write_study_file,
    )


def _new_study(dataset: Dataset, request: StudyRequest, study_id: str) -> Study:
    """A study's ``study.json``: its folds, made once and checked before (a thin source, too few patients)."""
    level = split_level(dataset, request)
    patients = np.asarray(dataset.patients.patients) if level == "patient" else None
    _check_sources(dataset, request.n_folds, patients)
    request.protocol.check_classes(dataset.classes)
    strata = dataset.source_index * len(dataset.classes) + dataset.labels if len(dataset.sources) > 1 else None
    folds = stratified_folds(
        dataset.labels, dataset.classes, n_splits=request.n_folds, seed=request.seed, groups=patients, strata=strata
    )
    by = " by patient" if level == "patient" else ""
    return Study(
        schema_version=artifacts.SCHEMA_VERSION,
        study_id=study_id,
        title=(
            f"{dataset.name} · {request.protocol.name} · {request.n_folds}-fold{by} · "
            f"{dataset.input_size}px · seed {request.seed}"
        ),
        created_at=time.time(),
        dataset=StudyDataset(
            name=dataset.name,
            fingerprint=dataset.fingerprint,
            source=dataset.source,
            classes=tuple(dataset.classes),
            counts={c: int(np.sum(dataset.labels == k)) for k, c in enumerate(dataset.classes)},
            n_images=len(dataset),
            sources=tuple(dataset.sources),
            by_source=dataset.report.by_source,
        ),
        protocol=request.protocol.to_dict(),
        n_folds=request.n_folds,
        seed=request.seed,
        input_size=dataset.input_size,
        weights=request.weights,
        split=split_record(dataset, level, request.split, folds),
        folds=folds,
    )


def check_backbones(names: list[str], input_size: int) -> None:
    """Fail before any work on an unknown name or an input size below a backbone's minimum."""
    if not names:
        raise ValueError("at least one backbone is needed, got an empty list")
    for name in names:
        spec = get_backbone(name)
        if input_size < spec.min_input_size:
            raise ValueError(f"input_size={input_size} is below the minimum of {spec.min_input_size} for {name}")


def _mean_std(values: list[float]) -> dict[str, float]:
    mean, sd = mean_sd(values)
    return {"mean": mean, "std": sd}


def summarize(artifacts_root: Path | None = None, *, study_ids: list[str] | None = None) -> list[dict]:
    """Per (study, backbone): folds done and mean/std over folds of every flat metric (all studies by default)."""
    rows = []
    for study_id in artifacts.list_study_ids(artifacts_root) if study_ids is None else study_ids:
        study = artifacts.read_study(study_id, artifacts_root)
        by_backbone: dict[str, list[artifacts.RunResult]] = {}
        for run in artifacts.study_runs(study_id, artifacts_root):
            by_backbone.setdefault(run.backbone, []).append(run)
        for backbone, runs in by_backbone.items():
            flats = [flat_metrics(r.metrics) for r in runs]
            keys = [k for k in flats[0] if all(k in f for f in flats)]
            rows.append(
                {
                    "study_id": study_id,
                    "title": study.title,
                    "dataset": study.dataset.name,
                    "dataset_fingerprint": study.dataset.fingerprint,
                    "protocol": study.protocol_name,
                    "backbone": backbone,
                    "folds_done": len(runs),
                    "n_folds": study.n_folds,
                    "split": study.split_level,
                    "weights": runs[0].config["weights"],
                    "metrics": {k: _mean_std([f[k] for f in flats]) for k in keys},
                }
            )
    return rows
