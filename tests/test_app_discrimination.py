"""The ROC / precision-recall and Calibration pages, and the tables they draw (``engine.reports.roc_calibration``).

Figures on the pages are checked against the run files read straight from disk and scored with
scikit-learn, numpy or scipy directly, never through the engine function that drew them.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from streamlit.testing.v1 import AppTest

from engine.evaluation.predictions import OutOfFold
from engine.reports import roc_calibration
from tests import app_fixtures
from tests.app_fixtures import TINY_BACKBONES, TINY_FOLDS, TinyStudy, open_page, texts

PROJECT = Path(__file__).resolve().parent.parent
DISCRIMINATION, CALIBRATION = "pages/discrimination.py", "pages/calibration.py"
DEMO_STUDY = "9da277b73bda"
DEMO_BACKBONES = ("MobileNet", "MobileNet-0.25", "MobileNetV2-0.35")
CLASSES = ("COVID-19", "Normal", "Viral Pneumonia")
tiny_study = app_fixtures.tiny_study
served_navigation = app_fixtures.served_navigation


def rows_of(root: Path, study_id: str, backbone: str) -> list[dict]:
    """Every fold's ``predictions.csv`` of ``backbone``, read from disk, each row with its fold."""
    rows = []
    for path in sorted((root / "studies" / study_id / "runs" / backbone).glob("fold-*/predictions.csv")):
        with open(path, newline="") as fh:
            rows += [{**row, "fold": int(path.parent.name.removeprefix("fold-"))} for row in csv.DictReader(fh)]
    return rows


def arrays(rows: list[dict], classes=CLASSES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true class index, probabilities (n, C), fold) of prediction rows."""
    truth = np.array([classes.index(r["true"]) for r in rows])
    proba = np.array([[float(r[f"p[{c}]"]) for c in classes] for r in rows])
    return truth, proba, np.array([r["fold"] for r in rows])


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def values(array) -> np.ndarray:
    """A plotly trace's x or y: a list, or a typed array (``{"dtype", "bdata"}``) as plotly 6+ writes it."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
    return np.asarray(array, dtype=float)


def trace(spec: dict, prefix: str) -> dict:
    (found,) = [t for t in spec["data"] if str(t.get("name", "")).startswith(prefix)]
    return found


def copy_artifacts(source: Path, target: Path, *, studies: tuple[str, ...] | None = None) -> Path:
    """The studies of ``source`` (without saved models) in ``target``: the pages write summary caches."""
    for folder in sorted((source / "studies").iterdir()):
        if studies is None or folder.name in studies:
            shutil.copytree(folder, target / "studies" / folder.name, ignore=shutil.ignore_patterns("*.keras"))
    return target


@pytest.fixture
def tiny_copy(tiny_study: TinyStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinyStudy:
    root = copy_artifacts(tiny_study.root, tmp_path / "artifacts")
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return TinyStudy(root=root, study_id=tiny_study.study_id, data=tiny_study.data, weights=tiny_study.weights)


def synthetic_oof(*, n_per_fold: int = 30, n_folds: int = 3, seed: int = 0) -> OutOfFold:
    """Predictions with some signal; the last fold has no image of the last class."""
    rng = np.random.default_rng(seed)
    truth, folds = [], []
    for fold in range(n_folds):
        present = len(CLASSES) - (1 if fold == n_folds - 1 else 0)
        truth += list(rng.integers(0, present, n_per_fold))
        folds += [fold] * n_per_fold
    truth = np.array(truth)
    logits = rng.normal(0, 1.0, (len(truth), len(CLASSES))) + 2.0 * np.eye(len(CLASSES))[truth]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return OutOfFold(
        study_id="synthetic",
        model="m",
        members=("m",),
        classes=CLASSES,
        files=[f"f{i}.png" for i in range(len(truth))],
        folds=np.array(folds, dtype=np.int64),
        y_true=truth.astype(np.int64),
        proba=proba,
        digest="synthetic",
    )


def subset(oof: OutOfFold, rows: np.ndarray) -> OutOfFold:
    return OutOfFold(
        study_id=oof.study_id,
        model=oof.model,
        members=oof.members,
        classes=oof.classes,
        files=[oof.files[i] for i in np.flatnonzero(rows)],
        folds=oof.folds[rows],
        y_true=oof.y_true[rows],
        proba=oof.proba[rows],
        digest=oof.digest,
    )


# engine.reports.roc_calibration on its own


def test_curve_tables_match_sklearn_and_name_a_class_missing_from_a_fold() -> None:
    oof = synthetic_oof()
    view = roc_calibration.discrimination_view(oof)
    roc = view.roc_areas.set_index(["class", "curve"])["area"]
    pr = view.pr_areas.set_index(["class", "curve"])["area"]
    for k, name in enumerate(CLASSES):
        positive = oof.y_true == k
        assert roc[(name, roc_calibration.POOLED)] == pytest.approx(roc_auc_score(positive, oof.proba[:, k]))
        assert pr[(name, roc_calibration.POOLED)] == pytest.approx(average_precision_score(positive, oof.proba[:, k]))
        for fold in range(2):
            rows = oof.folds == fold
            assert roc[(name, f"fold {fold}")] == pytest.approx(roc_auc_score(positive[rows], oof.proba[rows, k]))
    assert view.missing.to_dict("records") == [
        {"class": "Viral Pneumonia", "curve": "fold 2", "reason": "no image of this class"}
    ]
    assert ("Viral Pneumonia", "fold 2") not in roc.index
    pooled = view.roc[(view.roc["class"] == "COVID-19") & (view.roc["curve"] == roc_calibration.POOLED)]
    fpr, tpr, _ = roc_curve(oof.y_true == 0, oof.proba[:, 0])
    assert pooled["fpr"].tolist() == pytest.approx(fpr.tolist()) and pooled["sensitivity"].tolist() == pytest.approx(
        tpr.tolist()
    )
    assert pooled["threshold_text"].iloc[0].startswith("none")

    points = view.pr[(view.pr["class"] == "Normal") & (view.pr["curve"] == roc_calibration.POOLED)].dropna(
        subset="threshold"
    )
    positive, score = oof.y_true == 1, oof.proba[:, 1]
    for _, point in points.iterrows():
        called = score >= point["threshold"]
        assert point["threshold_text"] == f"≥ {point['threshold']:.6g}"
        assert point["precision"] == pytest.approx(positive[called].mean())
        assert point["sensitivity"] == pytest.approx(called[positive].mean())
        assert point["specificity"] == pytest.approx(1 - called[~positive].mean())


def test_reliability_bins_count_every_probability_once() -> None:
    oof = synthetic_oof()
    view = roc_calibration.calibration_view(oof)
    top = view.raw.bins[view.raw.bins["label"] == "top label"]
    confidence = oof.proba.max(axis=1)
    correct = oof.proba.argmax(axis=1) == oof.y_true
    counts, edges = np.histogram(confidence, bins=10, range=(0, 1))
    assert top["count"].tolist() == counts.tolist()
    assert top["lower"].tolist() == pytest.approx(edges[:-1].tolist())
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, 9)
    observed = [correct[which == b].mean() if counts[b] else math.nan for b in range(10)]
    assert top["observed_frequency"].tolist() == pytest.approx(observed, nan_ok=True)
    assert top["gap"].tolist() == pytest.approx(
        (top["observed_frequency"] - top["mean_predicted"]).tolist(), nan_ok=True
    )
    ece = sum(
        counts[b] * abs(correct[which == b].mean() - confidence[which == b].mean()) for b in range(10) if counts[b]
    )
    figures = view.raw.figures.set_index("label")
    assert figures.loc["top label", "ece"] == pytest.approx(ece / len(oof))
    assert view.raw.brier == pytest.approx(np.mean(np.sum((oof.proba - np.eye(3)[oof.y_true]) ** 2, axis=1)))
    assert set(view.temperatures) == {0, 1, 2} and view.scaled is not None

    quantile = roc_calibration.calibration_view(oof, strategy="quantile").raw.bins
    per_class = quantile[quantile["label"] == "COVID-19"]["count"]
    assert per_class.sum() == len(oof) and per_class.max() - per_class.min() <= 2

    single = roc_calibration.calibration_view(subset(oof, oof.folds == 0))
    assert single.scaled is None and single.temperatures is None


def test_summary_tables_read_the_cached_figures() -> None:
    def interval(estimate: float) -> dict:
        return {"estimate": estimate, "low": estimate - 0.01, "high": estimate + 0.01}

    figures = {"ece_top_label": 0.05, "ece": dict(zip(CLASSES, (0.01, 0.02, 0.03), strict=True)), "brier": 0.2}
    found = {
        "folds": [0, 1, 2],
        "n_images": 90,
        "metrics": {
            **{f"roc_auc[{c}]": interval(0.9 - i / 10) for i, c in enumerate(CLASSES)},
            "roc_auc": interval(0.8),
            "average_precision[COVID-19]": {"estimate": None, "low": None, "high": None},
        },
        "calibration": {
            "before": figures,
            "after": {**figures, "ece_top_label": 0.02, "brier": 0.18},
            "temperatures": {"0": 1.5, "1": 0.8, "2": 1.2},
        },
    }
    table = roc_calibration.interval_table(found, CLASSES, "roc_auc").set_index("class")
    assert table.loc["Normal", "estimate"] == pytest.approx(0.8) and table.loc["Normal", "low"] == pytest.approx(0.79)
    assert math.isnan(roc_calibration.interval_table(found, CLASSES, "average_precision").loc[0, "estimate"])
    ranking = roc_calibration.model_comparison({"a": found, "b": {**found, "folds": [0]}}, CLASSES, "roc_auc")
    assert ranking["folds"].tolist() == [3, 1] and ranking.loc[0, "mean high"] == pytest.approx(0.81)
    calibration = roc_calibration.calibration_figures(found, CLASSES).set_index("measure")
    assert calibration.loc["ECE (top label)", "change"] == pytest.approx(-0.03)
    assert calibration.loc["ECE (Viral Pneumonia)", "before"] == pytest.approx(0.03)
    one_fold = {**found, "calibration": {"before": figures, "after": None, "temperatures": None}}
    assert roc_calibration.calibration_figures(one_fold, CLASSES)["after"].isna().all()
    temperatures = roc_calibration.temperature_table(found)
    assert temperatures["fitted on folds"].tolist() == ["1, 2", "0, 2", "0, 1"]
    assert temperatures["effect"].str.startswith("softens").tolist() == [True, False, True]
    assert roc_calibration.temperature_table(one_fold).empty


# the pages


@pytest.mark.usefixtures("served_navigation")
@pytest.mark.parametrize("page", [DISCRIMINATION, CALIBRATION])
def test_the_pages_explain_what_to_do_on_an_empty_folder(artifacts_root: Path, page: str) -> None:
    at = open_page(page)
    assert "No study with finished runs" in texts(at.info)
    assert not at.get("plotly_chart")


@pytest.mark.usefixtures("served_navigation")
def test_roc_page_shows_the_curves_and_aucs_of_the_prediction_files(tiny_copy: TinyStudy) -> None:
    backbone = TINY_BACKBONES[1]
    at = open_page(DISCRIMINATION, query={"study": tiny_copy.study_id, "model": backbone, "class": "Normal"})
    assert at.selectbox(key="choose-model").value == backbone
    assert at.selectbox(key="choose-class").value == "Normal"
    rows = rows_of(tiny_copy.root, tiny_copy.study_id, backbone)
    truth, proba, folds = arrays(rows)

    aucs = at.dataframe[0].value.set_index("class")
    assert list(aucs.index) == list(CLASSES)
    for k, name in enumerate(CLASSES):
        assert aucs.loc[name, "AUC"] == pytest.approx(roc_auc_score(truth == k, proba[:, k]))
        assert aucs.loc[name, "low"] <= aucs.loc[name, "AUC"] <= aucs.loc[name, "high"]
    ap = at.dataframe[1].value.set_index("class")
    assert ap.loc["Normal", "AP"] == pytest.approx(average_precision_score(truth == 1, proba[:, 1]))
    assert ap.loc["COVID-19", "prevalence"] == pytest.approx(np.mean(truth == 0))

    roc, pr = charts(at)
    pooled = trace(roc, "pooled")
    fpr, tpr, _ = roc_curve(truth == 1, proba[:, 1])
    assert values(pooled["x"]).tolist() == pytest.approx(fpr.tolist())
    assert values(pooled["y"]).tolist() == pytest.approx(tpr.tolist())
    for fold in range(TINY_FOLDS):
        rows_k = folds == fold
        assert trace(roc, f"fold {fold}")["name"].endswith(
            f"AUC {roc_auc_score(truth[rows_k] == 1, proba[rows_k, 1]):.3f}"
        )
    assert "precision" in trace(pr, "pooled")["hovertemplate"]
    assert "stratified bootstrap" in texts(at.caption)

    table = at.dataframe[2].value.set_index("model")
    assert sorted(table.index) == sorted([*TINY_BACKBONES, "ensemble"])
    other = arrays(rows_of(tiny_copy.root, tiny_copy.study_id, TINY_BACKBONES[0]))[1]
    mean = (proba + other) / 2
    assert table.loc["ensemble", "AUC Normal"].startswith(f"{roc_auc_score(truth == 1, mean[:, 1]):.4f} (")

    at.selectbox(key="choose-class").set_value("COVID-19").run()
    at.toggle[0].set_value(True).run()
    assert not at.exception
    assert (at.query_params["class"], at.query_params["zoom"]) == ("COVID-19", "on")
    assert "COVID-19 against the rest" in texts(at.subheader)
    fpr, tpr, _ = roc_curve(truth == 0, proba[:, 0])
    assert values(trace(charts(at)[0], "pooled")["y"]).tolist() == pytest.approx(tpr.tolist())


@pytest.mark.usefixtures("served_navigation")
def test_a_class_missing_from_a_fold_is_said_in_a_note(tiny_copy: TinyStudy) -> None:
    for backbone in TINY_BACKBONES:
        path = tiny_copy.root / "studies" / tiny_copy.study_id / "runs" / backbone / "fold-1" / "predictions.csv"
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r["true"] != "Viral Pneumonia")
    at = open_page(DISCRIMINATION, query={"study": tiny_copy.study_id, "class": "Viral Pneumonia"})
    assert "No curve for Viral Pneumonia in fold 1 (no image of this class)" in texts(at.info)
    roc = charts(at)[0]
    assert [t["name"].split(" · ")[0] for t in roc["data"][1:]] == ["fold 0", "pooled"]


def fitted_temperature(proba: np.ndarray, truth: np.ndarray) -> float:
    """Maximum-likelihood temperature of log-probabilities, fitted here with scipy on its own."""
    logits = np.log(np.clip(proba, 1e-7, 1.0))

    def nll(log_t: float) -> float:
        return -np.mean(log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(truth)), truth])

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


@pytest.mark.usefixtures("served_navigation")
def test_calibration_page_bins_eces_and_cross_fitted_temperatures(tiny_copy: TinyStudy) -> None:
    backbone = TINY_BACKBONES[0]
    at = open_page(CALIBRATION, query={"study": tiny_copy.study_id, "model": backbone})
    truth, proba, folds = arrays(rows_of(tiny_copy.root, tiny_copy.study_id, backbone))
    confidence, correct = proba.max(axis=1), proba.argmax(axis=1) == truth
    counts, edges = np.histogram(confidence, bins=10, range=(0, 1))
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, 9)

    assert at.toggle[0].value is False and at.selectbox(key="choose-bins").value == "uniform"
    top = at.dataframe[0].value
    assert top["images"].tolist() == counts.tolist()
    assert top["observed"].tolist() == [
        f"{correct[which == b].mean():.3f}" if counts[b] else "—" for b in range(len(counts))
    ]
    ece = sum(
        counts[b] * abs(correct[which == b].mean() - confidence[which == b].mean()) for b in range(10) if counts[b]
    )
    brier = np.mean(np.sum((proba - np.eye(3)[truth]) ** 2, axis=1))
    figures = at.dataframe[2].value.set_index("measure")
    assert list(figures.columns) == ["as predicted"]
    assert figures.loc["ECE (top label)", "as predicted"] == pytest.approx(ece / len(truth))
    assert figures.loc["Brier score", "as predicted"] == pytest.approx(brier)
    assert len(charts(at)) == 1 + len(CLASSES)
    assert "is not a 100 % chance" in texts(at.info)

    at.toggle[0].set_value(True).run()
    assert not at.exception and at.query_params["temperature"] == "on"
    assert "other folds only" in texts(at.info)
    temperatures = at.dataframe[3].value.set_index("fold")["temperature"]
    for fold in range(TINY_FOLDS):
        others = folds != fold
        assert temperatures[fold] == pytest.approx(fitted_temperature(proba[others], truth[others]), rel=1e-3)
    after = at.dataframe[2].value.set_index("measure")
    assert {"as predicted", "after temperature scaling", "change"} <= set(after.columns)
    names = [t["name"] for t in charts(at)[0]["data"]]
    assert "as predicted" in names and "after temperature scaling" in names

    at.selectbox(key="choose-bins").set_value("quantile").run()
    assert not at.exception and at.query_params["bins"] == "quantile"
    assert at.dataframe[0].value["images"].sum() == len(truth)
    assert at.dataframe[2].value.set_index("measure").loc["Brier score", "as predicted"] == pytest.approx(brier)

    shared = open_page(CALIBRATION, query={"study": tiny_copy.study_id, "temperature": "on", "bins": "quantile"})
    assert shared.toggle[0].value is True and shared.selectbox(key="choose-bins").value == "quantile"


@pytest.mark.slow
@pytest.mark.usefixtures("served_navigation")
def test_demo_study_pages_match_its_prediction_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_artifacts(PROJECT / "artifacts", tmp_path / "artifacts", studies=(DEMO_STUDY,))
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    members = [arrays(rows_of(root, DEMO_STUDY, b)) for b in DEMO_BACKBONES]
    truth = members[0][0]
    mean = np.mean([proba for _, proba, _ in members], axis=0)

    at = open_page(DISCRIMINATION, query={"study": DEMO_STUDY, "model": "ensemble"})
    at.run()
    assert not at.exception
    assert at.dataframe[0].value.set_index("class").loc["COVID-19", "AUC"] == pytest.approx(
        roc_auc_score(truth == 0, mean[:, 0])
    )
    assert "5 folds, 2,897 images" in texts(at.caption)

    at = open_page(CALIBRATION, query={"study": DEMO_STUDY, "model": "MobileNet", "temperature": "on"})
    truth, proba, _ = members[0]
    figures = at.dataframe[2].value.set_index("measure")
    assert figures.loc["Brier score", "as predicted"] == pytest.approx(
        np.mean(np.sum((proba - np.eye(3)[truth]) ** 2, axis=1))
    )
    assert figures.loc["Brier score", "after temperature scaling"] < figures.loc["Brier score", "as predicted"]
    assert len(at.dataframe[3].value) == 5
