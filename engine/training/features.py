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
from engine.training.protocols import Augmentation, Protocol

FEATURE_BATCH = 64
VIEW_SEED = 7
AUGMENTED_VIEWS_VERSION = 1
"""Changes whenever :func:`_augmenter` draws its views otherwise, so features cached before are computed again."""


def harmonise_key(protocol: Protocol) -> tuple[tuple[str, object], ...]:
    """The protocol's harmonisation as a hashable key (empty without one)."""
    return tuple(sorted(protocol.preprocessing().items()))


VIEWS = ("identity", "flip_lr", "flip_ud", "flip_both")


def view_names(views: int, augmentation: Augmentation | None) -> tuple[str, ...]:
    """The first ``views`` flips, or with ``augmentation`` the image then ``views - 1`` draws of it."""
    if augmentation is None:
        return VIEWS[: max(1, views)]
    return ("identity", *(f"augmented-{v}" for v in range(1, views)))


def _augmenter(augmentation: Augmentation, view: int):
    """One view's draws: the host's JPEG re-encoding (its own seeded generator), then the augmentation layer a
    fine-tuning study trains with, seeded by the view. Batches come in a fixed order, so the draws are fixed."""
    from engine.models.layers import XRayAugment
    from engine.training.batches import JPEG_MAX_QUALITY, jpeg_again

    layer = XRayAugment(**augmentation.in_graph(), seed=VIEW_SEED * 1000 + view)
    rng = np.random.default_rng([VIEW_SEED, view])

    def augment(batch: np.ndarray) -> np.ndarray:
        if augmentation.jpeg:
            qualities = rng.integers(augmentation.jpeg, JPEG_MAX_QUALITY + 1, size=len(batch))
            batch = np.stack([jpeg_again(image, q) for image, q in zip(batch, qualities, strict=True)])
        return np.asarray(layer(batch[..., None].astype("float32"), training=True))[..., 0]

    return augment


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
    augmentation: Augmentation | None = None,
) -> np.ndarray:
    """Pooled features, shape (N, views, D), computed once per (dataset, backbone, size, weights, pooling,
    harmonisation, views). The first view is the image as it is; the others are flips, or with
    ``augmentation`` seeded draws of it."""
    spec = get_backbone(backbone_name)
    identity = weights_identity(spec, input_size=dataset.input_size, weights=weights)
    inputs = {
        "dataset": dataset.fingerprint,
        "backbone": backbone_name,
        "input_size": dataset.input_size,
        "weights": identity,
        "views": view_names(views, augmentation),
    }
    if augmentation is not None:
        inputs["view_augmentation"] = {**augmentation.to_dict(), "version": AUGMENTED_VIEWS_VERSION}
    if pooling != "average":
        inputs["pooling"] = pooling
    if harmonise:
        from engine.models.acquisition import EQUALISE_SEGMENTS, HARMONISE_VERSION  # Keras, only when harmonised

        inputs["harmonise"] = {**dict(harmonise), "version": HARMONISE_VERSION, "segments": EQUALISE_SEGMENTS}
    path = artifacts_root / "features" / f"{backbone_name}-{dataset.input_size}-{cache.key(inputs)}.npy"

    def compute() -> np.ndarray:
        extractor = builders.feature_extractor(backbone_name, dataset.input_size, weights, pooling, harmonise)
        chosen = view_names(views, augmentation)
        n = len(dataset)
        steps = -(-n // FEATURE_BATCH) * len(chosen)
        out = None
        step = 0
        for v, view in enumerate(chosen):
            augment = _augmenter(augmentation, v) if augmentation is not None and v else None
            for start in range(0, n, FEATURE_BATCH):
                if should_stop and should_stop():
                    raise Cancelled(f"{backbone_name}: cancelled during feature extraction")
                batch = np.asarray(dataset.images[start : start + FEATURE_BATCH])
                batch = (augment(batch) if augment else _view(batch, view))[..., None]
                feats = np.asarray(extractor.predict_on_batch(batch.astype("float32")))
                if out is None:
                    out = np.empty((n, len(chosen), feats.shape[-1]), dtype=np.float32)
                out[start : start + len(batch), v] = feats
                step += 1
                if on_batch:
                    on_batch(step, steps)
        return out

    return cache.remembered(path, compute, read=lambda p: np.load(p, mmap_mode="r"), write=atomic.save_npy)
