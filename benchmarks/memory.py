"""Peak resident memory of a frozen study (2,897 images) and of a 20,000-image dataset path.

Each measurement runs in a fresh process (``benchmarks.memory_probe``), so one peak does not
hide another. The 20,000 images are distinct PNGs made from the source set (each copy gets
its own two corner pixels, so the import's duplicate check keeps them all).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.harness import Options, Result, last_json_line
from engine.training.presets import FROZEN

LARGE_SET = 20_000
TINY_LARGE_SET = 60


def make_large_set(source: Path, target: Path, count: int) -> Path:
    """``count`` distinct PNGs in the class folders of ``source``, cycling over its images."""
    files = sorted(p for p in source.rglob("*.png"))

    def write(i: int) -> None:
        src = files[i % len(files)]
        pixels = np.array(Image.open(src).convert("L"))
        copy = i // len(files)
        pixels[0, 0], pixels[0, 1] = copy % 256, copy // 256
        folder = target / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{copy:03d}_{src.name}", compress_level=1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(write, range(count)))
    return target


def probe(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_probe", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {args[0]} failed:\n{proc.stderr[-2000:]}")
    return last_json_line(proc.stdout)


def run(options: Options) -> Result:
    size = str(options.input_size)
    weights = options.weights or "none"
    count = TINY_LARGE_SET if options.tiny else LARGE_SET
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp_path = Path(tmp)
        folds, epochs = ("2", "2") if options.tiny else ("5", str(FROZEN.epochs))
        study = probe("study", str(options.data), str(tmp_path / "study"), size, weights, folds, epochs)
        large = make_large_set(options.data, tmp_path / "large", count)
        eager = ("eager",) if options.tiny else ()
        on_array = probe("train", str(large), str(tmp_path / "large-artifacts"), size, weights, "array", *eager)
        on_memmap = probe("train", str(large), str(tmp_path / "large-artifacts"), size, weights, "batches", *eager)
    rows = [
        {
            "process": f"cold frozen study, MobileNet 1.0, {folds} folds",
            "images": "source set",
            "peak RSS MB": study["rss_mb"],
        },
        {
            "process": "import (memory-mapped cache)",
            "images": on_array["images"],
            "peak RSS MB": on_array["rss_after_import_mb"],
        },
        {
            "process": "import + 3 training batches, training split as one array (the usual way)",
            "images": on_array["images"],
            "peak RSS MB": on_array["rss_mb"],
        },
        {
            "process": "cached import + 3 training batches read from the memory map (engine: ImageBatches)",
            "images": on_memmap["images"],
            "peak RSS MB": on_memmap["rss_mb"],
        },
    ]
    return Result(
        name="memory",
        figures={
            "study_rss_mb": round(study["rss_mb"], 1),
            "rss_20k_mb": round(on_memmap["rss_mb"], 1),
            "rss_20k_import_mb": round(on_array["rss_after_import_mb"], 1),
            "rss_20k_one_array_mb": round(on_array["rss_mb"], 1),
        },
        table=rows,
        settings={
            "large_set": count,
            "input_size": options.input_size,
            "weights": options.weights,
            "train_steps": 3,
            "backbone": "MobileNet",
        },
        notes=[f"the large set has {on_array['images']} images at {options.input_size}x{options.input_size}"],
    )
