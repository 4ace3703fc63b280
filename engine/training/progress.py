"""What a fold reports while it trains, and how it is told to stop: two plain callables, which is all the
background worker needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field


class Cancelled(Exception):
    """Raised when ``should_stop`` asked the training of a fold to stop."""


PHASES_ON_CACHED_FEATURES = ("features", "head")
"""Phases of a fold on cached features: seconds to minutes, the first tenth of its bar, timed on their own
(they say nothing of the epochs on images)."""


@dataclass
class Progress:
    """A snapshot of one fold's training, sent at least once per epoch and every few seconds."""

    backbone: str
    fold: int
    phase: str
    epoch: int
    epochs: int
    batch: int
    batches: int
    logs: dict[str, float] = field(default_factory=dict)
    images_per_second: float | None = None
    start: float = 0.0

    @property
    def phase_fraction(self) -> float:
        """Fraction of this phase done: of its batches for feature extraction, else of its epochs."""
        if self.phase == "features":
            return self.batch / max(1, self.batches)
        return min(1.0, (self.epoch + self.batch / max(1, self.batches)) / max(1, self.epochs))

    @property
    def fraction(self) -> float:
        """Fraction of this fold done: feature extraction, when cached, and a head warmed up on cached
        features (``phase="head"``, seconds) count as the first tenth; a phase begins at ``start``."""
        if self.phase in PHASES_ON_CACHED_FEATURES:
            return 0.1 * self.phase_fraction
        return self.start + (1.0 - self.start) * self.phase_fraction

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]
