"""Each benchmark runs on tiny settings and ends with one JSON line of positive, finite figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.harness import last_json_line
from benchmarks.report import format_value
from tests.synthetic import make_dataset

EXPECTED = {
    "pipeline": {
        "pipeline_speedup",
        "reference_images_per_s",
        "engine_images_per_s",
        "keras_layers_rgb_images_per_s",
        "keras_layers_gray_images_per_s",
    },
    "finetune_epoch": {"finetune_epoch_speedup", "reference_epoch_s", "engine_epoch_s"},
    "frozen_study": {"frozen_study_cold_s", "frozen_study_warm_s"},
    "classify": {"classify_p50_ms", "classify_p95_ms"},
    "memory": {"study_rss_mb", "rss_20k_mb"},
    "features": {"features_eager_images_per_s", "features_compiled_images_per_s", "features_compiled_speedup"},
    "gpu": {"gpu_study_projected_h", "gpu_backbones_measured"},
}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("bench") / "tiny", n_per_class=8, size=40)


def run_tiny(name: str, data: Path, capsys: pytest.CaptureFixture, *extra: str) -> dict:
    assert main([name, "--tiny", "--data", str(data), *extra]) == 0
    return last_json_line(capsys.readouterr().out)


def check(figures: dict, name: str) -> None:
    assert EXPECTED[name] <= set(figures), f"{name}: missing {EXPECTED[name] - set(figures)}"
    for key, value in figures.items():
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pipeline", "finetune_epoch", "classify", "gpu", "memory", "features"])
def test_benchmark_prints_figures_last(name: str, tiny_set: Path, artifacts_root: Path, capsys) -> None:
    check(run_tiny(name, tiny_set, capsys), name)


@pytest.mark.slow
def test_frozen_study_record_writes_result_and_docs(
    tiny_set: Path, artifacts_root: Path, tmp_path: Path, capsys
) -> None:
    results, docs = tmp_path / "results", tmp_path / "benchmarks.md"
    figures = run_tiny("frozen_study", tiny_set, capsys, "--record", "--results-dir", str(results), "--docs", str(docs))
    check(figures, "frozen_study")
    stored = json.loads((results / "frozen_study.json").read_text())
    assert stored["figures"] == figures
    assert stored["command"].startswith("python -m benchmarks frozen_study")
    text = docs.read_text()
    assert "## frozen_study" in text
    assert f"| frozen_study_cold_s | {format_value(figures['frozen_study_cold_s'])} |" in text
    assert "## gpu\n" in text and "Not recorded yet." in text


def test_last_json_line_ignores_trailing_blank_lines() -> None:
    assert last_json_line('table\n{"a": 1.5}\n\n') == {"a": 1.5}
    with pytest.raises(ValueError):
        last_json_line("\n")
