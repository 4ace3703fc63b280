"""Bias correction of int8 weights on tiny hand-built backbones: after it, the mean output of a convolution
whose kernel is rounded to int8 is the float convolution's again, and only quantized convolutions move."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from engine.models.bias_correction import correct_int8_bias, int8_rounded

SIZE = 12


def export_like(*convolutions: keras.layers.Layer) -> keras.Model:
    """A graph shaped as ``export_graph`` makes it: ``member_0`` holding ``preprocess_0`` and ``backbone_0``."""
    image = keras.Input((SIZE, SIZE, 3))
    x = image
    for layer in convolutions:
        x = layer(x)
    backbone = keras.Model(image, x, name="backbone_0")
    member = keras.Sequential([keras.layers.Rescaling(1 / 255, name="preprocess_0"), backbone], name="member_0")
    inputs = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inputs, member(inputs))


def calibration() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (20, SIZE, SIZE, 3)).astype("float32")


def rounded_copy(graph: keras.Model, names: list[str]) -> keras.Model:
    """``graph`` with the named convolutions' kernels rounded to int8, as a converter rounds them."""
    twin = keras.models.clone_model(graph)
    twin.set_weights(graph.get_weights())
    backbone = twin.layers[1].layers[1]
    for name in names:
        layer = backbone.get_layer(name)
        for kernel in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            if hasattr(layer, kernel):
                weights = getattr(layer, kernel)
                depthwise = kernel == "depthwise_kernel" or isinstance(layer, keras.layers.DepthwiseConv2D)
                weights.assign(int8_rounded(np.asarray(weights), depthwise=depthwise))
    return twin


def channel_means(graph: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(graph(images)).mean(axis=(0, 1, 2))


def with_moving_statistics(bn: keras.layers.BatchNormalization, channels: int) -> keras.layers.BatchNormalization:
    bn.build((None, SIZE, SIZE, channels))
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 2, channels), rng.normal(0, 1, channels), rng.normal(0, 1, channels),
                    rng.uniform(0.5, 2, channels)])  # fmt: skip
    return bn


CASES = {
    "convolution and BatchNorm": lambda: [
        keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv"),
        with_moving_statistics(keras.layers.BatchNormalization(name="bn"), 8),
    ],
    "depthwise and BatchNorm": lambda: [
        keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="conv"),
        with_moving_statistics(keras.layers.BatchNormalization(name="bn"), 3),
    ],
    "separable and BatchNorm": lambda: [
        keras.layers.SeparableConv2D(8, 3, padding="same", use_bias=False, name="conv"),
        with_moving_statistics(keras.layers.BatchNormalization(name="bn"), 8),
    ],
    "convolution with a bias": lambda: [keras.layers.Conv2D(8, 3, strides=2, name="conv")],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_rounded_convolution_keeps_the_float_output_mean(case):
    keras.utils.set_random_seed(0)
    graph = export_like(*CASES[case]())
    images = calibration()
    want = channel_means(graph, images)
    uncorrected = np.abs(channel_means(rounded_copy(graph, ["conv"]), images) - want).max()
    corrected = keras.models.clone_model(graph)
    corrected.set_weights(graph.get_weights())
    found = correct_int8_bias(corrected, images, float_convs=0)
    assert set(found.corrected) == {"conv"} and found.uncorrected == ()
    error = np.abs(channel_means(rounded_copy(corrected, ["conv"]), images) - want).max()
    assert uncorrected > 1e-4, "the rounding moved the mean: otherwise there is nothing to correct"
    assert error < uncorrected / 50


def test_only_convolutions_past_the_float_ones_are_corrected():
    """Depth counts from the input as the export's float layers are counted: a separable convolution is two."""
    keras.utils.set_random_seed(0)
    graph = export_like(
        keras.layers.Conv2D(4, 3, padding="same", name="first"),
        keras.layers.SeparableConv2D(4, 3, padding="same", name="second_and_third"),
        keras.layers.Conv2D(4, 1, name="fourth"),
        keras.layers.Conv2D(4, 1, use_bias=False, name="fifth"),
    )
    before = graph.get_weights()
    found = correct_int8_bias(graph, calibration(), float_convs=2)
    assert set(found.corrected) == {"second_and_third", "fourth"}
    assert found.uncorrected == ("fifth",), "no bias and no BatchNorm: nowhere to put the shift"
    backbone = graph.layers[1].layers[1]
    assert np.array_equal(backbone.get_layer("first").bias, before[1]), "a float convolution is left alone"
    assert not np.array_equal(backbone.get_layer("fourth").bias, before[6])
    assert np.array_equal(backbone.get_layer("fifth").kernel, before[7])


def test_int8_rounding_is_symmetric_per_output_channel():
    kernel = np.array([[[[1.0, -0.02], [0.5, 0.01]]]])  # (1, 1, 2 inputs, 2 outputs)
    got = int8_rounded(kernel, depthwise=False)
    assert got[0, 0, 0, 0] == 1.0 and got[0, 0, 0, 1] == pytest.approx(-0.02)
    assert got[0, 0, 1, 0] == pytest.approx(round(0.5 * 127) / 127)
    assert got[0, 0, 1, 1] == pytest.approx(round(0.5 * 127) / 127 * 0.02)
