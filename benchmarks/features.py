"""Pooled-feature extraction of the frozen protocol: eager calls (the engine today) against compiled ones.

``engine.training.features.cached_features`` calls the extractor model eagerly, batch by batch
(``extractor(batch)``), which runs layer after layer outside a graph; ``predict_on_batch`` runs
the same model as one compiled function. Each way runs in a fresh process on the same images,
so its peak resident memory is its own. This backs the change proposed in docs/benchmarks.md.
"""

from __future__ import annotations

from benchmarks.harness import Options, Result
from benchmarks.memory import probe

BACKBONE = "MobileNet"
FEATURE_BATCH = 64


def run(options: Options) -> Result:
    count = 16 if options.tiny else 256
    batch = 8 if options.tiny else FEATURE_BATCH
    common = (str(options.input_size), options.weights or "none", str(count), str(batch))
    eager = probe("features", "eager", *common)
    compiled = probe("features", "compiled", *common)
    rows = [
        {"way": "extractor(batch) eagerly (engine today)", **eager},
        {"way": "extractor.predict_on_batch(batch) (compiled)", **compiled},
    ]
    return Result(
        name="features",
        figures={
            "features_eager_images_per_s": round(eager["images/s"], 2),
            "features_compiled_images_per_s": round(compiled["images/s"], 2),
            "features_eager_rss_mb": round(eager["peak RSS MB"], 1),
            "features_compiled_rss_mb": round(compiled["peak RSS MB"], 1),
            "features_compiled_speedup": round(compiled["images/s"] / eager["images/s"], 3),
        },
        table=rows,
        settings={
            "backbone": BACKBONE,
            "images": count,
            "batch": batch,
            "input_size": options.input_size,
            "weights": options.weights,
        },
        notes=[f"{count} random uint8 images, batch {batch}, one untimed batch first; each way in a fresh process"],
    )
