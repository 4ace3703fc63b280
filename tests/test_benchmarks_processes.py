"""The benchmarks that start processes of their own (a probe per measurement, a spawned JAX worker, the
evaluation's cold process), on tiny settings: each ends with one JSON line of positive, finite figures. The hosted
one (two Streamlit servers and Chromium) is in ``test_benchmarks_app.py``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.report import format_value
from engine import settings
from tests.conftest import FAST_XLA_FLAGS
from tests.test_benchmarks import check, record_tiny, run_tiny


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpu", "memory", "features"])
def test_benchmark_prints_figures_last(
    name: str, tiny_set: Path, artifacts_root: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "gpu":
        monkeypatch.setenv("XLA_FLAGS", FAST_XLA_FLAGS)  # for its spawned JAX worker
    check(run_tiny(name, tiny_set, capsys), name)


@pytest.mark.slow
def test_evaluation_times_the_cold_bootstrap_and_warm_pages_of_the_demo_study(
    tiny_set: Path, artifacts_root: Path, tmp_path: Path, capsys
) -> None:
    figures, stored, text = record_tiny("evaluation", tiny_set, tmp_path, capsys)
    assert stored["settings"]["models"] == ["MobileNet", "MobileNet-0.25", "MobileNetV2-0.35", "ensemble"]
    assert figures["bootstrap_warm_s"] < figures["bootstrap_cold_s"], "the second pass must read the kept files"
    assert "## evaluation" in text and f"| bootstrap_cold_s | {format_value(figures['bootstrap_cold_s'])} |" in text
    demo = settings.PROJECT_ROOT / "artifacts" / "studies" / "9da277b73bda" / "evaluation"
    changed = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", str(demo)], capture_output=True, text=True)
    assert changed.returncode == 0 and changed.stdout == "", f"the committed summaries changed: {changed.stdout}"
