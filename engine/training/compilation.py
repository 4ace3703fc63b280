"""XLA's persistent compilation cache under the JAX backend, so the folds of a study compile once.

Each fold trains a fresh model, as scikit-learn fits a fresh estimator per split, and JAX compiles
the training step of every new model again. On an H200 (2026-11-27, ``benchmarks/gpu.py``) that took
31 s for ResNet50, and DenseNet121 had not finished after about 2 minutes, against about 12 s of
training for a whole ResNet50 fold. The programs of one backbone's folds are the same, so JAX's persistent cache
(keyed by a hash of the program) turns the next folds' compilations into a load from disk: on the
CPU, a fresh MobileNet's first training step went from 11.8 s to 3.9 s. TensorFlow on the CPU does
not compile with XLA, so there is nothing to cache there. Within one process, the next fold of a
single-stage protocol does not even trace its model again (``engine.training.compiled_models``); the cache
serves what that cannot: a new worker process, another Dask worker, a protocol's second stage.
"""

from __future__ import annotations

from pathlib import Path

MIN_COMPILE_SECONDS = 1.0


def xla_cache_dir(artifacts_root: Path) -> Path:
    return Path(artifacts_root) / "cache" / "xla"


def use_persistent_cache(artifacts_root: Path) -> Path | None:
    """Point JAX's compilation cache at ``<artifacts>/cache/xla``; ``None`` (nothing done) on other backends."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    path = xla_cache_dir(artifacts_root)
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
