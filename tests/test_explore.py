"""The explorer's read-side tables, checked against the run files of a tiny real study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.evaluation.metrics import fold_metrics
from engine.reports import explore
from engine.results import artifacts, atomic
from tests import app_fixtures
from tests.app_fixtures import TINY_BACKBONES, TINY_EPOCHS, TINY_FOLDS, TinyStudy

tiny_study = app_fixtures.tiny_study

N_IMAGES = 24


def runs(tiny: TinyStudy) -> list[artifacts.RunResult]:
    return artifacts.study_runs(tiny.study_id, tiny.root)


def test_list_studies_counts_finished_runs(tiny_study: TinyStudy) -> None:
    table = explore.list_studies(tiny_study.root)
    assert list(table["study_id"]) == [tiny_study.study_id]
    row = table.iloc[0]
    assert (row["n_folds"], row["backbones"], row["folds_done"], row["n_images"]) == (
        TINY_FOLDS,
        len(TINY_BACKBONES),
        TINY_FOLDS * len(TINY_BACKBONES),
        N_IMAGES,
    )
    assert row["protocol"] == "frozen"


def test_empty_artifacts_folder_gives_empty_tables(tmp_path: Path) -> None:
    assert explore.list_studies(tmp_path).empty
    assert artifacts.changed_key(tmp_path)[0] == 0
    assert artifacts.changed_key(tmp_path, "missing")[0] == 0


HAND_CLASSES = ("COVID-19", "Normal", "Viral Pneumonia")
# Fold 0, worked by hand: rows (true -> predicted) 0->0, 0->1, 1->1, 1->1, 1->2, 2->2 x4, 2->0.
# The last row's largest probability is 0.46: no cell passes the paper's 0.5 threshold.
FOLD0_TRUE = [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
FOLD0_PRED = [0, 1, 1, 1, 2, 2, 2, 2, 2, 0]


def _confident(pred: list[int]) -> np.ndarray:
    proba = np.full((len(pred), 3), 0.05)
    proba[np.arange(len(pred)), pred] = 0.9
    return proba


def write_hand_study(root: Path) -> str:
    """A study on disk whose two folds hold predictions with known answers (no training)."""
    fold0 = _confident(FOLD0_PRED)
    fold0[-1] = [0.46, 0.10, 0.44]
    fold1_true = [0, 1, 1, 2, 2]
    predictions = [(FOLD0_TRUE, fold0), (fold1_true, _confident(fold1_true))]
    study_id = "handmade0001"
    n = sum(len(t) for t, _ in predictions)
    folds = [list(range(10)), list(range(10, n))]
    study = {
        "study_id": study_id,
        "title": "hand-made",
        "created_at": 0.0,
        "dataset": {
            "name": "hand",
            "fingerprint": "f" * 16,
            "source": "hand",
            "classes": list(HAND_CLASSES),
            "counts": {"COVID-19": 3, "Normal": 5, "Viral Pneumonia": 7},
            "n_images": n,
        },
        "protocol": {
            "name": "frozen",
            "description": "hand",
            "stages": [{"epochs": 1, "learning_rate": 0.001, "trainable": "head"}],
            "batch_size": 32,
            "beta_1": 0.9,
            "beta_2": 0.999,
            "augmentation": None,
            "cached_features": True,
            "feature_views": 1,
            "head_l2": 0.0,
        },
        "n_folds": 2,
        "seed": 0,
        "input_size": 32,
        "weights": None,
        "folds": folds,
    }
    atomic.write_json(artifacts.study_dir(study_id, root) / "study.json", study)
    for fold, (y, proba) in enumerate(predictions):
        y = np.asarray(y)
        files = [f"img{i}.png" for i in folds[fold]]
        artifacts.write_run(
            artifacts.run_dir(study_id, "MobileNet", fold, root),
            config={
                "study_id": study_id,
                "backbone": "MobileNet",
                "fold": fold,
                "n_train": n - len(y),
                "n_test": len(y),
                "weights": {"weights": None},
            },
            history={"loss": [1.0], "val_loss": [0.5]},
            metrics=fold_metrics(y, proba, HAND_CLASSES),
            predictions=artifacts.predictions_csv(files, [fold] * len(y), y, proba, HAND_CLASSES),
            status={"seconds": 0.0},
        )
    return study_id


def test_fold_metrics_give_the_hand_computed_figures(tmp_path: Path) -> None:
    study_id = write_hand_study(tmp_path)
    row = explore.fold_metrics(study_id, tmp_path).set_index("fold").loc[0]
    assert row["accuracy"] == pytest.approx(0.7)
    assert row["recall[COVID-19]"] == pytest.approx(1 / 2)
    assert row["recall[Normal]"] == pytest.approx(2 / 3)
    assert row["precision[Viral Pneumonia]"] == pytest.approx(4 / 5)
    assert row["specificity[COVID-19]"] == pytest.approx(7 / 8)
    assert row["macro_recall"] == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    assert row["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    assert row["precision"] == pytest.approx(7 / 9), "paper's pooled precision: 7 TP, 2 FP over 30 cells"
    assert row["recall"] == pytest.approx(7 / 10), "paper's pooled recall: 7 TP, 3 FN"
    assert row["loss"] == pytest.approx(-(7 * np.log(0.9) + 2 * np.log(0.05) + np.log(0.44)) / 10)
    assert (row["n_train"], row["n_test"]) == (5, 10)
    table = explore.comparison_table(study_id, tmp_path).set_index("backbone")
    assert table.loc["MobileNet", "accuracy mean"] == pytest.approx((0.7 + 1.0) / 2)
    assert table.loc["MobileNet", "accuracy std"] == pytest.approx(np.std([0.7, 1.0], ddof=1))


def test_every_backbone_is_scored_on_the_same_disjoint_folds(tiny_study: TinyStudy) -> None:
    study = artifacts.read_study(tiny_study.study_id, tiny_study.root)
    manifest = json.loads((tiny_study.root / "datasets" / study.dataset.fingerprint / "manifest.json").read_text())
    held_out = {}
    for run in runs(tiny_study):
        files = [r["file"] for r in artifacts.read_predictions(run)]
        assert files == [manifest["files"][i] for i in study.folds[run.fold]]
        held_out.setdefault(run.fold, set()).update([(run.backbone, f) for f in files])
    per_fold = [{f for _, f in pairs} for _, pairs in sorted(held_out.items())]
    assert set.isdisjoint(*per_fold) and len(set.union(*per_fold)) == N_IMAGES


def test_best_per_column_takes_lowest_loss_and_highest_accuracy() -> None:
    table = pd.DataFrame({"backbone": ["A", "B", "C"], "accuracy mean": [0.9, 0.95, 0.8], "loss mean": [0.3, 0.4, 0.2]})
    assert explore.best_per_column(table) == {"accuracy mean": "B", "loss mean": "C"}


def test_paper_vs_study_differences_use_the_chosen_definition() -> None:
    ours = pd.DataFrame(
        {
            "backbone": ["MobileNet"],
            "accuracy mean": [0.95],
            "precision mean": [0.97],
            "recall mean": [0.93],
            "f1 mean": [0.95],
            "macro_precision mean": [0.90],
            "macro_recall mean": [0.91],
            "macro_f1 mean": [0.905],
        }
    )
    paper = explore.paper_vs_study(ours, definition="paper").set_index("backbone")
    assert len(paper) == 14
    assert paper.loc["MobileNet", "accuracy paper"] == pytest.approx(0.942)
    assert paper.loc["MobileNet", "accuracy diff"] == pytest.approx(0.95 - 0.942)
    assert paper.loc["MobileNet", "precision diff"] == pytest.approx(0.97 - 0.989)
    assert bool(paper.loc["MobileNet", "in this study"]) and not bool(paper.loc["ResNet50", "in this study"])
    assert np.isnan(paper.loc["ResNet50", "accuracy study"])
    macro = explore.paper_vs_study(ours, definition="per-class").set_index("backbone")
    assert macro.loc["MobileNet", "precision study"] == pytest.approx(0.90)
    assert np.isnan(macro.loc["MobileNet", "f1 diff"]), "a macro F1 minus the paper's pooled F1 is not comparable"
    assert macro.loc["MobileNet", "accuracy diff"] == pytest.approx(0.95 - 0.942)
    with pytest.raises(ValueError, match="definition='macro'"):
        explore.paper_vs_study(ours, definition="macro")


def test_confusion_matrices_per_fold_sum_to_the_total(tiny_study: TinyStudy) -> None:
    backbone = TINY_BACKBONES[0]
    total = explore.confusion_matrix(tiny_study.study_id, backbone, artifacts_root=tiny_study.root)
    folds = [explore.confusion_matrix(tiny_study.study_id, backbone, k, tiny_study.root) for k in range(TINY_FOLDS)]
    assert list(total.index) == list(total.columns) == ["COVID-19", "Normal", "Viral Pneumonia"]
    np.testing.assert_array_equal(total.to_numpy(), sum(f.to_numpy() for f in folds))
    assert total.to_numpy().sum() == N_IMAGES
    np.testing.assert_array_equal(total.sum(axis=1).to_numpy(), [8, 8, 8])
    with pytest.raises(ValueError, match="backbone='VGG16'"):
        explore.confusion_matrix(tiny_study.study_id, "VGG16", artifacts_root=tiny_study.root)


def test_per_class_table_is_one_vs_rest() -> None:
    matrix = pd.DataFrame([[8, 2, 0], [1, 6, 3], [0, 0, 10]], index=["A", "B", "C"], columns=["A", "B", "C"])
    table = explore.per_class_table(matrix).set_index("class")
    assert table.loc["A", "sensitivity"] == pytest.approx(8 / 10)
    assert table.loc["A", "specificity"] == pytest.approx(19 / 20)
    assert table.loc["B", "precision"] == pytest.approx(6 / 8)
    assert table.loc["B", "npv"] == pytest.approx(18 / 22)
    assert table.loc["C", "npv"] == pytest.approx(1.0)
    assert list(table["support"]) == [10, 10, 10]


def test_paper_confusion_matrices_are_the_three_tables() -> None:
    tables = explore.paper_confusion_matrices()
    assert list(tables) == ["DenseNet201 (Table 2)", "ResNet50 (Table 3)", "MobileNet (Table 4)"]
    densenet = tables["DenseNet201 (Table 2)"]
    assert densenet.shape == (3, 3)
    assert list(densenet.loc["COVID-19"]) == [42, 0, 2]


def test_histories_bands_and_best_epoch(tiny_study: TinyStudy) -> None:
    curves = explore.histories(tiny_study.study_id, tiny_study.root)
    assert set(curves["metric"]) == {"accuracy", "loss", "val_accuracy", "val_loss"}
    assert curves["epoch"].min() == 1 and curves["epoch"].max() == TINY_EPOCHS
    for run in runs(tiny_study):
        rows = curves[(curves["backbone"] == run.backbone) & (curves["fold"] == run.fold)]
        stored = rows[rows["metric"] == "val_loss"].sort_values("epoch")["value"].to_numpy()
        np.testing.assert_allclose(stored, run.history["val_loss"])
    bands = explore.history_bands(curves)
    assert set(bands["folds"]) == {TINY_FOLDS}
    best = explore.best_epochs(curves).set_index("backbone")
    for backbone in TINY_BACKBONES:
        per_fold = np.array([r.history["val_loss"] for r in runs(tiny_study) if r.backbone == backbone])
        assert best.loc[backbone, "epoch"] == int(per_fold.mean(axis=0).argmin()) + 1
        assert best.loc[backbone, "val_loss"] == pytest.approx(per_fold.mean(axis=0).min())


def test_provenance_names_dataset_and_weights(tiny_study: TinyStudy) -> None:
    source = explore.provenance(tiny_study.study_id, tiny_study.root)
    assert source.dataset == "tiny-data"
    assert source.class_counts == {"COVID-19": 8, "Normal": 8, "Viral Pneumonia": 8}
    assert (source.n_folds, source.input_size, source.protocol) == (TINY_FOLDS, 32, "frozen")
    assert sorted(source.weights["backbone"]) == sorted(TINY_BACKBONES)
    if tiny_study.weights == "imagenet":
        assert source.weights["file"].str.endswith(".h5").all()
        assert source.weights["sha256"].str.len().eq(16).all()
    else:
        assert source.weights["file"].isna().all()


def test_paired_folds_line_up_the_same_folds(tiny_study: TinyStudy) -> None:
    a, b = TINY_BACKBONES
    paired = explore.paired_folds(tiny_study.study_id, "accuracy", a, b, tiny_study.root)
    assert list(paired["fold"]) == list(range(TINY_FOLDS))
    by_key = {(r.backbone, r.fold): r.metrics["accuracy"] for r in runs(tiny_study)}
    assert list(paired[a]) == [by_key[(a, k)] for k in range(TINY_FOLDS)]
    assert list(paired[b]) == [by_key[(b, k)] for k in range(TINY_FOLDS)]
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        explore.paired_folds(tiny_study.study_id, "auc", a, b, tiny_study.root)


def test_the_changed_key_changes_when_a_run_finishes_or_goes_or_an_audit_is_written(
    tiny_study: TinyStudy, tmp_path: Path
) -> None:
    copy = tmp_path / "artifacts"
    shutil.copytree(tiny_study.root / "studies", copy / "studies")
    before = artifacts.changed_key(copy, tiny_study.study_id)
    runs = TINY_FOLDS * len(TINY_BACKBONES)
    status = artifacts.run_dir(tiny_study.study_id, TINY_BACKBONES[0], 0, copy) / "status.json"
    saved = json.loads(status.read_text())
    status.unlink()
    assert artifacts.changed_key(copy, tiny_study.study_id)[0] == before[0] - 1
    assert explore.list_studies(copy).iloc[0]["folds_done"] == runs - 1
    status.write_text(json.dumps(saved))
    restored = artifacts.changed_key(copy, tiny_study.study_id)
    assert restored[0] == before[0] and explore.list_studies(copy).iloc[0]["folds_done"] == runs
    audit = artifacts.study_dir(tiny_study.study_id, copy) / "audit" / "baseline.json"
    audit.parent.mkdir()
    audit.write_text("{}")
    assert artifacts.changed_key(copy, tiny_study.study_id) != restored, "a page would not see a new audit"
    assert artifacts.changed_key(copy) != artifacts.changed_key(copy, "missing")
