"""The last fold's compiled model, reused by the next fold of the same program in this process.

Every fold starts from a fresh model, as scikit-learn fits a fresh estimator per split, but a
fresh model is also a new program: Keras traces its training step again (15 to 20 s for
MobileNet-0.25 on 2 CPU cores, most of a small fold) and JAX compiles it again (on an H200, 1 to
102 s per fold even with XLA's persistent cache, ``docs/benchmarks.md``). So the fold's model is
still built fresh and seeded, which is cheap, but when the last fold in this process compiled
the same program (backbone, classes, input size, protocol, backend, dtype policy), that
compiled model takes the fresh model's state: every variable (weights, and the augmentation's
seed state) from the fresh model, and the optimizer's variables from their values right after
it was built. The steps that follow are the fresh model's steps from the same values, which
``tests/test_training.py`` checks on the history and the predictions.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

_lock = threading.Lock()
_last: dict[str, Any] = {}


def program_key(*, backbone: str, n_classes: int, input_size: int, protocol: dict) -> str:
    """What decides the compiled training step, as one string."""
    import keras

    return json.dumps(
        {
            "backbone": backbone,
            "n_classes": n_classes,
            "input_size": input_size,
            "protocol": protocol,
            "backend": keras.backend.backend(),
            "policy": keras.mixed_precision.global_policy().name,
        },
        sort_keys=True,
    )


def forget() -> None:
    """Drop the kept model (its memory goes with it); the next fold compiles its own."""
    release_other_than(None)


def release_other_than(key: str | None) -> None:
    """Drop the kept model unless it is ``key``'s, before a fold builds its own.

    Keras models hold reference cycles, so the memory (host or device) comes back only after a
    collection: without it, a new backbone's model would be built beside the old one. A kept
    model in use by another thread stays.
    """
    if not _lock.acquire(blocking=False):
        return
    try:
        if _last and _last.get("key") != key:
            _last.clear()
            gc.collect()
    finally:
        _lock.release()


@contextmanager
def compiled_for(fresh: Any, *, key: str | None, compile_model: Callable[[Any], None]) -> Iterator[Any]:
    """A compiled model in ``fresh``'s state: the last fold's, when ``key`` is its key, else ``fresh`` compiled.

    ``compile_model`` compiles a model and builds its optimizer. ``key=None`` never reuses. The
    threads of one process (a Dask worker's) never share the kept model: a thread that finds it in
    use compiles its own. A fold that raises drops it, so a failure never leaves state behind.
    """
    import keras

    if key is None or not _lock.acquire(blocking=False):
        compile_model(fresh)
        yield fresh
        return
    try:
        if _last.get("key") == key:
            model = _last["model"]
            _check_same_variables(model.variables, fresh.variables)
            _assign(model.variables, [v.value for v in fresh.variables], what="model")
            _assign(model.optimizer.variables, _last["optimizer_state"], what="optimizer")
        else:
            _last.clear()
            compile_model(fresh)
            model = fresh
            state = [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.optimizer.variables]
            _last.update(key=key, model=model, optimizer_state=state)
        yield model
    except BaseException:
        _last.clear()
        raise
    finally:
        _lock.release()


def _assign(variables: list, values: list, *, what: str) -> None:
    if len(variables) != len(values) or any(
        tuple(v.shape) != tuple(np.shape(value)) for v, value in zip(variables, values, strict=True)
    ):
        raise ValueError(f"the kept {what} does not match the fold's ({len(variables)} vs {len(values)} variables)")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def _check_same_variables(kept: list, fresh: list) -> None:
    """Same names, shapes and dtypes in the same order (BatchNorm's four vectors share a shape)."""
    signature = lambda v: (v.name, tuple(v.shape), str(v.dtype))  # noqa: E731
    if [signature(v) for v in kept] != [signature(v) for v in fresh]:
        raise ValueError("the kept model's variables are not the fresh model's (names, shapes or dtypes differ)")
