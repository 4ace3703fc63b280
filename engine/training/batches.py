"""Training and evaluation batches read from the dataset's uint8 memory map, one batch at a time.

Handing ``model.fit`` the training split as one array makes the backend copy it whole (and
convert it to float): about 5 GB of resident memory for the 20,000 images of the full 2021
release. Reading each batch from the memory map keeps a study's memory independent of the
dataset's size. Rows inside a batch are read in file order (sorted), which is what a memory map
reads fastest; the order of the batches and of the images across batches is a seeded
permutation, drawn again at the end of every epoch.
"""

from __future__ import annotations

import io

import keras
import numpy as np
from PIL import Image

JPEG_MAX_QUALITY = 95


def jpeg_again(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (H, W) uint8 encoded as a JPEG at ``quality`` and decoded: another film's compression."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(out))


class ImageBatches(keras.utils.PyDataset):
    """``(images[rows][..., None], labels[rows])`` for consecutive slices of ``indices``.

    ``seed=None`` keeps ``indices`` in the given order (evaluation: predictions line up with
    ``indices``); an integer seed shuffles them before every epoch, reproducibly. ``labels`` are
    the targets of every dataset row (class indices, or one-hot rows for a smoothed loss);
    ``weights``, when given, a per-row loss weight that comes as the third element. ``jpeg`` (training
    only, with a seed): each image re-encoded at a quality drawn from [jpeg, 95] (0: none).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        indices: np.ndarray,
        *,
        batch_size: int,
        seed: int | None = None,
        weights: np.ndarray | None = None,
        jpeg: int = 0,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if jpeg and seed is None:
            raise ValueError("jpeg re-encoding is a training augmentation and needs a seed, got seed=None")
        self.jpeg = int(jpeg)
        self._jpeg_rng = np.random.default_rng([seed, 1]) if jpeg else None
        self.images = images
        self.labels = labels
        self.weights = weights
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self._rng = None if seed is None else np.random.default_rng(seed)
        self.order = self._next_order()

    def _next_order(self) -> np.ndarray:
        return self.indices if self._rng is None else self._rng.permutation(self.indices)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def rows(self, index: int) -> np.ndarray:
        """The dataset rows of batch ``index`` (sorted when shuffling, as given otherwise)."""
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return rows if self._rng is None else np.sort(rows)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} is out of range for {len(self)} batches")
        rows = self.rows(index)
        x = np.asarray(self.images[rows])
        if self.jpeg:
            qualities = self._jpeg_rng.integers(self.jpeg, JPEG_MAX_QUALITY + 1, size=len(rows))
            x = np.stack([jpeg_again(image, q) for image, q in zip(x, qualities, strict=True)])
        x = x[..., None]
        if self.labels is None:
            return (x,)
        return (x, self.labels[rows]) if self.weights is None else (x, self.labels[rows], self.weights[rows])

    def on_epoch_end(self) -> None:
        self.order = self._next_order()
