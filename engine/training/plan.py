"""A fold's plan: its rows (training, inner validation, test), protocol and seed, from the study's record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.data.datasets import Dataset
from engine.data.splits import inner_split, train_indices
from engine.results.studies import Study
from engine.training.protocols import Protocol


def _seed(study: Study, fold: int) -> int:
    return int(study.seed) * 1000 + fold


@dataclass(frozen=True)
class FoldPlan:
    """What one (backbone, fold) trains on, checked before any work."""

    study: Study
    dataset: Dataset
    backbone: str
    fold: int
    protocol: Protocol
    seed: int
    train: np.ndarray
    test: np.ndarray
    validation: np.ndarray
    groups: np.ndarray | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def inner_validation(self) -> bool:
        return len(self.validation) > 0

    @property
    def validation_rows(self) -> np.ndarray:
        """What is validated on each epoch: the inner split, or (the paper's way) the test fold."""
        return self.validation if self.inner_validation else self.test

    @property
    def recall_floor(self) -> tuple[int, float] | None:
        """The protocol's recall floor as (class index, recall), or None."""
        point = self.protocol.recall_floor
        return None if point is None else (self.classes.index(point.target), point.recall)

    @property
    def floor_sources(self) -> np.ndarray | None:
        """Each dataset row's source index when the recall floor is met in each source, else None."""
        point = self.protocol.recall_floor
        return self.dataset.source_index if point is not None and point.in_each_source else None

    def targets(self) -> np.ndarray:
        """Every dataset row's target: its class index, or a one-hot row when the loss smooths labels."""
        labels = self.dataset.labels
        return np.eye(len(self.classes), dtype=np.float32)[labels] if self.protocol.label_smoothing else labels

    def sample_weights(self) -> np.ndarray | None:
        """Per dataset row, its weight over the rows it trains on (each class's rows weigh ``n / classes`` in
        all); None when not weighted. By source, a class's weight is split alike between the sources that
        bring it."""
        if self.protocol.class_weight == "none":
            return None
        labels, n_classes = self.dataset.labels, len(self.classes)
        by_source = self.protocol.class_weight == "balanced-by-source"
        n_sources = len(self.dataset.sources) if by_source else 1
        groups = labels * n_sources + (self.dataset.source_index if by_source else 0)
        counts = np.bincount(groups[self.train], minlength=n_classes * n_sources)
        sources_per_class = (counts.reshape(n_classes, n_sources) > 0).sum(axis=1)
        share = len(self.train) / (n_classes * np.maximum(sources_per_class, 1))
        return (share[labels] / np.maximum(counts[groups], 1)).astype(np.float32)


def plan_fold(dataset: Dataset, study: Study, backbone: str, fold: int) -> FoldPlan:
    """The fold's split, protocol and seed; refuses a dataset that is not the study's."""
    if dataset.fingerprint != study.dataset.fingerprint:
        raise ValueError(
            f"dataset {dataset.fingerprint} is not the one of study {study.study_id} ({study.dataset.fingerprint})"
        )
    protocol = Protocol.from_dict(study.protocol)
    protocol.check_classes(dataset.classes)
    seed = _seed(study, fold)
    train = train_indices(study.folds[fold], len(dataset))
    validation = np.zeros(0, dtype=np.int64)
    by_patient = study.split_level == "patient"
    groups = np.asarray(dataset.patients.patients) if by_patient else None
    if protocol.selection == "best-inner-validation":
        train, validation = inner_split(
            train, dataset.labels, fraction=protocol.validation_fraction, seed=seed, groups=groups
        )
    return FoldPlan(
        study=study,
        dataset=dataset,
        backbone=backbone,
        fold=fold,
        protocol=protocol,
        seed=seed,
        train=train,
        test=study.held_out(fold),
        validation=validation,
        groups=groups,
    )
