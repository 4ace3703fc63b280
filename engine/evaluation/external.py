"""External checks: a trained model on labelled images no fold has seen, with the fold metrics.

The folder (or ``.zip``) is imported by the same rules as a study's dataset
(``engine.data.datasets.import_dataset``: class folders matched by name, ``masks/`` and
``__MACOSX`` ignored, byte-identical files dropped, bad files skipped with their reason), and a
set of one class is allowed (for a COVID-19-only folder, accuracy is COVID-19 recall).

Every figure comes with a stratified bootstrap interval (``engine.evaluation.bootstrap``, the settings of
``summary.DEFAULT_INTERVALS``): accuracy, each class's recall (classes in the set) and precision
(classes in a set of several that the model predicted), and the macro figures when every class of
the model is in the set.

"External" is checked, not claimed: before any prediction, every image is compared with the images
of the model's study (``engine.data.overlap``). Identical and near-duplicate images are left out
and counted; a set made only of the study's images is refused. Results are kept under
``<artifacts>/evaluations/<key>.json``, keyed by the model and the data's fingerprint, so the
report regenerates from disk and asking again reuses the result (a file of an older
:data:`EVALUATION_SCHEMA` is computed again and replaced). Readers take them typed
(:func:`saved_evaluations`, ``engine.evaluation.external_results.ExternalEvaluation``), older files filled in.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engine import settings
from engine.data import overlap
from engine.data.datasets import Dataset, import_dataset
from engine.evaluation.confusion_bootstrap import bootstrap_confusion_metrics
from engine.evaluation.external_results import ExternalEvaluation
from engine.evaluation.metrics import fold_metrics
from engine.evaluation.predictions import ENSEMBLE, backbones_of
from engine.evaluation.summary import DEFAULT_INTERVALS
from engine.models.catalog import ModelInfo, list_models
from engine.models.inference import Classifier, load_classifier
from engine.results import artifacts, atomic, cache

BATCH = 64
EVALUATION_SCHEMA = 4
RELATIONS = ("other source", "same source")
"""How a set relates to the model's study: images from another source (an external validation), or more images
of a source the study already has (``covid19-extra``: the rest of its COVID-19 class, one release, one
processing), whose figures are same-source held-out figures, never external ones. The user says which; a file
saved before the choice existed says neither (``relation`` missing: "unstated")."""
MACRO = ("macro_precision", "macro_recall", "macro_f1")


class OverlapError(ValueError):
    """Every image of an "external" set is one of the model's study images."""


def _study_hashes(classifier: Classifier, artifacts_root: Path) -> overlap.ImageHashes:
    """The model's study images' hashes: kept with its dataset, or computed from its decoded images."""
    study = artifacts.read_study(classifier.info["study_id"], artifacts_root)
    fingerprint = study.dataset.fingerprint
    stored = overlap.stored_hashes(fingerprint, classifier.input_size, artifacts_root)
    if stored is not None:
        return stored
    from engine.data.datasets import DatasetError, load_dataset

    try:
        dataset = load_dataset(fingerprint, input_size=classifier.input_size, artifacts_root=artifacts_root)
    except DatasetError:
        raise ValueError(
            f"cannot check that these images are unseen: the images of study {study.study_id} "
            f"(dataset {study.dataset.name}, {fingerprint}) are not on this machine and no hashes of them "
            "were kept; import that dataset once (python -m engine study ... or the app) and evaluate again"
        ) from None
    return overlap.dataset_hashes(dataset, artifacts_root)


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


def intervals_description() -> str:
    """What the intervals are, as the study pages say it, naming these images instead of out-of-fold ones."""
    return DEFAULT_INTERVALS.describe(of="the predictions on these images")


def figure_intervals(y: np.ndarray, proba: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Bootstrap intervals of accuracy, per-class recall and precision and the macro figures, where defined.

    Recall needs images of the class; precision needs images of the class and a prediction of it, and a
    set of one class has none worth the name (1 for its class, 0 for the others, whatever the model
    does); the macro figures need every class of the model in the set. What is left out is named, with
    why, under ``"undefined"``. Each recall keeps its class's image count as ``n``: what its interval can tell
    (``engine.evaluation.sample_size``).
    """
    found = bootstrap_confusion_metrics(
        y,
        proba,
        classes,
        n_resamples=DEFAULT_INTERVALS.n_resamples,
        confidence=DEFAULT_INTERVALS.confidence,
        seed=DEFAULT_INTERVALS.seed,
        method=DEFAULT_INTERVALS.method,
    )
    counts = np.bincount(y, minlength=len(classes))
    present = counts > 0
    predicted = np.bincount(proba.argmax(axis=1), minlength=len(classes)) > 0
    one_class = int(present.sum()) == 1
    names, undefined = ["accuracy"], []
    for k, name in enumerate(classes):
        if present[k]:
            names.append(f"recall[{name}]")
        else:
            undefined.append(f"recall[{name}]: no {name} image in the set")
        if one_class:
            continue
        if not present[k]:
            undefined.append(f"precision[{name}]: no {name} image in the set, so it is 0 by construction")
        elif not predicted[k]:
            undefined.append(f"precision[{name}]: the model predicted {name} for no image")
        else:
            names.append(f"precision[{name}]")
    if one_class:
        undefined.append("precision: the set holds one class, so each class's precision is 1 or 0 by construction")
    if present.all():
        names += MACRO
    else:
        undefined.append("macro figures: not every class of the model is in the set")
    metrics = {name: found[name].to_dict() for name in names}
    for k, name in enumerate(classes):
        if present[k]:
            metrics[f"recall[{name}]"]["n"] = int(counts[k])
    return {"description": intervals_description(), "metrics": metrics, "undefined": undefined}


def evaluation_key(model_info: dict, data_fingerprint: str) -> str:
    return cache.key({"model": model_info, "data": data_fingerprint})


def _current(saved: dict) -> bool:
    """An evaluation of an older schema is computed again."""
    return saved.get("schema_version") == EVALUATION_SCHEMA


def _check_relation(relation: str) -> None:
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got relation={relation!r}")


def _with_relation(path: Path, saved: dict, relation: str) -> dict:
    """``saved`` labelled with ``relation``, rewritten when the user now says otherwise (the figures stand)."""
    if saved["data"].get("relation") != relation:
        saved = {**saved, "data": {**saved["data"], "relation": relation}}
        atomic.write_json(path, saved)
    return saved


def evaluate_folder(
    classifier: Classifier, data: str | Path, *, artifacts_root: Path | None = None, relation: str = "other source"
) -> dict:
    """Metrics, their intervals and the confusion matrix of ``classifier`` on the labelled folder or ``.zip``
    ``data`` (``relation``: :data:`RELATIONS`); saved on disk, and returned with its ``"key"`` (the file's name)."""
    settings.refuse_if_read_only("new evaluations are")
    _check_relation(relation)
    root = artifacts_root or settings.artifacts_dir()
    dataset = import_dataset(data, input_size=classifier.input_size, artifacts_root=root, min_classes=1)
    key = evaluation_key(classifier.info, dataset.fingerprint)
    path = root / "evaluations" / f"{key}.json"

    def compute() -> dict:
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
        data_info = {
            "name": dataset.name,
            "fingerprint": dataset.fingerprint,
            "relation": relation,
            "classes_not_in_model": unknown,
            "skipped": dataset.report.skipped,
            "duplicates_dropped": len(dataset.report.duplicates),
            "overlap_with_study": checked,
        }
        files = [dataset.files[i] for i in rows]
        return _result({**classifier.info, "classes": list(classifier.classes)}, data_info, files, y, proba)

    saved = cache.remembered(path, compute, valid=_current)
    return {"key": key, **_with_relation(path, saved, relation)}


def _result(model: dict, data_info: dict, files: list[str], y: np.ndarray, proba: np.ndarray) -> dict:
    """An evaluation as it is saved: figures, intervals and every image's probabilities (rounded to 1e-6)."""
    classes = tuple(model["classes"])
    metrics = fold_metrics(y, proba, classes)
    present = [c for k, c in enumerate(classes) if np.any(y == k)]
    counts = {c: int(np.sum(y == classes.index(c))) for c in present}
    return {
        "schema_version": EVALUATION_SCHEMA,
        "model": model,
        "data": {**data_info, "counts": counts},
        "classes_present": present,
        "accuracy": metrics["accuracy"],
        "recall": {c: metrics["per_class"][c]["recall"] for c in present},
        "metrics": metrics,
        "intervals": figure_intervals(y, proba, classes),
        "predictions": {"files": files, "true": y.tolist(), "probabilities": np.round(proba, 6).tolist()},
        "evaluated_at": time.time(),
    }


def ensemble_members(
    study_id: str, artifacts_root: Path | None = None, *, models: list[ModelInfo] | None = None
) -> dict[str, ModelInfo]:
    """Each backbone's fold ensemble of the study (same folds), which its ensemble of backbones averages;
    a one-line ValueError says why a study has none. ``models``: :func:`list_models`, when already listed."""
    root = artifacts_root or settings.artifacts_dir()
    ids = artifacts.list_study_ids(root)
    if study_id not in ids:
        raise ValueError(f"unknown study {study_id!r}; studies here: {', '.join(ids) or 'none'}")
    backbones = backbones_of(study_id, root)
    if len(backbones) < 2:
        raise ValueError(
            f"study {study_id}: an ensemble of backbones needs two or more, the study has {len(backbones)} "
            f"({', '.join(backbones) or 'no finished run'})"
        )
    listed = list_models(root) if models is None else models
    ensembles = {m.backbone: m for m in listed if m.study_id == study_id and m.is_ensemble}
    missing = [b for b in backbones if b not in ensembles]
    if missing:
        raise ValueError(
            f"study {study_id}: an ensemble of backbones needs the fold ensemble of each of its backbones "
            f"({', '.join(backbones)}); neither 2 saved fold models nor an exported ensemble is here for "
            f"{', '.join(missing)}"
        )
    folds = {b: list(ensembles[b].folds) for b in backbones}
    if len({tuple(f) for f in folds.values()}) > 1:
        raise ValueError(
            f"study {study_id}: its backbones' fold ensembles hold different folds "
            f"({'; '.join(f'{b}: {f}' for b, f in folds.items())}); an ensemble of them needs the same folds"
        )
    return {b: ensembles[b] for b in backbones}


def ensemble_studies(artifacts_root: Path | None = None) -> dict[str, list[str]]:
    """Every study whose ensemble of backbones can be evaluated here, with its backbones."""
    found = {}
    models = list_models(artifacts_root)
    for study_id in artifacts.list_study_ids(artifacts_root):
        try:
            found[study_id] = list(ensemble_members(study_id, artifacts_root, models=models))
        except ValueError:
            continue
    return found


def evaluate_study_ensemble(
    study_id: str, data: str | Path, *, artifacts_root: Path | None = None, relation: str = "other source"
) -> dict:
    """The study's "ensemble" row on ``data``: the mean of its backbones' fold ensembles' probabilities.

    Each backbone's fold ensemble (:func:`ensemble_members`) is evaluated first (:func:`evaluate_folder`,
    saved and reused), one loaded at a time, and the mean of their saved probabilities is the ensemble's:
    the same mean of every fold model of every backbone as the comparison's ensemble row, outside the
    folds. What serves each member (its Keras fold models or an exported file, float or int8) is part of
    the saved evaluation's key, as it is of each member's.
    """
    settings.refuse_if_read_only("new evaluations are")
    _check_relation(relation)
    root = artifacts_root or settings.artifacts_dir()
    ensembles = ensemble_members(study_id, root)
    backbones = list(ensembles)
    study = artifacts.read_study(study_id, root)
    model = {
        "backbone": ENSEMBLE,
        "backbones": backbones,
        "fold": None,
        "folds": list(ensembles[backbones[0]].folds),
        "study_id": study_id,
        "protocol": study.protocol_name,
        # what serves each member (a run folder's Keras models, or which exported file): part of the key
        "served_by": [ensembles[b].serving_path.relative_to(root).as_posix() for b in backbones],
    }
    input_size = ensembles[backbones[0]].input_size
    fingerprint = import_dataset(data, input_size=input_size, artifacts_root=root, min_classes=1).fingerprint
    key = evaluation_key(model, fingerprint)
    path = root / "evaluations" / f"{key}.json"

    def compute() -> dict:
        members = []
        for backbone in backbones:
            classifier = load_classifier(ensembles[backbone].serving_path, artifacts_root=root)
            members.append(evaluate_folder(classifier, data, artifacts_root=root, relation=relation))
            del classifier
        first = members[0]
        for member in members[1:]:
            for field in ("files", "true"):
                if member["predictions"][field] != first["predictions"][field]:
                    raise ValueError(
                        f"study {study_id}: evaluation {member['key']} of {first['data']['name']} holds other "
                        f"{'images' if field == 'files' else 'labels'} than evaluation {first['key']}"
                    )
            if member["model"]["classes"] != first["model"]["classes"]:
                raise ValueError(
                    f"study {study_id}: evaluation {member['key']} has classes {member['model']['classes']}, "
                    f"evaluation {first['key']} {first['model']['classes']}"
                )
        proba = np.mean([np.asarray(m["predictions"]["probabilities"]) for m in members], axis=0)
        data_info = {k: v for k, v in first["data"].items() if k != "counts"}
        return _result(
            {**model, "classes": first["model"]["classes"], "members": [m["key"] for m in members]},
            data_info,
            first["predictions"]["files"],
            np.asarray(first["predictions"]["true"]),
            proba,
        )

    saved = cache.remembered(path, compute, valid=_current)
    return {"key": key, **_with_relation(path, saved, relation)}


def mistakes(evaluation: dict) -> list[dict] | None:
    """Every image of a saved evaluation (as saved, or as :func:`evaluate_folder` returns it) the model got
    wrong, the most confident first (None for a file saved before per-image predictions were kept): where a
    reviewer starts looking. :meth:`ExternalEvaluation.mistakes` of the typed evaluation."""
    return ExternalEvaluation.from_json(evaluation).mistakes()


def list_evaluations(artifacts_root: Path | None = None) -> list[dict]:
    """Every saved evaluation as saved, each with its ``"key"`` (the file's name); older ones may lack
    ``"intervals"``. :func:`saved_evaluations` reads them typed, older schemas filled in."""
    folder = (artifacts_root or settings.artifacts_dir()) / "evaluations"
    if not folder.is_dir():
        return []
    return [{"key": p.stem, **atomic.read_json(p)} for p in sorted(folder.glob("*.json"))]


def saved_evaluations(artifacts_root: Path | None = None) -> list[ExternalEvaluation]:
    """Every saved evaluation, by key, as an :class:`ExternalEvaluation` (what an older file lacks, filled in)."""
    return [ExternalEvaluation.from_json(e) for e in list_evaluations(artifacts_root)]
