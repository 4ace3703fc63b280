"""How many of each member's first convolutions int8 keeps float: ``FLOAT_FIRST_CONVS`` measured.

    python -m benchmarks.int8_float_layers            # the frozen MobileNet of fold 3 of the demo study
    python -m benchmarks.int8_float_layers --artifacts DIR --folds 0 1 2 3 4 --formats onnx --counts 3 5 7

The second averages each figure over the fold models of the study trained in ``DIR`` (only fold 3's is
committed: train the others with ``python -m engine study ... --artifacts DIR``).

For 0 to 9 float convolutions, how the int8 file agrees with the float file, in LiteRT and in ONNX, on
two unlabelled sets that are not the model's held-out fold: 400 of its training images outside its
calibration images, and 400 images that no member trained on (``--unseen-data``, by default the shared
``covid19-extra``: COVID-19 images only, the one such set here; its labels are never read). The
training images alone cannot choose: the model fits them so well that in LiteRT every count from 3 to 8
agrees on all of them, while on its held-out fold 3 float convolutions still disagreed on 1.2 %. So the
count chosen is the fewest with the highest agreement on the unseen images; past 2 the counts differ by
one or two images of 400, which the printed mean |Δp| lets a reader weigh. No label and no held-out
image is used, so the choice is not tuned on a test fold. Needs the TensorFlow backend and the study's
images (cached in the artifacts, or ``--data``). Not a timing benchmark.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from engine import settings
from engine.data.datasets import import_dataset
from engine.models.export import (
    WRITERS,
    Int8Options,
    calibration_indices,
    export_graph,
    study_images,
    training_indices,
    write_int8,
)
from engine.models.inference import load_keras_model
from engine.models.runtime import FORMATS, RUNNERS
from engine.results import artifacts

STUDY, BACKBONE, FOLD = "9da277b73bda", "MobileNet", 3
CHECKED = 400
BATCH = 32
COUNTS = range(10)


def probabilities(runner, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [runner.predict_on_batch(images[i : i + BATCH])["probabilities"] for i in range(0, len(images), BATCH)]
    )


def sample(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``CHECKED`` of ``images`` at ``indices``, seeded, as the runtimes' float batch."""
    if len(indices) < CHECKED:
        raise SystemExit(f"error: {CHECKED} images are needed for each check, {len(indices)} are available")
    chosen = np.sort(np.random.default_rng(1).choice(indices, CHECKED, replace=False))
    return np.asarray(images[chosen]).astype("float32")[..., None]


def agreement(runner, checked: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per set: the argmax agreement with the float file and the mean of each image's largest |Δp|."""
    found = {}
    for name, images in checked.items():
        proba = probabilities(runner, images)
        found[name] = (
            float(np.mean(proba.argmax(1) == want[name].argmax(1))),
            float(np.abs(proba - want[name]).max(1).mean()),
        )
    return found


def int8_file(kind: str, member, out_dir: Path, calibration: np.ndarray, options: Int8Options) -> Path:
    """The int8 file of ``kind`` in ``out_dir``, written by ``python -m engine export --quantize int8``'s own path
    (:func:`engine.models.export.write_int8`) with ``options``."""
    kept = options.float_first_convs[kind]
    path = out_dir / f"int8-{kept}{'' if options.bias_correction else '-uncorrected'}{FORMATS[kind]}"
    write_int8([member], path, calibration, format=kind, options=options)
    return path


def with_float_convs(options: Int8Options, count: int) -> Int8Options:
    """``options`` with ``count`` float first convolutions in every format."""
    return replace(options, float_first_convs=dict.fromkeys(options.float_first_convs, count))


def variant_name(kind: str, corrected: bool) -> str:
    return kind if corrected else f"{kind} without bias correction"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=STUDY)
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--folds", type=int, nargs="+", default=[FOLD], help="the fold models pooled")
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS), help="float convolutions tried")
    parser.add_argument("--formats", nargs="+", default=sorted(FORMATS), choices=sorted(FORMATS))
    parser.add_argument(
        "--onnx-percentile", type=float, default=Int8Options().onnx_percentile, help="ONNX's activation ranges"
    )
    parser.add_argument("--artifacts", type=Path, default=settings.artifacts_dir())
    parser.add_argument("--data", type=Path, default=None, help="the study's dataset folder, if not cached")
    parser.add_argument("--unseen-data", type=Path, default=settings.shared_dir() / "data" / "covid19-extra")
    parser.add_argument(
        "--uncorrected", action="store_true", help="also measure each int8 file without its bias correction"
    )
    args = parser.parse_args()
    options = Int8Options(onnx_percentile=args.onnx_percentile)
    variants = [(kind, True) for kind in args.formats] + [(kind, False) for kind in args.formats if args.uncorrected]
    study = artifacts.read_study(args.study, args.artifacts)
    images = study_images(study, args.artifacts, data=args.data)
    unseen = import_dataset(
        args.unseen_data, input_size=int(study.input_size), artifacts_root=args.artifacts, min_classes=1
    )
    unseen_checked = sample(unseen.images, np.arange(len(unseen.images)))
    # Per format and count: each set's agreement and mean |Δp|, one entry per fold.
    found: dict[tuple[str, int], dict[str, list[tuple[float, float]]]] = {}
    for fold in args.folds:
        calibration_at = calibration_indices(study, [fold], count=options.calibration_images)
        calibration = images[calibration_at].astype("float32")[..., None]
        checked = {
            "training": sample(images, np.setdiff1d(training_indices(study, [fold]), calibration_at)),
            "unseen": unseen_checked,
        }
        model = artifacts.run_dir(args.study, args.backbone, fold, args.artifacts) / "model.keras"
        member = load_keras_model(model)
        graph = export_graph([member])
        with tempfile.TemporaryDirectory(prefix="cxr-int8-") as tmp:
            floats = {kind: Path(tmp) / f"float{FORMATS[kind]}" for kind in args.formats}
            for kind, path in floats.items():
                WRITERS[kind](graph, path, None)
            want = {
                kind: {n: probabilities(RUNNERS[kind](p, threads=None), x) for n, x in checked.items()}
                for kind, p in floats.items()
            }
            for kept in args.counts:
                for kind, corrected in variants:
                    chosen = replace(with_float_convs(options, kept), bias_correction=corrected)
                    path = int8_file(kind, member, Path(tmp), calibration, chosen)
                    here = agreement(RUNNERS[kind](path, threads=None), checked, want[kind])
                    name = variant_name(kind, corrected)
                    for n, row in here.items():
                        found.setdefault((name, kept), {}).setdefault(n, []).append(row)
                    cells = ", ".join(f"{n} {a:.4f} (mean |Δp| {d:.4f})" for n, (a, d) in here.items())
                    print(f"fold {fold}, first {kept} convolution(s) float, {name}: agreement on {cells}", flush=True)
    for kind in (variant_name(*v) for v in variants):
        pooled = {}
        for kept in args.counts:
            rows = found[(kind, kept)]
            pooled[kept] = np.mean([a for a, _ in rows["unseen"]])
            cells = ", ".join(
                f"{n} {np.mean([a for a, _ in r]):.4f} (mean |Δp| {np.mean([d for _, d in r]):.4f})"
                for n, r in rows.items()
            )
            print(f"{len(args.folds)} fold(s), first {kept} float, {kind}: agreement on {cells}")
        best = max(pooled.values())
        print(
            f"{kind}: fewest float convolutions with the highest agreement on unseen images ({best:.4f}): "
            f"{min(k for k, a in pooled.items() if a == best)}"
        )


if __name__ == "__main__":
    main()
