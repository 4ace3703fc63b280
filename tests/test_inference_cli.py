"""Classify, Grad-CAM, external evaluation, the report and the CLI, on a tiny real study."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from engine.cli.main import main
from engine.data.classes import canonical_class
from engine.data.images import decode_xray
from engine.evaluation.external import mistakes
from engine.evaluation.predictions import backbones_of
from engine.models.catalog import list_models
from engine.models.export import export_runs, study_models
from engine.models.inference import load_classifier
from engine.reports.reproduction import reproduction_report
from engine.results import artifacts, atomic
from engine.training.presets import get_protocol
from engine.training.runner import run_study
from engine.training.study import StudyRequest
from tests import app_fixtures
from tests.app_fixtures import TinyStudy
from tests.conftest import HAS_SHARED_WEIGHTS
from tests.synthetic import make_dataset, make_image

WEIGHTS = "imagenet" if HAS_SHARED_WEIGHTS else None
"""Real ImageNet features where the shared weights are (always in CI): a model that learns the tiny classes,
so a figure computed on the wrong labels cannot equal the right one by chance."""
REQUEST = StudyRequest(protocol=get_protocol("frozen").replace(epochs=10), n_folds=2, weights=WEIGHTS)
tiny_study = app_fixtures.tiny_study
pytestmark = pytest.mark.usefixtures("eager_tensorflow")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A finished 2-fold frozen study of MobileNet-0.25 on 32-px synthetic images."""
    base = tmp_path_factory.mktemp("study")
    data = make_dataset(base / "data", n_per_class=8)
    root = base / "artifacts"
    study = run_study(data, backbones=["MobileNet-0.25"], request=REQUEST, input_size=32, artifacts_root=root)
    return root, study, data


@pytest.fixture
def env(tiny, monkeypatch):
    root, study, data = tiny
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    monkeypatch.delenv("CXR_READ_ONLY", raising=False)
    return root, study, data


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode=mode).save(out, format="PNG")
    return out.getvalue()


def best_fold(root):
    """The best single fold model (the list starts with the fold ensemble)."""
    return next(m for m in list_models(root) if not m.is_ensemble)


@pytest.mark.slow
def test_list_models_puts_the_fold_ensemble_first_then_folds_best_first(env):
    root, study, _ = env
    ensemble, *folds = list_models(root)
    assert ensemble.is_ensemble and ensemble.folds == (0, 1) and "ensemble of 2 fold models" in ensemble.label
    runs = artifacts.study_runs(study.study_id, root)
    correct = sum(r.metrics["accuracy"] * r.config["n_test"] for r in runs)
    assert ensemble.accuracy == pytest.approx(correct / sum(r.config["n_test"] for r in runs))
    assert [m.fold for m in folds] != [] and len(folds) == 2 and folds[0].accuracy >= folds[1].accuracy
    assert folds[0].classes == ("COVID-19", "Normal", "Viral Pneumonia")
    assert folds[0].input_size == 32 and "MobileNet-0.25" in folds[0].label
    images = np.stack([make_image(k, 32, np.random.default_rng(k)) for k in range(3)])
    together, _ = load_classifier(ensemble.path, artifacts_root=root).predict_arrays(images)
    each = [load_classifier(m.path, artifacts_root=root).predict_arrays(images)[0] for m in folds]
    np.testing.assert_allclose(together, np.mean(each, axis=0), atol=1e-6)


@pytest.mark.slow
def test_classify_a_batch_with_heatmaps_and_clean_errors(env):
    root, _, _ = env
    classifier = load_classifier(best_fold(root).path, artifacts_root=root)
    rng = np.random.default_rng(5)
    items = [
        ("covid.png", _png(make_image(0, 256, rng))),
        ("renamed.png", b"%PDF-1.4 not an image"),
        ("tiny.png", _png(make_image(1, 40, rng))),
        ("colour.png", _png(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))),
    ]
    results = classifier.classify(items)
    assert [r.name for r in results] == [name for name, _ in items]
    good = results[0]
    raw = keras_model(best_fold(root).path)
    decoded = decode_xray(items[0][1], size=32).pixels
    expected = raw.predict_on_batch(decoded[None, ..., None].astype("float32"))[0]
    assert [good.probabilities[c] for c in classifier.classes] == pytest.approx(expected.tolist(), abs=1e-6)
    assert good.predicted == classifier.classes[int(np.argmax(expected))]
    assert good.heatmap.shape == (32, 32) and good.heatmap.min() >= 0.0 and good.heatmap.max() <= 1.0
    assert results[1].error and "not a PNG, JPEG or DICOM" in results[1].error and results[1].probabilities == {}
    assert any("very small" in w for w in results[2].warnings)
    assert any("colour" in w for w in results[3].warnings)


def test_closed_form_grad_cam_equals_autodiff_grad_cam(env):
    import keras
    import tensorflow as tf

    root, _, _ = env
    info = best_fold(root)
    classifier = load_classifier(info.path, artifacts_root=root)
    images = np.stack([make_image(k, 32, np.random.default_rng(k)) for k in range(3)])
    proba, heatmaps = classifier.predict_arrays(images)
    model = keras.saving.load_model(info.path, compile=False)
    np.testing.assert_allclose(proba, model.predict_on_batch(images[..., None].astype("float32")), atol=1e-6)
    kernel, bias = model.get_layer("head").get_weights()
    x = tf.constant(images[..., None].astype("float32"))
    fmap = model.get_layer("backbone")(model.get_layer("preprocess")(x), training=False)
    with tf.GradientTape() as tape:
        tape.watch(fmap)
        logits = tf.matmul(tf.reduce_mean(fmap, axis=(1, 2)), kernel) + bias
        chosen = tf.gather(logits, np.argmax(proba, axis=1), axis=1, batch_dims=1)
    grads = tape.gradient(chosen, fmap).numpy()
    alphas = grads.mean(axis=(1, 2))
    for i in range(3):
        cam = np.maximum(np.einsum("hwk,k->hw", fmap[i].numpy(), alphas[i]), 0)
        cam = cam / cam.max() if cam.max() > 0 else cam
        up = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((32, 32), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(heatmaps[i], np.clip(up, 0, 1), atol=1e-4)


def test_models_load_only_from_the_artifacts_folder(env, tmp_path):
    root, _, _ = env
    model = best_fold(root).path
    outside = tmp_path / "model.keras"
    shutil.copy(model, outside)
    with pytest.raises(ValueError, match="inside"):
        load_classifier(outside, artifacts_root=root)
    with pytest.raises(ValueError, match="inside"):
        load_classifier(model.with_name("config.json"), artifacts_root=root)


def keras_model(path):
    """The saved Keras model itself, to check the engine's figures against its own predictions."""
    import keras

    return keras.saving.load_model(path, compile=False)


def predicted_by_hand(model_path, folder, classes) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) class indices of every PNG under ``folder``, from the raw Keras model."""
    model = keras_model(model_path)
    truth, images = [], []
    for png in sorted(folder.rglob("*.png")):
        truth.append(classes.index(canonical_class(png.parent.name)))
        images.append(decode_xray(png.read_bytes(), size=32).pixels)
    proba = model.predict_on_batch(np.stack(images)[..., None].astype("float32"))
    return np.array(truth), np.argmax(proba, axis=1)


def test_evaluate_an_unseen_folder_gives_the_models_own_accuracy(env, tmp_path, capsys):
    root, _, _ = env
    data = make_dataset(tmp_path / "unseen", n_per_class=5, seed=9)
    model = best_fold(root).path
    assert main(["evaluate", "--data", str(data), "--model", str(model), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    truth, predicted = predicted_by_hand(model, data, list(result["model"]["classes"]))
    assert result["accuracy"] == pytest.approx(float(np.mean(truth == predicted)))
    if WEIGHTS:
        assert len(set(predicted.tolist())) > 1, "the tiny model must not call every image one class"
    for k, name in enumerate(result["model"]["classes"]):
        assert result["recall"][name] == pytest.approx(float(np.mean(predicted[truth == k] == k)))
    assert result["data"]["counts"] == {"COVID-19": 5, "Normal": 5, "Viral Pneumonia": 5}
    assert result["data"]["overlap_with_study"]["identical"] == 0
    assert len(list((root / "evaluations").glob("*.json"))) >= 1


def test_evaluate_a_folder_with_only_some_classes(env, tmp_path, capsys):
    data = make_dataset(tmp_path / "unseen", n_per_class=5, seed=9, classes=("covid19",))
    assert main(["evaluate", "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes_present"] == ["COVID-19"]
    assert result["data"]["counts"] == {"COVID-19": 5}
    assert sum(result["metrics"]["confusion_matrix"][0]) == 5


@pytest.fixture(scope="module")
def two_backbones(tiny_study: TinyStudy, tmp_path_factory):
    """A copy of the session's tiny study of two backbones (2 folds, 32 px): it has an ensemble row."""
    root = tmp_path_factory.mktemp("two") / "artifacts"
    shutil.copytree(tiny_study.root, root)
    assert backbones_of(tiny_study.study_id, root) == ["MobileNet-0.25", "MobileNetV2-0.35"]
    return root, tiny_study.study_id


@pytest.mark.slow
def test_evaluate_a_studys_ensemble_of_backbones_is_the_mean_of_every_fold_model(two_backbones, tmp_path, capsys):
    root, study_id = two_backbones
    data = make_dataset(tmp_path / "unseen", n_per_class=5, seed=9)
    argv = ["evaluate", "--data", str(data), "--study", study_id, "--artifacts", str(root), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["backbones"] == ["MobileNet-0.25", "MobileNetV2-0.35"]
    assert result["model"]["folds"] == [0, 1]
    classes = list(result["model"]["classes"])
    images = np.stack([decode_xray((data / f).read_bytes(), size=32).pixels for f in result["predictions"]["files"]])[
        ..., None
    ].astype("float32")
    by_hand = np.mean(
        [keras_model(run.model_path).predict_on_batch(images) for run in artifacts.study_runs(study_id, root)], axis=0
    )
    assert np.abs(np.asarray(result["predictions"]["probabilities"]) - by_hand).max() < 1e-4
    truth = [classes.index(canonical_class(f.split("/")[0])) for f in result["predictions"]["files"]]
    assert result["predictions"]["true"] == truth
    assert result["accuracy"] == pytest.approx(float(np.mean(by_hand.argmax(1) == truth)))
    wrong = mistakes(result)
    assert len(wrong) == int(np.sum(by_hand.argmax(1) != truth))
    assert [w["p(predicted)"] for w in wrong] == sorted((w["p(predicted)"] for w in wrong), reverse=True)
    assert all(w["true"] != w["predicted"] for w in wrong)
    members = [atomic.read_json(root / "evaluations" / f"{key}.json") for key in result["model"]["members"]]
    assert [m["model"]["backbone"] for m in members] == result["model"]["backbones"]
    assert main(argv) == 0, "asked again, the saved evaluation is read"
    assert json.loads(capsys.readouterr().out)["evaluated_at"] == result["evaluated_at"]
    assert main(argv[:-1]) == 0
    assert "model: ensemble of MobileNet-0.25, MobileNetV2-0.35 (folds 0, 1 of each)" in capsys.readouterr().out
    runs = str(root / "studies" / study_id / "runs")  # the same ensemble by its path: the same saved evaluation
    assert main(["evaluate", "--data", str(data), "--model", runs, "--artifacts", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["key"] == result["key"]
    export_runs(study_models(study_id, "MobileNet-0.25", root), format="onnx", artifacts_root=root)
    assert main(argv) == 0, "one member now served by its export: evaluated again, not the saved file"
    served = json.loads(capsys.readouterr().out)
    assert served["key"] != result["key"] and served["model"]["served_by"][0].endswith(".onnx")
    assert served["model"]["members"][1] == result["model"]["members"][1] != served["model"]["members"][0]
    assert np.abs(np.asarray(served["predictions"]["probabilities"]) - by_hand).max() < 1e-4


def test_a_study_of_one_backbone_has_no_ensemble_to_evaluate(env, tmp_path, capsys):
    root, study, _ = env
    data = make_dataset(tmp_path / "unseen", n_per_class=2, seed=9)
    assert main(["evaluate", "--data", str(data), "--study", study.study_id]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: study {study.study_id}: an ensemble of backbones needs two or more, the study has 1 (MobileNet-0.25)"
    )


def copy_study_images(data, target, *, n: int, brighten: int = 0) -> list[str]:
    """``n`` COVID images of the study's own data into ``target/COVID``, re-saved ``brighten`` levels brighter."""
    folder = target / "COVID"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for src in sorted((data / "COVID").glob("*.png"))[:n]:
        pixels = np.asarray(Image.open(src), dtype=np.int16) + brighten
        name = f"{'bright' if brighten else 'copy'}-{src.name}"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name)
        names.append(f"COVID/{name}")
    return names


def test_an_external_set_of_the_studys_own_images_is_refused(env, tmp_path, capsys):
    _, _, data = env
    fake = tmp_path / "fake-external"
    copy_study_images(data, fake, n=3)
    copy_study_images(data, fake, n=2, brighten=6)
    before = sorted(p.name for p in (env[0] / "evaluations").glob("*.json"))
    assert main(["evaluate", "--data", str(fake)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "error: fake-external: all 5 images are images of the model's study (3 identical, 2 near-duplicates); "
        "an external check needs images no fold has seen"
    )
    assert sorted(p.name for p in (env[0] / "evaluations").glob("*.json")) == before


@pytest.mark.slow
def test_study_images_in_an_external_set_are_left_out_and_counted(env, tmp_path, capsys):
    _, _, data = env
    mixed = make_dataset(tmp_path / "mixed", n_per_class=4, seed=11)
    copied = copy_study_images(data, mixed, n=2) + copy_study_images(data, mixed, n=1, brighten=6)
    (mixed / "NORMAL" / "report.png").write_bytes(b"%PDF-1.4 not an image")
    assert main(["evaluate", "--data", str(mixed), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    seen = result["data"]["overlap_with_study"]
    assert (seen["checked"], seen["identical"], seen["near_duplicates"]) == (15, 2, 1)
    assert sorted(seen["left_out"]) == sorted(copied)
    assert result["data"]["counts"] == {"COVID-19": 4, "Normal": 4, "Viral Pneumonia": 4}
    assert [item["file"] for item in result["data"]["skipped"]] == ["NORMAL/report.png"]
    assert main(["evaluate", "--data", str(mixed)]) == 0
    out = capsys.readouterr().out
    assert "2 identical and 1 near-duplicate image(s) of 15 left out" in out
    assert "\n  skipped NORMAL/report.png: " in out


@pytest.mark.slow
def test_classify_cli_prints_probabilities_and_fails_cleanly(env, tmp_path, capsys):
    good = tmp_path / "x ray 1.png"
    good.write_bytes(_png(make_image(2, 64, np.random.default_rng(1))))
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    code = main(["classify", str(good), str(bad), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 2
    assert rows[0]["error"] is None and set(rows[0]["probabilities"]) == {"COVID-19", "Normal", "Viral Pneumonia"}
    assert rows[1]["error"].endswith("empty file")


def test_summary_json_has_per_class_recall(env, capsys):
    root, study, _ = env
    assert main(["summary", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = [r for r in doc["studies"] if r["study_id"] == study.study_id]
    assert row["folds_done"] == 2
    for key in ("accuracy", "precision", "recall", "f1", "recall[COVID-19]", "recall[Normal]"):
        assert 0.0 <= row["metrics"][key]["mean"] <= 1.0
        assert row["metrics"][key]["std"] >= 0.0
    assert row["metrics"]["loss"]["mean"] > 0.0


def test_report_is_deterministic(env, tmp_path):
    root, _, _ = env
    first = reproduction_report(root)
    assert "Table 1" in first and "| **paper** MobileNet |" in first
    assert "ours MobileNet-0.25" in first
    assert reproduction_report(root) == first
    assert main(["report", "--out", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.md").read_text() == first


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["study", "--data", "/no/such/folder", "--arch", "MobileNet"], "no such folder"),
        (["study", "--data", ".", "--arch", "ResNet999"], "unknown backbone 'ResNet999'"),
        (["classify", "x.png", "--model", "/tmp/elsewhere.keras"], "model must be a model file or run folder inside"),
        (["evaluate", "--data", ".", "--study", "nope"], "unknown study 'nope'; studies here: "),
        (["evaluate", "--data", ".", "--study", "s", "--model", "m"], "give --model or --study, not both"),
    ],
)
def test_bad_arguments_give_one_line_errors(env, argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_every_command_has_help(capsys):
    for command in ("study", "summary", "evaluate", "classify", "report"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_incomplete_run_model_is_not_loaded(env):
    root, study, _ = env
    path = artifacts.run_dir(study.study_id, "MobileNet-0.25", 0, root)
    status = (path / "status.json").read_bytes()
    (path / "status.json").unlink()
    try:
        with pytest.raises(ValueError, match="not a finished run"):
            load_classifier(path / "model.keras", artifacts_root=root)
    finally:
        (path / "status.json").write_bytes(status)


@pytest.mark.slow
def test_the_ood_command_fits_each_fold_and_the_ensemble_the_app_serves(tiny, tmp_path, capsys, monkeypatch):
    """The fold ensemble is the model a user gets by default: it gets its own detector, named by its members."""
    root, study, data = tiny
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy)
    monkeypatch.setenv("CXR_ARTIFACTS", str(copy))
    folder = artifacts.study_dir(study.study_id, copy) / "runs" / "MobileNet-0.25"
    for fold in (0, 1):
        (folder / f"fold-{fold}" / "ood.npz").unlink()
    assert load_classifier(folder, artifacts_root=copy).ood is None
    before = artifacts.changed_key(copy)
    argv = ["ood", "--study", study.study_id, "--backbone", "MobileNet-0.25", "--artifacts", str(copy)]
    assert main([*argv, "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "fold 0: wrote" in out and "fold 1: wrote" in out and "ensemble: wrote" in out
    assert (folder / "ood-folds-0-1.npz").is_file()
    assert artifacts.changed_key(copy) != before, "an app's cached model would never see the new detector"
    served = load_classifier(folder, artifacts_root=copy)
    (result,) = served.classify([("x.png", _png(make_image(0, 32, np.random.default_rng(3))))])
    assert result.ood_score is not None
    assert main(argv) == 0
    assert "ensemble: ood-folds-0-1.npz already there" in capsys.readouterr().out
