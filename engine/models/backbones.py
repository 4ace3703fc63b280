"""The paper's 14 ``keras.applications`` backbones and two small MobileNets, one entry each.

Each entry pairs the constructor with its own ``preprocess_input`` (and the mode the in-graph
:class:`engine.models.layers.ImageNetPreprocess` reproduces), its default input size, and the official
Keras file name of its no-top ImageNet weights. Weights are resolved in this order: the local
weights folders (``CXR_WEIGHTS_DIR``), the Keras cache (``$KERAS_HOME/models``), then the normal
Keras download; when none works, :class:`MissingWeightsError` names the file and the folders.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import settings


class MissingWeightsError(RuntimeError):
    """ImageNet weights for a backbone are neither on disk nor downloadable."""


@dataclass(frozen=True)
class Backbone:
    """One registered architecture: how to build it, preprocess for it, and find its weights."""

    name: str
    module: str
    constructor: str
    preprocess_mode: str
    default_input_size: int
    min_input_size: int
    weights_file: Callable[[int], str]
    kwargs: dict[str, Any] = field(default_factory=dict)
    in_paper: bool = True
    blocks: str | None = None
    """A regular expression matching the names of the base's block outputs (``block_outputs``)."""

    @property
    def preprocess_input(self) -> Callable:
        """The architecture's own ``keras.applications.<module>.preprocess_input``."""
        import keras

        return getattr(keras.applications, self.module).preprocess_input

    def build(self, *, input_size: int, weights: str | None) -> Any:
        """The convolutional base (no top, no pooling) for ``input_size`` x ``input_size`` RGB."""
        import keras

        if input_size < self.min_input_size:
            raise ValueError(f"input_size={input_size} is below the minimum of {self.min_input_size} for {self.name}")
        resolved = resolve_weights(self, input_size=input_size) if weights == "imagenet" else weights
        constructor = getattr(keras.applications, self.constructor)
        try:
            return constructor(
                include_top=False,
                weights=resolved,
                input_shape=(input_size, input_size, 3),
                pooling=None,
                **self.kwargs,
            )
        except Exception as exc:
            if resolved != "imagenet":
                raise
            raise MissingWeightsError(_missing_message(self, input_size, exc)) from None

    def block_outputs(self, base) -> list[str]:
        """Names of the base's block outputs, shallow to deep, ending with its last layer: what
        ``pooling="block-statistics"`` reads."""
        if self.blocks is None:
            raise ValueError(
                f"pooling='block-statistics' does not know the block outputs of {self.name}; it is defined for: "
                + ", ".join(name for name, b in REGISTRY.items() if b.blocks)
            )
        names = [layer.name for layer in base.layers if re.fullmatch(self.blocks, layer.name)]
        last = base.layers[-1].name
        return names if names and names[-1] == last else [*names, last]


def _missing_message(backbone: Backbone, input_size: int, exc: Exception) -> str:
    folders = [*settings.weights_dirs(), settings.keras_cache_dir()]
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"ImageNet weights for {backbone.name} are missing: file '{backbone.weights_file(input_size)}' "
        f"was not found in {' or '.join(str(f) for f in folders)} and the Keras download failed ({reason}). "
        f"Put the file in {folders[0]} (or set CXR_WEIGHTS_DIR to its folder)."
    )


def resolve_weights(backbone: Backbone, *, input_size: int) -> str:
    """A local path to the no-top ImageNet weights, or ``"imagenet"`` to let Keras download them."""
    names = [backbone.weights_file(input_size), backbone.weights_file(backbone.default_input_size)]
    for folder in [*settings.weights_dirs(), settings.keras_cache_dir()]:
        for name in names:
            if (folder / name).is_file():
                return str(folder / name)
    return "imagenet"


def weights_identity(backbone: Backbone, *, input_size: int, weights: str | None) -> dict[str, str | None]:
    """Which weights a run used: the file name and the start of its sha256, for provenance."""
    if weights != "imagenet":
        return {"weights": weights, "file": None, "sha256": None}
    resolved = resolve_weights(backbone, input_size=input_size)
    if resolved == "imagenet":
        return {"weights": "imagenet", "file": backbone.weights_file(input_size), "sha256": None}
    digest = hashlib.sha256(Path(resolved).read_bytes()).hexdigest()
    return {"weights": "imagenet", "file": Path(resolved).name, "sha256": digest[:16]}


def _fixed(name: str) -> Callable[[int], str]:
    return lambda _size: name


def _mobilenet_file(alpha: float) -> Callable[[int], str]:
    text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    return lambda size: f"mobilenet_{text}_{size}_tf_no_top.h5"


def _mobilenet_v2_file(alpha: float) -> Callable[[int], str]:
    return lambda size: f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{size}_no_top.h5"


def _keras_file(prefix: str) -> Callable[[int], str]:
    return _fixed(f"{prefix}_weights_tf_dim_ordering_tf_kernels_notop.h5")


def _family(module: str, mode: str, default: int, minimum: int, blocks: str | None = None) -> Callable[..., Backbone]:
    """One builder per family; each architecture below is a thin named entry of it."""

    def entry(name: str, constructor: str, weights_file: Callable[[int], str], **extra: Any) -> Backbone:
        return Backbone(name, module, constructor, mode, default, minimum, weights_file, blocks=blocks, **extra)

    return entry


_resnet = _family("resnet", "caffe", 224, 32, blocks=r"conv\d_block\d+_out")
_resnet_v2 = _family("resnet_v2", "tf", 224, 32, blocks=r"conv\d_block\d+_out|post_relu")
_vgg16 = _family("vgg16", "caffe", 224, 32, blocks=r"block\d_pool")
_vgg19 = _family("vgg19", "caffe", 224, 32, blocks=r"block\d_pool")
_densenet = _family("densenet", "torch", 224, 32, blocks=r"pool\d_relu|relu")
_mobilenet = _family("mobilenet", "tf", 224, 32, blocks=r"conv_pw_\d+_relu")
_mobilenet_v2 = _family("mobilenet_v2", "tf", 224, 32, blocks=r"block_\d+_add|out_relu")
_xception = _family("xception", "tf", 299, 71)
_inception_v3 = _family("inception_v3", "tf", 299, 75)
_inception_resnet_v2 = _family("inception_resnet_v2", "tf", 299, 75)
_nasnet_mobile = _family("nasnet", "tf", 224, 32)
_nasnet_large = _family("nasnet", "tf", 331, 32)

REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in [
        _resnet("ResNet50", "ResNet50", _keras_file("resnet50")),
        _mobilenet("MobileNet", "MobileNet", _mobilenet_file(1.0), kwargs={"alpha": 1.0}),
        _densenet("DenseNet169", "DenseNet169", _keras_file("densenet169")),
        _vgg16("VGG16", "VGG16", _keras_file("vgg16")),
        _densenet("DenseNet121", "DenseNet121", _keras_file("densenet121")),
        _densenet("DenseNet201", "DenseNet201", _keras_file("densenet201")),
        _mobilenet_v2("MobileNetV2", "MobileNetV2", _mobilenet_v2_file(1.0), kwargs={"alpha": 1.0}),
        _vgg19("VGG19", "VGG19", _keras_file("vgg19")),
        _xception("Xception", "Xception", _keras_file("xception")),
        _nasnet_large("NASNetLarge", "NASNetLarge", _fixed("nasnet_large_no_top.h5")),
        _nasnet_mobile("NASNetMobile", "NASNetMobile", _fixed("nasnet_mobile_no_top.h5")),
        _inception_v3("InceptionV3", "InceptionV3", _keras_file("inception_v3")),
        _inception_resnet_v2("InceptionResNetV2", "InceptionResNetV2", _keras_file("inception_resnet_v2")),
        _resnet_v2("ResNet50V2", "ResNet50V2", _keras_file("resnet50v2")),
        _mobilenet("MobileNet-0.25", "MobileNet", _mobilenet_file(0.25), kwargs={"alpha": 0.25}, in_paper=False),
        _mobilenet_v2(
            "MobileNetV2-0.35", "MobileNetV2", _mobilenet_v2_file(0.35), kwargs={"alpha": 0.35}, in_paper=False
        ),
    ]
}
PAPER_BACKBONES = tuple(name for name, b in REGISTRY.items() if b.in_paper)


def get_backbone(name: str) -> Backbone:
    """The registered backbone called ``name``; the error lists the valid names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)}") from None
