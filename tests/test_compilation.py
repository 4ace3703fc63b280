"""XLA's persistent cache is a JAX matter: under TensorFlow nothing is configured or written."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from engine.training.compilation import use_persistent_cache


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="checks the TensorFlow side")
def test_tensorflow_backend_leaves_the_artifacts_folder_alone(tmp_path: Path) -> None:
    assert use_persistent_cache(tmp_path) is None
    assert not (tmp_path / "cache").exists()
