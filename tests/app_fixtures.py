"""One tiny real study shared by the explorer's tests (built once per test run, about a minute).

Two small MobileNets, frozen protocol, 2 folds, 32 px on the synthetic dataset. With the shared
ImageNet weights present the features are real and the folds' numbers differ; without them the
backbones start from random weights (still a real study, with flatter numbers).
"""

from __future__ import annotations

import fcntl
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.components.v2 import manifest_scanner
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from engine.evaluation import predictions, summary
from engine.results import atomic
from engine.training.presets import get_protocol
from engine.training.runner import run_study
from engine.training.study import StudyRequest
from tests.conftest import HAS_SHARED_WEIGHTS, eager_functions
from tests.synthetic import make_dataset

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
TIMEOUT_S = 180
TINY_BACKBONES = ("MobileNet-0.25", "MobileNetV2-0.35")
TINY_FOLDS = 2
TINY_EPOCHS = 10
"""The head's epochs: the study took 14 s to build at 10 and 19 s at 20 (2 cores, side by side), and the tests that
read it pass at both."""
TINY_SIZE = 32

# Each new AppTest scans the metadata of every installed distribution for Streamlit components: 0.4 s of
# CPU per page opened here (14 s of test_the_demo_evaluation_read_only's 41 s). The installed packages
# do not change during a test run, so the scan's answer is kept for the run.
manifest_scanner.scan_component_manifests = functools.cache(manifest_scanner.scan_component_manifests)


@dataclass(frozen=True)
class TinyStudy:
    root: Path
    study_id: str
    data: Path
    weights: str | None


@functools.cache
def build_tiny_study(base: Path) -> TinyStudy:
    """Built once per test run: the first test process to ask builds it under a lock, the others (pytest-xdist
    workers share ``base``) wait and read the finished study's note. Its models' summaries (intervals,
    calibration) are computed here too, so the pages that read the study never write into it while
    another process copies it."""
    root = base / "explorer"
    root.mkdir(parents=True, exist_ok=True)
    note = root / "tiny-study.json"
    with open(base / "explorer.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not note.is_file():
            data = make_dataset(root / "tiny-data", n_per_class=8)
            weights = "imagenet" if HAS_SHARED_WEIGHTS else None
            with eager_functions():  # 26 s against 32 s compiled at 20 epochs (tracing costs more than tiny epochs)
                study = run_study(
                    data,
                    backbones=list(TINY_BACKBONES),
                    request=StudyRequest(
                        protocol=get_protocol("frozen").replace(epochs=TINY_EPOCHS),
                        n_folds=TINY_FOLDS,
                        weights=weights,
                    ),
                    input_size=TINY_SIZE,
                    artifacts_root=root / "artifacts",
                )
            for model in predictions.model_names(study.study_id, root / "artifacts"):
                oof = predictions.study_out_of_fold(study.study_id, model, root / "artifacts")
                summary.model_summary(oof, root / "artifacts")
            atomic.write_json(note, {"study_id": study.study_id, "weights": weights})
    built = json.loads(note.read_text())
    return TinyStudy(
        root=root / "artifacts", study_id=built["study_id"], data=root / "tiny-data", weights=built["weights"]
    )


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> TinyStudy:
    """A finished study in its own artifacts folder, one for every test process of the run; tests must only read it."""
    base = tmp_path_factory.getbasetemp()
    return build_tiny_study(base.parent if hasattr(request.config, "workerinput") else base)


@pytest.fixture
def served_navigation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the entry script on every AppTest run, as the server does once ``st.navigation`` was called.

    AppTest resets Streamlit's legacy "pages directory" flag before each run, and with a ``pages/``
    folder present it then runs the page script alone on reruns, skipping the router and sidebar.
    The real server clears the flag for good at the first ``st.navigation`` call; this does the same.
    """
    original = PagesManager.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


def open_page(page: str | None = None, *, query: dict[str, str] | None = None) -> AppTest:
    """The app on ``page`` (the home page when None), after the first run, with ``query`` in the URL."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.query_params.update(query or {})
    at.run()
    if page is not None:
        at.switch_page(page)
        at.query_params.update(query or {})
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)
