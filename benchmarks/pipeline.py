"""Images per second delivered to the model with the paper's augmentation, four ways, same images.

(a) the paper's way: ``ImageDataGenerator.flow_from_directory`` reading PNGs from disk;
(b) the engine: batches read from the cached uint8 memory map (``engine.training.batches.ImageBatches``) through
``XRayAugment`` + ``ImageNetPreprocess`` in one compiled function (what ``model.fit`` runs before
the backbone; each layer is its own XLA cluster under TensorFlow), and (b') both layers compiled
as one XLA cluster;
(c) four separate Keras augmentation layers on 3 channels; (d) the same layers on 1 channel.
The methods run in interleaved rounds, so a change of machine load hits all of them alike.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.harness import Options, Result, stopwatch
from benchmarks.reference import directory_iterator
from engine.data.datasets import import_dataset
from engine.models.backbones import get_backbone
from engine.training.protocols import Augmentation

BACKBONE = "MobileNet"


@dataclass(frozen=True)
class Setting:
    batch_size: int
    batches: int
    rounds: int


def setting(options: Options) -> Setting:
    if options.tiny:
        return Setting(batch_size=8, batches=2, rounds=1)
    return Setting(batch_size=32, batches=options.limit // 32 if options.limit else 10, rounds=2)


def _keras_layers(rotation_factor: float):
    import keras

    return [
        keras.layers.RandomRotation(rotation_factor, fill_mode="nearest"),
        keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest"),
        keras.layers.RandomZoom((-0.1, 0.1), (-0.1, 0.1), fill_mode="nearest"),
        keras.layers.RandomFlip("horizontal_and_vertical"),
    ]


def compiled_transforms(mode: str) -> dict[str, object]:
    """Each in-graph method as a compiled function from a uint8 (B, S, S, 1) batch to the model input."""
    import keras
    import tensorflow as tf

    from engine.models.layers import ImageNetPreprocess, XRayAugment

    augment = XRayAugment(**Augmentation().in_graph())
    preprocess = ImageNetPreprocess(mode)
    rgb_layers = _keras_layers(50 / 360)
    gray_layers = _keras_layers(50 / 360)

    def engine(x):
        return preprocess(augment(x, training=True))

    def layers_rgb(x):
        x = keras.ops.repeat(tf.cast(x, "float32"), 3, axis=-1)
        for layer in rgb_layers:
            x = layer(x, training=True)
        return x / 127.5 - 1.0

    def layers_gray(x):
        x = tf.cast(x, "float32")
        for layer in gray_layers:
            x = layer(x, training=True)
        return preprocess(x)

    return {
        "engine": tf.function(engine),
        "engine_xla": tf.function(engine, jit_compile=True),
        "layers_rgb": tf.function(layers_rgb),
        "layers_gray": tf.function(layers_gray),
    }


def _engine_batches(images: np.ndarray, batch_size: int, seed: int):
    """Shuffled batches read from the dataset's memory map, as ``engine.training.fold.train_fold`` "
    "feeds ``model.fit``."""
    from engine.training.batches import ImageBatches

    labels = np.zeros(len(images), dtype=np.int64)
    whole = (len(images) // batch_size) * batch_size
    batches = ImageBatches(images, labels, np.arange(whole), batch_size=batch_size, seed=seed)
    while True:
        for index in range(len(batches)):
            yield batches[index][0]
        batches.on_epoch_end()


def _time_graph(fn, batches, count: int) -> float:
    with stopwatch() as elapsed:
        for _ in range(count):
            out = fn(next(batches))
            float(out[0, 0, 0, 0])
    return elapsed()


def _time_reference(iterator, count: int) -> float:
    with stopwatch() as elapsed:
        for _ in range(count):
            x, _y = next(iterator)
            float(x[0, 0, 0, 0])
    return elapsed()


LABELS = {
    "reference": "(a) ImageDataGenerator.flow_from_directory, PNGs from disk",
    "engine": "(b) engine: ImageBatches from the uint8 memory map, XRayAugment + ImageNetPreprocess, compiled",
    "engine_xla": "(b') both layers as one XLA cluster",
    "layers_rgb": "(c) 4 Keras augmentation layers, 3 channels",
    "layers_gray": "(d) 4 Keras augmentation layers, 1 channel",
}


def run(options: Options) -> Result:
    plan = setting(options)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = options.artifacts or Path(tmp)
        with stopwatch() as import_time:
            dataset = import_dataset(options.data, input_size=options.input_size, artifacts_root=root)
        return _measure(options, plan, dataset, import_time())


def _measure(options: Options, plan: Setting, dataset, import_s: float) -> Result:
    import keras

    size = options.input_size
    mode = get_backbone(BACKBONE).preprocess_mode
    preprocess = keras.applications.mobilenet.preprocess_input
    reference = directory_iterator(options.data, input_size=size, batch_size=plan.batch_size, preprocess=preprocess)
    functions = compiled_transforms(mode)
    feeds = {name: _engine_batches(dataset.images, plan.batch_size, seed=i) for i, name in enumerate(functions)}
    notes: list[str] = []
    for name, fn in list(functions.items()):
        try:
            _time_graph(fn, feeds[name], 2)
        except Exception as exc:  # XLA may not compile every op on every platform
            notes.append(f"{name} failed to compile: {str(exc).splitlines()[0][:200]}")
            del functions[name]
    _time_reference(reference, 1)
    seconds = dict.fromkeys(["reference", *functions], 0.0)
    for _ in range(plan.rounds):
        seconds["reference"] += _time_reference(reference, plan.batches)
        for name, fn in functions.items():
            seconds[name] += _time_graph(fn, feeds[name], plan.batches)
    n_images = plan.rounds * plan.batches * plan.batch_size
    rate = {name: n_images / s for name, s in seconds.items()}
    table = [{"method": LABELS[name], "images/s": r, "x reference": r / rate["reference"]} for name, r in rate.items()]
    figures = {
        "pipeline_speedup": rate["engine"] / rate["reference"],
        "reference_images_per_s": rate["reference"],
        "engine_images_per_s": rate["engine"],
        "keras_layers_rgb_images_per_s": rate["layers_rgb"],
        "keras_layers_gray_images_per_s": rate["layers_gray"],
        "import_s": import_s,
    }
    if "engine_xla" in rate:
        figures["engine_xla_images_per_s"] = rate["engine_xla"]
    notes.append(
        f"{len(dataset)} images at {size}x{size}, batch {plan.batch_size}, {plan.rounds} interleaved rounds of "
        f"{plan.batches} batches per method ({n_images} images each); the engine's one-off import took "
        f"{import_s:.1f} s"
    )
    return Result(
        name="pipeline",
        figures={k: round(v, 3) for k, v in figures.items() if math.isfinite(v)},
        table=table,
        settings={**asdict(plan), "input_size": size, "images": len(dataset), "preprocess_mode": mode},
        notes=notes,
    )
