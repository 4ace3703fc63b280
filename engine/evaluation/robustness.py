"""Does a model hold up when the acquisition changes? Its held-out images again, under controlled shifts.

Each fold's saved model sees its own held-out fold (images it never trained on) once as they are,
then under seven acquisition shifts at three strengths each, applied to the decoded image at the
model's input size: a contrast stretch about the image's mean, a gamma (mid-tones darker), a
brightness offset, Gaussian noise, a Gaussian blur, JPEG re-encoding and a lower resolution
(down, then back up). The figures are counts (images and correct ones per class and shift), so the
folds of a backbone pool into out-of-fold figures like the rest of the evaluation.

One file per (study, backbone, fold) under ``studies/<id>/robustness/``, keyed by the model file's
sha256, the dataset and :data:`ROBUSTNESS_SCHEMA` (which versions the shifts below), so asking
again reads it back.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from engine import settings
from engine.data.datasets import Dataset
from engine.results import artifacts, atomic, cache

ROBUSTNESS_SCHEMA = 1
STRENGTHS = ("mild", "middle", "strong")
BATCH = 64
NOISE_SEED = 0


def _contrast(images: np.ndarray, factor: float, _rng) -> np.ndarray:
    mean = images.mean(axis=(1, 2), keepdims=True)
    return (images - mean) * factor + mean


def _gamma(images: np.ndarray, gamma: float, _rng) -> np.ndarray:
    return 255.0 * (images / 255.0) ** gamma


def _brightness(images: np.ndarray, offset: float, _rng) -> np.ndarray:
    return images + offset


def _noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return images + rng.normal(0.0, sigma, images.shape)


def _per_image(images: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(change(Image.fromarray(image.astype(np.uint8))), dtype=np.float64) for image in images])


def _blur(images: np.ndarray, radius: float, _rng) -> np.ndarray:
    return _per_image(images, lambda img: img.filter(ImageFilter.GaussianBlur(radius)))


def _jpeg(images: np.ndarray, quality: float, _rng) -> np.ndarray:
    def encode(img: Image.Image) -> Image.Image:
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=int(quality))
        return Image.open(io.BytesIO(out.getvalue()))

    return _per_image(images, encode)


def _resolution(images: np.ndarray, pixels: float, _rng) -> np.ndarray:
    size = images.shape[1]
    small = (int(pixels), int(pixels))
    return _per_image(
        images, lambda img: img.resize(small, Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BILINEAR)
    )


@dataclass(frozen=True)
class Shift:
    """One acquisition shift: what it does, its parameter at each of :data:`STRENGTHS`, and the function."""

    name: str
    description: str
    parameters: tuple[float, float, float]
    template: str
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

    def label(self, parameter: float) -> str:
        return self.template.format(parameter)


SHIFTS = (
    Shift("contrast", "contrast stretched about each image's mean", (1.2, 1.4, 1.7), "contrast ×{:g}", _contrast),
    Shift("gamma", "gamma on [0, 1] intensities (mid-tones darker)", (1.2, 1.5, 2.0), "gamma {:g}", _gamma),
    Shift("brightness", "grey levels added to every pixel", (15.0, 30.0, 50.0), "brightness +{:g}", _brightness),
    Shift("noise", "Gaussian noise, standard deviation in grey levels", (4.0, 8.0, 16.0), "noise σ {:g}", _noise),
    Shift("blur", "Gaussian blur, radius in pixels", (0.5, 1.0, 2.0), "blur {:g} px", _blur),
    Shift("jpeg", "re-encoded as JPEG at this quality", (50.0, 25.0, 10.0), "JPEG quality {:g}", _jpeg),
    Shift(
        "resolution", "down-sampled to this size, then back up", (112.0, 64.0, 32.0), "{:g} px and back", _resolution
    ),
)
SHIFTS_BY_NAME = {shift.name: shift for shift in SHIFTS}


def shifted(images: np.ndarray, shift: Shift, parameter: float, *, seed: int = NOISE_SEED) -> np.ndarray:
    """``images`` (uint8, N x S x S) under ``shift`` at ``parameter``, back to uint8."""
    out = shift.apply(np.asarray(images, dtype=np.float64), parameter, np.random.default_rng(seed))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def shifts_definition() -> list[dict]:
    """What the shifts are, for the cache key and for the pages that explain them."""
    return [
        {"shift": s.name, "description": s.description, "parameters": list(s.parameters), "label": s.template}
        for s in SHIFTS
    ]


def _counts(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict:
    predicted = proba.argmax(axis=1)
    return {
        "n": np.bincount(y_true, minlength=n_classes).tolist(),
        "correct": np.bincount(y_true[predicted == y_true], minlength=n_classes).tolist(),
    }


def _figures(counts: dict, classes: tuple[str, ...]) -> dict:
    n, correct = np.asarray(counts["n"]), np.asarray(counts["correct"])
    return {
        "accuracy": float(correct.sum() / n.sum()),
        "recall": {c: (float(correct[k] / n[k]) if n[k] else None) for k, c in enumerate(classes)},
        "n_images": int(n.sum()),
    }


def result_path(run: artifacts.RunResult, key: str, artifacts_root: Path) -> Path:
    return (
        artifacts.study_dir(run.study_id, artifacts_root) / "robustness" / run.backbone / f"fold-{run.fold}-{key}.json"
    )


def robustness_key(run: artifacts.RunResult, dataset_fingerprint: str) -> str:
    return cache.key(
        {
            "model": atomic.file_sha256(run.model_path),
            "dataset": dataset_fingerprint,
            "shifts": shifts_definition(),
            "noise_seed": NOISE_SEED,
        },
        schema=ROBUSTNESS_SCHEMA,
    )


ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class Cancelled(Exception):
    """``should_stop`` asked a robustness analysis to stop; nothing was written."""


def fold_robustness(
    run: artifacts.RunResult,
    dataset: Dataset,
    *,
    artifacts_root: Path | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict:
    """The fold model of ``run`` on its own held-out images, unshifted and under every shift; kept on disk."""
    if run.model_path is None:
        raise ValueError(f"{run.backbone} fold {run.fold} has no saved model (model.keras); its robustness needs one")
    root = artifacts_root or settings.artifacts_dir()
    study = artifacts.read_study(run.study_id, root)
    if dataset.fingerprint != study.dataset.fingerprint:
        raise ValueError(f"dataset {dataset.fingerprint} is not the one of study {run.study_id}")
    path = result_path(run, robustness_key(run, dataset.fingerprint), root)

    def compute() -> dict:
        from engine.models.inference import load_classifier

        classifier = load_classifier(run.model_path, artifacts_root=root)
        conditions = _conditions(
            lambda batch: classifier.outputs(batch)["probabilities"],
            study.held_out(run.fold),
            dataset,
            n_classes=len(classifier.classes),
            name=f"{run.backbone} fold {run.fold}",
            on_progress=on_progress,
            should_stop=should_stop,
        )
        return _result(run.study_id, run.backbone, run.fold, classifier.classes, dataset, conditions)

    return cache.remembered(path, compute, replaces=lambda: path.parent.glob(f"fold-{run.fold}-*.json"))


def _conditions(
    predict: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    dataset: Dataset,
    *,
    n_classes: int,
    name: str,
    on_progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> list[dict]:
    """Counts of ``predict`` (uint8 batch -> probabilities) on the dataset's ``rows``, as they are and under every
    shift at every strength; with several sources, each source's counts too (``by_source``), so that one source's
    class (the adult normals) can be followed under each shift."""
    images = np.asarray(dataset.images[rows])
    y_true = dataset.labels[rows]
    source_of = dataset.source_index[rows]
    sources = dict(enumerate(dataset.sources)) if len(dataset.sources) > 1 else {}
    conditions = [(None, None, None)]
    conditions += [(s, strength, p) for s in SHIFTS for strength, p in zip(STRENGTHS, s.parameters, strict=True)]
    found = []
    for step, (shift, strength, parameter) in enumerate(conditions):
        if should_stop and should_stop():
            raise Cancelled(f"{name}: robustness cancelled")
        seen = images if shift is None else shifted(images, shift, parameter)
        proba = np.concatenate([predict(seen[i : i + BATCH]) for i in range(0, len(seen), BATCH)])
        by_source = {
            label: _counts(y_true[source_of == i], proba[source_of == i], n_classes) for i, label in sources.items()
        }
        found.append(
            {
                "shift": shift.name if shift else "none",
                "strength": strength,
                "parameter": parameter,
                **_counts(y_true, proba, n_classes),
                **({"by_source": by_source} if by_source else {}),
            }
        )
        if on_progress:
            on_progress(step + 1, len(conditions))
    return found


def _result(
    study_id: str, backbone: str, fold: int, classes: tuple[str, ...], dataset: Dataset, conditions: list[dict]
) -> dict:
    return {
        "schema_version": ROBUSTNESS_SCHEMA,
        "study_id": study_id,
        "backbone": backbone,
        "fold": fold,
        "classes": list(classes),
        "dataset": dataset.fingerprint,
        "shifts": shifts_definition(),
        "conditions": conditions,
    }


def ensemble_fold_robustness(
    study_id: str,
    fold: int,
    dataset: Dataset,
    *,
    artifacts_root: Path | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict:
    """The study's ensemble of backbones on fold ``fold``'s held-out images: the mean of every backbone's fold-``fold``
    model's probabilities, unshifted and under every shift; kept under ``robustness/ensemble/``."""
    from engine.evaluation.predictions import ENSEMBLE, backbones_of

    root = artifacts_root or settings.artifacts_dir()
    study = artifacts.read_study(study_id, root)
    if dataset.fingerprint != study.dataset.fingerprint:
        raise ValueError(f"dataset {dataset.fingerprint} is not the one of study {study_id}")
    backbones = backbones_of(study_id, root)
    runs = [artifacts.read_run(artifacts.study_dir(study_id, root) / "runs" / b / f"fold-{fold}") for b in backbones]
    missing = [b for b, run in zip(backbones, runs, strict=True) if run is None or run.model_path is None]
    if len(backbones) < 2 or missing:
        raise ValueError(
            f"study {study_id} fold {fold}: an ensemble of backbones needs each backbone's saved fold model "
            f"(model.keras); backbones {backbones}, missing {missing}"
        )
    key = cache.key(
        {
            "models": [atomic.file_sha256(run.model_path) for run in runs],
            "dataset": dataset.fingerprint,
            "shifts": shifts_definition(),
            "noise_seed": NOISE_SEED,
        },
        schema=ROBUSTNESS_SCHEMA,
    )
    path = artifacts.study_dir(study_id, root) / "robustness" / ENSEMBLE / f"fold-{fold}-{key}.json"

    def compute() -> dict:
        from engine.models.inference import load_classifier

        members = [load_classifier(run.model_path, artifacts_root=root) for run in runs]
        conditions = _conditions(
            lambda batch: np.mean([m.outputs(batch)["probabilities"] for m in members], axis=0),
            study.held_out(fold),
            dataset,
            n_classes=len(members[0].classes),
            name=f"ensemble fold {fold}",
            on_progress=on_progress,
            should_stop=should_stop,
        )
        return {**_result(study_id, ENSEMBLE, fold, members[0].classes, dataset, conditions), "backbones": backbones}

    return cache.remembered(path, compute, replaces=lambda: path.parent.glob(f"fold-{fold}-*.json"))


def saved_results(study_id: str, backbone: str, artifacts_root: Path | None = None) -> list[dict]:
    """Every fold's robustness file of ``backbone`` (one per fold: the newest key replaced the others)."""
    folder = artifacts.study_dir(study_id, artifacts_root or settings.artifacts_dir()) / "robustness" / backbone
    return [atomic.read_json(p) for p in sorted(folder.glob("fold-*.json"))] if folder.is_dir() else []


def counted_by_source(results: list[dict], source: str) -> list[dict]:
    """The fold files that counted ``source``'s images apart (files written before ``by_source`` did not)."""
    return [r for r in results if all(source in c.get("by_source", {}) for c in r["conditions"])]


def pooled_table(results: list[dict], *, source: str | None = None) -> list[dict]:
    """Per shift and strength, the folds' counts added up: accuracy, per-class recall, change from unshifted. With
    ``source``, that source's images only, over the folds that counted them by source (older files did not)."""
    if source is not None:
        results = counted_by_source(results, source)
    if not results:
        return []
    classes = tuple(results[0]["classes"])
    totals: dict[tuple, dict] = {}
    for result in results:
        for c in result["conditions"]:
            key = (c["shift"], c["strength"], c["parameter"])
            counts = c if source is None else c["by_source"][source]
            slot = totals.setdefault(key, {"n": np.zeros(len(classes), int), "correct": np.zeros(len(classes), int)})
            slot["n"] += counts["n"]
            slot["correct"] += counts["correct"]
    baseline = _figures(totals[("none", None, None)], classes)["accuracy"]
    table = []
    for (shift, strength, parameter), counts in totals.items():
        figures = _figures(counts, classes)
        label = "none" if shift == "none" else SHIFTS_BY_NAME[shift].label(parameter)
        table.append(
            {
                "shift": shift,
                "strength": strength or "none",
                "parameter": parameter,
                "setting": label,
                "folds": len(results),
                **figures,
                "change": figures["accuracy"] - baseline,
            }
        )
    return table
