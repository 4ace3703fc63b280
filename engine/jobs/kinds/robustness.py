"""``kind="robustness"``: each saved fold model of one backbone of a finished study, on its held-out images
unshifted and under the acquisition shifts of :mod:`engine.evaluation.robustness` (one task per fold with a
saved ``model.keras``). ``data``, optional, is the study's dataset for a machine without its decoded images.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from engine.jobs.kinds import JobKind, ResultsLink, TaskRun, data_path, register
from engine.results import artifacts

if TYPE_CHECKING:
    from engine.data.datasets import Dataset
    from engine.jobs.request import JobRequest


@functools.lru_cache(maxsize=2)
def _study_images(artifacts_root: Path, study_id: str, data: str) -> Dataset:
    """A robustness job's images: the study's decoded cache here, or ``data`` imported and checked to match.

    Raises a one-line ``ValueError`` when the images are not on this machine (the task fails with it).
    """
    from engine.data.sources import study_dataset

    return study_dataset(artifacts.read_study(study_id, artifacts_root), artifacts_root, data=[data] if data else None)


class RobustnessKind(JobKind):
    name = "robustness"

    def validated(self, request: JobRequest, artifacts_root: Path) -> JobRequest:
        """Checked against the study in ``artifacts_root``: it must exist and the backbone must have a saved fold
        model."""
        ids = artifacts.list_study_ids(artifacts_root)
        if request.study_id not in ids:
            raise ValueError(f"unknown study study_id={request.study_id!r}; studies here: {', '.join(ids) or 'none'}")
        if len(request.backbones) != 1:
            raise ValueError(f"a robustness job names one backbone, got backbones={tuple(request.backbones)!r}")
        data = data_path(request.data) if request.data else ""
        if data is None:
            raise ValueError(
                f"data must be the study's dataset folder or .zip file (or empty), got data={request.data!r}"
            )
        checked = type(request).robustness(request.study_id, request.backbones[0], data=data)
        if not self.tasks(checked, artifacts_root):
            raise ValueError(
                f"no saved model of backbone={checked.backbone!r} in study {request.study_id}; "
                "robustness needs each fold's model.keras"
            )
        return checked

    def tasks(self, request: JobRequest, artifacts_root: Path) -> list[tuple[str, int]]:
        """The folds of the backbone with a saved model."""
        runs = artifacts.study_runs(request.study_id, artifacts_root)
        return sorted((r.backbone, r.fold) for r in runs if r.backbone == request.backbone and r.model_path)

    def describe(self, request: JobRequest) -> str:
        return f"robustness of {request.backbone} in study {request.study_id}"

    def key(self, request: JobRequest) -> str:
        fields = {
            "kind": request.kind,
            "study_id": request.study_id,
            "backbone": request.backbone,
            "data": request.data,
        }
        return artifacts.canonical_hash(fields, length=32)

    def run(self, run: TaskRun) -> dict:
        """One fold model on its held-out images, unshifted and under every shift (read back when on disk)."""
        from engine.evaluation import robustness
        from engine.training.progress import Cancelled

        request, task = run.job.request, run.task
        dataset = _study_images(run.store.root, request.study_id, request.data)
        runs = artifacts.study_runs(request.study_id, run.store.root)
        found = next((r for r in runs if (r.backbone, r.fold) == (task.backbone, task.fold)), None)
        if found is None:
            raise ValueError(f"{task.label} is not a finished run of study {request.study_id}")
        try:
            return robustness.fold_robustness(
                found,
                dataset,
                artifacts_root=run.store.root,
                on_progress=run.progress.conditions,
                should_stop=run.should_stop,
            )
        except robustness.Cancelled as exc:
            raise Cancelled(str(exc)) from exc

    def title(self, request: JobRequest) -> str:
        return f"{request.backbone} of study `{request.study_id}`"

    def submitted(self, request: JobRequest, tasks: list[tuple[str, int]]) -> str:
        folds = ", ".join(str(k) for _, k in tasks)
        where = f"data {request.data}" if request.data else "the study's cached images"
        return f"{self.describe(request)} · folds {folds} (saved models) · {len(tasks)} tasks · {where}"

    def done_note(self, result: dict) -> str:
        """The fold's unshifted and lowest accuracy under a shift."""
        from engine.evaluation import robustness

        table = robustness.pooled_table([result])
        unshifted = next(row for row in table if row["shift"] == "none")
        worst = min(table, key=lambda row: row["accuracy"])
        return f", unshifted accuracy {unshifted['accuracy']:.3f}, lowest {worst['accuracy']:.3f} ({worst['setting']})"

    def results(self, request: JobRequest, study_id: str) -> ResultsLink:
        return ResultsLink(
            "robustness",
            f"Robustness of {request.backbone} in study {study_id}",
            {"study": study_id, "backbone": request.backbone},
        )


register(RobustnessKind())
