"""Dataset import: class-name variants, the Kaggle layouts, zip = folder, the cache, folds."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine.data.datasets as datasets_module
from engine.data.classes import PAPER_CLASSES
from engine.data.datasets import DatasetError, dataset_dir, import_dataset, load_dataset, read_manifest
from engine.data.images import decode_xray
from engine.data.splits import check_folds, stratified_folds
from tests.synthetic import make_dataset


def zip_folder(folder: Path, archive: Path, *, top: str | None = None) -> Path:
    """Zip ``folder`` the way a user's archiver does, optionally under a top folder."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            zf.write(path, f"{top}/{rel}" if top else rel)
    return archive


def write_png(path: Path, value: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path)


@pytest.mark.parametrize(
    "folders",
    [
        ("COVID", "NORMAL", "VIRAL_PNEUMONIA"),
        ("COVID-19", "Normal", "Viral Pneumonia"),
        ("covid19", "normal", "Viral_Pneumonia"),
        ("SARS-CoV-2", "No Finding", "viral"),
        ("COVID", "Healthy", "Viral Pneumonia"),
    ],
)
def test_folder_name_variants_map_to_the_paper_classes(tmp_path, artifacts_root, folders):
    make_dataset(tmp_path / "data", n_per_class=3, size=16, classes=folders)
    dataset = import_dataset(tmp_path / "data", input_size=16)
    assert dataset.classes == PAPER_CLASSES
    assert dataset.report.counts == {c: 3 for c in PAPER_CLASSES}
    assert dataset.report.class_folders == {c: [f] for c, f in zip(PAPER_CLASSES, folders, strict=True)}
    assert np.bincount(dataset.labels).tolist() == [3, 3, 3]


def test_kaggle_2021_layout_reads_images_and_ignores_masks(tmp_path, artifacts_root):
    top = tmp_path / "COVID-19_Radiography_Dataset"
    for k, cls in enumerate(("COVID", "Normal", "Viral Pneumonia", "Lung_Opacity")):
        for i in range(3):
            write_png(top / cls / "images" / f"{cls}-{i}.png", 40 * k + i)
            write_png(top / cls / "masks" / f"{cls}-{i}.png", 255)
    (top / "COVID.metadata.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    (top / "README.md.txt").write_text("readme")
    dataset = import_dataset(top, input_size=16)
    assert dataset.classes == (*PAPER_CLASSES, "Lung_Opacity")
    assert len(dataset) == 12
    assert not any("masks" in f for f in dataset.files)
    assert "COVID/images/COVID-0.png" in dataset.files
    assert dataset.report.skipped == []
    assert dataset.report.duplicates == []


def test_zip_import_equals_folder_import(tmp_path, artifacts_root):
    data = make_dataset(tmp_path / "tiny", n_per_class=4, size=20)
    archive = zip_folder(data, tmp_path / "tiny.zip", top="tiny")
    from_folder = import_dataset(data, input_size=20)
    from_zip = import_dataset(archive, input_size=20, artifacts_root=tmp_path / "other-artifacts")
    assert from_zip.files == from_folder.files
    assert from_zip.fingerprint == from_folder.fingerprint
    assert from_zip.classes == from_folder.classes
    np.testing.assert_array_equal(from_zip.labels, from_folder.labels)
    np.testing.assert_array_equal(np.asarray(from_zip.images), np.asarray(from_folder.images))


def test_rows_are_the_decoded_files_in_manifest_order(tiny_data, artifacts_root):
    dataset = import_dataset(tiny_data, input_size=24)
    assert dataset.images.shape == (18, 24, 24)
    assert dataset.images.dtype == np.uint8
    for row, rel in enumerate(dataset.files):
        expected = decode_xray((tiny_data / rel).read_bytes(), size=24).pixels
        np.testing.assert_array_equal(dataset.images[row], expected)


def test_second_import_is_served_from_the_cache_without_decoding(tiny_data, artifacts_root, monkeypatch):
    first = import_dataset(tiny_data, input_size=24)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(datasets_module, "decode_xray", refuse)
    second = import_dataset(tiny_data, input_size=24)
    assert second.fingerprint == first.fingerprint
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    with pytest.raises(AssertionError, match="decoded again"):
        import_dataset(tiny_data, input_size=32)


def test_a_changed_file_changes_the_fingerprint(tiny_data, artifacts_root):
    before = import_dataset(tiny_data, input_size=16).fingerprint
    write_png(tiny_data / "NORMAL" / "img_000.png", 3, size=40)
    after = import_dataset(tiny_data, input_size=16)
    assert after.fingerprint != before
    assert len(after) == 18
    assert sorted(p.name for p in (artifacts_root / "datasets").iterdir()) == sorted([before, after.fingerprint])


def test_exact_duplicates_are_reported_and_dropped(tiny_data, artifacts_root):
    shutil.copy(tiny_data / "COVID" / "img_000.png", tiny_data / "COVID" / "zz_copy.png")
    shutil.copy(tiny_data / "COVID" / "img_001.png", tiny_data / "NORMAL" / "zz_elsewhere.png")
    dataset = import_dataset(tiny_data, input_size=16)
    assert len(dataset) == 18
    assert dataset.report.duplicates == [
        {"file": "COVID/zz_copy.png", "same_bytes_as": "COVID/img_000.png"},
        {"file": "NORMAL/zz_elsewhere.png", "same_bytes_as": "COVID/img_001.png"},
    ]
    assert "COVID/zz_copy.png" not in dataset.files


def test_two_class_set(tmp_path, artifacts_root):
    make_dataset(tmp_path / "two", n_per_class=5, size=16, classes=("NORMAL", "COVID-19"))
    dataset = import_dataset(tmp_path / "two", input_size=16)
    assert dataset.classes == ("COVID-19", "Normal")
    assert dataset.report.counts == {"COVID-19": 5, "Normal": 5}


def test_four_class_set_puts_the_paper_classes_first(tmp_path, artifacts_root):
    classes = ("Lung_Opacity", "Normal", "Viral Pneumonia", "COVID")
    make_dataset(tmp_path / "four", n_per_class=2, size=16, classes=classes)
    dataset = import_dataset(tmp_path / "four", input_size=16)
    assert dataset.classes == ("COVID-19", "Normal", "Viral Pneumonia", "Lung_Opacity")
    assert np.bincount(dataset.labels).tolist() == [2, 2, 2, 2]


def test_stratified_folds_are_disjoint_cover_everything_and_are_seeded(tmp_path, artifacts_root):
    make_dataset(tmp_path / "data", n_per_class=11, size=16)
    dataset = import_dataset(tmp_path / "data", input_size=16)
    folds = stratified_folds(dataset.labels, dataset.classes, n_splits=5, seed=7)
    flat = [i for fold in folds for i in fold]
    assert sorted(flat) == list(range(33))
    assert len(flat) == len(set(flat))
    for fold in folds:
        per_class = np.bincount(dataset.labels[fold], minlength=3)
        assert per_class.min() >= 2 and per_class.max() <= 3
    assert stratified_folds(dataset.labels, dataset.classes, n_splits=5, seed=7) == folds
    assert stratified_folds(dataset.labels, dataset.classes, n_splits=5, seed=8) != folds


def test_fold_count_above_the_smallest_class_is_refused_with_both_numbers(tmp_path, artifacts_root):
    make_dataset(tmp_path / "data", n_per_class=4, size=16)
    (tmp_path / "data" / "COVID" / "img_003.png").unlink()
    dataset = import_dataset(tmp_path / "data", input_size=16)
    with pytest.raises(ValueError, match=r"n_splits=5 .* class 'COVID-19' has 3 image\(s\)"):
        check_folds(dataset.labels, dataset.classes, n_splits=5)
    check_folds(dataset.labels, dataset.classes, n_splits=3)


def test_unreadable_files_are_skipped_and_the_cache_holds_only_kept_rows(tiny_data, artifacts_root):
    (tiny_data / "NORMAL" / "img_002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = import_dataset(tiny_data, input_size=16)
    assert len(dataset) == 17
    assert dataset.images.shape == (17, 16, 16)
    assert dataset.report.skipped[0]["file"] == "NORMAL/img_002.png"
    assert dataset.report.counts == {"COVID-19": 6, "Normal": 5, "Viral Pneumonia": 6}
    row = dataset.files.index("NORMAL/img_003.png")
    expected = decode_xray((tiny_data / "NORMAL" / "img_003.png").read_bytes(), size=16).pixels
    np.testing.assert_array_equal(dataset.images[row], expected)
    folder = dataset_dir(dataset.fingerprint)
    assert sorted(p.name for p in folder.iterdir()) == ["hashes-16.json", "images-16.npy", "manifest.json"]


def test_manifest_round_trip_and_unknown_fingerprint(tiny_data, artifacts_root):
    dataset = import_dataset(tiny_data, input_size=16, name="tiny set")
    manifest = read_manifest(dataset.fingerprint)
    assert manifest["name"] == "tiny set"
    assert manifest["files"] == dataset.files
    assert json.loads((dataset_dir(dataset.fingerprint) / "manifest.json").read_text())["schema_version"] == 1
    with pytest.raises(DatasetError, match="dataset 0000 has not been imported"):
        load_dataset("0000", input_size=16)
    with pytest.raises(DatasetError, match="no cached images at 32x32"):
        load_dataset(dataset.fingerprint, input_size=32)


def test_input_size_below_eight_is_refused_by_name(tiny_data, artifacts_root):
    with pytest.raises(ValueError, match=r"input_size must be at least 8 pixels, got input_size=4"):
        import_dataset(tiny_data, input_size=4)


def test_missing_source_and_wrong_kind_of_file(tmp_path, artifacts_root):
    with pytest.raises(DatasetError, match="no such folder or file"):
        import_dataset(tmp_path / "nowhere", input_size=16)
    (tmp_path / "data.tar").write_bytes(b"x")
    with pytest.raises(DatasetError, match="data.tar: expected a folder of class folders or a .zip archive"):
        import_dataset(tmp_path / "data.tar", input_size=16)


def _many_pngs(root: Path, per_class: int) -> Path:
    rng = np.random.default_rng(per_class)
    for cls in ("COVID", "Normal"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(buf, format="PNG")
            (root / cls / f"{i:03d}.png").write_bytes(buf.getvalue())
    return root


def _peak_import_bytes(root: Path, size: int) -> int:
    tracemalloc.start()
    try:
        dataset = import_dataset(root, input_size=size, n_jobs=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dataset.images.shape == (len(dataset), size, size)
    return peak


def test_a_slow_file_holds_back_at_most_one_window_of_decoded_images(tmp_path, artifacts_root, monkeypatch):
    """The first file decodes slowly (a huge PNG): the other thread decodes on, but no further than the window
    ahead of what is written, not the whole folder."""
    root = _many_pngs(tmp_path / "many", 200)
    decode, decoded, lock = datasets_module._decode, [], threading.Lock()

    def slow_first(entry, size):
        with lock:
            first = not decoded
            decoded.append(entry.relpath)
        if first:
            ahead, stalled = -1, 0
            while stalled < 5 and ahead < 400:
                time.sleep(0.05)
                stalled, ahead = (stalled + 1, ahead) if len(decoded) - 1 == ahead else (0, len(decoded) - 1)
            slow_first.ahead = ahead
        return decode(entry, size)

    monkeypatch.setattr(datasets_module, "_decode", slow_first)
    dataset = import_dataset(root, input_size=16, n_jobs=2)
    assert len(dataset) == 400 and len(decoded) == 400
    assert 0 < slow_first.ahead < datasets_module.DECODE_WINDOW, slow_first.ahead


def test_import_memory_does_not_grow_with_the_number_of_images(tmp_path, artifacts_root, monkeypatch):
    """Rows go into a memory-mapped file as they are decoded: 4x the images, not 4x the memory. The decode
    window is made small here: how full it gets depends on how fast the writer keeps up (a full window of
    128 rows at this size is 2 MB, more than the bound), and its own bound has its own test above."""
    monkeypatch.setattr(datasets_module, "DECODE_WINDOW", 8)
    size = 128
    small = _peak_import_bytes(_many_pngs(tmp_path / "small", 60), size)
    large = _peak_import_bytes(_many_pngs(tmp_path / "large", 240), size)
    added_rows = (480 - 120) * size * size
    assert large - small < added_rows / 4, f"peak grew from {small:,} to {large:,} bytes for {added_rows:,} more"
