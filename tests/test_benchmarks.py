"""Each benchmark runs on tiny settings and ends with one JSON line of positive, finite figures: those that run
in this process, the records and the docs they write, the goals and findings read from records. The benchmarks
that start processes of their own are in ``test_benchmarks_processes.py``."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.gpu import NEXT_COMPILE, projection
from benchmarks.harness import git_commit, last_json_line
from benchmarks.hosted import mapped_libraries, runtimes_in
from benchmarks.report import evaluation_finding, format_value, goals_table, gpu_finding, hosted_finding
from engine import settings
from tests.conftest import eager_functions

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
    "hosted": {"export_first_s", "keras_first_s", "first_speedup", "export_rss_mb", "keras_rss_mb", "rss_ratio"},
    "evaluation": {"bootstrap_cold_s", "bootstrap_warm_s", "slowest_page_warm_s", "comparison_warm_s"},
}


def run_tiny(name: str, data: Path, capsys: pytest.CaptureFixture, *extra: str) -> dict:
    """``python -m benchmarks NAME --tiny`` in this process, its TensorFlow functions run eagerly: tracing a
    training step costs more than a tiny run (``finetune_epoch``: 49 s of CPU compiled, 8 s eager)."""
    with eager_functions():
        assert main([name, "--tiny", "--data", str(data), *extra]) == 0
    return last_json_line(capsys.readouterr().out)


def check(figures: dict, name: str) -> None:
    assert EXPECTED[name] <= set(figures), f"{name}: missing {EXPECTED[name] - set(figures)}"
    for key, value in figures.items():
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pipeline", "finetune_epoch", "classify"])
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


def record_tiny(name: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[dict, dict, str]:
    """``name --tiny --record`` into ``tmp_path``: the printed figures, the stored record, the generated doc."""
    results, docs = tmp_path / "results", tmp_path / "benchmarks.md"
    figures = run_tiny(name, data, capsys, "--record", "--results-dir", str(results), "--docs", str(docs))
    check(figures, name)
    stored = json.loads((results / f"{name}.json").read_text())
    assert stored["figures"] == figures
    return figures, stored, docs.read_text()


def test_hosted_and_evaluation_goals_and_findings_read_their_records() -> None:
    hosted = {
        "figures": {
            "export_first_s": 1.5,
            "keras_first_s": 9.0,
            "first_speedup": 6.0,
            "export_rss_mb": 450.0,
            "keras_rss_mb": 1200.0,
            "rss_ratio": 2.67,
        },
        "settings": {"model": "s/MobileNet/3", "tensorflow_imported": {"export": False, "keras": True}},
    }
    evaluation = {
        "figures": {
            "bootstrap_cold_s": 3.0,
            "bootstrap_warm_s": 0.1,
            "slowest_page_warm_s": 2.5,
            "comparison_warm_s": 0.1,
            "failures_warm_s": 2.5,
        }
    }
    table = goals_table({"hosted": hosted, "evaluation": evaluation}).splitlines()
    verdict = lambda figure: next(line for line in table if f"`{figure}`" in line).rsplit("|", 2)[-2].strip()  # noqa: E731
    assert [verdict(f) for f in ("export_rss_mb", "export_first_s", "bootstrap_cold_s", "slowest_page_warm_s")] == [
        "not met",
        "met",
        "met",
        "not met",
    ]
    assert "did not import TensorFlow, the Keras server imported it" in hosted_finding(hosted)
    assert "450 MB" in hosted_finding(hosted) and "(failures)" in evaluation_finding(evaluation)
    assert "not recorded yet" in hosted_finding(None) and "not recorded yet" in evaluation_finding(None)


def test_tensorflow_is_told_from_litert_in_a_process_memory_map() -> None:
    site = "/venv/lib/site-packages"
    names = ("_pywrap_tensorflow_lite_metrics_wrapper.so", "libLiteRt.so")
    litert = {f"{site}/ai_edge_litert/{name}" for name in names}
    assert runtimes_in(litert) == {"tensorflow": False, "onnxruntime": False, "litert": True}
    assert runtimes_in({f"{site}/tensorflow/libtensorflow_framework.so.2"})["tensorflow"]
    assert runtimes_in({f"{site}/tensorflow/python/_pywrap_tensorflow_internal.so"})["tensorflow"]
    assert runtimes_in({f"{site}/onnxruntime/capi/onnxruntime_pybind11_state.so"})["onnxruntime"]
    assert mapped_libraries(os.getpid())["tensorflow"] == any(
        "/tensorflow/" in line for line in Path("/proc/self/maps").read_text().splitlines()
    )


def test_last_json_line_ignores_trailing_blank_lines() -> None:
    assert last_json_line('table\n{"a": 1.5}\n\n') == {"a": 1.5}
    with pytest.raises(ValueError):
        last_json_line("\n")


def test_a_record_names_uncommitted_code_but_not_earlier_records(tmp_path: Path, monkeypatch) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    for name in ("code.py", "docs/benchmarks.md", "benchmarks/results/x.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    monkeypatch.setattr(settings, "PROJECT_ROOT", tmp_path)
    head = git_commit()
    assert head and " " not in head
    (tmp_path / "docs/benchmarks.md").write_text("2\n")
    (tmp_path / "benchmarks/results/x.json").write_text("2\n")
    assert git_commit() == head
    (tmp_path / "code.py").write_text("2\n")
    assert git_commit() == f"{head} + uncommitted changes to code.py"


def test_a_gpu_projection_over_part_of_the_backbones_is_not_called_met() -> None:
    partial = {"figures": {"gpu_study_projected_h": 0.1, "gpu_backbones_measured": 2}}
    complete = {"figures": {"gpu_study_projected_h": 0.5, "gpu_backbones_measured": 14}}
    slow = {"figures": {"gpu_study_projected_h": 2.0, "gpu_backbones_measured": 14}}
    gpu_row = lambda table: next(line for line in table.splitlines() if "gpu_study_projected_h" in line)  # noqa: E731
    assert "incomplete: 2 of 14 backbones measured" in gpu_row(goals_table({"gpu": partial}))
    assert gpu_row(goals_table({"gpu": complete})).endswith("| met |")
    assert gpu_row(goals_table({"gpu": slow})).endswith("| not met |")
    assert gpu_row(goals_table({})).endswith("| not recorded |")


def test_gpu_projection_parts_add_up_and_an_unmeasured_recompile_counts_as_the_first() -> None:
    measured = {"backbone": "A", "train images/s": 2318.0, "eval images/s": 579.0, "compile s": 30.0}
    rows = [{**measured, NEXT_COMPILE: 5.0}, {**measured, "backbone": "B"}]
    parts = projection(rows)
    # 5 folds x 10 epochs x (1 s training + 1 s validation) per backbone; B's next four folds count 30 s each.
    assert parts == {
        "training and validation": 200.0,
        "first folds' compilation": 60.0,
        "next folds' compilation": 4 * 5.0 + 4 * 30.0,
    }
    record = {"figures": {"gpu_study_projected_h": sum(parts.values()) / 3600.0}, "table": rows}
    text = gpu_finding(record)
    assert "training and validation take 0.0556 h" in text
    assert "an upper bound: B's next folds' compilation was not measured" in text
