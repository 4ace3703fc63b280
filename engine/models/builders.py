"""The models a fold trains: ``xray -> augment -> preprocess -> backbone -> pool -> head``, and the frozen
base's feature extractor whose pooled output cached features are made of.

Plain values in (``engine.training`` unpacks its protocol), so that this layer knows nothing of training.
"""

from __future__ import annotations

import functools

from engine.models.backbones import get_backbone


def classifier(
    backbone_name: str,
    *,
    n_classes: int,
    input_size: int,
    weights: str | None,
    augmentation: dict | None,
    preprocessing: dict,
    pooling: str,
    head_l2: float,
    seed: int | None = None,
):
    """Grayscale uint8 image in, class probabilities out; augmentation and preprocessing inside.

    ``augmentation``: ``XRayAugment``'s arguments (None: no augmentation layer); ``preprocessing``:
    ``ImageNetPreprocess``'s harmonisation arguments. ``seed`` fixes the head's initial weights and the
    augmentation stream explicitly, so a fold trains the same way whichever process runs it (Keras'
    default seeds come from Python's global ``random``, which other threads of a Dask worker also draw from).
    """
    import keras

    from engine.models.layers import ImageNetPreprocess, XRayAugment

    spec = get_backbone(backbone_name)
    inputs = keras.Input((input_size, input_size, 1), name="xray")
    x = inputs
    if augmentation is not None:
        x = XRayAugment(**augmentation, seed=seed, name="augment")(x)
    x = ImageNetPreprocess(spec.preprocess_mode, name="preprocess", **preprocessing)(x)
    x = _pooled(_base(spec, input_size=input_size, weights=weights, pooling=pooling)(x), pooling)
    regularizer = keras.regularizers.L2(head_l2) if head_l2 else None
    outputs = keras.layers.Dense(
        n_classes,
        activation="softmax",
        dtype="float32",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        kernel_regularizer=regularizer,
        name="head",
    )(x)
    return keras.Model(inputs, outputs, name=f"cxr_{backbone_name.replace('-', '_')}")


def _base(spec, *, input_size: int, weights: str | None, pooling: str):
    """The convolutional base named ``backbone``: one output, or every block's (``pooling="block-statistics"``)."""
    import keras

    base = spec.build(input_size=input_size, weights=weights)
    if pooling == "block-statistics":
        names = spec.block_outputs(base)
        base = keras.Model(base.inputs, [base.get_layer(n).output for n in names])
    base.name = "backbone"
    return base


def _pooled(x, pooling: str):
    import keras

    from engine.models.layers import BlockStatisticsPool

    if pooling == "block-statistics":
        return BlockStatisticsPool(name="pool")(x)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


@functools.lru_cache(maxsize=4)
def feature_extractor(
    backbone_name: str,
    input_size: int,
    weights: str | None,
    pooling: str = "average",
    harmonise: tuple[tuple[str, object], ...] = (),
):
    import keras

    from engine.models.layers import ImageNetPreprocess

    spec = get_backbone(backbone_name)
    if weights is None:
        # A random base must be the same in every process that reads the cached features
        # (see engine.training.trainers' _own_base).
        keras.utils.set_random_seed(0)
    inputs = keras.Input((input_size, input_size, 1))
    x = ImageNetPreprocess(spec.preprocess_mode, **dict(harmonise))(inputs)
    x = _base(spec, input_size=input_size, weights=weights, pooling=pooling)(x)
    return keras.Model(inputs, _pooled(x, pooling))
