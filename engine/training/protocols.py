"""Training protocols as data: a user adds one without touching the training loop.

A protocol is a list of :class:`Stage` (epochs, learning rate, which weights train) plus the
batch size, Adam's betas, the augmentation, and whether the backbone's pooled features are
computed once and cached (``cached_features``: only the head trains, so the base never runs
again for the same dataset, backbone and input size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Augmentation:
    """The paper's ``ImageDataGenerator`` arguments (see :mod:`engine.models.layers` for the mapping)."""

    rotation: float = 50.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    zoom: float = 0.1
    horizontal_flip: bool = True
    vertical_flip: bool = True


@dataclass(frozen=True)
class Stage:
    """A span of epochs with one learning rate; ``trainable`` is ``"all"`` or ``"head"``."""

    epochs: int
    learning_rate: float = 1e-3
    trainable: str = "all"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got epochs={self.epochs!r}")
        if self.trainable not in ("all", "head"):
            raise ValueError(f"trainable must be 'all' or 'head', got trainable={self.trainable!r}")


@dataclass(frozen=True)
class Protocol:
    """How every fold of a study is trained."""

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

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError(f"protocol {self.name!r} needs at least one stage")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got batch_size={self.batch_size!r}")
        if self.cached_features and any(s.trainable != "head" for s in self.stages):
            raise ValueError(f"protocol {self.name!r}: cached features only allow stages with trainable='head'")

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def replace(self, *, epochs: int | None = None, batch_size: int | None = None) -> Protocol:
        """A copy with another epoch count (of the last stage) or batch size."""
        stages = self.stages
        if epochs is not None:
            stages = (*stages[:-1], dataclasses.replace(stages[-1], epochs=epochs))
        return dataclasses.replace(self, stages=stages, batch_size=batch_size or self.batch_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Protocol:
        data = dict(data)
        data["stages"] = tuple(Stage(**s) for s in data["stages"])
        data["augmentation"] = Augmentation(**data["augmentation"]) if data.get("augmentation") else None
        return cls(**data)


PAPER = Protocol(
    name="paper",
    description=(
        "The paper's protocol: every layer trainable on top of ImageNet weights, new softmax head, "
        "Adam (lr 1e-3, beta1 0.9, beta2 0.999), 10 epochs, batch 32, with the paper's augmentation."
    ),
    stages=(Stage(epochs=10, learning_rate=1e-3, trainable="all"),),
)

FROZEN = Protocol(
    name="frozen",
    description=(
        "ImageNet base frozen; its pooled features are computed once per dataset, backbone and input size and "
        "cached, and a softmax head (L2 1e-4) is trained on them with Adam. Practical for a full study on a CPU."
    ),
    stages=(Stage(epochs=60, learning_rate=1e-3, trainable="head"),),
    augmentation=None,
    cached_features=True,
    feature_views=1,
    head_l2=1e-4,
)

WARMUP_FINETUNE = Protocol(
    name="warmup-finetune",
    description="Head trained alone for 2 epochs, then every layer at a 10x lower rate for 8 epochs.",
    stages=(Stage(epochs=2, learning_rate=1e-3, trainable="head"), Stage(epochs=8, learning_rate=1e-4)),
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (PAPER, FROZEN, WARMUP_FINETUNE)}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}") from None
