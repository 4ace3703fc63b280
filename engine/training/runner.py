"""Run a whole study in this process (the CLI's ``study`` command and the benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine import settings
from engine.data.sources import import_sources
from engine.results import artifacts
from engine.results.studies import Study
from engine.training.fold import train_fold
from engine.training.progress import Progress
from engine.training.study import StudyRequest, check_backbones, prepare_study


def run_study(
    data: str | Path | list[str | Path],
    *,
    backbones: list[str],
    request: StudyRequest,
    input_size: int = 224,
    artifacts_root: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_run: Callable[[artifacts.RunResult], None] | None = None,
    on_study: Callable[[Study], None] | None = None,
) -> Study:
    """Import ``data`` (one dataset folder, or several: ``engine.data.sources``), prepare the study and train
    every (backbone, fold) not already on disk."""
    settings.refuse_if_read_only()
    root = artifacts.ensure_root(artifacts_root or settings.artifacts_dir())
    check_backbones(backbones, input_size)
    dataset = import_sources(data if isinstance(data, list) else [data], input_size=input_size, artifacts_root=root)
    study = prepare_study(dataset, request, artifacts_root=root)
    if on_study:
        on_study(study)
    for backbone in backbones:
        for fold in range(request.n_folds):
            run = train_fold(
                dataset=dataset,
                study=study,
                backbone=backbone,
                fold=fold,
                artifacts_root=root,
                on_progress=on_progress,
            )
            if on_run:
                on_run(run)
    return study
