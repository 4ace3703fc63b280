"""Tiny synthetic X-ray-like datasets for tests: each class has its own visible pattern."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_CLASSES = ("COVID", "NORMAL", "Viral Pneumonia")


def make_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise plus a bright band whose position depends on the class, so a tiny model can learn it."""
    img = rng.normal(80, 20, (size, size))
    band = slice(label * size // 3, (label + 1) * size // 3)
    img[band, :] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(
    root: Path,
    *,
    n_per_class: int = 6,
    size: int = 40,
    seed: int = 0,
    classes: tuple[str, ...] = TINY_CLASSES,
) -> Path:
    """Write ``n_per_class`` PNGs per class folder under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(make_image(label, size, rng)).save(folder / f"img_{i:03d}.png")
    return root


def study_json(study_id: str, *, folds: list[list[int]], input_size: int = 32, classes=TINY_CLASSES) -> dict:
    """A ``study.json`` as the first studies wrote it (no split or sources), for a study laid out by hand:
    ``engine.results.studies.Study.from_json`` reads it."""
    n_images = sum(len(fold) for fold in folds)
    return {
        "study_id": study_id,
        "title": f"hand-made · {len(folds)}-fold",
        "created_at": 0.0,
        "dataset": {
            "name": "hand-made",
            "fingerprint": "0" * 16,
            "source": "hand-made",
            "classes": list(classes),
            "counts": {c: 0 for c in classes},
            "n_images": n_images,
        },
        "protocol": {"name": "frozen", "description": "hand-made"},
        "n_folds": len(folds),
        "seed": 0,
        "input_size": input_size,
        "weights": None,
        "folds": folds,
    }
