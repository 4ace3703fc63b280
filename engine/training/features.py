"""The frozen base's pooled features of every image, computed once and kept on disk: a probe fold trains only
its head on them, and a fine-tuning fold warms its head up on them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.data.datasets import Dataset
from engine.models import builders
from engine.models.backbones import get_backbone, weights_identity
from engine.results import atomic, cache
from engine.training.progress import Cancelled, StopFn
from engine.training.protocols import Protocol

FEATURE_BATCH = 64


def harmonise_key(protocol: Protocol) -> tuple[tuple[str, object], ...]:
    """The protocol's harmonisation as a hashable key (empty without one)."""
    return tuple(sorted(protocol.preprocessing().items()))


VIEWS = ("identity", "flip_lr", "flip_ud", "flip_both")


def _view(batch: np.ndarray, view: str) -> np.ndarray:
    if view == "flip_lr":
        return batch[:, :, ::-1]
    if view == "flip_ud":
        return batch[:, ::-1, :]
    if view == "flip_both":
        return batch[:, ::-1, ::-1]
    return batch


def cached_features(
    dataset: Dataset,
    backbone_name: str,
    *,
    weights: str | None,
    views: int,
    artifacts_root,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: StopFn | None = None,
    pooling: str = "average",
    harmonise: tuple[tuple[str, object], ...] = (),
) -> np.ndarray:
    """Pooled features, shape (N, views, D), computed once per (dataset, backbone, size, weights, pooling,
    harmonisation)."""
    spec = get_backbone(backbone_name)
    identity = weights_identity(spec, input_size=dataset.input_size, weights=weights)
    inputs = {
        "dataset": dataset.fingerprint,
        "backbone": backbone_name,
        "input_size": dataset.input_size,
        "weights": identity,
        "views": VIEWS[: max(1, views)],
    }
    if pooling != "average":
        inputs["pooling"] = pooling
    if harmonise:
        from engine.models.acquisition import EQUALISE_SEGMENTS, HARMONISE_VERSION  # Keras, only when harmonised

        inputs["harmonise"] = {**dict(harmonise), "version": HARMONISE_VERSION, "segments": EQUALISE_SEGMENTS}
    path = artifacts_root / "features" / f"{backbone_name}-{dataset.input_size}-{cache.key(inputs)}.npy"

    def compute() -> np.ndarray:
        extractor = builders.feature_extractor(backbone_name, dataset.input_size, weights, pooling, harmonise)
        chosen = VIEWS[: max(1, views)]
        n = len(dataset)
        steps = -(-n // FEATURE_BATCH) * len(chosen)
        out = None
        step = 0
        for v, view in enumerate(chosen):
            for start in range(0, n, FEATURE_BATCH):
                if should_stop and should_stop():
                    raise Cancelled(f"{backbone_name}: cancelled during feature extraction")
                batch = _view(np.asarray(dataset.images[start : start + FEATURE_BATCH]), view)[..., None]
                feats = np.asarray(extractor.predict_on_batch(batch.astype("float32")))
                if out is None:
                    out = np.empty((n, len(chosen), feats.shape[-1]), dtype=np.float32)
                out[start : start + len(batch), v] = feats
                step += 1
                if on_batch:
                    on_batch(step, steps)
        return out

    return cache.remembered(path, compute, read=lambda p: np.load(p, mmap_mode="r"), write=atomic.save_npy)
