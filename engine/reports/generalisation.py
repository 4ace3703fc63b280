"""Does a study's figure hold outside its source? Its headline figures with the figures that judge them.

For each model of a study (each backbone's fold ensemble, and the ensemble of backbones), read from disk:

- **in-fold**: the pooled out-of-fold figures with their intervals, and the split that made them
  (patient- or image-level); for a multi-source study, each source's held-out figures too;
- **leakage**: the same protocol and backbone under image-level folds, where that study exists;
- **shortcut audit** (``engine.evaluation.shortcuts``): the no-anatomy baseline and occlusion;
- **external**: every saved evaluation of the model (``engine.evaluation.external``), each with how its set
  relates to the study (another source, or more of one the study has).

Nothing here trains or predicts: a fresh clone shows what was committed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import settings
from engine.data.datasets import DatasetError, read_manifest
from engine.data.file_tables import groupable
from engine.evaluation.external import figure_intervals, saved_evaluations
from engine.evaluation.external_results import ExternalEvaluation
from engine.evaluation.predictions import ENSEMBLE, model_names, study_out_of_fold
from engine.evaluation.shortcuts import CONDITIONS, audit_dir
from engine.evaluation.summary import model_summary
from engine.results import artifacts, atomic
from engine.results.studies import Study

TWIN_FIELDS = ("protocol", "n_folds", "seed", "input_size", "weights")


def split_label(study: Study) -> str:
    return f"{study.split_level}-level folds"


def image_level_twin(study: Study, artifacts_root: Path | None = None) -> str | None:
    """The study with the same data, protocol and settings but image-level folds: the leakage figure's other half."""
    if study.split_level != "patient":
        return None
    for other_id in artifacts.list_study_ids(artifacts_root):
        other = artifacts.read_study(other_id, artifacts_root)
        same = other.dataset.fingerprint == study.dataset.fingerprint
        if same and other.split_level == "image" and all(getattr(other, f) == getattr(study, f) for f in TWIN_FIELDS):
            return other_id
    return None


@dataclass(frozen=True)
class External:
    """One saved evaluation of a model on a set outside its study."""

    name: str
    relation: str
    counts: dict[str, int]
    accuracy: dict | None
    recall: dict[str, dict]
    called: dict[str, dict[str, int]]
    served_by: str
    key: str
    by_metadata: dict[str, dict[str, dict]]

    @property
    def one_class(self) -> bool:
        return len(self.counts) == 1


@dataclass(frozen=True)
class ModelFigures:
    """What judges one model of a study: in-fold, by source, leakage, occlusion, source probe, external."""

    model: str
    in_fold: dict[str, dict]
    by_source: dict[str, dict]
    by_metadata: dict[str, dict[str, dict]]
    image_level: dict | None
    occlusion: dict[str, dict] | None
    source_probe: dict | None
    external: tuple[External, ...]

    def external_set(self, name: str) -> External | None:
        return next((e for e in self.external if e.name == name), None)


@dataclass(frozen=True)
class Generalisation:
    """A study's models with the figures that judge them, and its no-anatomy baseline."""

    study_id: str
    title: str
    protocol: str
    split: str
    sources: tuple[str, ...]
    baseline: dict | None
    region: str | None
    twin: str | None
    models: tuple[ModelFigures, ...]

    def model(self, name: str) -> ModelFigures | None:
        return next((m for m in self.models if m.model == name), None)


def _source_of(files: list[str], sources: tuple[str, ...]) -> np.ndarray:
    """Each file's source index, from the prefix a multi-source dataset gives its files."""
    index = {name: k for k, name in enumerate(sources)}
    return np.asarray([index.get(f.split("/", 1)[0], 0) for f in files], dtype=np.int64)


def _by_source(oof, sources: tuple[str, ...]) -> dict[str, dict]:
    if len(sources) < 2:
        return {}
    source = _source_of(oof.files, sources)
    return {
        name: figure_intervals(oof.y_true[source == k], oof.proba[source == k], oof.classes)
        for k, name in enumerate(sources)
        if np.any(source == k)
    }


def _metadata(fingerprint: str, artifacts_root: Path) -> dict[str, dict[str, str]]:
    """The dataset's groupable metadata columns (``metadata.csv``), ``{column: {file: value}}``; empty without."""
    try:
        manifest = read_manifest(fingerprint, artifacts_root)
    except DatasetError:
        return {}
    return groupable(manifest.get("metadata", {}))


def subgroups(files: list[str], y: np.ndarray, proba: np.ndarray, classes, columns: dict) -> dict[str, dict[str, dict]]:
    """Figures with intervals for each value of each metadata column (age band, sex, view...) the set gives."""
    found: dict[str, dict[str, dict]] = {}
    for column, values in columns.items():
        labels = np.asarray([values.get(f, "") for f in files])
        found[column] = {
            value: figure_intervals(y[labels == value], proba[labels == value], classes)
            for value in sorted(set(labels) - {""})
        }
    return found


@functools.lru_cache(maxsize=4)
def _evaluations(root: Path, changed: tuple[int, int]) -> tuple[ExternalEvaluation, ...]:
    """Every saved evaluation, read once per state of the artifacts folder: each model of each study looks through
    all of them (a README table read the 45 committed files 33 times, 3 of its 10 s)."""
    return tuple(saved_evaluations(root))


def _called(e: ExternalEvaluation) -> dict[str, dict[str, int]]:
    """What the set's images of each class were called: ``{true class: {predicted class: count}}``, counts above 0."""
    matrix = e.confusion_matrix
    return {
        true: {called: int(n) for called, n in zip(e.classes, matrix[row], strict=True) if n}
        for row, true in enumerate(e.classes)
        if true in e.data.counts
    }


def _external(
    study_id: str, model: str, artifacts_root: Path, evaluations: tuple[ExternalEvaluation, ...]
) -> tuple[External, ...]:
    """The model's saved evaluations, one per set: its Keras fold models' where both they and an export were run."""
    chosen: dict[str, ExternalEvaluation] = {}
    for e in evaluations:
        if e.study_id != study_id or e.backbone != model or e.fold is not None:
            continue
        name = e.data.name
        if name not in chosen or (chosen[name].format and not e.format):
            chosen[name] = e
    found = []
    for name, e in sorted(chosen.items()):
        recall = {c: {**v, "n": n} for c, n in e.data.counts.items() if (v := e.interval(f"recall[{c}]"))}
        columns = _metadata(e.data.fingerprint, artifacts_root)
        predictions = e.predictions
        by_metadata = (
            subgroups(
                list(predictions.files),
                np.asarray(predictions.true),
                np.asarray(predictions.probabilities),
                e.classes,
                columns,
            )
            if columns and predictions
            else {}
        )
        found.append(
            External(
                name=name,
                relation=e.relation,
                counts=e.data.counts,
                accuracy=None if e.one_class else e.interval("accuracy"),
                recall=recall,
                called=_called(e),
                served_by=e.served_by,
                key=e.key,
                by_metadata=by_metadata,
            )
        )
    return tuple(found)


def _audit(study_id: str, name: str, artifacts_root: Path) -> dict | None:
    path = audit_dir(study_id, artifacts_root) / f"{name}.json"
    return atomic.read_json(path) if path.is_file() else None


def _in_fold(study_id: str, model: str, artifacts_root: Path) -> tuple[dict, object]:
    """The model's held-out figures; each recall keeps its class's image count as ``n``, as the external sets' do,
    so a verdict can say how many images would clear its bar (``engine.evaluation.sample_size``)."""
    oof = study_out_of_fold(study_id, model, artifacts_root)
    counts = {f"recall[{c}]": n for i, c in enumerate(oof.classes) if (n := int((oof.y_true == i).sum()))}
    metrics = model_summary(oof, artifacts_root)["metrics"]
    return {name: {**figure, "n": counts[name]} if name in counts else figure for name, figure in metrics.items()}, oof


def generalisation(study_id: str, artifacts_root: Path | None = None) -> Generalisation:
    """Everything :mod:`this module <engine.reports.generalisation>` gathers, for one study.

    Kept until a result anywhere in the artifacts folder changes (``artifacts.changed_key``, the app's cache
    key): the report, the README table, the model cards and the checklist each ask for the same studies,
    about 80 calls for one ``python -m engine report``.
    """
    root = Path(artifacts_root or settings.artifacts_dir())
    return _generalisation(study_id, root, artifacts.changed_key(root))


@functools.lru_cache(maxsize=64)
def _generalisation(study_id: str, root: Path, changed: tuple[int, int]) -> Generalisation:
    study = artifacts.read_study(study_id, root)
    sources = study.dataset.sources
    twin = image_level_twin(study, root)
    twin_models = set(model_names(twin, root)) if twin else set()
    baseline = _audit(study_id, "baseline", root)
    columns = _metadata(study.dataset.fingerprint, root)
    evaluations = _evaluations(root, changed)
    region = None
    models = []
    for model in model_names(study_id, root):
        metrics, oof = _in_fold(study_id, model, root)
        audit = _audit(study_id, model, root) if model != ENSEMBLE else None
        if audit:
            region = audit["region"]["description"]
        models.append(
            ModelFigures(
                model=model,
                in_fold=metrics,
                by_source=_by_source(oof, sources),
                by_metadata=subgroups(oof.files, oof.y_true, oof.proba, oof.classes, columns) if columns else {},
                image_level=_in_fold(twin, model, root)[0]["accuracy"] if model in twin_models else None,
                occlusion=({c: audit["occlusion"][c]["metrics"]["accuracy"] for c in CONDITIONS} if audit else None),
                source_probe=audit["source_probe"] if audit else None,
                external=_external(study_id, model, root, evaluations),
            )
        )
    return Generalisation(
        study_id=study_id,
        title=study.title,
        protocol=study.protocol_name,
        split=study.split_level,
        sources=sources,
        baseline=baseline,
        region=region,
        twin=twin,
        models=tuple(models),
    )


def acquisition_table(study_id: str, model: str, artifacts_root: Path | None = None):
    """Per image: class, source, the audit's summary statistics, and ``model``'s out-of-fold prediction.

    ``None`` before the audit ran. Rows follow the dataset's order, read from the committed manifest, so the
    table needs no image.
    """
    import pandas as pd

    from engine.data.datasets import read_manifest

    root = artifacts_root or settings.artifacts_dir()
    baseline = _audit(study_id, "baseline", root)
    if baseline is None:
        return None
    study = artifacts.read_study(study_id, root)
    manifest = read_manifest(study.dataset.fingerprint, root)
    classes = manifest["classes"]
    rows = baseline["rows"]
    files = [manifest["files"][i] for i in rows]
    sources = study.dataset.sources
    oof = study_out_of_fold(study_id, model, root)
    predicted = dict(zip(oof.files, (oof.classes[k] for k in oof.proba.argmax(axis=1)), strict=True))
    table = pd.DataFrame(
        {
            "file": files,
            "class": [classes[manifest["labels"][i]] for i in rows],
            "source": [sources[k] for k in _source_of(files, sources)] if len(sources) > 1 else sources[0],
            **baseline["statistics"],
        }
    )
    table["predicted"] = table["file"].map(predicted)
    table["no-anatomy baseline"] = [classes[k] for k in baseline["predicted"]]
    table["model wrong"] = table["predicted"].notna() & (table["predicted"] != table["class"])
    return table


def headline_rows(found: Generalisation) -> list[dict[str, str]]:
    """One row of text cells per model: in-fold (its split), leakage, the no-anatomy baseline, occlusion, each
    source's held-out accuracy (several sources) and each external set's recall per class, with intervals."""
    from engine.evaluation.bootstrap import interval_text

    baseline = interval_text(found.baseline["figures"]["metrics"]["accuracy"]) if found.baseline else "not run"
    rows = []
    for m in found.models:
        row = {
            "model": m.model,
            f"in-fold accuracy ({found.split}-level)": interval_text(m.in_fold.get("accuracy")),
            "COVID-19 recall (in-fold)": interval_text(m.in_fold.get("recall[COVID-19]")),
        }
        if found.split == "patient":
            row["same, image-level folds"] = interval_text(m.image_level) if m.image_level else "not run"
        row["no-anatomy baseline"] = baseline
        for condition in CONDITIONS[1:]:
            row[condition] = interval_text(m.occlusion[condition]) if m.occlusion else "–"
        for source, figures in m.by_source.items():
            row[f"held out: {source}"] = interval_text(figures["metrics"].get("accuracy"))
        for e in m.external:
            where = "same source" if e.relation == "same source" else "external"
            for cls, recall in e.recall.items():
                row[f"{e.name} ({where}): {cls} recall"] = interval_text(recall)
        rows.append(row)
    return rows
