"""The Classify page through AppTest: a model of the tiny study on an upload batch with a bad file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import engine.models.inference
from engine.models.catalog import list_models
from engine.models.inference import load_classifier
from engine.reports import explore
from tests import app_fixtures, dicom_fixtures
from tests.app_fixtures import TinyStudy
from tests.synthetic import make_image

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
TIMEOUT_S = 120
tiny_study = app_fixtures.tiny_study
served_navigation = app_fixtures.served_navigation
pytestmark = pytest.mark.usefixtures("served_navigation")


def png(label: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_image(label, 40, np.random.default_rng(7))).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_batch_gets_probabilities_heatmap_table_and_a_visible_error(
    tiny_study: TinyStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_ARTIFACTS", str(tiny_study.root))
    batches: list[list[str]] = []
    classify = engine.models.inference.Classifier.classify

    def counted(self, items):
        batches.append([name for name, _ in items])
        return classify(self, items)

    best = list_models(tiny_study.root)[0]
    image = png(0)
    expected = load_classifier(best.path).classify([("xray.png", image)])[0]
    monkeypatch.setattr(engine.models.inference.Classifier, "classify", counted)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    at.switch_page("pages/classify.py").run()
    assert "not a diagnostic device" in "\n".join(e.value for e in at.error)
    assert best.is_ensemble and at.selectbox(key="choose-model").value == f"{best.study_id}/{best.backbone}/ensemble"
    pooled = explore.interval_table(best.study_id, tiny_study.root).set_index("model").loc[best.backbone]
    assert f"held-out accuracy {pooled['accuracy']:.3f} [{pooled['accuracy low']:.3f}, " in "\n".join(
        c.value for c in at.caption
    ), "the ensemble's own pooled figure, as the Comparison page gives it"
    at.get("file_uploader")[0].set_value([("xray.png", image, "image/png"), ("notes.png", b"hello", "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    table = at.dataframe[0].value.set_index("file")
    assert table.loc["xray.png", "predicted"] == expected.predicted
    for name, probability in expected.probabilities.items():
        assert table.loc["xray.png", f"p[{name}]"] == pytest.approx(probability, abs=1e-4)
    assert "not a PNG, JPEG or DICOM" in table.loc["notes.png", "error"]
    assert "not a PNG, JPEG or DICOM" in "\n".join(e.value for e in at.error)
    assert "very small image" in "\n".join(w.value for w in at.warning)
    assert f"Predicted: **{expected.predicted}**" in "\n".join(m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) == 2
    assert at.get("download_button")
    assert '"Grad-CAM"' in at.get("plotly_chart")[0].proto.spec

    at.toggle[0].set_value(False).run()
    assert not at.exception
    assert '"Grad-CAM"' not in at.get("plotly_chart")[0].proto.spec
    assert at.dataframe[0].value.equals(table.reset_index())
    assert batches == [["xray.png", "notes.png"]], "a rerun must not classify the batch again"


@pytest.mark.slow
def test_a_monochrome1_dicom_upload_gets_the_prediction_of_its_png_and_no_patient_name(
    tiny_study: TinyStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_ARTIFACTS", str(tiny_study.root))
    pixels = make_image(2, 40, np.random.default_rng(11))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    inverted = dicom_fixtures.xray_dataset(255 - pixels, photometric="MONOCHROME1")
    uploads = [
        ("film.png", buffer.getvalue(), "image/png"),
        ("film.dcm", dicom_fixtures.dicom_bytes(inverted), "application/dicom"),
    ]
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    at.switch_page("pages/classify.py").run()
    at.get("file_uploader")[0].set_value(uploads)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value.set_index("file")
    assert (
        table.loc["film.dcm", "error"] == ""
        and table.loc["film.dcm", "predicted"] == table.loc["film.png", "predicted"]
    )
    for column in [c for c in table.columns if c.startswith("p[")]:
        assert table.loc["film.dcm", column] == pytest.approx(table.loc["film.png", column], abs=1e-3)
    shown = "\n".join(str(e.value) for e in [*at.markdown, *at.warning, *at.caption, *at.error])
    assert "MONOCHROME1 inverted" in table.loc["film.dcm", "warnings"]
    for value in dicom_fixtures.PATIENT.values():
        assert str(value) not in shown and str(value) not in table.to_csv()


def test_read_only_without_an_export_says_what_the_hosted_demo_needs(
    tiny_study: TinyStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny study has Keras fold models only: read-only, they are not served, and the page says why."""
    monkeypatch.setenv("CXR_ARTIFACTS", str(tiny_study.root))
    monkeypatch.setenv("CXR_READ_ONLY", "1")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    at.switch_page("pages/classify.py").run()
    assert not at.exception
    assert any("No exported model" in i.value and "engine export" in i.value for i in at.info)
    assert not at.get("file_uploader")
