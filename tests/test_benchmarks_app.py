"""The app's benchmarks, on tiny settings: the hosted one (two Streamlit servers and Chromium) and the evaluation
one (a cold process, then the warm pages); each ends with one JSON line of positive, finite figures.

Moved from ``test_benchmarks_processes.py``, so that no benchmark file runs much over a minute and a half.
"""

from __future__ import annotations

import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest

from benchmarks.hosted import CHROMIUM
from benchmarks.report import format_value
from engine import settings
from tests.test_benchmarks import record_tiny


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's Chromium: apt-get install chromium")
@pytest.mark.skipif(find_spec("playwright") is None, reason="needs the playwright package")
def test_hosted_measures_both_servers_and_the_export_server_loads_no_tensorflow(
    tiny_set: Path, artifacts_root: Path, tmp_path: Path, capsys
) -> None:
    figures, stored, text = record_tiny("hosted", tiny_set, tmp_path, capsys)
    found = stored["settings"]
    assert found["order"] == ["export", "keras"] and found["same_predictions"], found
    assert found["tensorflow_imported"] == {"export": False, "keras": True}
    assert [(row["TensorFlow mapped"], row["runtime mapped"]) for row in stored["table"]] == [
        (False, "litert"),
        (True, "none"),
    ]
    assert found["export_ood_detector"] and "exported into the copy" in found["export_source"]
    assert figures["rss_ratio"] > 1, "the Keras server should need more memory than the export server"
    assert "## hosted" in text and "| `export_rss_mb` | at most 400 MB after 8 images |" in text
    assert "The export server did not import TensorFlow, the Keras server imported it." in text


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
