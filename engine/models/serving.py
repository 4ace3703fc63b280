"""The serving graph of a trained model or of a fold ensemble, and the numpy steps after it.

Every model of a study is ``xray -> augment -> preprocess -> backbone -> pool -> head`` (see
``engine.models.builders.classifier``). For serving, the augmentation (identity at inference) is
left out and three outputs come from one forward pass:

- ``probabilities`` (N, C): the softmax output, averaged over the members of an ensemble;
- ``class_maps`` (N, h, w, C): ``sum_k W[k, c] A_k`` for every class ``c``, the backbone's last
  feature map ``A`` projected on the head's kernel ``W``. The head follows global average
  pooling, so this is Grad-CAM in closed form (the gradient of class ``c``'s logit with respect to
  ``A`` is ``W[:, c] / (h * w)`` everywhere); averaged over members;
- ``features`` (N, D): the pooled backbone features, averaged over members: what the
  out-of-distribution score measures.

A model whose head reads every block's statistics (``pooling="block-statistics"``) serves the same
three: its class maps project the last map on the head's rows for that map's means (the standard
deviations' gradients average to zero over space, and shallower blocks do not pass through the last
map, so this is still Grad-CAM of the last map), and its features are the last map's average.

Members whose bases hold the same weights (the fold models of a frozen-base study) share one run of
it: a fold ensemble of such a study costs one backbone, in time and in an exported file.

The same three outputs come out of an exported LiteRT or ONNX file, so :func:`heatmaps` and the
rest of the post-processing are shared by the Keras path and the runtimes, with no Keras import.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

OUTPUTS = ("probabilities", "class_maps", "features")


def serving_model(members: list, *, name: str = "cxr_serving"):
    """One Keras model whose outputs are :data:`OUTPUTS`, for one trained model or several of the same task."""
    import keras

    if not members:
        raise ValueError("members must hold at least one trained model, got an empty list")
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) != 1:
        raise ValueError(f"members must share one input shape, got {sorted(shapes)}")
    inputs = keras.Input(shapes.pop(), name="xray")
    probabilities, class_maps, features = [], [], []
    bases: dict[str, list] = {}
    for index, member in enumerate(members):
        head = member.get_layer("head")
        statistics = block_statistics(member)
        key = _base_key(member)
        if key not in bases:
            bases[key] = _base_maps(member, inputs, every_block=statistics is not None, name=f"member_{index}")
        maps = bases[key]
        fmap = maps[-1]
        pooled = keras.layers.GlobalAveragePooling2D(name=f"pool_{index}")(fmap)
        head_in = pooled if statistics is None else _statistics(statistics, maps, name=f"statistics_{index}")
        kernel = np.asarray(head.get_weights()[0], dtype=np.float32)
        project = keras.layers.Dense(head.units, use_bias=False, dtype="float32", name=f"class_maps_{index}")
        class_maps.append(project(fmap))
        # A block-statistics head's first rows read the deepest map's means (BlockStatisticsPool).
        project.set_weights([kernel[: int(fmap.shape[-1])]])
        classify = keras.layers.Dense(head.units, activation="softmax", dtype="float32", name=f"head_{index}")
        probabilities.append(classify(head_in))
        classify.set_weights(head.get_weights())
        features.append(pooled)
    outputs = {
        key: _mean(values, key) for key, values in zip(OUTPUTS, (probabilities, class_maps, features), strict=True)
    }
    return keras.Model(inputs, outputs, name=name)


def block_statistics(member):
    """The member's ``BlockStatisticsPool`` layer, or None when its head reads the last map's average."""
    from engine.models.layers import BlockStatisticsPool

    try:
        pool = member.get_layer("pool")
    except (KeyError, ValueError):
        return None
    return pool if isinstance(pool, BlockStatisticsPool) else None


def _base_key(member) -> str:
    """What a member's base computes: members of a frozen-base study share one ImageNet base, which runs once."""
    pre = member.get_layer("preprocess")
    digest = hashlib.sha1(f"{pre.mode} {pre.intensity} {pre.downscale} {pre.segments}".encode())
    for weights in member.get_layer("backbone").get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def _base_maps(member, inputs, *, every_block: bool, name: str) -> list:
    """The member's base on ``inputs`` as one named submodel: its feature maps (every block's with
    ``every_block``), the deepest last.

    Saved fold models all name their layers preprocess/backbone/head; a graph needs unique names.
    """
    import keras

    layers = [member.get_layer("preprocess"), member.get_layer("backbone")]
    if not every_block:
        return [keras.Sequential(layers, name=name)(inputs)]
    image = keras.Input(tuple(inputs.shape[1:]))
    return list(keras.Model(image, layers[1](layers[0](image)), name=name)(inputs))


def _statistics(statistics, maps: list, *, name: str):
    """``statistics`` (a member's own ``BlockStatisticsPool``, with its centre) on shared maps, as a named submodel."""
    import keras

    shapes = [keras.Input(tuple(m.shape[1:])) for m in maps]
    return keras.Model(shapes, statistics(shapes), name=name)(maps)


def _mean(values: list, name: str):
    import keras

    if len(values) == 1:
        return keras.layers.Identity(name=name)(values[0])
    return keras.layers.Average(name=name)(values)


def heatmaps(class_maps: np.ndarray, predicted: np.ndarray, *, size: int) -> np.ndarray:
    """Grad-CAM of each image's predicted class: ReLU, scaled to a peak of 1, resized to ``size`` (N, size, size)."""
    chosen = np.take_along_axis(np.asarray(class_maps, dtype=np.float32), predicted[:, None, None, None], axis=3)
    cams = np.maximum(chosen[..., 0], 0.0)
    out = np.empty((len(cams), size, size), dtype=np.float32)
    for i, cam in enumerate(cams):
        peak = cam.max()
        scaled = cam / peak if peak > 0 else cam
        out[i] = np.asarray(Image.fromarray(scaled, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0)
