"""Training speed of the 14 paper backbones (paper protocol, mixed precision) and the whole study's projected time.

Meant for a GPU machine: ``KERAS_BACKEND=jax python -m benchmarks gpu`` (``python -m benchmarks
gpu`` picks JAX itself when it is installed). Weights are ``None``: the speed is the same as with
ImageNet weights. A time budget keeps the run under 8 minutes; a backbone not reached in it is
listed as not measured and left out of the projection. ``--tiny`` runs 2 backbones at 32x32 for
a few steps, which is what the tests check on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.harness import Options, Result, stopwatch
from engine.backbones import PAPER_BACKBONES
from engine.protocols import PAPER
from engine.training import classifier

TRAIN_IMAGES_PER_FOLD = 2318
TEST_IMAGES_PER_FOLD = 579
FOLDS = 5
N_CLASSES = 3


@dataclass(frozen=True)
class Setting:
    backbones: tuple[str, ...]
    input_size: int
    batch_size: int
    steps: int
    budget_s: float


def setting(options: Options) -> Setting:
    if options.tiny:
        return Setting(("MobileNet", "MobileNetV2"), 32, 4, 2, 3600.0)
    return Setting(PAPER_BACKBONES, 224, PAPER.batch_size, options.limit or 10, 420.0)


def _measure(name: str, plan: Setting) -> tuple[float, float]:
    """Training and inference images per second, each after one untimed step that compiles."""
    import keras

    keras.backend.clear_session()
    model = classifier(name, n_classes=N_CLASSES, input_size=plan.input_size, weights=None, protocol=PAPER)
    model.compile(
        optimizer=keras.optimizers.Adam(PAPER.stages[0].learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    n = plan.steps * plan.batch_size
    x = rng.integers(0, 256, (n, plan.input_size, plan.input_size, 1), dtype=np.uint8)
    y = rng.integers(0, N_CLASSES, n)
    model.fit(x[: plan.batch_size], y[: plan.batch_size], batch_size=plan.batch_size, verbose=0)
    with stopwatch() as train_time:
        model.fit(x, y, batch_size=plan.batch_size, epochs=1, verbose=0)
    model.predict(x[: plan.batch_size], batch_size=plan.batch_size, verbose=0)
    with stopwatch() as eval_time:
        model.predict(x, batch_size=plan.batch_size, verbose=0)
    return n / train_time(), n / eval_time()


def run(options: Options) -> Result:
    import keras

    plan = setting(options)
    keras.mixed_precision.set_global_policy("mixed_float16")
    rows, skipped = [], []
    study_s = 0.0
    with stopwatch() as elapsed:
        for name in plan.backbones:
            if elapsed() > plan.budget_s:
                skipped.append(name)
                continue
            train_rate, eval_rate = _measure(name, plan)
            fold_s = PAPER.epochs * (TRAIN_IMAGES_PER_FOLD / train_rate + TEST_IMAGES_PER_FOLD / eval_rate)
            study_s += FOLDS * fold_s
            rows.append(
                {
                    "backbone": name,
                    "train images/s": train_rate,
                    "eval images/s": eval_rate,
                    "projected s per fold": fold_s,
                }
            )
    keras.mixed_precision.set_global_policy("float32")
    devices = _devices()
    notes = [
        f"backend {keras.backend.backend()}, devices {devices}, mixed_float16, batch {plan.batch_size}, "
        f"{plan.steps} timed steps per backbone after 1 compiling step"
    ]
    if skipped:
        notes.append(
            f"not measured within the {plan.budget_s:.0f} s budget (left out of the projection): {', '.join(skipped)}"
        )
    rates = [r["train images/s"] for r in rows]
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
            "backend": keras.backend.backend(),
            "devices": devices,
            "projection": f"{FOLDS} folds x {PAPER.epochs} epochs x "
            f"({TRAIN_IMAGES_PER_FOLD} train + {TEST_IMAGES_PER_FOLD} validation images)",
        },
        notes=notes,
    )


def _devices() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(str(d) for d in jax.devices())
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return ", ".join(d.device_type for d in tf.config.list_logical_devices())
    return keras.backend.backend()
