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
"""int8 keeps each member's first convolutions float (they see the raw radiograph's full range), per format. Chosen on
the frozen MobileNet of fold 3 as the fewest (of 0 to 9) at which the int8 file's argmax agrees most with the float
file's on 400 images no member trained on: COVID-19 images of ``covid19-extra``, the only such set here (no label
read, never a held-out image; ``python -m benchmarks.int8_float_layers``). LiteRT 0 to 9 float: 0.895, 0.898, 0.980,
0.998, 0.998, 0.998, 0.995, 1.000, 0.998, 0.998; ONNX (min/max ranges then, as LiteRT's) 0.890, 0.905, 0.983, 1.000,
0.995, then 0.993 to 0.995. Past 2 the counts differ by one or two images of 400, so LiteRT's 7 over 3 rests on one
image. The model's own training images could not choose: in LiteRT every count from 3 to 8 agrees on all of them.
Checked again on the 5 fold models of the frozen MobileNet retrained (``--folds 0 1 2 3 4 --formats onnx --counts 3 5
7``, percentile ranges): pooled unseen agreement 0.9940, 0.9925, 0.9940 with 3, 5, 7 float (mean |Δp| 0.0115, 0.0111,
0.0106), so the same rule keeps ONNX's 3. 3 first convolutions hold 0.10 % of MobileNet 1.0's weights, 0.19 % of
MobileNet-0.25's, 0.17 % of MobileNetV2-0.35's; 7 hold 0.91 %, 1.09 % and 0.56 %."""
ONNX_PERCENTILE = 99.999
"""The percentile of each tensor's calibration histogram that sets its ONNX int8 range (onnxruntime's default).
99.99 and 99.9 were measured against it on the 5 retrained frozen MobileNet folds (``python -m
benchmarks.int8_float_layers --artifacts DIR --folds 0 1 2 3 4 --formats onnx --counts 3 --onnx-percentile P``):
400 unseen ``covid19-extra`` images per fold disagreed on 16, 11 and 14 of 2,000 images with 99.999, 99.99 and 99.9;
on the committed frozen fold 3 on 0 and 1 of 400 (99.999, 99.99), on the paper protocol's MobileNet-0.25 of fold 3
on 3 and 3. One to five images of 2,000 either way, no more than the same files differ between machines: too
little to move the default, which the recommended study's int8 figures were measured with (its fold models were not
at hand to measure 99.99). Measured afterwards on the frozen folds' held-out images, 99.999 and 99.99 agreed on 98.9 %
and 99.0 % (33 and 30 of 2,897 differ) and lost 0.59 and 0.48 points."""


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
