"""Decode one X-ray file into a square uint8 grayscale array, or say in one line why not.

Every way in (dataset import, the classify page, the CLI) goes through :func:`decode_xray`, so
the same rules hold everywhere: Pillow's decompression-bomb limit stays on and a lower pixel limit
of our own is checked before any pixel is decoded, the EXIF orientation is applied, 16-bit images
are scaled (not clipped) to 8 bits, transparency is flattened onto black (the colour of air on an
X-ray), and animated PNGs use their first frame (the note says so). DICOM files are recognised by
their content and rendered by :mod:`engine.data.dicom` (modality LUT, window, MONOCHROME1). GIF and
every other format are refused, whatever the file is named.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000
ACCEPTED_FORMATS = {"PNG", "JPEG", "MPO"}
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class ImageError(ValueError):
    """A file that cannot be used as an X-ray; the message is one line meant for a user."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, resized image with what a user should know about how it was read."""

    pixels: np.ndarray
    source_size: tuple[int, int]  # (width, height) as displayed, after the EXIF orientation
    source_mode: str
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # found while reading (a DICOM's modality or body part); see looks_like_xray


def _to_grayscale(img: Image.Image, notes: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        notes.append(f"{mode} image scaled from [{lo:g}, {hi:g}] to 8 bits")
        if hi <= lo:
            return np.zeros(arr.shape, dtype=np.uint8)
        return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    if mode == "P" or mode in ("LA", "PA", "RGBA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def decode_xray(data: bytes, *, size: int, name: str = "image") -> DecodedImage:
    """Decode ``data`` (PNG, JPEG or DICOM bytes) into a ``(size, size)`` uint8 grayscale array.

    Raises :class:`ImageError` with a one-line reason for anything that is not a usable image.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got size={size!r}")
    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: {len(data) / 2**20:.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit")
    from engine.data import dicom  # here, not at the top: dicom imports ImageError from this module

    if dicom.is_dicom(data):
        image = dicom.read_dicom(data, name=name, max_pixels=MAX_PIXELS, max_bytes=MAX_FILE_BYTES)
        height, width = image.gray.shape
        return DecodedImage(_resized(image.gray, size), (width, height), image.source_mode, image.notes, image.warnings)
    return _decode_with_pillow(data, size=size, name=name)


def _resized(gray: np.ndarray, size: int) -> np.ndarray:
    resized = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(resized, dtype=np.uint8)


def _decode_with_pillow(data: bytes, *, size: int, name: str) -> DecodedImage:
    notes: list[str] = []
    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ACCEPTED_FORMATS:
            raise ImageError(f"{name}: {img.format or 'unknown'} files are not accepted; use PNG, JPEG or DICOM")
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ImageError(
                f"{name}: {width}x{height} pixels is over the {MAX_PIXELS:,}-pixel limit (possible decompression bomb)"
            )
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            notes.append(f"{frames} frames: the first one is used")
        if img.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        source_mode = img.mode
        if img.format == "JPEG":
            img.draft("L", (size, size))
        img = ImageOps.exif_transpose(img)
        img.load()
        gray = _to_grayscale(img, notes)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        if name.lower().endswith(DICOM_SUFFIXES):
            raise ImageError(f"{name}: not a DICOM file (no DICM marker after the 128-byte preamble)") from None
        raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG or DICOM expected)") from None
    except MemoryError:
        raise ImageError(f"{name}: too large to decode in the memory available") from None
    except Exception as exc:  # Pillow's plugins raise many types (struct.error, IndexError...) on malformed files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{name}: corrupt or truncated image ({reason})") from None
    return DecodedImage(_resized(gray, size), (width, height), source_mode, tuple(notes))


def looks_like_xray(decoded: DecodedImage, raw: bytes) -> list[str]:
    """Warnings for inputs that are probably not a chest X-ray (small, colour, odd shape, a CT...)."""
    warnings_: list[str] = list(decoded.warnings)
    width, height = decoded.source_size
    if min(width, height) < 128:
        warnings_.append(f"very small image ({width}x{height}); chest X-rays are usually 1000+ pixels wide")
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > 2.0:
        warnings_.append(f"unusual aspect ratio {ratio:.1f}:1; chest X-rays are close to square")
    if decoded.source_mode in ("RGB", "RGBA", "CMYK", "P"):
        with Image.open(io.BytesIO(raw)) as img:
            small = np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.int16)
        spread = np.abs(small - small.mean(axis=2, keepdims=True)).mean()
        if spread > 8:
            warnings_.append("colour image; chest X-rays are grayscale")
    return warnings_
