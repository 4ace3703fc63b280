"""Training protocols as data: a user adds one without touching the training loop.

A protocol is a list of :class:`Stage` (epochs, learning rate and its schedule, which weights
train) plus the batch size, Adam's betas, the augmentation, how BatchNorm behaves while the base
trains, the loss's label smoothing and class weights, how the epoch to keep is chosen, and
whether the backbone's pooled features are computed once and cached (``cached_features``: only
the head trains, so the base never runs again for the same dataset, backbone and input size), how
they are pooled (``pooling``) and how the head is fitted on them (``head``).

A protocol's dictionary names its study (``engine.training.study.study_id_for``). Options added
after the first studies were run are left out of it while they keep their default, so every
study made before they existed keeps its id (:func:`_without_defaults`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields

ADDED_LATER = {
    "Augmentation": ("brightness", "contrast", "gamma", "noise", "min_resolution", "blur", "sharpen", "jpeg"),
    "Stage": ("schedule", "on"),
    "RecallFloor": ("in_each_source",),
    "Protocol": (
        "batchnorm",
        "label_smoothing",
        "class_weight",
        "selection",
        "validation_fraction",
        "pooling",
        "head",
        "head_c",
        "inner_folds",
        "harmonise",
        "view_augmentation",
        "recall_floor",
    ),
}
SCHEDULES = ("constant", "cosine")
STAGE_INPUTS = ("images", "cached-features")
BATCHNORM_MODES = ("train", "inference")
CLASS_WEIGHTS = ("none", "balanced", "balanced-by-source")
SELECTIONS = ("last", "best-inner-validation")
POOLINGS = ("average", "block-statistics")
INTENSITIES = ("none", "equalise", "standardise")
HEADS = ("adam", "logistic-regression")


def _without_defaults(obj) -> dict:
    """``asdict(obj)`` without the fields of :data:`ADDED_LATER` that still hold their default."""
    data = asdict(obj)
    for f in fields(obj):
        if f.name in ADDED_LATER.get(type(obj).__name__, ()) and data[f.name] == f.default:
            del data[f.name]
    return data


@dataclass(frozen=True)
class Augmentation:
    """The paper's ``ImageDataGenerator`` arguments (see :mod:`engine.models.layers` for the mapping), and
    intensity changes: ``brightness`` (grey levels added, uniform in ±), ``contrast`` and ``gamma``
    (factors drawn log-uniformly in [1/x, x]; 1 is none) and ``noise`` (Gaussian, sd uniform in [0, x]).

    Acquisition changes (``engine.models.acquisition``), 0 for none: ``min_resolution`` (a downscale to a side
    between it and the input's, and back), ``blur`` (a Gaussian of this sd, blended in by a random amount)
    and ``sharpen`` (an unsharp mask of up to this amount), and ``jpeg`` (a re-encoding at a quality drawn
    between it and 95, done on the host by ``engine.training.batches``)."""

    rotation: float = 50.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    zoom: float = 0.1
    horizontal_flip: bool = True
    vertical_flip: bool = True
    brightness: float = 0.0
    contrast: float = 1.0
    gamma: float = 1.0
    noise: float = 0.0
    min_resolution: int = 0
    blur: float = 0.0
    sharpen: float = 0.0
    jpeg: int = 0

    def __post_init__(self) -> None:
        if self.jpeg and not 1 <= self.jpeg <= 95:
            raise ValueError(f"jpeg is the lowest quality drawn, in [1, 95] (or 0 for none), got jpeg={self.jpeg!r}")
        if self.min_resolution < 0 or self.blur < 0 or self.sharpen < 0:
            raise ValueError(
                "min_resolution, blur and sharpen must be 0 or more, got "
                f"min_resolution={self.min_resolution!r}, blur={self.blur!r}, sharpen={self.sharpen!r}"
            )

    def to_dict(self) -> dict:
        return _without_defaults(self)

    def in_graph(self) -> dict:
        """The arguments of the model's ``XRayAugment`` layer: all but the host's JPEG re-encoding."""
        return {k: v for k, v in asdict(self).items() if k != "jpeg"}


@dataclass(frozen=True)
class Harmonise:
    """What every image goes through alike, in training and in use (``engine.models.acquisition``):
    ``intensity`` ``"equalise"`` (histogram equalisation) or ``"standardise"`` (per-image mean and spread),
    then every ``downscale`` x ``downscale`` block averaged and resized back (2 at 224 px: 112 px of detail)."""

    intensity: str = "none"
    downscale: int = 1

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITIES:
            raise ValueError(f"intensity must be one of {INTENSITIES}, got intensity={self.intensity!r}")
        if self.downscale < 1:
            raise ValueError(f"downscale must be at least 1, got downscale={self.downscale!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RecallFloor:
    """A floor on one class's recall, met on the training folds: after a logistic-regression head is fitted,
    a logit offset for ``target`` that brings its recall over the inner folds' held-out images (the same inner
    folds that chose ``C``) to ``recall`` (``linear_head.logit_offset_for_recall``) is added to the head's bias for
    that class. A screening
    test is set the same way, at a sensitivity fixed in advance on development data; the test fold is never
    seen. Never lowers the class's logit: a head that already meets the floor is left as fitted.

    ``in_each_source`` meets the floor in every source (dataset folder) that brings the class, not only over all of
    its images: the largest of the sources' offsets is added, so a small source that is hard to tell apart (252
    adult normals beside 1,340 children's) is not left below the floor by a large one that is easy."""

    target: str
    recall: float
    in_each_source: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.recall < 1.0:
            raise ValueError(f"recall must be in (0, 1), got recall={self.recall!r}")

    def to_dict(self) -> dict:
        return _without_defaults(self)


@dataclass(frozen=True)
class Stage:
    """A span of epochs with one learning rate; ``trainable`` is ``"all"`` or ``"head"``.

    ``schedule`` ``"cosine"`` decays the rate along a half cosine to 1 % of it by the stage's end.
    ``on`` ``"cached-features"`` trains the head on the frozen base's cached pooled features (no
    augmentation): a linear probe in seconds, which warms the head up before the base trains.
    """

    epochs: int
    learning_rate: float = 1e-3
    trainable: str = "all"
    schedule: str = "constant"
    on: str = "images"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got epochs={self.epochs!r}")
        if self.trainable not in ("all", "head"):
            raise ValueError(f"trainable must be 'all' or 'head', got trainable={self.trainable!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got schedule={self.schedule!r}")
        if self.on not in STAGE_INPUTS:
            raise ValueError(f"on must be one of {STAGE_INPUTS}, got on={self.on!r}")
        if self.on == "cached-features" and self.trainable != "head":
            raise ValueError(f"a stage on cached features trains the head only, got trainable={self.trainable!r}")

    def to_dict(self) -> dict:
        return _without_defaults(self)


@dataclass(frozen=True)
class Protocol:
    """How every fold of a study is trained.

    ``batchnorm`` ``"inference"`` keeps the base's BatchNorm layers on their ImageNet statistics
    while the base trains (the paper's ``"train"`` re-estimates them from each batch).
    ``class_weight`` ``"balanced"`` weighs each image by ``n / (classes x n_class)``; ``"balanced-by-source"``
    gives each class the same total weight too, split alike between the sources (dataset folders) that bring it,
    so 252 adult normals weigh as much as 1,340 children's normals and a large source of one class cannot decide
    what that class looks like.
    ``selection`` ``"best-inner-validation"`` holds out ``validation_fraction`` of the training
    folds (stratified, seeded) and keeps the weights of the epoch with the lowest loss there; the
    test fold is used only once, at the end. ``"last"`` keeps the last epoch, as the paper did,
    and validates on the test fold each epoch for the curves.

    ``pooling`` ``"block-statistics"`` feeds the head the mean and standard deviation of every block's
    activations (``engine.models.layers.BlockStatisticsPool``), not only the last map's mean.
    ``head`` ``"logistic-regression"`` fits the head on cached features as scikit-learn's multinomial
    logistic regression of standardised features, its inverse L2 strength chosen from ``head_c`` by
    accuracy over ``inner_folds`` stratified folds of the training folds; the test fold is never seen.

    ``view_augmentation`` makes the cached features' views after the first (the image as it is) seeded draws
    of this augmentation instead of flips: a logistic-regression head then learns from every view of its
    training images, so that what an acquisition changes cannot tell the classes apart. Test images are
    always read as they are.

    ``recall_floor`` sets a logistic-regression head's bias for one class so that its recall over the inner
    folds reaches a floor (:class:`RecallFloor`).
    """

    name: str
    description: str
    stages: tuple[Stage, ...]
    batch_size: int = 32
    beta_1: float = 0.9
    beta_2: float = 0.999
    augmentation: Augmentation | None = Augmentation()
    cached_features: bool = False
    feature_views: int = 0
    head_l2: float = 0.0
    batchnorm: str = "train"
    label_smoothing: float = 0.0
    class_weight: str = "none"
    selection: str = "last"
    validation_fraction: float = 0.0
    pooling: str = "average"
    head: str = "adam"
    head_c: tuple[float, ...] = ()
    inner_folds: int = 0
    harmonise: Harmonise | None = None
    view_augmentation: Augmentation | None = None
    recall_floor: RecallFloor | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"protocol {self.name!r} needs at least one stage")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got batch_size={self.batch_size!r}")
        if self.cached_features and any(s.trainable != "head" for s in self.stages):
            raise ValueError(f"protocol {self.name!r}: cached features only allow stages with trainable='head'")
        for name, value, allowed in (
            ("batchnorm", self.batchnorm, BATCHNORM_MODES),
            ("class_weight", self.class_weight, CLASS_WEIGHTS),
            ("selection", self.selection, SELECTIONS),
            ("pooling", self.pooling, POOLINGS),
            ("head", self.head, HEADS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {name}={value!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got label_smoothing={self.label_smoothing!r}")
        inner = self.selection == "best-inner-validation"
        if inner != (0.0 < self.validation_fraction < 0.5):
            raise ValueError(
                "validation_fraction must be in (0, 0.5) exactly when selection='best-inner-validation', "
                f"got selection={self.selection!r}, validation_fraction={self.validation_fraction!r}"
            )

        if self.pooling != "average" and not self.cached_features:
            raise ValueError(f"pooling={self.pooling!r} needs cached_features=True (a frozen base)")
        regression = not self.trains_by_epochs
        if regression and not (self.cached_features and self.head_c and self.inner_folds >= 2):
            raise ValueError(
                "head='logistic-regression' needs cached_features=True, a head_c grid and inner_folds >= 2, got "
                f"cached_features={self.cached_features!r}, head_c={self.head_c!r}, inner_folds={self.inner_folds!r}"
            )
        if regression and self.selection != "last":
            raise ValueError(f"head='logistic-regression' has no epochs to select, got selection={self.selection!r}")
        if any(c <= 0 for c in self.head_c):
            raise ValueError(f"head_c must hold positive values, got head_c={self.head_c!r}")
        if self.recall_floor is not None and not regression:
            raise ValueError(
                f"recall_floor is met on the inner folds of a logistic-regression head, got head={self.head!r}"
            )
        if self.view_augmentation is not None and not (self.cached_features and self.feature_views >= 2):
            raise ValueError(
                "view_augmentation needs cached_features=True and feature_views >= 2 (the image, then its draws), "
                f"got cached_features={self.cached_features!r}, feature_views={self.feature_views!r}"
            )

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    @property
    def trains_by_epochs(self) -> bool:
        """False when the head is fitted in one solve (logistic regression): an epoch count means nothing."""
        return self.head != "logistic-regression"

    def replace(self, *, epochs: int | None = None, batch_size: int | None = None) -> Protocol:
        """A copy with another epoch count (of the last stage) or batch size."""
        stages = self.stages
        if epochs is not None:
            stages = (*stages[:-1], dataclasses.replace(stages[-1], epochs=epochs))
        return dataclasses.replace(self, stages=stages, batch_size=batch_size or self.batch_size)

    def check_classes(self, classes: tuple[str, ...]) -> None:
        """Refuses a dataset without the class the recall floor is for."""
        point = self.recall_floor
        if point is not None and point.target not in classes:
            raise ValueError(
                f"recall_floor's target must be one of the dataset's classes {list(classes)}, "
                f"got target={point.target!r}"
            )

    def on_images(self) -> Protocol:
        """The protocol without its head warm-up on cached features: the stages that see images."""
        stages = tuple(stage for stage in self.stages if stage.on == "images")
        return self if len(stages) == len(self.stages) else dataclasses.replace(self, stages=stages)

    def to_dict(self) -> dict:
        data = _without_defaults(self)
        data["stages"] = [stage.to_dict() for stage in self.stages]
        data["augmentation"] = self.augmentation.to_dict() if self.augmentation else None
        if "head_c" in data:
            data["head_c"] = list(self.head_c)
        if self.harmonise is not None:
            data["harmonise"] = self.harmonise.to_dict()
        if self.view_augmentation is not None:
            data["view_augmentation"] = self.view_augmentation.to_dict()
        if self.recall_floor is not None:
            data["recall_floor"] = self.recall_floor.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Protocol:
        data = dict(data)
        data["stages"] = tuple(Stage(**s) for s in data["stages"])
        data["augmentation"] = Augmentation(**data["augmentation"]) if data.get("augmentation") else None
        data["head_c"] = tuple(data.get("head_c", ()))
        data["harmonise"] = Harmonise(**data["harmonise"]) if data.get("harmonise") else None
        views = data.get("view_augmentation")
        data["view_augmentation"] = Augmentation(**views) if views else None
        point = data.get("recall_floor")
        data["recall_floor"] = RecallFloor(**point) if point else None
        return cls(**data)

    def preprocessing(self) -> dict:
        """The harmonisation arguments of the model's ``ImageNetPreprocess`` layer (none by default)."""
        return self.harmonise.to_dict() if self.harmonise else {}
