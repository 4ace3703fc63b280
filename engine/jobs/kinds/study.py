"""``kind="study"``: train every fold of every backbone of one study request (one task per backbone and fold).

The default kind, and what a request stored before job kinds existed is. Its hash is the one a study
request had before job kinds, ``extra_data`` and ``split`` existed, so an older store's active jobs still match.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.data.patients import SPLITS
from engine.jobs.kinds import JobKind, ResultsLink, TaskRun, data_path, register
from engine.results import artifacts
from engine.training.presets import get_protocol

if TYPE_CHECKING:
    from engine.data.datasets import Dataset
    from engine.jobs.request import JobRequest
    from engine.results.studies import Study

WEIGHTS_CHOICES = ("imagenet", "none")


@functools.lru_cache(maxsize=2)
def _prepared(artifacts_root: Path, job_id: str, request: JobRequest) -> tuple[Dataset, Study]:
    """The job's dataset and study, imported once per job (the import itself is cached by content)."""
    from engine.data.sources import import_sources
    from engine.training.study import prepare_study

    dataset = import_sources(request.sources, input_size=request.input_size, artifacts_root=artifacts_root)
    return dataset, prepare_study(dataset, request.study_request(), artifacts_root=artifacts_root)


class StudyKind(JobKind):
    name = "study"
    label = "training"

    def validated(self, request: JobRequest, artifacts_root: Path) -> JobRequest:
        from engine.training.study import check_backbones

        backbones = tuple(dict.fromkeys(request.backbones))
        check_backbones(list(backbones), request.input_size)
        get_protocol(request.protocol)
        if not isinstance(request.folds, int) or request.folds < 2:
            raise ValueError(f"folds must be an integer of at least 2, got folds={request.folds!r}")
        if request.epochs is not None and request.epochs < 1:
            raise ValueError(f"epochs must be at least 1 (or None for the protocol's), got epochs={request.epochs!r}")
        if not isinstance(request.seed, int):
            raise ValueError(f"seed must be an integer, got seed={request.seed!r}")
        if request.batch_size is not None and request.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got batch_size={request.batch_size!r}")
        weights = "none" if request.weights is None else request.weights
        if weights not in WEIGHTS_CHOICES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS_CHOICES)}, got weights={request.weights!r}")
        if request.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got split={request.split!r}")
        data = data_path(request.data)
        if data is None:
            raise ValueError(
                f"data must be an existing dataset folder or .zip file, got data={request.data!r}: "
                "no such folder or .zip file"
            )
        extra = tuple(data_path(d) for d in request.extra_data)
        for given, found in zip(request.extra_data, extra, strict=True):
            if found is None:
                raise ValueError(f"extra_data must hold existing dataset folders or .zip files, got {given!r}")
        return replace(request, data=data, extra_data=extra, backbones=backbones, weights=weights, study_id=None)

    def tasks(self, request: JobRequest, artifacts_root: Path) -> list[tuple[str, int]]:
        return [(b, k) for b in request.backbones for k in range(request.folds)]

    def describe(self, request: JobRequest) -> str:
        return f"{', '.join(request.backbones)} · protocol {request.protocol} · {request.folds} folds"

    def key(self, request: JobRequest) -> str:
        fields = {
            "data": request.data,
            "backbones": list(request.backbones),
            "protocol": request.study_protocol().to_dict(),
            "folds": request.folds,
            "input_size": request.input_size,
            "seed": request.seed,
            "weights": request.weights,
        }
        if request.extra_data:
            fields["extra_data"] = list(request.extra_data)
        if request.split != "image":
            fields["split"] = request.split
        return artifacts.canonical_hash(fields, length=32)

    def run(self, run: TaskRun) -> artifacts.RunResult:
        """Train the task's fold (or read it back from disk); the job's study id is recorded first."""
        from engine.training.fold import train_fold

        dataset, study = _prepared(run.store.root, run.job.id, run.job.request)
        run.store.set_study_id(run.job.id, study.study_id)
        return train_fold(
            dataset=dataset,
            study=study,
            backbone=run.task.backbone,
            fold=run.task.fold,
            artifacts_root=run.store.root,
            on_progress=run.progress,
            should_stop=run.should_stop,
        )

    def short(self, request: JobRequest) -> str:
        return request.protocol

    def submitted(self, request: JobRequest, tasks: list[tuple[str, int]]) -> str:
        return f"{self.describe(request)} · {len(tasks)} tasks · data {' + '.join(request.sources)}"

    def epochs(self, request: JobRequest) -> int | None:
        return request.study_protocol().epochs

    def done_note(self, result: artifacts.RunResult) -> str:
        from engine.evaluation.metrics import flat_metrics

        return f", accuracy {flat_metrics(result.metrics)['accuracy']:.3f}"

    def results(self, request: JobRequest, study_id: str) -> ResultsLink:
        return ResultsLink("comparison", f"Results of study {study_id}", {"study": study_id})

    def first_fold_alone(self, request: JobRequest) -> bool:
        return request.study_protocol().cached_features


register(StudyKind())
