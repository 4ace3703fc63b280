"""The export graph: the members' serving graph with layers of their own, and its int8-corrected twin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.models import serving
from engine.models.bias_correction import Correction, correct_int8_bias
from engine.models.export.options import INT8_DEFAULTS, Int8Options


class BackendError(RuntimeError):
    """The export was asked for under a Keras backend that cannot write the files."""


def export_graph(members: list):
    """``serving_model`` of the members, each as a :class:`Branch`: unique layer names, preprocessing without XLA."""
    import keras

    if keras.backend.backend() != "tensorflow":
        raise BackendError(f"export needs the TensorFlow backend, got KERAS_BACKEND={keras.backend.backend()!r}")
    return serving.serving_model([Branch.of(m, index=i) for i, m in enumerate(members)], name="cxr_export")


@dataclass(frozen=True)
class Branch:
    """One member as ``serving_model`` reads it (``input_shape``, ``get_layer``), with copies of its layers.

    Every saved fold model names its layers ``preprocess``, ``backbone`` and ``head``, and a Keras
    graph refuses two layers of one name, so an ensemble's members get numbered copies (same
    weights; the caller's models are left untouched). The preprocessing is rebuilt with
    ``xla=False``: tf2onnx cannot convert a compiled function, and the arithmetic is the same.
    """

    input_shape: tuple
    layers: dict

    @classmethod
    def of(cls, member, *, index: int) -> Branch:
        import keras

        from engine.models.layers import BlockStatisticsPool, ImageNetPreprocess

        pre, backbone, head = (member.get_layer(name) for name in ("preprocess", "backbone", "head"))
        twin = keras.models.clone_model(backbone)
        twin.set_weights(backbone.get_weights())
        twin.name = f"backbone_{index}"
        dense = keras.layers.Dense.from_config({**head.get_config(), "name": f"head_{index}"})
        dense.build((None, head.kernel.shape[0]))
        dense.set_weights(head.get_weights())
        plain = ImageNetPreprocess.from_config({**pre.get_config(), "xla": False, "name": f"preprocess_{index}"})
        layers = {"preprocess": plain, "backbone": twin, "head": dense}
        statistics = serving.block_statistics(member)
        if statistics is not None:
            layers["pool"] = BlockStatisticsPool(name=f"statistics_{index}")
            layers["pool"].build([tuple(o.shape) for o in backbone.outputs])
            layers["pool"].set_weights(statistics.get_weights())
        return cls(input_shape=tuple(member.input_shape), layers=layers)

    def get_layer(self, name: str):
        return self.layers[name]


def int8_graph(
    members: list, calibration: np.ndarray, *, format: str, options: Int8Options = INT8_DEFAULTS
) -> tuple[object, Correction | None]:
    """A second export graph of ``members`` for the int8 file of ``format``, with :func:`correct_int8_bias`
    applied to its quantized convolutions unless ``options`` say not to (the float graph stays the parity
    check's reference); the correction is None when none was applied."""
    graph = export_graph(members)
    if not options.bias_correction:
        return graph, None
    return graph, correct_int8_bias(graph, calibration, float_convs=options.float_first_convs[format])
