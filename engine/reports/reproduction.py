"""The reproduction report (``docs/reproduction.md``), generated from the artifacts alone.

Deterministic: the same artifacts give the same bytes (no timestamps, sorted everything), so a
reviewer can regenerate it and diff. Every figure comes from the studies it describes (counts from
their datasets, steps from each run's training size and batch size, momenta from the runs'
configuration, fold counts from the studies) or from the paper (``engine/reference``). A note that
is true of one known dataset only is shown for that dataset, keyed by its fingerprint, and says so.
A difference is shown only between the same metric definition on the same network; anything else
sits side by side as "not comparable".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.evaluation.bootstrap import interval_text
from engine.evaluation.external import saved_evaluations
from engine.evaluation.metrics import per_class_from_confusion
from engine.reports import (
    evaluation_sections,
    explore,
    generalisation_sections,
    paper_differences,
    readme,
    results_sections,
    summary_sections,
)
from engine.reports.markdown import markdown_table
from engine.reports.paper_networks import NOT_COMPARABLE, paper_row_of, paper_table1, same_network_as_paper, variant
from engine.results import artifacts
from engine.training.study import summarize

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
PAPER_DEFINITIONS = ("accuracy", "precision", "recall", "f1")
TABLE4_BACKBONE = "MobileNet"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


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
                f"{r['split']}-level",
                r["dataset"],
                r["dataset_fingerprint"],
                weights,
                r["study_id"],
            ]
        )
    return markdown_table(
        ["backbone", "protocol", "folds", "split", "dataset", "dataset fingerprint", "ImageNet weights", "study"],
        body,
    )


def _mean_cell(metric: dict, folds: int) -> str:
    """``mean ± sd`` over folds; a single fold has no spread to show."""
    return f"{_fmt(metric['mean'])} ± {metric['std']:.3f}" if folds > 1 else f"{_fmt(metric['mean'])} (1 fold)"


def _difference_row(r: dict, reference: dict[str, float]) -> list[str]:
    """Ours − paper for the paper's own definitions on the same network; every other cell is not comparable."""
    cells = []
    for column in COLUMNS:
        if column in PAPER_DEFINITIONS and column in r["metrics"]:
            cells.append(f"{r['metrics'][column]['mean'] - reference[column]:+.3f}")
        else:
            cells.append(NOT_COMPARABLE if column == "loss" else "–")
    return cells


def _comparison(rows: list[dict]) -> str:
    paper = paper_table1()
    body = []
    for family in sorted({f for r in rows if (f := paper_row_of(r["backbone"]))}):
        ref = paper[family]
        body.append([f"**paper** {family}", "paper", "image-level (stratified)", *[_fmt(ref.get(c)) for c in COLUMNS]])
        for r in rows:
            if paper_row_of(r["backbone"]) != family:
                continue
            cells = [_mean_cell(r["metrics"][c], r["folds_done"]) if c in r["metrics"] else "–" for c in COLUMNS]
            body.append([f"ours {r['backbone']}", r["protocol"], f"{r['split']}-level", *cells])
            if same_network_as_paper(r["backbone"]):
                body.append(
                    [f"difference (ours − paper) {r['backbone']}", r["protocol"], "–", *_difference_row(r, ref)]
                )
    return markdown_table(["model", "protocol", "folds", *HEADERS], body)


def _folds_sentence(rows: list[dict]) -> str:
    folds = sorted({r["n_folds"] for r in rows})
    ks = " or ".join(f"{k}-fold" for k in folds)
    return (
        f"Ours: mean ± standard deviation over the finished folds of a stratified {ks} cross-validation "
        "(the folds column of the table above says how many of each study's folds are finished). "
        "A difference is shown only for the paper's own metric definitions on the paper's own network; rows of "
        "other networks (a smaller MobileNet, say) sit beside the paper's row without one. The folds column says "
        "whether a patient's films could sit on both sides (image-level) or not (patient-level); a multi-source "
        "study's rows are on more images than the paper's."
    )


def _table4_candidate(rows: list[dict]) -> dict | None:
    """Our row of the paper's Table 4 network, the paper's protocol first; None when no study ran it."""
    candidates = [r for r in rows if r["backbone"] == TABLE4_BACKBONE]
    candidates.sort(key=lambda r: (r["protocol"] != "paper", -r["metrics"]["accuracy"]["mean"], r["study_id"]))
    return candidates[0] if candidates else None


def _recall_line(name: str, matrix: list[list[int]], classes: list[str]) -> str:
    recall = per_class_from_confusion(np.asarray(matrix))["sensitivity"]
    return f"\nPer-class recall, {name}: " + ", ".join(f"{c} {v:.3f}" for c, v in zip(classes, recall, strict=True))


def _confusion_section(rows: list[dict], artifacts_root: Path | None) -> str:
    classes = ["COVID-19", "Normal", "Viral Pneumonia"]
    paper = explore.paper_confusion_matrices()["MobileNet (Table 4)"].to_numpy().tolist()
    header = ["true \\ predicted", *classes]
    parts = [
        "Paper, Table 4 (MobileNet, best fold):",
        "",
        markdown_table(header, [[c, *map(str, r)] for c, r in zip(classes, paper, strict=True)]),
        _recall_line("paper", paper, classes),
    ]
    chosen = _table4_candidate(rows)
    if chosen is None:
        parts.append(f"\nNo study here trained the paper's {TABLE4_BACKBONE} ({variant(TABLE4_BACKBONE)}).")
        return "\n".join(parts)
    runs = [r for r in artifacts.study_runs(chosen["study_id"], artifacts_root) if r.backbone == TABLE4_BACKBONE]
    best = max(runs, key=lambda r: (r.metrics["accuracy"], -r.fold))
    cm = best.metrics["confusion_matrix"]
    label = (
        f"{best.backbone}, {chosen['protocol']} protocol, best of {len(runs)} finished fold(s) "
        f"(fold {best.fold}, accuracy {best.metrics['accuracy']:.3f})"
    )
    parts += [
        "",
        f"Ours ({label}):",
        "",
        markdown_table(header, [[c, *map(str, r)] for c, r in zip(classes, cm, strict=True)]),
        _recall_line("ours", cm, classes),
    ]
    return "\n".join(parts)


def _external_section(artifacts_root: Path | None) -> str:
    evaluations = saved_evaluations(artifacts_root)
    if not evaluations:
        return "No external evaluation in the artifacts yet (`python -m engine evaluate --data DIR`)."
    body = []
    for e in sorted(evaluations, key=lambda e: (e.data.name, e.backbone, e.protocol)):
        seen = e.data.overlap
        counts = ", ".join(f"{c} {n}" for c, n in e.data.counts.items())
        recalls = ", ".join(f"{c} {interval_text(e.figure(f'recall[{c}]'))}" for c in e.recall)
        accuracy = "– (one class: see its recall)" if e.one_class else interval_text(e.interval("accuracy"))
        body.append(
            [
                f"{e.data.name} (`{e.data.fingerprint}`)",
                e.relation,
                counts,
                f"{seen.identical} identical, {seen.near_duplicates} near-duplicate of {seen.checked}",
                f"{e.model_label} · {e.protocol}",
                accuracy,
                recalls,
            ]
        )
    return "\n".join(
        [
            "Each set was checked against the images of the model's study before any prediction: identical images "
            "(same decoded pixels) and near-duplicates (a perceptual hash within a few bits) are left out and counted. "
            "A set marked *same source* holds more images of a source the study already has (`covid19-extra` is the "
            "rest of the release its COVID-19 images come from): unseen, but not external. On a set of one class "
            "the only figure is that class's recall.",
            "",
            markdown_table(
                [
                    "data",
                    "relation to the study",
                    "images evaluated",
                    "left out (in the study)",
                    "model",
                    "accuracy",
                    "recall per class",
                ],
                body,
            ),
        ]
    )


def reproduction_report(artifacts_root: Path | None = None) -> str:
    """The whole report as Markdown, from the artifacts folder's studies and evaluations: the answer first."""
    rows = sorted(summarize(artifacts_root), key=lambda r: (r["protocol"], r["backbone"], r["study_id"]))
    if not rows:
        raise ValueError("no finished runs in the artifacts folder; nothing to report")
    study_ids = sorted({r["study_id"] for r in rows})
    return "\n".join(
        [
            "# Reproduction report",
            "",
            "Generated by `python -m engine report` from the artifacts; do not edit by hand.",
            "Santos, Silva and Cortes, *On Transfer Learning for Classifying COVID-19 in Chest X-Rays Images*,",
            "reproduced and judged outside its source. Research use only, not a diagnostic device.",
            "",
            "## Summary",
            "",
            summary_sections.summary_section(artifacts_root),
            "",
            "## Every candidate, ranked",
            "",
            readme.candidates_table(artifacts_root),
            "",
            "## What holds outside the source",
            "",
            summary_sections.generalisation_section(artifacts_root),
            "",
            "## Table 1: the paper's rows beside ours, both metric definitions",
            "",
            _folds_sentence(rows),
            "",
            _comparison(rows),
            "",
            "## The recommended protocols against their targets",
            "",
            generalisation_sections.generalisation_targets(artifacts_root),
            "",
            results_sections.targets_sections(artifacts_root),
            "",
            "## Ablations",
            "",
            generalisation_sections.harmonisation_section(artifacts_root),
            "",
            results_sections.ablation_section(artifacts_root),
            "",
            "## What was run",
            "",
            _study_section(rows),
            "",
            "## Why the numbers differ from the paper's",
            "",
            paper_differences.why_section(rows, artifacts_root),
            "## Confusion matrix against the paper's Table 4",
            "",
            _confusion_section(rows, artifacts_root),
            "",
            "## Every model with its intervals and calibration",
            "",
            evaluation_sections.models_section(study_ids, artifacts_root),
            "",
            "## Robustness to acquisition shifts",
            "",
            evaluation_sections.robustness_section(study_ids, artifacts_root),
            "",
            "## Every saved evaluation on images no fold has seen",
            "",
            _external_section(artifacts_root),
            "",
            "## Reporting checklist: CLAIM 2024 and TRIPOD+AI",
            "",
            evaluation_sections.checklist_section(artifacts_root),
            "",
            "## How the demo was made",
            "",
            "Each line was read from the artifacts; rerunning one whose results are on disk trains nothing (runs "
            "are keyed by a hash of their inputs).",
            "",
            summary_sections.commands_section(artifacts_root),
            "",
        ]
    )
