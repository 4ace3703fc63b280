"""A study's pooled out-of-fold predictions, their cached summary, and robustness, on the tiny real study."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.cli.main import main
from engine.evaluation import bootstrap, predictions, robustness, summary
from engine.evaluation.metrics import flat_metrics, fold_metrics
from engine.results import artifacts
from tests import app_fixtures
from tests.app_fixtures import TINY_BACKBONES, TINY_FOLDS, TinyStudy

tiny_study = app_fixtures.tiny_study


@pytest.fixture
def copy(tiny_study: TinyStudy, tmp_path: Path) -> TinyStudy:
    """The tiny study in a folder of its own without the summaries it was built with, for tests that write
    caches into it."""
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_study.root, root)
    shutil.rmtree(artifacts.study_dir(tiny_study.study_id, root) / "evaluation")
    return TinyStudy(root=root, study_id=tiny_study.study_id, data=tiny_study.data, weights=tiny_study.weights)


def rows_of(tiny: TinyStudy, backbone: str) -> list[dict[str, str]]:
    rows = []
    for fold in range(TINY_FOLDS):
        path = tiny.root / "studies" / tiny.study_id / "runs" / backbone / f"fold-{fold}" / "predictions.csv"
        with open(path, newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def test_out_of_fold_pools_every_image_once_from_the_prediction_files(tiny_study: TinyStudy) -> None:
    backbone = TINY_BACKBONES[0]
    oof = predictions.out_of_fold(tiny_study.study_id, backbone, tiny_study.root)
    rows = rows_of(tiny_study, backbone)
    assert oof.files == [r["file"] for r in rows] and len(set(oof.files)) == 24
    assert oof.folds.tolist() == [int(r["fold"]) for r in rows]
    assert oof.proba[:, 0].tolist() == pytest.approx([float(r["p[COVID-19]"]) for r in rows])
    assert [oof.classes[k] for k in oof.y_true] == [r["true"] for r in rows]


def test_the_ensemble_is_the_mean_of_the_backbones_probabilities(tiny_study: TinyStudy) -> None:
    assert predictions.model_names(tiny_study.study_id, tiny_study.root) == [*sorted(TINY_BACKBONES), "ensemble"]
    ensemble = predictions.study_out_of_fold(tiny_study.study_id, "ensemble", tiny_study.root)
    a, b = (rows_of(tiny_study, name) for name in TINY_BACKBONES)
    expected = [(float(x["p[Normal]"]) + float(y["p[Normal]"])) / 2 for x, y in zip(a, b, strict=True)]
    assert ensemble.proba[:, 1].tolist() == pytest.approx(expected)
    assert ensemble.members == tuple(sorted(TINY_BACKBONES))
    first = ensemble.fold_figures()[0]
    rows = ensemble.folds == 0
    assert first == flat_metrics(fold_metrics(ensemble.y_true[rows], ensemble.proba[rows], ensemble.classes))


def test_the_summary_is_computed_once_and_kept_until_a_prediction_changes(copy: TinyStudy, monkeypatch) -> None:
    backbone = TINY_BACKBONES[1]
    oof = predictions.out_of_fold(copy.study_id, backbone, copy.root)
    first = summary.model_summary(oof, copy.root)
    pooled = flat_metrics(fold_metrics(oof.y_true, oof.proba, oof.classes))
    assert first["metrics"]["accuracy"]["estimate"] == pytest.approx(pooled["accuracy"])
    assert first["metrics"]["macro_f1"]["low"] <= pooled["macro_f1"] <= first["metrics"]["macro_f1"]["high"]
    assert first["intervals"]["n_resamples"] == 2000 and "stratified bootstrap" in first["intervals"]["description"]
    assert set(first["calibration"]["temperatures"]) == {"0", "1"}
    folder = artifacts.study_dir(copy.study_id, copy.root) / "evaluation"
    (saved,) = folder.glob(f"{backbone}-*.json")

    def refuse(*args, **kwargs):
        raise AssertionError("the bootstrap ran again for the same predictions")

    monkeypatch.setattr(summary, "bootstrap_confusion_metrics", refuse)
    assert summary.model_summary(oof, copy.root) == first
    monkeypatch.undo()
    path = artifacts.run_dir(copy.study_id, backbone, 0, copy.root) / "predictions.csv"
    path.write_text(path.read_text().replace("0.", "0.0", 1))
    changed = predictions.out_of_fold(copy.study_id, backbone, copy.root)
    summary.model_summary(changed, copy.root)
    assert [p.name for p in folder.glob(f"{backbone}-*.json")] != [saved.name]
    assert len(list(folder.glob(f"{backbone}-*.json"))) == 1


def test_a_summary_of_one_fold_keeps_the_whole_studys_and_another_models_with_a_longer_name(copy: TinyStudy) -> None:
    """A fold's model card summarises that fold alone; it must not drop the study's summary (the demo's committed
    files), nor ``MobileNet-0.25``'s when the model is ``MobileNet``."""
    backbone = TINY_BACKBONES[1]
    folder = artifacts.study_dir(copy.study_id, copy.root) / "evaluation"
    whole = summary.model_summary(predictions.out_of_fold(copy.study_id, backbone, copy.root), copy.root)
    longer = folder / f"{backbone}-0.25-0123456789ab.json"
    longer.write_text(json.dumps({"folds": [0, 1]}))
    one = summary.model_summary(predictions.out_of_fold(copy.study_id, backbone, copy.root, folds=[0]), copy.root)
    assert (whole["folds"], one["folds"]) == ([0, 1], [0])
    before = set(folder.glob(f"{backbone}-*.json"))
    assert len(before) == 3
    path = artifacts.run_dir(copy.study_id, backbone, 0, copy.root) / "predictions.csv"
    path.write_text(path.read_text().replace("0.", "0.0", 1))
    summary.model_summary(predictions.out_of_fold(copy.study_id, backbone, copy.root), copy.root)
    mine = [p for p in folder.glob(f"{backbone}-*.json") if p != longer]
    assert [json.loads(p.read_text())["folds"] for p in mine] == [[0, 1]], "the new whole summary replaces both"
    assert mine[0] not in before and longer.exists()


def test_a_paired_difference_of_a_model_with_itself_is_zero(tiny_study: TinyStudy) -> None:
    a = predictions.out_of_fold(tiny_study.study_id, TINY_BACKBONES[0], tiny_study.root)
    found = summary.paired_difference(a, a, metric="accuracy")
    assert (found["estimate"], found["low"], found["high"]) == (0.0, 0.0, 0.0)
    assert found["n_images"] == 24 and found["n_resamples"] == bootstrap.MIN_RESAMPLES


def test_shifts_do_what_their_names_say() -> None:
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))[None]
    brighter = robustness.shifted(ramp, robustness.SHIFTS_BY_NAME["brightness"], 15.0)
    assert np.array_equal(brighter, np.clip(ramp.astype(int) + 15, 0, 255))
    darker = robustness.shifted(ramp, robustness.SHIFTS_BY_NAME["gamma"], 2.0)
    assert darker[0, 0, 16] == round(255 * (128 / 255) ** 2)
    wider = robustness.shifted(ramp, robustness.SHIFTS_BY_NAME["contrast"], 1.4)
    assert wider.std() > ramp.std() and abs(float(wider.mean()) - float(ramp.mean())) < 3
    for name in ("blur", "jpeg", "resolution", "noise"):
        out = robustness.shifted(ramp, robustness.SHIFTS_BY_NAME[name], robustness.SHIFTS_BY_NAME[name].parameters[1])
        assert out.shape == ramp.shape and out.dtype == np.uint8 and not np.array_equal(out, ramp)
    assert [len(s.parameters) for s in robustness.SHIFTS] == [3] * 7


def test_robustness_counts_each_fold_models_held_out_images(copy: TinyStudy, capsys) -> None:
    backbone = TINY_BACKBONES[0]
    assert (
        main(["robustness", "--study", copy.study_id, "--backbone", backbone, "--artifacts", str(copy.root), "--json"])
        == 0
    )
    table = json.loads(capsys.readouterr().out)["table"]
    assert len(table) == 1 + 7 * 3
    unshifted = table[0]
    runs = [r for r in artifacts.study_runs(copy.study_id, copy.root) if r.backbone == backbone]
    correct = sum(np.trace(np.asarray(r.metrics["confusion_matrix"])) for r in runs)
    assert (unshifted["setting"], unshifted["n_images"]) == ("none", 24)
    assert unshifted["accuracy"] == pytest.approx(correct / 24)
    assert all(row["n_images"] == 24 and row["folds"] == TINY_FOLDS for row in table)
    assert {row["strength"] for row in table[1:]} == set(robustness.STRENGTHS)
    saved = list((artifacts.study_dir(copy.study_id, copy.root) / "robustness" / backbone).glob("fold-*.json"))
    assert len(saved) == TINY_FOLDS


def test_intervals_cli_prints_json_with_the_method(tiny_study: TinyStudy, capsys, monkeypatch, tmp_path) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_study.root, root)
    assert (
        main(["intervals", "--study", tiny_study.study_id, "--model", "ensemble", "--artifacts", str(root), "--json"])
        == 0
    )
    found = json.loads(capsys.readouterr().out)
    assert found["model"] == "ensemble" and found["n_images"] == 24
    assert {"accuracy", "roc_auc", "recall[COVID-19]", "average_precision[Normal]"} <= set(found["metrics"])
    assert main(["intervals", "--study", tiny_study.study_id, "--model", "VGG16", "--artifacts", str(root)]) == 2
    assert "model must be one of" in capsys.readouterr().err
