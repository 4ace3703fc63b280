"""Read one DICOM X-ray into the same 8-bit grayscale array a PNG gives, or say in one line why not.

Only the elements needed to render the image are parsed (pydicom's ``specific_tags``): patient
identifiers, dates and instance UIDs are never converted, so they cannot reach a note, a warning,
an error or a log. The pixels go through the standard's chain with pydicom's own functions: the
modality LUT (rescale slope and intercept), then the VOI LUT or window, then MONOCHROME1 is
inverted so bone is bright, as in MONOCHROME2. Without a VOI LUT or window, 8-bit values are used
as they are (like an 8-bit PNG) and wider ones are scaled from their min..max (like a 16-bit PNG).

Sizes are checked before pixels are decoded: Rows x Columns against the pixel limit, the pixel
data length against Rows x Columns, a compressed frame's own size against Rows x Columns, and a
deflated data set's inflated size against the file limit. pydicom is imported only here, and only
when a file is DICOM, so PNG and JPEG decoding never pays for it.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.data.images import ImageError

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileDataset
    from pydicom.uid import UID

PREAMBLE_BYTES = 128
MAGIC = b"DICM"
RENDERING_TAGS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
)
CONTEXT_TAGS = ("Modality", "BodyPartExamined")
RADIOGRAPHY = ("CR", "DX")
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
JPEG_SOF_MARKERS = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}
J2K_SIZ_START = b"\xff\x4f\xff\x51"


@dataclass(frozen=True)
class DicomImage:
    """A DICOM image rendered to 8 bits, full size, with what was applied and what looks wrong."""

    gray: np.ndarray
    source_mode: str
    notes: tuple[str, ...]
    warnings: tuple[str, ...]


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is a DICOM file (preamble and ``DICM``) or a bare little-endian data set."""
    return data[PREAMBLE_BYTES : PREAMBLE_BYTES + 4] == MAGIC or _is_bare_dataset(data)


def _is_bare_dataset(data: bytes) -> bool:
    """A data set written without the Part 10 header, as old modalities and some exports do.

    Only accepted when its first element is a little-endian (0008,xxxx) tag, the group every image
    data set starts with, followed by an explicit VR (two capitals) or an implicit length that fits
    in the file: PNG, JPEG and text never start like that, and the transfer syntax pydicom infers
    from it (implicit or explicit VR, little endian) is then unambiguous.
    """
    if len(data) < 8 or data[:2] != b"\x08\x00":
        return False
    vr = data[4:6]
    return (vr.isalpha() and vr.isupper()) or int.from_bytes(data[4:8], "little") <= len(data) - 8


def read_dicom(data: bytes, *, name: str, max_pixels: int, max_bytes: int) -> DicomImage:
    """Render the single grayscale frame of the DICOM file ``data`` to uint8, full size.

    Raises :class:`ImageError` (one line, no patient data) for anything that is not such an image.
    """
    ds = _read_dataset(data, name=name, max_bytes=max_bytes)
    try:
        _check_single_grayscale_image(ds, name=name, max_pixels=max_pixels)
        stored = _stored_values(ds, name=name)
        notes = _file_header_notes(ds)
        gray = _display_values(ds, stored, notes)
        photometric = str(ds.PhotometricInterpretation)
        if photometric == "MONOCHROME1":
            gray = 255 - gray
            notes.append("MONOCHROME1 inverted")
        return DicomImage(gray, f"DICOM {photometric}", tuple(notes), tuple(_context_warnings(ds)))
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{name}: too large to decode in the memory available") from None
    except Exception:  # a malformed technical element (wrong length, bad number): its value is not echoed
        raise ImageError(f"{name}: damaged DICOM image header (an image element cannot be read)") from None


def _read_dataset(data: bytes, *, name: str, max_bytes: int) -> FileDataset:
    """The file's meta information and its rendering and context elements, nothing else."""
    import pydicom

    bare = data[PREAMBLE_BYTES : PREAMBLE_BYTES + 4] != MAGIC
    try:
        if not bare:
            _check_inflated_size(data, name=name, max_bytes=max_bytes)
        ds = pydicom.dcmread(io.BytesIO(data), force=bare, specific_tags=[*RENDERING_TAGS, *CONTEXT_TAGS])
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{name}: too large to decode in the memory available") from None
    except Exception:  # pydicom raises many types (struct.error, EOFError, ValueError...) on damaged headers
        raise ImageError(f"{name}: not a readable DICOM file (truncated or damaged header)") from None
    if bare:
        ds.file_meta.TransferSyntaxUID = _bare_transfer_syntax(ds)
    elif "TransferSyntaxUID" not in ds.file_meta:
        raise ImageError(f"{name}: not a readable DICOM file (no transfer syntax after the DICM marker)")
    return ds


def _check_inflated_size(data: bytes, *, name: str, max_bytes: int) -> None:
    """Refuse a deflated data set that would inflate past ``max_bytes``, before pydicom inflates it all."""
    from pydicom.filereader import read_dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    fp.seek(PREAMBLE_BYTES + len(MAGIC))
    meta = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data[fp.tell() :], max_bytes)
    if inflater.unconsumed_tail:
        raise ImageError(
            f"{name}: deflated DICOM data inflates past the {max_bytes // 2**20} MB limit (possible decompression bomb)"
        )


def _bare_transfer_syntax(ds: FileDataset) -> UID:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit_vr, _ = ds.original_encoding
    return ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian


def _code_string(value: object) -> str | None:
    """A code string (Modality, Body Part Examined) safe to show, or None if it does not look like one."""
    text = str(value).strip() if value is not None else ""
    return text if CODE_STRING.fullmatch(text) else None


def _check_single_grayscale_image(ds: Dataset, *, name: str, max_pixels: int) -> None:
    """Refuse what is not one grayscale frame of 8 to 16 bits within the pixel limit, from the header alone."""
    if "PixelData" not in ds:
        if "Rows" in ds:
            raise ImageError(f"{name}: DICOM image header without pixel data (truncated file?)")
        modality = _code_string(ds.get("Modality"))
        kind = f"Modality {modality}: " if modality else ""
        raise ImageError(f"{name}: DICOM without pixel data ({kind}not an image, or a truncated file)")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageError(f"{name}: multi-frame DICOM ({frames} frames) is not accepted; export a single image")
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in GRAYSCALE:
        shown = _code_string(photometric) or "unknown"
        raise ImageError(
            f"{name}: colour DICOM ({shown}, {samples} samples per pixel) is not accepted; "
            "MONOCHROME1 or MONOCHROME2 expected"
        )
    missing = [keyword for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored") if ds.get(keyword) is None]
    if missing:
        raise ImageError(f"{name}: DICOM image header without {', '.join(missing)}")
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows < 1 or columns < 1:
        raise ImageError(f"{name}: DICOM image of {columns}x{rows} pixels")
    if rows * columns > max_pixels:
        raise ImageError(
            f"{name}: {columns}x{rows} pixels is over the {max_pixels:,}-pixel limit (possible decompression bomb)"
        )
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if allocated not in (8, 16) or not 1 <= stored <= allocated:
        raise ImageError(
            f"{name}: DICOM with {stored} bits stored in {allocated} allocated is not accepted (8 or 16 allocated)"
        )


def _stored_values(ds: Dataset, *, name: str) -> np.ndarray:
    """The stored pixel values, decoded by pydicom once every size has been checked."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            shown = syntax.name if syntax.is_transfer_syntax else "an unknown transfer syntax"
            raise ImageError(f"{name}: DICOM pixel data in {shown} is not supported") from None
        if not decoder.is_available:
            package = _plugin_package(syntax)
            raise ImageError(f"{name}: {syntax.name} pixel data needs {package}: pip install pylibjpeg {package}")
        _check_frame_size(ds, name=name)
    else:
        _check_pixel_data_length(ds, name=name)
    try:
        stored = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # decoder plugins raise many types; their messages are technical
        reason = "; ".join(line.strip(" \t:") for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        raise ImageError(f"{name}: DICOM pixel data could not be decoded ({reason[:300]})") from None
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise ImageError(f"{name}: DICOM pixel data decoded to {stored.shape}, not {ds.Rows}x{ds.Columns}")
    return stored


def _plugin_package(syntax: UID) -> str:
    """The pylibjpeg plugin that decodes ``syntax``: libjpeg for JPEG and JPEG-LS, openjpeg for JPEG 2000."""
    from pydicom.uid import JPEG2000TransferSyntaxes

    return "pylibjpeg-openjpeg" if syntax in JPEG2000TransferSyntaxes else "pylibjpeg-libjpeg"


def _check_pixel_data_length(ds: Dataset, *, name: str) -> None:
    """Native pixel data must hold exactly Rows x Columns values (plus the one pad byte of an odd length)."""
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    actual = len(ds.PixelData)
    if actual not in (expected, expected + expected % 2):
        raise ImageError(
            f"{name}: DICOM pixel data is {actual:,} bytes, but {ds.Columns}x{ds.Rows} pixels of "
            f"{ds.BitsAllocated} bits need {expected:,} (truncated or inconsistent file)"
        )


def _check_frame_size(ds: Dataset, *, name: str) -> None:
    """A compressed frame must declare the header's Rows x Columns: a decoder allocates what the frame says."""
    from pydicom.encaps import generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    size = _codestream_size(frame)
    if size is not None and size != (int(ds.Columns), int(ds.Rows)):
        raise ImageError(
            f"{name}: compressed frame of {size[0]}x{size[1]} pixels in a DICOM header of {ds.Columns}x{ds.Rows}"
        )


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) that a JPEG, JPEG-LS or JPEG 2000 codestream declares; None for other codecs."""
    if frame.startswith(J2K_SIZ_START) and len(frame) >= 24:
        width = int.from_bytes(frame[8:12], "big") - int.from_bytes(frame[16:20], "big")
        height = int.from_bytes(frame[12:16], "big") - int.from_bytes(frame[20:24], "big")
        return width, height
    if not frame.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 9 <= len(frame) and frame[offset] == 0xFF:
        marker = frame[offset + 1]
        if marker == 0xFF:
            offset += 1
        elif marker in JPEG_SOF_MARKERS:
            rows = int.from_bytes(frame[offset + 5 : offset + 7], "big")
            columns = int.from_bytes(frame[offset + 7 : offset + 9], "big")
            return columns, rows
        else:
            offset += 2 + int.from_bytes(frame[offset + 2 : offset + 4], "big")
    return None


def _file_header_notes(ds: FileDataset) -> list[str]:
    return ["DICOM without a file header: read as uncompressed little endian"] if ds.preamble is None else []


def _has_rescale(ds: Dataset) -> bool:
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return False
    return (float(ds.RescaleSlope), float(ds.RescaleIntercept)) != (1.0, 0.0)


def _display_values(ds: Dataset, stored: np.ndarray, notes: list[str]) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, then 8 bits; MONOCHROME1 is still as stored."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(stored, ds)
    transformed = bool(ds.get("ModalityLUTSequence")) or _has_rescale(ds)
    if ds.get("ModalityLUTSequence"):
        notes.append("DICOM: modality LUT applied")
    elif transformed:
        notes.append(
            f"DICOM: rescale slope {float(ds.RescaleSlope):g} intercept {float(ds.RescaleIntercept):g} applied"
        )
    voi = _voi_kind(ds)
    if voi is not None:
        try:
            return _apply_voi(ds, values, voi, notes)
        except (ValueError, NotImplementedError, IndexError, KeyError):
            notes.append(f"DICOM: its {voi} cannot be applied and is ignored")
    if stored.dtype == np.uint8 and int(ds.BitsStored) == 8 and not transformed:
        return stored
    lo, hi = float(values.min()), float(values.max())
    notes.append(f"DICOM: {int(ds.BitsStored)}-bit values scaled from [{lo:g}, {hi:g}] to 8 bits")
    return _to_8_bits(values, lo, hi)


def _voi_kind(ds: Dataset) -> str | None:
    """``"VOI LUT"`` or ``"window"``: which VOI step applies, the LUT first, as pydicom's ``apply_voi_lut``."""
    sequence = ds.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        return "VOI LUT"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _apply_voi(ds: Dataset, values: np.ndarray, voi: str, notes: list[str]) -> np.ndarray:
    """Apply the first VOI LUT or window and spread its output range over 0..255.

    A window's output range is what pydicom maps values far below and far above it to. A LUT's is
    0..2**n - 1 for the n bits its entries actually use: many LUTs declare 16 bits per entry but
    hold 12-bit values, and the declared depth would leave them nearly black.
    """
    from pydicom.pixels import apply_voi, apply_windowing

    if voi == "VOI LUT":
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds)
        integers = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        output = apply_voi(integers, ds)
        lo, hi = 0.0, float(2 ** int(table.max()).bit_length() - 1)
        notes.append(f"DICOM: VOI LUT applied{_first_of(len(ds.VOILUTSequence))}")
    else:
        output = apply_windowing(values, ds)
        lo, hi = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds))
        center, width = ds["WindowCenter"], ds["WindowWidth"]
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        shown = "" if function == "LINEAR" else f" {_code_string(function) or 'other'}"
        notes.append(f"DICOM: window C={_first(center):g} W={_first(width):g}{shown} applied{_first_of(center.VM)}")
    return _to_8_bits(output, lo, hi)


def _first(element: DataElement) -> float:
    return float(element.value[0] if element.VM > 1 else element.value)


def _first_of(count: int) -> str:
    return f" (first of {count})" if count > 1 else ""


def _to_8_bits(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _context_warnings(ds: Dataset) -> list[str]:
    """Warnings for a DICOM that is probably not a chest radiograph, from Modality and Body Part Examined."""
    warnings_: list[str] = []
    modality = str(ds.get("Modality") or "").strip()
    if modality and modality.upper() not in RADIOGRAPHY:
        shown = _code_string(modality) or "not CR or DX"
        warnings_.append(
            f"DICOM modality {shown}: not a radiograph (CR or DX); the models were trained on chest X-rays"
        )
    body_part = str(ds.get("BodyPartExamined") or "").strip()
    if body_part and body_part.upper() != "CHEST":
        shown = _code_string(body_part) or "not CHEST"
        warnings_.append(f"DICOM body part {shown}: not CHEST; the models were trained on chest X-rays")
    return warnings_
