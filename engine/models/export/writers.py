"""The writers: an export graph as a LiteRT or ONNX file, float or int8."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from engine.models.bias_correction import within_first_convolutions
from engine.models.export.options import CALIBRATION_CHUNK, INT8_DEFAULTS, ONNX_PERCENTILE, Int8Options
from engine.models.runtime import INPUT_NAME
from engine.results import atomic


def _signature(graph) -> list:
    import keras

    return [keras.InputSpec(shape=(None, *graph.input_shape[1:]), dtype="float32", name=INPUT_NAME)]


def _write_litert(graph, path: Path, calibration: np.ndarray | None, options: Int8Options = INT8_DEFAULTS) -> None:
    with atomic.atomic_path(path, suffix=".tflite") as tmp:
        if calibration is None:
            graph.export(str(tmp), format="litert", verbose=False, input_signature=_signature(graph))
        else:
            tmp.write_bytes(litert_int8(graph, calibration, float_convs=options.float_first_convs["litert"]))


def litert_int8(graph, calibration: np.ndarray, *, float_convs: int) -> bytes:
    """Full-integer LiteRT but for each member's first ``float_convs`` convolutions (the converter's
    selective quantization: its debugger's deny list), from a SavedModel of the graph."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    def samples():
        for image in calibration:
            yield {INPUT_NAME: image[None]}

    with tempfile.TemporaryDirectory(prefix="cxr-litert-") as tmp:
        graph.export(tmp, format="tf_saved_model", verbose=False, input_signature=_signature(graph))
        float_model = Interpreter(model_content=tf.lite.TFLiteConverter.from_saved_model(tmp).convert())
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        # The debugger is only the converter's way to take a deny list: its own run() is never called.
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=first_litert_convolutions(float_model, float_convs)
            ),
        )
        return debugger.get_nondebug_quantized_model()


def first_litert_convolutions(interpreter, depth: int) -> list[str]:
    """Output tensor names of the convolutions with at most ``depth`` convolutions from the input, counting
    themselves (:func:`first_convolutions` on a LiteRT graph)."""
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    # _get_ops_details is the interpreter's only listing of its operators (ai-edge-litert is pinned).
    ops = [
        (
            op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"),
            [i for i in op["inputs"] if i >= 0],
            op["outputs"],
            [names[o] for o in op["outputs"]],
        )
        for op in interpreter._get_ops_details()
    ]
    return within_first_convolutions(ops, depth)


def _write_onnx(graph, path: Path, calibration: np.ndarray | None, options: Int8Options = INT8_DEFAULTS) -> None:
    with atomic.atomic_path(path, suffix=".onnx") as tmp:
        graph.export(str(tmp), format="onnx", verbose=False, input_signature=_signature(graph))
        if calibration is not None:
            quantize_onnx(
                tmp,
                calibration,
                float_convs=options.float_first_convs["onnx"],
                percentile=options.onnx_percentile,
                chunk=options.calibration_chunk,
            )


def quantize_onnx(
    path: Path,
    calibration: np.ndarray,
    *,
    float_convs: int,
    percentile: float = ONNX_PERCENTILE,
    chunk: int = CALIBRATION_CHUNK,
) -> None:
    """Static QDQ quantization in place: uint8 activations, int8 per-channel weights (x86's fast pairing).

    Activation ranges are each tensor's ``percentile`` on the calibration images, not its min/max: one
    extreme pixel of one calibration image would otherwise widen a range that every image then shares
    (LiteRT's converter offers min/max only). Calibration runs ``chunk`` images, or a divisor of their
    count, at a time."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration images one by one, within the range the calibrator asks for."""

        def __init__(self) -> None:
            self.set_range(start_index=0, end_index=len(calibration))

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._images = iter(calibration[start_index:end_index])

        def get_next(self) -> dict | None:
            image = next(self._images, None)
            return None if image is None else {INPUT_NAME: image[None]}

    with tempfile.TemporaryDirectory(prefix="cxr-onnx-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            nodes_to_exclude=first_convolutions(prepared, float_convs),
            # Histograms grow a chunk at a time: every image's activations at once would take gigabytes.
            extra_options={
                "CalibStridedMinMax": math.gcd(len(calibration), chunk),
                "CalibPercentile": percentile,
            },
        )


def first_convolutions(path: Path, depth: int) -> list[str]:
    """The Conv nodes with at most ``depth`` convolutions on their path from the input, counting themselves:
    each member's first ``depth`` (an ensemble's members run side by side, so graph order would not do)."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    ops = [(n.op_type == "Conv", [i for i in n.input if i], n.output, [n.name]) for n in nodes]
    return within_first_convolutions(ops, depth)


WRITERS = {"litert": _write_litert, "onnx": _write_onnx}
