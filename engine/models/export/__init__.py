"""Export a trained model or a fold ensemble to one LiteRT or ONNX file that runs without TensorFlow.

The exported graph is :func:`engine.models.serving.serving_model` (input ``xray``, float32
(N, S, S, 1) in [0, 255]; outputs ``probabilities``, ``class_maps`` and ``features``), so
:mod:`engine.models.runtime` gives the Keras path's probabilities, Grad-CAM and features with no
Keras in the process. This module writes the file, its sidecar and its OOD detector; the parts
are modules of their own: ``graph`` (the members as one graph), ``writers`` (LiteRT, ONNX),
``parity`` (the file against Keras), ``lookup`` (a study's runs and images), ``options``.

``quantize="int8"`` is full-integer post-training quantization: int8 weights (per channel) and
int8 activations whose ranges come from ``calibration_images``, except each member's first
convolutions, which stay float; the input and the outputs stay float32. :class:`Int8Options`
says how many convolutions, which ranges and whether each int8 convolution's weight-rounding
shift is corrected beforehand (:mod:`engine.models.bias_correction`). Full-integer is the path
LiteRT's XNNPACK kernels run fastest: int8 weights with float activations ran slower than float.
Calibration images must be training images of every member, never a member's held-out fold:
:func:`calibration_indices` picks them.

Exporting needs the TensorFlow backend (the converters read a TensorFlow graph); running does not.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine import settings
from engine.models import serving
from engine.models.bias_correction import Correction
from engine.models.export.graph import Branch, export_graph, int8_graph
from engine.models.export.lookup import (
    calibration_indices,
    check_indices,
    ensemble_runs,
    finished_run,
    study_images,
    study_models,
    training_indices,
)
from engine.models.export.options import (
    ACTIVATIONS,
    CALIBRATION_CHUNK,
    CALIBRATION_IMAGES,
    FLOAT_FIRST_CONVS,
    INT8_DEFAULTS,
    ONNX_PERCENTILE,
    QUANTIZATIONS,
    Int8Options,
    check_options,
)
from engine.models.export.parity import CHECK_IMAGES, INT8_MIN_AGREEMENT, PARITY_BATCH, as_batch, parity
from engine.models.export.writers import (
    WRITERS,
    first_convolutions,
    first_litert_convolutions,
    litert_int8,
    quantize_onnx,
)
from engine.models.inference import OOD_FILE, ensemble_detector_path, fit_detector, load_keras_model
from engine.models.ood import OODDetector
from engine.models.runtime import (
    FORMATS,
    INPUT_NAME,
    RUNNERS,
    SIDECAR_SCHEMA,
    detector_path,
    file_sha256,
    load_exported,
    sidecar_path,
)
from engine.results import artifacts, atomic

__all__ = [
    "ACTIVATIONS",
    "CALIBRATION_CHUNK",
    "CALIBRATION_IMAGES",
    "CHECK_IMAGES",
    "FEATURE_TOLERANCE",
    "FLOAT_FIRST_CONVS",
    "INT8_DEFAULTS",
    "INT8_MIN_AGREEMENT",
    "ONNX_PERCENTILE",
    "PARITY_BATCH",
    "QUANTIZATIONS",
    "WRITERS",
    "Branch",
    "ExportResult",
    "Int8Options",
    "Member",
    "attach_detector",
    "calibration_indices",
    "check_indices",
    "check_options",
    "ensemble_runs",
    "export_graph",
    "export_model",
    "export_runs",
    "finished_run",
    "first_convolutions",
    "first_litert_convolutions",
    "int8_graph",
    "keras_detector_path",
    "litert_int8",
    "parity",
    "quantize_onnx",
    "study_images",
    "study_models",
    "training_indices",
    "write_int8",
]

FEATURE_TOLERANCE = 1e-4
"""Largest feature difference (relative to the largest feature) at which a float export keeps the Keras
model's OOD detector."""


@dataclass(frozen=True)
class Member:
    """Where one trained member of an export came from; recorded in the sidecar."""

    study_id: str | None
    backbone: str
    fold: int | None
    protocol: str | None


@dataclass(frozen=True)
class ExportResult:
    """The written file, its sidecar, and the sidecar's content."""

    path: Path
    sidecar: Path
    meta: dict

    @property
    def size_bytes(self) -> int:
        return int(self.meta["bytes"])


def export_model(
    members,
    *,
    out_dir: Path,
    classes: tuple[str, ...],
    format: str = "litert",
    quantize: str | None = None,
    calibration_images: np.ndarray | None = None,
    check_images: np.ndarray | None = None,
    sources: list[Member] | None = None,
    name: str = "model",
    int8: Int8Options = INT8_DEFAULTS,
) -> ExportResult:
    """Write ``out_dir/<name>[-int8].<tflite|onnx>`` and its sidecar for one model or a list of members.

    ``calibration_images`` (uint8 or float, (N, S, S) or (N, S, S, 1), values in [0, 255]) is
    required with ``quantize="int8"`` and refused without it; ``int8`` says how the int8 file is
    made. With ``check_images``, the file is run on them and its agreement with the Keras graph
    goes into the sidecar's ``parity``.
    """
    import keras

    check_options(format=format, quantize=quantize)
    members = list(members) if isinstance(members, list | tuple) else [members]
    graph = export_graph(members)
    size = int(graph.input_shape[1])
    if len(classes) != graph.output["probabilities"].shape[-1]:
        raise ValueError(f"classes must name the {graph.output['probabilities'].shape[-1]} outputs, got {classes!r}")
    calibration = _calibration(calibration_images, quantize=quantize, size=size)
    path = Path(out_dir) / f"{name}{'-int8' if quantize else ''}{FORMATS[format]}"
    started = time.perf_counter()
    correction = None
    if calibration is None:
        WRITERS[format](graph, path, None)
    else:
        correction = write_int8(members, path, calibration, format=format, options=int8)
    meta = {
        "schema_version": SIDECAR_SCHEMA,
        "file": path.name,
        "format": format,
        "quantization": _quantization(format, calibration, correction, int8),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "classes": list(classes),
        "input_size": size,
        "input": {"name": INPUT_NAME, "shape": [None, size, size, 1], "dtype": "float32", "range": [0, 255]},
        "outputs": {key: list(graph.output[key].shape) for key in serving.OUTPUTS},
        "members": [asdict(m) for m in sources or [Member(None, m.name, None, None) for m in members]],
        "versions": _versions(format, quantize),
        "export_seconds": round(time.perf_counter() - started, 1),
        "parity": None if check_images is None else parity(graph, RUNNERS[format](path, threads=None), check_images),
        "keras_backend": keras.backend.backend(),
    }
    side = sidecar_path(path)
    atomic.write_json(side, meta)
    return ExportResult(path=path, sidecar=side, meta=meta)


def write_int8(
    members: list, path: Path, calibration: np.ndarray, *, format: str, options: Int8Options = INT8_DEFAULTS
) -> Correction | None:
    """The int8 file of ``members`` at ``path``, made as ``options`` say: :func:`int8_graph`, then the format's
    writer. ``calibration`` is the float32 batch (N, S, S, 1). Returns the bias correction applied, if any."""
    graph, correction = int8_graph(members, calibration, format=format, options=options)
    WRITERS[format](graph, path, calibration, options)
    return correction


def _calibration(images: np.ndarray | None, *, quantize: str | None, size: int) -> np.ndarray | None:
    if quantize is None:
        if images is not None:
            raise ValueError("calibration_images is only used with quantize='int8', got quantize=None")
        return None
    if images is None or len(images) == 0:
        raise ValueError("quantize='int8' needs calibration_images: real training images of every member")
    return as_batch(images, size=size, name="calibration_images")


def _quantization(
    format: str, calibration: np.ndarray | None, correction: Correction | None, options: Int8Options
) -> dict | None:
    if calibration is None:
        return None
    return {
        "mode": "int8",
        "weights": "int8, per channel",
        "activations": options.activations(format),
        "float_layers": f"each member's first {options.float_first_convs[format]} convolutions",
        "bias_correction": (
            "none"
            if correction is None
            else f"{len(correction.corrected)} int8 convolutions' mean weight-rounding error on the calibration "
            f"images folded into their BatchNorm or bias ({len(correction.uncorrected)} without either)"
        ),
        "input_output": "float32",
        "calibration_images": len(calibration),
    }


def _versions(format: str, quantize: str | None) -> dict[str, str]:
    from importlib.metadata import version

    import keras
    import tensorflow as tf

    found = {"keras": keras.__version__, "tensorflow": tf.__version__}
    if format == "onnx":
        found["tf2onnx"] = version("tf2onnx")
        if quantize:
            found["onnxruntime"] = version("onnxruntime")
    return found


def attach_detector(result: ExportResult, training_images: np.ndarray, *, runs: list[artifacts.RunResult]) -> dict:
    """Give the exported file the OOD detector of its training images' features; name it in the sidecar.

    A float export computes the Keras model's features, so the detector the Keras model of ``runs``
    already saved (:func:`keras_detector_path`) is copied rather than fitted again when it is of
    these features and this many training images, is newer than every member's ``model.keras``, and
    the parity check, when it ran, found the features within :data:`FEATURE_TOLERANCE`. Otherwise,
    and always for an int8 file, it is fitted on the file's own.
    """
    detector = _reusable_detector(result, runs, n_fit=len(training_images))
    fitted_on = "the Keras model's features"
    if detector is None:
        detector, fitted_on = fit_detector(load_exported(result.path), training_images), "this file's own features"
    path = detector.save(detector_path(result.path))
    result.meta["ood"] = {
        "file": path.name,
        "sha256": file_sha256(path),
        "method": detector.method,
        "threshold": detector.threshold,
        "quantile": detector.quantile,
        "n_fit": detector.n_fit,
        "fitted_on": fitted_on,
    }
    atomic.write_json(result.sidecar, result.meta)
    return result.meta["ood"]


def _reusable_detector(result: ExportResult, runs: list[artifacts.RunResult], *, n_fit: int) -> OODDetector | None:
    """The Keras model's saved detector when :func:`attach_detector` may copy it, else None."""
    checked = result.meta["parity"]
    if result.meta["quantization"] is not None:
        return None
    if checked is not None and checked["features_max_rel_diff"] > FEATURE_TOLERANCE:
        return None
    path = keras_detector_path(runs)
    if not path.is_file() or path.stat().st_mtime_ns < max(r.model_path.stat().st_mtime_ns for r in runs):
        return None
    detector = OODDetector.load(path)
    dim = int(result.meta["outputs"]["features"][-1])
    return detector if (detector.dim, detector.n_fit) == (dim, n_fit) else None


def keras_detector_path(runs: list[artifacts.RunResult]) -> Path:
    """Where the Keras model of ``runs`` keeps its detector: the run's own, or its fold ensemble's."""
    if len(runs) == 1:
        return runs[0].path / OOD_FILE
    return ensemble_detector_path(runs[0].path.parent, [r.fold for r in runs])


def export_runs(
    model_paths: list[Path],
    *,
    format: str = "litert",
    quantize: str | None = None,
    out_dir: Path | None = None,
    artifacts_root: Path | None = None,
    data: Path | None = None,
    check_count: int | None = None,
    int8: Int8Options = INT8_DEFAULTS,
) -> ExportResult:
    """Export saved runs of one study and backbone (one run, or a fold ensemble) with their provenance.

    The study's images come from the artifacts folder's cache, or from ``data`` (its dataset
    folder). Calibration images are ``int8.calibration_images`` training images of every member;
    the parity check runs on ``check_count`` images the members held out (default:
    :data:`CHECK_IMAGES` of the precision; never calibration images); without images, a float
    export is written unchecked. Default ``out_dir``: ``export/`` beside the model (one run) or
    beside the fold folders (an ensemble).
    """
    check_options(format=format, quantize=quantize)
    root = artifacts_root or settings.artifacts_dir()
    runs = ensemble_runs(model_paths, root)
    members = [load_keras_model(r.model_path) for r in runs]
    study = artifacts.read_study(runs[0].study_id, root)
    images = study_images(study, root, data=data)
    folds = [r.fold for r in runs]
    calibration = None
    if quantize is not None:
        if images is None:
            info = study.dataset
            raise ValueError(
                f"int8 calibration needs the images of study {study.study_id}: dataset {info.name} "
                f"({info.fingerprint}) is not cached in {root}; pass its folder as data"
            )
        calibration = images[calibration_indices(study, folds, count=int8.calibration_images)]
    check_count = CHECK_IMAGES[quantize] if check_count is None else check_count
    check = None if images is None or not check_count else images[check_indices(study, folds, count=check_count)]
    result = export_model(
        members,
        out_dir=out_dir or (runs[0].path if len(runs) == 1 else runs[0].path.parent) / "export",
        classes=tuple(runs[0].config["classes"]),
        format=format,
        quantize=quantize,
        calibration_images=calibration,
        check_images=check,
        sources=[Member(r.study_id, r.backbone, r.fold, r.config["protocol"]["name"]) for r in runs],
        name=_name(runs),
        int8=int8,
    )
    if images is not None:
        attach_detector(result, images[training_indices(study, folds)], runs=runs)
    return result


def _name(runs: list[artifacts.RunResult]) -> str:
    folds = "-".join(str(r.fold) for r in runs)
    return f"{runs[0].backbone}-fold{'s' if len(runs) > 1 else ''}-{folds}"
