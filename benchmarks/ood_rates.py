"""How often an exported model's OOD detector flags real X-rays and images that are not chest X-rays.

    python -m benchmarks.ood_rates artifacts/studies/4b07a4dd6629/runs/MobileNetV2-0.35/export/<file>.tflite
    python -m benchmarks.ood_rates artifacts/studies/36fd8e3db696/export/ensemble.json   # an ensemble of backbones

Prints the flagged share of the study's own images, of ``covid19-extra`` (COVID-19 X-rays no fold
saw) and of the 151 non-X-ray images of ``tests/non_xray.py``. Runs on the export's own runtime
(no TensorFlow); needs the shared data and scikit-image and pydicom (the dev requirements).
Not a timing benchmark: a figure for docs/security.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engine import settings
from engine.data.datasets import import_dataset
from engine.models.inference import load_classifier
from tests import non_xray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", type=Path, help="an exported .tflite or .onnx with its .ood.npz, or an ensemble.json of them"
    )
    data = settings.shared_dir() / "data"
    parser.add_argument("--study-data", type=Path, default=data / "covid19-radiography-paper")
    parser.add_argument("--extra", type=Path, default=data / "covid19-extra")
    args = parser.parse_args()
    classifier = load_classifier(args.model, artifacts_root=settings.artifacts_dir())
    if not classifier.has_detector:
        raise SystemExit(f"no OOD detector beside {args.model}")

    def flagged(images: np.ndarray) -> np.ndarray:
        return ~(classifier.ood_ratios(images) <= 1.0)

    size = classifier.input_size
    own = flagged(import_dataset(args.study_data, input_size=size).images)
    extra = flagged(import_dataset(args.extra, input_size=size, min_classes=1).images)
    others = non_xray.build(size=size)
    other = flagged(np.stack([s.pixels for s in others]))
    print(f"study images (in-sample: the detector was fitted on them): {own.mean():.2%} of {len(own)} flagged")
    print(f"{args.extra.name}: {extra.mean():.2%} of {len(extra)} flagged")
    missed = [s.name for s, f in zip(others, other, strict=True) if not f]
    print(f"not chest X-rays: {other.mean():.2%} of {len(other)} flagged; not flagged: {missed}")


if __name__ == "__main__":
    main()
