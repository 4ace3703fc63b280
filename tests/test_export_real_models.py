"""Float exports of the committed demo models against Keras on real held-out images, and the runtime without
TensorFlow (the int8 files' bars are in ``int8_real_model.py``).

Tolerances of the float exports, on 64 held-out real images of the committed demo models:
probabilities within 1e-4 (measured: about 1e-5), class maps within 1e-4 of their largest
magnitude (measured: about 1e-5), pooled features within 1e-4 relative, Grad-CAM heatmaps
(scaled to [0, 1]) within 1e-3.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import settings
from engine.models.export import export_runs, study_images
from engine.models.inference import load_classifier, load_keras_model
from engine.models.runtime import load_exported
from engine.results import artifacts
from tests.conftest import SHARED, requires_shared

DEMO = settings.PROJECT_ROOT / "artifacts"
FROZEN = DEMO / "studies" / "9da277b73bda" / "runs" / "MobileNet" / "fold-3" / "model.keras"
FINETUNED = DEMO / "studies" / "0c18372e7d3f" / "runs" / "MobileNet-0.25" / "fold-3" / "model.keras"
PAPER_DATA = SHARED / "data" / "covid19-radiography-paper"
FORMATS = ("litert", "onnx")
PARITY_IMAGES = 64


def held_out(model: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's held-out fold in the order of the study's fold indices: images, true labels, and the Keras
    probabilities its ``predictions.csv`` saved (whose files must be exactly the fold's)."""
    run = artifacts.read_run(model.parent)
    study = artifacts.read_study(run.study_id, DEMO)
    images = study_images(study, DEMO, data=PAPER_DATA)
    held = np.asarray(study.folds[run.fold])
    manifest = json.loads((DEMO / "datasets" / study.dataset.fingerprint / "manifest.json").read_text())
    with open(model.parent / "predictions.csv", newline="") as fh:
        rows = {row["file"]: row for row in csv.DictReader(fh)}
    files = [manifest["files"][i] for i in held]
    assert sorted(files) == sorted(rows)
    classes = run.config["classes"]
    labels = np.array([classes.index(rows[f]["true"]) for f in files])
    saved = np.array([[float(rows[f][f"p[{c}]"]) for c in classes] for f in files])
    return np.asarray(images[held]), labels, saved


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """``demo_export(model, fmt)``: the float export of a committed demo model, made once per module."""
    out, made = tmp_path_factory.mktemp("exports"), {}

    def get(model: Path, fmt: str) -> Path:
        if (model, fmt) not in made:
            made[model, fmt] = export_runs(
                [model], format=fmt, out_dir=out, artifacts_root=DEMO, data=PAPER_DATA, check_count=0
            ).path
        return made[model, fmt]

    return get


def check_float_parity(model: Path, exported_path: Path) -> None:
    images = held_out(model)[0][:PARITY_IMAGES]
    keras_path = load_classifier(model, artifacts_root=DEMO)
    exported = load_exported(exported_path)
    want, got = keras_path.outputs(images), exported.outputs(images)
    assert np.abs(got["probabilities"] - want["probabilities"]).max() <= 1e-4
    scale = np.abs(want["class_maps"]).max()
    assert np.abs(got["class_maps"] - want["class_maps"]).max() <= 1e-4 * scale
    np.testing.assert_allclose(got["features"], want["features"], rtol=1e-4, atol=1e-4 * want["features"].max())
    assert np.abs(exported.predict_arrays(images)[1] - keras_path.predict_arrays(images)[1]).max() <= 1e-3
    assert exported.classes == keras_path.classes and exported.input_size == 224
    assert exported.info["study_id"] == keras_path.info["study_id"] and exported.info["fold"] == 3


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("fmt", FORMATS)
def test_float_export_of_the_frozen_mobilenet_matches_keras_on_real_images(demo_export, fmt):
    check_float_parity(FROZEN, demo_export(FROZEN, fmt))


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("fmt", FORMATS)
def test_float_export_of_the_finetuned_mobilenet_025_matches_keras_on_real_images(demo_export, fmt):
    check_float_parity(FINETUNED, demo_export(FINETUNED, fmt))


@pytest.mark.slow
@requires_shared
def test_committed_models_still_load_and_reproduce_their_predictions():
    """The preprocessing layer's new ``xla`` switch leaves saved models and their outputs as they were."""
    for model in (FROZEN, FINETUNED):
        images, _, saved = (part[:PARITY_IMAGES] for part in held_out(model))
        got = load_keras_model(model).predict_on_batch(images.astype(np.float32)[..., None])
        assert np.abs(got - saved).max() <= 1e-5


NO_TENSORFLOW = """
import json, sys
from engine.models.runtime import load_exported
classifier = load_exported(sys.argv[1])
files = sys.argv[2:]
predictions = classifier.classify([(f, open(f, "rb").read()) for f in files])
print(json.dumps({
    "probabilities": [p.probabilities for p in predictions],
    "errors": [p.error for p in predictions],
    "heatmaps": [list(p.heatmap.shape) for p in predictions],
    "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules),
}))
"""


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("fmt", FORMATS)
def test_runtime_classifies_real_uploads_without_tensorflow(demo_export, fmt):
    files = sorted(PAPER_DATA.glob("*/*.png"))[::400][:8]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, str(demo_export(FROZEN, fmt)), *map(str, files)],
        cwd=settings.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [] and got["errors"] == [None] * len(files)
    assert got["heatmaps"] == [[224, 224]] * len(files)
    want = load_classifier(FROZEN, artifacts_root=DEMO).classify([(str(f), f.read_bytes()) for f in files])
    for mine, theirs in zip(got["probabilities"], want, strict=True):
        assert max(abs(mine[c] - theirs.probabilities[c]) for c in mine) <= 1e-4
