"""Exporting a study's models (LiteRT, ONNX; float and int8): the fold ensemble, its OOD detector, int8 options and
float layers, the CLI and its model card, bad input. On a tiny study; the committed models' parity on real images
is in ``test_export_real_models.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
    export_runs,
    quantize_onnx,
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
from tests.conftest import eager_functions
from tests.synthetic import make_dataset, make_image, study_json

FORMATS = ("litert", "onnx")
CLI_FILE = "MobileNet-0.25-folds-0-1.tflite"


def test_preprocessing_without_xla_is_the_same_layer():
    from engine.models.layers import ImageNetPreprocess

    gray = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    for mode in ("tf", "caffe", "torch"):
        compiled, plain = ImageNetPreprocess(mode), ImageNetPreprocess(mode, xla=False)
        np.testing.assert_allclose(np.asarray(plain(gray)), np.asarray(compiled(gray)), atol=1e-5)
        assert "xla" not in plain.get_config() and plain.get_config()["mode"] == mode


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
    ensemble whose members have bases of their own (a frozen-base study's members share one, run once).

    It and :func:`ensemble` cost about 50 s on the 2-core machine (two LiteRT/ONNX conversions of the ensemble), so
    every test that reads them is marked slow: ``make test-fast`` leaves them to ``make test``."""
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_exports_the_study_ensemble_with_its_sidecar(ensemble):
    code, out, _ = ensemble["cli"]
    assert code == 0, out
    assert f"wrote {ensemble['litert']}" in out and "against Keras on 24 held-out images" in out
    meta = json.loads(sidecar_path(ensemble["litert"]).read_text())
    assert meta["parity"]["max_abs_dp"] <= 1e-4
    assert meta["classes"] == ["COVID-19", "Normal", "Viral Pneumonia"] and meta["input_size"] == 32
    assert set(meta["outputs"]) == set(serving.OUTPUTS) and meta["versions"]["keras"]


@pytest.mark.slow
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


@pytest.mark.slow
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
    ensemble = ("--study", study_id, "--backbone", "ensemble", "--artifacts", str(root))
    assert "leave out --quantize" in one_error(run_cli(*ensemble, "--quantize", "int8"))
    assert "got format='tflite'" in one_error(run_cli(*ensemble, "--format", "tflite"))
    assert "needs 2 or more exports, got ['MobileNet-0.25']" in one_error(run_cli(*ensemble))


@pytest.mark.slow
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
