"""The report's evaluation sections: every model with intervals and calibration, robustness, and the checklist.

Generated from the artifacts like the rest of ``docs/reproduction.md``: the summaries
(``engine.evaluation.summary``, kept on disk), the robustness files and the external
evaluations. The checklist walks the evaluation items of CLAIM 2024 and TRIPOD+AI and says, for
this report's studies, what is answered and where, and what cannot be.
"""

from __future__ import annotations

from pathlib import Path

from engine.evaluation.bootstrap import interval_text
from engine.evaluation.predictions import model_names, study_out_of_fold
from engine.evaluation.robustness import STRENGTHS, pooled_table, saved_results
from engine.evaluation.summary import DEFAULT_INTERVALS, model_summary
from engine.reports import explore
from engine.reports.markdown import markdown_table
from engine.results import artifacts

INTERVAL_COLUMNS = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro F1"),
    ("recall[COVID-19]", "COVID-19 recall"),
    ("specificity[COVID-19]", "COVID-19 specificity"),
    ("roc_auc", "ROC AUC (mean over classes)"),
)


def _summaries(study_id: str, artifacts_root: Path | None) -> dict[str, dict]:
    return {
        m: model_summary(study_out_of_fold(study_id, m, artifacts_root), artifacts_root)
        for m in model_names(study_id, artifacts_root)
    }


def _fold_cell(comparison, model: str) -> str:
    row = comparison.set_index("backbone").loc[model]
    mean = f"{row['accuracy mean']:.3f}"
    return f"{mean} ± {row['accuracy std']:.3f}" if row["folds"] > 1 else f"{mean} (1 fold)"


def _calibration_cell(calibration: dict, key: str) -> str:
    before = calibration["before"][key]
    after = calibration["after"][key] if calibration["after"] else None
    return f"{before:.4f}" if after is None else f"{before:.4f} → {after:.4f}"


def models_section(study_ids: list[str], artifacts_root: Path | None) -> str:
    """Per study, every model (and the ensemble): fold mean ± sd, pooled estimates with intervals, calibration."""
    parts = [
        f"{DEFAULT_INTERVALS.describe()}. The ensemble averages the backbones' out-of-fold probabilities on the "
        "folds they all finished. ECE (top label, 10 bins) and Brier score before → after temperature scaling, "
        "each fold's temperature fitted on the other folds only.",
    ]
    for study_id in study_ids:
        study = artifacts.read_study(study_id, artifacts_root)
        comparison = explore.comparison_table(study_id, artifacts_root)
        summaries = _summaries(study_id, artifacts_root)
        rows = []
        for model, summary in summaries.items():
            rows.append(
                [
                    model,
                    f"{len(summary['folds'])}/{study.n_folds}",
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
        parts += ["", f"Study `{study_id}` (`{study.protocol_name}`):", "", markdown_table(header, rows)]
    return "\n".join(parts)


def robustness_section(study_ids: list[str], artifacts_root: Path | None) -> str:
    """Accuracy under each acquisition shift, pooled over the folds whose models were analysed."""
    parts = []
    for study_id in study_ids:
        study = artifacts.read_study(study_id, artifacts_root)
        for backbone in sorted({r.backbone for r in artifacts.study_runs(study_id, artifacts_root)}):
            results = saved_results(study_id, backbone, artifacts_root)
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
                f"{backbone}, study `{study_id}` (`{study.protocol_name}`), folds {folds}: "
                f"{base['n_images']:,} held-out images, each seen by its own fold's model.",
                "",
                markdown_table(["shift", "strength", "accuracy", "change", "recall per class"], rows),
            ]
    if not parts:
        return "No robustness analysis in the artifacts yet (`python -m engine robustness --study ID --backbone NAME`)."
    intro = (
        "Each fold's saved model on its own held-out images, as acquired and under seven acquisition shifts at "
        f"{len(STRENGTHS)} strengths ({', '.join(STRENGTHS)}); the change is from the unshifted accuracy."
    )
    return "\n".join([intro, *parts])


def _robustness_status(study_ids: list[str], artifacts_root: Path | None) -> str:
    done = []
    for study_id in study_ids:
        for backbone in sorted({r.backbone for r in artifacts.study_runs(study_id, artifacts_root)}):
            results = saved_results(study_id, backbone, artifacts_root)
            if results:
                done.append(f"{backbone} (`{study_id}`, {len(results)} fold(s))")
    return ", ".join(done) if done else "none yet"


def checklist_section(artifacts_root: Path | None) -> str:
    """The checklist answered from one study's files: the served model's study, else the newest judged study."""
    from engine.reports.checklist import checklist_markdown
    from engine.reports.served import served_study_id
    from engine.reports.summary_sections import judged_studies

    judged = judged_studies(artifacts_root)
    study_id = served_study_id(artifacts_root) or (judged[0].study_id if judged else None)
    if study_id is None:
        return "No study with patient-level folds or a shortcut audit yet: the checklist is answered from one."
    study = artifacts.read_study(study_id, artifacts_root)
    return "\n".join(
        [
            f"Answered from study `{study_id}` ({study.title}) and its files: a different study gives different "
            "answers. CLAIM 2024 (Tejani et al., Radiology: Artificial Intelligence 2024) and TRIPOD+AI (Collins et "
            "al., BMJ 2024); each row's wording is ours, not the checklists'.",
            "",
            checklist_markdown(study_id, artifacts_root),
        ]
    )
