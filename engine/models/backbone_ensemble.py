"""A study's ensemble of backbones, served from its members' exported files: no TensorFlow, no file written twice.

Each backbone's fold ensemble is exported on its own (``engine.models.export``); the ensemble of backbones is a
manifest beside them, ``studies/<id>/export/ensemble.json``, naming each member's file and SHA-256. Loaded, it
averages the members' probabilities (the same mean as the comparison's "ensemble" row and ``evaluate --study``),
shows the mean of the members' Grad-CAM maps of the class it predicts, and calls an image unlike the training
images when the median of the members' score-over-threshold ratios is above 1 (of three members: when two or three
detectors flag it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.models import serving
from engine.models.inference import Classifier
from engine.results import artifacts, atomic

ENSEMBLE = "ensemble"
"""The "backbone" name of a study's ensemble of backbones, in the pages, the evaluations and ``served.json``."""
MANIFEST_NAME = "ensemble.json"
MANIFEST_SCHEMA = 1
COMBINE = (
    "the mean of the members' probabilities; the heatmap is the mean of the members' Grad-CAM maps of the "
    "predicted class; an image is unlike the training images when the median of the members' OOD scores over "
    "their thresholds is above 1 (of three members: when two or three detectors flag it)"
)


def manifest_path(study_id: str, artifacts_root: Path) -> Path:
    return artifacts.study_dir(study_id, artifacts_root) / "export" / MANIFEST_NAME


def is_manifest(path: Path) -> bool:
    return path.name == MANIFEST_NAME and path.parent.name == "export"


def is_runs_folder(path: Path) -> bool:
    """A study's ``runs`` folder: its backbones' fold models, served as one ensemble on the Keras path."""
    return path.is_dir() and path.name == "runs"


def ensemble_study(path: Path) -> str | None:
    """The study whose ensemble of backbones ``path`` is (its manifest or its ``runs`` folder), else None."""
    if is_manifest(path):
        return path.parent.parent.name
    return path.parent.name if is_runs_folder(path) else None


def _member_entry(study_dir: Path, export: Path) -> dict:
    side = json.loads(export.with_name(export.name + ".json").read_text())
    members = side["members"]
    return {
        "backbone": members[0]["backbone"],
        "file": export.relative_to(study_dir).as_posix(),
        "sha256": side["sha256"],
        "folds": sorted(m["fold"] for m in members),
        "classes": side["classes"],
        "input_size": int(side["input_size"]),
        "format": side["format"],
        "quantization": side["quantization"],
    }


def require_backbones(study_id: str, backbones: list[str]) -> None:
    """An ensemble of backbones needs two or more; checked before anything is exported."""
    if len(backbones) < 2:
        raise ValueError(f"study {study_id}: an ensemble of backbones needs 2 or more exports, got {backbones}")


def write_manifest(study_id: str, exports: dict[str, Path], artifacts_root: Path) -> Path:
    """Write the manifest of ``exports`` (backbone -> its fold ensemble's exported file); they must share classes,
    input size, folds and format, and be float (an int8 member would change the ensemble's figures unmeasured)."""
    study_dir = artifacts.study_dir(study_id, artifacts_root)
    require_backbones(study_id, sorted(exports))
    members = [_member_entry(study_dir, path) for _, path in sorted(exports.items())]
    for key in ("classes", "input_size", "folds", "format"):
        values = {json.dumps(m[key]) for m in members}
        if len(values) > 1:
            found = "; ".join(f"{m['backbone']}: {m[key]}" for m in members)
            raise ValueError(f"study {study_id}: the members' exports differ in {key} ({found})")
    quantized = [m["backbone"] for m in members if m["quantization"] is not None]
    if quantized:
        raise ValueError(f"study {study_id}: members {quantized} are quantized; export them in float")
    study = artifacts.read_study(study_id, artifacts_root)
    manifest = {
        "schema_version": MANIFEST_SCHEMA,
        "study_id": study_id,
        "protocol": study.protocol_name,
        "backbones": [m["backbone"] for m in members],
        "folds": members[0]["folds"],
        "classes": members[0]["classes"],
        "input_size": members[0]["input_size"],
        "format": members[0]["format"],
        "combine": COMBINE,
        "members": [{k: m[k] for k in ("backbone", "file", "sha256")} for m in members],
    }
    path = manifest_path(study_id, artifacts_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, manifest)
    return path


def read_manifest(path: Path) -> dict:
    """The manifest at ``path``, checked: its schema, and each member file there with the SHA-256 it names."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable ensemble manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != MANIFEST_SCHEMA:
        raise ValueError(f"{path}: not an ensemble manifest of schema version {MANIFEST_SCHEMA}")
    study_dir = path.parent.parent.resolve()
    for member in manifest["members"]:
        file = (study_dir / member["file"]).resolve()
        if study_dir not in file.parents:
            raise ValueError(f"{path}: member {member['backbone']} file {member['file']!r} is outside its study folder")
        if not file.is_file():
            raise ValueError(f"{path}: member {member['backbone']} file {member['file']} is not there")
        if atomic.file_sha256(file) != member["sha256"]:
            raise ValueError(
                f"{path}: {member['file']} changed after the ensemble was written; export the ensemble again "
                f"(python -m engine export --study {manifest['study_id']} --backbone {ENSEMBLE})"
            )
    return manifest


def served_files(export: Path) -> list[Path]:
    """The exported files a model is served from: a manifest's members, or the exported file itself."""
    if is_manifest(export):
        return [export.parent.parent / m["file"] for m in read_manifest(export)["members"]]
    return [export]


class BackboneEnsemble(Classifier):
    """The members' exported classifiers as one :class:`~engine.models.inference.Classifier` (see the module)."""

    def __init__(self, members: list[Classifier], *, manifest: dict) -> None:
        info = {
            "backbone": ENSEMBLE,
            "backbones": list(manifest["backbones"]),
            "study_id": manifest["study_id"],
            "protocol": manifest["protocol"],
            "fold": None,
            "folds": list(manifest["folds"]),
            "format": manifest["format"],
            "quantization": None,
        }
        first = members[0]
        super().__init__(None, classes=first.classes, input_size=first.input_size, info=info, ood=None)
        self.members = members

    @property
    def has_detector(self) -> bool:
        return all(m.ood is not None for m in self.members)

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The members' mean probabilities: the one output bases of different widths share."""
        return {"probabilities": np.mean([m.outputs(images)["probabilities"] for m in self.members], axis=0)}

    def features(self, images: np.ndarray, *, batch: int = 64) -> np.ndarray:
        raise ValueError("an ensemble of backbones has no one feature space; each member's detector scores its own")

    def ood_ratios(self, images: np.ndarray, *, batch: int = 64) -> np.ndarray | None:
        if not self.has_detector:
            return None
        return np.median([m.ood_ratios(images, batch=batch) for m in self.members], axis=0)

    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        raws = [m.outputs(images) for m in self.members]
        proba = np.mean([r["probabilities"].astype(np.float64) for r in raws], axis=0)
        predicted = proba.argmax(axis=1)
        size = self.input_size
        heatmaps = np.mean([serving.heatmaps(r["class_maps"], predicted, size=size) for r in raws], axis=0)
        ratios = None
        if self.has_detector:
            ratios = np.median([m.ood.ratios(r["features"]) for m, r in zip(self.members, raws, strict=True)], axis=0)
        return proba, heatmaps, ratios


def load_backbone_ensemble(path: str | Path, *, threads: int | None = None) -> BackboneEnsemble:
    """The ensemble a manifest names, each member loaded from its exported file (checked against its SHA-256)."""
    from engine.models.runtime import load_exported

    path = Path(path)
    manifest = read_manifest(path)
    members = [load_exported(path.parent.parent / m["file"], threads=threads) for m in manifest["members"]]
    return BackboneEnsemble(members, manifest=manifest)


def keras_backbone_ensemble(runs: Path, artifacts_root: Path) -> BackboneEnsemble:
    """Every backbone's fold ensemble of a study (``runs`` is ``studies/<id>/runs``) as one, on the Keras path: the
    same model as the exported manifest's, for a study not exported yet."""
    from engine.models.inference import load_classifier

    members = [load_classifier(folder, artifacts_root=artifacts_root) for folder in sorted(runs.iterdir())]
    folds = {tuple(m.info["folds"]) for m in members}
    if len(members) < 2 or len(folds) > 1:
        found = "; ".join(f"{m.info['backbone']}: {m.info['folds']}" for m in members)
        raise ValueError(f"{runs}: an ensemble of backbones needs 2 or more with the same folds ({found})")
    manifest = {
        "backbones": [m.info["backbone"] for m in members],
        "study_id": members[0].info["study_id"],
        "protocol": members[0].info["protocol"],
        "folds": list(folds.pop()),
        "format": None,  # the Keras fold models, not an exported file
    }
    return BackboneEnsemble(members, manifest=manifest)
