"""The hosted benchmark on tiny settings (a tiny fold model trained and exported, two Streamlit servers, Chromium
on each): it ends with one JSON line of positive, finite figures.

A browser test, alone in its file because it is long: a tiny training, a LiteRT conversion and two servers, each
driven by Chromium, took 37 to 87 s on 2 cores (CONTRIBUTING.md, "Test suite timings"), and none of them can be
left out of what it measures (the export server against the Keras one). The other benchmarks that start processes
are in ``test_benchmarks_processes.py``.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from benchmarks.hosted import CHROMIUM
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
