"""How many of each member's first convolutions int8 keeps float: ``FLOAT_FIRST_CONVS`` measured.

    python -m benchmarks.int8_float_layers            # the frozen MobileNet of fold 3 of the demo study

For 0 to 3 float convolutions, the argmax agreement of the int8 file with the float file, in LiteRT
and in ONNX, on 400 unlabelled training images of the model outside its calibration images: no
label and no held-out image is used, so the choice is not tuned on a test fold. Needs the TensorFlow
backend and the study's images (cached in the artifacts, or ``--data``). Not a timing benchmark.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from engine import settings
from engine.models.export import (
    CALIBRATION_IMAGES,
    WRITERS,
    calibration_indices,
    export_graph,
    litert_int8,
    load_member,
    quantize_onnx,
    study_images,
    training_indices,
)
from engine.models.runtime import RUNNERS
from engine.results import artifacts

STUDY, BACKBONE, FOLD = "9da277b73bda", "MobileNet", 3
CHECKED = 400
BATCH = 32


def probabilities(runner, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [runner.predict_on_batch(images[i : i + BATCH])["probabilities"] for i in range(0, len(images), BATCH)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=settings.artifacts_dir())
    parser.add_argument("--data", type=Path, default=None, help="the study's dataset folder, if not cached")
    args = parser.parse_args()
    study = artifacts.read_study(STUDY, args.artifacts)
    images = study_images(study, args.artifacts, data=args.data).astype("float32")[..., None]
    calibration = images[calibration_indices(study, [FOLD], count=CALIBRATION_IMAGES)]
    unused = np.setdiff1d(training_indices(study, [FOLD]), calibration_indices(study, [FOLD], count=CALIBRATION_IMAGES))
    checked = images[np.sort(np.random.default_rng(1).choice(unused, CHECKED, replace=False))]
    graph = export_graph([load_member(artifacts.run_dir(STUDY, BACKBONE, FOLD, args.artifacts) / "model.keras")])
    with tempfile.TemporaryDirectory(prefix="cxr-int8-") as tmp:
        float_litert, float_onnx = Path(tmp) / "float.tflite", Path(tmp) / "float.onnx"
        WRITERS["litert"](graph, float_litert, None)
        WRITERS["onnx"](graph, float_onnx, None)
        want = {
            "litert": probabilities(RUNNERS["litert"](float_litert, threads=None), checked).argmax(1),
            "onnx": probabilities(RUNNERS["onnx"](float_onnx, threads=None), checked).argmax(1),
        }
        for kept in range(4):
            litert = Path(tmp) / f"int8-{kept}.tflite"
            litert.write_bytes(litert_int8(graph, calibration, float_convs=kept))
            onnx = Path(tmp) / f"int8-{kept}.onnx"
            onnx.write_bytes(float_onnx.read_bytes())
            quantize_onnx(onnx, calibration, float_convs=kept)
            agree = {
                kind: float(np.mean(probabilities(RUNNERS[kind](path, threads=None), checked).argmax(1) == want[kind]))
                for kind, path in (("litert", litert), ("onnx", onnx))
            }
            print(f"first {kept} convolution(s) float: LiteRT {agree['litert']:.4f}, ONNX {agree['onnx']:.4f}")


if __name__ == "__main__":
    main()
