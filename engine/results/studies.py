"""A study as its ``study.json`` holds it: :class:`Study`, read in one place.

``engine.training.study.prepare_study`` writes the file once; every reader gets a :class:`Study` from
``engine.results.artifacts.read_study``. :meth:`Study.from_json` fills in what a file written before a field
existed lacks, here and nowhere else:

- no ``split``: the study was split by image (folds by patient came later), and its patients were not counted;
- no ``dataset.sources``: one source, the dataset itself (``[dataset.name]``);
- no ``dataset.by_source``: that one source holds every image (``{dataset.name: dataset.counts}``);
- no ``dataset.source``: ``""``; no ``schema_version``: ``None`` (not recorded).

What was filled in is remembered (``filled``), so :meth:`Study.to_json` gives back exactly the dict that was
read, and a file written today round-trips byte for byte. The protocol stays the dict the file holds (this
layer sits below ``engine.training``, whose ``Protocol.from_dict`` reads it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class StudyDataset:
    """The dataset block of ``study.json``: which images the study's folds index."""

    name: str
    fingerprint: str
    source: str
    classes: tuple[str, ...]
    counts: dict[str, int]
    n_images: int
    sources: tuple[str, ...]
    by_source: dict[str, dict[str, int]]
    filled: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def multi_source(self) -> bool:
        """Whether the study's images come from several dataset folders."""
        return len(self.sources) > 1

    @classmethod
    def from_json(cls, data: dict) -> StudyDataset:
        filled = {key for key in ("source", "sources", "by_source") if key not in data}
        return cls(
            name=data["name"],
            fingerprint=data["fingerprint"],
            source=data.get("source", ""),
            classes=tuple(data["classes"]),
            counts=dict(data["counts"]),
            n_images=data["n_images"],
            sources=tuple(data.get("sources") or [data["name"]]),
            by_source=dict(data.get("by_source") or {data["name"]: dict(data["counts"])}),
            filled=frozenset(filled),
        )

    def to_json(self) -> dict:
        data = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "classes": list(self.classes),
            "counts": dict(self.counts),
            "n_images": self.n_images,
            "sources": list(self.sources),
            "by_source": {name: dict(counts) for name, counts in self.by_source.items()},
        }
        return {key: value for key, value in data.items() if key not in self.filled}


@dataclass(frozen=True)
class SplitRecord:
    """What ``study.json`` says of its split: the level the folds were made at (``"patient"`` or ``"image"``),
    the level asked for, how patients were found, and how many patients sit in several folds.

    A study made before folds by patient existed has none on disk: it was split by image, and the patient
    figures are ``None`` (not counted)."""

    level: str = "image"
    requested: str = "image"
    patients: int | None = None
    images_sharing_a_patient: int | None = None
    patient_rules: dict[str, int] | None = None
    patients_in_several_folds: dict[str, int] | None = None

    @classmethod
    def from_json(cls, data: dict) -> SplitRecord:
        return cls(
            level=data["level"],
            requested=data["requested"],
            patients=data["patients"],
            images_sharing_a_patient=data["images_sharing_a_patient"],
            patient_rules=dict(data["patient_rules"]),
            patients_in_several_folds=dict(data["patients_in_several_folds"]),
        )

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Study:
    """One dataset, one protocol, k folds shared by every backbone: the content of ``study.json``.

    ``folds[k]`` lists the dataset rows fold ``k`` holds out (lists, as in the file: a list indexes a numpy
    array by rows, where a tuple would be read as one index per axis); ``protocol`` is the protocol's dict
    (``engine.training.protocols.Protocol.from_dict``); ``weights`` is ``"imagenet"`` or ``None``.
    """

    schema_version: int | None
    study_id: str
    title: str
    created_at: float
    dataset: StudyDataset
    protocol: dict
    n_folds: int
    seed: int
    input_size: int
    weights: str | None
    split: SplitRecord
    folds: list[list[int]]
    filled: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @property
    def protocol_name(self) -> str:
        return self.protocol["name"]

    @property
    def protocol_description(self) -> str:
        return self.protocol["description"]

    @property
    def split_level(self) -> str:
        """``"patient"`` or ``"image"``: a study made before folds by patient existed was split by image."""
        return self.split.level

    @property
    def split_recorded(self) -> bool:
        """Whether ``study.json`` holds its split record (every study made since folds by patient existed)."""
        return "split" not in self.filled

    def held_out(self, fold: int) -> np.ndarray:
        """The dataset rows fold ``fold`` holds out."""
        return np.asarray(self.folds[fold], dtype=np.int64)

    @classmethod
    def from_json(cls, data: dict) -> Study:
        """The study of a ``study.json`` dict; what an older file lacks is filled in (see the module)."""
        filled = {key for key in ("schema_version", "split") if key not in data}
        return cls(
            schema_version=data.get("schema_version"),
            study_id=data["study_id"],
            title=data["title"],
            created_at=data["created_at"],
            dataset=StudyDataset.from_json(data["dataset"]),
            protocol=data["protocol"],
            n_folds=data["n_folds"],
            seed=data["seed"],
            input_size=data["input_size"],
            weights=data["weights"],
            split=SplitRecord.from_json(data["split"]) if "split" in data else SplitRecord(),
            folds=[list(fold) for fold in data["folds"]],
            filled=frozenset(filled),
        )

    def to_json(self) -> dict:
        """The ``study.json`` dict: exactly what was read, or what ``prepare_study`` writes."""
        data = {
            "schema_version": self.schema_version,
            "study_id": self.study_id,
            "title": self.title,
            "created_at": self.created_at,
            "dataset": self.dataset.to_json(),
            "protocol": self.protocol,
            "n_folds": self.n_folds,
            "seed": self.seed,
            "input_size": self.input_size,
            "weights": self.weights,
            "split": self.split.to_json(),
            "folds": [list(fold) for fold in self.folds],
        }
        return {key: value for key, value in data.items() if key not in self.filled}
