"""Multi-source studies: several dataset folders as one dataset in which each image keeps its source."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.datasets import DatasetError, import_dataset
from engine.data.sources import import_sources, study_dataset
from engine.training.plan import plan_fold
from engine.training.presets import get_protocol
from engine.training.study import StudyRequest, prepare_study
from tests.synthetic import make_dataset, make_image


def _nih_normals(root: Path, *, folder: str = "NORMAL", patients: int = 5, films: int = 2, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    for p in range(patients):
        for f in range(films):
            Image.fromarray(make_image(1, 24, rng)).save(root / folder / f"{10_000_000 + p:08d}_{f:03d}.png")
    return root


def test_two_sources_make_one_dataset_with_each_image_s_source(tmp_path, artifacts_root):
    first = make_dataset(tmp_path / "paper", n_per_class=6, size=24)
    second = _nih_normals(tmp_path / "nih")
    dataset = import_sources([first, second], input_size=24)
    assert dataset.sources == ("paper", "nih")
    assert dataset.classes == ("COVID-19", "Normal", "Viral Pneumonia")
    assert dataset.report.by_source == {
        "paper": {"COVID-19": 6, "Normal": 6, "Viral Pneumonia": 6},
        "nih": {"COVID-19": 0, "Normal": 10, "Viral Pneumonia": 0},
    }
    assert np.bincount(dataset.source_index).tolist() == [18, 10]
    assert dataset.files[-1] == "nih/NORMAL/10000004_001.png"
    assert dataset.patients.patients[-1] == "nih-10000004"
    assert dataset.report.patients["images_sharing_a_patient"] == 10
    assert import_sources([first, second], input_size=24).fingerprint == dataset.fingerprint
    assert import_sources([first], input_size=24).fingerprint == import_dataset(first, input_size=24).fingerprint


def test_the_same_image_in_two_sources_is_dropped_once_and_listed(tmp_path, artifacts_root):
    first = make_dataset(tmp_path / "a", n_per_class=6, size=24)
    second = _nih_normals(tmp_path / "b", folder="Normal")
    shutil.copy(first / "NORMAL" / "img_002.png", second / "Normal" / "copy.png")
    dataset = import_sources([first, second], input_size=24)
    assert dataset.report.duplicates == [{"file": "b/Normal/copy.png", "same_pixels_as": "a/NORMAL/img_002.png"}]
    assert len(dataset) == 18 + 10


def test_a_class_folder_that_matches_no_class_of_the_first_source_is_named(tmp_path, artifacts_root):
    first = make_dataset(tmp_path / "a", n_per_class=6, size=24)
    second = _nih_normals(tmp_path / "b", folder="Pneumonia")
    with pytest.raises(DatasetError, match="b/Pneumonia match none of a's classes"):
        import_sources([first, second], input_size=24)


def test_folds_span_the_sources_and_a_thin_source_is_refused(tmp_path, artifacts_root):
    first = make_dataset(tmp_path / "a", n_per_class=10, size=24)
    dataset = import_sources([first, _nih_normals(tmp_path / "b", patients=5)], input_size=24)
    study = prepare_study(dataset, StudyRequest(protocol=get_protocol("frozen"), n_folds=5, weights=None))
    assert list(study.dataset.sources) == ["a", "b"]
    for fold in study.folds:
        assert set(dataset.source_index[fold]) == {0, 1}
    thin = import_sources([first, _nih_normals(tmp_path / "c", patients=3)], input_size=24)
    with pytest.raises(
        ValueError, match="source 'c' brings 3 patient\\(s\\) of class 'Normal', fewer than the 5 folds"
    ):
        prepare_study(thin, StudyRequest(protocol=get_protocol("frozen"), n_folds=5, weights=None))


def test_study_dataset_names_the_fingerprint_it_needs(tmp_path, artifacts_root):
    first = make_dataset(tmp_path / "a", n_per_class=6, size=24)
    dataset = import_sources([first, _nih_normals(tmp_path / "b")], input_size=24)
    study = prepare_study(dataset, StudyRequest(protocol=get_protocol("frozen"), n_folds=2, weights=None))
    shutil.rmtree(artifacts_root / "datasets")
    with pytest.raises(DatasetError, match=f"fingerprint {dataset.fingerprint}"):
        study_dataset(study, artifacts_root)
    again = study_dataset(study, artifacts_root, data=[first, tmp_path / "b"])
    assert again.fingerprint == dataset.fingerprint
    with pytest.raises(DatasetError, match=f"not {dataset.fingerprint}"):
        study_dataset(study, artifacts_root, data=[first])


def test_weights_by_source_split_each_class_alike_between_the_sources_that_bring_it(tmp_path, artifacts_root):
    first = make_dataset(tmp_path / "paper", n_per_class=12, size=24)
    second = _nih_normals(tmp_path / "nih", patients=4, films=1)
    dataset = import_sources([first, second], input_size=24)
    protocol = get_protocol("harmonise-probe-varied-by-source")
    study = prepare_study(dataset, StudyRequest(protocol=protocol, n_folds=2, weights=None))
    plan = plan_fold(dataset, study, "MobileNet-0.25", 0)
    weights, rows = plan.sample_weights(), plan.train
    labels, sources = dataset.labels[rows], dataset.source_index[rows]
    n = len(rows)
    assert weights[rows][labels == 0].sum() == pytest.approx(n / 3), "a class of one source keeps its third"
    normal_paper = weights[rows][(labels == 1) & (sources == 0)]
    normal_nih = weights[rows][(labels == 1) & (sources == 1)]
    assert normal_paper.sum() == pytest.approx(n / 6) and normal_nih.sum() == pytest.approx(n / 6)
    assert len(normal_nih) < len(normal_paper) and normal_nih[0] > normal_paper[0], "the few adults weigh more each"
    balanced = plan_fold(
        dataset,
        prepare_study(dataset, StudyRequest(protocol=get_protocol("xray-probe"), n_folds=2, weights=None)),
        "MobileNet-0.25",
        0,
    )
    assert balanced.sample_weights()[balanced.train][dataset.labels[balanced.train] == 1].std() == 0.0
