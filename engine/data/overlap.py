"""Is an "external" image really unseen? Identical and near-duplicate images against a study's dataset.

Two hashes per decoded image (at the study's input size, as the model sees it):

- ``pixels``: sha1 of the decoded uint8 pixels: identical content, however the file was named or
  re-saved losslessly;
- ``perceptual``: a 256-bit DCT perceptual hash (``imagehash.phash``, hash size 16). Measured on
  the 2,897 images of covid19-radiography-paper (``docs/security.md``): two different X-rays are
  at least 38 bits apart, while a JPEG re-encoding at quality 60, a resize to 160 px and back, a
  brightness shift of 20 or a contrast stretch of 1.3 moves an image at most 28 bits (median 0
  to 8). :data:`NEAR_DISTANCE` sits between. Crops and rotations are not caught: a perceptual
  hash is not invariant to them.

The hashes of a dataset are kept in ``datasets/<fingerprint>/hashes-<size>.json`` (no pixels),
beside its manifest, so a fresh clone can check an external set against the committed demo
study without its images.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine import settings
from engine.results import atomic

HASH_SIZE = 16
NEAR_DISTANCE = 24
HASHES_SCHEMA = 1
CHUNK = 256


@dataclass(frozen=True)
class ImageHashes:
    """Per image: the sha1 of its decoded pixels and its packed perceptual hash (N, 4) uint64."""

    pixels: list[str]
    perceptual: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)

    def take(self, rows: np.ndarray) -> ImageHashes:
        return ImageHashes([self.pixels[i] for i in rows], self.perceptual[rows])


@dataclass(frozen=True)
class Overlap:
    """Which images of a candidate set are in the reference set: identical, or near-duplicates."""

    identical: list[int]
    near: list[int]
    nearest_distance: list[int]

    @property
    def rows(self) -> list[int]:
        return sorted(self.identical + self.near)


def _perceptual(image: np.ndarray) -> np.ndarray:
    import imagehash

    bits = imagehash.phash(Image.fromarray(np.asarray(image)), hash_size=HASH_SIZE).hash.reshape(-1)
    return np.packbits(bits).view(">u8").astype(np.uint64)


def hash_images(images: np.ndarray) -> ImageHashes:
    """Hashes of decoded uint8 images (N, S, S)."""
    pixels = [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]
    perceptual = np.stack([_perceptual(image) for image in images]) if len(images) else np.zeros((0, 4), np.uint64)
    return ImageHashes(pixels, perceptual)


def _path(fingerprint: str, size: int, artifacts_root: Path | None) -> Path:
    return (artifacts_root or settings.artifacts_dir()) / "datasets" / fingerprint / f"hashes-{size}.json"


def stored_hashes(fingerprint: str, size: int, artifacts_root: Path | None = None) -> ImageHashes | None:
    """The hashes kept for a dataset at ``size``, or None when none were computed."""
    path = _path(fingerprint, size, artifacts_root)
    if not path.is_file():
        return None
    saved = atomic.read_json(path)
    perceptual = np.array([[int(word, 16) for word in h.split(":")] for h in saved["perceptual"]], dtype=np.uint64)
    return ImageHashes(saved["pixels"], perceptual.reshape(-1, 4))


def dataset_hashes(dataset, artifacts_root: Path | None = None) -> ImageHashes:
    """A dataset's hashes at its input size, computed from its decoded images once and then kept."""
    found = stored_hashes(dataset.fingerprint, dataset.input_size, artifacts_root)
    if found is not None and len(found) == len(dataset):
        return found
    hashes = hash_images(np.asarray(dataset.images))
    atomic.write_json(
        _path(dataset.fingerprint, dataset.input_size, artifacts_root),
        {
            "schema_version": HASHES_SCHEMA,
            "size": dataset.input_size,
            "rule": f"sha1 of decoded uint8 pixels; imagehash.phash hash_size={HASH_SIZE}",
            "pixels": hashes.pixels,
            "perceptual": [":".join(f"{int(w):016x}" for w in row) for row in hashes.perceptual],
        },
    )
    return hashes


def _min_distances(candidates: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each candidate hash, the Hamming distance to the nearest reference hash."""
    out = np.full(len(candidates), HASH_SIZE * HASH_SIZE + 1, dtype=np.int64)
    if len(reference) == 0:
        return out
    for start in range(0, len(candidates), CHUNK):
        block = candidates[start : start + CHUNK, None, :] ^ reference[None, :, :]
        out[start : start + CHUNK] = np.bitwise_count(block).sum(axis=2).min(axis=1)
    return out


def find_overlap(candidates: ImageHashes, reference: ImageHashes) -> Overlap:
    """Candidates identical to a reference image, and those within :data:`NEAR_DISTANCE` bits of one."""
    known = set(reference.pixels)
    distances = _min_distances(candidates.perceptual, reference.perceptual)
    identical = [i for i, digest in enumerate(candidates.pixels) if digest in known]
    same = set(identical)
    near = [i for i, d in enumerate(distances) if d <= NEAR_DISTANCE and i not in same]
    return Overlap(identical, near, [int(distances[i]) for i in near])
