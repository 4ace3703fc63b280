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
from engine.models.ood import WARNING as OOD_WARNING
from engine.models.ood import OODDetector
from engine.results import artifacts

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 32 * 2**20
OOD_FILE = "ood.npz"
NO_OOD_CHECK = (
    "no out-of-distribution check for this model (it has no ood.npz): "
    "nothing says this image is like its training images"
)
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
    ood_score: float | None = None

    @property
    def unlike_training(self) -> bool:
        """The image is out of the training distribution: its prediction means nothing."""
        return self.ood_score is not None and not self.ood_score <= 1.0


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
    if not (data.startswith(UPLOAD_SIGNATURES) or is_dicom(data)):
        raise ImageError(f"{name}: not a PNG, JPEG or DICOM file (its content does not start like one)")


def _inside(path: Path, root: Path) -> bool:
    return root.resolve() in path.resolve().parents


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

    def predict_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) and heatmaps (N, S, S) in [0, 1] for uint8 images (N, S, S)."""
        proba, heatmaps, _ = self._predict(images)
        return proba, heatmaps

    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        raw = self.outputs(images)
        proba = raw["probabilities"].astype(np.float64)
        heatmaps = serving.heatmaps(raw["class_maps"], proba.argmax(axis=1), size=self.input_size)
        ratios = None if self.ood is None else self.ood.score(raw["features"]) / self.ood.threshold
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
            proba, heatmaps, ratios = self._predict(np.stack([results[i].image for i in ready]))
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
    graph = serving.serving_model([model])
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
