"""The study command's fold bars: a bar per fold while it trains, a line with its accuracy once it ends."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from engine.cli.progress import FoldBars, phase_text
from engine.results.artifacts import RunResult
from engine.training.progress import EXTRACTION_END, Progress


def _run(backbone: str, fold: int, accuracy: float) -> RunResult:
    return RunResult("s", backbone, fold, Path("."), {}, {}, {"accuracy": accuracy}, {})


def test_a_fold_has_a_bar_while_it_trains_and_a_line_once_it_ends():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with FoldBars(console) as bars:
        bars.say("study abc: a + b")
        bars.on_progress(Progress("MobileNet", 0, "features", 0, 1, 30, 60, end=EXTRACTION_END))
        task = bars.bars.tasks[0]
        assert task.description == "MobileNet fold 0" and task.completed == 0.25
        assert task.fields["phase"] == "features epoch 1/1"
        bars.on_progress(Progress("MobileNet", 0, "head", 0, 1, 1, 1, {"loss": 0.4123}, start=EXTRACTION_END))
        assert task.completed == 1.0 and task.fields["phase"] == "head epoch 1/1 loss=0.412"
        bars.bars.refresh()
        assert "MobileNet fold 0" in out.getvalue() and "head epoch 1/1 loss=0.412" in out.getvalue()
        bars.on_run(_run("MobileNet", 0, 0.97514))
        assert bars.bars.tasks == [] and bars.tasks == {}
        bars.on_progress(Progress("MobileNet", 1, "features", 0, 1, 0, 60))
        assert [t.description for t in bars.bars.tasks] == ["MobileNet fold 1"]
    assert "study abc: a + b" in out.getvalue() and "MobileNet fold 0: accuracy 0.975" in out.getvalue()


def test_a_log_file_gets_the_lines_without_redrawn_bars():
    out = io.StringIO()
    with FoldBars(Console(file=out, force_terminal=False, width=120)) as bars:
        for batch in range(50):
            bars.on_progress(Progress("MobileNet-0.25", 2, "features", 0, 1, batch, 50))
        bars.on_run(_run("MobileNet-0.25", 2, 0.5))
    assert out.getvalue().splitlines()[0] == "MobileNet-0.25 fold 2: accuracy 0.500"
    assert "\r" not in out.getvalue() and out.getvalue().count("features") <= 1


def test_a_resumed_fold_with_no_progress_still_gets_its_line():
    out = io.StringIO()
    with FoldBars(Console(file=out, force_terminal=False)) as bars:
        bars.on_run(_run("VGG16", 4, 0.9))
    assert out.getvalue().strip() == "VGG16 fold 4: accuracy 0.900"


def test_phase_text_counts_epochs_from_one_and_stops_at_the_last():
    assert phase_text(Progress("m", 0, "train", 5, 6, 0, 10, {"loss": 1.0, "accuracy": 0.5})) == (
        "train epoch 6/6 loss=1.000 accuracy=0.500"
    )
    assert phase_text(Progress("m", 0, "train", 6, 6, 0, 10)) == "train epoch 6/6"
