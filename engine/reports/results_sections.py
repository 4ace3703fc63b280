"""The report's results sections: the ablation from `paper` to `xray-finetune`, and the recommended protocol's
targets, each figure read from the artifacts (no number is typed in)."""

from __future__ import annotations

from pathlib import Path

from engine.evaluation.bootstrap import interval_text
from engine.evaluation.external import saved_evaluations
from engine.evaluation.external_results import ExternalEvaluation
from engine.evaluation.predictions import ENSEMBLE, model_names, study_out_of_fold
from engine.evaluation.robustness import pooled_table, saved_results
from engine.evaluation.sample_size import count_to_clear
from engine.evaluation.summary import model_summary
from engine.reports import explore
from engine.reports.generalisation import split_label
from engine.reports.markdown import markdown_table
from engine.results import artifacts
from engine.results.studies import Study
from engine.training.presets import ABLATION, ABLATION_EXTRAS, ABLATION_STEPS, PAPER, XRAY_FINETUNE, XRAY_PROBE
from engine.training.protocols import Protocol

ABLATION_BACKBONE = "MobileNet-0.25"
PATH = (PAPER.name, *(p.name for p in ABLATION_STEPS), XRAY_FINETUNE.name)
EXTRAS = tuple(p.name for p in ABLATION_EXTRAS)
DESCRIPTIONS = {
    **{p.name: p.description for p in ABLATION},
    PAPER.name: "The paper's protocol: every layer at lr 1e-3 for 10 epochs, the paper's augmentation, the last epoch.",
    XRAY_FINETUNE.name: "Step 4, with the epoch kept chosen on an inner 10 % validation split: `xray-finetune`.",
}
SHIFTS_IN_TARGET = ("contrast", "gamma", "brightness")
TARGET = 0.98
MAX_DROP = 0.02
CPU_BUDGET_S = 3 * 3600
EXTRA_SET = "covid19-extra"


def _studies_by_protocol(artifacts_root: Path | None, dataset: str | None = None) -> dict[str, list[Study]]:
    found: dict[str, list[Study]] = {}
    for study_id in artifacts.list_study_ids(artifacts_root):
        study = artifacts.read_study(study_id, artifacts_root)
        if dataset is None or study.dataset.fingerprint == dataset:
            found.setdefault(study.protocol_name, []).append(study)
    return found


def _figures(study: Study, backbone: str, artifacts_root: Path | None) -> dict | None:
    table = explore.comparison_table(study.study_id, artifacts_root).set_index("backbone")
    if backbone not in table.index:
        return None
    summary = model_summary(study_out_of_fold(study.study_id, backbone, artifacts_root), artifacts_root)
    return {"row": table.loc[backbone], "summary": summary, "study": study}


def _cell(figures: dict, metric: str) -> str:
    row = figures["row"]
    return (
        f"{row[f'{metric} mean']:.3f} ± {row[f'{metric} std']:.3f}"
        if row["folds"] > 1
        else f"{row[f'{metric} mean']:.3f}"
    )


def ablation_section(artifacts_root: Path | None) -> str:
    """`paper` to `xray-finetune` on one small backbone, one change at a time, on the same folds."""
    by_protocol = _studies_by_protocol(artifacts_root)
    rows, previous, previous_name, skipped = [], None, None, False
    for name in (*PATH, *EXTRAS):
        studies = by_protocol.get(name, [])
        figures = next((f for s in studies if (f := _figures(s, ABLATION_BACKBONE, artifacts_root))), None)
        if figures is None:
            rows.append([f"`{name}`", DESCRIPTIONS[name], "not run yet", "–", "–", "–", "–", "–"])
            skipped = skipped or (previous is not None and name in PATH)
            continue
        pooled = figures["summary"]["metrics"]["accuracy"]
        change = "–"
        if previous is not None and name in PATH:
            change = f"{figures['row']['accuracy mean'] - previous['row']['accuracy mean']:+.3f}"
            if skipped:
                change += f" (from `{previous_name}`: the steps between were not run)"
            skipped = False
        rows.append(
            [
                f"`{name}`",
                DESCRIPTIONS[name],
                f"{int(figures['row']['folds'])}/{figures['study'].n_folds}",
                _cell(figures, "accuracy"),
                f"{pooled['estimate']:.3f} [{pooled['low']:.3f}, {pooled['high']:.3f}]",
                _cell(figures, "macro_f1"),
                _cell(figures, "recall[COVID-19]"),
                change,
            ]
        )
        if name in PATH:
            previous, previous_name = figures, name
    header = [
        "protocol",
        "what changes",
        "folds",
        "accuracy, fold mean ± sd",
        "accuracy, pooled [95 % CI]",
        "macro F1",
        "COVID-19 recall",
        "accuracy change from the step before",
    ]
    return "\n".join(
        [
            f"{ABLATION_BACKBONE} on the same stratified folds (same seed) under each protocol; each step keeps the "
            "changes before it. The steps were fixed before any of them ran on the test folds; the last row is a "
            "candidate measured beside the recommended protocol, not part of it.",
            "",
            markdown_table(header, rows),
        ]
    )


def _best(studies: list[Study], artifacts_root: Path | None) -> tuple[Study | None, list[tuple[str, dict]]]:
    """The recommended study with the most finished runs, and its models' summaries."""
    if not studies:
        return None, []
    study = max(
        studies,
        key=lambda s: (s.split_level == "patient", len(artifacts.study_runs(s.study_id, artifacts_root))),
    )
    sid = study.study_id
    return study, [
        (m, model_summary(study_out_of_fold(sid, m, artifacts_root), artifacts_root))
        for m in model_names(sid, artifacts_root)
    ]


def _verdict(value: float | None, ok: bool | None, *, complete: bool = True) -> str:
    if value is None:
        return "not measured yet"
    if not complete:
        return "so far " + ("met" if ok else "not met") + " (the study is not finished)"
    return "met" if ok else "not met"


def interval_verdict(found: dict | None, bar: float, *, complete: bool = True) -> str:
    """Met only when the whole 95 % interval clears ``bar``; not met when all of it falls short; otherwise the
    interval straddles the bar and the data cannot say. A recall short of met that knows its ``n`` also says about
    how many of the ``n`` images would clear it (for a percentile interval, whose limit ``sample_size`` knows)."""
    if not found or found.get("estimate") is None:
        return "not measured yet"
    low, high = found.get("low"), found.get("high")
    if low is None or high is None:
        verdict = "met (no interval)" if found["estimate"] >= bar else "not met (no interval)"
    elif low >= bar:
        verdict = "met"
    elif high < bar:
        verdict = "not met"
    else:
        verdict = f"undecided: the interval straddles {bar:g}"
    if low is not None and low < bar and found.get("n") and found.get("method", "percentile") == "percentile":
        verdict += f"; about {_count_to_clear(found, bar)} of {found['n']:,} would clear it"
    return verdict if complete else f"so far {verdict} (the study is not finished)"


def _count_to_clear(found: dict, bar: float) -> int:
    """The binomial limit's count (``sample_size``), and at least one more than found now: a finite bootstrap's lower
    end can fall short of the bar at the count the limit says clears it."""
    n = found["n"]
    now = round(found["estimate"] * n)
    return min(n, max(count_to_clear(n, bar, confidence=found.get("confidence", 0.95)), now + 1))


def _robustness_drop(study: Study, backbone: str, artifacts_root: Path | None) -> tuple[float | None, str]:
    results = saved_results(study.study_id, backbone, artifacts_root)
    if not results:
        return None, "no robustness analysis yet"
    table = pooled_table(results)
    drops = {r["shift"]: -r["change"] for r in table if r["shift"] in SHIFTS_IN_TARGET and r["strength"] == "middle"}
    worst = max(drops, key=drops.get)
    folds = sorted(r["fold"] for r in results)
    return drops[worst], f"worst: {worst}, accuracy {-drops[worst]:+.3f} (folds {folds})"


def extra_set_rows(evaluations: list[ExternalEvaluation], study_id: str) -> list[list[str]]:
    """A targets row for each of the study's models evaluated on the extra set, by name: picking the
    best of them would be a choice made on that set. Four decimals and the count, since 0.9795 is not
    0.98; the interval says how far the set can tell."""
    label = f"COVID-19 recall on {EXTRA_SET} ≥ {TARGET}"
    extra = [e for e in evaluations if e.data.name == EXTRA_SET and e.study_id == study_id]
    if not extra:
        return [[label, "–", _verdict(None, None)]]
    rows = []
    for found in sorted(extra, key=lambda e: e.model_label):
        recall = found.recall["COVID-19"]
        n = found.data.counts["COVID-19"]
        interval = found.interval("recall[COVID-19]")
        bounds = f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval and interval["low"] is not None else ""
        measured = (
            f"{recall:.4f}{bounds}, {round(recall * n):,} of {n:,} ({found.model_label}; same-source held-out images)"
        )
        rows.append([label, measured, interval_verdict(interval or {"estimate": recall}, TARGET)])
    return rows


RECOMMENDED = (XRAY_PROBE, XRAY_FINETUNE)
"""The recommended protocols, each with its targets table: the frozen-base probe, then fine-tuning."""


def targets_sections(artifacts_root: Path | None) -> str:
    """Each recommended protocol against the targets of the results issue, as measured."""
    return "\n\n".join(f"### `{p.name}`\n\n{targets_section(artifacts_root, p)}" for p in RECOMMENDED)


def targets_section(artifacts_root: Path | None, protocol: Protocol) -> str:
    """One recommended protocol's best study against the targets of the results issue, as measured."""
    study, models = _best(_studies_by_protocol(artifacts_root).get(protocol.name, []), artifacts_root)
    if study is None:
        return f"No `{protocol.name}` study in the artifacts yet."
    runs = artifacts.study_runs(study.study_id, artifacts_root)
    if not runs:
        return f"The `{protocol.name}` study `{study.study_id}` has no finished run yet."
    backbones = [m for m, _ in models if m != ENSEMBLE]
    complete = len(runs) == len(backbones) * study.n_folds
    rows = []
    table = explore.comparison_table(study.study_id, artifacts_root).set_index("backbone")
    summaries = dict(models)
    for metric, label in (("accuracy", "accuracy"), ("recall[COVID-19]", "COVID-19 recall"), ("macro_f1", "macro F1")):
        best = table[f"{metric} mean"].idxmax()
        value = float(table.loc[best, f"{metric} mean"])
        pooled = summaries[best]["metrics"].get(metric)
        rows.append(
            [
                f"best {label} ≥ {TARGET}",
                f"fold mean {value:.3f}; pooled {interval_text(pooled)} "
                f"({best}, {int(table.loc[best, 'folds'])} folds, {split_label(study)})",
                interval_verdict(pooled, TARGET, complete=complete),
            ]
        )
    rows.extend(extra_set_rows(saved_evaluations(artifacts_root), study.study_id))
    for backbone in sorted(backbones, key=lambda m: -dict(models)[m]["metrics"]["accuracy"]["estimate"]):
        drop, text = _robustness_drop(study, backbone, artifacts_root)
        rows.append(
            [
                f"accuracy drop under contrast, gamma and brightness at the middle strength ≤ {MAX_DROP:.2f}",
                f"{backbone}: {text}",
                _verdict(drop, drop is not None and drop <= MAX_DROP),
            ]
        )
    seconds = sum(float(r.status.get("seconds", 0.0)) for r in runs)
    rows.append(
        [
            f"the study of its backbones ({', '.join(backbones)}) within {CPU_BUDGET_S // 3600} h on the 2-core CPU",
            f"{seconds / 3600:.2f} h of training over {len(runs)} runs (the runs' own times)",
            _verdict(seconds, seconds <= CPU_BUDGET_S, complete=complete),
        ]
    )
    rows.append(
        [
            "accuracy ≥ 0.90 on the external set kept aside for acceptance",
            "not in this project's artifacts: measured by the acceptance run",
            "not measured here",
        ]
    )
    return "\n".join(
        [
            f"Study `{study.study_id}` (`{protocol.name}`): {protocol.description}",
            "",
            markdown_table(["target", "measured", "verdict"], rows),
            "",
            selected_epochs(runs) if protocol.trains_by_epochs else selected_heads(runs),
        ]
    )


def selected_heads(runs: list[artifacts.RunResult]) -> str:
    """The logistic-regression head's L2 strength each fold's inner cross-validation chose."""
    parts = []
    for backbone in sorted({r.backbone for r in runs}):
        own = sorted((r for r in runs if r.backbone == backbone), key=lambda r: r.fold)
        chosen = ", ".join(f"fold {r.fold}: C {r.config['head_selection']['C']:g}" for r in own)
        parts.append(f"{backbone} ({chosen})")
    folds = runs[0].config["head_selection"]["inner_folds"]
    return (
        f"L2 strength chosen by accuracy over {folds} stratified folds of each fold's training images (a smaller "
        "C is a stronger penalty; on a tie the smaller is kept): " + "; ".join(parts) + "."
    )


def _warmup_epochs(config: dict) -> int:
    return sum(stage["epochs"] for stage in config["protocol"]["stages"] if stage.get("on") == "cached-features")


def selected_epochs(runs: list[artifacts.RunResult]) -> str:
    """How often the inner-validation rule kept the head's warm-up state, i.e. the frozen base and no fine-tuning."""
    parts = []
    for backbone in sorted({r.backbone for r in runs}):
        own = sorted((r for r in runs if r.backbone == backbone), key=lambda r: r.fold)
        warm = sum(1 for r in own if r.config.get("selected_epoch") == _warmup_epochs(r.config))
        epochs = ", ".join(f"fold {r.fold}: {r.config.get('selected_epoch')}" for r in own)
        parts.append(f"{backbone} kept the warm-up in {warm} of {len(own)} folds ({epochs})")
    return (
        "Epoch kept by the inner-validation rule (the head's warm-up on cached features competes with every "
        "fine-tuning epoch; keeping the warm-up means the ImageNet base was not changed): " + "; ".join(parts) + "."
    )
