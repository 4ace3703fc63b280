"""The report's evaluation sections: every model with intervals and calibration, robustness, and the checklist.

Generated from the artifacts like the rest of ``docs/reproduction.md``: the summaries
(``engine.evaluation.summary``, kept on disk), the robustness files and the external
evaluations. The checklist walks the evaluation items of CLAIM 2024 and TRIPOD+AI and says, for
this report's studies, what is answered and where, and what cannot be.
"""

from __future__ import annotations

from pathlib import Path

from engine.evaluation.bootstrap import interval_text
from engine.evaluation.external import list_evaluations
from engine.evaluation.predictions import model_names, study_out_of_fold
from engine.evaluation.robustness import STRENGTHS, pooled_table, saved_results
from engine.evaluation.summary import DEFAULT_INTERVALS, model_summary
from engine.reports import explore
from engine.results import artifacts

INTERVAL_COLUMNS = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro F1"),
    ("recall[COVID-19]", "COVID-19 recall"),
    ("specificity[COVID-19]", "COVID-19 specificity"),
    ("roc_auc", "ROC AUC (mean over classes)"),
)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _summaries(study_id: str, root: Path | None) -> dict[str, dict]:
    return {m: model_summary(study_out_of_fold(study_id, m, root), root) for m in model_names(study_id, root)}


def _fold_cell(comparison, model: str) -> str:
    row = comparison.set_index("backbone").loc[model]
    mean = f"{row['accuracy mean']:.3f}"
    return f"{mean} ± {row['accuracy std']:.3f}" if row["folds"] > 1 else f"{mean} (1 fold)"


def _calibration_cell(calibration: dict, key: str) -> str:
    before = calibration["before"][key]
    after = calibration["after"][key] if calibration["after"] else None
    return f"{before:.4f}" if after is None else f"{before:.4f} → {after:.4f}"


def models_section(study_ids: list[str], root: Path | None) -> str:
    """Per study, every model (and the ensemble): fold mean ± sd, pooled estimates with intervals, calibration."""
    parts = [
        f"{DEFAULT_INTERVALS.describe()}. The ensemble averages the backbones' out-of-fold probabilities on the "
        "folds they all finished. ECE (top label, 10 bins) and Brier score before → after temperature scaling, "
        "each fold's temperature fitted on the other folds only.",
    ]
    for study_id in study_ids:
        study = artifacts.read_study(study_id, root)
        comparison = explore.comparison_table(study_id, root)
        summaries = _summaries(study_id, root)
        rows = []
        for model, summary in summaries.items():
            rows.append(
                [
                    model,
                    f"{len(summary['folds'])}/{study['n_folds']}",
                    f"{summary['n_images']:,}",
                    _fold_cell(comparison, model),
                    *[interval_text(summary["metrics"].get(key)) for key, _ in INTERVAL_COLUMNS],
                    _calibration_cell(summary["calibration"], "ece_top_label"),
                    _calibration_cell(summary["calibration"], "brier"),
                ]
            )
        header = [
            "model",
            "folds",
            "images",
            "accuracy, fold mean ± sd",
            *[f"{label}, pooled [95 % CI]" for _, label in INTERVAL_COLUMNS],
            "ECE",
            "Brier",
        ]
        parts += ["", f"Study `{study_id}` (`{study['protocol']['name']}`):", "", _table(header, rows)]
    return "\n".join(parts)


def robustness_section(study_ids: list[str], root: Path | None) -> str:
    """Accuracy under each acquisition shift, pooled over the folds whose models were analysed."""
    parts = []
    for study_id in study_ids:
        study = artifacts.read_study(study_id, root)
        for backbone in sorted({r.backbone for r in artifacts.study_runs(study_id, root)}):
            results = saved_results(study_id, backbone, root)
            if not results:
                continue
            table = pooled_table(results)
            base = next(row for row in table if row["shift"] == "none")
            rows = [
                [
                    row["setting"] if row["shift"] != "none" else "none (as acquired)",
                    row["strength"],
                    f"{row['accuracy']:.3f}",
                    f"{row['change']:+.3f}",
                    ", ".join(f"{c} {v:.3f}" for c, v in row["recall"].items() if v is not None),
                ]
                for row in table
            ]
            folds = sorted(r["fold"] for r in results)
            parts += [
                "",
                f"{backbone}, study `{study_id}` (`{study['protocol']['name']}`), folds {folds}: "
                f"{base['n_images']:,} held-out images, each seen by its own fold's model.",
                "",
                _table(["shift", "strength", "accuracy", "change", "recall per class"], rows),
            ]
    if not parts:
        return "No robustness analysis in the artifacts yet (`python -m engine robustness --study ID --backbone NAME`)."
    intro = (
        "Each fold's saved model on its own held-out images, as acquired and under seven acquisition shifts at "
        f"{len(STRENGTHS)} strengths ({', '.join(STRENGTHS)}); the change is from the unshifted accuracy."
    )
    return "\n".join([intro, *parts])


def _robustness_status(study_ids: list[str], root: Path | None) -> str:
    done = []
    for study_id in study_ids:
        for backbone in sorted({r.backbone for r in artifacts.study_runs(study_id, root)}):
            results = saved_results(study_id, backbone, root)
            if results:
                done.append(f"{backbone} (`{study_id}`, {len(results)} fold(s))")
    return ", ".join(done) if done else "none yet"


def checklist_section(study_ids: list[str], root: Path | None) -> str:
    """The evaluation items of CLAIM 2024 and TRIPOD+AI: what these studies answer and where, and what they cannot."""
    studies = [artifacts.read_study(sid, root) for sid in study_ids]
    folds = sorted({s["n_folds"] for s in studies})
    images = sorted({s["dataset"]["n_images"] for s in studies})
    evaluations = list_evaluations(root)
    external = (
        ", ".join(sorted({f"{e['data']['name']} ({sum(e['data']['counts'].values()):,} images)" for e in evaluations}))
        or "none"
    )
    k = " or ".join(str(f) for f in folds)
    rows = [
        [
            "CLAIM 28",
            "Metrics of performance",
            "Accuracy; per-class precision, recall, F1, specificity and NPV; the paper's pooled Keras "
            "precision/recall beside the macro ones; ROC AUC, average precision, cross-entropy.",
            "Comparison page; Table 1 and the model tables above",
            "–",
        ],
        [
            "CLAIM 29",
            "Uncertainty and significance",
            f"{DEFAULT_INTERVALS.describe()}; fold mean ± sd; corrected resampled t-test (Nadeau and Bengio) and a "
            "paired bootstrap interval of the difference between two models.",
            "Comparison page; model tables above",
            "The intervals resample test images, not training runs: the spread between retrainings shows only as "
            "the fold sd.",
        ],
        [
            "CLAIM 30",
            "Robustness",
            f"Held-out images under 7 acquisition shifts x 3 strengths; analysed so far: "
            f"{_robustness_status(study_ids, root)}.",
            "Robustness page; section above",
            "Simulated shifts only: other scanners, hospitals and patient populations are not in the data.",
        ],
        [
            "CLAIM 31",
            "Explainability",
            "Grad-CAM of the predicted class (closed form on the last convolutional map) for every classified "
            "image and every misclassified held-out image whose fold model is saved.",
            "Classify X-rays and Failure analysis pages",
            "No lesion annotations in the data, so no quantitative check that the maps point at disease.",
        ],
        [
            "CLAIM 32",
            "Internal evaluation",
            f"Stratified {k}-fold cross-validation over {', '.join(f'{n:,}' for n in images)} images, the same "
            "folds for every backbone; each image scored once by the fold model that held it out; the epoch kept "
            "is chosen without the test fold where the protocol says so.",
            "Home page; What was run",
            "Folds are disjoint at the image level, not the patient level: the dataset has no patient "
            "identifiers, so two images of one patient can sit in a training and a test fold, which can make "
            "internal figures optimistic.",
        ],
        [
            "CLAIM 33",
            "External evaluation",
            f"Saved models on labelled images checked to be outside the model's study (identical and "
            f"near-duplicate images left out); evaluated so far: {external}.",
            "External validation page; External check section",
            "A set from the same database release is unseen but not external in source; no three-class set from "
            "another institution is in the artifacts.",
        ],
        [
            "CLAIM 37",
            "Performance on every partition",
            "Each fold's figures (metrics.json of every run) and the pooled out-of-fold figures.",
            "Comparison page (every fold); model tables above",
            "–",
        ],
        [
            "CLAIM 38",
            "Diagnostic accuracy with its precision",
            "Sensitivity, specificity, PPV and NPV at a chosen threshold with Wilson intervals, and PPV/NPV "
            "recomputed at a prevalence the user sets.",
            "Operating point page",
            "The study's prevalence (its class counts) is not a clinic's; PPV and NPV depend on it.",
        ],
        [
            "CLAIM 39",
            "Failure analysis",
            "Every misclassified held-out image with its fold, true and predicted class and probabilities; "
            "thumbnails and Grad-CAM where the images and fold models are on the machine.",
            "Failure analysis page; confusion matrices",
            "Without the dataset's images (a fresh clone, the hosted demo) only the table is shown.",
        ],
        [
            "TRIPOD+AI 12e",
            "Discrimination and calibration",
            "One-vs-rest ROC and precision-recall curves per class, per fold and pooled, with AUC and AP "
            "intervals; reliability diagrams with bin counts, ECE and Brier, before and after cross-fitted "
            "temperature scaling.",
            "ROC and precision-recall, and Calibration pages; model tables above",
            "–",
        ],
        [
            "TRIPOD+AI 15",
            "How thresholds were chosen",
            "Reported figures use the most probable class (no tuned threshold). The Operating point page sets a "
            "one-vs-rest threshold by target sensitivity, target specificity or by hand.",
            "Operating point page",
            "A threshold chosen on the out-of-fold predictions is evaluated on the same images: optimistic until "
            "confirmed on external data.",
        ],
        [
            "TRIPOD+AI 23a",
            "Performance with confidence intervals",
            "Every figure of the model tables with its 95 % interval, for each backbone and the ensemble.",
            "Comparison page; model tables above",
            "–",
        ],
    ]
    return "\n".join(
        [
            "The evaluation items of CLAIM 2024 (Tejani et al., Radiology: Artificial Intelligence 2024) and "
            "TRIPOD+AI (Collins et al., BMJ 2024); each row's wording is ours, not the checklists'.",
            "",
            _table(["item", "topic", "what these studies answer", "where", "what they cannot answer"], rows),
        ]
    )
