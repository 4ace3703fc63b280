"""Hostile and broken inputs: each gets a one-line reason, the rest of the work goes on, and
nothing is written outside the artifacts folder."""

from __future__ import annotations

import io
import os
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import engine.data.images as images_module
from engine.data.datasets import DatasetError, import_dataset, read_manifest
from engine.data.images import ImageError, decode_xray
from engine.data.splits import check_folds
from engine.results import atomic
from engine.results.artifacts import predictions_csv
from tests.synthetic import make_dataset


def png(value: int = 120, size: tuple[int, int] = (24, 24), mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says ``width`` x ``height`` (valid CRC), as a decompression bomb does."""
    data = png(size=(1, 1))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:29]
    return data[:16] + ihdr + zlib.crc32(b"IHDR" + ihdr).to_bytes(4, "big") + data[33:]


def noise_png(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(size).integers(0, 255, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


HOSTILE_FILES = {
    "truncated.png": noise_png()[:2000],
    "document.png": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    "notes.png": b"this is a text file with an image suffix\n",
    "empty.png": b"",
    "bomb.png": png_claiming(50_000, 50_000),
    "wide.png": png_claiming(9_000, 9_000),
}
EXPECTED_REASONS = {
    "truncated.png": "corrupt or truncated image",
    "document.png": "not an image Pillow can read",
    "notes.png": "not an image Pillow can read",
    "empty.png": "empty file",
    "bomb.png": "refused as a possible decompression bomb",
    "wide.png": "9000x9000 pixels is over the 64,000,000-pixel limit",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_each_hostile_file_gets_a_one_line_image_error_naming_it(name):
    with pytest.raises(ImageError) as caught:
        decode_xray(HOSTILE_FILES[name], size=32, name=name)
    message = str(caught.value)
    assert message.startswith(f"{name}: {EXPECTED_REASONS[name]}")
    assert "\n" not in message


def test_file_over_the_byte_limit_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images_module, "MAX_FILE_BYTES", 100)
    with pytest.raises(ImageError, match=r"^big\.png: 0 MB is over the 0 MB limit$"):
        decode_xray(png(size=(64, 64)) + b"\0" * 200, size=8, name="big.png")


def test_folder_import_skips_hostile_files_and_writes_only_in_artifacts(tmp_path, artifacts_root, monkeypatch):
    data = make_dataset(tmp_path / "data", n_per_class=3, size=16)
    for name, content in HOSTILE_FILES.items():
        (data / "NORMAL" / name).write_bytes(content)
    os.symlink(data / "COVID" / "img_000.png", data / "NORMAL" / "linked.png")
    os.symlink(data / "COVID", data / "Viral Pneumonia" / "linked-folder")
    (data / "Lung_Opacity").mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = {p for p in tree(tmp_path) if not p.startswith("artifacts")}

    dataset = import_dataset(data, input_size=16)

    assert len(dataset) == 9
    assert dataset.classes == ("COVID-19", "Normal", "Viral Pneumonia")
    skipped = {s["file"]: s["reason"] for s in dataset.report.skipped}
    for name, reason in EXPECTED_REASONS.items():
        assert skipped[f"NORMAL/{name}"].startswith(reason)
        assert "\n" not in skipped[f"NORMAL/{name}"]
    assert skipped["NORMAL/linked.png"] == "symbolic link not followed"
    assert skipped["Viral Pneumonia/linked-folder"] == "symbolic link not followed"
    assert {"file": "Lung_Opacity", "note": "empty folder ignored"} in dataset.report.notes
    assert {p for p in tree(tmp_path) if not p.startswith("artifacts")} == before
    assert tree(artifacts_root) == {
        "datasets",
        f"datasets/{dataset.fingerprint}",
        f"datasets/{dataset.fingerprint}/manifest.json",
        f"datasets/{dataset.fingerprint}/images-16.npy",
        f"datasets/{dataset.fingerprint}/hashes-16.json",
    }


def test_undecodable_and_spaced_file_names_import_and_write_as_utf8(tmp_path, artifacts_root):
    data = make_dataset(tmp_path / "data", n_per_class=3, size=16)
    odd = os.fsdecode(b"caf\xe9 scan 01.png")
    (data / "COVID" / odd).write_bytes(png(33))
    (data / "NORMAL" / "with  two spaces .png").write_bytes(png(66))

    dataset = import_dataset(data, input_size=16)

    assert "COVID/caf\\xe9 scan 01.png" in dataset.files
    assert "NORMAL/with  two spaces .png" in dataset.files
    manifest_bytes = next((artifacts_root / "datasets").glob("*/manifest.json")).read_bytes()
    manifest_bytes.decode("utf-8")
    assert read_manifest(dataset.fingerprint)["files"] == dataset.files
    proba = np.full((len(dataset), 3), 1 / 3)
    csv_text = predictions_csv(dataset.files, [0] * len(dataset), dataset.labels, proba, dataset.classes)
    atomic.write_text(tmp_path / "predictions.csv", csv_text)
    assert "caf\\xe9 scan 01.png" in (tmp_path / "predictions.csv").read_text(encoding="utf-8")


def _zip(path: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _good_members(top: str = "set") -> dict[str, bytes]:
    return {f"{top}/{cls}/{i}.png": png(40 * k + i) for k, cls in enumerate(("COVID", "Normal")) for i in range(3)}


def test_zip_slip_absolute_paths_and_symlinks_are_skipped_and_nothing_is_extracted(
    tmp_path, artifacts_root, monkeypatch
):
    def no_extraction(*args, **kwargs):
        raise AssertionError("a dataset zip must never be extracted")

    monkeypatch.setattr(zipfile.ZipFile, "extract", no_extraction)
    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_extraction)
    inbox = tmp_path / "inbox" / "deep"
    inbox.mkdir(parents=True)
    members = {
        **_good_members(),
        "../../evil.png": png(1),
        "set/COVID/../../../evil.png": png(2),
        "/tmp/evil-absolute.png": png(3),
        "C:/evil-drive.png": png(4),
        "set/COVID/evil.py": b"import os\n",
    }
    archive = _zip(inbox / "upload.zip", members, symlinks={"set/Normal/passwd.png": "/etc/passwd"})
    monkeypatch.chdir(inbox)
    before = tree(tmp_path)

    dataset = import_dataset(archive, input_size=16)

    assert len(dataset) == 6
    assert dataset.files[0] == "COVID/0.png"
    skipped = {s["file"]: s["reason"] for s in dataset.report.skipped}
    for name in ("../../evil.png", "set/COVID/../../../evil.png", "/tmp/evil-absolute.png", "C:/evil-drive.png"):
        assert skipped[name] == "unsafe path in archive (absolute or '..'); not read"
    assert skipped["set/Normal/passwd.png"] == "symbolic link in archive not followed"
    assert skipped["set/COVID/evil.py"] == "not a .png/.jpg/.jpeg/.dcm/.dicom file"
    after = tree(tmp_path)
    assert {p for p in after - before if not p.startswith("artifacts/")} == set()
    assert not any("evil" in p for p in after)
    assert not Path("/tmp/evil-absolute.png").exists()


def _declare_size(archive: Path, size: int, *, only: str | None = None) -> None:
    """Rewrite the uncompressed size that the central directory declares, as a forged archive does."""
    raw = bytearray(archive.read_bytes())
    start = raw.find(b"PK\x01\x02")
    while start != -1:
        name_length = int.from_bytes(raw[start + 28 : start + 30], "little")
        name = raw[start + 46 : start + 46 + name_length].decode()
        if only is None or name == only:
            raw[start + 24 : start + 28] = size.to_bytes(4, "little")
        start = raw.find(b"PK\x01\x02", start + 4)
    archive.write_bytes(bytes(raw))


def test_zip_whose_directory_declares_more_than_the_total_limit_is_refused(tmp_path, artifacts_root):
    archive = _zip(tmp_path / "big.zip", _good_members())
    _declare_size(archive, 2**32 - 2)
    with pytest.raises(DatasetError, match=r"^big\.zip: unpacks to 24 GiB, over the 16 GiB limit; refused$"):
        import_dataset(archive, input_size=16)


def test_zip_bomb_by_compression_ratio_is_refused_as_a_whole(tmp_path, artifacts_root):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in _good_members().items():
            zf.writestr(name, content)
        with zf.open("set/COVID/zeros.png", "w") as fh:
            for _ in range(80):
                fh.write(bytes(2**20))
    assert archive.stat().st_size < 2**20
    with pytest.raises(DatasetError, match=r"^bomb\.zip: compression ratio [\d,]+:1 \(a zip bomb\?\); refused$"):
        import_dataset(archive, input_size=16)


def test_single_highly_compressed_entry_is_skipped_and_the_rest_imported(tmp_path, artifacts_root):
    members = {**_good_members(), "set/Normal/padded.png": png() + bytes(3 * 2**20)}
    dataset = import_dataset(_zip(tmp_path / "some.zip", members), input_size=16)
    assert len(dataset) == 6
    reason = {s["file"]: s["reason"] for s in dataset.report.skipped}["set/Normal/padded.png"]
    assert reason.startswith("compression ratio ") and reason.endswith(":1 (zip bomb?)")


def test_entry_that_inflates_past_its_declared_size_is_not_read_past_it(tmp_path, artifacts_root):
    archive = _zip(tmp_path / "liar.zip", {**_good_members(), "set/Normal/liar.png": bytes(2 * 2**20)})
    _declare_size(archive, 1000, only="set/Normal/liar.png")
    dataset = import_dataset(archive, input_size=16)
    assert len(dataset) == 6
    reason = {s["file"]: s["reason"] for s in dataset.report.skipped}["Normal/liar.png"]
    assert reason == "could not be read (Bad CRC-32 for file 'set/Normal/liar.png')"


def test_zip_without_class_folders_is_refused(tmp_path, artifacts_root):
    archive = _zip(tmp_path / "flat.zip", {"a.png": png(1), "b.png": png(2)})
    with pytest.raises(DatasetError, match=r"^flat\.zip: images are not in class folders \(all are in the top level\)"):
        import_dataset(archive, input_size=16)
    archive = _zip(tmp_path / "wrapped.zip", {"scans/a.png": png(1), "scans/b.png": png(2)})
    with pytest.raises(DatasetError, match=r"images are not in class folders \(all are in scans\)"):
        import_dataset(archive, input_size=16)


def test_zip_with_no_images_at_all_is_refused(tmp_path, artifacts_root):
    archive = _zip(tmp_path / "docs.zip", {"set/COVID/readme.txt": b"x", "set/Normal/notes.md": b"y"})
    with pytest.raises(DatasetError, match=r"^docs\.zip: no PNG, JPEG or DICOM images found"):
        import_dataset(archive, input_size=16)


def test_not_a_zip_with_a_zip_name_is_refused(tmp_path, artifacts_root):
    (tmp_path / "fake.zip").write_bytes(b"%PDF-1.4 not a zip")
    with pytest.raises(DatasetError, match=r"^fake\.zip: not a readable zip archive"):
        import_dataset(tmp_path / "fake.zip", input_size=16)


def test_only_one_class_is_refused(tmp_path, artifacts_root):
    make_dataset(tmp_path / "one", n_per_class=4, size=16, classes=("COVID", "NORMAL"))
    for path in (tmp_path / "one" / "NORMAL").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(
        DatasetError, match=r"at least 2 class folders with readable images are needed, found COVID-19$"
    ):
        import_dataset(tmp_path / "one", input_size=16)
    assert not (artifacts_root / "datasets").exists() or not any((artifacts_root / "datasets").rglob("*.npy"))


def test_class_with_one_image_imports_then_five_folds_are_refused_with_both_numbers(tmp_path, artifacts_root):
    members = {**_good_members(), "set/Viral Pneumonia/only.png": png(250)}
    dataset = import_dataset(_zip(tmp_path / "thin.zip", members), input_size=16)
    assert dataset.report.counts == {"COVID-19": 3, "Normal": 3, "Viral Pneumonia": 1}
    with pytest.raises(ValueError, match=r"n_splits=5 .* class 'Viral Pneumonia' has 1 image\(s\)"):
        check_folds(dataset.labels, dataset.classes, n_splits=5)


def test_empty_class_folder_in_a_zip_is_noted_and_ignored(tmp_path, artifacts_root):
    archive = _zip(tmp_path / "gap.zip", _good_members())
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(zipfile.ZipInfo("set/Viral Pneumonia/"), b"")
    dataset = import_dataset(archive, input_size=16)
    assert dataset.classes == ("COVID-19", "Normal")
    assert {"file": "set/Viral Pneumonia", "note": "empty folder ignored"} in dataset.report.notes


MODES = ("1", "L", "LA", "RGB", "RGBA", "P", "I;16", "CMYK")


@st.composite
def odd_images(draw) -> bytes:
    """A valid PNG or JPEG of a random mode and size (1x1 up), noise content, maybe EXIF-rotated."""
    mode = draw(st.sampled_from(MODES))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    n_bytes = len(Image.new(mode, (width, height)).tobytes())
    img = Image.frombytes(mode, (width, height), np.random.default_rng(seed).bytes(n_bytes))
    if mode == "P":
        img.putpalette(list(np.random.default_rng(seed + 1).integers(0, 256, 768)))
    fmt = "JPEG" if mode == "CMYK" else draw(st.sampled_from(["PNG", "JPEG"] if mode in ("L", "RGB") else ["PNG"]))
    options: dict = {}
    if mode == "P" and draw(st.booleans()):
        options["transparency"] = draw(st.integers(0, 255))
    if fmt == "JPEG":
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(1, 8))
        options["exif"] = exif
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _mutated(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in flips:
        out[index % len(out)] = value
    return bytes(out)


broken_images = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=256).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
    st.binary(max_size=256).map(lambda b: b"\xff\xd8\xff\xe0" + b),
    st.tuples(
        odd_images(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)
    ).map(lambda pair: _mutated(*pair)),
    st.tuples(odd_images(), st.integers(1, 400)).map(lambda pair: pair[0][: pair[1]]),
)


@settings(max_examples=120, deadline=None)
@given(data=odd_images(), size=st.integers(1, 40))
def test_every_valid_odd_image_decodes_to_the_right_shape(data, size):
    decoded = decode_xray(data, size=size, name="odd.png")
    assert decoded.pixels.shape == (size, size)
    assert decoded.pixels.dtype == np.uint8


@settings(max_examples=200, deadline=None)
@given(data=broken_images)
def test_random_and_damaged_bytes_give_an_image_error_or_a_valid_array(data):
    try:
        decoded = decode_xray(data, size=16, name="fuzz.png")
    except ImageError as exc:
        assert str(exc).startswith("fuzz.png: ")
        assert "\n" not in str(exc)
    else:
        assert decoded.pixels.shape == (16, 16)
        assert decoded.pixels.dtype == np.uint8


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    covid=st.lists(st.one_of(odd_images(), broken_images), min_size=1, max_size=3),
    normal=st.lists(st.one_of(odd_images(), broken_images), min_size=1, max_size=3),
)
def test_import_of_random_files_gives_a_dataset_error_or_a_consistent_dataset(covid, normal):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for cls, contents in (("COVID", covid), ("Normal", normal)):
            (root / cls).mkdir(parents=True)
            for i, content in enumerate(contents):
                (root / cls / f"{i}.png").write_bytes(content)
        try:
            dataset = import_dataset(root, input_size=12, artifacts_root=Path(tmp) / "artifacts", n_jobs=1)
        except DatasetError as exc:
            assert "\n" not in str(exc)
            return
        report = dataset.report
        assert dataset.images.shape == (len(dataset), 12, 12)
        assert dataset.images.dtype == np.uint8
        assert dataset.classes == ("COVID-19", "Normal")
        assert len(dataset) + len(report.skipped) + len(report.duplicates) == len(covid) + len(normal)
        assert sorted(np.unique(dataset.labels).tolist()) == [0, 1]
