"""Exported models (LiteRT, ONNX; float and int8) against Keras, the runtime without TensorFlow, the CLI.

Tolerances of the float exports, on 64 held-out real images of the committed demo models:
probabilities within 1e-4 (measured: about 1e-5), class maps within 1e-4 of their largest
magnitude (measured: about 1e-5), pooled features within 1e-4 relative, Grad-CAM heatmaps
(scaled to [0, 1]) within 1e-3.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import settings
from engine.cli.main import main
from engine.models import serving
from engine.models.export import (
    ACTIVATIONS,
    CALIBRATION_CHUNK,
    FLOAT_FIRST_CONVS,
    INT8_DEFAULTS,
    INT8_MIN_AGREEMENT,
    ONNX_PERCENTILE,
    ExportResult,
    Int8Options,
    _quantization,
    _reusable_detector,
    calibration_indices,
    ensemble_runs,
    export_model,
    export_runs,
    quantize_onnx,
    study_images,
    study_models,
)
from engine.models.inference import OOD_WARNING, ensemble_detector_path, load_classifier, load_keras_model
from engine.models.ood import OODDetector
from engine.models.runtime import RUNNERS, detector_path, file_sha256, load_exported, sidecar_path
from engine.reports.model_card import card_path
from engine.results import artifacts
from engine.results.studies import Study
from engine.training.presets import get_protocol
from engine.training.runner import run_study
from engine.training.study import StudyRequest
from tests.conftest import SHARED, eager_functions, requires_shared
from tests.synthetic import make_dataset, make_image, study_json

DEMO = settings.PROJECT_ROOT / "artifacts"
FROZEN = DEMO / "studies" / "9da277b73bda" / "runs" / "MobileNet" / "fold-3" / "model.keras"
FINETUNED = DEMO / "studies" / "0c18372e7d3f" / "runs" / "MobileNet-0.25" / "fold-3" / "model.keras"
PAPER_DATA = SHARED / "data" / "covid19-radiography-paper"
FORMATS = ("litert", "onnx")
PARITY_IMAGES = 64
CLI_FILE = "MobileNet-0.25-folds-0-1.tflite"


def held_out(model: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's held-out fold in the order of the study's fold indices: images, true labels, and the Keras
    probabilities its ``predictions.csv`` saved (whose files must be exactly the fold's)."""
    run = artifacts.read_run(model.parent)
    study = artifacts.read_study(run.study_id, DEMO)
    images = study_images(study, DEMO, data=PAPER_DATA)
    held = np.asarray(study.folds[run.fold])
    manifest = json.loads((DEMO / "datasets" / study.dataset.fingerprint / "manifest.json").read_text())
    with open(model.parent / "predictions.csv", newline="") as fh:
        rows = {row["file"]: row for row in csv.DictReader(fh)}
    files = [manifest["files"][i] for i in held]
    assert sorted(files) == sorted(rows)
    classes = run.config["classes"]
    labels = np.array([classes.index(rows[f]["true"]) for f in files])
    saved = np.array([[float(rows[f][f"p[{c}]"]) for c in classes] for f in files])
    return np.asarray(images[held]), labels, saved


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """``demo_export(model, fmt)``: the float export of a committed demo model, made once per module."""
    out, made = tmp_path_factory.mktemp("exports"), {}

    def get(model: Path, fmt: str) -> Path:
        if (model, fmt) not in made:
            made[model, fmt] = export_runs(
                [model], format=fmt, out_dir=out, artifacts_root=DEMO, data=PAPER_DATA, check_count=0
            ).path
        return made[model, fmt]

    return get


def check_float_parity(model: Path, exported_path: Path) -> None:
    images = held_out(model)[0][:PARITY_IMAGES]
    keras_path = load_classifier(model, artifacts_root=DEMO)
    exported = load_exported(exported_path)
    want, got = keras_path.outputs(images), exported.outputs(images)
    assert np.abs(got["probabilities"] - want["probabilities"]).max() <= 1e-4
    scale = np.abs(want["class_maps"]).max()
    assert np.abs(got["class_maps"] - want["class_maps"]).max() <= 1e-4 * scale
    np.testing.assert_allclose(got["features"], want["features"], rtol=1e-4, atol=1e-4 * want["features"].max())
    assert np.abs(exported.predict_arrays(images)[1] - keras_path.predict_arrays(images)[1]).max() <= 1e-3
    assert exported.classes == keras_path.classes and exported.input_size == 224
    assert exported.info["study_id"] == keras_path.info["study_id"] and exported.info["fold"] == 3


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("fmt", FORMATS)
def test_float_export_of_the_frozen_mobilenet_matches_keras_on_real_images(demo_export, fmt):
    check_float_parity(FROZEN, demo_export(FROZEN, fmt))


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("fmt", FORMATS)
def test_float_export_of_the_finetuned_mobilenet_025_matches_keras_on_real_images(demo_export, fmt):
    check_float_parity(FINETUNED, demo_export(FINETUNED, fmt))


@pytest.mark.slow
@requires_shared
def test_committed_models_still_load_and_reproduce_their_predictions():
    """The preprocessing layer's new ``xla`` switch leaves saved models and their outputs as they were."""
    for model in (FROZEN, FINETUNED):
        images, _, saved = (part[:PARITY_IMAGES] for part in held_out(model))
        got = load_keras_model(model).predict_on_batch(images.astype(np.float32)[..., None])
        assert np.abs(got - saved).max() <= 1e-5


def test_preprocessing_without_xla_is_the_same_layer():
    from engine.models.layers import ImageNetPreprocess

    gray = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    for mode in ("tf", "caffe", "torch"):
        compiled, plain = ImageNetPreprocess(mode), ImageNetPreprocess(mode, xla=False)
        np.testing.assert_allclose(np.asarray(plain(gray)), np.asarray(compiled(gray)), atol=1e-5)
        assert "xla" not in plain.get_config() and plain.get_config()["mode"] == mode


NO_TENSORFLOW = """
import json, sys
from engine.models.runtime import load_exported
classifier = load_exported(sys.argv[1])
files = sys.argv[2:]
predictions = classifier.classify([(f, open(f, "rb").read()) for f in files])
print(json.dumps({
    "probabilities": [p.probabilities for p in predictions],
    "errors": [p.error for p in predictions],
    "heatmaps": [list(p.heatmap.shape) for p in predictions],
    "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules),
}))
"""


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("fmt", FORMATS)
def test_runtime_classifies_real_uploads_without_tensorflow(demo_export, fmt):
    files = sorted(PAPER_DATA.glob("*/*.png"))[::400][:8]
    proc = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, str(demo_export(FROZEN, fmt)), *map(str, files)],
        cwd=settings.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [] and got["errors"] == [None] * len(files)
    assert got["heatmaps"] == [[224, 224]] * len(files)
    want = load_classifier(FROZEN, artifacts_root=DEMO).classify([(str(f), f.read_bytes()) for f in files])
    for mine, theirs in zip(got["probabilities"], want, strict=True):
        assert max(abs(mine[c] - theirs.probabilities[c]) for c in mine) <= 1e-4


CORRECTED = {"litert": 20, "onnx": 24}
"""MobileNet 1.0's 27 convolutions less the float ones: each is followed by a BatchNorm that takes its shift."""
INT8_MAX_DROP = 0.005
"""The export issue's second int8 bar: accuracy on the held-out fold within 0.5 points (the first is
``INT8_MIN_AGREEMENT``)."""


@pytest.fixture(scope="module")
def frozen_held_out() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frozen MobileNet's held-out fold (images, labels) and its Keras probabilities, once for both formats.

    The Keras probabilities are the run's saved ``predictions.csv``, in the fold's order: the model still
    gives them (``test_committed_models_still_load_and_reproduce_their_predictions``), and reading them
    spares this file a Keras pass over 579 images at 224 px.
    """
    return held_out(FROZEN)


@pytest.fixture(scope="module")
def frozen_calibration() -> np.ndarray:
    """The calibration images ``export_runs`` picks for the frozen MobileNet (its training folds').

    The test calls ``export_model`` with them, so that the file is written as ``python -m engine export
    --quantize int8`` writes it, without the OOD detector that the command then fits on the file's own
    features of 2,318 training images (24 s of this test; the tiny ensemble's int8 test checks it)."""
    run = artifacts.read_run(FROZEN.parent)
    study = artifacts.read_study(run.study_id, DEMO)
    images = study_images(study, DEMO, data=PAPER_DATA)
    return images[calibration_indices(study, [run.fold], count=INT8_DEFAULTS.calibration_images)]


@pytest.mark.slow
@requires_shared
@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_export_of_the_frozen_mobilenet_on_its_held_out_fold(tmp_path, fmt, frozen_held_out, frozen_calibration):
    """Post-training int8 of the demo's best model (frozen MobileNet 1.0) on its 579 held-out images, against
    the export issue's bars: 99 % argmax agreement, 0.5 points of accuracy.

    With every convolution int8, MobileNet v1 lost 2.4-2.9 points here (agreement 96.5-97.1 %), whatever
    the calibration count or range method. Each member's first convolutions stay float (``FLOAT_FIRST_CONVS``
    says how their number was chosen, without this fold), and the others' weight-rounding shift is corrected
    (``engine.models.bias_correction``). Measured here: LiteRT 99.3 % and 0.17 points (without the correction
    99.1 % and 0.52), ONNX 99.1 % and 0.17 points (99.5 % and none without). One fold is a coarse gauge: 0.5
    points of 579 images is under 3 images, and an ONNX file agreeing on 5 fewer images would miss 99 %; over
    the five folds of the same protocol retrained, 2,897 images, the README's int8 table gives both formats.
    """
    images, labels, keras_proba = frozen_held_out
    result = export_model(
        load_keras_model(FROZEN),
        out_dir=tmp_path,
        classes=tuple(artifacts.read_run(FROZEN.parent).config["classes"]),
        format=fmt,
        quantize="int8",
        calibration_images=frozen_calibration,
    )
    assert result.meta["quantization"]["calibration_images"] == 128
    assert result.meta["quantization"]["float_layers"] == f"each member's first {FLOAT_FIRST_CONVS[fmt]} convolutions"
    assert result.meta["quantization"]["bias_correction"].startswith(f"{CORRECTED[fmt]} int8 convolutions")
    assert result.size_bytes < 0.3 * FROZEN.stat().st_size
    proba = probabilities(load_exported(result.path), images)
    agreement = np.mean(proba.argmax(1) == keras_proba.argmax(1))
    drop = np.mean(keras_proba.argmax(1) == labels) - np.mean(proba.argmax(1) == labels)
    print(f"{fmt} int8: agreement {agreement:.4f}, accuracy drop {drop * 100:.2f} points")
    assert agreement >= INT8_MIN_AGREEMENT
    assert drop <= INT8_MAX_DROP


def probabilities(classifier, images: np.ndarray) -> np.ndarray:
    return np.concatenate([classifier.predict_arrays(images[i : i + 64])[0] for i in range(0, len(images), 64)])


def test_calibration_images_come_from_every_members_training_folds():
    study = Study.from_json(study_json("s", folds=[[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]))
    chosen = calibration_indices(study, [1], count=100)
    assert set(chosen) == {0, 1, 2, 6, 7, 8, 9}
    assert set(calibration_indices(study, [0, 1], count=2)) <= {6, 7, 8, 9}
    assert set(calibration_indices(study, [0, 1, 2], count=10)) == set(range(10)), "no image is held out of it"


def test_int8_options_default_to_the_products_settings_and_are_checked():
    """``Int8Options()`` is what ``python -m engine export --quantize int8`` uses; the sidecar describes any other."""
    defaults = Int8Options()
    assert defaults == INT8_DEFAULTS and dict(defaults.float_first_convs) == FLOAT_FIRST_CONVS
    assert (defaults.onnx_percentile, defaults.calibration_images, defaults.calibration_chunk) == (
        ONNX_PERCENTILE,
        128,
        CALIBRATION_CHUNK,
    )
    assert defaults.bias_correction and {f: defaults.activations(f) for f in FORMATS} == ACTIVATIONS
    for wrong in (
        {"float_first_convs": {"litert": 3}},
        {"float_first_convs": {"litert": -1, "onnx": 3}},
        {"onnx_percentile": 0},
        {"calibration_images": 0},
        {"calibration_chunk": 0},
    ):
        with pytest.raises(ValueError):
            Int8Options(**wrong)
    with pytest.raises(TypeError):
        Int8Options({"litert": 1, "onnx": 1})  # keyword-only
    other = Int8Options(float_first_convs={"litert": 2, "onnx": 1}, onnx_percentile=99.9, bias_correction=False)
    described = _quantization("onnx", np.zeros((5, 8, 8, 1), dtype="float32"), None, other)
    assert described["float_layers"] == "each member's first 1 convolutions" and described["bias_correction"] == "none"
    assert described["calibration_images"] == 5 and "99.9th percentile" in described["activations"]
    assert _quantization("litert", None, None, INT8_DEFAULTS) is None, "a float file has no quantization"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, str]:
    """A finished 2-fold study of MobileNet-0.25 at 32 px (random weights, one epoch of the paper's protocol): a fold
    ensemble whose members have bases of their own (a frozen-base study's members share one, run once)."""
    base = tmp_path_factory.mktemp("ensemble")
    request = StudyRequest(protocol=get_protocol("paper").replace(epochs=1, batch_size=8), n_folds=2, weights=None)
    data = make_dataset(base / "data", n_per_class=8)
    root = base / "artifacts"
    with eager_functions():
        study = run_study(data, backbones=["MobileNet-0.25"], request=request, input_size=32, artifacts_root=root)
    return root, study.study_id


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``python -m engine export ...`` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["export", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def ensemble(tiny) -> dict[str, object]:
    """The tiny study's 2-fold ensemble exported once per format: LiteRT by the CLI (``--study``), ONNX by the API
    after ``python -m engine ood`` saved the Keras ensemble's detector."""
    root, study_id = tiny
    cli = run_cli("--study", study_id, "--backbone", "MobileNet-0.25", "--artifacts", str(root))
    with redirect_stdout(io.StringIO()):
        assert main(["ood", "--study", study_id, "--backbone", "MobileNet-0.25", "--artifacts", str(root)]) == 0
    onnx = export_runs(study_models(study_id, "MobileNet-0.25", root), format="onnx", artifacts_root=root)
    return {
        "cli": cli,
        "litert": root / "studies" / study_id / "runs" / "MobileNet-0.25" / "export" / CLI_FILE,
        "onnx": onnx.path,
    }


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_fold_ensemble_exports_and_matches_its_keras_serving_graph(tiny, ensemble, fmt):
    """The ensemble's outputs are the mean of its members' serving outputs (``serving_model``'s definition)."""
    root, study_id = tiny
    paths = study_models(study_id, "MobileNet-0.25", root)
    assert len(paths) == 2
    images = np.stack([make_image(k % 3, 32, np.random.default_rng(k)) for k in range(6)])
    batch = images[..., None].astype("float32")
    singles = [serving.serving_model([load_keras_model(p)]).predict_on_batch(batch) for p in paths]
    exported = load_exported(ensemble[fmt])
    got = exported.outputs(images)
    for key in serving.OUTPUTS:
        want = np.mean([np.asarray(single[key]) for single in singles], axis=0)
        np.testing.assert_allclose(got[key], want, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert exported.info["folds"] == [0, 1] and exported.info["fold"] is None
    assert [m["fold"] for m in exported.meta["members"]] == [0, 1]


def test_an_export_carries_an_ood_detector_fitted_on_its_own_features(ensemble, tiny):
    root, study_id = tiny
    meta = json.loads(sidecar_path(ensemble["litert"]).read_text())
    found = meta["ood"]
    assert found["file"] == detector_path(ensemble["litert"]).name and found["n_fit"] == 24
    assert found["fitted_on"] == "this file's own features", "no Keras ensemble detector was saved yet"
    assert found["sha256"] == file_sha256(detector_path(ensemble["litert"]))
    exported = load_exported(ensemble["litert"])
    assert exported.ood is not None and exported.ood.threshold == pytest.approx(found["threshold"])
    image = make_image(1, 32, np.random.default_rng(0))
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    (result,) = exported.classify([("x.png", out.getvalue())])
    features = exported.outputs(image[None])["features"]
    assert result.ood_score == pytest.approx(float(exported.ood.score(features)[0] / exported.ood.threshold))
    assert (result.warnings[:1] == [OOD_WARNING]) == (result.ood_score > 1.0)


def test_a_float_export_copies_the_detector_its_keras_model_saved(ensemble, tiny):
    """Its features are the Keras model's (to 1e-4), so fitting again on the same training images is not needed."""
    root, study_id = tiny
    keras_detector = OODDetector.load(
        ensemble_detector_path(root / "studies" / study_id / "runs" / "MobileNet-0.25", [0, 1])
    )
    exported = load_exported(ensemble["onnx"])
    assert exported.meta["ood"]["fitted_on"] == "the Keras model's features"
    features = exported.outputs(np.stack([make_image(k % 3, 32, np.random.default_rng(k)) for k in range(6)]))
    assert np.array_equal(exported.ood.score(features["features"]), keras_detector.score(features["features"]))


def test_the_keras_detector_is_copied_only_for_the_same_models_features_and_training_images(ensemble, tiny):
    root, study_id = tiny
    runs = ensemble_runs(study_models(study_id, "MobileNet-0.25", root), root)
    meta = json.loads(sidecar_path(ensemble["onnx"]).read_text())
    assert meta["parity"]["features_max_rel_diff"] <= 1e-5

    def reused(changes: dict, *, n_fit: int = 24) -> bool:
        result = ExportResult(path=ensemble["onnx"], sidecar=sidecar_path(ensemble["onnx"]), meta={**meta, **changes})
        return _reusable_detector(result, runs, n_fit=n_fit) is not None

    assert reused({})
    assert not reused({}, n_fit=23), "fitted on other training images"
    assert not reused({"quantization": {"mode": "int8"}})
    assert not reused({"parity": {**meta["parity"], "features_max_rel_diff": 1e-3}})
    assert not reused({"outputs": {**meta["outputs"], "features": [None, 7]}})
    model = runs[1].model_path
    saved = model.stat()
    detector = ensemble_detector_path(runs[0].path.parent, [0, 1]).stat()
    try:
        os.utime(model, ns=(saved.st_atime_ns, detector.st_mtime_ns + 1))
        assert not reused({}), "a member retrained after the detector was saved"
    finally:
        os.utime(model, ns=(saved.st_atime_ns, saved.st_mtime_ns))


def test_the_float_layers_of_int8_are_each_members_first_convolutions(ensemble):
    """Counted along the graph from the input, so both members of a fold ensemble keep theirs."""
    from ai_edge_litert.interpreter import Interpreter

    from engine.models.export import first_convolutions, first_litert_convolutions

    onnx_names = first_convolutions(ensemble["onnx"], 3)
    litert = Interpreter(model_path=str(ensemble["litert"]))
    litert_names = first_litert_convolutions(litert, 3)
    assert len(onnx_names) == len(litert_names) == 6, "ONNX renames convolutions: only their count can be checked"
    for member in ("member_0_", "member_1_"):
        assert sum(f"/{member}" in n.split(";")[0] for n in litert_names) == 3, litert_names


@pytest.mark.parametrize("count", [7, 24])
def test_onnx_int8_calibrates_any_count_of_images_a_chunk_at_a_time(ensemble, tmp_path, count):
    """Percentile ranges come from histograms grown ``CALIBRATION_CHUNK`` images at a time, or a divisor of the
    count (7 is prime: one at a time; 24: 8), so no count is refused and memory stays flat."""
    import onnx

    assert CALIBRATION_CHUNK == 16 and "percentile" in ACTIVATIONS["onnx"]
    path = tmp_path / "int8.onnx"
    shutil.copy(ensemble["onnx"], path)
    images = np.stack([make_image(k % 3, 32, np.random.default_rng(k)) for k in range(count)])[..., None]
    quantize_onnx(path, images.astype("float32"), float_convs=3)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    float_ops = [n.op_type for n in onnx.load(str(ensemble["onnx"])).graph.node]
    assert "QuantizeLinear" not in float_ops and ops.count("QuantizeLinear") > float_ops.count("Conv")
    batch = images[:6].astype("float32")
    got = RUNNERS["onnx"](path, threads=None).predict_on_batch(batch)["probabilities"]
    want = RUNNERS["onnx"](ensemble["onnx"], threads=None).predict_on_batch(batch)["probabilities"]
    assert np.allclose(got.sum(1), 1.0, atol=0.01), "a quantized softmax: each probability to 1/256"
    assert np.abs(got - want).max() < 0.1


@pytest.mark.slow
def test_an_int8_litert_file_keeps_float_exactly_each_members_first_convolutions(tiny, tmp_path):
    """What the sidecar says is what the file holds: the first ``FLOAT_FIRST_CONVS`` convolutions of each
    member output float, every other convolution int8."""
    from ai_edge_litert.interpreter import Interpreter

    from engine.models.export import first_litert_convolutions

    root, study_id = tiny
    paths = study_models(study_id, "MobileNet-0.25", root)
    code, _, err = run_cli(
        "--study", study_id, "--backbone", "MobileNet-0.25", "--quantize", "int8", "--out", str(tmp_path),
        "--artifacts", str(root),
    )  # fmt: skip
    assert code == 0
    path = tmp_path / "MobileNet-0.25-folds-0-1-int8.tflite"
    meta = json.loads(sidecar_path(path).read_text())
    kept = FLOAT_FIRST_CONVS["litert"]
    assert meta["quantization"]["float_layers"] == f"each member's first {kept} convolutions"
    assert meta["parity"]["images"] == 24, "every image is held out by a member: all 24, up to CHECK_IMAGES['int8']"
    assert meta["ood"]["fitted_on"] == "this file's own features", "an int8 file's features are not the Keras model's"
    warned = "the int8 file gives another class than the float model" in err
    assert warned == (meta["parity"]["argmax_agreement"] < INT8_MIN_AGREEMENT), err
    interpreter = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    dtypes = {
        tensors[op["outputs"][0]]["name"]: tensors[op["outputs"][0]]["dtype"].__name__
        for op in interpreter._get_ops_details()
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")
    }
    floats = {name for name, dtype in dtypes.items() if dtype == "float32"}
    assert len(floats) == kept * len(paths)
    assert floats == set(first_litert_convolutions(interpreter, kept))
    assert {dtypes[name] for name in dtypes.keys() - floats} == {"int8"}


def test_a_run_folder_without_its_fold_models_is_served_by_its_exported_ensemble(ensemble, tiny, tmp_path):
    """A fresh clone commits the export, not the fold models: the run folder still loads, without Keras models."""
    root, study_id = tiny
    copy = tmp_path / "artifacts"
    shutil.copytree(root / "studies", copy / "studies", ignore=shutil.ignore_patterns("model.keras"))
    folder = copy / "studies" / study_id / "runs" / "MobileNet-0.25"
    served = load_classifier(folder, artifacts_root=copy)
    assert served.path.name in {ensemble["litert"].name, ensemble["onnx"].name}
    listed = artifacts.changed_key(copy)
    shutil.rmtree(folder / "export")
    assert artifacts.changed_key(copy) != listed, "an app's list of models would not see an export come or go"
    with pytest.raises(ValueError, match="0 saved fold model.*no exported ensemble"):
        load_classifier(folder, artifacts_root=copy)


def test_cli_exports_the_study_ensemble_with_its_sidecar(ensemble):
    code, out, _ = ensemble["cli"]
    assert code == 0, out
    assert f"wrote {ensemble['litert']}" in out and "against Keras on 24 held-out images" in out
    meta = json.loads(sidecar_path(ensemble["litert"]).read_text())
    assert meta["parity"]["max_abs_dp"] <= 1e-4
    assert meta["classes"] == ["COVID-19", "Normal", "Viral Pneumonia"] and meta["input_size"] == 32
    assert set(meta["outputs"]) == set(serving.OUTPUTS) and meta["versions"]["keras"]


def test_the_cli_writes_a_model_card_from_the_artifacts(ensemble, tiny):
    root, study_id = tiny
    card = json.loads(card_path(ensemble["litert"], "json").read_text())
    runs = artifacts.study_runs(study_id, root)
    correct = sum(np.trace(np.asarray(r.metrics["confusion_matrix"])) for r in runs)
    assert card["performance"]["metrics"]["accuracy"]["estimate"] == pytest.approx(correct / 24)
    assert card["training"]["dataset"]["counts"] == {"COVID-19": 8, "Normal": 8, "Viral Pneumonia": 8}
    assert card["model"]["members"] == ["fold 0", "fold 1"] and card["out_of_distribution"]["n_fit"] == 24
    text = card_path(ensemble["litert"], "md").read_text()
    assert "not a medical device" in text.lower() and "folds are by image" in text.lower()
    assert f"{correct / 24:.3f} [" in text


def one_error(result: tuple[int, str, str]) -> str:
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_bad_input_gives_one_line_errors(tiny, tmp_path):
    root, study_id = tiny
    model = study_models(study_id, "MobileNet-0.25", root)[0]
    assert "got path=" in one_error(run_cli("--model", str(tmp_path / "nope.keras"), "--artifacts", str(root)))
    other = tmp_path / "artifacts"
    shutil.copytree(root / "studies" / study_id, other / "studies" / study_id)
    broken = other / "studies" / study_id / "runs" / "MobileNet-0.25" / "fold-0" / "model.keras"
    broken.write_bytes(b"not a model")
    message = one_error(run_cli("--model", str(broken), "--artifacts", str(other)))
    assert "not a loadable Keras model" in message
    message = one_error(run_cli("--model", str(model), "--format", "tflite", "--artifacts", str(root)))
    assert message == "error: format must be one of 'litert', 'onnx', got format='tflite'"
    assert "quantize='int4'" in one_error(
        run_cli("--model", str(model), "--quantize", "int4", "--artifacts", str(root))
    )
    message = one_error(run_cli("--study", study_id, "--backbone", "VGG16", "--artifacts", str(root)))
    assert "backbone='VGG16'" in message
    assert "not both" in one_error(run_cli("--study", study_id, "--model", str(model), "--artifacts", str(root)))


def test_runtime_refuses_bad_files_with_one_line_errors(ensemble, tmp_path):
    exported = tmp_path / CLI_FILE
    shutil.copy(ensemble["litert"], exported)
    shutil.copy(sidecar_path(ensemble["litert"]), sidecar_path(exported))
    meta = json.loads(sidecar_path(exported).read_text())
    with pytest.raises(ValueError, match="not found"):
        load_exported(tmp_path / "missing.tflite")
    with pytest.raises(ValueError, match="unknown exported model format"):
        load_exported(tmp_path / "model.keras")
    changed = tmp_path / "changed.tflite"
    changed.write_bytes(exported.read_bytes()[:-1] + b"\0")
    shutil.copy(sidecar_path(exported), sidecar_path(changed))
    with pytest.raises(ValueError, match="SHA-256"):
        load_exported(changed)
    for fmt, suffix, name in (("onnx", ".onnx", "ONNX"), ("litert", ".tflite", "LiteRT")):
        garbage = tmp_path / f"garbage{suffix}"
        garbage.write_bytes(b"not a model")
        garbled = {**meta, "format": fmt, "sha256": hashlib.sha256(b"not a model").hexdigest()}
        sidecar_path(garbage).write_text(json.dumps(garbled))
        with pytest.raises(ValueError, match=f"not an? {name} model") as caught:
            load_exported(garbage)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="no sidecar"):
        load_exported(exported.rename(tmp_path / "alone.tflite"))
