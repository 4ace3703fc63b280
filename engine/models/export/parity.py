"""The parity check: how closely an exported file reproduces the Keras graph it was written from."""

from __future__ import annotations

import numpy as np

CHECK_IMAGES = {None: 64, "int8": 512}
"""Held-out images of the parity check: a float file matches to 1e-4 on a few, while an int8 file's argmax
agreement needs hundreds to be told from the bar (one image of 64 is 1.6 points)."""
INT8_MIN_AGREEMENT = 0.99
"""The export issue's bar: below it, ``python -m engine export`` says to prefer the float file
(``python -m benchmarks.int8_held_out`` measures it on every fold's own held-out images)."""
PARITY_BATCH = 64


def parity(graph, runner, images: np.ndarray) -> dict:
    """How closely an exported file reproduces the Keras graph on ``images``, in batches of
    :data:`PARITY_BATCH` (512 images of a 5-member ensemble at once would take gigabytes)."""
    batch = as_batch(images, size=int(graph.input_shape[1]), name="check_images")
    chunks = [batch[i : i + PARITY_BATCH] for i in range(0, len(batch), PARITY_BATCH)]
    want = _joined([{k: np.asarray(v) for k, v in graph.predict_on_batch(c).items()} for c in chunks])
    got = _joined([runner.predict_on_batch(c) for c in chunks])
    return {
        "images": len(batch),
        "max_abs_dp": float(np.abs(got["probabilities"] - want["probabilities"]).max()),
        "argmax_agreement": float(np.mean(got["probabilities"].argmax(1) == want["probabilities"].argmax(1))),
        "class_maps_max_abs_diff": float(np.abs(got["class_maps"] - want["class_maps"]).max()),
        "class_maps_max_abs": float(np.abs(want["class_maps"]).max()),
        "features_max_rel_diff": float(
            np.abs(got["features"] - want["features"]).max() / max(float(np.abs(want["features"]).max()), 1e-12)
        ),
    }


def _joined(parts: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}


def as_batch(images: np.ndarray, *, size: int, name: str) -> np.ndarray:
    """(N, S, S) or (N, S, S, 1) in [0, 255] as the float32 (N, S, S, 1) the graph takes."""
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.shape[1:] != (size, size, 1):
        raise ValueError(f"{name} must be (N, {size}, {size}) images, got shape {tuple(np.shape(images))}")
    return batch
