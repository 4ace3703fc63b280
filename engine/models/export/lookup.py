"""Trained runs of the artifacts folder: a study's fold models, their images, and which of them calibrate or check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.data.datasets import DatasetError, import_dataset, load_dataset
from engine.results import artifacts
from engine.results.studies import Study


def finished_run(path: str | Path, artifacts_root: Path) -> artifacts.RunResult:
    """The finished run whose ``model.keras`` is ``path``, inside ``artifacts_root``."""
    path = Path(path)
    inside = artifacts_root.resolve() in path.resolve().parents
    run = artifacts.read_run(path.parent) if inside and path.is_file() and path.suffix == ".keras" else None
    if run is None:
        raise ValueError(
            f"model must be the model.keras of a finished run inside {artifacts_root}, got path={str(path)!r}"
        )
    return run


def study_models(study_id: str, backbone: str, artifacts_root: Path) -> list[Path]:
    """Every saved fold model of ``backbone`` in study ``study_id``: a fold ensemble's members."""
    if study_id not in artifacts.list_study_ids(artifacts_root):
        raise ValueError(f"no study {study_id!r} in {artifacts_root}, got study={study_id!r}")
    runs = artifacts.study_runs(study_id, artifacts_root)
    paths = [run.model_path for run in runs if run.backbone == backbone and run.model_path is not None]
    if not paths:
        saved = sorted({run.backbone for run in runs if run.model_path is not None})
        raise ValueError(f"study {study_id} has no saved model of backbone={backbone!r} (saved: {saved or 'none'})")
    return paths


def ensemble_runs(model_paths: list[Path], artifacts_root: Path) -> list[artifacts.RunResult]:
    """The finished runs of ``model_paths``: distinct folds of one study and backbone."""
    runs = [finished_run(p, artifacts_root) for p in model_paths]
    if len({(r.study_id, r.backbone) for r in runs}) != 1 or len({r.fold for r in runs}) != len(runs):
        found = [f"{r.study_id}/{r.backbone}/fold-{r.fold}" for r in runs]
        raise ValueError(f"an ensemble's members must be distinct folds of one study and backbone, got {found}")
    return runs


def study_images(study: Study, artifacts_root: Path, *, data: Path | None = None) -> np.ndarray | None:
    """The study's decoded images in manifest order (its folds index them), or None when unavailable.

    From the artifacts folder's cache, else imported from ``data`` (the study's dataset folder or
    zip), which must be the same files.
    """
    info, size = study.dataset, study.input_size
    try:
        dataset = load_dataset(info.fingerprint, input_size=size, artifacts_root=artifacts_root)
    except DatasetError:
        if data is None:
            return None
        dataset = import_dataset(data, input_size=size, artifacts_root=artifacts_root)
    if dataset.fingerprint != info.fingerprint:
        raise ValueError(
            f"data={str(data)!r} is not the dataset of study {study.study_id} "
            f"(fingerprint {dataset.fingerprint}, the study's {info.fingerprint})"
        )
    return dataset.images


def training_indices(study: Study, folds: list[int]) -> np.ndarray:
    """Dataset indices the members trained on: held out by none of ``folds``.

    An ensemble of every fold has no such image; each of its images trained all members but one,
    and none is held out from the ensemble, so all of them are its training images.
    """
    held = set().union(*(study.folds[k] for k in folds))
    everything = set(range(study.dataset.n_images))
    return np.array(sorted(everything - held if held != everything else everything), dtype=np.int64)


def calibration_indices(study: Study, folds: list[int], *, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` of the members' training images (:func:`training_indices`), never a held-out fold's."""
    candidates = training_indices(study, folds)
    chosen = np.random.default_rng(seed).choice(candidates, min(count, len(candidates)), replace=False)
    return np.sort(chosen)


def check_indices(study: Study, folds: list[int], *, count: int, seed: int = 1) -> np.ndarray:
    """Up to ``count`` images the members held out (never calibration images), for the parity check."""
    held = np.array(sorted(set().union(*(study.folds[k] for k in folds))), dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(held, min(count, len(held)), replace=False))
