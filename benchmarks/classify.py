"""Latency of one upload (check, decode, preprocess, predict, Grad-CAM) with MobileNet 1.0 on the CPU.

The model is the best MobileNet 1.0 of the project's artifacts folder at the benchmark's input
size, loaded read-only; when there is none (or with ``--tiny``), a quick 1-fold frozen model is
trained in a temporary artifacts folder first.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Options, Result
from engine import settings
from engine.data.datasets import import_dataset
from engine.data.images import decode_xray
from engine.models.catalog import list_models
from engine.models.inference import load_classifier
from engine.training.fold import train_fold
from engine.training.presets import FROZEN
from engine.training.study import StudyRequest, prepare_study

BACKBONE = "MobileNet"


def _existing_model(options: Options) -> tuple[Path, Path] | None:
    root = settings.artifacts_dir()
    if options.tiny or not root.is_dir():
        return None
    for info in list_models(root):
        if info.backbone == BACKBONE and info.input_size == options.input_size:
            return info.path, root
    return None


def _train_quick_model(options: Options, artifacts_root: Path) -> Path:
    dataset = import_dataset(options.data, input_size=options.input_size, artifacts_root=artifacts_root)
    protocol = FROZEN.replace(epochs=2 if options.tiny else 20)
    study = prepare_study(
        dataset, StudyRequest(protocol=protocol, n_folds=2, weights=options.weights), artifacts_root=artifacts_root
    )
    run = train_fold(dataset=dataset, study=study, backbone=BACKBONE, fold=0, artifacts_root=artifacts_root)
    return run.model_path


def _uploads(data: Path, count: int) -> list[tuple[str, bytes]]:
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    chosen = np.random.default_rng(0).choice(len(files), min(count, len(files)), replace=False)
    return [(files[i].name, files[i].read_bytes()) for i in chosen]


def _ms(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1000.0
    return {
        "p50 ms": float(np.percentile(arr, 50)),
        "p95 ms": float(np.percentile(arr, 95)),
        "mean ms": float(arr.mean()),
    }


def run(options: Options) -> Result:
    calls = 5 if options.tiny else 40
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        found = _existing_model(options)
        if found is None:
            root = options.artifacts or Path(tmp)
            model_path, source = _train_quick_model(options, root), "trained for this run (1 fold, frozen)"
        else:
            (model_path, root), source = found, "existing study model (read-only)"
        classifier = load_classifier(model_path, artifacts_root=root)
    uploads = _uploads(options.data, calls + 3)
    for item in uploads[:3]:
        classifier.classify([item])
    total, decode, predict = [], [], []
    for name, data in uploads[3:]:
        started = time.perf_counter()
        (prediction,) = classifier.classify([(name, data)])
        total.append(time.perf_counter() - started)
        if prediction.error:
            raise RuntimeError(f"{name}: {prediction.error}")
        started = time.perf_counter()
        pixels = decode_xray(data, size=classifier.input_size, name=name).pixels
        decode.append(time.perf_counter() - started)
        started = time.perf_counter()
        classifier.predict_arrays(pixels[None])
        predict.append(time.perf_counter() - started)
    whole = _ms(total)
    return Result(
        name="classify",
        figures={"classify_p50_ms": round(whole["p50 ms"], 1), "classify_p95_ms": round(whole["p95 ms"], 1)},
        table=[
            {"step": "one upload: check, decode, predict, Grad-CAM", **whole},
            {"step": "decode only", **_ms(decode)},
            {"step": "predict + Grad-CAM only", **_ms(predict)},
        ],
        settings={"backbone": BACKBONE, "input_size": classifier.input_size, "calls": len(total), "model": source},
        notes=[f"model: {source}; {len(total)} uploads after 3 warm-up calls, one image per call"],
    )
