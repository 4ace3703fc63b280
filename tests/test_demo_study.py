"""The committed demo study: real results a fresh clone shows, and the report generated from them."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest

from engine import settings
from engine.models.backbone_ensemble import served_files
from engine.models.catalog import list_models
from engine.models.inference import load_classifier
from engine.reports.reproduction import reproduction_report
from engine.training.study import summarize
from tests.synthetic import make_image

DEMO = settings.PROJECT_ROOT / "artifacts"
FROZEN = ("MobileNet", "MobileNet-0.25", "MobileNetV2-0.35")


@pytest.fixture(scope="module")
def rows():
    return summarize(DEMO)


def test_frozen_study_is_complete_for_the_three_small_backbones(rows):
    frozen = {r["backbone"]: r for r in rows if r["protocol"] == "frozen"}
    assert set(FROZEN) <= set(frozen)
    for name in FROZEN:
        assert frozen[name]["folds_done"] == 5
        assert frozen[name]["weights"]["sha256"], "the demo must say which ImageNet weights it used"


def test_best_frozen_model_meets_the_reference(rows):
    """A plain LogisticRegression on frozen MobileNet features reaches 0.961 / 0.973 (shared README)."""
    frozen = [r for r in rows if r["protocol"] == "frozen"]
    best = max(frozen, key=lambda r: r["metrics"]["accuracy"]["mean"])
    assert best["metrics"]["accuracy"]["mean"] >= 0.96
    assert best["metrics"]["recall[COVID-19]"]["mean"] >= 0.97


def test_the_recommended_probe_meets_the_cross_validation_targets(rows):
    """`xray-probe` on the paper's folds: every backbone 5 of 5, the best one at 0.98 or more on each target."""
    probe = {r["backbone"]: r for r in rows if r["protocol"] == "xray-probe"}
    assert set(FROZEN) <= set(probe) and all(probe[name]["folds_done"] == 5 for name in FROZEN)
    for metric in ("accuracy", "macro_f1", "recall[COVID-19]"):
        assert max(r["metrics"][metric]["mean"] for r in probe.values()) >= 0.98, metric


@pytest.mark.slow
def test_report_regenerates_byte_for_byte():
    committed = (settings.PROJECT_ROOT / "docs" / "reproduction.md").read_text()
    assert reproduction_report(DEMO) == committed


def test_the_readme_results_table_is_the_one_the_artifacts_give():
    from engine.reports.readme import START, results_table, with_results_table

    readme = (settings.PROJECT_ROOT / "README.md").read_text()
    assert with_results_table(readme, results_table(DEMO)) == readme
    lines = readme.splitlines()
    assert len(lines) <= 160
    assert lines.index(START) < 60, "the results table is in the README's first 60 lines"


@pytest.mark.parametrize("protocol", ["frozen", "xray-probe", "xray-harmonised", "xray-probe-harmonised"])
def test_the_demo_s_recommended_and_frozen_studies_keep_every_patient_in_one_fold(protocol):
    """Read from the committed manifests (the real data's file names): no patient has images in two folds."""
    from engine.data.datasets import read_manifest
    from engine.data.patients import patient_groups
    from engine.data.splits import patients_across_folds
    from engine.results import artifacts

    studies = [artifacts.read_study(s, DEMO) for s in artifacts.list_study_ids(DEMO)]
    chosen = [s for s in studies if s.protocol_name == protocol and s.split_level == "patient"]
    assert chosen, f"no patient-level {protocol} study is committed"
    for study in chosen:
        manifest = read_manifest(study.dataset.fingerprint, DEMO)
        patients = patient_groups(manifest["files"], manifest.get("patients")).patients
        assert patients_across_folds(study.folds, patients) == {"patients": 0, "images": 0}
        assert sorted(i for fold in study.folds for i in fold) == list(range(len(patients)))


def test_the_app_opens_on_the_served_model_s_study():
    """The sidebar's default study (the first row) is the served model's, not the one with the most runs."""
    from engine.reports.explore import list_studies
    from engine.reports.served import read_choice

    table = list_studies(DEMO)
    assert table.iloc[0]["study_id"] == read_choice(DEMO)["study_id"] and table["served"].sum() == 1
    assert table.iloc[1:]["folds_done"].is_monotonic_decreasing


def test_committed_artifacts_stay_under_70_mb():
    """The budget .gitignore names: a hosted demo clones them all."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "artifacts"], cwd=settings.PROJECT_ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    total = sum((settings.PROJECT_ROOT / name.decode()).stat().st_size for name in listed if name)
    assert 0 < total < 70 * 2**20


def test_a_committed_model_classifies_an_image(monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS", str(DEMO))
    models = list_models(DEMO)
    assert models, "the demo study must ship at least one model for the classify page"
    smallest = min(models, key=lambda m: m.serving_path.stat().st_size if m.serving_path.is_file() else math.inf)
    classifier = load_classifier(smallest.serving_path, artifacts_root=DEMO)
    image = make_image(0, classifier.input_size, np.random.default_rng(0))
    proba, heatmaps = classifier.predict_arrays(image[None])
    assert proba.shape == (1, 3) and abs(proba.sum() - 1) < 1e-4
    assert heatmaps.shape == (1, classifier.input_size, classifier.input_size)


def test_the_hosted_demo_serves_a_committed_export(monkeypatch):
    """Read-only, Classify lists only exported models: the demo must commit one, with what it needs to serve."""
    monkeypatch.setenv("CXR_ARTIFACTS", str(DEMO))
    exported = [m for m in list_models(DEMO) if m.export is not None]
    assert exported, "no exported model is committed: the hosted demo's Classify page would have nothing to serve"
    path = exported[0].export
    assert path.with_name(path.name + ".card.md").is_file()
    for file in served_files(path):  # an ensemble of backbones is served from its members' exports
        assert {p.name for p in file.parent.iterdir()} >= {file.name + s for s in (".json", ".ood.npz", ".card.md")}
