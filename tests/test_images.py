"""decode_xray on every image kind a user may bring: modes, bit depths, orientation, frames."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.data.images import DecodedImage, ImageError, decode_xray, looks_like_xray


def encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_grayscale_png_is_resized_to_a_square_uint8_array():
    data = encode(Image.new("L", (50, 30), 77))
    decoded = decode_xray(data, size=16, name="flat.png")
    assert isinstance(decoded, DecodedImage)
    assert decoded.pixels.shape == (16, 16)
    assert decoded.pixels.dtype == np.uint8
    assert np.all(decoded.pixels == 77)
    assert decoded.source_size == (50, 30)
    assert decoded.source_mode == "L"
    assert decoded.notes == ()
    assert decoded.warnings == ()


def test_sixteen_bit_png_is_scaled_to_the_full_8_bit_range_not_clipped():
    ramp = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 30 + 1000).astype(np.uint16)
    decoded = decode_xray(encode(Image.fromarray(ramp)), size=40, name="ramp16.png")
    assert decoded.source_mode.startswith("I")
    assert decoded.pixels.min() == 0
    assert decoded.pixels.max() == 255
    assert len(np.unique(decoded.pixels)) > 200
    assert "scaled from [1000, 48970] to 8 bits" in decoded.notes[0]


def test_constant_sixteen_bit_image_gives_black_not_a_division_by_zero():
    flat = np.full((20, 20), 4000, dtype=np.uint16)
    assert np.all(decode_xray(encode(Image.fromarray(flat)), size=8).pixels == 0)


def test_cmyk_jpeg_is_converted_to_gray():
    data = encode(Image.new("CMYK", (48, 48), (0, 0, 0, 100)), "JPEG", quality=95)
    decoded = decode_xray(data, size=16, name="cmyk.jpg")
    assert decoded.source_mode == "CMYK"
    assert abs(float(decoded.pixels.mean()) - 155) < 3


def test_palette_png_transparency_is_flattened_onto_black():
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
    img.paste(0, (0, 0, 10, 20))
    decoded = decode_xray(encode(img, transparency=0), size=20, name="palette.png")
    assert decoded.source_mode == "P"
    assert np.all(decoded.pixels[:, :9] == 0)
    assert np.all(decoded.pixels[:, 11:] == 200)


def test_gray_with_alpha_is_composited_onto_black():
    decoded = decode_xray(encode(Image.new("LA", (10, 10), (200, 128))), size=10)
    assert np.all(np.abs(decoded.pixels.astype(int) - 100) <= 1)


def test_animated_png_uses_its_first_frame_and_says_so():
    frames = [Image.new("L", (30, 30), v) for v in (10, 200, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    decoded = decode_xray(buf.getvalue(), size=12, name="cine.png")
    assert np.all(decoded.pixels == 10)
    assert decoded.notes == ("3 frames: the first one is used",)


def test_gif_is_refused_even_when_named_png():
    frames = [Image.new("L", (30, 30), v) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"^anim\.png: GIF files are not accepted; use PNG, JPEG or DICOM$"):
        decode_xray(buf.getvalue(), size=12, name="anim.png")


@pytest.mark.parametrize(
    ("orientation", "bright"),
    [(1, "left"), (3, "right"), (6, "top"), (8, "bottom")],
)
def test_exif_orientation_is_applied(orientation: int, bright: str):
    stored = np.zeros((40, 80), dtype=np.uint8)
    stored[:, :40] = 230
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    decoded = decode_xray(data, size=32, name="rotated.jpg")
    px = decoded.pixels.astype(float)
    halves = {
        "left": px[:, :16].mean() - px[:, 16:].mean(),
        "right": px[:, 16:].mean() - px[:, :16].mean(),
        "top": px[:16].mean() - px[16:].mean(),
        "bottom": px[16:].mean() - px[:16].mean(),
    }
    assert halves[bright] > 150
    assert decoded.source_size == ((40, 80) if orientation in (6, 8) else (80, 40))


def test_large_jpeg_decoded_at_reduced_scale_matches_the_full_decode():
    rng = np.random.default_rng(3)
    big = np.kron(rng.integers(0, 255, (16, 16)), np.ones((64, 64))).astype(np.uint8)
    data = encode(Image.fromarray(big), "JPEG", quality=95)
    decoded = decode_xray(data, size=64, name="big.jpg")
    reference = np.asarray(Image.fromarray(big).resize((64, 64), Image.Resampling.BILINEAR), dtype=float)
    assert decoded.source_size == (1024, 1024)
    assert np.abs(decoded.pixels - reference).mean() < 6


def test_size_must_be_positive_and_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"size must be a positive number of pixels, got size=0"):
        decode_xray(encode(Image.new("L", (4, 4))), size=0)


def test_looks_like_xray_warns_about_small_colour_and_odd_shapes():
    rgb = Image.new("RGB", (300, 100), (220, 30, 30))
    data = encode(rgb)
    warnings = looks_like_xray(decode_xray(data, size=16), data)
    assert any("very small image (300x100)" in w for w in warnings)
    assert any("unusual aspect ratio 3.0:1" in w for w in warnings)
    assert any("colour image" in w for w in warnings)


def test_looks_like_xray_is_quiet_for_a_large_gray_rgb_image():
    data = encode(Image.new("RGB", (512, 480), (90, 90, 90)))
    assert looks_like_xray(decode_xray(data, size=16), data) == []


def test_warnings_recorded_while_decoding_come_back_first_through_looks_like_xray():
    data = encode(Image.new("L", (300, 100), 90))
    decoded = decode_xray(data, size=16)
    recorded = DecodedImage(decoded.pixels, decoded.source_size, decoded.source_mode, (), ("DICOM modality CT: ...",))
    assert looks_like_xray(recorded, data)[0] == "DICOM modality CT: ..."
    assert looks_like_xray(recorded, data)[1:] == looks_like_xray(decoded, data)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("notes.png", "not an image Pillow can read (PNG, JPEG or DICOM expected)"),
        ("notes.jpg", "not an image Pillow can read (PNG, JPEG or DICOM expected)"),
        ("notes.dcm", "not a DICOM file (no DICM marker after the 128-byte preamble)"),
        ("NOTES.DICOM", "not a DICOM file (no DICM marker after the 128-byte preamble)"),
    ],
)
def test_unreadable_file_is_told_what_was_expected_by_its_suffix(name, reason):
    with pytest.raises(ImageError) as caught:
        decode_xray(b"plain text, not an image\n" * 10, size=8, name=name)
    assert str(caught.value) == f"{name}: {reason}"


def test_png_named_dcm_is_decoded_by_its_content():
    decoded = decode_xray(encode(Image.new("L", (20, 20), 140)), size=8, name="actually-a-png.dcm")
    assert decoded.source_mode == "L"
    assert np.all(decoded.pixels == 140)
