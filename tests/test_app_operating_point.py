"""The Operating point and Failure analysis pages through AppTest, and engine/reports/failures.py.

Every figure checked here is computed again in the test from the run files (predictions.csv), the
dataset cache (manifest.json, images-<size>.npy) or the saved model, never through the function the
page used.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import engine.reports.failures
from engine.data.datasets import DatasetError
from engine.evaluation.predictions import OutOfFold
from engine.models.inference import load_classifier
from engine.reports import failures
from tests import app_fixtures
from tests.app_fixtures import TINY_BACKBONES, TinyStudy, open_page, texts

PROJECT = Path(__file__).resolve().parent.parent
DEMO = "9da277b73bda"
DEMO_PAPER = "0c18372e7d3f"
DEMO_BACKBONES = ("MobileNet", "MobileNet-0.25", "MobileNetV2-0.35")
DEMO_FINGERPRINT = "c7b66733c80b559a"
Z95 = 1.959963984540054
tiny_study = app_fixtures.tiny_study
served_navigation = app_fixtures.served_navigation
pytestmark = pytest.mark.usefixtures("served_navigation")


def rows_of(root: Path, study_id: str, backbone: str) -> list[dict[str, str]]:
    """Every fold's predictions.csv of ``backbone``, read straight from disk, in fold order."""
    rows = []
    for path in sorted((root / "studies" / study_id / "runs" / backbone).glob("fold-*/predictions.csv")):
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def wilson(successes: int, trials: int) -> tuple[float, float]:
    centre = (successes + Z95**2 / 2) / (trials + Z95**2)
    half = Z95 * math.sqrt(successes * (trials - successes) / trials + Z95**2 / 4) / (trials + Z95**2)
    return centre - half, centre + half


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed demo studies (results and saved models, no images) in a folder of their own."""
    root = tmp_path_factory.mktemp("demo") / "artifacts"
    shutil.copytree(PROJECT / "artifacts" / "studies", root / "studies")
    return root


@pytest.fixture
def demo_root(demo_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CXR_ARTIFACTS", str(demo_copy))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return demo_copy


@pytest.fixture
def study_root(tiny_study: TinyStudy, monkeypatch: pytest.MonkeyPatch) -> TinyStudy:
    monkeypatch.setenv("CXR_ARTIFACTS", str(tiny_study.root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return tiny_study


# engine/reports/failures.py


def hand_made(proba: list[list[float]], truth: list[int], folds: list[int]) -> OutOfFold:
    return OutOfFold(
        study_id="s",
        model="m",
        members=("m",),
        classes=("A", "B", "C"),
        files=[f"{'ABC'[t]}/{i}.png" for i, t in enumerate(truth)],
        folds=np.asarray(folds),
        y_true=np.asarray(truth),
        proba=np.asarray(proba, dtype=float),
        digest="x",
    )


def test_mistakes_are_the_wrong_images_most_confident_first_with_their_pairs() -> None:
    oof = hand_made(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]],
        truth=[0, 0, 1, 2, 1, 1],
        folds=[0, 0, 1, 1, 2, 2],
    )
    table = failures.mistakes(oof)
    assert list(table["row"]) == [5, 1, 2, 3, 4]
    assert list(table["confidence"]) == [0.8, 0.7, 0.6, 0.6, 0.4]
    assert list(table["true"]) == ["B", "A", "B", "C", "B"]
    assert list(table["predicted"]) == ["C", "B", "C", "A", "C"]
    assert list(table["fold"]) == [2, 0, 1, 1, 2]
    assert list(table.columns) == ["row", "file", "fold", "true", "predicted", "p[A]", "p[B]", "p[C]", "confidence"]
    pairs = failures.pair_counts(oof).set_index("pair")
    assert pairs.loc["B → C", "mistakes"] == 3 and pairs.loc["B → C", "images of the true class"] == 3
    assert pairs.loc["B → C", "share of the true class"] == pytest.approx(1.0)
    assert pairs.loc["A → B", "share of the true class"] == pytest.approx(0.5)
    assert list(pairs.index) == ["B → C", "A → B", "C → A"]

    right = hand_made([[0.9, 0.05, 0.05]], truth=[0], folds=[0])
    assert failures.mistakes(right).empty and failures.pair_counts(right).empty


def test_overlay_is_grey_without_a_map_and_jet_coloured_with_one() -> None:
    image = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    grey = failures.overlay(image, None)
    assert grey.shape == (2, 2, 3) and (grey == image[..., None]).all()
    assert failures.jet(np.array([0.0, 0.5, 1.0])).tolist() == [[0.0, 0.0, 0.5], [0.5, 1.0, 0.5], [0.5, 0.0, 0.0]]
    hot = failures.overlay(np.zeros((2, 2), np.uint8), np.ones((2, 2)), alpha=1.0)
    assert hot[0, 0].tolist() == [128, 0, 0]
    half = failures.overlay(np.full((1, 1), 255, np.uint8), np.zeros((1, 1)), alpha=0.5)
    assert half[0, 0].tolist() == [128, 128, 191]


def test_known_dataset_note_comes_from_the_reference_file() -> None:
    known = json.loads((PROJECT / "engine" / "reference" / "datasets.json").read_text())["known_datasets"]
    assert failures.known_dataset_note(DEMO_FINGERPRINT) == known[DEMO_FINGERPRINT]["note"]
    assert "children" in failures.known_dataset_note(DEMO_FINGERPRINT)
    assert failures.known_dataset_note("0000000000000000") is None


def test_images_of_maps_files_to_dataset_rows_or_says_what_is_missing(tiny_study: TinyStudy, tmp_path: Path) -> None:
    source = failures.study_images(tiny_study.study_id, tiny_study.root)
    folder = tiny_study.root / "datasets" / source.fingerprint
    manifest = json.loads((folder / "manifest.json").read_text())
    cached = np.load(folder / f"images-{source.input_size}.npy")
    files = [manifest["files"][5], manifest["files"][0], manifest["files"][17]]
    images = failures.images_of(source, files, tiny_study.root)
    assert images.shape == (3, source.input_size, source.input_size)
    assert (images == cached[[5, 0, 17]]).all()

    with pytest.raises(DatasetError, match="not in dataset"):
        failures.images_of(source, ["Normal/not-there.png"], tiny_study.root)
    with pytest.raises(DatasetError) as missing:
        failures.images_of(source, files, tmp_path)
    assert str(missing.value) == (
        f"the images of dataset {source.name} ({source.fingerprint}) are not on this machine: "
        "import the dataset to see thumbnails"
    )


# Both pages on an empty artifacts folder


@pytest.mark.parametrize("page", ["pages/operating_point.py", "pages/failures.py"])
def test_pages_explain_what_to_do_on_an_empty_folder(artifacts_root: Path, page: str) -> None:
    at = open_page(page)
    assert "No study with finished runs" in texts(at.info)
    assert not at.dataframe


# Operating point


def covid_scores(root: Path, study_id: str, backbone: str, class_name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = rows_of(root, study_id, backbone)
    return np.array([r["true"] == class_name for r in rows]), np.array([float(r[f"p[{class_name}]"]) for r in rows])


def expected_point(positive: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    called = score >= threshold
    tp, fp = int((called & positive).sum()), int((called & ~positive).sum())
    fn, tn = int((~called & positive).sum()), int((~called & ~positive).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp)}


def check_figures(at: AppTest, expected: dict, prevalence: float) -> None:
    figures = at.dataframe[0].value.set_index("measure")
    tp, fp, fn, tn = expected["tp"], expected["fp"], expected["fn"], expected["tn"]
    for label, (hits, total) in {
        "sensitivity (recall)": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "PPV (precision)": (tp, tp + fp),
        "NPV": (tn, tn + fn),
    }.items():
        assert figures.loc[label, "in this sample"] == pytest.approx(hits / total)
        low, high = wilson(hits, total)
        assert figures.loc[label, "95% low"] == pytest.approx(low)
        assert figures.loc[label, "95% high"] == pytest.approx(high)
        assert figures.loc[label, "from"] == f"{hits:,} / {total:,}"
    sens, spec = expected["sensitivity"], expected["specificity"]
    ppv = sens * prevalence / (sens * prevalence + (1 - spec) * (1 - prevalence))
    npv = spec * (1 - prevalence) / (spec * (1 - prevalence) + (1 - sens) * prevalence)
    assert figures.loc["PPV (precision)", "at the chosen prevalence"] == pytest.approx(ppv)
    assert figures.loc["NPV", "at the chosen prevalence"] == pytest.approx(npv)
    counts = at.dataframe[1].value
    assert counts.iloc[:, 1].tolist() == [tp, fp] and counts.iloc[:, 2].tolist() == [fn, tn]


@pytest.mark.slow
def test_operating_point_of_the_demo_at_a_target_sensitivity_and_a_dragged_threshold(demo_root: Path) -> None:
    at = open_page("pages/operating_point.py", query={"study": DEMO})
    assert at.selectbox(key="choose-model").value == DEMO_BACKBONES[0]
    assert at.selectbox(key="choose-class").value == "COVID-19"
    assert at.radio(key="op-mode").value == "sensitivity"
    positive, score = covid_scores(demo_root, DEMO, DEMO_BACKBONES[0], "COVID-19")
    sample = positive.mean()
    assert at.number_input(key="op-prevalence-COVID-19").value == pytest.approx(100 * sample), "the sample's own"
    assert f"{len(score):,} images ({positive.sum():,} COVID-19" in texts(at.caption)
    # The highest threshold with sensitivity >= 0.95: the k-th highest COVID-19 score, k = ceil(0.95 * positives).
    k = math.ceil(0.95 * positive.sum())
    threshold = np.sort(score[positive])[::-1][k - 1]
    check_figures(at, expected_point(positive, score, threshold), sample)
    figures = at.dataframe[0].value.set_index("measure")
    for measure in ("PPV (precision)", "NPV"):  # at the sample's own prevalence, Bayes' rule gives the sample's
        assert figures.loc[measure, "at the chosen prevalence"] == pytest.approx(figures.loc[measure, "in this sample"])
    assert {m.label: m.value for m in at.metric}["Threshold"] == f"{threshold:.4g}"
    assert "optimistic" in texts(at.info) and "external data" in texts(at.info)
    assert len(at.get("plotly_chart")) == 1

    at.number_input(key="op-prevalence-COVID-19").set_value(1.0).run()
    check_figures(at, expected_point(positive, score, threshold), 0.01)
    at.radio(key="op-mode").set_value("threshold").run()
    assert at.slider(key="op-threshold").value == pytest.approx(threshold), "the point is kept when the mode changes"
    at.slider(key="op-threshold").set_value(0.5).run()
    assert not at.exception, [e.value for e in at.exception]
    check_figures(at, expected_point(positive, score, 0.5), 0.01)
    query = dict(at.query_params)
    assert query["mode"] == "threshold" and float(query["threshold"]) == 0.5 and "target" not in query
    assert float(query["prevalence"]) == 1.0 and query["class"] == "COVID-19"

    shared = open_page("pages/operating_point.py", query=query)
    assert shared.radio(key="op-mode").value == "threshold"
    assert shared.slider(key="op-threshold").value == pytest.approx(0.5)
    assert shared.number_input(key="op-prevalence-COVID-19").value == pytest.approx(1.0)
    assert shared.dataframe[0].value.equals(at.dataframe[0].value)


def test_a_shared_link_opens_its_point_and_an_unreachable_target_shows_the_nearest(demo_root: Path) -> None:
    query = {"study": DEMO_PAPER, "model": "MobileNetV2-0.35", "class": "Normal", "mode": "specificity", "target": "1"}
    at = open_page("pages/operating_point.py", query=query)
    assert at.selectbox(key="choose-model").value == "MobileNetV2-0.35"
    assert at.selectbox(key="choose-class").value == "Normal"
    assert at.slider(key="op-target-specificity").value == pytest.approx(1.0)
    positive, score = covid_scores(demo_root, DEMO_PAPER, "MobileNetV2-0.35", "Normal")
    highest = score.max()
    best = expected_point(positive, score, highest)
    assert best["specificity"] < 1.0, "negatives hold this class's highest score"
    warning = texts(at.warning)
    assert "No threshold reaches a specificity of 100.0%" in warning
    assert f"specificity is {best['specificity']:.2%}" in warning
    check_figures(at, best, positive.mean())

    at.selectbox(key="choose-class").set_value("COVID-19").run()
    assert not at.warning
    assert at.number_input(key="op-prevalence-COVID-19").value == pytest.approx(
        100 * covid_scores(demo_root, DEMO_PAPER, "MobileNetV2-0.35", "COVID-19")[0].mean()
    ), "a new class starts at its own prevalence"


def test_operating_point_of_the_tiny_ensemble_is_the_mean_of_its_members(study_root: TinyStudy) -> None:
    at = open_page(
        "pages/operating_point.py",
        query={"study": study_root.study_id, "model": "ensemble", "class": "Viral Pneumonia", "mode": "threshold"},
    )
    members = [rows_of(study_root.root, study_root.study_id, b) for b in TINY_BACKBONES]
    assert [r["file"] for r in members[0]] == [r["file"] for r in members[1]]
    positive = np.array([r["true"] == "Viral Pneumonia" for r in members[0]])
    score = np.mean([[float(r["p[Viral Pneumonia]"]) for r in rows] for rows in members], axis=0)
    assert at.slider(key="op-threshold").value == pytest.approx(0.5)
    threshold = float(np.median(score))
    at.slider(key="op-threshold").set_value(threshold).run()
    assert not at.exception, [e.value for e in at.exception]
    check_figures(at, expected_point(positive, score, threshold), positive.mean())


# Failure analysis


def expected_mistakes(rows: list[dict[str, str]], classes: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(file, true, predicted) of every wrong row, from the probabilities' arg max."""
    found = []
    for row in rows:
        called = classes[int(np.argmax([float(row[f"p[{c}]"]) for c in classes]))]
        if called != row["true"]:
            found.append((row["file"], row["true"], called))
    return found


def test_failures_of_the_demo_ensemble_without_images_still_show_the_table(demo_root: Path) -> None:
    at = open_page("pages/failures.py", query={"study": DEMO, "model": "ensemble"})
    classes = ("COVID-19", "Normal", "Viral Pneumonia")
    members = [rows_of(demo_root, DEMO, b) for b in DEMO_BACKBONES]
    mean = [
        {"file": rows[0]["file"], "true": rows[0]["true"]}
        | {f"p[{c}]": str(np.mean([float(r[f"p[{c}]"]) for r in rows])) for c in classes}
        for rows in zip(*members, strict=True)
    ]
    expected = expected_mistakes(mean, classes)
    table = at.dataframe[1].value
    assert sorted(zip(table["file"], table["true"], table["predicted"], strict=True)) == sorted(expected)
    assert table["confidence"].is_monotonic_decreasing
    pairs = at.dataframe[0].value
    assert {(t, p): n for t, p, n in zip(pairs["true"], pairs["predicted"], pairs["mistakes"], strict=True)} == dict(
        Counter((t, p) for _, t, p in expected)
    )
    info = texts(at.info)
    assert (
        "the images of dataset covid19-radiography-paper (c7b66733c80b559a) are not on this machine: "
        "import the dataset to see thumbnails"
    ) in info
    assert "where the heat map points" in info and "children" in info
    assert not at.image

    top = Counter((t, p) for _, t, p in expected).most_common(1)[0][0]
    pair = f"{top[0]} → {top[1]}"
    at.selectbox(key="choose-pair").set_value(pair).run()
    at.selectbox(key="choose-fold").set_value(2).run()
    filtered = at.dataframe[1].value
    wanted = {f for f, t, p in expected if (t, p) == top} & {r["file"] for r in members[0] if r["fold"] == "2"}
    assert set(filtered["file"]) == wanted and (filtered["fold"] == 2).all()
    assert at.query_params["pair"] == pair and at.query_params["fold"] == "2"


def test_without_a_fold_model_the_heat_map_toggle_is_off_and_says_why(
    tiny_study: TinyStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_study.root, root)
    backbone, other = TINY_BACKBONES
    for model in root.glob(f"studies/*/runs/{backbone}/fold-*/model.keras"):
        model.unlink()
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    at = open_page("pages/failures.py", query={"study": tiny_study.study_id, "model": backbone})
    toggle = at.toggle[0]
    assert toggle.value is False and toggle.proto.disabled
    assert f"No fold model of {backbone} is in this copy" in toggle.proto.help
    at = open_page("pages/failures.py", query={"study": tiny_study.study_id, "model": other})
    assert at.toggle[0].value is True and not at.toggle[0].proto.disabled, "its own fold models are here"


def test_failures_say_which_fold_models_are_saved(demo_root: Path) -> None:
    at = open_page("pages/failures.py", query={"study": DEMO, "model": "MobileNet"})
    runs = demo_root / "studies" / DEMO / "runs" / "MobileNet"
    saved = sorted(int(p.parent.name.split("-")[1]) for p in runs.glob("fold-*/model.keras"))
    missing = sorted(set(range(5)) - set(saved))
    assert saved == [3] and missing == [0, 1, 2, 4]
    assert "MobileNet: the model of fold 3 is saved, the models of folds 0, 1, 2 and 4 were not saved" in texts(
        at.caption
    )
    assert at.selectbox(key="choose-fold").options[1:] == [
        "fold 0",
        "fold 1",
        "fold 2",
        "fold 3 (model saved)",
        "fold 4",
    ]
    rows = rows_of(demo_root, DEMO, "MobileNet")
    expected = expected_mistakes(rows, ("COVID-19", "Normal", "Viral Pneumonia"))
    assert len(at.dataframe[1].value) == len(expected)


@pytest.mark.slow
def test_failures_of_the_tiny_study_show_thumbnails_and_the_fold_models_heat_maps(
    study_root: TinyStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[tuple[np.ndarray, np.ndarray | None]] = []
    overlay = engine.reports.failures.overlay

    def recorded(image, heatmap, **kwargs):
        shown.append((np.array(image), None if heatmap is None else np.array(heatmap)))
        return overlay(image, heatmap, **kwargs)

    monkeypatch.setattr(engine.reports.failures, "overlay", recorded)
    backbone = TINY_BACKBONES[0]
    at = open_page("pages/failures.py", query={"study": study_root.study_id, "model": backbone})
    rows = rows_of(study_root.root, study_root.study_id, backbone)
    classes = ("COVID-19", "Normal", "Viral Pneumonia")
    expected = expected_mistakes(rows, classes)
    assert expected, "the tiny study makes mistakes"
    table = at.dataframe[1].value
    assert sorted(table["file"]) == sorted(f for f, _, _ in expected)
    grid = min(12, len(expected))
    assert len(at.image) == grid + 2, "the grid, then the chosen image and its heat map"

    source = failures.study_images(study_root.study_id, study_root.root)
    folder = study_root.root / "datasets" / source.fingerprint
    manifest = json.loads((folder / "manifest.json").read_text())
    cached = np.load(folder / f"images-{source.input_size}.npy")
    picked = table.iloc[0]
    image = cached[manifest["files"].index(picked["file"])]
    model_path = study_root.root / "studies" / study_root.study_id / "runs" / backbone / f"fold-{picked['fold']}"
    proba, maps = load_classifier(model_path / "model.keras", artifacts_root=study_root.root).predict_arrays(
        image[None]
    )
    plain, closer = shown[-2], shown[-1]
    assert (plain[0] == image).all() and plain[1] is None
    assert (closer[0] == image).all() and np.allclose(closer[1], maps[0], atol=1e-4)
    assert all(heatmap is not None for _, heatmap in shown[:grid]), "every fold model of the tiny study is saved"
    called = classes[int(proba[0].argmax())]
    assert f"(for {called}, {proba[0].max():.1%} now)" in "\n".join(at.image[-1].captions)
    assert at.selectbox(key="choose-image").value == picked["file"]


def test_a_shared_failure_link_opens_its_image_with_every_members_heat_map(study_root: TinyStudy) -> None:
    rows = rows_of(study_root.root, study_root.study_id, TINY_BACKBONES[0])
    members = [rows, rows_of(study_root.root, study_root.study_id, TINY_BACKBONES[1])]
    classes = ("COVID-19", "Normal", "Viral Pneumonia")
    mean = [
        {"file": a["file"], "true": a["true"], "fold": a["fold"]}
        | {f"p[{c}]": str((float(a[f"p[{c}]"]) + float(b[f"p[{c}]"])) / 2) for c in classes}
        for a, b in zip(*members, strict=True)
    ]
    expected = expected_mistakes(mean, classes)
    file, true, predicted = expected[-1]
    fold = next(r["fold"] for r in mean if r["file"] == file)
    query = {
        "study": study_root.study_id,
        "model": "ensemble",
        "pair": f"{true} → {predicted}",
        "fold": fold,
        "image": file,
    }
    at = open_page("pages/failures.py", query=query)
    assert at.selectbox(key="choose-model").value == "ensemble"
    assert at.selectbox(key="choose-pair").value == query["pair"]
    assert at.selectbox(key="choose-fold").value == int(fold)
    assert at.selectbox(key="choose-image").value == file
    table = at.dataframe[1].value
    assert (table["true"] == true).all() and (table["predicted"] == predicted).all()
    assert (table["fold"] == int(fold)).all()
    captions = "\n".join(c for element in at.image for c in element.captions)
    for backbone in TINY_BACKBONES:
        assert f"Grad-CAM of {backbone} fold {fold}" in captions
    assert "The ensemble has no heat map of its own" in texts(at.caption)
