"""What a fold reports while it trains, and how it is told to stop: two plain callables, which is all the
background worker needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field


class Cancelled(Exception):
    """Raised when ``should_stop`` asked the training of a fold to stop."""


PHASES_ON_CACHED_FEATURES = ("features", "head")
"""Phases of a fold on cached features: seconds to minutes, timed on their own (they say nothing of the epochs
on images)."""

WARM_UP_END = 0.1
"""Where a head warmed up on cached features ends on its fold's bar: its seconds are not most of the fold when
epochs on images follow."""

EXTRACTION_END = 0.5
"""Where feature extraction ends on the bar of a fold trained on cached features alone (a probe, a frozen base):
the head's fit takes the rest, so the bar does not wait at a tenth and then jump."""


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
    end: float = 1.0

    @property
    def phase_fraction(self) -> float:
        """Fraction of this phase done: of its batches for feature extraction, else of its epochs."""
        if self.phase == "features":
            return self.batch / max(1, self.batches)
        return min(1.0, (self.epoch + self.batch / max(1, self.batches)) / max(1, self.epochs))

    @property
    def fraction(self) -> float:
        """Fraction of this fold done: the phase runs from ``start`` to ``end`` of the fold's bar (a warm-up to
        :data:`WARM_UP_END`, feature extraction to :data:`EXTRACTION_END` when the head alone follows)."""
        return self.start + (self.end - self.start) * self.phase_fraction

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction}


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]
