"""Acquisition in the graph: harmonisation every image goes through, and the variation training adds."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from engine.models import acquisition
from engine.models.layers import ImageNetPreprocess, XRayAugment
from engine.training import presets, protocols
from engine.training.batches import ImageBatches, jpeg_again


def _numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _film(seed: int = 0, size: int = 32) -> np.ndarray:
    """Smooth anatomy-like shading plus detail, as float32 (1, S, S, 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 60 + 120 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 4) + rng.normal(0, 10, (size, size))
    return np.clip(base, 0, 255).astype("float32")[None, ..., None]


def test_equalisation_undoes_a_brightness_and_contrast_change():
    film = _film()
    other = np.clip(0.6 * film + 40.0, 0, 255)
    a, b = _numpy(acquisition.equalise(film)), _numpy(acquisition.equalise(other))
    assert a.min() >= 0.0 and a.max() <= 255.0
    assert np.abs(a - b).mean() < 0.1 * np.abs(film - other).mean()
    order = np.argsort(film.ravel())
    assert np.all(np.diff(a.ravel()[order]) >= -1e-3)


def test_standardise_gives_one_mean_and_spread():
    out = _numpy(acquisition.standardise(_film() * 0.5 + 30))
    assert out.mean() == pytest.approx(128.0, abs=1.0)
    assert out.std() == pytest.approx(acquisition.STANDARD_SPREAD, rel=0.05)


def test_downscale_and_back_removes_detail_finer_than_its_blocks():
    checker = (np.indices((32, 32)).sum(axis=0) % 2 * 200.0 + 20.0).astype("float32")[None, ..., None]
    out = _numpy(acquisition.downscale_and_back(checker, 2))
    assert out.shape == checker.shape
    assert out.std() < 1e-3 * checker.std()


def test_blur_or_sharpen_and_random_resolution_only_while_training_and_seeded():
    film = np.repeat(_film(), 8, axis=0)
    layer = XRayAugment(
        rotation=0,
        width_shift=0,
        height_shift=0,
        zoom=0,
        horizontal_flip=False,
        vertical_flip=False,
        min_resolution=8,
        blur=1.5,
        sharpen=1.0,
        seed=4,
    )
    assert np.array_equal(_numpy(layer(film, training=False)), film)
    once = _numpy(layer(film, training=True))
    again = _numpy(XRayAugment.from_config(layer.get_config())(film, training=True))
    assert np.allclose(once, again)
    changed = np.abs(once - film).mean(axis=(1, 2, 3))
    assert changed.max() > 1.0
    assert len(np.unique(np.round(changed, 3))) > 1


def test_preprocessing_carries_its_harmonisation_through_its_config():
    layer = ImageNetPreprocess("tf", intensity="equalise", downscale=2)
    copy = ImageNetPreprocess.from_config({**layer.get_config(), "xla": False})
    film = _film()
    assert np.allclose(_numpy(layer(film)), _numpy(copy(film)), atol=1e-5)
    assert not np.allclose(_numpy(layer(film)), _numpy(ImageNetPreprocess("tf")(film)))
    with pytest.raises(ValueError, match="intensity must be one of"):
        ImageNetPreprocess("tf", intensity="clahe")


def test_the_protocol_and_the_layer_agree_on_the_intensities():
    assert protocols.INTENSITIES == acquisition.INTENSITIES
    harmonised = presets.get_protocol("xray-harmonised")
    assert harmonised.preprocessing() == {"intensity": "equalise", "downscale": 2}
    assert protocols.Protocol.from_dict(harmonised.to_dict()) == harmonised
    assert "harmonise" not in presets.get_protocol("xray-finetune").to_dict()
    assert "jpeg" not in harmonised.augmentation.in_graph()
    with pytest.raises(ValueError, match="jpeg is the lowest quality"):
        dataclasses.replace(presets.RADIOGRAPH_AUGMENTATION, jpeg=99)


def test_jpeg_re_encoding_is_seeded_and_for_training_batches_only():
    images = np.stack([_film(s)[0, ..., 0].astype(np.uint8) for s in range(4)])
    labels = np.arange(4)
    a = ImageBatches(images, labels, np.arange(4), batch_size=4, seed=1, jpeg=20)[0][0]
    b = ImageBatches(images, labels, np.arange(4), batch_size=4, seed=1, jpeg=20)[0][0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a[..., 0], images)
    assert np.abs(jpeg_again(images[0], 95).astype(int) - images[0]).mean() < 3
    with pytest.raises(ValueError, match="needs a seed"):
        ImageBatches(images, labels, np.arange(4), batch_size=4, jpeg=20)
