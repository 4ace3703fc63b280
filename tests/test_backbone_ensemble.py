"""A study's ensemble of backbones served from its members' exports: the committed one's outputs against its
members', the manifest's checks, and how it is listed. No TensorFlow: the members are LiteRT files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import settings
from engine.models.backbone_ensemble import (
    ENSEMBLE,
    BackboneEnsemble,
    load_backbone_ensemble,
    manifest_path,
    read_manifest,
    write_manifest,
)
from engine.models.catalog import list_models
from engine.models.inference import load_classifier
from engine.models.runtime import load_exported
from engine.results import atomic
from tests import app_fixtures
from tests.app_fixtures import TINY_BACKBONES
from tests.synthetic import make_image

tiny_study = app_fixtures.tiny_study

DEMO = settings.PROJECT_ROOT / "artifacts"
MANIFEST = next(DEMO.glob("studies/*/export/ensemble.json"))


@pytest.fixture(scope="module")
def ensemble() -> BackboneEnsemble:
    return load_classifier(MANIFEST, artifacts_root=DEMO)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    xrays = [make_image(k % 3, 224, rng) for k in range(3)]
    flat = np.full((224, 224), 128, dtype=np.uint8)  # nothing like a chest X-ray
    return np.stack([*xrays, flat])


def test_the_committed_ensemble_averages_its_members_and_takes_their_median_ood_ratio(ensemble, images):
    assert isinstance(ensemble, BackboneEnsemble) and len(ensemble.members) >= 2
    proba, heatmaps, ratios = ensemble._predict(images)
    members = [m._predict(images) for m in ensemble.members]
    np.testing.assert_allclose(proba, np.mean([p for p, _, _ in members], axis=0), atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ratios, np.median([r for _, _, r in members], axis=0), rtol=1e-6)
    np.testing.assert_allclose(ensemble.ood_ratios(images), ratios, rtol=1e-5)
    assert heatmaps.shape == (4, 224, 224) and heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    assert ratios[-1] > 1.0, "a flat grey square is unlike every training X-ray"
    assert ensemble.info["backbones"] == [m["backbone"] for m in read_manifest(MANIFEST)["members"]]


def test_an_upload_is_classified_by_the_ensemble_with_its_ood_score(ensemble, images):
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    (found,) = ensemble.classify([("x.png", buffer.getvalue())])
    assert found.error is None and found.ood_score is not None
    assert found.predicted == max(found.probabilities, key=found.probabilities.get)


def test_the_ensemble_is_listed_with_its_backbones_and_loads_without_keras(ensemble):
    # of the manifest's study: where a study's fold models are here (not on a fresh clone), its Keras ensemble is too
    listed = [m for m in list_models(DEMO) if m.backbone == ENSEMBLE and m.study_id == MANIFEST.parent.parent.name]
    assert [m.export for m in listed] == [MANIFEST]
    (info,) = listed
    assert info.backbones == tuple(ensemble.info["backbones"]) and info.is_ensemble
    assert info.n_members == len(info.folds) * len(info.backbones)
    assert info.label.startswith(f"ensemble of {', '.join(info.backbones)}")
    assert 0.9 < info.accuracy <= 1.0


def copy_study(tmp_path: Path) -> Path:
    """The manifest's study with the manifest and its members' exports (no fold model), in a folder of its own."""
    study = MANIFEST.parent.parent
    copy = tmp_path / "artifacts" / "studies" / study.name
    shutil.copytree(study / "export", copy / "export")
    shutil.copy(study / "study.json", copy / "study.json")
    for member in atomic.read_json(MANIFEST)["members"]:
        for file in (study / member["file"]).parent.glob(Path(member["file"]).name + "*"):
            target = copy / member["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target.parent / file.name)
    return copy


def test_a_member_changed_or_gone_after_the_manifest_is_refused_by_name(tmp_path):
    copy = copy_study(tmp_path)
    manifest = copy / "export" / MANIFEST.name
    first = atomic.read_json(manifest)["members"][0]
    member = copy / first["file"]
    member.write_bytes(member.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=f"{first['file']} changed after the ensemble was written"):
        load_backbone_ensemble(manifest)
    member.unlink()
    with pytest.raises(ValueError, match=f"member {first['backbone']} file .* is not there"):
        read_manifest(manifest)
    escaping = atomic.read_json(manifest)
    escaping["members"][0]["file"] = "../../../../etc/passwd"
    manifest.write_text(json.dumps(escaping))
    with pytest.raises(ValueError, match="is outside its study folder"):
        read_manifest(manifest)
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable ensemble manifest"):
        read_manifest(manifest)


def test_the_manifest_is_written_from_the_members_sidecars_and_refuses_ones_that_differ(tmp_path):
    copy = copy_study(tmp_path)
    root, study_id = copy.parent.parent, copy.name
    written = json.loads(MANIFEST.read_text())
    exports = {m["backbone"]: copy / m["file"] for m in written["members"]}
    path = write_manifest(study_id, exports, root)
    assert path == manifest_path(study_id, root) and json.loads(path.read_text()) == written
    assert load_exported(exports[written["backbones"][0]]).classes == tuple(written["classes"])

    one = next(iter(exports.values()))
    with pytest.raises(ValueError, match="needs 2 or more exports"):
        write_manifest(study_id, {"x": one}, root)
    side = one.with_name(one.name + ".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "members": meta["members"][:-1]}))
    with pytest.raises(ValueError, match="differ in folds"):
        write_manifest(study_id, exports, root)
    side.write_text(json.dumps({**meta, "quantization": {"mode": "int8"}}))
    with pytest.raises(ValueError, match="quantized; export them in float"):
        write_manifest(study_id, exports, root)


@pytest.mark.slow
def test_a_study_not_exported_serves_its_ensemble_of_backbones_from_its_keras_fold_models(tiny_study):
    """The tiny study (two backbones, two folds, models saved) has no manifest: it is listed on the Keras path."""
    root = tiny_study.root
    (info,) = [m for m in list_models(root) if m.backbone == ENSEMBLE]
    assert info.export is None and info.path == root / "studies" / tiny_study.study_id / "runs"
    assert info.backbones == tuple(sorted(TINY_BACKBONES)) and info.folds == (0, 1)
    ensemble = load_classifier(info.serving_path, artifacts_root=root)
    folds = [load_classifier(info.path / b, artifacts_root=root) for b in info.backbones]
    images = np.stack([make_image(k, info.input_size, np.random.default_rng(k)) for k in range(3)])
    expected = np.mean([m.predict_arrays(images)[0] for m in folds], axis=0)
    np.testing.assert_allclose(ensemble.predict_arrays(images)[0], expected, atol=1e-6)
    assert ensemble.info["format"] is None and ensemble.info["backbones"] == list(info.backbones)
