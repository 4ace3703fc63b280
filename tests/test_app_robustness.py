"""The robustness and external validation pages through Streamlit's AppTest: the tiny real study, the demo, bad input.

Figures on the pages are checked against ones computed here from the run and result files themselves (the
folds' confusion matrices, the robustness counts, raw Keras predictions), never through the page's own calls.
No real worker runs: ``engine.jobs.worker.ensure_worker`` is replaced by a recorder.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import engine.evaluation.external
import engine.jobs.worker
from engine import settings
from engine.cli.main import main
from engine.data.classes import canonical_class
from engine.data.images import decode_xray
from engine.jobs.store import JobStore
from tests import app_fixtures
from tests.app_fixtures import TINY_BACKBONES, TINY_FOLDS, TINY_SIZE, TinyStudy, open_page, texts
from tests.robustness_files import pooled, robustness_json
from tests.synthetic import make_dataset

ROBUSTNESS = "pages/robustness.py"
EXTERNAL = "pages/external.py"
DEMO = settings.PROJECT_ROOT / "artifacts"
DEMO_STUDY = "9da277b73bda"
ADULTS = "nih-adult-normal"
tiny_study = app_fixtures.tiny_study
served_navigation = app_fixtures.served_navigation
pytestmark = pytest.mark.usefixtures("served_navigation", "eager_tensorflow")
ANALYSED, NOT_ANALYSED = TINY_BACKBONES


def chart(at: AppTest, index: int) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def reference_line(figure: dict) -> float:
    (shape,) = figure["layout"]["shapes"]
    assert shape["y0"] == shape["y1"]
    return shape["y0"]


def line_of(figure: dict, name: str) -> list[float]:
    return next(trace["y"] for trace in figure["data"] if trace["name"] == name)


def run_json(root: Path, study_id: str, backbone: str, fold: int, name: str) -> dict:
    return json.loads((root / "studies" / study_id / "runs" / backbone / f"fold-{fold}" / name).read_text())


@pytest.fixture
def started_workers(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    calls: list[Path | None] = []
    monkeypatch.setattr(engine.jobs.worker, "ensure_worker", lambda artifacts_root=None: calls.append(artifacts_root))
    return calls


@pytest.fixture(scope="module")
def analysed(tiny_study: TinyStudy, tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """The tiny study with the robustness of its first backbone's two fold models on disk (the CLI's)."""
    root = tmp_path_factory.mktemp("analysed") / "artifacts"
    shutil.copytree(tiny_study.root, root)
    argv = ["robustness", "--study", tiny_study.study_id, "--backbone", ANALYSED, "--artifacts", str(root)]
    assert main([*argv, "--json"]) == 0
    return TinyStudy(root=root, study_id=tiny_study.study_id, data=tiny_study.data, weights=tiny_study.weights)


@pytest.fixture
def copy(analysed: TinyStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinyStudy:
    """A copy of ``analysed`` of this test's own, set as the app's artifacts folder."""
    root = tmp_path / "artifacts"
    shutil.copytree(analysed.root, root)
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return TinyStudy(root=root, study_id=analysed.study_id, data=analysed.data, weights=analysed.weights)


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The committed demo's studies and evaluations, without any image: as a fresh clone or the hosted demo has it."""
    root = tmp_path / "demo"
    shutil.copytree(DEMO / "studies", root / "studies")
    shutil.copytree(DEMO / "evaluations", root / "evaluations")
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return root


# --- empty folder ---


@pytest.mark.parametrize(
    ("page", "expected"),
    [(ROBUSTNESS, ["No study with finished runs"]), (EXTERNAL, ["No trained model", "No saved evaluation"])],
)
def test_the_pages_explain_what_to_do_on_an_empty_folder(artifacts_root: Path, page: str, expected: list[str]) -> None:
    at = open_page(page)
    shown = texts(at.info)
    assert all(line in shown for line in expected), shown
    assert not at.get("plotly_chart")


# --- robustness ---


@pytest.mark.slow
def test_robustness_shows_the_folds_pooled_under_each_shift(copy: TinyStudy) -> None:
    at = open_page(ROBUSTNESS, query={"study": copy.study_id, "backbone": ANALYSED, "class": "Normal"})
    assert at.title[0].value == "Robustness to acquisition shifts"
    accuracy, recall = chart(at, 0), chart(at, 1)
    matrices = [
        np.asarray(run_json(copy.root, copy.study_id, ANALYSED, k, "metrics.json")["confusion_matrix"])
        for k in range(TINY_FOLDS)
    ]
    summed = sum(matrices)
    assert reference_line(accuracy) == pytest.approx(np.trace(summed) / summed.sum())  # the folds' own test accuracy
    normal = 1
    assert reference_line(recall) == pytest.approx(summed[normal, normal] / summed[normal].sum())
    results = robustness_json(copy.root, copy.study_id, ANALYSED)
    assert [r["fold"] for r in results] == list(range(TINY_FOLDS))
    assert line_of(accuracy, "blur") == pytest.approx(
        [pooled(results, "blur", s) for s in ("mild", "middle", "strong")]
    )
    assert line_of(recall, "noise") == pytest.approx(
        [pooled(results, "noise", s, cls=normal) for s in ("mild", "middle", "strong")]
    )
    assert {trace["name"] for trace in accuracy["data"]} == {
        "contrast",
        "gamma",
        "brightness",
        "noise",
        "blur",
        "jpeg",
        "resolution",
    }
    table = at.dataframe[0].value
    assert len(table) == 1 + 7 * 3 and set(table["folds"]) == {"0, 1"}
    assert set(table["images"]) == {sum(int(m.sum()) for m in matrices)}
    assert "Gaussian blur, radius in pixels" in set(table["description"])
    assert "on its own held-out images" in texts(at.caption)
    assert (at.query_params["backbone"], at.query_params["class"]) == (ANALYSED, "Normal")
    assert not at.get("button") or "Run the robustness analysis in the background" not in [b.label for b in at.button]


def test_robustness_remembers_the_view_in_the_url(copy: TinyStudy) -> None:
    at = open_page(ROBUSTNESS, query={"study": copy.study_id, "backbone": ANALYSED})
    at.selectbox(key="choose-class").set_value("Viral Pneumonia").run()
    assert at.query_params["class"] == "Viral Pneumonia"
    assert "Viral Pneumonia recall" in chart(at, 1)["layout"]["title"]["text"]
    at.selectbox(key="choose-backbone").set_value(NOT_ANALYSED).run()
    assert at.query_params["backbone"] == NOT_ANALYSED
    assert not at.get("plotly_chart")


def test_saved_models_without_results_can_be_analysed_in_the_background(copy: TinyStudy, started_workers: list) -> None:
    at = open_page(ROBUSTNESS, query={"study": copy.study_id, "backbone": NOT_ANALYSED})
    assert f"Fold(s) 0, 1 of {NOT_ANALYSED} have a saved model but no robustness results yet" in texts(at.info)
    button = at.button(key="queue-robustness")
    assert button.label == "Run the robustness analysis in the background"
    button.click().run()
    assert not at.exception
    (job,) = JobStore(copy.root).list_jobs()
    assert (job.request.kind, job.request.study_id, job.request.backbones) == (
        "robustness",
        copy.study_id,
        (NOT_ANALYSED,),
    )
    assert [(t.backbone, t.fold) for t in JobStore(copy.root).tasks(job.id)] == [
        (NOT_ANALYSED, k) for k in range(TINY_FOLDS)
    ]
    assert started_workers == [copy.root]
    assert any(link.proto.page.endswith("jobs") for link in at.get("page_link"))
    at.run()  # the queued job is now shown instead of the button, and nothing is queued twice
    assert f"Job `{job.id}` is queued" in texts(at.success)
    assert len(JobStore(copy.root).list_jobs()) == 1

    jobs = open_page("pages/jobs.py")
    assert f"robustness · {NOT_ANALYSED} of study `{copy.study_id}`" in texts(jobs.markdown)


def test_read_only_offers_no_button_and_writes_no_job_store(copy: TinyStudy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_READ_ONLY", "1")
    at = open_page(ROBUSTNESS, query={"study": copy.study_id, "backbone": NOT_ANALYSED})
    assert "Read-only demo: the analysis does not run here" in texts(at.info)
    assert "Run the robustness analysis in the background" not in [b.label for b in at.button]
    assert not (copy.root / "jobs.sqlite").exists()


def test_a_backbone_without_a_saved_model_says_what_robustness_needs(copy: TinyStudy) -> None:
    for model in (copy.root / "studies" / copy.study_id / "runs" / NOT_ANALYSED).glob("fold-*/model.keras"):
        model.unlink()
    at = open_page(ROBUSTNESS, query={"study": copy.study_id, "backbone": NOT_ANALYSED})
    assert f"{NOT_ANALYSED} has no saved fold model (model.keras)" in texts(at.info)
    assert f"Backbones with saved models: {ANALYSED}" in texts(at.info)
    assert "Run the robustness analysis in the background" not in [b.label for b in at.button]


def test_without_the_studys_images_the_page_says_so_instead_of_queueing(copy: TinyStudy) -> None:
    shutil.rmtree(copy.root / "datasets")
    at = open_page(ROBUSTNESS, query={"study": copy.study_id, "backbone": NOT_ANALYSED})
    assert "are not on this machine, so the analysis cannot run here" in texts(at.warning)
    assert "Run the robustness analysis in the background" not in [b.label for b in at.button]
    assert len(at.get("plotly_chart")) == 0


@pytest.mark.slow
def test_robustness_of_the_demo_study(demo: Path) -> None:
    at = open_page(ROBUSTNESS, query={"study": DEMO_STUDY, "backbone": "MobileNet"})
    cm = np.asarray(run_json(demo, DEMO_STUDY, "MobileNet", 3, "metrics.json")["confusion_matrix"])
    assert reference_line(chart(at, 0)) == pytest.approx(np.trace(cm) / cm.sum())
    results = robustness_json(demo, DEMO_STUDY, "MobileNet")
    assert line_of(chart(at, 0), "jpeg") == pytest.approx(
        [pooled(results, "jpeg", s) for s in ("mild", "middle", "strong")]
    )
    assert "fold(s) 3, 579 images" in texts(at.caption)
    assert "Fold(s) 0, 1, 2, 4 of MobileNet kept no model.keras" in texts(at.caption)
    served = "02eb85d77f81"  # served until 2026-12-08: three backbones, their ensemble's robustness counted by source
    at = open_page(ROBUSTNESS, query={"study": served, "backbone": "ensemble"})  # its ensemble of backbones
    results = robustness_json(demo, served, "ensemble")
    assert reference_line(chart(at, 0)) == pytest.approx(pooled(results, "none", None))
    assert "The mean of every backbone's model of each fold on its own held-out images" in texts(at.caption)
    at = open_page(ROBUSTNESS, query={"study": served, "backbone": "ensemble", "source": ADULTS})
    assert at.selectbox(key="choose-class").options == ["Normal"], "the adult normals bring no other class"
    adults = [
        {**r, "conditions": [{**c, **c["by_source"][ADULTS]} for c in r["conditions"]]}
        for r in results
        if all(ADULTS in c.get("by_source", {}) for c in r["conditions"])
    ]
    assert adults, "the ensemble's robustness files count the adult normals apart"
    assert reference_line(chart(at, 1)) == pytest.approx(pooled(adults, "none", None, cls=1))
    assert line_of(chart(at, 1), "jpeg") == pytest.approx(
        [pooled(adults, "jpeg", s, cls=1) for s in ("mild", "middle", "strong")]
    )
    assert f"on its own held-out images from {ADULTS}" in texts(at.caption)
    for model in (demo / "studies" / served / "runs" / "MobileNet").glob("fold-*/model.keras"):
        model.unlink()  # as a fresh clone has it: the results, not the fold models
    at = open_page(ROBUSTNESS, query={"study": served, "backbone": "MobileNet"})
    unshifted = pooled(robustness_json(demo, served, "MobileNet"), "none", None)
    assert reference_line(chart(at, 0)) == pytest.approx(unshifted)
    assert "nothing to analyse" not in texts(at.info)
    assert "The results above were computed from MobileNet's fold models" in texts(at.caption)
    at = open_page(ROBUSTNESS, query={"study": "0c18372e7d3f", "backbone": "MobileNet-0.25"})
    assert "are not on this machine" in texts(at.warning)  # a fresh clone: no decoded images
    for backbone in ("MobileNet", "MobileNet-0.25"):  # the first two listed, made unanalysed
        shutil.rmtree(demo / "studies" / "4b07a4dd6629" / "robustness" / backbone)
    at = open_page(ROBUSTNESS, query={"study": "4b07a4dd6629"})
    assert at.selectbox(key="choose-backbone").value == "MobileNetV2-0.35", "opens on an analysed backbone"


# --- external validation ---


def evaluation_files(root: Path) -> dict[str, bytes]:
    folder = root / "evaluations"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def evaluate(at: AppTest, *, folder: str = "", upload: tuple[str, bytes] | None = None) -> AppTest:
    at.text_input[0].set_value(folder)
    if upload is not None:
        at.main.get("file_uploader")[0].set_value((*upload, "application/zip"))
    next(b for b in at.button if b.label == "Evaluate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def keras_accuracy(model_paths: list[Path], folder: Path, classes: list[str]) -> float:
    """Accuracy of the raw Keras models' mean probabilities (a model or a fold ensemble) on the PNGs of ``folder``."""
    import keras

    truth, images = [], []
    for png in sorted(folder.rglob("*.png")):
        truth.append(classes.index(canonical_class(png.parent.name)))
        images.append(decode_xray(png.read_bytes(), size=TINY_SIZE).pixels)
    batch = np.stack(images)[..., None].astype("float32")
    proba = np.mean([keras.saving.load_model(p, compile=False).predict_on_batch(batch) for p in model_paths], axis=0)
    return float(np.mean(np.argmax(proba, axis=1) == np.array(truth)))


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


@pytest.mark.slow
def test_external_validation_evaluates_a_folder_and_lists_it(copy: TinyStudy, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "unseen", n_per_class=5, seed=9)
    at = open_page(EXTERNAL)
    chosen = at.selectbox(key="choose-model").value
    study_id, backbone, fold = chosen.split("/")
    assert fold == "ensemble", "a backbone's fold ensemble is the default model"
    at = evaluate(at, folder=str(data))
    assert "Saved as evaluation" in texts(at.success)
    (saved,) = evaluation_files(copy.root).values()
    result = json.loads(saved)
    runs = copy.root / "studies" / study_id / "runs" / backbone
    members = [runs / f"fold-{k}" / "model.keras" for k in result["model"]["folds"]]
    assert result["model"]["fold"] is None and len(members) == 2
    expected = keras_accuracy(members, data, result["model"]["classes"])
    assert float(metric(at, "Accuracy")) == pytest.approx(expected, abs=5e-4)
    interval = result["intervals"]["metrics"]["accuracy"]
    assert interval["low"] <= expected <= interval["high"]
    assert f"95% interval [{interval['low']:.3f}, {interval['high']:.3f}]" in texts(at.caption)
    assert metric(at, "Images evaluated") == "15"
    table = at.dataframe[0].value
    assert list(table["images"]) == [15] and table["data"][0].startswith("unseen · ")
    assert at.query_params["evaluation"] == table["key"][0] and at.query_params["model"] == chosen
    assert "0 identical and 0 near-duplicate image(s) of 15 left out" in texts(at.success)
    assert len(at.get("plotly_chart")) == 1
    wrong = round(15 * (1 - expected))
    assert f"The {wrong:,} misclassified image(s), the most confident first" in [x.label for x in at.expander]


@pytest.mark.slow
def test_external_validation_evaluates_a_studys_ensemble_of_backbones(copy: TinyStudy, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "unseen", n_per_class=5, seed=9)
    at = open_page(EXTERNAL)
    box = at.selectbox(key="choose-model")
    (choice,) = [o for o in box.options if "the study's ensemble row" in o]
    assert choice == f"ensemble of {', '.join(TINY_BACKBONES)} (the study's ensemble row) · study {copy.study_id}"
    assert box.options[0] != choice, "a fold ensemble is served: it comes first"
    (copy.root / "served.json").write_text(json.dumps({"study_id": copy.study_id, "backbone": "ensemble"}))
    at = open_page(EXTERNAL)
    box = at.selectbox(key="choose-model")
    assert box.options[0] == choice and box.value == f"{copy.study_id}/ensemble/backbones", "the served one first"
    at = evaluate(at, folder=str(data))
    assert "Saved as evaluation" in texts(at.success)
    saved = {name: json.loads(raw) for name, raw in evaluation_files(copy.root).items()}
    (result,) = [e for e in saved.values() if e["model"].get("backbones")]
    assert result["model"]["backbones"] == list(TINY_BACKBONES) and len(saved) == 1 + len(TINY_BACKBONES)
    runs = copy.root / "studies" / copy.study_id / "runs"
    members = [runs / b / f"fold-{k}" / "model.keras" for b in TINY_BACKBONES for k in range(TINY_FOLDS)]
    expected = keras_accuracy(members, data, result["model"]["classes"])
    assert float(metric(at, "Accuracy")) == pytest.approx(expected, abs=5e-4)
    assert at.query_params["model"] == f"{copy.study_id}/ensemble/backbones"


def zip_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for image in sorted(folder.rglob("*.png")):
            archive.write(image, image.relative_to(folder))
    return buffer.getvalue()


@pytest.mark.slow
def test_bad_input_gives_one_line_and_changes_nothing_saved(copy: TinyStudy, tmp_path: Path) -> None:
    at = evaluate(open_page(EXTERNAL), folder=str(make_dataset(tmp_path / "first", n_per_class=3, seed=4)))
    before = evaluation_files(copy.root)
    assert len(before) == 1
    cats = make_dataset(tmp_path / "cats", n_per_class=3, seed=5, classes=("cats", "dogs"))
    own = tmp_path / "own" / "COVID"
    own.mkdir(parents=True)
    for image in sorted((copy.data / "COVID").glob("*.png"))[:3]:
        shutil.copy(image, own / image.name)
    cases = [
        ({"folder": str(cats)}, "none of its classes (cats, dogs) is a class of the model"),
        ({"upload": ("fake.zip", b"not a zip at all")}, "fake.zip: not a .zip archive"),
        ({"folder": str(own.parent)}, "all 3 images are images of the model's study"),
        ({"folder": str(tmp_path / "no-such-folder")}, "no such folder"),
        ({"folder": ""}, "give a dataset folder"),
    ]
    for given, message in cases:
        at = evaluate(at, **given)
        (error,) = at.error
        assert message in error.value and "\n" not in error.value and "Traceback" not in error.value
        assert evaluation_files(copy.root) == before
        at = open_page(EXTERNAL)


@pytest.mark.slow
def test_a_corrupt_image_and_a_foreign_class_are_named_and_the_rest_evaluated(copy: TinyStudy, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "mixed", n_per_class=4, seed=12, classes=("covid19", "cats"))
    (data / "covid19" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    at = evaluate(open_page(EXTERNAL), upload=("mixed.zip", zip_of(data)))
    assert not at.error
    warnings = texts(at.warning)
    assert "1 file(s) skipped" in warnings
    assert "Folder(s) not a class of the model, left out: cats" in warnings
    skipped = next(frame.value for frame in at.dataframe if "reason" in frame.value.columns)
    assert list(skipped["file"]) == ["covid19/broken.png"]
    assert metric(at, "Images evaluated") == "4"
    assert "the only figure here is COVID-19 recall" in texts(at.caption)
    classes = at.dataframe[1].value.set_index("class")
    assert classes.loc["Normal", "recall (sensitivity)"] == "undefined (no image)"


@pytest.mark.slow
def test_the_engine_refusal_in_read_only_mode_is_shown(copy: TinyStudy, tmp_path: Path, monkeypatch) -> None:
    real = engine.evaluation.external.evaluate_folder

    def switched_to_read_only(*args, **kwargs):  # the demo switch flipped between the page's check and the call
        monkeypatch.setenv("CXR_READ_ONLY", "1")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.evaluation.external, "evaluate_folder", switched_to_read_only)
    at = evaluate(open_page(EXTERNAL), folder=str(make_dataset(tmp_path / "set", n_per_class=2)))
    assert "read-only demo (CXR_READ_ONLY=1): new evaluations are disabled" in texts(at.error)
    assert evaluation_files(copy.root) == {}


@pytest.mark.slow
def test_the_demo_evaluation_read_only(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_READ_ONLY", "1")
    keys = sorted(p.stem for p in (demo / "evaluations").glob("*.json"))
    before = evaluation_files(demo)
    assert keys and set(before) == {f"{k}.json" for k in keys}
    at = None
    for key in keys:
        saved = json.loads((demo / "evaluations" / f"{key}.json").read_text())
        if at is None:
            at = open_page(EXTERNAL, query={"evaluation": key})  # a shared link opens the first
        else:
            at.selectbox(key="choose-evaluation").set_value(key).run()  # each other one is chosen in the list
            assert not at.exception, [e.value for e in at.exception]
        assert "Read-only demo: new evaluations are disabled here" in texts(at.info)
        assert not at.get("form") or all(b.label != "Evaluate" for b in at.button)
        cm = np.asarray(saved["metrics"]["confusion_matrix"])
        counts = saved["data"]["counts"]
        label = f"{next(iter(counts))} recall" if len(counts) == 1 else "Accuracy"
        assert float(metric(at, label)) == pytest.approx(np.trace(cm) / cm.sum(), abs=5e-4)
        if saved["data"].get("relation") == "same source":
            assert "not an external validation" in texts(at.info)
        assert metric(at, "Images evaluated") == f"{int(cm.sum()):,}"
        listed = at.dataframe[0].value.set_index("key")
        assert sorted(listed.index) == keys
        assert listed.loc[key, "data"] == f"{saved['data']['name']} · {saved['data']['fingerprint']}"
        assert at.query_params["evaluation"] == key
        heat = chart(at, 0)["data"][0]
        classes = saved["model"]["classes"]
        assert heat["y"] == [c for c in classes if c in counts]
        for row, name in zip(heat["text"], heat["y"], strict=True):
            assert [cell.split("<br>")[0] for cell in row] == [str(n) for n in cm[classes.index(name)]]
        if "intervals" in saved:
            key = f"recall[{next(iter(counts))}]" if len(counts) == 1 else "accuracy"
            low, high = (saved["intervals"]["metrics"][key][k] for k in ("low", "high"))
            assert f"95% interval [{low:.3f}, {high:.3f}]" in texts(at.caption)
    assert evaluation_files(demo) == before, "read-only: nothing written"


# --- the evaluation artifact's intervals, through the CLI ---


def fold_model(tiny: TinyStudy) -> Path:
    return tiny.root / "studies" / tiny.study_id / "runs" / ANALYSED / "fold-0" / "model.keras"


def test_evaluate_json_carries_intervals_and_the_text_prints_them(copy: TinyStudy, tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "unseen", n_per_class=6, seed=21)
    assert main(["evaluate", "--data", str(data), "--model", str(fold_model(copy)), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    intervals = result["intervals"]
    assert "2,000 resamples" in intervals["description"] and "these images" in intervals["description"]
    classes = result["model"]["classes"]
    assert intervals["metrics"]["accuracy"]["estimate"] == pytest.approx(result["accuracy"])
    for c in classes:
        assert intervals["metrics"][f"recall[{c}]"]["estimate"] == pytest.approx(result["recall"][c])
    assert {"macro_precision", "macro_recall", "macro_f1"} <= set(intervals["metrics"])
    for found in intervals["metrics"].values():
        assert (found["method"], found["n_resamples"], found["confidence"]) == ("percentile", 2000, 0.95)
        assert found["low"] <= found["estimate"] <= found["high"]
    assert main(["evaluate", "--data", str(data), "--model", str(fold_model(copy))]) == 0
    accuracy = intervals["metrics"]["accuracy"]
    line = f"accuracy {accuracy['estimate']:.3f} [{accuracy['low']:.3f}, {accuracy['high']:.3f}]"
    assert line in capsys.readouterr().out.splitlines()


def test_a_one_class_set_has_intervals_for_what_it_defines(copy: TinyStudy, tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "covid-only", n_per_class=12, seed=22, classes=("covid19",))
    assert main(["evaluate", "--data", str(data), "--model", str(fold_model(copy)), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["intervals"]["metrics"]) == {"accuracy", "recall[COVID-19]"}
    undefined = "\n".join(result["intervals"]["undefined"])
    assert "recall[Normal]: no Normal image" in undefined and "macro figures" in undefined
    assert "the set holds one class" in undefined
    # the percentile bootstrap by hand: one class, so every resample draws 12 of the 12 images with replacement
    import keras

    raw = keras.saving.load_model(fold_model(copy), compile=False)
    pngs = sorted((data / "covid19").glob("*.png"))
    pixels = np.stack([decode_xray(p.read_bytes(), size=TINY_SIZE).pixels for p in pngs])
    correct = np.argmax(raw.predict_on_batch(pixels[..., None].astype("float32")), axis=1) == 0
    draws = np.random.default_rng(0).integers(0, len(pngs), size=(2000, len(pngs)), dtype=np.int32)
    low, high = np.quantile(correct[draws].mean(axis=1), [0.025, 0.975])
    accuracy = result["intervals"]["metrics"]["accuracy"]
    assert (accuracy["low"], accuracy["high"]) == pytest.approx((low, high))


@pytest.mark.slow
def test_an_evaluation_saved_before_intervals_is_computed_again(copy: TinyStudy, tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "unseen", n_per_class=3, seed=23)
    assert main(["evaluate", "--data", str(data), "--model", str(fold_model(copy)), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    path = copy.root / "evaluations" / f"{first['key']}.json"
    old = json.loads(path.read_text())
    del old["intervals"], old["predictions"]
    path.write_text(json.dumps({**old, "schema_version": 2}))
    (listed,) = engine.evaluation.external.list_evaluations(copy.root)
    assert listed["key"] == first["key"] and "intervals" not in listed
    assert engine.evaluation.external.mistakes(listed) is None
    page = open_page(EXTERNAL)
    assert "evaluate again to list the misclassified images" in texts(page.caption) and not page.exception
    assert main(["evaluate", "--data", str(data), "--model", str(fold_model(copy)), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["intervals"] == first["intervals"] and again["predictions"] == first["predictions"]
    assert json.loads(path.read_text())["schema_version"] == engine.evaluation.external.EVALUATION_SCHEMA
