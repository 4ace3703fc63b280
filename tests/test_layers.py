"""The in-graph augmentation: the paper's parameters, identity at inference, safe to save and load."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from engine.models.layers import ImageNetPreprocess, XRayAugment, bilinear_warp


def _images(n: int = 4, size: int = 16) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size, 1)).astype("float32")


def test_identity_at_inference():
    x = _images()
    out = keras.ops.convert_to_numpy(XRayAugment(seed=1)(x, training=False))
    np.testing.assert_array_equal(out, x)


def test_no_op_parameters_give_the_same_image():
    x = _images()
    layer = XRayAugment(
        rotation=0, width_shift=0, height_shift=0, zoom=0, horizontal_flip=False, vertical_flip=False, seed=1
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x, training=True)), x, atol=1e-3)


def test_flips_alone_are_exact_mirror_images():
    x = _images(n=32)
    layer = XRayAugment(rotation=0, width_shift=0, height_shift=0, zoom=0, seed=3)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    seen = set()
    for img, aug in zip(x, out, strict=True):
        for name, cand in (("none", img), ("lr", img[:, ::-1]), ("ud", img[::-1]), ("both", img[::-1, ::-1])):
            if np.allclose(aug, cand, atol=1e-3):
                seen.add(name)
                break
        else:
            pytest.fail("an output is not a flip of its input")
    assert seen == {"none", "lr", "ud", "both"}


def test_paper_augmentation_changes_images_within_range_and_is_seeded():
    x = _images(n=8, size=32)
    a = keras.ops.convert_to_numpy(XRayAugment(seed=7)(x, training=True))
    b = keras.ops.convert_to_numpy(XRayAugment(seed=7)(x, training=True))
    np.testing.assert_allclose(a, b)
    assert a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 255
    assert np.mean(np.abs(a - x)) > 10


def test_rotation_respects_the_range():
    layer = XRayAugment(
        rotation=50, width_shift=0, height_shift=0, zoom=0, horizontal_flip=False, vertical_flip=False, seed=0
    )
    m = keras.ops.convert_to_numpy(layer.transforms(2000, 10, 10))
    angles = np.degrees(np.arctan2(m[:, 3], m[:, 0]))
    assert -50.01 <= angles.min() < -45 and 45 < angles.max() <= 50.01


def test_saved_model_loads_in_safe_mode(tmp_path):
    inputs = keras.Input((16, 16, 1))
    x = XRayAugment(seed=1)(inputs)
    x = ImageNetPreprocess("caffe")(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = _images(size=16)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)


def test_bad_preprocess_mode_names_the_value():
    with pytest.raises(ValueError, match="mode='bgr'"):
        ImageNetPreprocess("bgr")


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_bilinear_warp_gives_the_pixels_of_keras_affine_transform(dtype):
    x = _images(n=16, size=24).astype(dtype)
    transforms = XRayAugment(seed=5).transforms(16, 24, 24)
    expected = keras.ops.image.affine_transform(
        x.astype("float32"), transforms, interpolation="bilinear", fill_mode="nearest"
    )
    got = bilinear_warp(x, transforms)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), atol=1e-3)


def test_mixed_precision_keeps_float32_coordinates():
    x = _images(n=8, size=32)
    full = keras.ops.convert_to_numpy(XRayAugment(seed=2)(x, training=True))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = keras.ops.convert_to_numpy(XRayAugment(seed=2)(x, training=True))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype("float32"), full, atol=0.25)


def test_other_fill_modes_are_refused_by_name():
    with pytest.raises(ValueError, match="fill_mode='reflect'"):
        XRayAugment(fill_mode="reflect")
