"""The out-of-distribution detector: its threshold holds on fresh data, far points are flagged, files round-trip.

The slow test checks the targets on the committed frozen MobileNet (fold 3): at most 5 % of its
held-out fold flagged, at least 95 % of the non-chest-X-ray set of ``tests.non_xray``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine import settings
from engine.models.ood import WARNING, OODDetector
from tests.conftest import SHARED, requires_shared

DIM = 8
STUDY = settings.PROJECT_ROOT / "artifacts" / "studies" / "9da277b73bda"
BATCH = 32


@pytest.fixture(scope="module")
def mixing() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(DIM, DIM)) * 0.3


def features(mixing: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Correlated Gaussian features around 4, positive like pooled ReLU activations."""
    return 4.0 + np.random.default_rng(seed).normal(size=(n, len(mixing))) @ mixing


@pytest.fixture(scope="module")
def detector(mixing: np.ndarray) -> OODDetector:
    return OODDetector.fit(features(mixing, 2000, seed=2), quantile=0.95, seed=0)


def test_the_quantile_holds_on_fresh_in_distribution_features(detector, mixing):
    flagged = detector.flags(features(mixing, 20_000, seed=3)).mean()
    assert detector.quantile == 0.95
    assert abs(flagged - 0.05) < 0.02


def test_the_default_quantile_flags_about_one_in_two_hundred(mixing):
    strict = OODDetector.fit(features(mixing, 2000, seed=4))
    assert strict.quantile == 0.995
    assert strict.flags(features(mixing, 20_000, seed=5)).mean() < 0.015


def test_far_blank_and_non_finite_features_are_flagged(detector, mixing):
    typical = features(mixing, 1, seed=6).mean(axis=0, keepdims=True)
    far = typical + 5.0
    blank = np.zeros((1, DIM))
    broken = np.full((1, DIM), np.nan)
    assert detector.flags(np.vstack([typical, far, blank, broken])).tolist() == [False, True, True, True]
    assert detector.score(far)[0] > 10 * detector.threshold


def test_save_and_load_round_trip_exactly(detector, mixing, tmp_path):
    loaded = OODDetector.load(detector.save(tmp_path / "ood.npz"))
    probe = features(mixing, 100, seed=7)
    assert np.array_equal(loaded.score(probe), detector.score(probe))
    assert (loaded.threshold, loaded.quantile, loaded.n_fit, loaded.folds, loaded.method) == (
        detector.threshold,
        detector.quantile,
        detector.n_fit,
        detector.folds,
        detector.method,
    )
    assert np.array_equal(loaded.whitening, detector.whitening) and loaded.whitening.dtype == np.float32


@pytest.mark.slow
def test_the_file_stays_small_for_256_features(tmp_path):
    rows = np.abs(np.random.default_rng(8).normal(size=(600, 256)))
    path = OODDetector.fit(rows, quantile=0.99).save(tmp_path / "ood.npz")
    assert path.stat().st_size < 160_000


def test_bad_inputs_and_files_are_refused(detector, tmp_path):
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        detector.score(np.zeros((3, DIM + 1)))
    with pytest.raises(ValueError, match="finite"):
        OODDetector.fit(np.full((20, DIM), np.inf))
    with pytest.raises(ValueError, match="at least 10"):
        OODDetector.fit(np.ones((9, DIM)))
    with pytest.raises(ValueError, match="quantile"):
        OODDetector.fit(np.ones((20, DIM)), quantile=1.0)
    other = tmp_path / "other.npz"
    np.savez(other, mean=np.zeros(DIM))
    with pytest.raises(ValueError, match="not an OOD detector file"):
        OODDetector.load(other)


def test_the_warning_is_the_agreed_sentence():
    assert WARNING == "this image is unlike the images the model was trained on; its prediction means nothing"


def test_the_module_runs_without_tensorflow_or_keras():
    code = (
        "import sys, engine.models.ood; print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=settings.PROJECT_ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def pooled_features(classifier, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [classifier.outputs(np.asarray(images[i : i + BATCH]))["features"] for i in range(0, len(images), BATCH)]
    )


@pytest.mark.slow
@requires_shared
def test_frozen_mobilenet_flags_non_xrays_and_few_held_out_xrays():
    """The detector the app serves with this model (its committed ``ood.npz``, fitted on the other 4 folds)."""
    pytest.importorskip("skimage", reason="the non-X-ray set needs scikit-image's sample images")
    pytest.importorskip("pydicom", reason="the non-X-ray set needs pydicom's test files")
    from engine.data.datasets import import_dataset
    from engine.models.inference import load_classifier
    from tests import non_xray

    held = np.asarray(json.loads((STUDY / "study.json").read_text())["folds"][3])
    dataset = import_dataset(SHARED / "data" / "covid19-radiography-paper", input_size=224)
    classifier = load_classifier(
        STUDY / "runs" / "MobileNet" / "fold-3" / "model.keras", artifacts_root=settings.PROJECT_ROOT / "artifacts"
    )
    detector = classifier.ood
    assert detector.n_fit == len(dataset.images) - len(held) and detector.quantile == 0.995
    others = non_xray.build(size=classifier.input_size)
    flagged = detector.flags(pooled_features(classifier, np.stack([s.pixels for s in others])))
    assert detector.flags(pooled_features(classifier, dataset.images[held])).mean() <= 0.05
    assert flagged.mean() >= 0.95, [s.name for s, f in zip(others, flagged, strict=True) if not f]
