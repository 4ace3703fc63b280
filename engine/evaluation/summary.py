"""Everything a reviewer asks of one model's out-of-fold predictions, computed once and kept on disk.

Intervals: a stratified bootstrap over the pooled out-of-fold predictions (``bootstrap``), every
figure of the comparison table and the AUC and average precision of each class. Calibration:
ECE and Brier before and after temperature scaling, each fold's temperature fitted on the other
folds only (``calibration.cross_fitted_temperature``).

Kept as ``studies/<id>/evaluation/<model>-<key>.json``, the key hashing the predictions files'
bytes, these settings and :data:`SUMMARY_SCHEMA` (as ``joblib.Memory`` keys its cache), written
atomically; a newer key (a fold finished) replaces the older file, but not a summary of more folds.
The bootstrap of a 3-backbone study takes a few seconds cold (``benchmarks/evaluation.py``), then a
file read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import settings
from engine.evaluation.bootstrap import MIN_RESAMPLES
from engine.evaluation.calibration import cross_fitted_temperature, reliability
from engine.evaluation.confusion_bootstrap import bootstrap_confusion_metrics, bootstrap_difference
from engine.evaluation.discrimination import discrimination_intervals
from engine.evaluation.predictions import OutOfFold
from engine.results import artifacts, atomic, cache

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = 1
KEY_LENGTH = 12
RELIABILITY_BINS = 10


@dataclass(frozen=True)
class IntervalSettings:
    """How intervals are computed; part of the cache key and named on every page that shows them."""

    n_resamples: int = MIN_RESAMPLES
    confidence: float = 0.95
    seed: int = 0
    method: str = "percentile"

    def describe(self, *, of: str = "the pooled out-of-fold predictions") -> str:
        return (
            f"{self.confidence:.0%} intervals: stratified bootstrap (resampling within each true class) of "
            f"{of}, {self.n_resamples:,} resamples, {self.method} method, seed {self.seed}"
        )


DEFAULT_INTERVALS = IntervalSettings()


def _calibration(oof: OutOfFold) -> dict:
    before = reliability(oof.y_true, oof.proba, oof.classes, n_bins=RELIABILITY_BINS)
    out = {"before": _calibration_figures(before), "temperatures": None, "after": None}
    if len(oof.fold_ids) >= 2:
        scaled, temperatures = cross_fitted_temperature(oof.y_true, oof.proba, oof.folds)
        out["temperatures"] = {str(k): v for k, v in temperatures.items()}
        out["after"] = _calibration_figures(reliability(oof.y_true, scaled, oof.classes, n_bins=RELIABILITY_BINS))
    return out


def _calibration_figures(found) -> dict:
    return {
        "ece_top_label": found.top_label.ece,
        "ece": {curve.label: curve.ece for curve in found.per_class},
        "brier": found.brier,
    }


def _path(oof: OutOfFold, key: str, artifacts_root: Path) -> Path:
    return artifacts.study_dir(oof.study_id, artifacts_root) / "evaluation" / f"{oof.model}-{key}.json"


def _replaced_by(oof: OutOfFold, path: Path) -> list[Path]:
    """Older summaries of ``oof``'s model that a new one makes stale: those of the same folds or of fewer (a fold
    finished, a prediction changed). A summary of more folds stays: a fold's model card summarises that fold
    alone, and must not drop the whole study's. Another model whose name starts with this one's
    (``MobileNet-0.25`` beside ``MobileNet``) is not this model."""
    name = re.compile(rf"{re.escape(oof.model)}-[0-9a-f]{{{KEY_LENGTH}}}\.json")
    folds = set(oof.fold_ids)
    stale = []
    for other in path.parent.glob(f"{oof.model}-*.json"):
        if other != path and name.fullmatch(other.name):
            try:
                covered = set(atomic.read_json(other)["folds"])
            except (OSError, ValueError, KeyError):
                covered = set()
            if covered <= folds:
                stale.append(other)
    return stale


def summary_key(oof: OutOfFold, intervals: IntervalSettings) -> str:
    return cache.key({"predictions": oof.digest, **asdict(intervals)}, schema=SUMMARY_SCHEMA, length=KEY_LENGTH)


def model_summary(
    oof: OutOfFold, artifacts_root: Path | None = None, *, intervals: IntervalSettings = DEFAULT_INTERVALS
) -> dict:
    """Intervals and calibration of ``oof``, from its file when the same predictions were summarised before."""
    root = artifacts_root or settings.artifacts_dir()
    path = _path(oof, summary_key(oof, intervals), root)

    def compute() -> dict:
        options = asdict(intervals)
        metrics = bootstrap_confusion_metrics(oof.y_true, oof.proba, oof.classes, **options)
        ranking = discrimination_intervals(oof.y_true, oof.proba, oof.classes, **options)
        return {
            "schema_version": SUMMARY_SCHEMA,
            "study_id": oof.study_id,
            "model": oof.model,
            "members": list(oof.members),
            "folds": oof.fold_ids,
            "n_images": len(oof),
            "intervals": {**options, "description": intervals.describe()},
            "metrics": {name: interval.to_dict() for name, interval in {**metrics, **ranking}.items()},
            "calibration": _calibration(oof),
        }

    # On a read-only file system (a hosted demo) the summary is still right, only not kept.
    return cache.remembered(path, compute, replaces=lambda: _replaced_by(oof, path), required=False)


def paired_difference(
    a: OutOfFold, b: OutOfFold, *, metric: str, intervals: IntervalSettings = DEFAULT_INTERVALS
) -> dict:
    """A bootstrap interval of ``metric(a) - metric(b)`` on the same resampled images (their shared folds)."""
    if a.study_id != b.study_id or a.classes != b.classes:
        raise ValueError(f"a and b must be models of one study with the same classes, got {a.model} and {b.model}")
    shared = sorted(set(a.fold_ids) & set(b.fold_ids))
    rows_a, rows_b = [a.folds == f for f in shared], [b.folds == f for f in shared]
    take_a = [i for mask in rows_a for i in mask.nonzero()[0]]
    take_b = [i for mask in rows_b for i in mask.nonzero()[0]]
    if [a.files[i] for i in take_a] != [b.files[i] for i in take_b]:
        raise ValueError(f"{a.model} and {b.model} were not scored on the same images")
    found = bootstrap_difference(
        a.y_true[take_a], a.proba[take_a], b.proba[take_b], a.classes, metric=metric, **asdict(intervals)
    )
    return {**found.to_dict(), "folds": shared, "n_images": len(take_a)}
