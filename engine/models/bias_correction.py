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
as :func:`engine.models.export.writers.first_convolutions` counts them: a separable convolution is a
depthwise then a pointwise one) are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KERNELS = {
    "Conv2D": ("kernel",),
    "DepthwiseConv2D": ("kernel",),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
}
"""The kernels of each Keras convolution, in the order the converters run them (each is one int8 convolution)."""
CHUNK = 16


@dataclass(frozen=True)
class Correction:
    """What :func:`correct_int8_bias` changed: the names of the convolutions it corrected."""

    corrected: tuple[str, ...]
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

    ``graph`` is an export graph (:func:`engine.models.export.graph.export_graph`): its ``member_*`` submodels
    hold a ``preprocess_*`` layer and a ``backbone_*`` model. ``calibration`` is the float32 batch
    (N, S, S, 1) the converter calibrates on. Only the graph's own copies of the layers change.
    """
    corrected: list[str] = []
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
            absorbed = _absorb(layer, shift, consumers.get(id(layer), []))
            (corrected if absorbed else uncorrected).append(layer.name)
    return Correction(corrected=tuple(corrected), uncorrected=tuple(uncorrected))


def _quantized_convolutions(backbone, float_convs: int) -> list[tuple[object, tuple[bool, ...]]]:
    """The backbone's convolutions with a kernel past the first ``float_convs`` on its longest path from the
    input, each with which of its kernels (:data:`KERNELS`) int8 rounds: each kernel is one convolution."""
    ops, convolutions = [], []
    for layer in backbone.layers:
        node = layer._inbound_nodes[0]
        inputs, outputs = [id(t) for t in node.input_tensors], [id(t) for t in node.output_tensors]
        kernels = KERNELS.get(type(layer).__name__, ())
        if not kernels:
            ops.append((False, inputs, outputs, []))
            continue
        convolutions.append(layer)
        for index in range(len(kernels)):
            made = outputs if index == len(kernels) - 1 else [(id(layer), index)]
            ops.append((True, inputs, made, [(id(layer), index)]))
            inputs = made
    kept = set(within_first_convolutions(ops, float_convs))
    found = []
    for layer in convolutions:
        rounded = tuple((id(layer), i) not in kept for i in range(len(KERNELS[type(layer).__name__])))
        if any(rounded):
            found.append((layer, rounded))
    return found


def within_first_convolutions(ops, depth: int) -> list:
    """Labels of the convolutions among ``ops`` (``(is_conv, inputs, outputs, labels)`` in topological order)
    with at most ``depth`` convolutions on their longest path from the input, counting themselves."""
    convs_before: dict = {}
    found = []
    for is_conv, inputs, outputs, labels in ops:
        here = max((convs_before.get(i, 0) for i in inputs), default=0) + int(is_conv)
        if is_conv and here <= depth:
            found.extend(labels)
        for o in outputs:
            convs_before[o] = here
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
    names = KERNELS[type(layer).__name__]
    kernels = [np.asarray(getattr(layer, name)) for name in names]
    depthwise = [name == "depthwise_kernel" or type(layer).__name__ == "DepthwiseConv2D" for name in names]
    int8 = [int8_rounded(k, depthwise=d) if r else k for k, d, r in zip(kernels, depthwise, rounded, strict=True)]
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
