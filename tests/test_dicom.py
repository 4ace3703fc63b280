"""DICOM through decode_xray: the rendering chain, codecs, refusals, hostile files and privacy.

The DICOMs are built with pydicom from real chest X-rays of the shared data (``requires_shared``)
or, where no real image is needed, from ``tests.synthetic.make_image``; pydicom's bundled test
files (never downloaded) cover other modalities, codecs and non-image objects.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, RLELossless

import engine.data.dicom as dicom_module
import engine.data.images as images_module
from engine.data.datasets import import_dataset
from engine.data.images import IMAGE_SUFFIXES, ImageError, decode_xray, looks_like_xray
from tests.conftest import requires_shared
from tests.dicom_fixtures import (
    PATIENT,
    UIDS,
    bare_dicom_bytes,
    bundled_file,
    dicom_bytes,
    real_xray,
    real_xray_png,
    with_jpeg_lossless,
    xray_dataset,
)
from tests.synthetic import make_image

ROOT = Path(__file__).resolve().parent.parent


def synthetic(size: int = 64, seed: int = 0) -> np.ndarray:
    return make_image(1, size, np.random.default_rng(seed))


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def window_8_bits(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear window (PS3.3 C.11.2.1.2.1) onto 0..255."""
    return np.round(np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255)


def test_dicom_suffixes_are_image_suffixes():
    assert {".dcm", ".dicom"} <= set(IMAGE_SUFFIXES)


# --- real X-rays: the rendering chain ----------------------------------------------------------


@requires_shared
@pytest.mark.parametrize("size", [224, 64])
def test_monochrome2_8_bit_dicom_decodes_to_the_pixels_of_its_png(size):
    png = real_xray_png("Normal", 0)
    data = dicom_bytes(xray_dataset(real_xray("Normal", 0)))
    from_dicom = decode_xray(data, size=size, name="chest.dcm")
    from_png = decode_xray(png, size=size, name="chest.png")
    assert np.array_equal(from_dicom.pixels, from_png.pixels)
    assert from_dicom.source_size == (224, 224)
    assert from_dicom.source_mode == "DICOM MONOCHROME2"
    assert from_dicom.notes == ()
    assert from_dicom.warnings == ()
    assert looks_like_xray(from_dicom, data) == []


@requires_shared
@pytest.mark.parametrize("size", [224, 64])
def test_monochrome1_dicom_decodes_like_the_png_it_was_made_from(size):
    pixels = real_xray("COVID-19", 0)
    data = dicom_bytes(xray_dataset(255 - pixels, photometric="MONOCHROME1"))
    from_dicom = decode_xray(data, size=size, name="inverted.dcm")
    from_png = decode_xray(real_xray_png("COVID-19", 0), size=size)
    assert np.abs(from_dicom.pixels.astype(int) - from_png.pixels).max() <= 1
    assert from_dicom.notes == ("MONOCHROME1 inverted",)
    assert from_dicom.source_mode == "DICOM MONOCHROME1"


@requires_shared
def test_12_bit_window_clips_outside_and_follows_the_linear_formula_inside():
    values = real_xray("Viral Pneumonia", 0).astype(np.uint16) * 16
    values[0, :4] = [1000, 1800, 2300, 3000]
    data = dicom_bytes(xray_dataset(values, bits_stored=12, WindowCenter=2048, WindowWidth=1024))
    decoded = decode_xray(data, size=224, name="windowed.dcm")
    assert decoded.notes == ("DICOM: window C=2048 W=1024 applied",)
    # ((x - 2047.5) / 1023 + 0.5) * 255: 1800 -> 65.8, 2300 -> 190.4; 1000 and 3000 are outside
    assert decoded.pixels[0, :4].tolist() == [0, 66, 190, 255]
    assert np.all(decoded.pixels[values <= 1536] == 0)
    assert np.all(decoded.pixels[values >= 2560] == 255)
    assert np.abs(decoded.pixels - window_8_bits(values.astype(float), 2048, 1024)).max() <= 1
    assert 0.05 < np.mean((decoded.pixels > 0) & (decoded.pixels < 255)) < 0.95


@requires_shared
def test_first_of_several_windows_is_used_and_the_note_says_so():
    values = real_xray("Normal", 1).astype(np.uint16) * 16
    data = dicom_bytes(xray_dataset(values, bits_stored=12, WindowCenter=[2048, 500], WindowWidth=[1024, 200]))
    decoded = decode_xray(data, size=224)
    assert decoded.notes == ("DICOM: window C=2048 W=1024 applied (first of 2)",)
    assert np.abs(decoded.pixels - window_8_bits(values.astype(float), 2048, 1024)).max() <= 1


@requires_shared
def test_voi_lut_sequence_is_applied_in_preference_to_the_window():
    values = real_xray("Normal", 2).astype(np.uint16) * 16
    values[0, :3] = [0, 1024, 4000]
    lut = np.round(4095 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])  # declares 16 bits, holds 12-bit values
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    ds = xray_dataset(values, bits_stored=12, WindowCenter=100, WindowWidth=50)
    ds.VOILUTSequence = [item]
    decoded = decode_xray(dicom_bytes(ds), size=224, name="lut.dcm")
    assert decoded.notes == ("DICOM: VOI LUT applied",)
    expected = np.round(lut[values].astype(float) / 4095 * 255)
    assert np.abs(decoded.pixels - expected).max() <= 1
    # lut[1024] = 2048 -> 127.5 (128); lut[4000] = 4047 -> 252.0
    assert decoded.pixels[0, :3].tolist() == [0, 128, 252]


@requires_shared
def test_rescale_slope_and_intercept_are_applied_before_the_window():
    stored = real_xray("Normal", 3).astype(np.uint16) * 16
    ds = xray_dataset(
        stored, bits_stored=12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=1024, WindowWidth=1024
    )
    decoded = decode_xray(dicom_bytes(ds), size=224)
    assert decoded.notes == ("DICOM: rescale slope 1 intercept -1024 applied", "DICOM: window C=1024 W=1024 applied")
    assert np.abs(decoded.pixels - window_8_bits(stored.astype(float) - 1024, 1024, 1024)).max() <= 1


@requires_shared
def test_signed_pixels_with_a_negative_slope_come_out_inverted():
    pixels = real_xray("COVID-19", 1)
    stored = pixels.astype(np.int16) * 8 - 1024  # -1024..1016: 12-bit signed
    ds = xray_dataset(stored, bits_stored=12, RescaleSlope=-1, RescaleIntercept=0)
    assert ds.PixelRepresentation == 1
    decoded = decode_xray(dicom_bytes(ds), size=224)
    lo, hi = -int(stored.max()), -int(stored.min())
    assert decoded.notes == (
        "DICOM: rescale slope -1 intercept 0 applied",
        f"DICOM: 12-bit values scaled from [{lo}, {hi}] to 8 bits",
    )
    expected = np.round((pixels.max() - pixels.astype(float)) / (pixels.max() - pixels.min()) * 255)
    assert np.abs(decoded.pixels - expected).max() <= 1


@requires_shared
def test_signed_12_bit_pixels_without_a_window_are_scaled_from_their_min_max():
    pixels = real_xray("Viral Pneumonia", 1)
    stored = pixels.astype(np.int16) * 16 - 2048
    decoded = decode_xray(dicom_bytes(xray_dataset(stored, bits_stored=12)), size=224)
    assert decoded.notes == (f"DICOM: 12-bit values scaled from [{stored.min()}, {stored.max()}] to 8 bits",)
    expected = np.round((pixels - float(pixels.min())) / (pixels.max() - pixels.min()) * 255)
    assert np.abs(decoded.pixels - expected).max() <= 1
    assert (decoded.pixels.min(), decoded.pixels.max()) == (0, 255)


@requires_shared
@pytest.mark.parametrize("bits_stored", [8, 12])
def test_jpeg_lossless_decodes_through_pylibjpeg_to_the_uncompressed_pixels(bits_stored):
    pixels = real_xray("Normal", 4)
    stored = pixels if bits_stored == 8 else pixels.astype(np.uint16) * 16
    plain = dicom_bytes(xray_dataset(stored, bits_stored=bits_stored))
    compressed = dicom_bytes(with_jpeg_lossless(xray_dataset(stored, bits_stored=bits_stored)))
    read_back = pydicom.dcmread(io.BytesIO(compressed))
    assert read_back.file_meta.TransferSyntaxUID == JPEGLosslessSV1 == "1.2.840.10008.1.2.4.70"
    assert np.array_equal(read_back.pixel_array, stored)
    from_jpeg = decode_xray(compressed, size=224, name="lossless.dcm")
    assert np.array_equal(from_jpeg.pixels, decode_xray(plain, size=224).pixels)
    assert len(compressed) < len(plain)


@requires_shared
def test_rle_lossless_from_pydicoms_own_encoder_decodes_to_the_same_pixels():
    pixels = real_xray("COVID-19", 2)
    ds = xray_dataset(pixels)
    ds.compress(RLELossless)
    decoded = decode_xray(dicom_bytes(ds), size=224, name="rle.dcm")
    assert np.array_equal(decoded.pixels, pixels)


@requires_shared
@pytest.mark.parametrize("implicit_vr", [True, False])
def test_dicom_without_preamble_or_file_meta_is_read_as_little_endian(implicit_vr):
    pixels = real_xray("Normal", 5)
    data = bare_dicom_bytes(xray_dataset(pixels), implicit_vr=implicit_vr)
    assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00"
    decoded = decode_xray(data, size=224, name="bare.dcm")
    assert np.array_equal(decoded.pixels, pixels)
    assert decoded.notes == ("DICOM without a file header: read as uncompressed little endian",)


# --- synthetic images: what needs no real X-ray ---------------------------------------------------


def test_monochrome1_is_inverted_after_the_window():
    values = synthetic().astype(np.uint16) * 16
    window = {"WindowCenter": 1600, "WindowWidth": 2000}
    mono2 = decode_xray(dicom_bytes(xray_dataset(values, bits_stored=12, **window)), size=64)
    mono1 = decode_xray(dicom_bytes(xray_dataset(values, bits_stored=12, photometric="MONOCHROME1", **window)), size=64)
    assert np.array_equal(mono1.pixels, 255 - mono2.pixels)
    assert mono1.notes == ("DICOM: window C=1600 W=2000 applied", "MONOCHROME1 inverted")


def test_unusable_window_is_ignored_with_a_note_and_8_bit_values_kept():
    pixels = synthetic()
    decoded = decode_xray(dicom_bytes(xray_dataset(pixels, WindowCenter=40, WindowWidth=0)), size=64)
    assert decoded.notes == ("DICOM: its window cannot be applied and is ignored",)
    assert np.array_equal(decoded.pixels, pixels)


def test_bits_above_bits_stored_are_ignored():
    values = synthetic().astype(np.uint16) * 16
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    clean = decode_xray(dicom_bytes(xray_dataset(values, bits_stored=12, **window)), size=64)
    ds = xray_dataset(values, bits_stored=12, **window)
    ds.PixelData = (values | 0xF000).astype("<u2").tobytes()  # overlay bits of old CR files
    assert np.array_equal(decode_xray(dicom_bytes(ds), size=64).pixels, clean.pixels)


def test_sixteen_bit_pixels_without_a_window_use_the_full_8_bit_range():
    values = (synthetic().astype(np.uint16) * 200 + 3000).astype(np.uint16)
    decoded = decode_xray(dicom_bytes(xray_dataset(values)), size=64)
    assert (decoded.pixels.min(), decoded.pixels.max()) == (0, 255)
    assert decoded.notes == (f"DICOM: 16-bit values scaled from [{values.min()}, {values.max()}] to 8 bits",)


def test_modality_and_body_part_warnings_come_back_through_looks_like_xray():
    data = dicom_bytes(xray_dataset(synthetic(256), modality="CT", body_part="KNEE"))
    decoded = decode_xray(data, size=32, name="knee.dcm")
    expected = (
        "DICOM modality CT: not a radiograph (CR or DX); the models were trained on chest X-rays",
        "DICOM body part KNEE: not CHEST; the models were trained on chest X-rays",
    )
    assert decoded.warnings == expected
    assert looks_like_xray(decoded, data) == list(expected)


@pytest.mark.parametrize(("modality", "body_part"), [("CR", "CHEST"), ("DX", None), ("DX", "chest")])
def test_chest_radiographs_get_no_warning(modality, body_part):
    data = dicom_bytes(xray_dataset(synthetic(256), modality=modality, body_part=body_part))
    assert looks_like_xray(decode_xray(data, size=32), data) == []


def test_dataset_import_reads_dcm_files_like_pngs(tmp_path, artifacts_root):
    rng = np.random.default_rng(7)
    expected = {}
    for label, cls in enumerate(("COVID", "NORMAL")):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = make_image(label, 32, rng)
            photometric = "MONOCHROME1" if i == 0 else "MONOCHROME2"
            stored = 255 - pixels if i == 0 else pixels
            (tmp_path / "set" / cls / f"{i}.dcm").write_bytes(
                dicom_bytes(xray_dataset(stored, photometric=photometric))
            )
            expected[f"{cls}/{i}.dcm"] = decode_xray(png_bytes(pixels), size=16).pixels
    dataset = import_dataset(tmp_path / "set", input_size=16, n_jobs=1)
    assert len(dataset) == 6
    assert dataset.report.skipped == []
    for rel, image in zip(dataset.files, dataset.images, strict=True):
        assert np.array_equal(image, expected[rel])
    assert {"file": "COVID/0.dcm", "note": "MONOCHROME1 inverted"} in dataset.report.notes


def test_png_decoding_does_not_import_pydicom():
    code = (
        "import io, sys; from PIL import Image; from engine.data.images import decode_xray; "
        "buf = io.BytesIO(); Image.new('L', (8, 8), 9).save(buf, 'PNG'); decode_xray(buf.getvalue(), size=4); "
        "print('pydicom' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- pydicom's bundled test files ---------------------------------------------------------------


def test_ct_decodes_with_its_rescale_and_a_modality_warning():
    data = bundled_file("CT_small.dcm").read_bytes()
    decoded = decode_xray(data, size=32, name="CT_small.dcm")
    assert decoded.source_size == (128, 128)
    assert decoded.notes == (
        "DICOM: rescale slope 1 intercept -1024 applied",
        "DICOM: 16-bit values scaled from [-896, 1167] to 8 bits",
    )
    assert looks_like_xray(decoded, data) == [
        "DICOM modality CT: not a radiograph (CR or DX); the models were trained on chest X-rays"
    ]


def test_mr_decodes_with_its_window_and_a_modality_warning():
    path = bundled_file("MR_small.dcm")
    decoded = decode_xray(path.read_bytes(), size=64, name="MR_small.dcm")
    assert decoded.notes == ("DICOM: window C=600 W=1600 applied",)
    assert decoded.warnings == (
        "DICOM modality MR: not a radiograph (CR or DX); the models were trained on chest X-rays",
    )
    stored = pydicom.dcmread(path).pixel_array.astype(float)
    assert np.abs(decoded.pixels - window_8_bits(stored, 600, 1600)).max() <= 1


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",  # RLE Lossless, pydicom's own decoder
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless, pylibjpeg-libjpeg
        "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless, Pillow's OpenJPEG
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
    ],
)
def test_every_encoding_of_mr_small_decodes_to_the_same_pixels(name):
    reference = decode_xray(bundled_file("MR_small.dcm").read_bytes(), size=64).pixels
    assert np.array_equal(decode_xray(bundled_file(name).read_bytes(), size=64, name=name).pixels, reference)


def test_deflated_dicom_decodes():
    decoded = decode_xray(bundled_file("image_dfl.dcm").read_bytes(), size=32, name="image_dfl.dcm")
    assert decoded.source_size == (512, 512)
    assert decoded.warnings == (
        "DICOM modality OT: not a radiograph (CR or DX); the models were trained on chest X-rays",
    )


BUNDLED_REFUSALS = {
    "rtdose.dcm": "multi-frame DICOM (15 frames) is not accepted; export a single image",
    "test-SR.dcm": "DICOM without pixel data (Modality SR: not an image, or a truncated file)",
    "waveform_ecg.dcm": "DICOM without pixel data (Modality ECG: not an image, or a truncated file)",
    "SC_rgb_rle.dcm": "colour DICOM (RGB, 3 samples per pixel) is not accepted; MONOCHROME1 or MONOCHROME2 expected",
    "examples_palette.dcm": "colour DICOM (PALETTE COLOR, 1 samples per pixel) is not accepted; "
    "MONOCHROME1 or MONOCHROME2 expected",
    "liver_1frame.dcm": "DICOM with 1 bits stored in 1 allocated is not accepted (8 or 16 allocated)",
    "rtdose_1frame.dcm": "DICOM with 32 bits stored in 32 allocated is not accepted (8 or 16 allocated)",
    "meta_missing_tsyntax.dcm": "not a readable DICOM file (no transfer syntax after the DICM marker)",
    "MR_truncated.dcm": "DICOM pixel data is 8,130 bytes, but 64x64 pixels of 16 bits need 8,192 "
    "(truncated or inconsistent file)",
    "JPEG2000-embedded-sequence-delimiter.dcm": "compressed frame of 3722445056x1024 pixels in a DICOM header "
    "of 256x1024",
    "ExplVR_LitEndNoMeta.dcm": "DICOM without pixel data (Modality RTPLAN: not an image, or a truncated file)",
    "ExplVR_BigEndNoMeta.dcm": "not a DICOM file (no DICM marker after the 128-byte preamble)",
}


@pytest.mark.parametrize("name", sorted(BUNDLED_REFUSALS))
def test_bundled_objects_that_are_not_one_grayscale_image_are_refused(name):
    with pytest.raises(ImageError) as caught:
        decode_xray(bundled_file(name).read_bytes(), size=32, name=name)
    assert str(caught.value) == f"{name}: {BUNDLED_REFUSALS[name]}"


def test_undecodable_jpeg_gets_the_decoders_reasons_on_one_line():
    with pytest.raises(ImageError) as caught:
        decode_xray(bundled_file("JPEG-lossy.dcm").read_bytes(), size=32, name="JPEG-lossy.dcm")
    message = str(caught.value)
    assert message.startswith("JPEG-lossy.dcm: DICOM pixel data could not be decoded (Unable to decode")
    assert "libjpeg error code" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("syntax", "data", "package"),
    [
        (JPEGLosslessSV1, lambda: dicom_bytes(with_jpeg_lossless(xray_dataset(synthetic()))), "pylibjpeg-libjpeg"),
        (JPEG2000Lossless, lambda: bundled_file("MR_small_jp2klossless.dcm").read_bytes(), "pylibjpeg-openjpeg"),
    ],
)
def test_compressed_syntax_without_its_plugin_names_the_package_to_install(monkeypatch, syntax, data, package):
    monkeypatch.setattr(get_decoder(syntax), "_available", {})
    with pytest.raises(ImageError) as caught:
        decode_xray(data(), size=32, name="scan.dcm")
    assert str(caught.value) == f"scan.dcm: {syntax.name} pixel data needs {package}: pip install pylibjpeg {package}"


# --- hostile files ------------------------------------------------------------------------------


def ds_of(data: bytes) -> pydicom.FileDataset:
    return pydicom.dcmread(io.BytesIO(data))


def _good() -> bytes:
    return dicom_bytes(xray_dataset(synthetic()))


def _declaring(**elements) -> bytes:
    ds = xray_dataset(synthetic())
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return dicom_bytes(ds)


HOSTILE_DICOM = {
    "truncated.dcm": lambda: _good()[:-1000],
    "truncated-header.dcm": lambda: _good()[:300],
    "truncated-jpeg.dcm": lambda: dicom_bytes(with_jpeg_lossless(xray_dataset(synthetic())))[:2000],
    "huge.dcm": lambda: _declaring(Rows=60000, Columns=60000),
    "mismatch.dcm": lambda: _declaring(Rows=65),
    "bits.dcm": lambda: _declaring(BitsAllocated=32),
    "multiframe.dcm": lambda: dicom_bytes(xray_dataset(np.stack([synthetic()] * 3))),
    "forged-jpeg.dcm": lambda: dicom_bytes(with_jpeg_lossless(xray_dataset(synthetic()), declared_size=(60000, 60000))),
    "png-inside.dcm": lambda: b"\0" * 128 + b"DICM" + png_bytes(synthetic()),
    "text.dcm": lambda: b"Patient notes, not an image.\n" * 20,
}
HOSTILE_REASONS = {
    "truncated.dcm": "DICOM pixel data is 3,096 bytes, but 64x64 pixels of 8 bits need 4,096 "
    "(truncated or inconsistent file)",
    "truncated-header.dcm": "DICOM without pixel data (not an image, or a truncated file)",
    "truncated-jpeg.dcm": "DICOM without pixel data (not an image, or a truncated file)",
    "huge.dcm": "60000x60000 pixels is over the 64,000,000-pixel limit (possible decompression bomb)",
    "mismatch.dcm": "DICOM pixel data is 4,096 bytes, but 64x65 pixels of 8 bits need 4,160 "
    "(truncated or inconsistent file)",
    "bits.dcm": "DICOM with 8 bits stored in 32 allocated is not accepted (8 or 16 allocated)",
    "multiframe.dcm": "multi-frame DICOM (3 frames) is not accepted; export a single image",
    "forged-jpeg.dcm": "compressed frame of 60000x60000 pixels in a DICOM header of 64x64",
    "png-inside.dcm": "not a readable DICOM file (no transfer syntax after the DICM marker)",
    "text.dcm": "not a DICOM file (no DICM marker after the 128-byte preamble)",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_DICOM))
def test_each_hostile_dicom_gets_its_one_line_image_error(name):
    with pytest.raises(ImageError) as caught:
        decode_xray(HOSTILE_DICOM[name](), size=32, name=name)
    assert str(caught.value) == f"{name}: {HOSTILE_REASONS[name]}"


def test_pixel_limit_is_checked_before_any_pixel_is_decoded(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data decoded before the pixel limit was checked")

    monkeypatch.setattr(dicom_module, "_stored_values", no_decoding)
    with pytest.raises(ImageError, match=r"^huge\.dcm: 60000x60000 pixels is over the 64,000,000-pixel limit"):
        decode_xray(HOSTILE_DICOM["huge.dcm"](), size=32, name="huge.dcm")


def test_dicom_over_the_byte_limit_is_refused_before_pydicom_reads_it(monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a file over the byte limit reached pydicom")

    monkeypatch.setattr(images_module, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(dicom_module, "read_dicom", no_reading)
    with pytest.raises(ImageError, match=r"^big\.dcm: 0 MB is over the 0 MB limit$"):
        decode_xray(_good(), size=8, name="big.dcm")


def test_deflated_data_set_that_inflates_past_the_limit_is_refused_before_inflating(monkeypatch):
    ds = xray_dataset(np.zeros((1024, 1024), np.uint16), bits_stored=12)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    data = dicom_bytes(ds)
    assert len(data) < 10_000
    monkeypatch.setattr(images_module, "MAX_FILE_BYTES", 2**20)
    with pytest.raises(ImageError) as caught:
        decode_xray(data, size=8, name="bomb.dcm")
    assert (
        str(caught.value) == "bomb.dcm: deflated DICOM data inflates past the 1 MB limit (possible decompression bomb)"
    )


@settings(max_examples=80, deadline=None)
@given(
    cut=st.integers(0, 5000),
    flips=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), max_size=4),
    compressed=st.booleans(),
)
def test_damaged_dicom_gives_an_image_error_or_a_valid_array(cut, flips, compressed):
    ds = xray_dataset(synthetic(32))
    data = bytearray(dicom_bytes(with_jpeg_lossless(ds) if compressed else ds))
    for index, value in flips:
        data[index % len(data)] = value
    try:
        decoded = decode_xray(bytes(data[: max(cut, 1)]), size=16, name="fuzz.dcm")
    except ImageError as exc:
        assert str(exc).startswith("fuzz.dcm: ")
        assert "\n" not in str(exc)
    else:
        assert decoded.pixels.shape == (16, 16)
        assert decoded.pixels.dtype == np.uint8


# --- privacy --------------------------------------------------------------------------------------


def test_patient_data_and_uids_reach_no_note_warning_error_or_log(caplog, recwarn):
    caplog.set_level(logging.DEBUG)
    secrets = [*PATIENT.values(), *UIDS.values(), "Qwertzuiop", "Zyxwvut", "5550199"]
    pixels = synthetic(64)
    good = dicom_bytes(xray_dataset(pixels, modality="CT", body_part="KNEE"))
    messages = []
    for data in (good, _declaring(WindowCenter=40, WindowWidth=0), bare_dicom_bytes(ds_of(good), implicit_vr=True)):
        decoded = decode_xray(data, size=32, name="scan.dcm")
        messages += [*decoded.notes, *looks_like_xray(decoded, data)]
    assert "DICOM: its window cannot be applied and is ignored" in messages
    assert "DICOM body part KNEE: not CHEST; the models were trained on chest X-rays" in messages
    broken = [
        good[:-500],
        good[:400],
        _declaring(Rows=60000, Columns=60000),
        _declaring(Columns=63),
        _declaring(SamplesPerPixel=3, PhotometricInterpretation="RGB"),
        dicom_bytes(xray_dataset(np.stack([pixels, pixels]))),
        dicom_bytes(with_jpeg_lossless(xray_dataset(pixels), declared_size=(9, 9))),
        dicom_bytes(with_jpeg_lossless(xray_dataset(pixels)))[:-300],
    ]
    for data in broken:
        with pytest.raises(ImageError) as caught:
            decode_xray(data, size=32, name="scan.dcm")
        messages.append(str(caught.value))
    seen = "\n".join([*messages, caplog.text, *(str(w.message) for w in recwarn)])
    assert "scan.dcm: 60000x60000 pixels" in seen
    for secret in secrets:
        assert secret not in seen
    assert PATIENT["PatientName"] in good.decode("latin-1")
