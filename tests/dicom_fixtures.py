"""DICOM files for tests, built with pydicom from real chest X-rays (or any 8/16-bit array).

Everything is fixed (UIDs, dates, names), so the bytes are the same on every run. The patient
elements hold distinctive strings, so a test can look for them in every message.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from engine import settings

REAL_XRAYS = settings.shared_dir() / "data" / "covid19-radiography-paper"
PATIENT = {
    "PatientName": "Qwertzuiop^Zyxwvut",
    "PatientID": "PID-5550199-XRAY",
    "PatientBirthDate": "19310417",
    "OtherPatientIDs": "ALT-77881234",
    "InstitutionName": "Saint Nowhere Infirmary",
    "AccessionNumber": "ACC99007733",
}
UIDS = {
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.71001",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.71002",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.71003",
}
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def real_xray(cls: str = "Normal", index: int = 0) -> np.ndarray:
    """A real 224x224 8-bit chest X-ray of the shared data set (tests using it are ``requires_shared``)."""
    path = sorted((REAL_XRAYS / cls).glob("*.png"))[index]
    return np.asarray(Image.open(path), dtype=np.uint8)


def real_xray_png(cls: str = "Normal", index: int = 0) -> bytes:
    return sorted((REAL_XRAYS / cls).glob("*.png"))[index].read_bytes()


def xray_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    modality: str = "DX",
    body_part: str | None = "CHEST",
    **elements,
) -> FileDataset:
    """A DX image storage data set holding ``pixels`` (uint8, uint16 or int16), with patient data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = UIDS["SOPInstanceUID"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_IMAGE_STORAGE
    for keyword, value in {**PATIENT, **UIDS}.items():
        setattr(ds, keyword, value)
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8, generate_instance_uid=False)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: FileDataset) -> bytes:
    """The Part 10 file (preamble, DICM, file meta information, data set)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def bare_dicom_bytes(ds: FileDataset, *, implicit_vr: bool) -> bytes:
    """The data set alone, little endian, without preamble, DICM or file meta information."""
    bare = pydicom.Dataset(ds)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, bare, implicit_vr=implicit_vr, little_endian=True)
    return buf.getvalue()


def with_jpeg_lossless(ds: FileDataset, *, declared_size: tuple[int, int] | None = None) -> FileDataset:
    """``ds`` with its pixel data encoded as JPEG Lossless, first-order prediction (1.2.840.10008.1.2.4.70).

    ``declared_size`` (width, height) overwrites the size in the codestream's frame header, as a
    forged file would, leaving the DICOM header's Rows and Columns as they are.
    """
    codestream = encode_jpeg_lossless_sv1(ds.pixel_array, precision=int(ds.BitsStored))
    if declared_size is not None:
        width, height = declared_size
        codestream = codestream[:7] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + codestream[11:]
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return ds


def encode_jpeg_lossless_sv1(pixels: np.ndarray, *, precision: int) -> bytes:
    """A JPEG Lossless codestream (ITU-T T.81 Annex H: process 14, predictor 1) of one component.

    pydicom has no JPEG Lossless encoder and pylibjpeg-libjpeg only decodes, so the test encodes
    it: left-neighbour prediction (the row above for the first column), differences modulo 2**16,
    one Huffman table giving each of the 17 difference categories a 5-bit code. The decoder
    under test (libjpeg) is independent of it, so a round trip that matches checks both.
    """
    values = pixels.astype(np.int64)
    predicted = np.empty_like(values)
    predicted[0, 0] = 1 << (precision - 1)
    predicted[0, 1:] = values[0, :-1]
    predicted[1:, 0] = values[:-1, 0]
    predicted[1:, 1:] = values[1:, :-1]
    differences = (values - predicted + 32768) % 65536 - 32768
    bits = _HuffmanBits()
    for difference in differences.ravel().tolist():
        category = 16 if difference == -32768 else abs(difference).bit_length()
        bits.put(category, 5)
        if 0 < category < 16:
            bits.put(difference if difference > 0 else difference - 1, category)
    rows, columns = pixels.shape
    frame_header = bytes(
        [0xFF, 0xC3, 0, 11, precision, *rows.to_bytes(2, "big"), *columns.to_bytes(2, "big"), 1, 1, 0x11, 0]
    )
    code_counts = [0, 0, 0, 0, 17] + [0] * 11
    huffman_table = bytes([0xFF, 0xC4, 0, 36, 0x00, *code_counts, *range(17)])
    scan_header = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + frame_header + huffman_table + scan_header + bits.flush() + b"\xff\xd9"


class _HuffmanBits:
    """Entropy-coded bytes, most significant bit first, with a 0x00 stuffed after every 0xFF."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def put(self, value: int, length: int) -> None:
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.count += length
        while self.count >= 8:
            self.count -= 8
            byte = (self.acc >> self.count) & 0xFF
            self.out += b"\xff\x00" if byte == 0xFF else bytes([byte])
        self.acc &= (1 << self.count) - 1

    def flush(self) -> bytes:
        if self.count:
            self.put((1 << (8 - self.count)) - 1, 8 - self.count)
        return bytes(self.out)


def bundled_file(name: str) -> Path:
    """A test file that ships inside pydicom's own package: never downloaded, never from pydicom-data."""
    path = pydicom.data.get_testdata_file(name, download=False)
    own = (Path(pydicom.data.__file__).parent / "test_files").resolve()
    found = path is not None and Path(path).resolve().parent == own  # resolved: a venv may be a symlink
    assert found, f"{name} is not bundled with pydicom {pydicom.__version__}"
    return Path(path)
