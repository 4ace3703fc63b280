"""XLA's persistent cache is a JAX matter; the same fold trains on JAX and its model serves on TensorFlow.

The suite runs on TensorFlow; the JAX side runs in a subprocess with ``KERAS_BACKEND=jax`` (the
backend is fixed when Keras is imported), so both branches of ``use_persistent_cache`` are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from engine.data.images import decode_xray
from engine.models.inference import load_classifier
from engine.results import artifacts
from engine.training.compilation import use_persistent_cache, xla_cache_dir
from tests.conftest import FAST_XLA_FLAGS
from tests.synthetic import make_dataset

PROJECT = Path(__file__).resolve().parent.parent

JAX_FOLD = """
import json, sys
from pathlib import Path
import jax, keras
from engine.training.compilation import MIN_COMPILE_SECONDS
from engine.training.presets import get_protocol
from engine.training.runner import run_study
from engine.training.study import StudyRequest

data, root = Path(sys.argv[1]), Path(sys.argv[2])
request = StudyRequest(protocol=get_protocol("paper").replace(epochs=1, batch_size=8), n_folds=2, weights=None)
study = run_study(data, backbones=["MobileNet-0.25"], request=request, input_size=32, artifacts_root=root)
print(json.dumps({
    "backend": keras.backend.backend(),
    "study_id": study.study_id,
    "cache_dir": jax.config.jax_compilation_cache_dir,
    "min_compile_s": jax.config.jax_persistent_cache_min_compile_time_secs,
    "expected_min_compile_s": MIN_COMPILE_SECONDS,
}))
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the suite runs on TensorFlow")
def test_tensorflow_backend_leaves_the_artifacts_folder_alone(tmp_path: Path) -> None:
    assert use_persistent_cache(tmp_path) is None
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_a_fold_trained_on_jax_uses_the_cache_and_its_model_serves_on_tensorflow(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_per_class=6)
    root = tmp_path / "artifacts"
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "CUDA_VISIBLE_DEVICES": "",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": FAST_XLA_FLAGS,
    }
    done = subprocess.run(
        [sys.executable, "-c", JAX_FOLD, str(data), str(root)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert report["cache_dir"] == str(xla_cache_dir(root))
    assert report["min_compile_s"] == report["expected_min_compile_s"]

    runs = artifacts.study_runs(report["study_id"], root)
    assert [(r.fold, r.config["backend"]) for r in runs] == [(0, "jax"), (1, "jax")]
    classifier = load_classifier(runs[0].model_path, artifacts_root=root)
    rows = artifacts.read_predictions(runs[0])
    images = np.stack([decode_xray((data / r["file"]).read_bytes(), size=32).pixels for r in rows])
    proba, _ = classifier.predict_arrays(images)
    saved = np.array([[float(r[f"p[{c}]"]) for c in classifier.classes] for r in rows])
    np.testing.assert_allclose(proba, saved, atol=1e-4)
