"""Every page of the explorer through Streamlit's AppTest: on a tiny real study, and on an empty folder."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine import settings
from engine.evaluation.stats import corrected_resampled_ttest
from engine.reports import explore
from engine.reports.served import candidate_name
from engine.results import artifacts
from engine.training.presets import XRAY_PROBE
from tests import app_fixtures
from tests.app_fixtures import TINY_BACKBONES, TINY_FOLDS, TinyStudy, open_page, texts

tiny_study = app_fixtures.tiny_study
served_navigation = app_fixtures.served_navigation
pytestmark = pytest.mark.usefixtures("served_navigation")


def run_files(tiny: TinyStudy, backbone: str, name: str) -> list[dict]:
    """A run file of every fold of ``backbone``, read straight from disk (not through the engine)."""
    runs = tiny.root / "studies" / tiny.study_id / "runs" / backbone
    return [json.loads((runs / f"fold-{k}" / name).read_text()) for k in range(TINY_FOLDS)]


def predictions_of(tiny: TinyStudy, backbone: str, *, fold: int) -> list[dict[str, str]]:
    path = tiny.root / "studies" / tiny.study_id / "runs" / backbone / f"fold-{fold}" / "predictions.csv"
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def ensemble_accuracy_by_hand(tiny: TinyStudy, *, pooled: bool = False):
    """The mean of the backbones' probabilities, image by image, from their prediction files: per-fold accuracy
    (or the pooled accuracy over every image)."""
    hits: dict[int, list[bool]] = {}
    for fold in range(TINY_FOLDS):
        rows = [predictions_of(tiny, backbone, fold=fold) for backbone in TINY_BACKBONES]
        for together in zip(*rows, strict=True):
            classes = [k[2:-1] for k in together[0] if k.startswith("p[")]
            mean = np.mean([[float(r[f"p[{c}]"]) for c in classes] for r in together], axis=0)
            hits.setdefault(fold, []).append(classes[int(np.argmax(mean))] == together[0]["true"])
    if pooled:
        return float(np.mean([h for fold in hits.values() for h in fold]))
    return [float(np.mean(h)) for _, h in sorted(hits.items())]


@pytest.fixture
def study_root(tiny_study: TinyStudy, monkeypatch: pytest.MonkeyPatch) -> TinyStudy:
    monkeypatch.setenv("CXR_ARTIFACTS", str(tiny_study.root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return tiny_study


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (None, "No study with finished runs"),
        ("pages/comparison.py", "No study with finished runs"),
        ("pages/confusion.py", "No study with finished runs"),
        ("pages/curves.py", "No study with finished runs"),
        ("pages/discrimination.py", "No study with finished runs"),
        ("pages/calibration.py", "No study with finished runs"),
        ("pages/operating_point.py", "No study with finished runs"),
        ("pages/failures.py", "No study with finished runs"),
        ("pages/robustness.py", "No study with finished runs"),
        ("pages/audit.py", "No study with finished runs"),
        ("pages/classify.py", "No trained model"),
        ("pages/jobs.py", "No jobs yet"),
        ("pages/report.py", "No study with finished runs"),
    ],
)
def test_every_page_explains_what_to_do_on_an_empty_folder(
    artifacts_root: Path, page: str | None, expected: str
) -> None:
    at = open_page(page)
    assert expected in texts(at.info)
    assert "Research tool, not a diagnostic device" in texts(at.sidebar.caption)
    assert at.sidebar.get("form"), "the launch form is in the sidebar of every page"


def test_home_names_the_dataset_weights_and_where_to_start(study_root: TinyStudy) -> None:
    at = open_page()
    source = explore.provenance(study_root.study_id, study_root.root)
    page = texts(at.markdown)
    assert source.fingerprint in page and "tiny-data" in page
    assert [m.value for m in at.metric] == ["8", "8", "8"]
    weights = at.dataframe[0].value
    assert sorted(weights["backbone"]) == sorted(TINY_BACKBONES)
    assert "not a diagnostic device" in texts(at.warning)
    assert at.sidebar.selectbox(key="choose-study").value == study_root.study_id
    assert at.sidebar.selectbox(key="choose-study").options == [f"frozen · tiny-data · {study_root.study_id}"]
    assert {link.proto.page for link in at.get("page_link")} >= {
        "comparison",
        "confusion",
        "curves",
        "classify",
        "jobs",
    }


def test_home_opens_on_the_served_model_its_targets_and_its_figures_outside_the_source(
    study_root: TinyStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    committed = json.loads((settings.PROJECT_ROOT / "artifacts" / "served.json").read_text())
    monkeypatch.setattr("engine.reports.summary_sections.read_choice", lambda root: committed)
    monkeypatch.setattr("engine.reports.scorecard.read_choice", lambda root: committed)
    at = open_page()
    assert at.header[0].value == "The model to use outside the source"
    met = sum(1 for ok in committed["targets"].values() if ok)
    opening = at.markdown[0].value
    assert opening.startswith(f"**The {candidate_name(committed['backbone'])}**") and committed["study_id"] in opening
    assert f"It meets **{met} of {len(committed['targets'])}** targets" in opening
    targets = at.table[0].value
    assert list(targets.columns) == ["target", "measured", "verdict"] and len(targets) == len(committed["targets"]) + 1
    met_rows = targets[targets["verdict"] == "met"]["target"].tolist()
    assert len(met_rows) == met and "in-fold accuracy ≥ 0.95 (paper's images)" in met_rows
    details = at.expander[0].markdown[0].value
    assert "trained without adult normals: calls" in details, "the committed candidates beside the served model"
    assert [link.proto.page for link in at.get("page_link")][:2] == ["classify", "report"]


def test_home_without_a_served_model_opens_on_the_study(study_root: TinyStudy) -> None:
    at = open_page()
    assert at.header[0].value == "What this study found"


def test_comparison_table_toggle_and_paired_test(study_root: TinyStudy) -> None:
    at = open_page("pages/comparison.py", query={"study": study_root.study_id})
    means = at.dataframe[0].value.set_index("backbone")
    assert list(means.index) == [*sorted(TINY_BACKBONES), "ensemble"]
    assert {"accuracy", "precision (paper)", "F1 (macro)", "COVID-19 recall", "loss ±sd"} <= set(means.columns)
    for backbone in TINY_BACKBONES:
        accuracy = [m["accuracy"] for m in run_files(study_root, backbone, "metrics.json")]
        assert means.loc[backbone, "accuracy"] == pytest.approx(np.mean(accuracy))
        assert means.loc[backbone, "accuracy ±sd"] == pytest.approx(np.std(accuracy, ddof=1))
    ensemble = ensemble_accuracy_by_hand(study_root)
    assert means.loc["ensemble", "accuracy"] == pytest.approx(np.mean(ensemble))
    intervals = at.dataframe[1].value.set_index("model")
    low, high = (float(v) for v in intervals.loc["ensemble", "accuracy"].split("[")[1].rstrip("]").split(","))
    pooled = ensemble_accuracy_by_hand(study_root, pooled=True)
    assert intervals.loc["ensemble", "accuracy"].startswith(f"{pooled:.3f} [") and low <= pooled <= high
    assert "stratified bootstrap" in texts(at.caption)
    assert "None of this study's backbones is one of the paper's 14" in texts(at.info)
    assert len(at.dataframe[2].value) == 14

    a, b = at.selectbox(key="choose-backbone").value, at.selectbox(key="choose-vs").value
    assert {a, b} == set(TINY_BACKBONES)
    paired = explore.paired_folds(study_root.study_id, "accuracy", a, b, study_root.root)
    result = corrected_resampled_ttest(
        paired[a], paired[b], n_train=paired["n_train"].mean(), n_test=paired["n_test"].mean()
    )
    shown = {m.label: m.value for m in at.metric}
    assert shown["p-value (two-sided)"] == f"{result.p_value:.4f}"
    assert shown["degrees of freedom"] == str(TINY_FOLDS - 1)
    assert at.query_params["backbone"] == a

    at.toggle[0].set_value(True).run()
    assert not at.exception
    assert {"precision (macro)", "recall (macro)"} <= set(at.dataframe[0].value.columns)
    assert "precision (paper)" not in at.dataframe[0].value.columns
    assert at.query_params["definition"] == "per-class"


def test_confusion_page_opens_the_view_of_a_shared_link(study_root: TinyStudy) -> None:
    backbone = TINY_BACKBONES[1]
    at = open_page("pages/confusion.py", query={"study": study_root.study_id, "backbone": backbone, "fold": "1"})
    assert at.selectbox(key="choose-backbone").value == backbone
    assert at.selectbox(key="choose-fold").value == 1
    per_class = at.dataframe[0].value.set_index("class")
    rows = predictions_of(study_root, backbone, fold=1)
    for name in per_class.index:
        truly = [r for r in rows if r["true"] == name]
        assert per_class.loc[name, "support"] == len(truly)
        hits = sum(r["predicted"] == name for r in truly)
        assert per_class.loc[name, "sensitivity"] == pytest.approx(hits / len(truly))
    assert len(at.get("plotly_chart")) == 1 + 3

    at.selectbox(key="choose-fold").set_value("all").run()
    at.selectbox(key="choose-vs").set_value(TINY_BACKBONES[0]).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2 + 3
    everyone = [r for fold in range(TINY_FOLDS) for r in predictions_of(study_root, backbone, fold=fold)]
    shown = at.dataframe[0].value.set_index("class")["support"]
    assert {name: int(n) for name, n in shown.items()} == dict(Counter(r["true"] for r in everyone))
    assert at.query_params["fold"] == "all"


def test_confusion_page_shows_the_ensemble_of_the_backbones(study_root: TinyStudy) -> None:
    at = open_page("pages/confusion.py", query={"study": study_root.study_id, "backbone": "ensemble"})
    assert at.selectbox(key="choose-backbone").value == "ensemble"
    per_class = at.dataframe[0].value.set_index("class")
    right = sum(per_class["sensitivity"] * per_class["support"])
    assert right / per_class["support"].sum() == pytest.approx(ensemble_accuracy_by_hand(study_root, pooled=True))

    at.selectbox(key="choose-fold").set_value(1).run()
    assert not at.exception
    per_class = at.dataframe[0].value.set_index("class")
    right = sum(per_class["sensitivity"] * per_class["support"])
    assert right / per_class["support"].sum() == pytest.approx(ensemble_accuracy_by_hand(study_root)[1])


@pytest.mark.parametrize(("page", "key"), [("pages/confusion.py", "backbone"), ("pages/calibration.py", "model")])
def test_a_study_page_opens_on_the_served_model(
    study_root: TinyStudy, monkeypatch: pytest.MonkeyPatch, page: str, key: str
) -> None:
    served = {"study_id": study_root.study_id, "backbone": "ensemble"}
    monkeypatch.setattr("pages.common.read_choice", lambda root: served)
    assert open_page(page, query={"study": study_root.study_id}).selectbox(key=f"choose-{key}").value == "ensemble"
    monkeypatch.setattr("pages.common.read_choice", lambda root: {**served, "study_id": "another"})
    assert open_page(page, query={"study": study_root.study_id}).selectbox(key=f"choose-{key}").value != "ensemble"


def test_curves_page_marks_the_lowest_validation_loss(study_root: TinyStudy) -> None:
    at = open_page("pages/curves.py", query={"study": study_root.study_id})
    assert len(at.get("plotly_chart")) == 2
    shown = at.dataframe[0].value.set_index("backbone")
    for backbone in TINY_BACKBONES:
        val_loss = np.array([h["val_loss"] for h in run_files(study_root, backbone, "history.json")])
        assert shown.loc[backbone, "epoch of lowest mean val loss"] == int(val_loss.mean(axis=0).argmin()) + 1
        assert shown.loc[backbone, "mean val loss"] == pytest.approx(val_loss.mean(axis=0).min())
    at.multiselect[0].set_value([TINY_BACKBONES[0]]).run()
    assert list(at.dataframe[0].value["backbone"]) == [TINY_BACKBONES[0]]
    assert at.query_params["backbones"] == TINY_BACKBONES[0]


def _curves_of_committed_study(
    study_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[AppTest, Callable[[dict], dict]]:
    """The Curves page of a committed study, copied alone into an artifacts folder, and what each shown row's run
    saved as its head selection (read from its config.json, not through the page)."""
    shutil.copytree(settings.PROJECT_ROOT / "artifacts" / "studies" / study_id, tmp_path / "studies" / study_id)
    monkeypatch.setenv("CXR_ARTIFACTS", str(tmp_path))
    runs = tmp_path / "studies" / study_id / "runs"

    def head_selection(row: dict) -> dict:
        config = json.loads((runs / row["backbone"] / f"fold-{row['fold']}" / "config.json").read_text())
        return config["head_selection"]

    return open_page("pages/curves.py", query={"study": study_id}), head_selection


def test_curves_page_of_the_demo_probe_lists_each_folds_chosen_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logistic-regression head has no epochs: the page shows the C each fold's inner folds chose instead."""
    at, head_selection = _curves_of_committed_study("0a561e15795f", tmp_path, monkeypatch)
    assert not at.get("plotly_chart") and "no epochs to plot" in texts(at.info)
    shown = at.dataframe[0].value
    assert len(shown) == 3 * 5 and set(shown["C"]) <= set(XRAY_PROBE.head_c)
    for row in shown.to_dict("records"):
        choice = head_selection(row)
        assert choice["C"] == row["C"]
        assert choice["inner_accuracy"][str(float(row["C"]))] == row["inner accuracy"]


def test_curves_page_of_a_study_with_a_recall_floor_shows_each_folds_logit_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The screening protocol's heads: the offset each fold added to COVID-19's logit, and the inner recalls."""
    at, head_selection = _curves_of_committed_study("c0d9f7c09ea3", tmp_path, monkeypatch)
    assert "raised COVID-19's logit until those inner folds found 98% of their COVID-19 images" in texts(at.info)
    for row in at.dataframe[0].value.to_dict("records"):
        floor = head_selection(row)["recall_floor"]
        assert row["COVID-19 logit offset"] == floor["logit_offset"] > 0
        assert row["COVID-19 inner recall, as fitted"] < 0.98 <= row["COVID-19 inner recall, with the offset"]


def test_report_page_renders_the_live_report_with_this_studys_figures(study_root: TinyStudy) -> None:
    at = open_page("pages/report.py")
    live, committed = at.tabs
    report = texts(live.markdown)
    assert "# Reproduction report" in report and "covid19-radiography-paper" in texts(committed.markdown)
    level = artifacts.read_study(study_root.study_id, study_root.root).split_level
    for backbone in TINY_BACKBONES:
        accuracy = [m["accuracy"] for m in run_files(study_root, backbone, "metrics.json")]
        row = f"| ours {backbone} | frozen | {level}-level | {np.mean(accuracy):.3f} ± {np.std(accuracy, ddof=1):.3f} |"
        assert row in report
    assert "has 24 images (COVID-19 8, Normal 8, Viral Pneumonia 8)" in report
    assert "stratified 2-fold" in report and "About this dataset" not in report
