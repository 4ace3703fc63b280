"""The serving graph of a trained model or of a fold ensemble, and the numpy steps after it.

Every model of a study is ``xray -> augment -> preprocess -> backbone -> pool -> head`` (see
``engine.training.fold.classifier``). For serving, the augmentation (identity at inference) is
left out and three outputs come from one forward pass:

- ``probabilities`` (N, C): the softmax output, averaged over the members of an ensemble;
- ``class_maps`` (N, h, w, C): ``sum_k W[k, c] A_k`` for every class ``c``, the backbone's last
  feature map ``A`` projected on the head's kernel ``W``. The head follows global average
  pooling, so this is Grad-CAM in closed form (the gradient of class ``c``'s logit with respect to
  ``A`` is ``W[:, c] / (h * w)`` everywhere); averaged over members;
- ``features`` (N, D): the pooled backbone features, averaged over members: what the
  out-of-distribution score measures.

The same three outputs come out of an exported LiteRT or ONNX file, so :func:`heatmaps` and the
rest of the post-processing are shared by the Keras path and the runtimes, with no Keras import.
"""

from __future__ import annotations

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
    for index, member in enumerate(members):
        head = member.get_layer("head")
        # Saved fold models all name their layers preprocess/backbone/head; a graph needs unique names.
        layers = [member.get_layer("preprocess"), member.get_layer("backbone")]
        fmap = keras.Sequential(layers, name=f"member_{index}")(inputs)
        pooled = keras.layers.GlobalAveragePooling2D(name=f"pool_{index}")(fmap)
        project = keras.layers.Dense(head.units, use_bias=False, dtype="float32", name=f"class_maps_{index}")
        maps = project(fmap)
        project.set_weights([np.asarray(head.get_weights()[0], dtype=np.float32)])
        classify = keras.layers.Dense(head.units, activation="softmax", dtype="float32", name=f"head_{index}")
        probabilities.append(classify(pooled))
        classify.set_weights(head.get_weights())
        class_maps.append(maps)
        features.append(pooled)
    outputs = {
        key: _mean(values, key) for key, values in zip(OUTPUTS, (probabilities, class_maps, features), strict=True)
    }
    return keras.Model(inputs, outputs, name=name)


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
