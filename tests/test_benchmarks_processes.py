"""The benchmarks that start processes of their own (a probe per measurement, a spawned JAX worker), on tiny
settings: each ends with one JSON line of positive, finite figures. The app's (two Streamlit servers and
Chromium, the evaluation's cold process) are in ``test_benchmarks_app.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FAST_XLA_FLAGS
from tests.test_benchmarks import check, run_tiny


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpu", "memory", "features"])
def test_benchmark_prints_figures_last(
    name: str, tiny_set: Path, artifacts_root: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "gpu":
        monkeypatch.setenv("XLA_FLAGS", FAST_XLA_FLAGS)  # for its spawned JAX worker
    check(run_tiny(name, tiny_set, capsys), name)
