"""A job as the user asks for it (:class:`JobRequest`): what the app and the CLI queue, and the store keeps as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine import settings
from engine.data.patients import SPLITS
from engine.results import artifacts
from engine.training.presets import get_protocol
from engine.training.protocols import Protocol

if TYPE_CHECKING:
    from engine.training.study import StudyRequest

WEIGHTS_CHOICES = ("imagenet", "none")
JOB_KINDS = ("study", "robustness")


@dataclass(frozen=True)
class JobRequest:
    """A job as the user asks for it.

    ``kind="study"`` (the default, and what a stored request without ``kind`` is): one dataset, several
    backbones, one protocol. ``kind="robustness"``: the fold models of one backbone (``backbones``, one
    name) of study ``study_id`` on their held-out images under the acquisition shifts
    (``engine.evaluation.robustness``); ``data``, optional, is the study's dataset folder or ``.zip`` for
    a machine that does not hold its decoded images. The study fields are then unused.

    ``extra_data``: more dataset folders whose images join ``data``'s classes (a multi-source study,
    ``engine.data.sources``). ``split``: folds by ``"patient"`` (the default) or by ``"image"`` (the
    paper's); a request stored before the choice existed was by image.
    """

    data: str = ""
    extra_data: tuple[str, ...] = ()
    split: str = "patient"
    backbones: tuple[str, ...] = ()
    protocol: str = "frozen"
    folds: int = 5
    epochs: int | None = None
    batch_size: int | None = None
    input_size: int = 224
    seed: int = 42
    weights: str = "imagenet"
    kind: str = "study"
    study_id: str | None = None

    @classmethod
    def robustness(cls, study_id: str, backbone: str, *, data: str = "") -> JobRequest:
        return cls(kind="robustness", study_id=study_id, backbones=(backbone,), data=data)

    @property
    def backbone(self) -> str:
        """The one backbone of a robustness request."""
        return self.backbones[0]

    def validated(self, artifacts_root: Path | None = None) -> JobRequest:
        """The request checked and in canonical form (absolute data path, no repeated backbone).

        A robustness request is checked against the study in ``artifacts_root``: it must exist and the
        backbone must have at least one saved fold model.
        """
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {', '.join(JOB_KINDS)}, got kind={self.kind!r}")
        if isinstance(self.backbones, str):
            raise ValueError(f"backbones must be a list of names, got backbones={self.backbones!r}")
        if self.kind == "robustness":
            return self._validated_robustness(Path(artifacts_root) if artifacts_root else settings.artifacts_dir())
        from engine.training.study import check_backbones

        backbones = tuple(dict.fromkeys(self.backbones))
        check_backbones(list(backbones), self.input_size)
        get_protocol(self.protocol)
        if not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(f"folds must be an integer of at least 2, got folds={self.folds!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1 (or None for the protocol's), got epochs={self.epochs!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got seed={self.seed!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got batch_size={self.batch_size!r}")
        weights = "none" if self.weights is None else self.weights
        if weights not in WEIGHTS_CHOICES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS_CHOICES)}, got weights={self.weights!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got split={self.split!r}")
        data = _data_path(self.data)
        if data is None:
            raise ValueError(f"data must be an existing dataset folder or .zip file, got data={self.data!r}")
        extra = tuple(_data_path(d) for d in self.extra_data)
        for given, found in zip(self.extra_data, extra, strict=True):
            if found is None:
                raise ValueError(f"extra_data must hold existing dataset folders or .zip files, got {given!r}")
        return replace(self, data=data, extra_data=extra, backbones=backbones, weights=weights, study_id=None)

    @property
    def sources(self) -> list[str]:
        """Every dataset folder of a study request, ``data`` first."""
        return [self.data, *self.extra_data]

    def _validated_robustness(self, root: Path) -> JobRequest:
        ids = artifacts.list_study_ids(root)
        if self.study_id not in ids:
            raise ValueError(f"unknown study study_id={self.study_id!r}; studies here: {', '.join(ids) or 'none'}")
        if len(self.backbones) != 1:
            raise ValueError(f"a robustness job names one backbone, got backbones={tuple(self.backbones)!r}")
        data = _data_path(self.data) if self.data else ""
        if data is None:
            raise ValueError(f"data must be the study's dataset folder or .zip file (or empty), got data={self.data!r}")
        request = JobRequest.robustness(self.study_id, self.backbones[0], data=data)
        if not request.task_list(root):
            raise ValueError(
                f"no saved model of backbone={request.backbone!r} in study {self.study_id}; "
                "robustness needs each fold's model.keras"
            )
        return request

    def task_list(self, artifacts_root: Path) -> list[tuple[str, int]]:
        """The job's (backbone, fold) tasks: every fold of every backbone of a study; for robustness, the
        folds of the backbone with a saved model."""
        if self.kind == "robustness":
            runs = artifacts.study_runs(self.study_id, artifacts_root)
            return sorted((r.backbone, r.fold) for r in runs if r.backbone == self.backbone and r.model_path)
        return [(b, k) for b in self.backbones for k in range(self.folds)]

    def describe(self) -> str:
        """One line: what the job does."""
        if self.kind == "robustness":
            return f"robustness of {self.backbone} in study {self.study_id}"
        return f"{', '.join(self.backbones)} · protocol {self.protocol} · {self.folds} folds"

    def study_protocol(self) -> Protocol:
        return get_protocol(self.protocol).replace(epochs=self.epochs, batch_size=self.batch_size)

    def study_request(self) -> StudyRequest:
        from engine.training.study import StudyRequest

        weights = None if self.weights == "none" else self.weights
        return StudyRequest(
            protocol=self.study_protocol(), n_folds=self.folds, seed=self.seed, weights=weights, split=self.split
        )

    def canonical_hash(self) -> str:
        """Equal for requests that do the same thing (``epochs=None`` equals the protocol's own count).

        A study request hashes as before job kinds existed, so an older store's active jobs still match.
        """
        if self.kind == "robustness":
            fields = {"kind": self.kind, "study_id": self.study_id, "backbone": self.backbone, "data": self.data}
            return artifacts.canonical_hash(fields, length=32)
        fields = {
            "data": self.data,
            "backbones": list(self.backbones),
            "protocol": self.study_protocol().to_dict(),
            "folds": self.folds,
            "input_size": self.input_size,
            "seed": self.seed,
            "weights": self.weights,
        }
        if self.extra_data:
            fields["extra_data"] = list(self.extra_data)
        if self.split != "image":
            fields["split"] = self.split
        return artifacts.canonical_hash(fields, length=32)

    def to_dict(self) -> dict:
        return {**asdict(self), "backbones": list(self.backbones), "extra_data": list(self.extra_data)}

    @classmethod
    def from_dict(cls, data: dict) -> JobRequest:
        """A stored request; one stored before job kinds existed (no ``kind``) is a study request, and one
        stored before folds by patient existed (no ``split``) was by image."""
        return cls(
            **{
                "split": "image",
                **data,
                "backbones": tuple(data.get("backbones", ())),
                "extra_data": tuple(data.get("extra_data", ())),
            }
        )


def _data_path(data: str) -> str | None:
    """``data`` as an absolute path when it is a folder or a ``.zip`` file, else ``None``."""
    path = Path(data).expanduser().resolve()
    return str(path) if path.is_dir() or (path.is_file() and path.suffix.lower() == ".zip") else None
