"""Training speed of the 14 paper backbones (paper protocol, mixed precision) and the whole study's projected time.

Meant for a GPU machine: ``KERAS_BACKEND=jax python -m benchmarks gpu`` (``python -m benchmarks
gpu`` picks JAX itself when it is installed). Weights are ``None``: the speed is the same as with
ImageNet weights. XLA compiling a large network's training step takes longer than training it
for a few steps, so backbones are built and compiled in several processes at once, deepest graphs
first (the longest compilations start first); only the timed steps are taken one process at a
time (a shared lock), so that no two measurements overlap. A time budget keeps the run under 8
minutes: each worker sends its row as soon as its steps are timed, then measures the next folds'
compilation; what has not arrived by the deadline is listed as such, and each message is printed
as it comes, so that even a run killed from outside leaves its measurements behind. ``--tiny``
runs MobileNet-0.25 at 32x32 for a few steps, which is what the tests check on the CPU.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from benchmarks.harness import Options, Result, stopwatch
from engine.models.backbones import PAPER_BACKBONES
from engine.training.presets import PAPER

TRAIN_IMAGES_PER_FOLD = 2318
TEST_IMAGES_PER_FOLD = 579
FOLDS = 5
N_CLASSES = 3
POLICY = "mixed_float16"
NEXT_COMPILE = "next folds' compile s"
WORKER_RUNTIME = ("backend", "devices")
# Depth of each network as the Keras applications table gives it: the compile order, deepest first.
KERAS_DEPTH = {
    "NASNetLarge": 533,
    "InceptionResNetV2": 449,
    "DenseNet201": 402,
    "NASNetMobile": 389,
    "DenseNet169": 338,
    "DenseNet121": 242,
    "InceptionV3": 189,
    "ResNet50": 107,
    "MobileNetV2": 105,
    "ResNet50V2": 103,
    "Xception": 81,
    "MobileNet": 55,
    "VGG19": 19,
    "VGG16": 16,
}


@dataclass(frozen=True)
class Setting:
    backbones: tuple[str, ...]
    input_size: int
    batch_size: int
    steps: int
    budget_s: float
    processes: int


def setting(options: Options) -> Setting:
    if options.tiny:
        return Setting(("MobileNet-0.25",), 32, 4, 2, 3600.0, 1)
    ordered = sorted(PAPER_BACKBONES, key=lambda name: -KERAS_DEPTH[name])
    return Setting(tuple(ordered), 224, PAPER.batch_size, options.limit or 64, 420.0, 8)


_timing_lock = None
_messages = None


def _share(lock, messages) -> None:
    global _timing_lock, _messages
    _timing_lock, _messages = lock, messages


def _measure_or_report(name: str, plan: Setting, cache_dir: str) -> None:
    """Send one backbone's messages; a failure (out of device memory, say) is sent as its error, not fatal."""
    try:
        _measure(name, plan, Path(cache_dir))
    except Exception as error:  # noqa: BLE001 - reported in the backbone's row
        _messages.put({"backbone": name, "error": f"{type(error).__name__}: {error}"[:300]})


def _compiled_model(name: str, plan: Setting, x: np.ndarray, y: np.ndarray):
    """A fold's model as ``train_fold`` gets one, after its first training step and first prediction.

    The first time, a fresh model compiled; after that, the fresh model's state in the compiled
    model kept from the last time (``engine.training.compiled_models``).
    """
    from engine.training.fitting import compiled_model, program_key
    from engine.training.fold import classifier

    key = program_key(PAPER, backbone=name, n_classes=N_CLASSES, input_size=plan.input_size)
    fresh = classifier(name, n_classes=N_CLASSES, input_size=plan.input_size, weights=None, protocol=PAPER, seed=0)
    with compiled_model(fresh, PAPER, key, steps_per_epoch=plan.steps) as model:
        model.fit(x[: plan.batch_size], y[: plan.batch_size], batch_size=plan.batch_size, verbose=0)
        model.predict(x[: plan.batch_size], batch_size=plan.batch_size, verbose=0)
    return model


def _measure(name: str, plan: Setting, cache_dir: Path) -> None:
    """In a worker process: compile (first fold), time training and prediction holding the lock, then a next fold.

    The next fold is what folds 2 to 5 pay: a fresh model built and its state put into the
    compiled model of the fold before (``engine.training.compiled_models``).
    """
    import keras

    from engine.training.compilation import use_persistent_cache

    use_persistent_cache(cache_dir)
    keras.mixed_precision.set_global_policy(POLICY)
    rng = np.random.default_rng(0)
    n = plan.steps * plan.batch_size
    x = rng.integers(0, 256, (n, plan.input_size, plan.input_size, 1), dtype=np.uint8)
    y = rng.integers(0, N_CLASSES, n)
    with stopwatch() as compile_time:
        model = _compiled_model(name, plan, x, y)
    with _timing_lock:
        with stopwatch() as train_time:
            model.fit(x, y, batch_size=plan.batch_size, epochs=1, verbose=0)
        with stopwatch() as eval_time:
            model.predict(x, batch_size=plan.batch_size, verbose=0)
    _messages.put(
        {
            "backbone": name,
            "backend": keras.backend.backend(),
            "devices": _devices(),
            "parameters": model.count_params(),
            "train images/s": n / train_time(),
            "eval images/s": n / eval_time(),
            "compile s": compile_time(),
        }
    )
    with stopwatch() as recompile_time:
        _compiled_model(name, plan, x, y)
    _messages.put({"backbone": name, NEXT_COMPILE: recompile_time()})


def _epoch_seconds(row: dict[str, object]) -> float:
    return TRAIN_IMAGES_PER_FOLD / row["train images/s"] + TEST_IMAGES_PER_FOLD / row["eval images/s"]


def _fold_seconds(row: dict[str, object], *, first: bool) -> float:
    """One fold as the engine runs it: a fresh model compiled, then 10 epochs of training and validation."""
    compile_s = row["compile s"] if first else row.get(NEXT_COMPILE, row["compile s"])
    return compile_s + PAPER.epochs * _epoch_seconds(row)


def projection(rows: list[dict[str, object]]) -> dict[str, float]:
    """The projected study's seconds in three parts, from measured rows; the projection is their sum.

    A backbone whose next folds' compilation was not measured counts its first compilation for them.
    """
    return {
        "training and validation": sum(FOLDS * PAPER.epochs * _epoch_seconds(row) for row in rows),
        "first folds' compilation": sum(row["compile s"] for row in rows),
        "next folds' compilation": sum((FOLDS - 1) * row.get(NEXT_COMPILE, row["compile s"]) for row in rows),
    }


@contextlib.contextmanager
def _workers_environment() -> Iterator[None]:
    """The spawned workers' backend (JAX where installed, unless ``KERAS_BACKEND`` says otherwise) and no
    preallocation of the GPU's memory, set while the pool lives and restored after it: a caller that runs
    this in-process (the tests) keeps its own settings for what it starts later.
    """
    wanted = {
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND") or ("jax" if find_spec("jax") else "tensorflow"),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false"),
    }
    before = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_pool(plan: Setting, cache_dir: Path) -> dict[str, dict]:
    """What each backbone's worker sent before the deadline (merged per backbone), printed as it comes."""
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    deadline = started + plan.budget_s
    messages = context.Queue()
    outcomes: dict[str, dict] = {}
    finished: set[str] = set()
    with (
        _workers_environment(),
        context.Pool(plan.processes, initializer=_share, initargs=(context.Lock(), messages)) as pool,
    ):
        for name in plan.backbones:
            pool.apply_async(_measure_or_report, (name, plan, str(cache_dir)))
        while len(finished) < len(plan.backbones) and time.monotonic() < deadline:
            try:
                message = messages.get(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                continue
            print(f"{time.monotonic() - started:.0f} s, measured: {message}", flush=True)
            outcomes.setdefault(message["backbone"], {}).update(message)
            if "error" in message or NEXT_COMPILE in message:
                finished.add(message["backbone"])
        pool.terminate()
    return outcomes


def run(options: Options) -> Result:
    plan = setting(options)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as cache_dir:
        outcomes = _run_pool(plan, Path(cache_dir))
    measured = [outcomes[name] for name in plan.backbones if "train images/s" in outcomes.get(name, {})]
    runtime = {key: measured[0][key] for key in WORKER_RUNTIME} if measured else {}
    rows = [
        {
            **{k: v for k, v in row.items() if k not in ("error", *WORKER_RUNTIME)},
            "first fold s (projected)": _fold_seconds(row, first=True),
        }
        for row in measured
    ]
    unfinished = [name for name in plan.backbones if name not in outcomes]
    failed = [f"{name} ({row['error']})" for name, row in outcomes.items() if "train images/s" not in row]
    no_recompile = [
        row["backbone"] + (f" (failed: {row['error']})" if "error" in row else "")
        for row in measured
        if NEXT_COMPILE not in row
    ]
    study_s = sum(projection(rows).values())
    notes = [
        f"backend {runtime.get('backend')}, devices {runtime.get('devices')} (as the workers saw them), "
        f"{POLICY}, batch {plan.batch_size}, "
        f"{plan.steps} timed training steps per backbone after 1 compiling step; "
        f"compiled in {plan.processes} worker process(es) at once, deepest first, timed one at a time",
        "'compile s' (build, first training step, first prediction) was measured while other processes compiled, "
        "which makes it longer than alone; the projection counts it for each backbone's first fold and "
        '"next folds\' compile s" (a fresh model built, its state put into the compiled model of the fold '
        "before, as train_fold does) for the other four",
        "while one process timed its steps, the others went on compiling, and XLA's autotuning runs trial "
        "kernels on the same GPU: that can only slow the timed steps down",
    ]
    if no_recompile:
        notes.append(
            f"next folds' compilation not measured within the budget for {', '.join(no_recompile)}: "
            "the projection counts their first compilation for all 5 folds (an upper bound)"
        )
    if unfinished:
        notes.append(
            f"not finished within the {plan.budget_s:.0f} s budget, left out of the projection: {', '.join(unfinished)}"
        )
    if failed:
        notes.append(f"failed (left out of the projection): {'; '.join(failed)}")
    if not rows:
        raise RuntimeError(f"no backbone was measured; {notes[-1]}")
    rates = [row["train images/s"] for row in rows]
    return Result(
        name="gpu",
        figures={
            "gpu_study_projected_h": round(study_s / 3600.0, 4),
            "gpu_backbones_measured": len(rows),
            "gpu_median_train_images_per_s": round(float(np.median(rates)), 2),
        },
        table=rows,
        settings={
            "backbones": list(plan.backbones),
            "input_size": plan.input_size,
            "batch_size": plan.batch_size,
            "steps": plan.steps,
            "budget_s": plan.budget_s,
            "processes": plan.processes,
            "policy": POLICY,
            **runtime,
            "next_folds": "the fold before's compiled model in the fresh model's state "
            "(engine.training.compiled_models)",
            "projection": f"per backbone, 1 fold x compile + {FOLDS - 1} folds x next folds' compile, and "
            f"{FOLDS} folds x {PAPER.epochs} epochs x "
            f"({TRAIN_IMAGES_PER_FOLD} train + {TEST_IMAGES_PER_FOLD} validation images)",
        },
        notes=notes,
    )


def _devices() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(f"{d.device_kind} ({d.platform})" for d in jax.devices())
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return ", ".join(d.device_type for d in tf.config.list_logical_devices())
    return keras.backend.backend()
