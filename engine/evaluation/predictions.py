"""A study's out-of-fold predictions, pooled: every image scored once, by the fold model that never saw it.

Each finished run keeps its held-out fold's probabilities (``predictions.csv``). Pooled over the
folds they cover the study's images once each, which is what intervals, curves, calibration and
failure analysis are computed from. The ``ensemble`` of a study is the mean of its backbones'
out-of-fold probabilities on the folds every one of them finished: still out-of-fold, since each
image's probabilities come only from models that held it out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.evaluation.metrics import flat_metrics, fold_metrics
from engine.models.backbone_ensemble import ENSEMBLE as ENSEMBLE  # the pages and reports name it from here
from engine.results import artifacts


@dataclass(frozen=True)
class OutOfFold:
    """One model's pooled held-out predictions, rows in fold order then the fold's own order."""

    study_id: str
    model: str
    members: tuple[str, ...]
    classes: tuple[str, ...]
    files: list[str]
    folds: np.ndarray
    y_true: np.ndarray
    proba: np.ndarray
    digest: str

    def __len__(self) -> int:
        return len(self.files)

    @property
    def fold_ids(self) -> list[int]:
        return sorted(int(f) for f in np.unique(self.folds))

    def fold_figures(self) -> list[dict[str, float]]:
        """The flat metrics of each fold, as a run's ``metrics.json`` would give them."""
        figures = []
        for fold in self.fold_ids:
            rows = self.folds == fold
            figures.append(flat_metrics(fold_metrics(self.y_true[rows], self.proba[rows], self.classes)))
        return figures


def _runs_of(study_id: str, backbone: str, artifacts_root: Path | None) -> list[artifacts.RunResult]:
    return [r for r in artifacts.study_runs(study_id, artifacts_root) if r.backbone == backbone]


def out_of_fold(
    study_id: str, backbone: str, artifacts_root: Path | None = None, *, folds: list[int] | None = None
) -> OutOfFold:
    """The pooled held-out predictions of ``backbone``'s finished folds (or of ``folds`` only)."""
    runs = [r for r in _runs_of(study_id, backbone, artifacts_root) if folds is None or r.fold in folds]
    if not runs:
        raise ValueError(f"no finished fold of backbone={backbone!r} in study {study_id}")
    classes = tuple(runs[0].config["classes"])
    files: list[str] = []
    fold_of: list[int] = []
    truth: list[int] = []
    rows: list[list[float]] = []
    digest = hashlib.sha256()
    for run in runs:
        digest.update((run.path / "predictions.csv").read_bytes())
        for row in artifacts.read_predictions(run):
            files.append(row["file"])
            fold_of.append(run.fold)
            truth.append(classes.index(row["true"]))
            rows.append([float(row[f"p[{c}]"]) for c in classes])
    return OutOfFold(
        study_id=study_id,
        model=backbone,
        members=(backbone,),
        classes=classes,
        files=files,
        folds=np.asarray(fold_of, dtype=np.int64),
        y_true=np.asarray(truth, dtype=np.int64),
        proba=np.asarray(rows, dtype=np.float64),
        digest=digest.hexdigest(),
    )


def backbones_of(study_id: str, artifacts_root: Path | None = None) -> list[str]:
    return sorted({r.backbone for r in artifacts.study_runs(study_id, artifacts_root)})


def shared_folds(
    study_id: str, backbones: list[str], artifacts_root: Path | None = None, *, with_model: bool = False
) -> list[int]:
    """The folds every one of ``backbones`` has finished (with ``with_model``, and kept its ``model.keras``)."""
    done = [
        {r.fold for r in _runs_of(study_id, b, artifacts_root) if not with_model or r.model_path is not None}
        for b in backbones
    ]
    return sorted(set.intersection(*done)) if done else []


def ensemble_out_of_fold(study_id: str, artifacts_root: Path | None = None) -> OutOfFold | None:
    """The mean of the study's backbones' held-out probabilities on their shared folds; None under 2 backbones."""
    backbones = backbones_of(study_id, artifacts_root)
    folds = shared_folds(study_id, backbones, artifacts_root)
    if len(backbones) < 2 or not folds:
        return None
    members = [out_of_fold(study_id, b, artifacts_root, folds=folds) for b in backbones]
    first = members[0]
    for member in members[1:]:
        if member.files != first.files or member.classes != first.classes:
            raise ValueError(f"study {study_id}: {member.model} was not scored on the same images as {first.model}")
    digest = hashlib.sha256("".join(m.digest for m in members).encode()).hexdigest()
    return OutOfFold(
        study_id=study_id,
        model=ENSEMBLE,
        members=tuple(backbones),
        classes=first.classes,
        files=first.files,
        folds=first.folds,
        y_true=first.y_true,
        proba=np.mean([m.proba for m in members], axis=0),
        digest=digest,
    )


def model_names(study_id: str, artifacts_root: Path | None = None) -> list[str]:
    """Every backbone with a finished fold, then ``ensemble`` when two or more share a finished fold."""
    backbones = backbones_of(study_id, artifacts_root)
    shared = len(backbones) > 1 and shared_folds(study_id, backbones, artifacts_root)
    return [*backbones, ENSEMBLE] if shared else backbones


def study_out_of_fold(study_id: str, model: str, artifacts_root: Path | None = None) -> OutOfFold:
    """``model`` (a backbone, or ``ensemble``) of the study, pooled."""
    if model == ENSEMBLE:
        found = ensemble_out_of_fold(study_id, artifacts_root)
        if found is None:
            raise ValueError(f"study {study_id} has no ensemble: it needs two backbones with a shared finished fold")
        return found
    return out_of_fold(study_id, model, artifacts_root)
