"""Read-side access to studies for the explorer: every table the pages show, as pandas DataFrames.

Everything here only reads the artifacts folder (see :mod:`engine.results.artifacts`) and the paper's
reference tables; nothing trains, and nothing imports streamlit, so the same tables serve the
app, notebooks and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from engine import settings
from engine.evaluation.metrics import flat_metrics, per_class_from_confusion
from engine.evaluation.predictions import ENSEMBLE, ensemble_out_of_fold, model_names, study_out_of_fold
from engine.evaluation.stats import mean_sd
from engine.evaluation.summary import model_summary, paired_difference
from engine.reports.generalisation import split_label
from engine.reports.served import served_study_id
from engine.results import artifacts
from engine.training.protocols import Protocol, RecallFloor
from engine.training.study import summarize

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
COVID_RECALL = "recall[COVID-19]"
COMPARISON_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    COVID_RECALL,
    "loss",
)
LOWER_IS_BETTER = frozenset({"loss"})
PAPER_TABLE1_COLUMNS = {"accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "f1_score"}
PAPER_CLASS_COLUMNS = {"pred_covid19": "COVID-19", "pred_normal": "Normal", "pred_viral_pneumonia": "Viral Pneumonia"}


def _root(artifacts_root: Path | None) -> Path:
    return artifacts_root or settings.artifacts_dir()


def list_studies(artifacts_root: Path | None = None) -> pd.DataFrame:
    """One row per study: what it is and how far it got. The served model's study first (what the app opens on),
    then the most finished runs, then the newest."""
    root = _root(artifacts_root)
    served = served_study_id(root)
    rows = []
    for study_id in artifacts.list_study_ids(root):
        study = artifacts.read_study(study_id, root)
        runs = artifacts.study_runs(study_id, root)
        rows.append(
            {
                "study_id": study_id,
                "title": study.title,
                "protocol": study.protocol_name,
                "dataset": study.dataset.name,
                "n_images": study.dataset.n_images,
                "n_folds": study.n_folds,
                "split": split_label(study),
                "backbones": len({r.backbone for r in runs}),
                "folds_done": len(runs),
                "created_at": pd.to_datetime(study.created_at, unit="s"),
                "served": study_id == served,
            }
        )
    columns = [
        "study_id",
        "title",
        "protocol",
        "dataset",
        "n_images",
        "n_folds",
        "split",
        "backbones",
        "folds_done",
        "created_at",
        "served",
    ]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["served", "folds_done", "created_at"], ascending=False, ignore_index=True)


def fold_metrics(study_id: str, artifacts_root: Path | None = None, *, ensemble: bool = False) -> pd.DataFrame:
    """One row per finished (backbone, fold) with every flat metric and the fold's sizes.

    With ``ensemble``, also one row per fold of the backbones' ensemble (``engine.evaluation.predictions``),
    on the folds they all finished.
    """
    rows = []
    runs = artifacts.study_runs(study_id, _root(artifacts_root))
    for run in runs:
        rows.append(
            {
                "backbone": run.backbone,
                "fold": run.fold,
                "n_train": run.config["n_train"],
                "n_test": run.config["n_test"],
                **flat_metrics(run.metrics),
            }
        )
    together = ensemble_out_of_fold(study_id, _root(artifacts_root)) if ensemble else None
    if together is not None:
        sizes = {r.fold: (r.config["n_train"], r.config["n_test"]) for r in runs if r.backbone == together.members[0]}
        for fold, figures in zip(together.fold_ids, together.fold_figures(), strict=True):
            n_train, n_test = sizes[fold]
            rows.append({"backbone": ENSEMBLE, "fold": fold, "n_train": n_train, "n_test": n_test, **figures})
    return pd.DataFrame(rows, columns=None if rows else ["backbone", "fold", "n_train", "n_test"])


def fold_metrics_long(study_id: str, artifacts_root: Path | None = None) -> pd.DataFrame:
    """The per-fold metrics as (backbone, fold, metric, value) rows, for plots."""
    wide = fold_metrics(study_id, artifacts_root)
    return wide.drop(columns=["n_train", "n_test"]).melt(
        id_vars=["backbone", "fold"], var_name="metric", value_name="value"
    )


def comparison_table(
    study_id: str, artifacts_root: Path | None = None, *, metrics: tuple[str, ...] = COMPARISON_METRICS
) -> pd.DataFrame:
    """One row per backbone (``summarize``'s) and one for their ``ensemble``: folds done, then ``<metric> mean``
    and ``<metric> std`` over folds."""
    rows = summarize(_root(artifacts_root), study_ids=[study_id])
    if not rows:
        return pd.DataFrame(columns=["backbone", "folds"])
    table = []
    for row in sorted(rows, key=lambda r: r["backbone"]):
        line: dict[str, object] = {"backbone": row["backbone"], "folds": row["folds_done"]}
        for metric in metrics:
            if metric in row["metrics"]:
                line[f"{metric} mean"] = row["metrics"][metric]["mean"]
                line[f"{metric} std"] = row["metrics"][metric]["std"]
        table.append(line)
    together = ensemble_out_of_fold(study_id, _root(artifacts_root))
    if together is not None:
        figures = together.fold_figures()
        line = {"backbone": ENSEMBLE, "folds": len(figures)}
        for metric in metrics:
            if all(metric in f for f in figures):
                line[f"{metric} mean"], line[f"{metric} std"] = mean_sd([f[metric] for f in figures])
        table.append(line)
    return pd.DataFrame(table)


def interval_table(
    study_id: str, artifacts_root: Path | None = None, *, metrics: tuple[str, ...] = COMPARISON_METRICS
) -> pd.DataFrame:
    """One row per model (backbones, then the ensemble): pooled out-of-fold estimate and 95 % interval of each metric.

    From ``engine.evaluation.summary.model_summary``, computed once per set of predictions and kept on disk.
    """
    root = _root(artifacts_root)
    rows = []
    for model in model_names(study_id, root):
        summary = model_summary(study_out_of_fold(study_id, model, root), root)
        row: dict[str, object] = {"model": model, "images": summary["n_images"], "folds": len(summary["folds"])}
        for metric in metrics:
            found = summary["metrics"].get(metric)
            if found:
                row[metric], row[f"{metric} low"], row[f"{metric} high"] = (
                    found["estimate"],
                    found["low"],
                    found["high"],
                )
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["model", "images", "folds"])


def paired_interval(study_id: str, metric: str, model_a: str, model_b: str, artifacts_root=None) -> dict:
    """A stratified bootstrap interval of ``metric(a) - metric(b)`` on the images both scored (shared folds)."""
    root = _root(artifacts_root)
    a, b = (study_out_of_fold(study_id, m, root) for m in (model_a, model_b))
    return paired_difference(a, b, metric=metric)


def best_per_column(table: pd.DataFrame) -> dict[str, str]:
    """For each ``<metric> mean`` column, the backbone with the best value (lowest for the loss)."""
    best = {}
    for column in table.columns:
        if not column.endswith(" mean") or table[column].isna().all():
            continue
        metric = column.removesuffix(" mean")
        index = table[column].idxmin() if metric in LOWER_IS_BETTER else table[column].idxmax()
        best[column] = str(table.loc[index, "backbone"])
    return best


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 (mean over its 5 folds), with the matching ``keras.applications`` name."""
    return pd.read_csv(REFERENCE_DIR / "paper_table1.csv")


def paper_vs_study(comparison: pd.DataFrame, *, definition: str) -> pd.DataFrame:
    """Paper's Table 1 beside this study's means and the difference, for backbones of the paper.

    ``definition`` ``"paper"`` compares like with like (the paper's precision/recall/F1);
    ``"per-class"`` puts this study's macro per-class figures beside the paper's numbers, where a
    difference would subtract unlike things: their ``diff`` is NaN (only accuracy is shared).
    """
    if definition not in ("paper", "per-class"):
        raise ValueError(f"definition must be 'paper' or 'per-class', got definition={definition!r}")
    paper = paper_table1().set_index("keras_application")
    study = comparison.set_index("backbone") if "backbone" in comparison.columns else pd.DataFrame()
    rows = []
    for backbone, reference in paper.iterrows():
        row: dict[str, object] = {"backbone": backbone, "in this study": backbone in study.index}
        for paper_key, paper_column in PAPER_TABLE1_COLUMNS.items():
            key = paper_key if definition == "paper" or paper_key == "accuracy" else f"macro_{paper_key}"
            ours = study.loc[backbone, f"{key} mean"] if backbone in study.index and f"{key} mean" in study else np.nan
            same_definition = definition == "paper" or paper_key == "accuracy"
            row[f"{paper_key} paper"] = float(reference[paper_column])
            row[f"{paper_key} study"] = float(ours)
            row[f"{paper_key} diff"] = float(ours) - float(reference[paper_column]) if same_definition else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def classes_of(study_id: str, artifacts_root: Path | None = None) -> list[str]:
    return list(artifacts.read_study(study_id, _root(artifacts_root)).dataset.classes)


def confusion_matrix(
    study_id: str, backbone: str, fold: int | None = None, artifacts_root: Path | None = None
) -> pd.DataFrame:
    """Counts (rows: true class, columns: predicted) of one fold, or summed over every finished fold; for the
    ``ensemble``, of the mean of the backbones' probabilities on their shared folds."""
    root = _root(artifacts_root)
    classes = classes_of(study_id, root)
    if backbone == ENSEMBLE:
        oof = study_out_of_fold(study_id, ENSEMBLE, root)
        rows = np.ones(len(oof), dtype=bool) if fold is None else oof.folds == fold
        if not rows.any():
            raise ValueError(f"fold={fold!r} is not one of the ensemble's folds {oof.fold_ids} in study {study_id}")
        total = sk_confusion_matrix(oof.y_true[rows], oof.proba[rows].argmax(axis=1), labels=range(len(classes)))
    else:
        runs = [r for r in artifacts.study_runs(study_id, root) if r.backbone == backbone]
        if fold is not None:
            runs = [r for r in runs if r.fold == fold]
        if not runs:
            raise ValueError(f"no finished run of backbone={backbone!r}, fold={fold!r} in study {study_id}")
        total = np.sum([np.asarray(r.metrics["confusion_matrix"], dtype=np.int64) for r in runs], axis=0)
    return pd.DataFrame(total, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def per_class_table(matrix: pd.DataFrame) -> pd.DataFrame:
    """Sensitivity, specificity, precision, NPV and support of each class (one-vs-rest)."""
    figures = per_class_from_confusion(matrix.to_numpy())
    table = pd.DataFrame({key: values for key, values in figures.items()}, index=matrix.index)
    table["support"] = table["support"].astype(int)
    return table.rename_axis("class").reset_index()


def paper_confusion_matrices() -> dict[str, pd.DataFrame]:
    """The paper's Tables 2-4 (best fold of DenseNet201, ResNet50, MobileNet), by model name."""
    raw = pd.read_csv(REFERENCE_DIR / "paper_confusion_matrices.csv")
    out = {}
    for (model, table), group in raw.groupby(["model", "table"], sort=False):
        matrix = group.set_index("true_class")[list(PAPER_CLASS_COLUMNS)].rename(columns=PAPER_CLASS_COLUMNS)
        out[f"{model} (Table {table})"] = matrix.rename_axis(index="true", columns="predicted")
    return out


def histories(study_id: str, artifacts_root: Path | None = None) -> pd.DataFrame:
    """Per-epoch training curves as (backbone, fold, epoch, metric, value) rows; epochs count from 1."""
    rows = []
    for run in artifacts.study_runs(study_id, _root(artifacts_root)):
        for metric, values in run.history.items():
            for epoch, value in enumerate(values, start=1):
                rows.append((run.backbone, run.fold, epoch, metric, float(value)))
    return pd.DataFrame(rows, columns=["backbone", "fold", "epoch", "metric", "value"])


def head_choices(study_id: str, artifacts_root: Path | None = None) -> pd.DataFrame:
    """The L2 strength each fold's inner cross-validation chose for a logistic-regression head, as
    (backbone, fold, C, inner accuracy) rows; empty for a study whose heads train over epochs. A protocol with a
    recall floor adds, per fold, the offset added to the class's logit and its inner recall before and after."""
    rows = []
    sources = artifacts.read_study(study_id, _root(artifacts_root)).dataset.sources
    for run in artifacts.study_runs(study_id, _root(artifacts_root)):
        choice = run.config.get("head_selection")
        if choice:
            floor = choice.get("recall_floor")
            rows.append(
                {
                    "backbone": run.backbone,
                    "fold": run.fold,
                    "C": choice["C"],
                    "inner accuracy": choice["inner_accuracy"][str(float(choice["C"]))],
                    **(_floor_columns(floor, run.config["classes"], sources) if floor else {}),
                }
            )
    return pd.DataFrame(rows, columns=None if rows else ["backbone", "fold", "C", "inner accuracy"])


def recall_floor(study_id: str, artifacts_root: Path | None = None) -> RecallFloor | None:
    """The study protocol's recall floor: the class whose logit its heads raised, and the recall they aimed at."""
    return Protocol.from_dict(artifacts.read_study(study_id, _root(artifacts_root)).protocol).recall_floor


def _floor_columns(floor: dict, classes: list[str], sources: tuple[str, ...]) -> dict:
    """The offset and the inner recalls it gave: over every source, then each source's when the floor was met in
    each (the offset is the largest the sources asked for)."""
    name = classes[floor["target"]]
    each = {
        f"{name} inner recall, {sources[int(s)]}: {label}": point[key]
        for s, point in floor.get("by_source", {}).items()
        for label, key in (("as fitted", "inner_recall"), ("with the offset", "inner_recall_after"))
    }
    return {
        f"{name} logit offset": floor["logit_offset"],
        f"{name} inner recall, as fitted": floor["inner_recall"],
        f"{name} inner recall, with the offset": floor["inner_recall_after"],
        **each,
    }


def history_bands(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd (``stats.mean_sd``) and fold count per (backbone, metric, epoch) of :func:`histories`."""
    rows = [
        (backbone, metric, epoch, *mean_sd(group["value"]), len(group))
        for (backbone, metric, epoch), group in curves.groupby(["backbone", "metric", "epoch"])
    ]
    return pd.DataFrame(rows, columns=["backbone", "metric", "epoch", "mean", "std", "folds"])


def best_epochs(curves: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, the epoch where the mean validation loss over folds was lowest."""
    val = history_bands(curves[curves["metric"] == "val_loss"])
    if val.empty:
        return pd.DataFrame(columns=["backbone", "epoch", "val_loss"])
    best = val.loc[val.groupby("backbone")["mean"].idxmin(), ["backbone", "epoch", "mean"]]
    return best.rename(columns={"mean": "val_loss"}).reset_index(drop=True)


@dataclass(frozen=True)
class Provenance:
    """Which data and which weights produced a study's numbers."""

    study_id: str
    title: str
    dataset: str
    fingerprint: str
    source: str
    class_counts: dict[str, int]
    protocol: str
    protocol_description: str
    n_folds: int
    seed: int
    input_size: int
    weights: pd.DataFrame
    split: str
    split_details: dict
    by_source: dict[str, dict[str, int]]


def provenance(study_id: str, artifacts_root: Path | None = None) -> Provenance:
    """The dataset and the weights (file and sha256 per backbone) of a study."""
    root = _root(artifacts_root)
    study = artifacts.read_study(study_id, root)
    weights = {}
    for run in artifacts.study_runs(study_id, root):
        identity = run.config["weights"]
        weights.setdefault(
            run.backbone,
            {
                "backbone": run.backbone,
                "weights": identity.get("weights") or "none (random init)",
                "file": identity.get("file"),
                "sha256": identity.get("sha256"),
                "keras": run.config.get("keras_version"),
            },
        )
    return Provenance(
        study_id=study_id,
        title=study.title,
        dataset=study.dataset.name,
        fingerprint=study.dataset.fingerprint,
        source=study.dataset.source,
        class_counts={k: int(v) for k, v in study.dataset.counts.items()},
        protocol=study.protocol_name,
        protocol_description=study.protocol_description,
        n_folds=int(study.n_folds),
        seed=int(study.seed),
        input_size=int(study.input_size),
        weights=pd.DataFrame(list(weights.values()), columns=["backbone", "weights", "file", "sha256", "keras"]),
        split=split_label(study),
        split_details=study.split.to_json() if study.split_recorded else {},
        by_source=study.dataset.by_source,
    )


def paired_folds(study_id: str, metric: str, backbone_a: str, backbone_b: str, artifacts_root=None) -> pd.DataFrame:
    """``metric`` of two models (backbones or the ensemble) on the folds both finished, with each fold's sizes."""
    wide = fold_metrics(study_id, artifacts_root, ensemble=ENSEMBLE in (backbone_a, backbone_b))
    if metric not in wide.columns:
        raise ValueError(f"unknown metric {metric!r}; this study has: {', '.join(wide.columns[4:])}")
    a = wide[wide["backbone"] == backbone_a].set_index("fold")
    b = wide[wide["backbone"] == backbone_b].set_index("fold")
    common = a.index.intersection(b.index).sort_values()
    return pd.DataFrame(
        {
            "fold": common,
            backbone_a: a.loc[common, metric].to_numpy(),
            backbone_b: b.loc[common, metric].to_numpy(),
            "n_train": a.loc[common, "n_train"].to_numpy(),
            "n_test": a.loc[common, "n_test"].to_numpy(),
        }
    )
