"""Every registered backbone builds, pairs with its own preprocess_input, and finds its weights."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from engine.models.backbones import PAPER_BACKBONES, REGISTRY, MissingWeightsError, get_backbone, resolve_weights
from engine.models.layers import ImageNetPreprocess
from tests.conftest import SHARED, requires_shared

FEATURES = {
    "ResNet50": 2048,
    "MobileNet": 1024,
    "DenseNet169": 1664,
    "VGG16": 512,
    "DenseNet121": 1024,
    "DenseNet201": 1920,
    "MobileNetV2": 1280,
    "VGG19": 512,
    "Xception": 2048,
    "NASNetLarge": 4032,
    "NASNetMobile": 1056,
    "InceptionV3": 2048,
    "InceptionResNetV2": 1536,
    "ResNet50V2": 2048,
    "MobileNet-0.25": 256,
    "MobileNetV2-0.35": 1280,
}


def test_registry_has_the_papers_fourteen_and_two_small_models():
    paper_names = {
        line.split(",")[1] for line in (Path("engine/reference/paper_table1.csv").read_text().splitlines()[1:])
    }
    assert set(PAPER_BACKBONES) == paper_names
    assert len(PAPER_BACKBONES) == 14
    assert set(REGISTRY) == set(FEATURES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_backbone_builds_with_expected_output_shape(name):
    spec = get_backbone(name)
    size = max(spec.min_input_size, 32)
    base = spec.build(input_size=size, weights=None)
    out = base(np.zeros((1, size, size, 3), dtype="float32"), training=False)
    assert out.shape[0] == 1 and out.shape[-1] == FEATURES[name]
    assert out.shape[1] == base.output.shape[1] >= 1
    keras.backend.clear_session()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_in_graph_preprocess_equals_the_architectures_own_preprocess_input(name):
    spec = get_backbone(name)
    gray = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype("float32")
    expected = spec.preprocess_input(np.repeat(gray, 3, axis=-1).copy())
    got = keras.ops.convert_to_numpy(ImageNetPreprocess(spec.preprocess_mode)(gray))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_unknown_backbone_error_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'ResNet999'.*MobileNet"):
        get_backbone("ResNet999")


def test_input_size_below_minimum_is_refused_with_both_numbers():
    with pytest.raises(ValueError, match="input_size=40 is below the minimum of 75 for InceptionV3"):
        get_backbone("InceptionV3").build(input_size=40, weights=None)


def test_missing_weights_name_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(keras.utils, "get_file", _offline)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", _offline)
    with pytest.raises(MissingWeightsError) as info:
        get_backbone("VGG16").build(input_size=32, weights="imagenet")
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "weights") in message and "CXR_WEIGHTS_DIR" in message


def _offline(*args, **kwargs):
    raise Exception("URL fetch failure: no network")


def test_weights_found_in_keras_cache(tmp_path, monkeypatch):
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    (cache / "nasnet_mobile_no_top.h5").write_bytes(b"x")
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert resolve_weights(get_backbone("NASNetMobile"), input_size=224) == str(cache / "nasnet_mobile_no_top.h5")
    assert resolve_weights(get_backbone("VGG19"), input_size=224) == "imagenet"


@requires_shared
@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("MobileNet", "mobilenet_1_0_224_tf_no_top.h5"),
        ("MobileNet-0.25", "mobilenet_2_5_224_tf_no_top.h5"),
        ("MobileNetV2-0.35", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"),
    ],
)
def test_shared_imagenet_weights_load_from_the_local_folder(name, file, monkeypatch):
    monkeypatch.setenv("CXR_WEIGHTS_DIR", str(SHARED / "weights"))
    spec = get_backbone(name)
    assert resolve_weights(spec, input_size=224) == str(SHARED / "weights" / file)
    base = spec.build(input_size=96, weights="imagenet")
    kernel = base.weights[0].numpy()
    assert kernel.std() > 0.01
    keras.backend.clear_session()
