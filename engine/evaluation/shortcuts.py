"""The shortcut audit of a study: how much of its figures a model could reach without looking at the chest.

Three measurements, each under the study's own folds (so each image is judged by a model that never saw
it or, at patient level, its patient), kept under ``studies/<id>/audit/``:

- :func:`acquisition_baseline`: a gradient-boosted classifier of global image statistics
  (``engine.evaluation.image_statistics``: intensity, sharpness, border content, file size; no anatomy).
  A model that beats it by little has learned little beyond acquisition. Its per-image summary numbers
  (sharpness, contrast, intensity, source size) are kept too, for the figures by class;
- :func:`model_audit`, per backbone, its fold models on their held-out images:
  - **occlusion** (after Maguolo and Nanni 2021): the lung fields replaced by a neutral fill (each image's
    median grey level), and only the lung fields kept. No lung-mask model is bundled, so the lung fields
    are a fixed central region (:data:`REGION`), and the results say so;
  - **source probe**: where the study's images come from several dataset folders, how well the model's own
    pooled features tell the source apart, within each class that has images of several sources (a
    logistic regression under the study's folds; 0.5 balanced accuracy is chance for two sources).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine import settings
from engine.data.datasets import Dataset, read_manifest
from engine.evaluation.external import figure_intervals
from engine.evaluation.image_statistics import SUMMARY, image_statistics, names, summary_columns
from engine.results import artifacts, atomic, cache
from engine.results.studies import Study

AUDIT_SCHEMA = 1
BATCH = 64
BASELINE = (
    "gradient-boosted trees (scikit-learn HistGradientBoostingClassifier, seed 0, default settings except "
    "min_samples_leaf: 20, or a twentieth of the training images when they are fewer than 400) on "
    f"{len(names())} global image statistics: intensity mean, spread, percentiles and a 16-bin histogram; "
    "sharpness (variance of the Laplacian, mean gradient, high-frequency energy); the outer 8-pixel strip's "
    "level and spread; the share of near-black and near-white pixels; the file's own size where it was recorded"
)
CONDITIONS = ("as given", "lungs hidden", "lungs only")


@dataclass(frozen=True)
class Region:
    """The part of the image taken for the lung fields, as fractions of its height and width."""

    top: float = 0.12
    bottom: float = 0.88
    left: float = 0.10
    right: float = 0.90
    kind: str = "central region"
    description: str = (
        "no lung mask: a fixed central box (rows 12 % to 88 %, columns 10 % to 90 %) stands for both lung "
        "fields, with the mediastinum between them"
    )

    def mask(self, size: int) -> np.ndarray:
        inside = np.zeros((size, size), dtype=bool)
        inside[
            round(self.top * size) : round(self.bottom * size), round(self.left * size) : round(self.right * size)
        ] = True
        return inside


REGION = Region()


def audit_dir(study_id: str, artifacts_root: Path | None = None) -> Path:
    return artifacts.study_dir(study_id, artifacts_root or settings.artifacts_dir()) / "audit"


def _source_sizes(dataset: Dataset, artifacts_root: Path) -> np.ndarray | None:
    sizes = read_manifest(dataset.fingerprint, artifacts_root).get("source_sizes")
    return None if sizes is None else np.asarray(sizes, dtype=np.float64)


def _oof(folds: list[list[int]], n: int, predict) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold outputs of ``predict(train_rows, test_rows)``, and the rows that got one."""
    out: list[np.ndarray | None] = [None] * n
    done = np.zeros(n, dtype=bool)
    for test in folds:
        test = np.asarray(test, dtype=np.int64)
        train = np.setdiff1d(np.arange(n), test)
        for i, value in zip(test, predict(train, test), strict=True):
            out[i] = value
        done[test] = True
    return np.stack([o for o in out if o is not None]), np.flatnonzero(done)


def _by_source(y: np.ndarray, proba: np.ndarray, sources: np.ndarray, names_: tuple[str, ...], classes) -> dict:
    if len(names_) < 2:
        return {}
    return {name: figure_intervals(y[sources == s], proba[sources == s], classes) for s, name in enumerate(names_)}


def acquisition_baseline(study: Study, dataset: Dataset, *, artifacts_root: Path | None = None) -> dict:
    """The no-anatomy baseline under the study's folds, and each image's summary statistics; kept on disk."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    root = artifacts_root or settings.artifacts_dir()
    key = cache.key({"dataset": dataset.fingerprint, "folds": study.folds}, schema=AUDIT_SCHEMA)
    path = audit_dir(study.study_id, root) / "baseline.json"

    def compute() -> dict:
        features = image_statistics(dataset.images, _source_sizes(dataset, root))
        y = dataset.labels

        def predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
            leaf = min(20, max(2, len(train) // 20))
            model = HistGradientBoostingClassifier(random_state=0, min_samples_leaf=leaf).fit(features[train], y[train])
            proba = np.zeros((len(test), len(dataset.classes)))
            proba[:, model.classes_] = model.predict_proba(features[test])
            return proba

        proba, rows = _oof(study.folds, len(dataset), predict)
        classes = dataset.classes
        summary = summary_columns(features)
        return {
            "schema_version": AUDIT_SCHEMA,
            "key": key,
            "study_id": study.study_id,
            "classifier": BASELINE,
            "classes": list(classes),
            "figures": figure_intervals(y[rows], proba, classes),
            "by_source": _by_source(y[rows], proba, dataset.source_index[rows], dataset.sources, classes),
            "predicted": proba.argmax(axis=1).tolist(),
            "rows": rows.tolist(),
            "statistics": {name: np.round(summary[name], 2).tolist() for name in SUMMARY},
        }

    return cache.remembered(path, compute, valid=lambda found: found.get("key") == key)


def _occluded(images: np.ndarray, region: Region, condition: str) -> np.ndarray:
    """``images`` with the region (``"lungs hidden"``) or everything else (``"lungs only"``) set to each
    image's median grey level."""
    if condition == "as given":
        return images
    inside = region.mask(images.shape[1])
    fill = inside if condition == "lungs hidden" else ~inside
    out = np.array(images, copy=True)
    medians = np.median(images.reshape(len(images), -1), axis=1).astype(images.dtype)
    out[:, fill] = medians[:, None]
    return out


def _source_probe(features: np.ndarray, dataset: Dataset, rows: np.ndarray, folds: list[list[int]]) -> dict:
    """Balanced accuracy with which a logistic regression of the features tells the source, within each class
    with several sources, out of fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(dataset.sources) < 2:
        return {"applicable": False, "why": "the study's images come from one dataset folder"}
    position = {int(r): i for i, r in enumerate(rows)}
    result: dict = {"applicable": True, "by_class": {}}
    for k, name in enumerate(dataset.classes):
        members = rows[dataset.labels[rows] == k]
        sources = dataset.source_index[members]
        if len(np.unique(sources)) < 2:
            continue
        x = features[[position[int(r)] for r in members]]
        member_set = {int(r): j for j, r in enumerate(members)}
        local = [[member_set[int(r)] for r in fold if int(r) in member_set] for fold in folds]

        def predict(train: np.ndarray, test: np.ndarray, x=x, sources=sources) -> np.ndarray:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
            return model.fit(x[train], sources[train]).predict(x[test])

        predicted, got = _oof([f for f in local if f], len(members), predict)
        result["by_class"][name] = {
            "balanced_accuracy": float(balanced_accuracy_score(sources[got], predicted)),
            "chance": 1.0 / len(np.unique(sources)),
            "counts": {dataset.sources[s]: int(np.sum(sources == s)) for s in np.unique(sources)},
        }
    return result


def model_audit(
    study: Study, backbone: str, dataset: Dataset, *, artifacts_root: Path | None = None, region: Region = REGION
) -> dict:
    """Occlusion and the source probe of ``backbone``'s fold models on their held-out images; kept on disk."""
    from engine.models.inference import load_classifier

    root = artifacts_root or settings.artifacts_dir()
    runs = [r for r in artifacts.study_runs(study.study_id, root) if r.backbone == backbone and r.model_path]
    if not runs:
        raise ValueError(
            f"no saved fold model of backbone={backbone!r} in study {study.study_id}; "
            "the occlusion audit needs each fold's model.keras"
        )
    key = cache.key(
        {
            "models": [atomic.file_sha256(r.model_path) for r in runs],
            "dataset": dataset.fingerprint,
            "region": asdict(region),
        },
        schema=AUDIT_SCHEMA,
    )
    path = audit_dir(study.study_id, root) / f"{backbone}.json"

    def compute() -> dict:
        predicted: dict[str, list[int]] = {c: [] for c in CONDITIONS}
        rows_done: list[int] = []
        features: list[np.ndarray] = []
        for run in runs:
            classifier = load_classifier(run.model_path, artifacts_root=root)
            rows = study.held_out(run.fold)
            for start in range(0, len(rows), BATCH):
                batch = np.asarray(dataset.images[rows[start : start + BATCH]])
                for condition in CONDITIONS:
                    outputs = classifier.outputs(_occluded(batch, region, condition))
                    predicted[condition] += outputs["probabilities"].argmax(axis=1).tolist()
                    if condition == "as given":
                        features.append(outputs["features"])
            rows_done += rows.tolist()
        rows_arr = np.asarray(rows_done, dtype=np.int64)
        y = dataset.labels[rows_arr]
        classes = dataset.classes
        eye = np.eye(len(classes))
        return {
            "schema_version": AUDIT_SCHEMA,
            "key": key,
            "study_id": study.study_id,
            "backbone": backbone,
            "folds": [r.fold for r in runs],
            "classes": list(classes),
            "region": asdict(region),
            "occlusion": {
                condition: figure_intervals(y, eye[np.asarray(predicted[condition])], classes)
                for condition in CONDITIONS
            },
            "source_probe": _source_probe(
                np.concatenate(features), dataset, rows_arr, [study.folds[r.fold] for r in runs]
            ),
        }

    return cache.remembered(path, compute, valid=lambda found: found.get("key") == key)
