"""One memory measurement in a fresh process; prints its peak resident memory as JSON.

``python -m benchmarks.memory_probe study DATA ARTIFACTS SIZE WEIGHTS FOLDS EPOCHS``: a cold frozen
study of MobileNet 1.0. ``... train DATA ARTIFACTS SIZE WEIGHTS FEED [eager]``: import, then the paper-protocol
training path for a few batches, with the training images either loaded as one array (``array``,
the usual way, and the engine's until it read batches) or read batch by batch from the memory map
by ``engine.training.batches.ImageBatches`` (``batches``, what ``engine.training.fold.train_fold`` does);
``eager`` runs the steps without tracing them (``--tiny``: tracing costs more than three tiny steps).
``... features MODE SIZE WEIGHTS COUNT BATCH``: pooled features of COUNT images, the extractor
called eagerly (``eager``, as ``engine.training.features.cached_features`` does) or compiled (``compiled``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.harness import peak_rss_mb  # noqa: E402

BACKBONE = "MobileNet"
TRAIN_STEPS = 3


def _weights(text: str) -> str | None:
    return None if text == "none" else text


def study(data: Path, artifacts_root: Path, size: int, weights: str, folds: int, epochs: int) -> dict:
    from engine.training.presets import FROZEN
    from engine.training.runner import run_study
    from engine.training.study import StudyRequest

    request = StudyRequest(protocol=FROZEN.replace(epochs=epochs), n_folds=folds, weights=_weights(weights))
    run_study(data, backbones=[BACKBONE], request=request, input_size=size, artifacts_root=artifacts_root)
    return {"rss_mb": peak_rss_mb()}


def train(data: Path, artifacts_root: Path, size: int, weights: str, feed: str, *, eager: bool = False) -> dict:
    import keras
    import numpy as np

    from engine.data.datasets import import_dataset
    from engine.training.fold import classifier
    from engine.training.presets import PAPER

    dataset = import_dataset(data, input_size=size, artifacts_root=artifacts_root)
    after_import = peak_rss_mb()
    train_rows = np.random.default_rng(0).permutation(len(dataset))[: int(0.8 * len(dataset))]
    model = classifier(
        BACKBONE, n_classes=len(dataset.classes), input_size=size, weights=_weights(weights), protocol=PAPER
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", run_eagerly=eager)
    batch = PAPER.batch_size
    if feed == "array":
        x = np.asarray(dataset.images[train_rows])[..., None]
        model.fit(x, dataset.labels[train_rows], batch_size=batch, epochs=1, steps_per_epoch=TRAIN_STEPS, verbose=0)
    else:
        from engine.training.batches import ImageBatches

        batches = ImageBatches(dataset.images, dataset.labels, train_rows, batch_size=batch, seed=0)
        model.fit(batches, epochs=1, steps_per_epoch=TRAIN_STEPS, verbose=0)
    return {"rss_mb": peak_rss_mb(), "rss_after_import_mb": after_import, "images": len(dataset)}


def features(mode: str, size: int, weights: str, count: int, batch: int) -> dict:
    import time

    import keras
    import numpy as np

    from engine.models.backbones import get_backbone
    from engine.models.layers import ImageNetPreprocess

    spec = get_backbone(BACKBONE)
    inputs = keras.Input((size, size, 1))
    x = spec.build(input_size=size, weights=_weights(weights))(ImageNetPreprocess(spec.preprocess_mode)(inputs))
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    images = np.random.default_rng(0).integers(0, 256, (count + batch, size, size, 1), dtype=np.uint8)
    call = extractor.predict_on_batch if mode == "compiled" else lambda b: extractor(b, training=False)
    np.asarray(call(images[:batch].astype("float32")))
    started = time.perf_counter()
    for start in range(batch, count + batch, batch):
        np.asarray(call(images[start : start + batch].astype("float32")))
    return {"images/s": count / (time.perf_counter() - started), "peak RSS MB": peak_rss_mb()}


def main(argv: list[str]) -> int:
    kind, *rest = argv
    if kind == "features":
        mode, size, weights, count, batch = rest
        print(json.dumps(features(mode, int(size), weights, int(count), int(batch))), flush=True)
        return 0
    data, artifacts, size, weights, *rest = rest
    if kind == "study":
        out = study(Path(data), Path(artifacts), int(size), weights, int(rest[0]), int(rest[1]))
    else:
        out = train(Path(data), Path(artifacts), int(size), weights, rest[0], eager=rest[1:] == ["eager"])
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
