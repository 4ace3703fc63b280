"""Post-training int8 of the demo's best model (frozen MobileNet 1.0) on its 579 held-out real images, against the
export issue's bars; its held-out fold and the run's saved probabilities are read as ``test_export_real_models.py``
reads them. One test file per format (``test_export_int8_real_model_litert.py``, ``..._onnx.py``): the two
exports took 81 to 97 s together in one file, and apart they can run on both test workers at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from engine.models.export import (
    FLOAT_FIRST_CONVS,
    INT8_DEFAULTS,
    INT8_MIN_AGREEMENT,
    calibration_indices,
    export_model,
    study_images,
)
from engine.models.inference import load_keras_model
from engine.models.runtime import load_exported
from engine.results import artifacts
from tests.test_export_real_models import DEMO, FROZEN, PAPER_DATA, held_out

CORRECTED = {"litert": 20, "onnx": 24}
"""MobileNet 1.0's 27 convolutions less the float ones: each is followed by a BatchNorm that takes its shift."""
INT8_MAX_DROP = 0.005
"""The export issue's second int8 bar: accuracy on the held-out fold within 0.5 points (the first is
``INT8_MIN_AGREEMENT``)."""


@dataclass(frozen=True)
class FrozenFold:
    """What both formats' tests read: the frozen MobileNet, its held-out fold with the run's Keras probabilities,
    and the calibration images ``export_runs`` picks for it."""

    model: object
    images: np.ndarray
    labels: np.ndarray
    keras_proba: np.ndarray
    calibration: np.ndarray


@pytest.fixture(scope="module")
def frozen_fold() -> FrozenFold:
    """The frozen MobileNet's fold 3, read once per test file.

    The model is loaded as ``export_runs`` loads it (an export clones each member's backbone, so the int8 bias
    correction never reaches it). The Keras probabilities are the run's saved ``predictions.csv``, in the fold's
    order: the model still gives them (``test_committed_models_still_load_and_reproduce_their_predictions``), and
    reading them spares a Keras pass over 579 images at 224 px. The calibration images are the training folds',
    as ``export_runs`` picks them, so that the file is written as ``python -m engine export --quantize int8``
    writes it, without the OOD detector that the command then fits on the file's own features of 2,318 training
    images (24 s; the tiny ensemble's int8 test checks it).
    """
    images, labels, keras_proba = held_out(FROZEN)
    run = artifacts.read_run(FROZEN.parent)
    study = artifacts.read_study(run.study_id, DEMO)
    pool = study_images(study, DEMO, data=PAPER_DATA)
    calibration = pool[calibration_indices(study, [run.fold], count=INT8_DEFAULTS.calibration_images)]
    return FrozenFold(load_keras_model(FROZEN), images, labels, keras_proba, calibration)


def check_int8_export(fmt: str, tmp_path, fold: FrozenFold) -> None:
    """Post-training int8 of the demo's best model (frozen MobileNet 1.0) on its 579 held-out images, against
    the export issue's bars: 99 % argmax agreement, 0.5 points of accuracy.

    With every convolution int8, MobileNet v1 lost 2.4-2.9 points here (agreement 96.5-97.1 %), whatever
    the calibration count or range method. Each member's first convolutions stay float (``FLOAT_FIRST_CONVS``
    says how their number was chosen, without this fold), and the others' weight-rounding shift is corrected
    (``engine.models.bias_correction``). Measured here when the correction came in: LiteRT 99.3 % and
    0.17 points (without it 99.1 % and 0.52), ONNX 99.1 % and 0.17 points (99.5 % and none without); on the
    install of 2026-12-07 (ai-edge-litert 2.3.0, onnxruntime 1.32.0, TensorFlow 2.21.0): both 99.48 %, LiteRT
    0.00 points, ONNX -0.17 (one image more right than Keras). One fold is a coarse gauge: 0.5
    points of 579 images is under 3 images, and an ONNX file agreeing on 5 fewer images would miss 99 %; over
    the five folds of the same protocol retrained, 2,897 images, the README's int8 table gives both formats.
    """
    result = export_model(
        fold.model,
        out_dir=tmp_path,
        classes=tuple(artifacts.read_run(FROZEN.parent).config["classes"]),
        format=fmt,
        quantize="int8",
        calibration_images=fold.calibration,
    )
    assert result.meta["quantization"]["calibration_images"] == 128
    assert result.meta["quantization"]["float_layers"] == f"each member's first {FLOAT_FIRST_CONVS[fmt]} convolutions"
    assert result.meta["quantization"]["bias_correction"].startswith(f"{CORRECTED[fmt]} int8 convolutions")
    assert result.size_bytes < 0.3 * FROZEN.stat().st_size
    proba = probabilities(load_exported(result.path), fold.images)
    agreement = np.mean(proba.argmax(1) == fold.keras_proba.argmax(1))
    drop = np.mean(fold.keras_proba.argmax(1) == fold.labels) - np.mean(proba.argmax(1) == fold.labels)
    print(f"{fmt} int8: agreement {agreement:.4f}, accuracy drop {drop * 100:.2f} points")
    assert agreement >= INT8_MIN_AGREEMENT
    assert drop <= INT8_MAX_DROP


def probabilities(classifier, images: np.ndarray) -> np.ndarray:
    return np.concatenate([classifier.predict_arrays(images[i : i + 64])[0] for i in range(0, len(images), 64)])
