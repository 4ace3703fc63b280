"""The export's options: the formats and precisions it takes, and the int8 settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from engine.models.runtime import FORMATS

QUANTIZATIONS = (None, "int8")
CALIBRATION_IMAGES = 128
CALIBRATION_CHUNK = 16
"""ONNX calibration runs this many images (or a divisor of their count) at a time."""
FLOAT_FIRST_CONVS = {"litert": 7, "onnx": 3}
"""int8 keeps each member's first convolutions float, per format: they see the raw radiograph's full range.
Each count is the fewest at which the int8 file's argmax agrees most with the float file's on images no
member trained on, no label read and no held-out image used (``python -m benchmarks.int8_float_layers``)."""
ONNX_PERCENTILE = 99.999
"""The percentile of each tensor's calibration histogram that sets its ONNX int8 range: onnxruntime's default.
Lower percentiles (``--onnx-percentile`` of both int8 benchmarks) did not agree measurably better."""


@dataclass(frozen=True, kw_only=True)
class Int8Options:
    """How an int8 file is made. The defaults are the product's (``python -m engine export --quantize int8``);
    the int8 benchmarks vary them and write their files through the same path."""

    float_first_convs: Mapping[str, int] = field(default_factory=lambda: dict(FLOAT_FIRST_CONVS))
    """Per format, how many of each member's first convolutions stay float."""
    onnx_percentile: float = ONNX_PERCENTILE
    """The percentile of each tensor's calibration histogram that sets its ONNX activation range."""
    calibration_images: int = CALIBRATION_IMAGES
    """How many of the members' training images calibrate the activation ranges."""
    calibration_chunk: int = CALIBRATION_CHUNK
    """ONNX calibration runs this many images (or a divisor of their count) at a time."""
    bias_correction: bool = True
    """Whether each int8 convolution's weight-rounding shift is folded back before conversion."""

    def __post_init__(self) -> None:
        counts = dict(self.float_first_convs)
        if set(counts) != set(FORMATS) or any(not isinstance(n, int) or n < 0 for n in counts.values()):
            raise ValueError(f"float_first_convs must give a count >= 0 for each of {sorted(FORMATS)}, got {counts}")
        if not 0 < self.onnx_percentile <= 100:
            raise ValueError(f"onnx_percentile must be in (0, 100], got onnx_percentile={self.onnx_percentile}")
        if self.calibration_images < 1 or self.calibration_chunk < 1:
            raise ValueError(
                "calibration_images and calibration_chunk must be at least 1, got "
                f"calibration_images={self.calibration_images}, calibration_chunk={self.calibration_chunk}"
            )
        object.__setattr__(self, "float_first_convs", MappingProxyType(counts))

    def activations(self, format: str) -> str:
        """How ``format``'s int8 file sets its activation ranges (:func:`quantize_onnx` says why they differ)."""
        if format == "litert":
            return "int8, ranges from the calibration images (min/max)"
        return f"uint8, ranges from the calibration images ({self.onnx_percentile:g}th percentile of each tensor)"


INT8_DEFAULTS = Int8Options()
"""The product's int8 options."""
ACTIVATIONS = {format: INT8_DEFAULTS.activations(format) for format in ("litert", "onnx")}
"""How each format's int8 file sets its activation ranges with the default options."""


def check_options(*, format: str, quantize: str | None) -> None:
    """Fail early, naming the argument, before any model is loaded."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, got format={format!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be None or 'int8', got quantize={quantize!r}")
