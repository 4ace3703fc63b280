"""The hosted demo's Classify page (``CXR_READ_ONLY=1``) serves exported models without TensorFlow or Keras.

A tiny study (MobileNet-0.25, 2 folds, 32 px, random weights) has its fold 0 exported to LiteRT with
its sidecar and OOD detector; each check runs the app's Classify page through AppTest in a fresh
Python process, uploads one X-ray-like image and reads the prediction, then reports which of
``tensorflow`` and ``keras`` that process imported. The control runs the same model from a copy
without its export, not read-only: the Keras path, which must import both (so the check can fail).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import settings
from engine.models.catalog import list_models
from engine.models.export import export_runs
from engine.training.presets import get_protocol
from engine.training.runner import run_study
from engine.training.study import StudyRequest
from tests.conftest import eager_functions
from tests.synthetic import make_dataset, make_image

BACKBONE = "MobileNet-0.25"
TIMEOUT_S = 300
pytestmark = pytest.mark.slow

CLASSIFY = """
import json, sys
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

original = PagesManager.__init__


def init(self, *args, **kwargs):
    # As the server does once st.navigation ran (tests/app_fixtures.served_navigation): pages go through the router.
    original(self, *args, **kwargs)
    PagesManager.uses_pages_directory = False


PagesManager.__init__ = init
image, model = sys.argv[1], sys.argv[2]
at = AppTest.from_file("streamlit_app.py", default_timeout=240)
at.run()
at.switch_page("pages/classify.py")
at.query_params["model"] = model
at.run()
assert not at.exception, [e.value for e in at.exception]
choice = at.selectbox(key="choose-model")
at.get("file_uploader")[0].set_value([("xray.png", open(image, "rb").read(), "image/png")])
at.run()
assert not at.exception, [e.value for e in at.exception]
table = at.dataframe[0].value
print(json.dumps({
    "options": list(choice.options),
    "chosen": choice.value,
    "captions": [c.value for c in at.caption],
    "sidebar": [i.value for i in at.sidebar.info],
    "verdicts": [m.value for m in at.markdown if "**" in m.value and ": **" in m.value],
    "rows": table.to_dict(orient="records"),
    "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules),
}))
"""


def copy_studies(root: Path, target: Path, *, exports: bool) -> Path:
    """The studies of ``root`` under ``target``, with or without their ``export/`` folders."""
    ignore = None if exports else shutil.ignore_patterns("export")
    shutil.copytree(root / "studies", target / "studies", ignore=ignore)
    return target


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished 2-fold study with both fold models saved and fold 0 exported to LiteRT (with its OOD detector)."""
    base = tmp_path_factory.mktemp("hosted")
    data = make_dataset(base / "data", n_per_class=8)
    root = base / "artifacts"
    request = StudyRequest(protocol=get_protocol("frozen").replace(epochs=2), n_folds=2, weights=None)
    with eager_functions():
        study = run_study(data, backbones=[BACKBONE], request=request, input_size=32, artifacts_root=root)
    fold0 = root / "studies" / study.study_id / "runs" / BACKBONE / "fold-0" / "model.keras"
    exported = export_runs([fold0], format="litert", artifacts_root=root, check_count=0)
    image = base / "xray.png"
    Image.fromarray(make_image(1, 40, np.random.default_rng(3))).save(image)
    return {
        "study": study.study_id,
        "model": f"{study.study_id}/{BACKBONE}/0",
        "export": exported,
        "hosted": copy_studies(root, base / "hosted", exports=True),
        "keras": copy_studies(root, base / "keras", exports=False),
        "image": image,
    }


def classify_in_fresh_process(root: Path, image: Path, model: str, *, read_only: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CXR_READ_ONLY"}
    env |= {"CXR_ARTIFACTS": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if read_only:
        env["CXR_READ_ONLY"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", CLASSIFY, str(image), model],
        cwd=settings.PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predicted(found: dict) -> dict:
    (row,) = found["rows"]
    assert row["file"] == "xray.png" and not row["error"] and row["predicted"], row
    assert len(found["verdicts"]) == 1 and row["predicted"] in found["verdicts"][0]
    return row


@pytest.fixture(scope="module")
def hosted(tiny: dict) -> dict:
    """The read-only Classify page on the copy with the export, in a fresh process (run once per module)."""
    return classify_in_fresh_process(tiny["hosted"], tiny["image"], tiny["model"], read_only=True)


def test_the_read_only_classify_page_serves_the_export_without_tensorflow_or_keras(hosted: dict) -> None:
    found = hosted
    row = predicted(found)
    assert found["loaded"] == [], f"the read-only server imported {found['loaded']}"
    assert any("served by the exported LiteRT/ONNX file" in c for c in found["captions"]), found["captions"]
    assert row["ood_score"] is not None, "the export's OOD detector was not used"
    assert any("Read-only demo" in text for text in found["sidebar"])


def test_read_only_mode_lists_only_the_exported_models(tiny: dict, hosted: dict) -> None:
    listed = list_models(tiny["hosted"])
    assert sorted((m.fold is None, m.fold, m.export is not None) for m in listed if m.fold is not None) == [
        (False, 0, True),
        (False, 1, False),
    ]
    assert [m.export for m in listed if m.is_ensemble] == [None], "the fold ensemble is listed, without an export"
    found = hosted
    assert found["chosen"] == tiny["model"]
    assert len(found["options"]) == 1 and f"{BACKBONE} · frozen · fold 0 ·" in found["options"][0], found["options"]


def test_control_the_keras_path_of_the_same_model_imports_tensorflow_and_keras(tiny: dict, hosted: dict) -> None:
    """The same fold model from a copy without its export, not read-only: Keras serves it, so both are imported."""
    found = classify_in_fresh_process(tiny["keras"], tiny["image"], tiny["model"], read_only=False)
    row = predicted(found)
    assert found["loaded"] == ["keras", "tensorflow"]
    assert found["chosen"] == tiny["model"] and len(found["options"]) == 3, found["options"]
    assert any("served by the Keras model" in c for c in found["captions"]), found["captions"]
    exported = predicted(hosted)
    assert row["predicted"] == exported["predicted"]
    for key in (k for k in row if k.startswith("p[")):
        assert row[key] == pytest.approx(exported[key], abs=1e-3), key
