"""The shortcut audit: a no-anatomy baseline that finds an acquisition shortcut, occlusion, the source probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.data.datasets import import_dataset
from engine.data.sources import import_sources
from engine.evaluation.bootstrap import interval_text
from engine.evaluation.image_statistics import image_statistics, names, summary_columns
from engine.evaluation.shortcuts import CONDITIONS, REGION, _occluded, acquisition_baseline, model_audit
from engine.reports.generalisation import generalisation
from engine.results import artifacts
from engine.training.presets import get_protocol
from engine.training.runner import run_study
from engine.training.study import StudyRequest, prepare_study
from tests import app_fixtures
from tests.app_fixtures import open_page, texts
from tests.synthetic import make_dataset

served_navigation = app_fixtures.served_navigation

pytestmark = pytest.mark.usefixtures("eager_tensorflow")


def _textures(root: Path, *, blurred_class: str | None, n: int = 20, size: int = 48) -> Path:
    """Two classes of the same random textures; one class blurred (an acquisition shortcut) or neither."""
    rng = np.random.default_rng(0)
    for cls in ("COVID-19", "Normal"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            image = Image.fromarray(np.clip(rng.normal(120, 40, (size, size)), 0, 255).astype(np.uint8))
            if cls == blurred_class:
                image = image.filter(ImageFilter.GaussianBlur(1.2))
            image.save(root / cls / f"{cls}-{i}.png")
    return root


def _study(dataset, n_folds=4):
    return prepare_study(dataset, StudyRequest(protocol=get_protocol("frozen"), n_folds=n_folds, weights=None))


@pytest.mark.slow
def test_the_baseline_finds_a_sharpness_shortcut_and_nothing_where_there_is_none(tmp_path, artifacts_root):
    shortcut = import_dataset(_textures(tmp_path / "blurred", blurred_class="COVID-19"), input_size=48)
    none = import_dataset(_textures(tmp_path / "same", blurred_class=None), input_size=48)
    found = acquisition_baseline(_study(shortcut), shortcut)
    assert found["figures"]["metrics"]["accuracy"]["estimate"] >= 0.95
    assert acquisition_baseline(_study(none), none)["figures"]["metrics"]["accuracy"]["estimate"] <= 0.75
    sharp = np.asarray(found["statistics"]["sharpness"])
    assert np.median(sharp[shortcut.labels == 0]) < 0.5 * np.median(sharp[shortcut.labels == 1])
    assert sorted(found["rows"]) == list(range(len(shortcut)))


def test_image_statistics_have_one_column_per_name_and_the_file_size():
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    features = image_statistics(images, np.array([[640, 480], [224, 224], [0, 0]]))
    assert features.shape == (3, len(names()))
    assert summary_columns(features)["source size"].tolist() == [640, 224, 0]


def test_occlusion_fills_the_lung_region_or_everything_else_with_the_median():
    images = np.arange(2 * 40 * 40, dtype=np.int64).reshape(2, 40, 40).astype(np.uint8)
    inside = REGION.mask(40)
    hidden = _occluded(images, REGION, "lungs hidden")
    only = _occluded(images, REGION, "lungs only")
    for k in range(2):
        median = np.median(images[k])
        assert np.all(hidden[k][inside] == np.uint8(median))
        assert np.array_equal(hidden[k][~inside], images[k][~inside])
        assert np.all(only[k][~inside] == np.uint8(median))
        assert np.array_equal(only[k][inside], images[k][inside])


@pytest.mark.slow
def test_model_audit_of_a_two_source_study_is_kept_read_back_and_shown(tmp_path, artifacts_root, served_navigation):
    first = make_dataset(tmp_path / "a", n_per_class=8, size=32)
    second = tmp_path / "b" / "Normal"
    second.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(8):
        Image.fromarray(np.clip(rng.normal(180, 5, (32, 32)), 0, 255).astype(np.uint8)).save(second / f"n{i}.png")
    request = StudyRequest(protocol=get_protocol("frozen").replace(epochs=5), n_folds=2, weights=None)
    study = run_study([first, tmp_path / "b"], backbones=["MobileNet-0.25"], request=request, input_size=32)
    dataset = import_sources([first, tmp_path / "b"], input_size=32)
    audit = model_audit(study, "MobileNet-0.25", dataset)
    assert set(audit["occlusion"]) == set(CONDITIONS)
    assert audit["folds"] == [0, 1]
    probe = audit["source_probe"]["by_class"]["Normal"]
    assert probe["counts"] == {"a": 8, "b": 8}
    assert 0.0 <= probe["balanced_accuracy"] <= 1.0
    assert model_audit(study, "MobileNet-0.25", dataset) == audit
    acquisition_baseline(study, dataset)
    found = generalisation(study.study_id)
    assert found.split == "image"
    assert found.baseline is not None and found.region == REGION.description
    row = found.model("MobileNet-0.25")
    counts = artifacts.read_study(study.study_id).dataset.counts
    assert {c: row.in_fold[f"recall[{c}]"]["n"] for c in counts} == counts, "each recall knows its class's images"
    assert set(row.occlusion) == set(CONDITIONS)
    assert set(row.by_source) == {"a", "b"}
    with pytest.raises(ValueError, match="no saved fold model of backbone='MobileNet'"):
        model_audit(study, "MobileNet", dataset)
    external = make_dataset(tmp_path / "other-hospital", n_per_class=4, size=32, seed=5)
    views = ["PA", "AP"] * 6
    rows = "\n".join(
        f"{p.parent.name}/{p.name},{v}" for p, v in zip(sorted(external.rglob("*.png")), views, strict=True)
    )
    (external / "metadata.csv").write_text("file,view\n" + rows + "\n")
    from engine.evaluation.external import evaluate_folder
    from engine.models.inference import load_classifier

    folder = artifacts.run_dir(study.study_id, "MobileNet-0.25", 0).parent
    evaluate_folder(load_classifier(folder), external)
    split = generalisation(study.study_id).model("MobileNet-0.25").external_set("other-hospital").by_metadata
    assert set(split) == {"view"} and set(split["view"]) == {"AP", "PA"}
    assert split["view"]["AP"]["metrics"]["accuracy"]["estimate"] is not None
    at = open_page("pages/audit.py", query={"study": study.study_id})
    table = at.dataframe[0].value.set_index("model")
    assert table.loc["MobileNet-0.25", "lungs hidden"] == interval_text(row.occlusion["lungs hidden"])
    assert table.loc["MobileNet-0.25", "held out: b"] == interval_text(row.by_source["b"]["metrics"]["accuracy"])
    assert "Folds: **image-level**" in texts(at.caption)
    probe = at.dataframe[-1].value
    assert list(probe["class"]) == ["Normal"] and list(probe["counts"]) == ["a 8, b 8"]
    best, chance = probe["balanced_accuracy"].max(), probe["chance"].iloc[0]
    reading = "Near chance" if best - chance < 0.05 else f"Here they do: {best:.3f}"
    assert reading in texts(at.caption)
    assert len(at.get("plotly_chart")) >= 2
    assert "source size: 32 for every image, so it cannot tell the classes apart." in texts(at.caption)


@pytest.mark.slow
def test_the_checklist_is_answered_from_the_study_and_changes_with_it(tmp_path, artifacts_root):
    from engine.data.patients import RULES
    from engine.reports.checklist import POPULATIONS, study_checklist

    assert {rule.name for rule in RULES} <= set(POPULATIONS)
    first = make_dataset(tmp_path / "a", n_per_class=8, size=32)
    nih = tmp_path / "b" / "Normal"
    nih.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(8):
        image = np.clip(rng.normal(150, 20, (32, 32)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(nih / f"{20_000_000 + i // 2:08d}_{i % 2:03d}.png")
    request = StudyRequest(protocol=get_protocol("frozen").replace(epochs=2), n_folds=2, weights=None)
    one = run_study(first, backbones=["MobileNet-0.25"], request=request, input_size=32)
    two = run_study([first, tmp_path / "b"], backbones=["MobileNet-0.25"], request=request, input_size=32)
    a = {item.topic: item.answer for item in study_checklist(one.study_id)}
    b = {item.topic: item.answer for item in study_checklist(two.study_id)}
    assert "24 images from `a`" in a["Data sources"] and "`b` (Normal 8)" in b["Data sources"]
    assert "StratifiedKFold by image" in a["Partitions and their level"]
    assert "StratifiedGroupKFold by patient" in b["Partitions and their level"]
    assert "0 patients (0 images)" in b["Partitions and their level"]
    assert "NIH Clinical Center patients" in b["Participant characteristics by class"]
    assert "NIH" not in a["Participant characteristics by class"]
    assert "every COVID-19 image comes from one source" in b["Limitations"]
    assert "folds are by image" in a["Limitations"] and "folds are by image" not in b["Limitations"]
    assert a["Shortcut audit (robustness of what was learned)"].startswith("not run")
    acquisition_baseline(artifacts.read_study(two.study_id), import_sources([first, tmp_path / "b"], input_size=32))
    after = {item.topic: item.answer for item in study_checklist(two.study_id)}
    assert after["Shortcut audit (robustness of what was learned)"].startswith("no-anatomy baseline accuracy")
