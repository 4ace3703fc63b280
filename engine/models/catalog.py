"""Which models an artifacts folder can serve, and in which order: each backbone's fold ensemble and each study's
ensemble of backbones (the served one first, chosen on what holds outside its source), then single fold models.

Nothing is loaded here: a :class:`ModelInfo` says where a model is and what serves it (its ``model.keras`` files
or an exported file); ``engine.models.inference.load_classifier`` loads it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engine import settings
from engine.results import artifacts, atomic

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
SERVED_FILE = "served.json"
"""In the artifacts folder: the fold ensemble chosen to serve by default, and why (``engine.reports.served``)."""


@dataclass(frozen=True)
class ModelInfo:
    """A trained model on disk: one fold's model, or a backbone's fold ensemble, and what it was trained on.

    ``path`` is the fold's ``model.keras``, or for an ensemble the backbone's run folder (its saved
    fold models are the members). ``export`` is the exported runtime file to serve it with, when
    there is one (``engine.models.export``): no TensorFlow needed. ``accuracy`` is held-out: the
    fold's, or for an ensemble its members' pooled over their own held-out folds (the ensemble
    itself has no held-out image). A study's ensemble of backbones (``engine.models.backbone_ensemble``) has
    ``backbone`` "ensemble" and its backbones in ``backbones``; exported, its manifest is ``path`` and ``export``,
    otherwise ``path`` is the study's ``runs`` folder (its backbones' fold models) and ``export`` is None.
    """

    path: Path
    study_id: str
    title: str
    backbone: str
    fold: int | None
    folds: tuple[int, ...]
    protocol: str
    accuracy: float
    classes: tuple[str, ...]
    input_size: int
    export: Path | None = None
    backbones: tuple[str, ...] = ()

    @property
    def is_ensemble(self) -> bool:
        return self.fold is None

    @property
    def n_members(self) -> int:
        """Fold models averaged: each fold's, of each backbone."""
        return len(self.folds) * max(len(self.backbones), 1)

    @property
    def label(self) -> str:
        if self.backbones:
            # its members' pooled accuracy is not its own (the mean of several backbones' probabilities beats it)
            return f"ensemble of {', '.join(self.backbones)} · {self.protocol} · {len(self.folds)} fold models of each"
        if self.is_ensemble:
            return (
                f"{self.backbone} · {self.protocol} · ensemble of {len(self.folds)} fold models · "
                f"members' held-out accuracy {self.accuracy:.3f}"
            )
        return f"{self.backbone} · {self.protocol} · fold {self.fold} · accuracy {self.accuracy:.3f}"

    @property
    def serving_path(self) -> Path:
        """What :func:`load_classifier` loads for it: the export when there is one."""
        return self.export or self.path


def _exports(folder: Path) -> list[tuple[Path, dict]]:
    """Exported files in ``folder`` with their sidecars, float LiteRT first (the lightest to serve exactly)."""
    import json

    found = []
    for side in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        target = side.with_suffix("")
        if target.suffix in (".tflite", ".onnx") and target.is_file():
            found.append((target, json.loads(side.read_text())))
    return sorted(found, key=lambda f: (f[1].get("quantization") is not None, f[0].suffix != ".tflite", f[0].name))


def members_export(
    folder: Path, folds: tuple[int, ...], *, float_only: bool = False
) -> tuple[Path, tuple[int, ...]] | None:
    """The preferred export in ``folder`` whose members are ``folds`` (or, with none given, any ensemble's); with
    ``float_only``, never an int8 file."""
    for path, meta in _exports(folder):
        if float_only and meta.get("quantization") is not None:
            continue
        members = tuple(sorted(m["fold"] for m in meta["members"]))
        if members == folds or (not folds and len(members) > 1):
            return path, members
    return None


def fold_export(run: artifacts.RunResult) -> Path | None:
    """The preferred exported file of one fold's model, when it was exported."""
    found = members_export(run.path / "export", (run.fold,))
    return found[0] if found else None


def list_models(artifacts_root: Path | None = None) -> list[ModelInfo]:
    """Every servable model: each backbone's fold ensemble first (best members first), then single fold models."""
    ensembles, singles = [], []
    for study_id in artifacts.list_study_ids(artifacts_root):
        saved_folds: dict[str, tuple[int, ...]] = {}
        study = artifacts.read_study(study_id, artifacts_root)
        by_backbone: dict[str, list[artifacts.RunResult]] = {}
        for run in artifacts.study_runs(study_id, artifacts_root):
            by_backbone.setdefault(run.backbone, []).append(run)
        for backbone, runs in by_backbone.items():
            common = {"study_id": study_id, "title": study.title, "backbone": backbone}
            common |= {"protocol": study.protocol_name, "classes": tuple(runs[0].config["classes"])}
            common["input_size"] = int(runs[0].config["input_size"])
            for run in runs:
                export = fold_export(run)
                if run.model_path is not None or export:
                    singles.append(
                        ModelInfo(
                            path=run.model_path or run.path / MODEL_FILE,
                            fold=run.fold,
                            folds=(run.fold,),
                            accuracy=float(run.metrics["accuracy"]),
                            export=export,
                            **common,
                        )
                    )
            saved = tuple(sorted(r.fold for r in runs if r.model_path is not None))
            saved_folds[backbone] = saved
            export = members_export(runs[0].path.parent / "export", saved if len(saved) > 1 else ())
            folds = export[1] if export else saved
            if len(folds) > 1:
                ensembles.append(
                    ModelInfo(
                        path=runs[0].path.parent,
                        fold=None,
                        folds=folds,
                        accuracy=_pooled_accuracy([r for r in runs if r.fold in folds]),
                        export=export[0] if export else None,
                        **common,
                    )
                )
        if (found := _backbone_ensemble(study_id, study.title, by_backbone, saved_folds, artifacts_root)) is not None:
            ensembles.append(found)
    served = _served(artifacts_root)
    return sorted(ensembles, key=lambda m: _best_first(m, served)) + sorted(singles, key=_best_first)


def _pooled_accuracy(members: list[artifacts.RunResult]) -> float | None:
    """The members' held-out accuracy pooled over their own held-out images; None when they tested none."""
    tested = sum(r.config["n_test"] for r in members)
    return sum(r.metrics["accuracy"] * r.config["n_test"] for r in members) / tested if tested else None


def _backbone_ensemble(
    study_id: str,
    title: str,
    by_backbone: dict[str, list[artifacts.RunResult]],
    saved_folds: dict[str, tuple[int, ...]],
    artifacts_root: Path | None,
) -> ModelInfo | None:
    """The study's ensemble of backbones: exported, when its manifest is there; otherwise on the Keras path, when
    two or more backbones saved the same two or more fold models. Its accuracy is its members' pooled over their
    own held-out folds."""
    from engine.models.backbone_ensemble import ENSEMBLE, manifest_path, read_manifest

    path = manifest_path(study_id, artifacts_root or settings.artifacts_dir())
    if path.is_file():
        try:
            manifest = read_manifest(path)
        except ValueError as exc:
            log.warning("not listed: %s", exc)
            return None
        backbones, folds, export = tuple(manifest["backbones"]), tuple(manifest["folds"]), path
        if sorted(backbones) != sorted(saved_folds):
            log.warning(
                "not listed: %s holds %s, but study %s has %s now; export it again (--backbone ensemble)",
                path,
                ", ".join(backbones),
                study_id,
                ", ".join(sorted(saved_folds)),
            )
            return None
    else:
        # every backbone of the study, each with the same 2 or more saved fold models (what the Keras path loads)
        if len(saved_folds) < 2 or len(set(saved_folds.values())) > 1 or len(next(iter(saved_folds.values()))) < 2:
            return None
        backbones, folds, export = tuple(sorted(saved_folds)), next(iter(saved_folds.values())), None
        path = path.parent.parent / "runs"
    members = [r for b in backbones for r in by_backbone.get(b, []) if r.fold in folds]
    accuracy = _pooled_accuracy(members)
    if accuracy is None:
        return None
    return ModelInfo(
        path=path,
        study_id=study_id,
        title=title,
        backbone=ENSEMBLE,
        fold=None,
        folds=folds,
        protocol=members[0].config["protocol"]["name"],
        accuracy=accuracy,
        classes=tuple(members[0].config["classes"]),
        input_size=int(members[0].config["input_size"]),
        export=export,
        backbones=backbones,
    )


def _served(artifacts_root: Path | None) -> tuple[str, str] | None:
    """The (study, backbone) of the ensemble chosen to serve by default, when a choice was written."""
    path = (artifacts_root or settings.artifacts_dir()) / SERVED_FILE
    if not path.is_file():
        return None
    choice = atomic.read_json(path)
    return choice["study_id"], choice["backbone"]


def _best_first(info: ModelInfo, served: tuple[str, str] | None = None) -> tuple:
    """The served model first (chosen on what holds outside the source), then by held-out accuracy."""
    return ((info.study_id, info.backbone) != served, -info.accuracy, info.backbone, info.study_id, info.folds)
