"""int8 against float on every fold's own held-out images: the export issue's bars, per fold and pooled.

    python -m benchmarks.int8_held_out                                   # recommended MobileNet 1.0
    python -m benchmarks.int8_held_out --study 9da277b73bda --folds 3    # the frozen fold the test uses
    python -m benchmarks.int8_held_out --study 9da277b73bda --folds 3 --calibration-images 512

For each fold of one backbone of a study, that fold's model is exported float and int8 (each format,
``FLOAT_FIRST_CONVS`` as committed, calibrated on that fold's training images only) and both files run in
their own runtime on the fold's held-out images: argmax agreement with the float file and the accuracy
drop, per fold and over all the folds' held-out images together (each image judged by the one model
that never trained on it). Nothing is chosen here: ``FLOAT_FIRST_CONVS`` was fixed beforehand without
any held-out image (``python -m benchmarks.int8_float_layers``), so these figures are a measurement of
that choice, with five times the images one fold gives. Needs the TensorFlow backend, the fold models
(``model.keras``, kept locally by the run) and the study's images. Not a timing benchmark.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.int8_float_layers import int8_file, probabilities, variant_name
from engine import settings
from engine.models.export import (
    WRITERS,
    Int8Options,
    calibration_indices,
    export_graph,
    study_images,
)
from engine.models.inference import load_keras_model
from engine.models.runtime import FORMATS, RUNNERS
from engine.results import artifacts


def line(name: str, agree: np.ndarray, right_float: np.ndarray, right_int8: np.ndarray) -> str:
    drop = right_float.mean() - right_int8.mean()
    return (
        f"{name}: {len(agree)} images, agreement {agree.mean():.4f} ({int((~agree).sum())} differ), "
        f"accuracy float {right_float.mean():.4f}, int8 {right_int8.mean():.4f}, "
        f"drop {drop * 100:.2f} points ({int(right_float.sum() - right_int8.sum())} images)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="4b07a4dd6629")
    parser.add_argument("--backbone", default="MobileNet")
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="default: every fold")
    parser.add_argument("--formats", nargs="*", default=sorted(FORMATS), choices=sorted(FORMATS))
    parser.add_argument("--artifacts", type=Path, default=settings.artifacts_dir())
    parser.add_argument("--data", type=Path, default=None, help="the study's dataset folder, if not cached")
    defaults = Int8Options()
    parser.add_argument(
        "--calibration-images", type=int, default=defaults.calibration_images, help="training images that set ranges"
    )
    parser.add_argument(
        "--onnx-percentile", type=float, default=defaults.onnx_percentile, help="ONNX's activation ranges"
    )
    parser.add_argument(
        "--uncorrected", action="store_true", help="also measure each int8 file without its bias correction"
    )
    args = parser.parse_args()
    options = Int8Options(calibration_images=args.calibration_images, onnx_percentile=args.onnx_percentile)
    study = artifacts.read_study(args.study, args.artifacts)
    images = study_images(study, args.artifacts, data=args.data)
    if images is None:
        raise SystemExit("error: the study's images are neither cached nor given; pass --data")
    manifest = json.loads((args.artifacts / "datasets" / study.dataset.fingerprint / "manifest.json").read_text())
    if manifest["classes"] != list(study.dataset.classes):
        raise SystemExit(f"error: the cached manifest's classes {manifest['classes']} are not the study's")
    labels = np.asarray(manifest["labels"])
    folds = range(len(study.folds)) if args.folds is None else args.folds
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for fold in folds:
        model = artifacts.run_dir(args.study, args.backbone, fold, args.artifacts) / "model.keras"
        if not model.exists():
            raise SystemExit(f"error: {model} is missing (fold models stay where they were trained)")
        held = np.asarray(study.folds[fold])
        x = np.asarray(images[held]).astype("float32")[..., None]
        y = labels[held]
        at = calibration_indices(study, [fold], count=options.calibration_images)
        calibration = images[at].astype("float32")[..., None]
        member = load_keras_model(model)
        graph = export_graph([member])
        with tempfile.TemporaryDirectory(prefix="cxr-int8-") as tmp:
            for kind in args.formats:
                float_path = Path(tmp) / f"float{FORMATS[kind]}"
                WRITERS[kind](graph, float_path, None)
                want = probabilities(RUNNERS[kind](float_path, threads=None), x).argmax(1)
                for corrected in (True, False) if args.uncorrected else (True,):
                    chosen = replace(options, bias_correction=corrected)
                    quantized = int8_file(kind, member, Path(tmp), calibration, chosen)
                    got = probabilities(RUNNERS[kind](quantized, threads=None), x).argmax(1)
                    found = (want == got, want == y, got == y)
                    variant = variant_name(kind, corrected)
                    pooled.setdefault(variant, []).append(found)
                    kept = options.float_first_convs[kind]
                    print(line(f"fold {fold}, {variant} ({kept} float)", *found), flush=True)
    for kind, rows in pooled.items():
        print(line(f"all folds, {kind}", *(np.concatenate(part) for part in zip(*rows, strict=True))))


if __name__ == "__main__":
    main()
