"""Bias correction of int8 weights: the output shift their rounding causes, folded back into the float graph.

Rounding a convolution's kernel to int8 moves the mean of its output, channel by channel: for an
input ``x`` the error is ``conv(x, W_q) - conv(x, W)``, and it does not average out, because
inputs after a ReLU are positive. Its expectation over the calibration images is known before the
converter runs, so it can be subtracted where the converter will fold it in: the BatchNorm that
follows (``moving_mean += e``, since BatchNorm subtracts its mean) or the convolution's own bias
(``bias -= e``). This is the analytic bias correction of Nagel et al. 2019 ("Data-free
quantization through weight equalization and bias correction", ICCV), measured on MobileNet side by side
with the uncorrected file by ``python -m benchmarks.int8_float_layers --uncorrected`` (no label, no held-out
image) and ``python -m benchmarks.int8_held_out --uncorrected`` (the held-out folds, afterwards).

``W_q`` is what both converters make of a kernel: symmetric int8 per output channel, scale
``max|W| / 127`` (TFLite's per-axis weights; onnxruntime's ``QInt8`` per-channel weights).
Folding a BatchNorm into the kernel scales each output channel, which leaves that rounding the same.
The convolutions that the export keeps float (``float_convs`` on each path from the input, counted
as :func:`engine.models.export.first_convolutions` counts them: a separable convolution is a
depthwise then a pointwise one) are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONVOLUTIONS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
KERNELS = {
    "Conv2D": ("kernel",),
    "DepthwiseConv2D": ("kernel",),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
}
"""The kernels of each convolution, in the order the converters run them (each is one int8 convolution)."""
CHUNK = 16


@dataclass(frozen=True)
class Correction:
    """What :func:`correct_int8_bias` changed: per convolution corrected, the largest channel shift."""

    corrected: dict[str, float]
    uncorrected: tuple[str, ...]
    """Quantized convolutions with neither a bias nor a BatchNorm of their own to take the shift."""


def int8_rounded(kernel: np.ndarray, *, depthwise: bool) -> np.ndarray:
    """``kernel`` rounded as symmetric int8 per output channel (the last axis; a depthwise kernel's last two)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    per_channel = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    channels = kernel.reshape(-1, per_channel)
    scale = np.abs(channels).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    steps = channels / scale
    # Half away from zero, as TFLite and onnxruntime round.
    return (np.sign(steps) * np.floor(np.abs(steps) + 0.5) * scale).reshape(kernel.shape).astype(np.float32)


def correct_int8_bias(graph, calibration: np.ndarray, *, float_convs: int) -> Correction:
    """Fold each int8 convolution's expected weight-rounding error over ``calibration`` into ``graph``, in place.

    ``graph`` is an export graph (:func:`engine.models.export.export_graph`): its ``member_*`` submodels
    hold a ``preprocess_*`` layer and a ``backbone_*`` model. ``calibration`` is the float32 batch
    (N, S, S, 1) the converter calibrates on. Only the graph's own copies of the layers change.
    """
    corrected: dict[str, float] = {}
    uncorrected: list[str] = []
    for member in (layer for layer in graph.layers if layer.name.startswith("member_")):
        preprocess = next(layer for layer in member.layers if layer.name.startswith("preprocess"))
        backbone = next(layer for layer in member.layers if layer.name.startswith("backbone"))
        quantized = _quantized_convolutions(backbone, float_convs)
        if not quantized:
            continue
        means = _mean_inputs(backbone, preprocess, [layer for layer, _ in quantized], calibration)
        consumers = _consumers(backbone)
        for (layer, rounded), mean in zip(quantized, means, strict=True):
            shift = _output_shift(layer, mean, rounded)
            if _absorb(layer, shift, consumers.get(id(layer), [])):
                corrected[layer.name] = float(np.abs(shift).max())
            else:
                uncorrected.append(layer.name)
    return Correction(corrected=corrected, uncorrected=tuple(uncorrected))


def _quantized_convolutions(backbone, float_convs: int) -> list[tuple[object, tuple[bool, ...]]]:
    """The backbone's convolutions with a kernel past the first ``float_convs`` on its longest path from the
    input, each with which of its kernels (:data:`KERNELS`) int8 rounds."""
    depth: dict[int, int] = {}
    found = []
    for layer in backbone.layers:
        node = layer._inbound_nodes[0]
        here = max((depth.get(id(t), 0) for t in node.input_tensors), default=0)
        kind = type(layer).__name__
        if kind in CONVOLUTIONS:
            rounded = []
            for _ in KERNELS[kind]:
                here += 1
                rounded.append(here > float_convs)
            if any(rounded):
                found.append((layer, tuple(rounded)))
        for t in node.output_tensors:
            depth[id(t)] = here
    return found


def _mean_inputs(backbone, preprocess, layers: list, calibration: np.ndarray) -> list[np.ndarray]:
    """Each layer's input averaged over the calibration images, per position and channel (H, W, C)."""
    import keras

    probe = keras.Model(backbone.input, [keras.ops.sum(layer.input, axis=0) for layer in layers])
    sums = None
    for start in range(0, len(calibration), CHUNK):
        batch = preprocess(calibration[start : start + CHUNK])
        found = probe(batch, training=False)
        part = [np.asarray(s, dtype=np.float64) for s in (found if isinstance(found, list | tuple) else [found])]
        sums = part if sums is None else [a + b for a, b in zip(sums, part, strict=True)]
    return [s / len(calibration) for s in sums]


def _output_shift(layer, mean: np.ndarray, rounded: tuple[bool, ...]) -> np.ndarray:
    """Per output channel, the mean over positions of the layer's int8-rounded output minus its float output
    on ``mean`` (exact for the mean input: a convolution without bias and activation is linear)."""
    config = {**layer.get_config(), "use_bias": False, "activation": None}
    kernels = [np.asarray(getattr(layer, name)) for name in KERNELS[type(layer).__name__]]
    int8 = [
        int8_rounded(k, depthwise=name == "depthwise_kernel" or type(layer).__name__ == "DepthwiseConv2D") if r else k
        for k, r, name in zip(kernels, rounded, KERNELS[type(layer).__name__], strict=True)
    ]
    outputs = []
    for weights in (int8, kernels):
        twin = type(layer).from_config({**config, "name": f"{layer.name}_shift"})
        twin.build((1, *mean.shape))
        twin.set_weights(weights)
        outputs.append(np.asarray(twin(mean[None].astype(np.float32)), dtype=np.float64))
    return (outputs[0] - outputs[1]).mean(axis=(0, 1, 2))


def _consumers(backbone) -> dict[int, list]:
    """For each layer (by id), the layers that read its output."""
    made_by = {id(t): layer for layer in backbone.layers for t in layer._inbound_nodes[0].output_tensors}
    found: dict[int, list] = {}
    for layer in backbone.layers:
        for t in layer._inbound_nodes[0].input_tensors:
            if id(t) in made_by:
                found.setdefault(id(made_by[id(t)]), []).append(layer)
    return found


def _absorb(layer, shift: np.ndarray, consumers: list) -> bool:
    """Subtract ``shift`` from the layer's pre-activation output: in its only reader's BatchNorm mean when the
    layer has no activation of its own, else in its bias. False when neither can take it."""
    import keras

    linear = layer.get_config().get("activation") in (None, "linear")
    if linear and len(consumers) == 1 and isinstance(consumers[0], keras.layers.BatchNormalization):
        bn = consumers[0]
        if bn.axis in (-1, 3):
            bn.moving_mean.assign(np.asarray(bn.moving_mean) + shift.astype(np.float32))
            return True
    if layer.use_bias:
        layer.bias.assign(np.asarray(layer.bias) - shift.astype(np.float32))
        return True
    return False
