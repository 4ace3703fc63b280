"""One paper-protocol epoch of MobileNet alpha 0.25: the paper's input path against the engine's.

Same network, same weights, same optimizer and batch size on both sides; only the input path
differs. A third side, the engine's model without augmentation, shows how much of an epoch is
the network itself, which no input pipeline can remove. ``--limit N`` trains on N images (a
multiple of the batch size) instead of a whole training fold (80 % of the set), so the
benchmark fits in a few minutes on a small CPU.

After each of its ``fit`` calls, each side runs a full garbage collection, timed apart and not
counted in its epoch. Without it, Python's cycle collector ran whenever an allocation tripped it,
mostly during the engine's steps, and freed there the tf.data iterators that earlier ``fit``
calls had left in reference cycles. Destroying one took 10 to 86 s in diagnosis runs on this
machine (gdb: the main thread, holding the GIL, waiting in TensorFlow's ``RootDataset::Iterator``
destructor for one of its pipeline's threads); with a collection after every ``fit``, such
pauses came only in the reference's collections, never in the engine's. Such pauses were charged
to whichever side was training: the likely reason why the engine's model without augmentation,
which does the least work, came out slowest in earlier records. A pause is a cost per ``fit`` call
(one iterator each), which the 12 rounds multiply by 12 where a real epoch pays it at most once,
so the speedup leaves every side's collections out; the table shows them.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import Options, Result, stopwatch
from benchmarks.reference import batches_of, directory_iterator, reference_model
from engine.data.datasets import import_dataset
from engine.models.backbones import get_backbone
from engine.training.fold import classifier
from engine.training.presets import PAPER

BACKBONE = "MobileNet-0.25"
ROUNDS = 12
NO_AUGMENT = dataclasses.replace(PAPER, augmentation=None)
LABELS = {
    "reference": "reference: flow_from_directory + preprocess_input",
    "engine": "engine: classifier + model.fit on ImageBatches from the uint8 memory map",
    "network": "engine without augmentation (the network's share)",
}


def _compile(model, *, jit_compile: bool | str = "auto") -> None:
    import keras

    stage = PAPER.stages[0]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=stage.learning_rate, beta_1=PAPER.beta_1, beta_2=PAPER.beta_2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def _batches_fit(model, images: np.ndarray, labels: np.ndarray, rows: np.ndarray, batch_size: int):
    """Train ``model`` on batches ``first`` to ``first + count`` of ``rows``, read as ``train_fold`` reads them."""
    from engine.training.batches import ImageBatches

    def fit(first: int, count: int) -> None:
        chosen = rows[first * batch_size : (first + count) * batch_size]
        model.fit(ImageBatches(images, labels, chosen, batch_size=batch_size, seed=first), epochs=1, verbose=0)

    return fit


def _images_per_epoch(options: Options, n_images: int, batch_size: int) -> int:
    wanted = options.limit or (batch_size if options.tiny else int(0.8 * n_images))
    return max(batch_size, min(wanted, n_images) // batch_size * batch_size)


def run(options: Options) -> Result:
    batch_size = 8 if options.tiny else PAPER.batch_size
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        dataset = import_dataset(
            options.data, input_size=options.input_size, artifacts_root=options.artifacts or Path(tmp)
        )
        return _measure(options, dataset, batch_size)


def _measure(options: Options, dataset, batch_size: int) -> Result:
    import keras

    size = options.input_size
    n = _images_per_epoch(options, len(dataset), batch_size)
    chosen = np.random.default_rng(0).choice(len(dataset), n, replace=False)
    n_classes = len(dataset.classes)
    batches = n // batch_size

    keras.utils.set_random_seed(0)
    spec = get_backbone(BACKBONE)
    iterator = directory_iterator(
        options.data, input_size=size, batch_size=batch_size, preprocess=spec.preprocess_input
    )
    reference = reference_model(BACKBONE, n_classes=n_classes, input_size=size, weights=options.weights)
    engine = classifier(BACKBONE, n_classes=n_classes, input_size=size, weights=options.weights, protocol=PAPER)
    network = classifier(BACKBONE, n_classes=n_classes, input_size=size, weights=options.weights, protocol=NO_AUGMENT)
    for model in (reference, engine, network):
        _compile(model)
    sides = {
        "reference": lambda first, count: reference.fit(batches_of(iterator, first=first, batches=count), verbose=0),
        "engine": _batches_fit(engine, dataset.images, dataset.labels, chosen, batch_size),
        "network": _batches_fit(network, dataset.images, dataset.labels, chosen, batch_size),
    }
    for side in sides.values():
        side(0, 1)
    gc.collect()
    seconds = dict.fromkeys(sides, 0.0)
    collecting = dict.fromkeys(sides, 0.0)
    rounds = min(ROUNDS, batches)
    per_round = [batches // rounds + (r < batches % rounds) for r in range(rounds)]
    first = 0
    names = list(sides)
    for round_index, count in enumerate(per_round):
        for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
            with stopwatch() as elapsed:
                sides[name](first, count)
            seconds[name] += elapsed()
            with stopwatch() as elapsed:
                gc.collect()
            collecting[name] += elapsed()
        first += count

    rows = [
        {
            "side": LABELS[name],
            "epoch s": s,
            "garbage collection s (not counted)": collecting[name],
            "images/s": n / s,
            "x reference": seconds["reference"] / s,
        }
        for name, s in seconds.items()
    ]
    return Result(
        name="finetune_epoch",
        figures={
            "finetune_epoch_speedup": round(seconds["reference"] / seconds["engine"], 3),
            "reference_epoch_s": round(seconds["reference"], 2),
            "engine_epoch_s": round(seconds["engine"], 2),
            "network_only_epoch_s": round(seconds["network"], 2),
        },
        table=rows,
        settings={
            "backbone": BACKBONE,
            "images_per_epoch": n,
            "batch_size": batch_size,
            "input_size": size,
            "weights": options.weights,
            "limit": options.limit,
            "rounds": rounds,
        },
        notes=[
            f"{n} images per epoch ({batches} batches of {batch_size}), training pass only, in {rounds} interleaved "
            "rounds (each side trains on the next slice of batches in turn, so load changes hit all sides alike; "
            "the order of the sides rotates from round to round, so that none always comes first)",
            "after each of its rounds, each side runs a full garbage collection, timed apart and not counted in its "
            "epoch, so that no side is charged for another's garbage",
        ],
    )
