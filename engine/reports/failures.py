"""Read-side tables of a model's mistakes: every misclassified out-of-fold image, and where to see it.

A mistake is an image whose highest out-of-fold probability is not its true class (the prediction is
the arg max, as everywhere in the engine). Its confidence is the probability of the class it was
called, so the most confident mistakes come first: those are the ones a threshold cannot fix and
the ones most worth looking at. Which fold model scored an image is known (``OutOfFold.folds``), so
its Grad-CAM can be recomputed where that model was saved; the images themselves come from the
study's imported dataset, when it is on this machine.

Nothing here imports Streamlit or Keras: tables are pandas, images numpy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine import settings
from engine.data.datasets import DatasetError, load_dataset
from engine.evaluation.predictions import OutOfFold
from engine.models.catalog import fold_export
from engine.results import artifacts

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
ARROW = " → "
SHORTCUT_NOTE = (
    "A model can be right for the wrong reason. Public COVID-19 X-ray sets often take each class from a "
    "different source (another hospital, scanner, age group or text marker), so a model can learn the source "
    "instead of the disease (DeGrave et al., Nature Machine Intelligence 2021). Look at where the heat map "
    "points: on the lungs, or on the edges, the labels, the shoulders or the body's size."
)


def probability_column(name: str) -> str:
    return f"p[{name}]"


def pair_label(true: str, predicted: str) -> str:
    """``true → predicted``, as the pair filter and the URL show it."""
    return f"{true}{ARROW}{predicted}"


def mistakes(oof: OutOfFold) -> pd.DataFrame:
    """Every misclassified image, most confident first (then by file).

    Columns: ``row`` (its position in ``oof``), ``file``, ``fold``, ``true``, ``predicted``, ``p[<class>]``
    for every class, and ``confidence`` (the probability of the predicted class).
    """
    predicted = oof.proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != oof.y_true)
    classes = np.asarray(oof.classes, dtype=object)
    table = pd.DataFrame(
        {
            "row": wrong,
            "file": [oof.files[i] for i in wrong],
            "fold": oof.folds[wrong],
            "true": classes[oof.y_true[wrong]],
            "predicted": classes[predicted[wrong]],
            **{probability_column(c): oof.proba[wrong, k] for k, c in enumerate(oof.classes)},
            "confidence": oof.proba[wrong, predicted[wrong]],
        }
    )
    return table.sort_values(["confidence", "file"], ascending=[False, True], ignore_index=True)


def pair_counts(oof: OutOfFold) -> pd.DataFrame:
    """One row per (true → predicted) pair that occurs: its mistakes, the true class's images, their share."""
    table = mistakes(oof)
    support = pd.Series(np.bincount(oof.y_true, minlength=len(oof.classes)), index=list(oof.classes))
    columns = ["pair", "true", "predicted", "mistakes", "images of the true class", "share of the true class"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    counts = table.groupby(["true", "predicted"], sort=False).size().rename("mistakes").reset_index()
    counts["pair"] = [pair_label(t, p) for t, p in zip(counts["true"], counts["predicted"], strict=True)]
    counts["images of the true class"] = support.loc[counts["true"]].to_numpy()
    counts["share of the true class"] = counts["mistakes"] / counts["images of the true class"]
    return counts.sort_values(["mistakes", "pair"], ascending=[False, True], ignore_index=True)[columns]


def known_dataset_note(fingerprint: str) -> str | None:
    """What the project knows about a dataset by its fingerprint (``engine/reference/datasets.json``)."""
    known = json.loads((REFERENCE_DIR / "datasets.json").read_text())["known_datasets"].get(fingerprint)
    return known["note"] if known else None


@dataclass(frozen=True)
class FoldModel:
    """The saved model of one (backbone, fold), or why there is none."""

    backbone: str
    fold: int
    path: Path | None
    missing_reason: str = "model was not saved"

    @property
    def missing(self) -> str | None:
        return None if self.path is not None else f"{self.backbone} fold {self.fold}'s {self.missing_reason}"


def fold_models(study_id: str, members: tuple[str, ...], artifacts_root: Path | None = None) -> dict:
    """``{(backbone, fold): FoldModel}`` for every finished fold of the ``members`` backbones."""
    found = {}
    for run in artifacts.study_runs(study_id, artifacts_root):
        if run.backbone in members:
            if settings.read_only():
                reason = "model has no exported file, and a read-only demo does not load Keras models"
                found[(run.backbone, run.fold)] = FoldModel(run.backbone, run.fold, fold_export(run), reason)
            else:
                found[(run.backbone, run.fold)] = FoldModel(run.backbone, run.fold, run.model_path)
    return found


@dataclass(frozen=True)
class StudyImages:
    """Where a study's images come from: its dataset's name, fingerprint and the size it was trained at."""

    name: str
    fingerprint: str
    input_size: int

    @property
    def missing(self) -> str:
        return (
            f"the images of dataset {self.name} ({self.fingerprint}) are not on this machine: "
            "import the dataset to see thumbnails"
        )


def study_images(study_id: str, artifacts_root: Path | None = None) -> StudyImages:
    study = artifacts.read_study(study_id, artifacts_root)
    return StudyImages(study.dataset.name, study.dataset.fingerprint, study.input_size)


def images_of(source: StudyImages, files: list[str], artifacts_root: Path | None = None) -> np.ndarray:
    """The ``files`` (paths relative to the dataset root) as uint8 (N, S, S), in their order.

    Raises ``DatasetError`` with one line saying what is missing: the dataset's images on this
    machine, or files the dataset does not hold.
    """
    try:
        dataset = load_dataset(source.fingerprint, input_size=source.input_size, artifacts_root=artifacts_root)
    except DatasetError:
        raise DatasetError(source.missing) from None
    rows = {name: i for i, name in enumerate(dataset.files)}
    absent = [f for f in files if f not in rows]
    if absent:
        raise DatasetError(
            f"{len(absent)} of these images are not in dataset {source.name} ({source.fingerprint}), "
            f"e.g. {absent[0]}: it was imported from other files"
        )
    return np.asarray(dataset.images[[rows[f] for f in files]]) if files else np.zeros((0, 0, 0), np.uint8)


def jet(values: np.ndarray) -> np.ndarray:
    """The 'jet' colour map (blue, cyan, yellow, red) of values in [0, 1], as float RGB in [0, 1]."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])
    return np.clip(1.5 - np.abs(4.0 * x - 4.0 * centres), 0.0, 1.0)


def overlay(image: np.ndarray, heatmap: np.ndarray | None, *, alpha: float = 0.4) -> np.ndarray:
    """A grey uint8 image (S, S) as RGB, with the heat map (S, S) in [0, 1] blended over it in jet colours."""
    grey = np.repeat(np.asarray(image, dtype=np.float64)[..., None] / 255.0, 3, axis=-1)
    if heatmap is None:
        return np.round(grey * 255.0).astype(np.uint8)
    blended = (1.0 - alpha) * grey + alpha * jet(heatmap)
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)
