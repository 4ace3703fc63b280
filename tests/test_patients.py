"""Patients: the public sets' file-name rules, a user's patients.csv, and folds that keep a patient in one fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.datasets import import_dataset, read_manifest
from engine.data.patients import OWN, PatientsError, patient_groups, read_patients_csv
from engine.data.splits import check_folds, inner_split, patients_across_folds, stratified_folds
from engine.training.presets import get_protocol
from engine.training.study import StudyRequest, prepare_study, study_id_for
from tests.synthetic import make_image


def test_public_file_name_rules_name_the_patient():
    files = [
        "Viral Pneumonia/person1609_virus_2790.png",
        "Viral Pneumonia/person1609_virus_2791.png",
        "Normal/IM-0115-0001.png",
        "Normal/NORMAL2-IM-0115-0001.png",
        "Normal/00001280_004.png",
        "Normal/00001280_007.png",
        "COVID-19/COVID-12.png",
    ]
    groups = patient_groups(files)
    assert groups.patients == (
        "kermany-person-1609",
        "kermany-person-1609",
        "kermany-im-0115",
        "kermany-normal2-0115",
        "nih-00001280",
        "nih-00001280",
        "image-COVID-19/COVID-12.png",
    )
    assert groups.rules[-1] == OWN
    assert groups.summary["n_patients"] == 5
    assert groups.summary["images_sharing_a_patient"] == 4
    assert groups.summary["by_rule"]["Kermany NORMAL2-IM-NNNN"] == 1
    assert groups.repeats


def test_patients_csv_maps_by_path_or_unique_name_and_wins_over_the_rules():
    files = ["Normal/a.png", "Normal/person1_virus_1.png", "COVID/c.png"]
    listed = read_patients_csv(b"file,patient\nNormal/a.png,P1\nc.png,P1\n", files)
    assert listed == {"Normal/a.png": "P1", "COVID/c.png": "P1"}
    groups = patient_groups(files, listed)
    assert groups.patients == ("csv-P1", "kermany-person-1", "csv-P1")
    assert groups.rules == ("patients.csv", "Kermany personN", "patients.csv")


@pytest.mark.parametrize(
    "text, message",
    [
        (b"file,patient\nNormal/missing.png,P1\n", "row 2: 'Normal/missing.png' is not an image"),
        (b"file,patient\nNormal/a.png,P1\na.png,P2\n", "row 3: 'Normal/a.png' is named twice"),
        (b"file,patient\nNormal/a.png,\n", "row 2: 'Normal/a.png' has an empty patient"),
        (b"file,patient\n,P1\n", "row 2: no file named"),
        (b"name,id\nNormal/a.png,P1\n", "needs the columns 'file' and 'patient'"),
        (b"file,patient\nb.png,P1\n", "row 2: 'b.png' matches 2 files"),
    ],
)
def test_a_bad_patients_csv_row_is_named(text, message):
    with pytest.raises(PatientsError, match=message):
        read_patients_csv(text, ["Normal/a.png", "Normal/b.png", "COVID/b.png"])


def _write(root: Path, files: dict[str, int], size: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for name, label in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_image(label, size, rng)).save(path)
    return root


def _kermany_like(root: Path, *, children: int = 6, films: int = 3, covid: int = 6) -> Path:
    """Three classes; Normal and Viral Pneumonia children with several films each, COVID-19 without patients."""
    files = {}
    for p in range(children):
        for f in range(films):
            files[f"Normal/IM-{p:04d}-{f:04d}.png"] = 1
            files[f"Viral Pneumonia/person{p}_virus_{f}.png"] = 2
    for i in range(covid):
        files[f"COVID-19/COVID-{i}.png"] = 0
    return _write(root, files)


def test_import_records_patients_and_a_patients_csv_changes_the_fingerprint(tmp_path, artifacts_root):
    data = _kermany_like(tmp_path / "data")
    first = import_dataset(data, input_size=24)
    assert first.report.patients["n_patients"] == 6 + 6 + 6
    assert first.report.patients["images_sharing_a_patient"] == 36
    (data / "patients.csv").write_text("file,patient\nCOVID-0.png,A\nCOVID-1.png,A\n")
    second = import_dataset(data, input_size=24)
    assert second.fingerprint != first.fingerprint
    assert read_manifest(second.fingerprint, artifacts_root)["patients"] == {
        "COVID-19/COVID-0.png": "A",
        "COVID-19/COVID-1.png": "A",
    }
    assert second.patients.patients[second.files.index("COVID-19/COVID-1.png")] == "csv-A"


def test_a_bad_patients_csv_stops_the_import_before_anything_is_written(tmp_path, artifacts_root):
    data = _kermany_like(tmp_path / "data")
    (data / "patients.csv").write_text("file,patient\nCOVID-0.png,A\nCOVID-0.png,B\n")
    with pytest.raises(PatientsError, match="row 3: 'COVID-19/COVID-0.png' is named twice"):
        import_dataset(data, input_size=24)
    assert not list(artifacts_root.rglob("images-*.npy"))
    assert not list(artifacts_root.rglob("manifest.json"))


def test_a_metadata_csv_is_kept_per_image_and_a_bad_row_is_named(tmp_path, artifacts_root):
    from engine.data.file_tables import FileTableError, groupable

    data = _kermany_like(tmp_path / "data")
    (data / "metadata.csv").write_text("file,view,age\nCOVID-0.png,PA,61\nCOVID-1.png,AP,47\nCOVID-2.png,AP,80\n")
    dataset = import_dataset(data, input_size=24)
    metadata = read_manifest(dataset.fingerprint, artifacts_root)["metadata"]
    assert metadata["COVID-19/COVID-1.png"] == {"view": "AP", "age": "47"}
    assert set(groupable(metadata)) == {"view", "age"}
    (data / "metadata.csv").write_text("file,view\nCOVID-99.png,PA\n")
    with pytest.raises(FileTableError, match="metadata.csv row 2: 'COVID-99.png' is not an image of this dataset"):
        import_dataset(data, input_size=24)


def test_patient_folds_never_split_a_patient_and_image_folds_do():
    patients = np.repeat(np.arange(40), 3).astype(str)
    labels = np.repeat(np.arange(40) % 2, 3)
    by_patient = stratified_folds(labels, ("a", "b"), n_splits=5, seed=1, groups=patients)
    by_image = stratified_folds(labels, ("a", "b"), n_splits=5, seed=1)
    assert patients_across_folds(by_patient, list(patients)) == {"patients": 0, "images": 0}
    assert patients_across_folds(by_image, list(patients))["patients"] > 0
    assert sorted(i for fold in by_patient for i in fold) == list(range(120))


def test_fewer_patients_than_folds_in_a_class_is_refused_with_the_counts():
    labels = np.array([0] * 9 + [1] * 9)
    patients = np.array(["p1"] * 5 + ["p2"] * 4 + [f"q{i}" for i in range(9)])
    with pytest.raises(ValueError, match="class 'a' has 2 patient\\(s\\) in 9 image\\(s\\)"):
        check_folds(labels, ("a", "b"), n_splits=3, groups=patients)


def test_inner_split_by_patient_keeps_patients_on_one_side():
    patients = np.repeat(np.arange(30), 2).astype(str)
    labels = np.repeat(np.arange(30) % 3, 2)
    train = np.arange(60)
    fit, validation = inner_split(train, labels, fraction=0.2, seed=0, groups=patients)
    assert not set(patients[fit]) & set(patients[validation])
    assert len(fit) + len(validation) == 60


def test_studies_split_by_patient_by_default_and_keep_the_old_id_by_image(tmp_path, artifacts_root):
    dataset = import_dataset(_kermany_like(tmp_path / "data"), input_size=24)
    protocol = get_protocol("frozen")
    by_patient = prepare_study(dataset, StudyRequest(protocol=protocol, n_folds=3, weights=None))
    by_image = prepare_study(dataset, StudyRequest(protocol=protocol, n_folds=3, weights=None, split="image"))
    assert by_patient.split.level == "patient"
    assert by_patient.split.patients_in_several_folds == {"patients": 0, "images": 0}
    assert "by patient" in by_patient.title
    assert by_image.split.level == "image"
    assert by_image.split.patients_in_several_folds["patients"] > 0
    assert by_image.study_id != by_patient.study_id
    from engine.results import artifacts

    unsplit = {
        "dataset": dataset.fingerprint,
        "protocol": protocol.to_dict(),
        "n_folds": 3,
        "seed": 42,
        "input_size": 24,
        "weights": None,
    }
    assert by_image.study_id == artifacts.canonical_hash(unsplit)
    assert study_id_for(dataset, StudyRequest(protocol=protocol, n_folds=3, weights=None)) == by_patient.study_id


def test_a_study_with_too_few_patients_for_its_folds_says_so(tmp_path, artifacts_root):
    dataset = import_dataset(_kermany_like(tmp_path / "data", children=3), input_size=24)
    with pytest.raises(ValueError, match="class 'Normal' has 3 patient\\(s\\) in 9 image\\(s\\)"):
        prepare_study(dataset, StudyRequest(protocol=get_protocol("frozen"), n_folds=5, weights=None))
    assert not (artifacts_root / "studies").exists() or not list((artifacts_root / "studies").iterdir())
