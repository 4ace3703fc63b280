"""Run an exported model (LiteRT or ONNX) without TensorFlow or Keras in the process.

A hosted demo classifies with :func:`load_exported`: the file written by
``engine.models.export`` runs in ``ai_edge_litert`` or ``onnxruntime``, and the checks, decoding and
Grad-CAM steps are the Keras path's own (``engine.models.inference``, ``engine.models.serving``),
which import Keras only when a ``.keras`` model is loaded. Nothing here imports TensorFlow or Keras,
directly or through the engine; a test checks ``sys.modules`` in a fresh process.

Each exported file has a JSON sidecar beside it (``<file>.json``, see :func:`sidecar_path`): the
classes, the input size, the output names, the format and quantization, the trained members it
came from, and the file's SHA-256, checked before the file is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from engine.models import serving
from engine.models.inference import Classifier, load_detector
from engine.results.atomic import file_sha256

log = logging.getLogger(__name__)

SIDECAR_SCHEMA = 1
FORMATS = {"litert": ".tflite", "onnx": ".onnx"}
INPUT_NAME = "xray"
SIDECAR_KEYS = ("format", "quantization", "sha256", "classes", "input_size", "input", "outputs", "members")


def sidecar_path(path: Path) -> Path:
    """``model.tflite`` -> ``model.tflite.json``: one sidecar per file, whatever formats share a folder."""
    return path.with_name(path.name + ".json")


def format_of(path: Path) -> str:
    """The runtime format a file's suffix names; a ValueError names the file otherwise."""
    for name, suffix in FORMATS.items():
        if path.suffix.lower() == suffix:
            return name
    known = ", ".join(f"{s} ({n})" for n, s in FORMATS.items())
    raise ValueError(f"unknown exported model format: path={str(path)!r} (expected {known})")


def read_sidecar(path: Path) -> dict:
    """The sidecar of exported file ``path``, checked against the file (format, SHA-256)."""
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path.name} has no sidecar {side.name} beside it; export it again") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{side}: not a readable export sidecar ({exc})") from None
    if not isinstance(meta, dict) or meta.get("schema_version") != SIDECAR_SCHEMA:
        raise ValueError(f"{side}: not an export sidecar of schema version {SIDECAR_SCHEMA}")
    missing = [key for key in SIDECAR_KEYS if key not in meta]
    if missing:
        raise ValueError(f"{side}: an export sidecar without {', '.join(missing)}")
    if sorted(meta["outputs"]) != sorted(serving.OUTPUTS):
        raise ValueError(f"{side}: outputs {sorted(meta['outputs'])}, not the serving graph's {list(serving.OUTPUTS)}")
    if meta.get("format") != format_of(path):
        raise ValueError(f"{side} describes a {meta.get('format')!r} file, but {path.name} is {format_of(path)!r}")
    if meta.get("sha256") != file_sha256(path):
        raise ValueError(f"{path.name} does not match the SHA-256 in {side.name}: the file changed after export")
    return meta


class LiteRTRunner:
    """A ``.tflite`` file's serving signature; inputs of any batch size (the signature resizes)."""

    def __init__(self, path: Path, *, threads: int | None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
            self._runner = interpreter.get_signature_runner()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{path.name}: not a LiteRT model ({str(exc).splitlines()[0]})") from None

    def predict_on_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._runner(**{INPUT_NAME: batch})


class OnnxRunner:
    """An ``.onnx`` file in onnxruntime on the CPU."""

    def __init__(self, path: Path, *, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind11 exception types
            raise ValueError(f"{path.name}: not an ONNX model ({str(exc).splitlines()[0]})") from None
        self._names = list(serving.OUTPUTS)

    def predict_on_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(self._names, {INPUT_NAME: batch})
        return dict(zip(self._names, values, strict=True))


RUNNERS = {"litert": LiteRTRunner, "onnx": OnnxRunner}


class ExportedClassifier(Classifier):
    """:class:`~engine.models.inference.Classifier` on an exported file: same checks, outputs and Grad-CAM.

    ``model`` is a runner whose ``predict_on_batch`` returns the serving graph's outputs, so
    ``outputs``, ``predict_arrays`` and ``classify`` (and their lock) are the Keras path's own.
    """

    def __init__(self, runner, *, path: Path, meta: dict, ood=None) -> None:
        members = meta["members"]
        folds = [m["fold"] for m in members]
        info = {
            "backbone": members[0]["backbone"],
            "study_id": members[0]["study_id"],
            "protocol": members[0]["protocol"],
            "fold": folds[0] if len(folds) == 1 else None,
            "folds": folds,
            "format": meta["format"],
            "quantization": meta["quantization"],
        }
        super().__init__(runner, classes=tuple(meta["classes"]), input_size=int(meta["input_size"]), info=info, ood=ood)
        self.path = path
        self.meta = meta


def load_exported(path: str | Path, *, threads: int | None = None) -> ExportedClassifier:
    """Load an exported ``.tflite`` or ``.onnx`` file and its sidecar; ``threads`` defaults to every core."""
    path = Path(path)
    kind = format_of(path)
    if not path.is_file():
        raise ValueError(f"exported model not found: path={str(path)!r}")
    started = time.perf_counter()
    meta = read_sidecar(path)
    ood = load_detector(detector_path(path), dim=int(meta["outputs"]["features"][-1]))
    classifier = ExportedClassifier(RUNNERS[kind](path, threads=threads), path=path, meta=meta, ood=ood)
    log.info("loaded exported model %s in %.1f s", path, time.perf_counter() - started)
    return classifier


def detector_path(path: Path) -> Path:
    """``model.tflite`` -> ``model.tflite.ood.npz``: the OOD detector of this file's features."""
    return path.with_name(path.name + ".ood.npz")
