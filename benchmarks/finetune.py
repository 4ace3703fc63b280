"""One paper-protocol epoch of MobileNet alpha 0.25: the paper's input path against the engine's.

Same network, same weights, same optimizer and batch size on both sides; only the input path
differs. ``--limit N`` trains on N images (a multiple of the batch size) instead of a whole
training fold (80 % of the set), so the benchmark fits in a few minutes on a small CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import Options, Result, stopwatch
from benchmarks.reference import batches_of, directory_iterator, reference_model
from engine.backbones import get_backbone
from engine.datasets import import_dataset
from engine.protocols import PAPER
from engine.training import classifier

BACKBONE = "MobileNet-0.25"


def _compile(model, *, jit_compile: bool | str = "auto") -> None:
    import keras

    stage = PAPER.stages[0]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=stage.learning_rate, beta_1=PAPER.beta_1, beta_2=PAPER.beta_2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def _images_per_epoch(options: Options, n_images: int, batch_size: int) -> int:
    wanted = options.limit or (4 * batch_size if options.tiny else int(0.8 * n_images))
    return max(batch_size, min(wanted, n_images) // batch_size * batch_size)


def run(options: Options) -> Result:
    import keras

    batch_size = 8 if options.tiny else PAPER.batch_size
    size = options.input_size
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        dataset = import_dataset(options.data, input_size=size, artifacts=options.artifacts or Path(tmp))
        n = _images_per_epoch(options, len(dataset), batch_size)
        chosen = np.sort(np.random.default_rng(0).choice(len(dataset), n, replace=False))
        x = np.array(dataset.images[chosen])[..., None]
        y = dataset.labels[chosen]
    n_classes = len(dataset.classes)
    batches = n // batch_size

    keras.utils.set_random_seed(0)
    spec = get_backbone(BACKBONE)
    iterator = directory_iterator(
        options.data, input_size=size, batch_size=batch_size, preprocess=spec.preprocess_input
    )
    reference = reference_model(BACKBONE, n_classes=n_classes, input_size=size, weights=options.weights)
    _compile(reference)
    reference.fit(batches_of(iterator, batches=1), epochs=1, verbose=0)
    with stopwatch() as reference_time:
        reference.fit(batches_of(iterator, batches=batches), epochs=1, verbose=0)

    engine = classifier(BACKBONE, n_classes=n_classes, input_size=size, weights=options.weights, protocol=PAPER)
    _compile(engine)
    engine.fit(x[:batch_size], y[:batch_size], batch_size=batch_size, epochs=1, verbose=0)
    with stopwatch() as engine_time:
        engine.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)

    rows = [
        {"side": "reference: flow_from_directory + preprocess_input", "epoch s": reference_time()},
        {"side": "engine: classifier + model.fit on the uint8 cache", "epoch s": engine_time()},
    ]
    for row in rows:
        row["images/s"] = n / row["epoch s"]
    return Result(
        name="finetune_epoch",
        figures={
            "finetune_epoch_speedup": round(reference_time() / engine_time(), 3),
            "reference_epoch_s": round(reference_time(), 2),
            "engine_epoch_s": round(engine_time(), 2),
        },
        table=rows,
        settings={
            "backbone": BACKBONE,
            "images_per_epoch": n,
            "batch_size": batch_size,
            "input_size": size,
            "weights": options.weights,
            "limit": options.limit,
        },
        notes=[f"{n} images per epoch ({batches} batches of {batch_size}), training pass only"],
    )
