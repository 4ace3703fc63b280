"""Global statistics of an X-ray that say nothing of its anatomy: how it was acquired and processed.

Intensity (mean, spread, percentiles, a 16-bin histogram), sharpness (variance of the Laplacian, mean
gradient magnitude, the share of spectral energy at high frequencies), border content (the outer strip's
level and spread, the share of near-black and near-white pixels) and the file's own size where the import
recorded it. A classifier of these alone (``engine.evaluation.shortcuts``) shows how far a dataset's
classes can be told apart without looking at the chest.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

HISTOGRAM_BINS = 16
BORDER = 8
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
HIGH_FREQUENCY = 0.25
CHUNK = 256
SUMMARY = ("sharpness", "contrast", "intensity", "source size")
"""The four shown by class (one number each): variance of the Laplacian, 5th to 95th percentile range,
mean grey level, and the longer side of the file as it was imported (0 where unknown)."""


def names() -> list[str]:
    """The feature names, in column order."""
    return [
        "mean",
        "sd",
        *[f"p{p}" for p in PERCENTILES],
        *[f"hist{b}" for b in range(HISTOGRAM_BINS)],
        "laplacian_var",
        "gradient_mean",
        "high_frequency_share",
        "border_mean",
        "border_sd",
        "dark_share",
        "bright_share",
        "source_width",
        "source_height",
    ]


def _high_frequency_share(images: np.ndarray) -> np.ndarray:
    """Share of each image's spectral energy (mean removed) beyond :data:`HIGH_FREQUENCY` of the Nyquist radius."""
    spectrum = np.abs(np.fft.rfft2(images - images.mean(axis=(1, 2), keepdims=True))) ** 2
    fy = np.fft.fftfreq(images.shape[1])[:, None]
    fx = np.fft.rfftfreq(images.shape[2])[None, :]
    high = np.hypot(fy, fx) > HIGH_FREQUENCY * 0.5
    total = spectrum.sum(axis=(1, 2))
    return np.where(total > 0, spectrum[:, high].sum(axis=1) / np.maximum(total, 1e-12), 0.0)


def _chunk(images: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64)
    flat = x.reshape(len(x), -1)
    histogram = (
        np.stack([np.bincount(row.astype(np.int64) * HISTOGRAM_BINS // 256, minlength=HISTOGRAM_BINS) for row in flat])
        / flat.shape[1]
    )
    laplacian = ndimage.laplace(x, axes=(1, 2))
    gradient = np.stack([np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1)) for image in x])
    mask = np.ones(x.shape[1:], dtype=bool)
    mask[BORDER:-BORDER, BORDER:-BORDER] = False
    border = x[:, mask]
    return np.column_stack(
        [
            flat.mean(axis=1),
            flat.std(axis=1),
            np.percentile(flat, PERCENTILES, axis=1).T,
            histogram,
            laplacian.reshape(len(x), -1).var(axis=1),
            gradient.reshape(len(x), -1).mean(axis=1),
            _high_frequency_share(x),
            border.mean(axis=1),
            border.std(axis=1),
            (flat <= 5).mean(axis=1),
            (flat >= 250).mean(axis=1),
            sizes,
        ]
    )


def image_statistics(images: np.ndarray, source_sizes: np.ndarray | None = None) -> np.ndarray:
    """(N, len(names())) statistics of uint8 images (N, S, S), ``source_sizes`` (N, 2) the files' own
    (width, height) or zeros where unknown; computed :data:`CHUNK` images at a time (a memory map stays one)."""
    n = len(images)
    sizes = np.zeros((n, 2)) if source_sizes is None else np.asarray(source_sizes, dtype=np.float64).reshape(n, 2)
    parts = [_chunk(np.asarray(images[i : i + CHUNK]), sizes[i : i + CHUNK]) for i in range(0, n, CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, len(names())))


def summary_columns(features: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`SUMMARY` numbers of each image, from its full statistics."""
    column = {name: k for k, name in enumerate(names())}
    return {
        "sharpness": features[:, column["laplacian_var"]],
        "contrast": features[:, column["p95"]] - features[:, column["p5"]],
        "intensity": features[:, column["mean"]],
        "source size": np.maximum(features[:, column["source_width"]], features[:, column["source_height"]]),
    }
