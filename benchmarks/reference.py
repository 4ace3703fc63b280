"""The paper's way, rebuilt for comparison: ``ImageDataGenerator.flow_from_directory`` from disk.

The generator comes from ``tf_keras`` (the Keras 2 API the paper used; a dev requirement). It
reads each PNG with PIL, applies the augmentation with SciPy one image and one channel at a
time on 3 channels, then the architecture's ``preprocess_input`` in NumPy. The model is the
same network the engine trains (backbone, global average pooling, softmax head) on 3-channel
input, so a side-by-side run differs only in how images reach the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine.models.backbones import get_backbone

PAPER_AUGMENTATION = {
    "rotation_range": 50,
    "width_shift_range": 0.2,
    "height_shift_range": 0.2,
    "zoom_range": 0.1,
    "horizontal_flip": True,
    "vertical_flip": True,
}


def directory_iterator(data: Path, *, input_size: int, batch_size: int, preprocess: Callable | None, seed: int = 0):
    """The paper's generator: augmented, preprocessed RGB batches and integer labels, shuffled."""
    from tf_keras.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(**PAPER_AUGMENTATION, preprocessing_function=preprocess)
    return generator.flow_from_directory(
        str(data),
        target_size=(input_size, input_size),
        color_mode="rgb",
        class_mode="sparse",
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
    )


def batches_of(iterator, *, first: int = 0, batches: int):
    """Batches ``first`` to ``first + batches`` of ``iterator`` as a generator for Keras 3 ``fit``.

    ``fit`` reads a generator through ``tf.data`` with prefetching, so batches are made in a
    background thread while the model trains, like Keras 2's ``fit_generator`` with its default
    single worker. (A ``PyDataset`` would be read twice for its first batches.)
    """
    for index in range(first, first + batches):
        yield iterator[index % len(iterator)]


def reference_model(backbone: str, *, n_classes: int, input_size: int, weights: str | None):
    """Backbone, pooling and softmax head on 3-channel input already preprocessed by the generator."""
    import keras

    spec = get_backbone(backbone)
    inputs = keras.Input((input_size, input_size, 3))
    x = spec.build(input_size=input_size, weights=weights)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="reference")
