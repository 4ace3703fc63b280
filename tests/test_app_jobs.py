"""The sidebar's launch form, the Jobs page and the read-only demo, through Streamlit's AppTest.

No real worker runs here: ``engine.jobs.worker.ensure_worker`` is replaced by a recorder (the app
imports it on every run, so the replacement is what the form calls). The browser test runs a
real worker.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import engine.jobs.worker
from engine.jobs.store import JobRequest, JobStore
from engine.models.backbones import PAPER_BACKBONES
from engine.settings import ReadOnlyError
from tests import app_fixtures
from tests.synthetic import make_dataset

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")
TIMEOUT_S = 60
served_navigation = app_fixtures.served_navigation
pytestmark = pytest.mark.usefixtures("served_navigation")


@pytest.fixture
def started_workers(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    calls: list[Path | None] = []
    monkeypatch.setattr(engine.jobs.worker, "ensure_worker", lambda artifacts_root=None: calls.append(artifacts_root))
    return calls


def home() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def fill_form(at: AppTest, *, data: str, backbones: list[str], input_size: int = 32) -> AppTest:
    at.sidebar.text_area[0].set_value(data)
    at.sidebar.multiselect[0].set_value(backbones)
    numbers = {n.label: n for n in at.sidebar.number_input}
    numbers["Folds"].set_value(2)
    if "Epochs" in numbers:
        numbers["Epochs"].set_value(1)
    numbers["Input size (px)"].set_value(input_size)
    numbers["Batch size"].set_value(8)
    weights = next(s for s in at.sidebar.selectbox if s.label == "Weights")
    weights.set_value("none")
    return at


def submit(at: AppTest) -> AppTest:
    at.sidebar.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_form_queues_a_job_and_wakes_the_worker(artifacts_root: Path, tiny_data: Path, started_workers: list) -> None:
    at = submit(fill_form(home(), data=str(tiny_data), backbones=["MobileNet-0.25"]))
    jobs = JobStore(artifacts_root).list_jobs()
    assert len(jobs) == 1
    request = jobs[0].request
    assert request.data == str(tiny_data.resolve())
    assert request.backbones == ("MobileNet-0.25",)
    assert (request.protocol, request.folds, request.epochs, request.batch_size) == (
        "harmonise-probe-varied-by-source",
        2,
        1,
        8,
    )
    assert (request.input_size, request.seed, request.weights) == (32, 42, "none")
    assert started_workers == [artifacts_root]
    assert jobs[0].id in "\n".join(s.value for s in at.sidebar.success)
    assert any(link.proto.page.endswith("jobs") for link in at.sidebar.get("page_link"))


def test_the_form_opens_on_the_recommended_protocol_and_composition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recommended recipe is what a first job runs: its protocol, the paper's images and the adult normals."""
    for name in ("covid19-radiography-paper", "nih-adult-normal"):
        (tmp_path / "data" / name).mkdir(parents=True)
    monkeypatch.setenv("CXR_SHARED", str(tmp_path))
    at = home()
    assert at.sidebar.selectbox(key="launch_protocol").value == "harmonise-probe-varied-by-source"
    folders = at.sidebar.text_area[0].value.splitlines()
    assert folders == [str(tmp_path / "data" / name) for name in ("covid19-radiography-paper", "nih-adult-normal")]
    (tmp_path / "data" / "nih-adult-normal").rmdir()
    assert home().sidebar.text_area[0].value == str(tmp_path / "data" / "covid19-radiography-paper")
    (tmp_path / "data" / "covid19-radiography-paper").rmdir()
    (tmp_path / "data" / "nih-adult-normal").mkdir()
    assert home().sidebar.text_area[0].value == "", "the adult normals alone would be a one-class dataset"


def test_several_folders_and_image_level_folds_from_the_form(
    artifacts_root: Path, tiny_data: Path, tmp_path: Path, started_workers: list
) -> None:
    more = make_dataset(tmp_path / "more", n_per_class=3, classes=("NORMAL",))
    at = fill_form(home(), data=f"{tiny_data}\n\n  {more}  \n", backbones=["MobileNet-0.25"])
    at.sidebar.radio[0].set_value("image")
    submit(at)
    (job,) = JobStore(artifacts_root).list_jobs()
    assert job.request.data == str(tiny_data.resolve()) and job.request.extra_data == (str(more.resolve()),)
    assert job.request.split == "image"
    assert "data " + " + ".join(job.request.sources) in JobStore(artifacts_root).log(job.id)


def test_all_fourteen_of_the_paper_and_a_protocol_preset(
    artifacts_root: Path, tiny_data: Path, started_workers: list
) -> None:
    at = home()
    at.sidebar.selectbox(key="launch_protocol").set_value("paper").run()
    numbers = {n.label: n.value for n in at.sidebar.number_input}
    assert (numbers["Epochs"], numbers["Batch size"]) == (10, 32)
    fill_form(at, data=str(tiny_data), backbones=["All 14 of the paper"], input_size=224)
    submit(at)
    (job,) = JobStore(artifacts_root).list_jobs()
    assert job.request.protocol == "paper"
    assert job.request.backbones == PAPER_BACKBONES
    assert len(JobStore(artifacts_root).tasks(job.id)) == 14 * 2


def test_the_probe_preset_asks_for_no_epochs(artifacts_root: Path, tiny_data: Path, started_workers: list) -> None:
    at = home()
    at.sidebar.selectbox(key="launch_protocol").set_value("xray-probe").run()
    labels = [n.label for n in at.sidebar.number_input]
    assert "Epochs" not in labels and "Batch size" in labels
    assert any("No epochs" in c.value for c in at.sidebar.caption)
    fill_form(at, data=str(tiny_data), backbones=["MobileNet-0.25"], input_size=32)
    submit(at)
    (job,) = JobStore(artifacts_root).list_jobs()
    assert (job.request.protocol, job.request.epochs) == ("xray-probe", 1)


def test_uploaded_zip_is_kept_by_content_hash(artifacts_root: Path, tiny_data: Path, started_workers: list) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for image in sorted(tiny_data.rglob("*.png")):
            archive.write(image, image.relative_to(tiny_data))
    content = buffer.getvalue()
    at = fill_form(home(), data="", backbones=["MobileNet-0.25"])
    at.sidebar.get("file_uploader")[0].set_value(("tiny.zip", content, "application/zip"))
    submit(at)
    saved = artifacts_root / "uploads" / f"{hashlib.sha256(content).hexdigest()}.zip"
    assert saved.read_bytes() == content
    (job,) = JobStore(artifacts_root).list_jobs()
    assert job.request.data == str(saved.resolve())


def test_bad_input_is_shown_and_nothing_is_queued(artifacts_root: Path, started_workers: list) -> None:
    at = submit(fill_form(home(), data="/no/such/folder", backbones=["MobileNet-0.25"]))
    assert "data='/no/such/folder'" in "\n".join(e.value for e in at.sidebar.error)
    at = fill_form(home(), data="", backbones=["MobileNet-0.25"])
    at.sidebar.get("file_uploader")[0].set_value(("fake.zip", b"not a zip", "application/zip"))
    assert "not a .zip archive" in "\n".join(e.value for e in submit(at).sidebar.error)
    assert JobStore(artifacts_root).list_jobs() == []
    assert started_workers == []


def test_jobs_page_shows_progress_executor_log_and_cancels(artifacts_root: Path, tiny_data: Path) -> None:
    store = JobStore(artifacts_root)
    job = store.submit(JobRequest(data=str(tiny_data), backbones=("MobileNet-0.25",), folds=2, input_size=32))
    store.claim_next(executor="local-test")
    progress = {
        "fraction": 0.25,
        "backbone": "MobileNet-0.25",
        "fold": 0,
        "phase": "train",
        "epoch": 4,
        "epochs": 60,
        "batch": 1,
        "batches": 2,
        "logs": {"val_accuracy": 0.875},
        "eta_seconds": 95,
        "updated_at": None,
        "tasks_done": 0,
        "tasks_total": 2,
    }
    store.set_progress(job.id, progress, log_line="MobileNet-0.25 fold 0: epoch 5")
    at = home()
    at.switch_page("pages/jobs.py").run()
    assert not at.exception
    bar = at.get("progress")[0]
    assert bar.value == 25
    assert "MobileNet-0.25 fold 0" in bar.proto.text and "epoch 5/60" in bar.proto.text
    assert "val accuracy 0.875" in bar.proto.text and "ETA 1m 35s" in bar.proto.text
    page = "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)
    assert job.id in page and "running" in page and "executor: local-test" in page
    assert "MobileNet-0.25 fold 0: epoch 5" in "\n".join(c.value for c in at.code)
    at.button(key=f"cancel-{job.id}").click().run()
    assert store.get(job.id).state == "cancelled"


def test_read_only_hides_the_form_and_the_engine_refuses(
    artifacts_root: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXR_READ_ONLY", "1")
    at = home()
    assert not at.sidebar.get("form")
    assert "Read-only demo" in "\n".join(i.value for i in at.sidebar.info)
    with pytest.raises(ReadOnlyError):
        JobStore(artifacts_root).submit(JobRequest(data=str(tiny_data), backbones=("MobileNet-0.25",)))


def test_read_only_from_secrets_reaches_the_engine(artifacts_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_READ_ONLY", "0")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.secrets["read_only"] = True
    at.run()
    assert not at.exception
    assert not at.sidebar.get("form")
    with pytest.raises(ReadOnlyError):
        engine.jobs.worker.ensure_worker(artifacts_root)


def test_read_only_jobs_page_creates_no_job_store(artifacts_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_READ_ONLY", "1")
    at = home()
    at.switch_page("pages/jobs.py").run()
    assert not at.exception
    assert "Read-only demo: no training jobs run here" in "\n".join(i.value for i in at.info)
    assert not (artifacts_root / "jobs.sqlite").exists()
