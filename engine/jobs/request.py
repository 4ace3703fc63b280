"""A job as the user asks for it (:class:`JobRequest`): what the app and the CLI queue, and the store keeps as JSON.

One stored form for every kind; what a kind does (checks, tasks, description, hash, a task's run) is its
:class:`~engine.jobs.kinds.JobKind`, which the request's methods dispatch to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine import settings
from engine.jobs.kinds import DEFAULT_KIND, JobKind, kind_of
from engine.training.presets import get_protocol
from engine.training.protocols import Protocol

if TYPE_CHECKING:
    from engine.training.study import StudyRequest


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
    kind: str = DEFAULT_KIND
    study_id: str | None = None

    @classmethod
    def for_study(
        cls,
        data: str | Path | Sequence[str | Path],
        *,
        backbones: Sequence[str],
        protocol: str = "frozen",
        folds: int = 5,
        epochs: int | None = None,
        batch_size: int | None = None,
        input_size: int = 224,
        seed: int = 42,
        weights: str | None = "imagenet",
        split: str = "patient",
    ) -> JobRequest:
        """The study the user's options ask for, checked and in canonical form (:meth:`validated`): what the
        app's launch form, ``python -m engine submit`` and ``python -m engine study`` all build.

        ``data``: a dataset folder or ``.zip``, or several (the first sets the classes, the others add images to
        them); ``epochs`` and ``batch_size`` override the protocol's (``None``: its own); ``weights``
        ``"imagenet"`` or ``"none"``; ``split`` ``"patient"`` or ``"image"``.
        """
        sources = [data] if isinstance(data, str | Path) else list(data)
        if not sources:
            raise ValueError("give a dataset folder or .zip file (data)")
        request = cls(
            data=str(sources[0]),
            extra_data=tuple(str(s) for s in sources[1:]),
            split=split,
            backbones=backbones if isinstance(backbones, str) else tuple(backbones),
            protocol=protocol,
            folds=folds,
            epochs=epochs,
            batch_size=batch_size,
            input_size=input_size,
            seed=seed,
            weights=weights,
        )
        return request.validated()

    @classmethod
    def robustness(cls, study_id: str, backbone: str, *, data: str = "") -> JobRequest:
        return cls(kind="robustness", study_id=study_id, backbones=(backbone,), data=data)

    @property
    def backbone(self) -> str:
        """The one backbone of a robustness request."""
        return self.backbones[0]

    @property
    def job_kind(self) -> JobKind:
        """What this request's ``kind`` does (:mod:`engine.jobs.kinds`)."""
        return kind_of(self.kind)

    @property
    def sources(self) -> list[str]:
        """Every dataset folder of a study request, ``data`` first."""
        return [self.data, *self.extra_data]

    def validated(self, artifacts_root: Path | None = None) -> JobRequest:
        """The request checked by its kind and in canonical form (a study's: absolute data path, no repeated
        backbone; a robustness request is checked against the study in ``artifacts_root``)."""
        kind = self.job_kind
        if isinstance(self.backbones, str):
            raise ValueError(f"backbones must be a list of names, got backbones={self.backbones!r}")
        return kind.validated(self, Path(artifacts_root) if artifacts_root else settings.artifacts_dir())

    def task_list(self, artifacts_root: Path) -> list[tuple[str, int]]:
        """The job's (backbone, fold) tasks: every fold of every backbone of a study; for robustness, the
        folds of the backbone with a saved model."""
        return self.job_kind.tasks(self, artifacts_root)

    def describe(self) -> str:
        """One line: what the job does."""
        return self.job_kind.describe(self)

    def study_protocol(self) -> Protocol:
        return get_protocol(self.protocol).replace(epochs=self.epochs, batch_size=self.batch_size)

    def study_request(self) -> StudyRequest:
        """What :func:`engine.training.study.prepare_study` takes."""
        from engine.training.study import StudyRequest

        weights = None if self.weights == "none" else self.weights
        return StudyRequest(
            protocol=self.study_protocol(),
            n_folds=self.folds,
            seed=self.seed,
            weights=weights,
            split=self.split,
        )

    def canonical_hash(self) -> str:
        """Equal for requests that do the same thing (``epochs=None`` equals the protocol's own count).

        A study request hashes as before job kinds existed, so an older store's active jobs still match.
        """
        return self.job_kind.key(self)

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
