"""A saved external evaluation (``<artifacts>/evaluations/<key>.json``), read back as typed objects.

:meth:`ExternalEvaluation.from_json` reads a file of any schema the pages can show and fills, here and
nowhere else, what an older one lacks, so that no reader branches on when a file was saved:

- schema 2 (images checked against the model's study, figures without intervals): ``intervals`` is None,
  and :meth:`ExternalEvaluation.figure` gives each figure's estimate alone;
- schema 3 (intervals, no per-image predictions): ``predictions`` is None, and so is
  :meth:`ExternalEvaluation.mistakes`;
- a file saved before sets were labelled by source (``data.relation`` missing): relation ``"unstated"``.

A file saved before the overlap check (no ``data.overlap_with_study``) is refused: its images were never
checked to be unseen. Schema 4 is what ``engine.evaluation.external`` writes today.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.models.inference import model_name

UNSTATED = "unstated"
"""The relation of a set saved before the user said how it relates to the study."""
KERAS = "Keras fold models"
"""What served a model evaluated without an exported file."""


@dataclass(frozen=True)
class OverlapCheck:
    """The set's images compared with the model's study images before any prediction."""

    checked: int
    identical: int
    near_duplicates: int
    left_out: tuple[str, ...]
    rule: str

    @property
    def n_left_out(self) -> int:
        return self.identical + self.near_duplicates

    @classmethod
    def from_json(cls, d: dict) -> OverlapCheck:
        return cls(
            checked=int(d["checked"]),
            identical=int(d["identical"]),
            near_duplicates=int(d["near_duplicates"]),
            left_out=tuple(d["left_out"]),
            rule=d["rule"],
        )


@dataclass(frozen=True)
class EvaluationData:
    """The evaluated set: what was imported, what was left out, and how it relates to the model's study."""

    name: str
    fingerprint: str
    relation: str
    """``"other source"``, ``"same source"`` (``engine.evaluation.external.RELATIONS``) or :data:`UNSTATED`."""
    counts: dict[str, int]
    """Images evaluated per class, for the classes in the set only."""
    classes_not_in_model: tuple[str, ...]
    skipped: tuple[dict, ...]
    """Each file that could not be used: ``{"file", "reason"}``."""
    duplicates_dropped: int
    overlap: OverlapCheck

    @property
    def n_images(self) -> int:
        return int(sum(self.counts.values()))

    @property
    def one_class(self) -> bool:
        return len(self.counts) == 1

    @classmethod
    def from_json(cls, d: dict) -> EvaluationData:
        return cls(
            name=d["name"],
            fingerprint=d["fingerprint"],
            relation=d.get("relation", UNSTATED),
            counts={c: int(n) for c, n in d["counts"].items()},
            classes_not_in_model=tuple(d["classes_not_in_model"]),
            skipped=tuple(d["skipped"]),
            duplicates_dropped=int(d["duplicates_dropped"]),
            overlap=OverlapCheck.from_json(d["overlap_with_study"]),
        )


@dataclass(frozen=True)
class Intervals:
    """The bootstrap intervals kept with an evaluation (``engine.evaluation.external.figure_intervals``)."""

    description: str
    metrics: dict[str, dict]
    """Each defined figure's interval (``engine.evaluation.bootstrap``'s ``to_dict``), by name."""
    undefined: tuple[str, ...]
    """Each figure the set cannot define, with why."""

    def get(self, name: str) -> dict | None:
        return self.metrics.get(name)

    @property
    def macro(self) -> dict[str, dict]:
        """The macro figures' intervals (only when every class of the model is in the set)."""
        return {k: v for k, v in self.metrics.items() if k.startswith("macro_")}

    @classmethod
    def from_json(cls, d: dict) -> Intervals:
        return cls(description=d["description"], metrics=dict(d["metrics"]), undefined=tuple(d["undefined"]))


@dataclass(frozen=True)
class Predictions:
    """Every evaluated image: its file, its true class's index and the model's probabilities."""

    files: tuple[str, ...]
    true: tuple[int, ...]
    probabilities: tuple[tuple[float, ...], ...]
    """One row per image, one probability per class of the model (rounded to 1e-6 when saved)."""

    @classmethod
    def from_json(cls, d: dict) -> Predictions:
        return cls(
            files=tuple(d["files"]),
            true=tuple(d["true"]),
            probabilities=tuple(tuple(row) for row in d["probabilities"]),
        )

    def mistakes(self, classes: tuple[str, ...]) -> list[dict]:
        """Every image the model got wrong, the most confident first: where a reviewer starts looking."""
        proba = np.asarray(self.probabilities, dtype=float).reshape(-1, len(classes))
        true = np.asarray(self.true, dtype=int)
        predicted = proba.argmax(axis=1)
        rows = [
            {
                "file": self.files[i],
                "true": classes[true[i]],
                "predicted": classes[predicted[i]],
                "p(predicted)": float(proba[i, predicted[i]]),
                "p(true)": float(proba[i, true[i]]),
            }
            for i in np.flatnonzero(predicted != true)
        ]
        return sorted(rows, key=lambda r: (-r["p(predicted)"], r["file"]))


def _model(info: dict) -> dict:
    missing = [f"model.{field}" for field in ("backbone", "protocol", "study_id", "classes") if field not in info]
    if missing:
        raise KeyError(missing[0])
    return dict(info)


@dataclass(frozen=True)
class ExternalEvaluation:
    """One saved evaluation of a model on labelled images no fold of its study has seen."""

    key: str
    """The file's name: a hash of the model and the data's fingerprint."""
    schema_version: int
    """The schema the file was saved with (``engine.evaluation.external.EVALUATION_SCHEMA`` today)."""
    model: dict
    """The model's info as saved: ``backbone``, ``protocol``, ``study_id``, ``classes``, ``fold`` (None for an
    ensemble), ``folds``; ``format`` for an exported file; ``backbones`` for a study's ensemble of backbones."""
    data: EvaluationData
    accuracy: float
    recall: dict[str, float]
    """Each class in the set's recall."""
    metrics: dict
    """Every figure of ``engine.evaluation.metrics.fold_metrics`` on the set."""
    intervals: Intervals | None
    """None for a file saved before intervals were kept (schema 2)."""
    predictions: Predictions | None
    """None for a file saved before per-image predictions were kept (schema 2 and 3)."""
    evaluated_at: float | None

    @classmethod
    def from_json(cls, d: dict, *, key: str | None = None) -> ExternalEvaluation:
        """The evaluation saved as ``d`` (a file's JSON, or what ``evaluate_folder`` returns), of any schema the
        module names; ``key``: the file's name, when ``d`` does not carry it. A ValueError says what is missing."""
        found = key if key is not None else d.get("key", "")
        data = d.get("data", {})
        if "overlap_with_study" not in data:
            raise ValueError(
                f"evaluation {found or '(no key)'} was saved before its images were checked against the model's "
                "study (schema 1): evaluate the same data with the same model again"
            )
        try:
            return cls(
                key=found,
                schema_version=int(d["schema_version"]),
                model=_model(d["model"]),
                data=EvaluationData.from_json(data),
                accuracy=d["accuracy"],
                recall=dict(d["recall"]),
                metrics=d["metrics"],
                intervals=Intervals.from_json(d["intervals"]) if d.get("intervals") else None,
                predictions=Predictions.from_json(d["predictions"]) if d.get("predictions") else None,
                evaluated_at=d.get("evaluated_at"),
            )
        except KeyError as missing:
            raise ValueError(f"evaluation {found or '(no key)'} lacks {missing}: not a saved evaluation") from None

    # --- the model ---

    @property
    def classes(self) -> tuple[str, ...]:
        """The model's classes, in its output order."""
        return tuple(self.model["classes"])

    @property
    def study_id(self) -> str:
        return self.model["study_id"]

    @property
    def backbone(self) -> str:
        return self.model["backbone"]

    @property
    def protocol(self) -> str:
        return self.model["protocol"]

    @property
    def fold(self) -> int | None:
        """The fold of a single fold model; None for an ensemble."""
        return self.model.get("fold")

    @property
    def format(self) -> str | None:
        """The exported file's format when one served the model; None for its Keras fold models."""
        return self.model.get("format")

    @property
    def served_by(self) -> str:
        return self.format or KERAS

    @property
    def model_label(self) -> str:
        """The model in words (``engine.models.inference.model_name``)."""
        return model_name(self.model)

    # --- the set ---

    @property
    def relation(self) -> str:
        return self.data.relation

    @property
    def one_class(self) -> bool:
        """A set of one class: its only figure is that class's recall (accuracy would repeat it)."""
        return self.data.one_class

    @property
    def n_images(self) -> int:
        return self.data.n_images

    @property
    def headline(self) -> str:
        """The figure that sums the set up: ``accuracy``, or ``recall[<class>]`` on a set of one class."""
        return f"recall[{next(iter(self.data.counts))}]" if self.one_class else "accuracy"

    @property
    def confusion_matrix(self) -> np.ndarray:
        """Counts, rows the true class and columns the prediction, over every class of the model."""
        return np.asarray(self.metrics["confusion_matrix"], dtype=float)

    # --- the figures ---

    def estimate(self, name: str) -> float | None:
        """A figure's value: ``accuracy``, ``recall[<class>]`` (None for a class not in the set),
        ``precision[<class>]`` or ``macro_precision``/``macro_recall``/``macro_f1``."""
        if name == "accuracy":
            return self.accuracy
        if name.startswith("macro_"):
            return self.metrics["macro"][name.removeprefix("macro_")]
        for kind in ("recall", "precision"):
            if name.startswith(f"{kind}[") and name.endswith("]"):
                c = name[len(kind) + 1 : -1]
                if c not in self.classes:
                    break
                if kind == "recall":
                    return self.recall.get(c)
                return self.metrics["per_class"][c]["precision"]
        raise ValueError(f"no figure {name!r} in evaluation {self.key}")

    def interval(self, name: str) -> dict | None:
        """The interval kept for a figure; None where the set cannot define it, or for a file saved before
        intervals were kept."""
        return self.intervals.get(name) if self.intervals is not None else None

    def figure(self, name: str) -> dict | None:
        """A figure for ``engine.evaluation.bootstrap.interval_text``: its interval, or for a file saved before
        intervals were kept its estimate alone (``{"estimate": value}``); None where it is undefined."""
        if self.intervals is not None:
            return self.intervals.get(name)
        value = self.estimate(name)
        return None if value is None else {"estimate": value}

    def mistakes(self) -> list[dict] | None:
        """Every image the model got wrong, the most confident first (None for a file saved before per-image
        predictions were kept)."""
        return None if self.predictions is None else self.predictions.mistakes(self.classes)
