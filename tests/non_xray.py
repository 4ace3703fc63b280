"""Images that are not chest X-rays, and real chest X-rays changed in harmless ways, for the OOD tests.

The out-of-distribution score (``engine.models.ood``) must flag what is not a chest X-ray and leave
real ones alone. :func:`build` makes the first set only from images that installed packages ship
(scikit-image's and scikit-learn's sample images, pydicom's test files and, when ``pydicom-data`` is
installed, its larger ones) and from images drawn here; nothing is downloaded and no image file is
committed. Every image goes through :func:`engine.data.images.decode_xray`, as an upload does.

What could not be found: pydicom's test files hold one radiograph of another body part (a tibia,
``RG3``, in ``pydicom-data``), so that kind is crops of one image; the 16x16 ``CR`` thumbnails of its
DICOMDIR tests are too small to show anything and are left out. Its ``RG1`` is a real adult chest
radiograph: :func:`chest_radiograph` gives it as an in-distribution control, not as a non-X-ray.
Without ``pydicom-data`` only pydicom's own small files remain (two CT slices in three windows, two
MR slices, two ultrasound frames, a nuclear-medicine scan, a test pattern) and no radiograph.
:func:`augment` changes real X-rays the way a user's copy may differ (rotation, contrast, JPEG,
resolution); those should not be flagged.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.data.images import decode_xray

AUGMENTATIONS = ("rotation", "contrast", "jpeg", "low_resolution")
PHOTOGRAPHS = ("camera", "astronaut", "chelsea", "coffee", "rocket", "moon", "coins", "clock", "china", "flower")
SCIENTIFIC = ("cell", "immunohistochemistry", "hubble_deep_field", "retina", "microaneurysms")
TEXTURES = ("brick", "grass", "gravel")
DRAWINGS = ("horse", "logo", "colorwheel")
# (file, (window centre, window width) in Hounsfield units); None uses the file's own window, else its 0.5-99.5 % range.
LUNG, SOFT_TISSUE = (-600.0, 1500.0), (40.0, 400.0)
CT_SLICES = (
    ("693_UNCR.dcm", None),
    ("CT_small.dcm", SOFT_TISSUE),
    ("CT_small.dcm", LUNG),
    ("J2K_pixelrep_mismatch.dcm", None),
    ("bad_sequence.dcm", None),
    ("bad_sequence.dcm", LUNG),
    ("explicit_VR-UN.dcm", SOFT_TISSUE),
    ("explicit_VR-UN.dcm", LUNG),
    ("eCT_Supplemental.dcm", (40.0, 80.0)),
)
MR_SLICES = (
    "MR2_UNCR.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "MR_small.dcm",
    "emri_small.dcm",
    "examples_overlay.dcm",
)
ULTRASOUND = (
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "examples_jpeg2k.dcm",
    "examples_palette.dcm",
    "gdcm-US-ALOKA-16.dcm",
    "color-pl.dcm",
)
OTHER_DICOM = (("nuclear medicine", "JPEG2000.dcm"), ("pattern", "vlut_04.dcm"), ("pattern", "image_dfl.dcm"))
OTHER_RADIOGRAPH = "RG3_UNCR.dcm"  # a tibia (CR, extremity)
CHEST_RADIOGRAPH = "RG1_UNCR.dcm"  # an adult chest (CR, PA)
WORDS = ("patient", "report", "results", "normal", "findings", "chest", "date", "signed", "the", "of", "and", "page")


@dataclass(frozen=True)
class Sample:
    """One image as the model sees it: ``pixels`` (size, size) uint8, decoded as an upload is."""

    kind: str
    name: str
    pixels: np.ndarray


def build(size: int = 224, *, seed: int = 0) -> list[Sample]:
    """The non-chest-X-ray set: every kind of :func:`_sources`, decoded at ``size``."""
    rng = np.random.default_rng(seed)
    return [Sample(kind, name, _decode(_png(img), size, name)) for kind, name, img in _sources(rng)]


def chest_radiograph(size: int = 224) -> Sample | None:
    """pydicom-data's adult chest radiograph (an in-distribution control), or None when it is not installed."""
    img = _dicom_image(CHEST_RADIOGRAPH, None)
    if img is None:
        return None
    return Sample("chest radiograph", CHEST_RADIOGRAPH, _decode(_png(img), size, CHEST_RADIOGRAPH))


def augment(images: np.ndarray, kind: str, *, seed: int = 0) -> np.ndarray:
    """Real X-rays (N, S, S) uint8 changed by ``kind`` of :data:`AUGMENTATIONS`, one random draw per image."""
    rng = np.random.default_rng(seed)
    change = _AUGMENT[kind]
    size = images.shape[1]
    return np.stack([_decode(change(Image.fromarray(np.asarray(img)), rng), size, kind) for img in images])


def _decode(data: bytes, size: int, name: str) -> np.ndarray:
    return decode_xray(data, size=size, name=name).pixels


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _sources(rng: np.random.Generator) -> Iterator[tuple[str, str, Image.Image]]:
    yield from _skimage_and_sklearn(rng)
    yield from _documents(rng)
    yield from _made(rng)
    yield from _medical(rng)


def _skimage_and_sklearn(rng: np.random.Generator) -> Iterator[tuple[str, str, Image.Image]]:
    """Photographs (grey, and crops of them), scientific images, textures, drawings and patterns that ship."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    shipped = {
        name: getattr(data, name)() for name in (*PHOTOGRAPHS, *SCIENTIFIC, *TEXTURES, *DRAWINGS) if hasattr(data, name)
    }
    sample = load_sample_images()
    shipped.update({Path(path).stem: array for path, array in zip(sample.filenames, sample.images, strict=True)})
    for kind, names in (("photograph", PHOTOGRAPHS), ("scientific image", SCIENTIFIC), ("texture", TEXTURES)):
        for name in names:
            grey = _grey(shipped[name])
            yield kind, name, grey
            for i in range(3):
                yield kind, f"{name} crop {i}", _crop(grey, rng)
    for index in rng.choice(len(faces := data.lfw_subset()), size=4, replace=False):
        yield "photograph", f"lfw face {index}", _grey(faces[index])
    for name in DRAWINGS:
        yield "drawing", name, _grey(shipped[name])
    yield "pattern", "checkerboard", _grey(data.checkerboard())
    yield "pattern", "binary blobs", _grey(data.binary_blobs(rng=int(rng.integers(1 << 31))))
    yield "ct slice", "shepp-logan phantom", _grey(data.shepp_logan_phantom())
    yield "document", "page", _grey(data.page())
    yield "document", "text", _grey(data.text())


def _grey(array: np.ndarray) -> Image.Image:
    """A grey 8-bit image of any shipped array (colour, alpha, bool, float in [0, 1])."""
    array = np.asarray(array)
    if array.dtype == bool or (array.dtype.kind == "f" and array.max() <= 1.0):
        array = array * 255.0
    img = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    return img.convert("L")


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random square-ish crop (50-80 % of each side), flipped half the time."""
    width, height = img.size
    w, h = (int(side * rng.uniform(0.5, 0.8)) for side in (width, height))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    out = img.crop((left, top, left + w, top + h))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def _documents(rng: np.random.Generator, count: int = 8) -> Iterator[tuple[str, str, Image.Image]]:
    """Rendered text pages: lines of words, a title, sometimes a table; like a scanned report."""
    for i in range(count):
        page = Image.new("L", (850, 1100), int(rng.integers(225, 256)))
        draw = ImageDraw.Draw(page)
        draw.text((60, 50), "REPORT " + str(int(rng.integers(1000, 9999))), fill=0, font=ImageFont.load_default(40))
        font = ImageFont.load_default(int(rng.integers(14, 30)))
        y = 130
        while y < 1040:
            line = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 11))))
            draw.text((60, y), line, fill=int(rng.integers(0, 80)), font=font)
            y += int(font.size * rng.uniform(1.3, 2.0))
        if i % 2:
            for x in range(60, 800, 185):
                draw.line((x, 700, x, 1000), fill=0, width=2)
            for row in range(700, 1001, 50):
                draw.line((60, row, 800, row), fill=0, width=2)
        yield "document", f"rendered document {i}", page


def _made(rng: np.random.Generator) -> Iterator[tuple[str, str, Image.Image]]:
    """Noise, blank, gradient and pattern images drawn here."""
    size = 512
    for i in range(4):
        yield "noise", f"uniform noise {i}", _u8(rng.uniform(0, 255, (size, size)))
        yield "noise", f"gaussian noise {i}", _u8(rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (size, size)))
        yield "noise", f"smooth noise {i}", _u8(_smooth_noise(rng, size, scale=2 ** (i + 2)))
        yield "noise", f"salt and pepper {i}", _u8(255.0 * (rng.random((size, size)) < rng.uniform(0.05, 0.5)))
    for level in (0, 40, 128, 200, 255):
        yield "blank", f"blank {level}", Image.new("L", (size, size), level)
    ramp = np.linspace(0.0, 255.0, size)
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    radial = np.clip(np.hypot(xx, yy) / np.sqrt(2), 0, 1) * 255.0
    for name, array in (
        ("horizontal", np.tile(ramp, (size, 1))),
        ("vertical", np.tile(ramp[:, None], (1, size))),
        ("diagonal", (xx + yy + 2) / 4 * 255.0),
        ("radial, bright centre", 255.0 - radial),
        ("radial, dark centre", radial),
        ("horizontal, reversed", np.tile(ramp[::-1], (size, 1))),
    ):
        yield "gradient", f"{name} gradient", _u8(array)
    for cells in (4, 8, 16, 32):
        board = (np.add.outer(np.arange(size) * cells // size, np.arange(size) * cells // size) % 2) * 255.0
        yield "pattern", f"checkerboard {cells}x{cells}", _u8(board)
    for period in (8, 32):
        yield "pattern", f"stripes {period}px", _u8(np.tile((np.arange(size) // period % 2) * 255.0, (size, 1)))


def _smooth_noise(rng: np.random.Generator, size: int, *, scale: int) -> np.ndarray:
    coarse = Image.fromarray(rng.uniform(0, 255, (scale, scale)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def _u8(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))


def _medical(rng: np.random.Generator) -> Iterator[tuple[str, str, Image.Image]]:
    """CT, MR and ultrasound images, a nuclear-medicine scan and a tibia radiograph from pydicom's test files."""
    for name, window in CT_SLICES:
        yield from _named("ct slice", name, _dicom_image(name, window), window)
    for name in MR_SLICES:
        yield from _named("mr slice", name, _dicom_image(name, None), None)
    for name in ULTRASOUND:
        yield from _named("ultrasound", name, _dicom_image(name, None), None)
    for kind, name in OTHER_DICOM:
        yield from _named(kind, name, _dicom_image(name, None), None)
    tibia = _dicom_image(OTHER_RADIOGRAPH, None)
    if tibia is not None:
        yield "radiograph, other body part", OTHER_RADIOGRAPH, tibia
        for i in range(3):
            yield "radiograph, other body part", f"{OTHER_RADIOGRAPH} crop {i}", _crop(tibia, rng)


def _named(
    kind: str, name: str, img: Image.Image | None, window: tuple[float, float] | None
) -> Iterator[tuple[str, str, Image.Image]]:
    if img is not None:
        yield kind, name if window is None else f"{name} window {window[0]:g}/{window[1]:g}", img


def _dicom_image(name: str, window: tuple[float, float] | None) -> Image.Image | None:
    """A shipped DICOM file's first frame as a grey 8-bit image, windowed; None when the file is not installed."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    path = get_testdata_file(name, download=False)
    if path is None:
        return None
    with warnings.catch_warnings():  # test files are odd on purpose (private tags, float VOI input...)
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[0]
        photometric = ds.PhotometricInterpretation
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            return _u8(255.0 * _window(ds, pixels, window, inverted=photometric == "MONOCHROME1"))
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
    return _grey(pixels * (255.0 / max(1.0, float(pixels.max()))))


def _window(ds, pixels: np.ndarray, window: tuple[float, float] | None, *, inverted: bool) -> np.ndarray:
    """Pixel values in [0, 1]: a (centre, width) window on the modality values, else the file's own, else a range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if window is not None:
        centre, width = window
        lo, hi = centre - width / 2, centre + width / 2
    else:
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        lo, hi = np.percentile(values, [0.5, 99.5])
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return 1.0 - scaled if inverted else scaled


def _rotate(img: Image.Image, rng: np.random.Generator) -> bytes:
    """Turned by 4-10 degrees either way; the corners fill with black, as a scanner's would."""
    return _png(img.rotate(float(rng.uniform(4, 10) * rng.choice([-1, 1])), resample=Image.Resampling.BILINEAR))


def _contrast(img: Image.Image, rng: np.random.Generator) -> bytes:
    """A gamma in [0.7, 1.4], then a contrast stretch in [0.8, 1.2] about the mean."""
    values = (np.asarray(img, dtype=np.float64) / 255.0) ** rng.uniform(0.7, 1.4)
    values = (values - values.mean()) * rng.uniform(0.8, 1.2) + values.mean()
    return _png(_u8(values * 255.0))


def _jpeg(img: Image.Image, rng: np.random.Generator) -> bytes:
    """Re-encoded as a JPEG of quality 30-75, as a copy sent by e-mail or chat may be."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(30, 76)))
    return buf.getvalue()


def _low_resolution(img: Image.Image, rng: np.random.Generator) -> bytes:
    """Shrunk to 96-160 pixels a side: decoding scales it back up, as for a small upload."""
    side = int(rng.integers(96, 161))
    return _png(img.resize((side, side), Image.Resampling.BILINEAR))


_AUGMENT: dict[str, Callable[[Image.Image, np.random.Generator], bytes]] = {
    "rotation": _rotate,
    "contrast": _contrast,
    "jpeg": _jpeg,
    "low_resolution": _low_resolution,
}
