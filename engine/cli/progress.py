"""What ``python -m engine study`` shows while it trains: one ``rich`` progress bar per fold on standard error,
and a line for each fold that ends, so a terminal shows where a long study is and a log keeps what it did."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars

from engine.results.artifacts import RunResult
from engine.training.progress import Progress


def fold_name(backbone: str, fold: int) -> str:
    return f"{backbone} fold {fold}"


def phase_text(progress: Progress) -> str:
    """The phase, its epoch and the latest logs (``features epoch 1/1``, ``train epoch 3/6 loss=0.412``)."""
    logs = " ".join(f"{key}={value:.3f}" for key, value in progress.logs.items())
    epoch = f"{progress.phase} epoch {min(progress.epoch + 1, progress.epochs)}/{progress.epochs}"
    return f"{epoch} {logs}".rstrip()


class FoldBars:
    """A context manager, as ``rich.progress.Progress`` is. Pass :meth:`on_progress` and :meth:`on_run` to
    :func:`engine.training.runner.run_study`: a fold's bar goes when the fold ends, and a line with its accuracy
    stays in its place. :meth:`say` prints a line above the bars."""

    def __init__(self, console: Console | None = None) -> None:
        self.bars = Bars(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[phase]}"),
            console=console or Console(stderr=True),
        )
        self.tasks: dict[tuple[str, int], TaskID] = {}

    def __enter__(self) -> FoldBars:
        self.bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bars.stop()

    def say(self, line: str) -> None:
        self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def on_progress(self, progress: Progress) -> None:
        key = (progress.backbone, progress.fold)
        if key not in self.tasks:
            self.tasks[key] = self.bars.add_task(fold_name(*key), total=1.0, phase="")
        self.bars.update(self.tasks[key], completed=progress.fraction, phase=phase_text(progress))

    def on_run(self, run: RunResult) -> None:
        task = self.tasks.pop((run.backbone, run.fold), None)
        if task is not None:
            self.bars.remove_task(task)
        self.say(f"{fold_name(run.backbone, run.fold)}: accuracy {run.metrics['accuracy']:.3f}")
