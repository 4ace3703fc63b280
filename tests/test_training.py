"""Both protocols end to end on tiny images, caching, repeatability and atomic runs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from engine import settings
from engine.data.datasets import import_dataset
from engine.results import artifacts
from engine.settings import ReadOnlyError
from engine.training import compiled_models, fitting
from engine.training.fold import train_fold
from engine.training.plan import plan_fold
from engine.training.presets import get_protocol
from engine.training.protocols import Protocol, Stage
from engine.training.runner import run_study
from engine.training.study import StudyRequest, prepare_study, study_id_for, summarize
from tests.synthetic import make_dataset

pytestmark = pytest.mark.usefixtures("eager_tensorflow")

TINY_PAPER = StudyRequest(protocol=get_protocol("paper").replace(epochs=1), n_folds=2, weights=None)
TINY_FROZEN = StudyRequest(protocol=get_protocol("frozen").replace(epochs=30), n_folds=2, weights=None)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny", n_per_class=8)


@pytest.fixture(scope="module")
def paper_study(tiny_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    study = run_study(tiny_root, backbones=["MobileNet-0.25"], request=TINY_PAPER, input_size=32, artifacts_root=root)
    return root, study


@pytest.mark.slow
def test_paper_protocol_runs_end_to_end(paper_study):
    root, study = paper_study
    runs = artifacts.study_runs(study.study_id, root)
    assert [(r.backbone, r.fold) for r in runs] == [("MobileNet-0.25", 0), ("MobileNet-0.25", 1)]
    for run in runs:
        assert set(run.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert len(run.history["loss"]) == 1
        assert run.config["protocol"]["name"] == "paper"
        assert run.config["n_test"] == 12 and run.config["n_train"] == 12
        assert 0.0 <= run.metrics["accuracy"] <= 1.0
        assert np.isfinite(run.metrics["loss"])
        assert run.model_path is not None
        rows = artifacts.read_predictions(run)
        assert len(rows) == 12
        probs = np.array([[float(r[k]) for k in r if k.startswith("p[")] for r in rows])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_folds_are_shared_disjoint_and_cover_the_dataset(paper_study, tiny_root, tmp_path):
    root, study = paper_study
    folds = [set(f) for f in study.folds]
    assert folds[0].isdisjoint(folds[1]) and sorted(folds[0] | folds[1]) == list(range(24))
    dataset = import_dataset(tiny_root, input_size=32, artifacts_root=root)
    for fold in folds:
        assert np.bincount(dataset.labels[sorted(fold)], minlength=3).tolist() == [4, 4, 4], "stratified"
    for run in artifacts.study_runs(study.study_id, root):
        files = [r["file"] for r in artifacts.read_predictions(run)]
        assert files == [dataset.files[i] for i in study.folds[run.fold]], "each run is scored on its own fold"
    other = import_dataset(tiny_root, input_size=32, artifacts_root=tmp_path)
    frozen = prepare_study(other, TINY_FROZEN, artifacts_root=tmp_path)
    assert frozen.study_id != study.study_id and frozen.folds == study.folds, "same seed, same folds"


def test_second_run_trains_nothing(paper_study, tiny_root, monkeypatch):
    root, study = paper_study
    before = {p: p.stat().st_mtime_ns for p in (root / "studies").rglob("*") if p.is_file()}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("engine.training.fold.classifier", refuse)
    again = run_study(tiny_root, backbones=["MobileNet-0.25"], request=TINY_PAPER, input_size=32, artifacts_root=root)
    assert again.study_id == study.study_id
    after = {p: p.stat().st_mtime_ns for p in (root / "studies").rglob("*") if p.is_file()}
    assert after == before


def test_summary_has_mean_and_std_of_every_metric(paper_study):
    root, study = paper_study
    (row,) = [r for r in summarize(root) if r["study_id"] == study.study_id]
    assert row["folds_done"] == 2 and row["backbone"] == "MobileNet-0.25"
    for key in ("accuracy", "loss", "precision", "recall", "f1", "recall[COVID-19]", "macro_f1"):
        assert set(row["metrics"][key]) == {"mean", "std"}
    runs = artifacts.study_runs(study.study_id, root)
    assert row["metrics"]["accuracy"]["mean"] == pytest.approx(np.mean([r.metrics["accuracy"] for r in runs]))


@pytest.mark.slow
def test_killed_mid_write_run_is_not_listed_and_is_retrained(paper_study, tiny_root):
    root, study = paper_study
    run_path = artifacts.run_dir(study.study_id, "MobileNet-0.25", 1, root)
    saved = run_path.parent / "saved-fold-1"
    shutil.copytree(run_path, saved)
    (run_path / "status.json").unlink()
    (run_path / "metrics.json").write_text('{"accuracy": 0.9')
    assert artifacts.read_run(run_path) is None
    assert [r.fold for r in artifacts.study_runs(study.study_id, root)] == [0]
    dataset = import_dataset(tiny_root, input_size=32, artifacts_root=root)
    rerun = train_fold(dataset=dataset, study=study, backbone="MobileNet-0.25", fold=1, artifacts_root=root)
    assert rerun.fold == 1 and artifacts.is_complete(run_path)
    assert json.loads((run_path / "metrics.json").read_text())["accuracy"] == rerun.metrics["accuracy"]
    shutil.rmtree(saved)


@pytest.mark.slow
def test_same_config_gives_the_same_predictions(paper_study, tiny_root, tmp_path):
    root, study = paper_study
    other = tmp_path / "again"
    dataset = import_dataset(tiny_root, input_size=32, artifacts_root=other)
    twin = prepare_study(dataset, TINY_PAPER, artifacts_root=other)
    assert twin.study_id == study.study_id and twin.folds == study.folds
    run = train_fold(dataset=dataset, study=twin, backbone="MobileNet-0.25", fold=0, artifacts_root=other)
    first = artifacts.read_run(artifacts.run_dir(study.study_id, "MobileNet-0.25", 0, root))
    a = [r["p[COVID-19]"] for r in artifacts.read_predictions(first)]
    b = [r["p[COVID-19]"] for r in artifacts.read_predictions(run)]
    assert a == b


@pytest.mark.slow
def test_a_fold_on_the_last_compiled_model_trains_and_saves_as_on_a_fresh_one(tiny_root, tmp_path, monkeypatch):
    request = StudyRequest(protocol=get_protocol("paper").replace(epochs=2), n_folds=2, weights=None)
    compiles = []
    real_compile = fitting._compile
    monkeypatch.setattr(fitting, "_compile", lambda *args: (compiles.append(args[0]), real_compile(*args)))

    def fold(root, k: int) -> artifacts.RunResult:
        dataset = import_dataset(tiny_root, input_size=32, artifacts_root=root)
        study = prepare_study(dataset, request, artifacts_root=root)
        return train_fold(dataset=dataset, study=study, backbone="MobileNet-0.25", fold=k, artifacts_root=root)

    fresh = fold(tmp_path / "fresh", 1)
    compiled_models.forget()
    fold(tmp_path / "reused", 0)
    reused = fold(tmp_path / "reused", 1)
    assert len(compiles) == 2, "the fold after fold 0 compiled a model of its own"
    assert reused.history == fresh.history
    assert artifacts.read_predictions(reused) == artifacts.read_predictions(fresh)
    assert reused.metrics == fresh.metrics
    # The saved configuration carries the fold's own seeds (auto-numbered layer names differ anyway).
    seeds = []
    for run in (fresh, reused):
        layers = {layer["name"]: layer["config"] for layer in saved_config(run)["config"]["layers"]}
        seeds.append((layers["augment"]["seed"], layers["head"]["kernel_initializer"]["config"]["seed"]))
    assert seeds[0] == seeds[1] == (reused.config["seed"],) * 2


def saved_config(run: artifacts.RunResult) -> dict:
    with zipfile.ZipFile(run.path / "model.keras") as saved:
        return json.loads(saved.read("config.json"))


@pytest.mark.slow
def test_frozen_protocol_learns_the_tiny_task(tiny_root, tmp_path):
    study = run_study(
        tiny_root, backbones=["MobileNet-0.25"], request=TINY_FROZEN, input_size=32, artifacts_root=tmp_path
    )
    runs = artifacts.study_runs(study.study_id, tmp_path)
    assert len(runs) == 2
    assert len(runs[0].history["loss"]) == 30
    assert runs[0].history["loss"][-1] < runs[0].history["loss"][0]
    features = list((tmp_path / "features").glob("*.npy"))
    assert len(features) == 1
    assert np.load(features[0]).shape == (24, 1, 256)


@pytest.mark.slow
def test_custom_protocol_is_data(tiny_root, tmp_path):
    two_stage = Protocol(
        name="warmup-test",
        description="head then all",
        stages=(Stage(epochs=1, trainable="head"), Stage(epochs=1, learning_rate=1e-4)),
        batch_size=8,
        augmentation=None,
    )
    request = StudyRequest(protocol=two_stage, n_folds=2, weights=None)
    study = run_study(tiny_root, backbones=["MobileNet-0.25"], request=request, input_size=32, artifacts_root=tmp_path)
    run = artifacts.study_runs(study.study_id, tmp_path)[0]
    assert len(run.history["loss"]) == 2
    assert [s["trainable"] for s in run.config["protocol"]["stages"]] == ["head", "all"]


def test_protocol_checks_before_work():
    with pytest.raises(ValueError, match="epochs=0"):
        Stage(epochs=0)
    with pytest.raises(ValueError, match="cached features only allow"):
        Protocol(name="x", description="", stages=(Stage(epochs=1),), cached_features=True)
    with pytest.raises(ValueError, match="unknown protocol 'fast'"):
        get_protocol("fast")


def test_too_many_folds_refused_naming_both_numbers(tiny_root, tmp_path):
    request = StudyRequest(protocol=get_protocol("paper"), n_folds=9, weights=None)
    with pytest.raises(ValueError, match="n_splits=9 cannot be greater.*has 8 image"):
        run_study(tiny_root, backbones=["MobileNet-0.25"], request=request, input_size=32, artifacts_root=tmp_path)


def test_read_only_refuses_training(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_READ_ONLY", "1")
    with pytest.raises(ReadOnlyError):
        run_study(tiny_root, backbones=["MobileNet-0.25"], request=TINY_PAPER, input_size=32, artifacts_root=tmp_path)
    assert not (tmp_path / "studies").exists()


def test_study_ids_of_the_committed_demo_survive_the_options_added_since():
    for study_json in sorted((settings.PROJECT_ROOT / "artifacts" / "studies").glob("*/study.json")):
        study = json.loads(study_json.read_text())
        protocol = Protocol.from_dict(study["protocol"])
        assert protocol.to_dict() == study["protocol"]
        level = study.get("split", {}).get("level", "image")
        request = StudyRequest(
            protocol=protocol, n_folds=study["n_folds"], seed=study["seed"], weights=study["weights"], split=level
        )
        dataset = SimpleNamespace(
            fingerprint=study["dataset"]["fingerprint"],
            input_size=study["input_size"],
            patients=SimpleNamespace(repeats=True),
        )
        assert study_id_for(dataset, request) == study["study_id"] == study_json.parent.name


@pytest.mark.slow
def test_the_recommended_protocol_keeps_imagenet_batchnorm_and_picks_its_epoch_on_an_inner_split(tmp_path):
    tiny_root = make_dataset(tmp_path / "data", n_per_class=12)
    recommended = get_protocol("xray-finetune").replace(epochs=2, batch_size=8)
    # 6 warm-up epochs instead of 60: each costs 0.2 s run eagerly (24 s of this test's 38 s), and the
    # checks below read the count from the protocol.
    warm_up = dataclasses.replace(recommended.stages[0], epochs=6)
    recommended = dataclasses.replace(recommended, stages=(warm_up, *recommended.stages[1:]))
    request = StudyRequest(protocol=recommended, n_folds=2, weights=None)
    sent = []
    study = run_study(
        tiny_root,
        backbones=["MobileNet-0.25"],
        request=request,
        input_size=32,
        artifacts_root=tmp_path,
        on_progress=sent.append,
    )
    dataset = import_dataset(tiny_root, input_size=32, artifacts_root=tmp_path)
    probe = warm_up.epochs
    for fold in (0, 1):
        mine = [p for p in sent if p.fold == fold]
        ends = {phase: [p.epoch for p in mine if p.phase == phase and p.batch == 0] for phase in ("head", "train")}
        assert ends == {"head": list(range(1, probe + 1)), "train": [1, 2]}, "the warm-up is a phase of its own"
        assert {p.epochs for p in mine if p.phase == "head"} == {probe}
        assert {p.epochs for p in mine if p.phase == "train"} == {2}
        fractions = [p.fraction for p in mine if p.phase != "features"]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0, "the fold's bar only moves forward"
        assert max(p.fraction for p in mine if p.phase == "head") <= 0.1, "seconds of warm-up are not 6/8 of it"
    for run in artifacts.study_runs(study.study_id, tmp_path):
        plan = plan_fold(dataset, study, run.backbone, run.fold)
        assert set(plan.validation).isdisjoint(plan.test) and set(plan.validation).isdisjoint(plan.train)
        assert run.config["n_validation"] == len(plan.validation) > 0
        assert run.config["validated_on"] == "inner split of the training folds"
        assert len(run.history["val_loss"]) == probe + 2, "the probe's epochs, then the 2 fine-tuning epochs"
        candidates = run.history["val_loss"][probe - 1 :]
        assert run.config["selected_epoch"] == probe + int(np.argmin(candidates)), "warm-up or a fine-tuning epoch"
        model = keras.saving.load_model(run.model_path, compile=False)
        norms = [la for la in model.get_layer("backbone").layers if isinstance(la, keras.layers.BatchNormalization)]
        assert norms and all(np.all(np.asarray(la.moving_mean) == 0.0) for la in norms), "moving statistics moved"
        assert (run.path / "ood.npz").is_file()


def test_balanced_class_weights_give_each_class_the_same_total_weight(tiny_root, tmp_path):
    protocol = dataclasses.replace(get_protocol("paper"), class_weight="balanced")
    dataset = import_dataset(tiny_root, input_size=32, artifacts_root=tmp_path)
    keep = np.flatnonzero((dataset.labels != 0) | (np.arange(len(dataset)) % 2 == 0))
    skewed = dataclasses.replace(dataset, labels=dataset.labels[keep], files=[dataset.files[i] for i in keep])
    skewed.images = dataset.images[keep]
    study = prepare_study(skewed, StudyRequest(protocol=protocol, n_folds=2, weights=None), artifacts_root=tmp_path)
    plan = plan_fold(skewed, study, "MobileNet-0.25", 0)
    weights = plan.sample_weights()
    totals = [weights[plan.train][skewed.labels[plan.train] == k].sum() for k in range(3)]
    assert totals == pytest.approx([len(plan.train) / 3] * 3)
