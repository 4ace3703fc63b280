"""Classify X-rays with a trained model of the artifacts folder, with a Grad-CAM heatmap.

Every model here ends in global average pooling and one softmax layer, so Grad-CAM on the last
convolutional map has a closed form (``engine.models.serving``): one forward pass gives the
probabilities and the map together, with no gradient tape and nothing rebuilt per image; it runs
on any Keras backend.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import settings
from engine.data.dicom import is_dicom
from engine.data.images import ImageError, decode_xray, looks_like_xray
from engine.models import serving
from engine.models.catalog import members_export
from engine.models.ood import WARNING as OOD_WARNING
from engine.models.ood import OODDetector
from engine.results import artifacts

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 32 * 2**20
OOD_FILE = "ood.npz"
CLASSIFY_CHUNK = 2
"""Uploads per forward pass: a pass holds the activations of every image in it, and a LiteRT interpreter keeps the
arena of its largest batch, so on a 1 GB host memory must not grow with the number of uploads."""
NO_OOD_CHECK = (
    "no out-of-distribution check for this model (no detector is saved with it: python -m engine ood fits "
    "one for a study's models, python -m engine export writes one with each export): "
    "nothing says this image is like its training images"
)
UPLOAD_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


@dataclass
class Prediction:
    """One uploaded image's result; ``error`` is set (one line) when it could not be used."""

    name: str
    predicted: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    ood_score: float | None = None

    @property
    def unlike_training(self) -> bool:
        """The image is out of the training distribution: its prediction means nothing."""
        return self.ood_score is not None and not self.ood_score <= 1.0


def model_name(info: dict) -> str:
    """``MobileNet fold 3``, ``MobileNet ensemble of folds 0, 1, 2`` or, for a study's ensemble of backbones,
    ``ensemble of MobileNet, MobileNet-0.25 (folds 0, 1, 2 of each)``: a model's ``info``, in words."""
    if info.get("backbones"):
        folds = ", ".join(str(f) for f in info.get("folds", []))
        return f"ensemble of {', '.join(info['backbones'])} (folds {folds} of each)"
    if info.get("fold") is not None:
        return f"{info['backbone']} fold {info['fold']}"
    return f"{info['backbone']} ensemble of folds {', '.join(str(f) for f in info.get('folds', []))}"


def check_upload(name: str, data: bytes) -> None:
    """Server-side check of an upload's size and type, before any decoder sees it."""
    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"{name}: {len(data) / 2**20:.1f} MB is over the {MAX_UPLOAD_BYTES // 2**20} MB upload limit")
    if not (data.startswith(UPLOAD_SIGNATURES) or is_dicom(data)):
        raise ImageError(f"{name}: not a PNG, JPEG or DICOM file (its content does not start like one)")


def _inside(path: Path, artifacts_root: Path) -> bool:
    return artifacts_root.resolve() in path.resolve().parents


class Classifier:
    """A loaded model with its classes; thread-safe, so one instance serves every session.

    ``model`` is a serving graph (``engine.models.serving``): probabilities, class maps and
    pooled features from one forward pass. ``ood``, when the model has one, scores those
    features against the training images' (``engine.models.ood``).
    """

    def __init__(
        self, model, *, classes: tuple[str, ...], input_size: int, info: dict, ood: OODDetector | None = None
    ) -> None:
        self.model = model
        self.classes = classes
        self.input_size = input_size
        self.info = info
        self.ood = ood
        self._lock = threading.Lock()

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The serving graph's outputs for uint8 images (N, S, S)."""
        batch = np.asarray(images, dtype=np.float32)[..., None]
        with self._lock:
            raw = self.model.predict_on_batch(batch)
        return {key: np.asarray(raw[key]) for key in serving.OUTPUTS}

    def features(self, images: np.ndarray, *, batch: int = 64) -> np.ndarray:
        """Pooled backbone features (N, D) of uint8 images, in batches: what the OOD detector is fitted on."""
        return np.concatenate(
            [self.outputs(np.asarray(images[i : i + batch]))["features"] for i in range(0, len(images), batch)]
        )

    @property
    def has_detector(self) -> bool:
        """Whether it says when an image is unlike its training images."""
        return self.ood is not None

    def ood_ratios(self, images: np.ndarray, *, batch: int = 64) -> np.ndarray | None:
        """Each image's OOD score over its detector's threshold (above 1: unlike the training images); None
        without a detector."""
        if self.ood is None:
            return None
        return self.ood.ratios(self.features(images, batch=batch))

    def predict_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) and heatmaps (N, S, S) in [0, 1] for uint8 images (N, S, S)."""
        proba, heatmaps, _ = self._predict(images)
        return proba, heatmaps

    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        raw = self.outputs(images)
        proba = raw["probabilities"].astype(np.float64)
        heatmaps = serving.heatmaps(raw["class_maps"], proba.argmax(axis=1), size=self.input_size)
        ratios = None if self.ood is None else self.ood.ratios(raw["features"])
        return proba, heatmaps, ratios

    def classify(self, items: list[tuple[str, bytes]]) -> list[Prediction]:
        """Check, decode and classify a batch of uploads; a bad file gets its error, the rest go on."""
        results = [Prediction(name=name) for name, _ in items]
        ready: list[int] = []
        for i, (name, data) in enumerate(items):
            try:
                check_upload(name, data)
                decoded = decode_xray(data, size=self.input_size, name=name)
            except ImageError as exc:
                results[i].error = str(exc)
                continue
            results[i].image = decoded.pixels
            results[i].warnings = [*decoded.notes, *looks_like_xray(decoded, data)]
            ready.append(i)
        if ready:
            images = np.stack([results[i].image for i in ready])
            chunks = [self._predict(images[i : i + CLASSIFY_CHUNK]) for i in range(0, len(ready), CLASSIFY_CHUNK)]
            probas, maps, scores = zip(*chunks, strict=True)
            proba, heatmaps = np.concatenate(probas), np.concatenate(maps)
            ratios = None if scores[0] is None else np.concatenate(scores)
            for row, i in enumerate(ready):
                results[i].probabilities = {c: float(p) for c, p in zip(self.classes, proba[row], strict=True)}
                results[i].predicted = self.classes[int(proba[row].argmax())]
                results[i].heatmap = heatmaps[row]
                if ratios is None:
                    results[i].warnings.append(NO_OOD_CHECK)
                else:
                    results[i].ood_score = float(ratios[row])
                    if results[i].unlike_training:
                        results[i].warnings.insert(0, OOD_WARNING)
        return results


def ensemble_detector_path(folder: Path, folds: list[int]) -> Path:
    """``runs/<backbone>/ood-folds-0-1-2-3-4.npz``: the detector of the ensemble of exactly these fold models."""
    return folder / f"ood-folds-{'-'.join(str(f) for f in sorted(folds))}.npz"


def load_detector(path: Path, *, dim: int | None = None) -> OODDetector | None:
    """The OOD detector saved at ``path``, or None when there is none; a wrong feature size is an error."""
    if not path.is_file():
        return None
    detector = OODDetector.load(path)
    if dim is not None and detector.dim != dim:
        raise ValueError(f"{path}: an OOD detector of {detector.dim} features for a model of {dim}")
    return detector


def fit_detector(classifier: Classifier, training_images: np.ndarray) -> OODDetector:
    """The OOD detector of ``classifier``, fitted on the features of the images it was trained on."""
    return OODDetector.fit(classifier.features(training_images))


def load_keras_model(path: Path):
    """A saved ``.keras`` model, loaded with ``safe_mode=True`` (no code in the file runs); a file that is not one
    gives a one-line ValueError naming it."""
    import zipfile

    import keras

    import engine.models.layers  # noqa: F401  (registers the custom layers the model uses)

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a loadable Keras model ({reason})") from None


def load_classifier(path: str | Path, *, artifacts_root: Path | None = None) -> Classifier:
    """Load a model of the artifacts folder: a fold's ``model.keras`` (``safe_mode=True``), a backbone's run
    folder (its saved fold models as one ensemble), or an exported ``.tflite``/``.onnx`` file (no TensorFlow)."""
    root = artifacts_root or settings.artifacts_dir()
    path = Path(path)
    if not _inside(path, root) or not path.exists():
        raise ValueError(f"model must be a model file or run folder inside {root}, got path={str(path)!r}")
    if path.suffix in (".tflite", ".onnx"):
        from engine.models.runtime import load_exported

        return load_exported(path)
    from engine.models.backbone_ensemble import (
        is_manifest,
        is_runs_folder,
        keras_backbone_ensemble,
        load_backbone_ensemble,
    )

    if is_manifest(path):
        return load_backbone_ensemble(path)
    if is_runs_folder(path):
        return keras_backbone_ensemble(path, root)
    if path.is_dir():
        return _load_ensemble(path, root)
    if path.suffix != ".keras":
        raise ValueError(
            f"model must be a .keras file, an exported model, an ensemble manifest or a run folder inside {root}, "
            f"got path={str(path)!r}"
        )
    run = artifacts.read_run(path.parent)
    if run is None:
        raise ValueError(f"{path.parent} is not a finished run; its model is not loaded")
    started = time.perf_counter()
    graph = serving.serving_model([load_keras_model(path)])
    log.info("loaded model %s (%s fold %d) in %.1f s", path, run.backbone, run.fold, time.perf_counter() - started)
    return Classifier(
        graph,
        ood=load_detector(path.with_name(OOD_FILE), dim=int(graph.output["features"].shape[-1])),
        classes=tuple(run.config["classes"]),
        input_size=int(run.config["input_size"]),
        info={
            "backbone": run.backbone,
            "fold": run.fold,
            "study_id": run.study_id,
            "protocol": run.config["protocol"]["name"],
        },
    )


def _load_ensemble(folder: Path, artifacts_root: Path) -> Classifier:
    """Every saved fold model of one backbone (``folder`` is ``runs/<backbone>``) as one serving graph."""
    runs = [r for r in (artifacts.read_run(p) for p in sorted(folder.glob("fold-*"))) if r and r.model_path]
    if len(runs) < 2:
        exported = members_export(folder / "export", ())
        if exported is not None:
            from engine.models.runtime import load_exported

            return load_exported(exported[0])
        raise ValueError(
            f"{folder} has {len(runs)} saved fold model(s) and no exported ensemble; an ensemble needs at least 2 "
            "(a fresh clone has the committed exports only)"
        )
    started = time.perf_counter()
    graph = serving.serving_model([load_keras_model(r.model_path) for r in runs])
    log.info("loaded the %d-fold ensemble %s in %.1f s", len(runs), folder, time.perf_counter() - started)
    return Classifier(
        graph,
        ood=load_detector(
            ensemble_detector_path(folder, [r.fold for r in runs]), dim=int(graph.output["features"].shape[-1])
        ),
        classes=tuple(runs[0].config["classes"]),
        input_size=int(runs[0].config["input_size"]),
        info={
            "backbone": runs[0].backbone,
            "fold": None,
            "folds": [r.fold for r in runs],
            "study_id": runs[0].study_id,
            "protocol": runs[0].config["protocol"]["name"],
        },
    )
