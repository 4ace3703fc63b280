"""Classify X-rays with a trained model of the artifacts folder, with a Grad-CAM heatmap.

Every model here ends in global average pooling and one softmax layer, so Grad-CAM on the last
convolutional map has a closed form: the gradient of class ``c``'s logit with respect to the map
``A`` is ``W[:, c] / (h * w)`` at every position, hence Grad-CAM = ReLU(sum_k W[k, c] A_k)
(up to a positive scale), which is CAM. One forward pass gives the probabilities and the map
together, with no gradient tape and nothing rebuilt per image; it runs on any Keras backend.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine import settings
from engine.data.images import ImageError, decode_xray, looks_like_xray
from engine.results import artifacts

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 32 * 2**20
UPLOAD_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


@dataclass(frozen=True)
class ModelInfo:
    """A trained model on disk and what it was trained on."""

    path: Path
    study_id: str
    title: str
    backbone: str
    fold: int
    protocol: str
    accuracy: float
    classes: tuple[str, ...]
    input_size: int

    @property
    def label(self) -> str:
        return f"{self.backbone} · {self.protocol} · fold {self.fold} · accuracy {self.accuracy:.3f}"


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


def list_models(artifacts_root: Path | None = None) -> list[ModelInfo]:
    """Every saved model of every study, best held-out accuracy first."""
    found = []
    for study_id in artifacts.list_study_ids(artifacts_root):
        study = artifacts.read_study(study_id, artifacts_root)
        for run in artifacts.study_runs(study_id, artifacts_root):
            if run.model_path is None:
                continue
            found.append(
                ModelInfo(
                    path=run.model_path,
                    study_id=study_id,
                    title=study["title"],
                    backbone=run.backbone,
                    fold=run.fold,
                    protocol=study["protocol"]["name"],
                    accuracy=float(run.metrics["accuracy"]),
                    classes=tuple(run.config["classes"]),
                    input_size=int(run.config["input_size"]),
                )
            )
    return sorted(found, key=lambda m: (-m.accuracy, m.backbone, m.fold))


def check_upload(name: str, data: bytes) -> None:
    """Server-side check of an upload's size and type, before any decoder sees it."""
    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"{name}: {len(data) / 2**20:.1f} MB is over the {MAX_UPLOAD_BYTES // 2**20} MB upload limit")
    if not data.startswith(UPLOAD_SIGNATURES):
        raise ImageError(f"{name}: not a PNG or JPEG file (its content does not start like one)")


def _inside(path: Path, root: Path) -> bool:
    return root.resolve() in path.resolve().parents


def _cam_model(model):
    """The same chain of layers (and weights), also returning the backbone's last feature map."""
    import keras

    inputs = keras.Input(model.input_shape[1:])
    x, fmap = inputs, None
    for layer in model.layers[1:]:
        x = layer(x)
        if layer.name == "backbone":
            fmap = x
    return keras.Model(inputs, [fmap, x])


class Classifier:
    """A loaded model with its classes; thread-safe, so one instance serves every session."""

    def __init__(self, model, *, classes: tuple[str, ...], input_size: int, info: dict) -> None:

        self.model = model
        self.classes = classes
        self.input_size = input_size
        self.info = info
        self.cam_model = _cam_model(model)
        self.head_kernel = np.asarray(model.get_layer("head").get_weights()[0], dtype=np.float32)
        self._lock = threading.Lock()

    def predict_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) and heatmaps (N, S, S) in [0, 1] for uint8 images (N, S, S)."""
        batch = np.asarray(images, dtype=np.float32)[..., None]
        with self._lock:
            fmap, proba = self.cam_model.predict_on_batch(batch)
        fmap = np.asarray(fmap, dtype=np.float32)
        proba = np.asarray(proba, dtype=np.float64)
        weights = self.head_kernel[:, proba.argmax(axis=1)].T
        cams = np.maximum(np.einsum("nhwk,nk->nhw", fmap, weights), 0.0)
        heatmaps = np.empty((len(cams), self.input_size, self.input_size), dtype=np.float32)
        for i, cam in enumerate(cams):
            peak = cam.max()
            scaled = cam / peak if peak > 0 else cam
            heatmaps[i] = np.asarray(
                Image.fromarray(scaled.astype(np.float32), mode="F").resize(
                    (self.input_size, self.input_size), Image.Resampling.BILINEAR
                )
            )
        return proba, np.clip(heatmaps, 0.0, 1.0)

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
            proba, heatmaps = self.predict_arrays(np.stack([results[i].image for i in ready]))
            for row, i in enumerate(ready):
                results[i].probabilities = {c: float(p) for c, p in zip(self.classes, proba[row], strict=True)}
                results[i].predicted = self.classes[int(proba[row].argmax())]
                results[i].heatmap = heatmaps[row]
        return results


def load_classifier(path: str | Path, *, artifacts_root: Path | None = None) -> Classifier:
    """Load a ``.keras`` model of the artifacts folder with ``safe_mode=True``; nothing else."""
    import keras

    import engine.models.layers  # noqa: F401  (registers the custom layers the model uses)

    root = artifacts_root or settings.artifacts_dir()
    path = Path(path)
    if path.suffix != ".keras" or not path.is_file() or not _inside(path, root):
        raise ValueError(f"model must be a .keras file inside {root}, got path={str(path)!r}")
    run = artifacts.read_run(path.parent)
    if run is None:
        raise ValueError(f"{path.parent} is not a finished run; its model is not loaded")
    started = time.perf_counter()
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    log.info("loaded model %s (%s fold %d) in %.1f s", path, run.backbone, run.fold, time.perf_counter() - started)
    return Classifier(
        model,
        classes=tuple(run.config["classes"]),
        input_size=int(run.config["input_size"]),
        info={
            "backbone": run.backbone,
            "fold": run.fold,
            "study_id": run.study_id,
            "protocol": run.config["protocol"]["name"],
        },
    )
