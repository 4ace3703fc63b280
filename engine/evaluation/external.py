"""External checks: a trained model on labelled images no fold has seen, with the fold metrics.

The folder (or ``.zip``) is imported by the same rules as a study's dataset
(``engine.data.datasets.import_dataset``: class folders matched by name, ``masks/`` and
``__MACOSX`` ignored, byte-identical files dropped, bad files skipped with their reason), and a
set of one class is allowed (for a COVID-19-only folder, accuracy is COVID-19 recall).

"External" is checked, not claimed: before any prediction, every image is compared with the images
of the model's study (``engine.data.overlap``). Identical and near-duplicate images are left out
and counted; a set made only of the study's images is refused. Results are kept under
``<artifacts>/evaluations/<key>.json``, keyed by the model and the data's fingerprint, so the
report regenerates from disk and asking again reuses the result.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engine import settings
from engine.data import overlap
from engine.data.datasets import Dataset, import_dataset
from engine.evaluation.metrics import fold_metrics
from engine.models.inference import Classifier
from engine.results import artifacts, atomic

BATCH = 64
EVALUATION_SCHEMA = 2


class OverlapError(ValueError):
    """Every image of an "external" set is one of the model's study images."""


def _study_hashes(classifier: Classifier, root: Path) -> overlap.ImageHashes:
    """The model's study images' hashes: kept with its dataset, or computed from its decoded images."""
    study = artifacts.read_study(classifier.info["study_id"], root)
    fingerprint = study["dataset"]["fingerprint"]
    stored = overlap.stored_hashes(fingerprint, classifier.input_size, root)
    if stored is not None:
        return stored
    from engine.data.datasets import DatasetError, load_dataset

    try:
        dataset = load_dataset(fingerprint, input_size=classifier.input_size, artifacts=root)
    except DatasetError:
        raise ValueError(
            f"cannot check that these images are unseen: the images of study {study['study_id']} "
            f"(dataset {study['dataset']['name']}, {fingerprint}) are not on this machine and no hashes of them "
            "were kept; import that dataset once (python -m engine study ... or the app) and evaluate again"
        ) from None
    return overlap.dataset_hashes(dataset, root)


def _model_rows(dataset: Dataset, classes: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Rows whose class the model knows, and the dataset's classes it does not."""
    known = [k for k, name in enumerate(dataset.classes) if name in classes]
    unknown = [name for name in dataset.classes if name not in classes]
    if not known:
        raise ValueError(
            f"{dataset.name}: none of its classes ({', '.join(dataset.classes)}) is a class of the model "
            f"({', '.join(classes)}); name the folders after the model's classes"
        )
    return np.flatnonzero(np.isin(dataset.labels, known)), unknown


def _overlap_summary(dataset: Dataset, rows: np.ndarray, found: overlap.Overlap) -> dict:
    left_out = [dataset.files[rows[i]] for i in found.rows]
    return {
        "checked": int(len(rows)),
        "identical": len(found.identical),
        "near_duplicates": len(found.near),
        "left_out": left_out,
        "rule": (
            f"identical decoded pixels, or a perceptual hash within {overlap.NEAR_DISTANCE} of "
            f"{overlap.HASH_SIZE**2} bits of an image of the model's study"
        ),
    }


def _predict(classifier: Classifier, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [classifier.predict_arrays(np.asarray(images[i : i + BATCH]))[0] for i in range(0, len(images), BATCH)]
    )


def evaluation_key(model_info: dict, data_fingerprint: str) -> str:
    return artifacts.canonical_hash({"model": model_info, "data": data_fingerprint})


def evaluate_folder(classifier: Classifier, data: str | Path, *, artifacts_root: Path | None = None) -> dict:
    """Metrics and confusion matrix of ``classifier`` on the labelled folder or ``.zip`` ``data``; saved on disk."""
    settings.refuse_if_read_only("new evaluations are")
    root = artifacts_root or settings.artifacts_dir()
    dataset = import_dataset(data, input_size=classifier.input_size, artifacts=root, min_classes=1)
    path = root / "evaluations" / f"{evaluation_key(classifier.info, dataset.fingerprint)}.json"
    if path.is_file():
        return atomic.read_json(path)
    rows, unknown = _model_rows(dataset, classifier.classes)
    found = overlap.find_overlap(overlap.dataset_hashes(dataset, root).take(rows), _study_hashes(classifier, root))
    if len(found.rows) == len(rows):
        raise OverlapError(
            f"{dataset.name}: all {len(rows)} images are images of the model's study "
            f"({len(found.identical)} identical, {len(found.near)} near-duplicates); "
            "an external check needs images no fold has seen"
        )
    checked = _overlap_summary(dataset, rows, found)
    rows = np.delete(rows, found.rows)
    y = np.array([classifier.classes.index(dataset.classes[k]) for k in dataset.labels[rows]], dtype=np.int64)
    proba = _predict(classifier, dataset.images[rows])
    metrics = fold_metrics(y, proba, classifier.classes)
    present = [c for k, c in enumerate(classifier.classes) if np.any(y == k)]
    result = {
        "schema_version": EVALUATION_SCHEMA,
        "model": {**classifier.info, "classes": list(classifier.classes)},
        "data": {
            "name": dataset.name,
            "fingerprint": dataset.fingerprint,
            "counts": {c: int(np.sum(y == classifier.classes.index(c))) for c in present},
            "classes_not_in_model": unknown,
            "skipped": dataset.report.skipped,
            "duplicates_dropped": len(dataset.report.duplicates),
            "overlap_with_study": checked,
        },
        "classes_present": present,
        "accuracy": metrics["accuracy"],
        "recall": {c: metrics["per_class"][c]["recall"] for c in present},
        "metrics": metrics,
        "evaluated_at": time.time(),
    }
    atomic.write_json(path, result)
    return result


def list_evaluations(artifacts_root: Path | None = None) -> list[dict]:
    folder = (artifacts_root or settings.artifacts_dir()) / "evaluations"
    if not folder.is_dir():
        return []
    return [atomic.read_json(p) for p in sorted(folder.glob("*.json"))]
