"""The reproduction report (``docs/reproduction.md``), generated from the artifacts alone.

Deterministic: the same artifacts give the same bytes (no timestamps, sorted everything), so a
reviewer can regenerate it and diff.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.evaluation.external import list_evaluations
from engine.reports import explore
from engine.results import artifacts
from engine.training.study import summarize

PAPER_FAMILY = {
    "MobileNet": "MobileNet",
    "MobileNet-0.25": "MobileNet",
    "MobileNetV2": "MobileNetV2",
    "MobileNetV2-0.35": "MobileNetV2",
}
COLUMNS = explore.COMPARISON_METRICS
HEADERS = (
    "accuracy",
    "precision (paper)",
    "recall (paper)",
    "F1 (paper)",
    "macro precision",
    "macro recall",
    "macro F1",
    "COVID-19 recall",
    "loss",
)


def paper_table1() -> dict[str, dict[str, float]]:
    """The paper's Table 1 rows by ``keras.applications`` name, under this project's metric keys."""
    table = explore.paper_table1().set_index("keras_application")
    renamed = table.rename(columns={"f1_score": "f1"})[["accuracy", "precision", "recall", "f1", "loss"]]
    return renamed.to_dict(orient="index")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _study_section(rows: list[dict]) -> str:
    body = []
    for r in rows:
        w = r["weights"]
        weights = f"{w.get('file') or w.get('weights')} ({w['sha256']})" if w.get("sha256") else str(w.get("weights"))
        body.append(
            [
                r["backbone"],
                r["protocol"],
                f"{r['folds_done']}/{r['n_folds']}",
                r["dataset"],
                r["dataset_fingerprint"],
                weights,
                r["study_id"],
            ]
        )
    return _table(
        ["backbone", "protocol", "folds", "dataset", "dataset fingerprint", "ImageNet weights", "study"], body
    )


def _mean_cell(mean: float, std: float, folds: int) -> str:
    """``mean ± sd`` over folds; a single fold has no spread to show."""
    return f"{_fmt(mean)} ± {std:.3f}" if folds > 1 else f"{_fmt(mean)} (1 fold)"


def _comparison(rows: list[dict]) -> str:
    paper = paper_table1()
    body = []
    for family in ("MobileNet", "MobileNetV2"):
        ref = paper[family]
        body.append([f"**paper** {family}", "paper", *[_fmt(ref.get(c)) for c in COLUMNS]])
        for r in rows:
            if PAPER_FAMILY.get(r["backbone"]) != family:
                continue
            means = {c: r["metrics"][c]["mean"] for c in COLUMNS if c in r["metrics"]}
            body.append(
                [
                    f"ours {r['backbone']}",
                    r["protocol"],
                    *[
                        _mean_cell(means[c], r["metrics"][c]["std"], r["folds_done"]) if c in means else "–"
                        for c in COLUMNS
                    ],
                ]
            )
            body.append(
                [
                    f"difference (ours − paper) {r['backbone']}",
                    r["protocol"],
                    *[f"{means[c] - ref[c]:+.3f}" if c in ref and c in means else "–" for c in COLUMNS],
                ]
            )
    return _table(["model", "protocol", *HEADERS], body)


def _best_fold_confusion(rows: list[dict], artifacts_root: Path | None) -> tuple[str, list[list[int]]] | None:
    candidates = [r for r in rows if PAPER_FAMILY.get(r["backbone"]) == "MobileNet"]
    candidates.sort(key=lambda r: (r["protocol"] != "paper", -r["metrics"]["accuracy"]["mean"]))
    if not candidates:
        return None
    chosen = candidates[0]
    runs = [r for r in artifacts.study_runs(chosen["study_id"], artifacts_root) if r.backbone == chosen["backbone"]]
    best = max(runs, key=lambda r: (r.metrics["accuracy"], -r.fold))
    accuracy = best.metrics["accuracy"]
    label = f"{best.backbone}, {chosen['protocol']} protocol, best fold ({best.fold}, accuracy {accuracy:.3f})"
    return label, best.metrics["confusion_matrix"]


def _confusion_section(rows: list[dict], artifacts_root: Path | None) -> str:
    classes = ["COVID-19", "Normal", "Viral Pneumonia"]
    paper = explore.paper_confusion_matrices()["MobileNet (Table 4)"].to_numpy().tolist()
    ours = _best_fold_confusion(rows, artifacts_root)
    header = ["true \\ predicted", *classes]
    parts = [
        "Paper, Table 4 (MobileNet, best fold):",
        "",
        _table(header, [[c, *map(str, r)] for c, r in zip(classes, paper, strict=True)]),
    ]
    if ours:
        label, cm = ours
        parts += [
            "",
            f"Ours ({label}):",
            "",
            _table(header, [[c, *map(str, r)] for c, r in zip(classes, cm, strict=True)]),
        ]
        for name, matrix in (("paper", paper), ("ours", cm)):
            arr = np.asarray(matrix, dtype=float)
            recall = np.diag(arr) / arr.sum(axis=1)
            parts.append(
                f"\nPer-class recall, {name}: "
                + ", ".join(f"{c} {v:.3f}" for c, v in zip(classes, recall, strict=True))
            )
    return "\n".join(parts)


def _external_section(artifacts_root: Path | None) -> str:
    evaluations = list_evaluations(artifacts_root)
    if not evaluations:
        return "No external evaluation in the artifacts yet (`python -m engine evaluate --data DIR`)."
    body = []
    for e in sorted(evaluations, key=lambda e: (e["data"]["name"], e["model"]["backbone"], e["model"]["protocol"])):
        m = e["model"]
        counts = ", ".join(f"{c} {n}" for c, n in e["data"]["counts"].items())
        recalls = ", ".join(f"{c} {v:.3f}" for c, v in e["recall"].items())
        body.append(
            [
                e["data"]["name"],
                counts,
                f"{m['backbone']} · {m['protocol']} · fold {m['fold']}",
                f"{e['accuracy']:.3f}",
                recalls,
            ]
        )
    return _table(["data (no fold saw it)", "images", "model", "accuracy", "recall per class"], body)


WHY = """\
- **Data release.** The paper's 2,902 images came from the first release of the COVID-19 Radiography
  Database; here the COVID-19 class is a seeded sample of the 2021 release (219 images against 218), and
  Normal/Viral Pneumonia are the same Kaggle pediatric images (1,340/1,338 against 1,340/1,344), all
  resized to 224x224 and re-encoded once, with near-duplicates removed.
- **Weights variant.** On this 2-core CPU the fine-tuned rows use MobileNet alpha 0.25 and MobileNetV2
  alpha 0.35 (about 20x and 10x fewer operations than the paper's alpha 1.0); the frozen rows include
  MobileNet alpha 1.0.
- **Protocol.** `paper` fine-tunes every layer exactly as the paper describes; `frozen` keeps the ImageNet
  base fixed and trains only the softmax head on cached features.
- **BatchNorm under full fine-tuning.** `paper` trains every layer, so BatchNorm layers normalise each
  augmented training batch by its own statistics while evaluation uses their moving averages. Keras'
  MobileNetV2 updates those with momentum 0.999 (MobileNet: 0.99): after 10 epochs of 73 steps they still
  hold 0.999^730 = 48 % of the ImageNet statistics, far from X-ray ones. Held-out accuracy therefore swings
  from epoch to epoch (see the Training curves page), and the paper's rule of reporting the last epoch can
  catch a poor one. The `frozen` protocol does not meet this: its base runs in inference mode throughout.
- **Metric definitions.** The paper's precision/recall are Keras `Precision()`/`Recall()` on one-hot
  outputs at a 0.5 threshold (every image-class cell is one decision), which is why its precision is above
  its accuracy; macro (per-class) figures are the ones to judge a model by.
- **Loss.** The paper's losses (0.024 to 0.256) are far below a cross-entropy consistent with its
  accuracies, so they were probably another quantity; ours is the categorical cross-entropy on the held-out fold.
- **Shortcut caveat.** Normal and Viral Pneumonia images are of children and COVID-19 images mostly of
  adults, so high scores can come from anatomy, not disease (DeGrave et al., 2021): look at the Grad-CAM maps.
"""


def reproduction_report(artifacts_root: Path | None = None) -> str:
    """The whole report as Markdown, from the artifacts folder's studies and evaluations."""
    rows = sorted(summarize(artifacts_root), key=lambda r: (r["protocol"], r["backbone"], r["study_id"]))
    if not rows:
        raise ValueError("no finished runs in the artifacts folder; nothing to report")
    return "\n".join(
        [
            "# Reproduction report",
            "",
            "Generated by `python -m engine report` from the committed artifacts; do not edit by hand.",
            "Santos, Silva and Cortes, *On Transfer Learning for Classifying COVID-19 in Chest X-Rays Images*:",
            "Table 1 (mean over 5 folds) and Table 4 against this project's runs.",
            "Research use only, not a diagnostic device.",
            "",
            "## What was run",
            "",
            _study_section(rows),
            "",
            "## Table 1: MobileNet and MobileNetV2, both metric definitions",
            "",
            "Ours: mean ± standard deviation over the folds of a stratified 5-fold cross-validation.",
            "",
            _comparison(rows),
            "",
            "## Why the numbers differ",
            "",
            WHY,
            "## Confusion matrix against the paper's Table 4",
            "",
            _confusion_section(rows, artifacts_root),
            "",
            "## External check on images no fold has seen",
            "",
            _external_section(artifacts_root),
            "",
        ]
    )
