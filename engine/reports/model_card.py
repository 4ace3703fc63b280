"""A model card for an exported model, in JSON and Markdown, from the artifacts (Mitchell et al., FAT* 2019).

What it is (classes, input, preprocessing, members, file), what it was trained on (dataset name,
fingerprint and counts, protocol and folds), how well it did (its members' pooled out-of-fold
figures with 95 % intervals, calibration, external evaluations of its study and backbone), how it
flags images unlike its training set, and what it is for and not for. Written beside the exported
file as ``<file>.card.json`` and ``<file>.card.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine import settings
from engine.evaluation.bootstrap import interval_text
from engine.evaluation.predictions import ENSEMBLE, ensemble_out_of_fold, out_of_fold
from engine.evaluation.summary import model_summary
from engine.models.backbone_ensemble import is_manifest, read_manifest
from engine.models.backbones import get_backbone
from engine.models.runtime import read_sidecar
from engine.reports.checklist import limitations
from engine.reports.explore import REFERENCE_DIR
from engine.reports.generalisation import generalisation, split_label
from engine.reports.results_sections import interval_verdict
from engine.reports.served import TARGETS, candidate_name, read_choice, recall_under_shifts, shifts_text, target_figures
from engine.results import artifacts, atomic
from engine.results.studies import Study

CARD_SCHEMA = 1
KNOWN_DATASETS = json.loads((REFERENCE_DIR / "datasets.json").read_text())["known_datasets"]
CARD_METRICS = (
    "accuracy",
    "macro_f1",
    "recall[COVID-19]",
    "specificity[COVID-19]",
    "recall[Normal]",
    "recall[Viral Pneumonia]",
    "roc_auc",
)
INTENDED_USE = (
    "Research and teaching: reproducing and comparing transfer-learning studies on public chest X-ray sets. "
    "Not a medical device: it must not be used to diagnose, screen, triage or treat anyone."
)
LIMITATIONS = (
    "An ensemble of fold models has no held-out image of its own: its figures are its members' on their own "
    "held-out folds.",
    "Probabilities are softmax outputs; their calibration on the study's images is given, not a clinic's.",
    "A high score on public research images says nothing of images from another hospital, scanner or "
    "population beyond the sets it was evaluated on, listed above.",
)
"""What holds for every exported model; the study's own limits come from ``engine.reports.checklist``."""


def card_path(export: Path, suffix: str) -> Path:
    return export.with_name(f"{export.name}.card.{suffix}")


def _dataset(study: Study) -> dict:
    info = study.dataset
    known = KNOWN_DATASETS.get(info.fingerprint)
    return {
        "name": info.name,
        "fingerprint": info.fingerprint,
        "counts": info.counts,
        "images": info.n_images,
        "by_source": info.by_source,
        "note": known["note"] if known else None,
    }


def _outside(study_id: str, backbone: str, artifacts_root: Path) -> dict:
    """The model's figures outside its training: each source held out by its folds, each saved evaluation, and each
    added source's held-out images under acquisition shifts (the adult normals filmed or processed another way)."""
    judged = generalisation(study_id, artifacts_root)
    found = judged.model(backbone)
    if found is None:
        return {"held_out_by_source": {}, "evaluations": [], "under_shifts": {}}
    held_out = {
        source: {k: v for k, v in figures["metrics"].items() if k == "accuracy" or k.startswith("recall[")}
        for source, figures in found.by_source.items()
    }
    return {
        "held_out_by_source": held_out,
        "under_shifts": _under_shifts(study_id, backbone, artifacts_root, held_out, added=judged.sources[1:]),
        "evaluations": [
            {"data": e.name, "relation": e.relation, "counts": e.counts, "accuracy": e.accuracy, "recall": e.recall}
            for e in found.external
        ],
    }


def _under_shifts(
    study_id: str, backbone: str, artifacts_root: Path, held_out: dict[str, dict], *, added: list[str]
) -> dict[str, dict]:
    """Per added source and class it brings: its recall under each shift, mild to strong, over the folds counted."""
    found = {}
    for source in added:
        for key in held_out.get(source, {}):
            if not key.startswith("recall["):
                continue
            name = key[7:-1]
            recalls, folds = recall_under_shifts(study_id, backbone, artifacts_root, source=source, class_name=name)
            if folds:
                found[f"{source} {name}"] = {"source": source, "class": name, "folds": folds, "recall": recalls}
    return found


def _served(study_id: str, backbone: str, artifacts_root: Path) -> dict | None:
    """Why this model is the one served by default, and what the other candidates measured, when it is."""
    choice = read_choice(artifacts_root)
    if not choice or (choice["study_id"], choice["backbone"]) != (study_id, backbone):
        return None
    mine = [c for c in choice["candidates"] if (c["study_id"], c["backbone"]) == (study_id, backbone)]
    others = [c for c in choice["candidates"] if (c["study_id"], c["backbone"]) != (study_id, backbone)]
    in_fold_best = max(choice["candidates"], key=lambda c: (c["paper_accuracy"] or {}).get("estimate") or 0.0)
    return {
        "why": choice["why"],
        "rule": choice["rule"],
        "targets": choice["targets"],
        "measured": target_figures(mine[0]) if mine else None,
        "in_fold_best": None if in_fold_best in mine else in_fold_best,
        "others": others,
    }


def _model(export: Path, meta: dict, backbone: str, folds: list[int]) -> dict:
    """What the card says of one backbone's exported fold ensemble."""
    spec = get_backbone(backbone)
    return {
        "file": export.name,
        "sha256": meta["sha256"],
        "format": meta["format"],
        "quantization": meta["quantization"],
        "network": spec.constructor,
        "options": spec.kwargs,
        "backbone": backbone,
        "members": [f"fold {f}" for f in folds],
        "classes": meta["classes"],
        "input": {
            **meta["input"],
            "meaning": "a grayscale chest X-ray resized to the input size, grey levels 0-255",
            "preprocessing": f"in the graph: gray to 3 channels, keras.applications' '{spec.preprocess_mode}' mode",
        },
        "outputs": meta["outputs"],
        "combine": None,
    }


def _ensemble_model(manifest_file: Path, manifest: dict) -> tuple[dict, dict | None, dict | None]:
    """The card's model part for an ensemble of backbones, with its members' parity (the worst of them) and
    OOD detectors."""
    study_dir = manifest_file.parent.parent
    sides = [read_sidecar(study_dir / m["file"]) for m in manifest["members"]]
    parts = [
        _model(study_dir / m["file"], s, m["backbone"], manifest["folds"])
        for m, s in zip(manifest["members"], sides, strict=True)
    ]
    model = {
        **parts[0],
        "file": manifest_file.name,
        "sha256": atomic.file_sha256(manifest_file),
        "network": " + ".join(f"{p['network']}{p['options'] or ''}" for p in parts),
        "options": None,
        "backbone": f"ensemble of {', '.join(manifest['backbones'])}",
        "members": [f"{b} fold {f}" for b in manifest["backbones"] for f in manifest["folds"]],
        "input": {
            **parts[0]["input"],
            "preprocessing": "in each member's graph, its own: "
            + "; ".join(f"{p['backbone']}: {p['input']['preprocessing']}" for p in parts),
        },
        "combine": manifest["combine"],
        "member_files": [
            {"backbone": m["backbone"], "file": m["file"], "sha256": m["sha256"]} for m in manifest["members"]
        ],
    }
    checks = [s.get("parity") for s in sides]
    parity = None
    if all(checks):
        parity = {
            "images": min(c["images"] for c in checks),
            "max_abs_dp": max(c["max_abs_dp"] for c in checks),
            "argmax_agreement": min(c["argmax_agreement"] for c in checks),
            "of": "each member against its Keras fold models; the worst member",
        }
    detectors = [s.get("ood") for s in sides]
    ood = (
        {"members": detectors, "combine": "median of the members' score-over-threshold ratios"}
        if all(detectors)
        else None
    )
    return model, parity, ood


def model_card(export: Path, artifacts_root: Path | None = None) -> dict:
    """The card of exported file ``export`` (or of an ensemble of backbones' manifest), from its sidecar and the
    artifacts of its members' study."""
    root = artifacts_root or settings.artifacts_dir()
    if is_manifest(export):
        manifest = read_manifest(export)
        study_id, backbone, folds = manifest["study_id"], ENSEMBLE, list(manifest["folds"])
        model, parity, ood = _ensemble_model(export, manifest)
        predictions = ensemble_out_of_fold(study_id, root)
    else:
        meta = read_sidecar(export)
        members = meta["members"]
        study_id, backbone = members[0]["study_id"], members[0]["backbone"]
        folds = sorted(m["fold"] for m in members)
        model, parity, ood = _model(export, meta, backbone, folds), meta.get("parity"), meta.get("ood")
        predictions = out_of_fold(study_id, backbone, root, folds=folds)
    study = artifacts.read_study(study_id, root)
    summary = model_summary(predictions, root)
    return {
        "schema_version": CARD_SCHEMA,
        "model": model,
        "training": {
            "study": study_id,
            "dataset": _dataset(study),
            "protocol": {"name": study.protocol_name, "description": study.protocol_description},
            "folds": study.n_folds,
            "split": split_label(study),
            "seed": study.seed,
            "weights": "ImageNet" if study.weights == "imagenet" else "random initialisation",
        },
        "performance": {
            "what": f"its members' pooled out-of-fold predictions ({summary['n_images']:,} images, folds {folds})",
            "intervals": summary["intervals"]["description"],
            "metrics": {key: summary["metrics"][key] for key in CARD_METRICS if key in summary["metrics"]},
            "calibration": summary["calibration"],
            "outside": _outside(study_id, backbone, root),
            "parity_with_keras": parity,
        },
        "out_of_distribution": ood,
        "served": _served(study_id, backbone, root),
        "intended_use": INTENDED_USE,
        "limitations": [*limitations(study, generalisation(study_id, root)), *LIMITATIONS],
    }


def card_markdown(card: dict) -> str:
    model, training, performance = card["model"], card["training"], card["performance"]
    dataset = training["dataset"]
    counts = ", ".join(f"{c} {n:,}" for c, n in dataset["counts"].items())
    quantization = model["quantization"]["mode"] if model["quantization"] else "float32"
    lines = [
        f"# Model card: {model['backbone']} ({len(model['members'])} fold model(s)), {model['format']} {quantization}",
        "",
        f"**Intended use.** {card['intended_use']}",
        "",
        "## Model",
        "",
        f"- File `{model['file']}` (sha256 `{model['sha256'][:16]}…`), {model['network']} {model['options'] or ''}",
        f"- Members: {', '.join(model['members'])} of study `{training['study']}`",
        f"- Classes: {', '.join(model['classes'])}",
        f"- Input `{model['input']['name']}` {model['input']['shape']} float32: {model['input']['meaning']}; "
        f"{model['input']['preprocessing']}",
        f"- Outputs: {', '.join(model['outputs'])} (class probabilities, class maps for Grad-CAM, pooled features)",
        *_combine_lines(model),
        "",
        "## Training data",
        "",
        f"- {dataset['name']} (fingerprint `{dataset['fingerprint']}`): {dataset['images']:,} images ({counts})",
    ]
    if len(dataset["by_source"]) > 1:
        for source, held in dataset["by_source"].items():
            lines.append(f"  - from `{source}`: " + ", ".join(f"{c} {n:,}" for c, n in held.items() if n))
    if dataset["note"]:
        lines.append(f"- About this dataset: {dataset['note']}")
    lines += [
        f"- Protocol `{training['protocol']['name']}`: {training['protocol']['description']}",
        f"- Stratified {training['folds']}-fold cross-validation ({training['split']}), seed {training['seed']}, "
        f"{training['weights']} weights",
        "",
        "## Performance",
        "",
        f"On {performance['what']}. {performance['intervals']}.",
        "",
        "| metric | estimate [95 % CI] |",
        "|---|---|",
        *[f"| {name} | {interval_text(found)} |" for name, found in performance["metrics"].items()],
    ]
    calibration = performance["calibration"]
    after = calibration["after"]
    lines += [
        "",
        f"Calibration: ECE (top label) {calibration['before']['ece_top_label']:.4f}, Brier "
        f"{calibration['before']['brier']:.4f}"
        + (
            f"; after cross-fitted temperature scaling {after['ece_top_label']:.4f}, {after['brier']:.4f}."
            if after
            else "."
        ),
    ]
    lines += _outside_lines(performance["outside"])
    parity = performance["parity_with_keras"]
    if parity:
        lines += [
            "",
            f"Against the Keras model on {parity['images']} held-out images: max |Δp| {parity['max_abs_dp']:.2g}, "
            f"argmax agreement {parity['argmax_agreement']:.1%}.",
        ]
    ood = card["out_of_distribution"]
    lines += ["", "## Images unlike the training set", ""]
    if ood and "members" in ood:
        first = ood["members"][0]
        files = ", ".join(f"`{d['file']}`" for d in ood["members"])
        lines.append(
            f"Each member's own detector: a Mahalanobis score of its pooled features ({first['method']}), threshold "
            f"at the {first['quantile']:.1%} quantile of {first['n_fit']:,} training images' cross-fitted scores "
            f"({files}). The image is unlike the training set when the "
            f'{ood["combine"]} is above 1, that is when most members flag it; then the app says: "this image is unlike '
            'the images the model was trained on; its prediction means nothing".'
        )
    elif ood:
        lines.append(
            f"Mahalanobis score of the pooled features ({ood['method']}), threshold at the {ood['quantile']:.1%} "
            f"quantile of {ood['n_fit']:,} training images' cross-fitted scores (`{ood['file']}`). Above it the "
            'app says: "this image is unlike the images the model was trained on; its prediction means nothing".'
        )
    else:
        lines.append("No detector was fitted (the study's images were not available at export).")
    lines += _served_lines(card["served"])
    lines += [
        "",
        "## Limitations",
        "",
        *[f"- {text[0].upper()}{text[1:].rstrip('.')}." for text in card["limitations"]],
        "",
    ]
    return "\n".join(lines)


def _combine_lines(model: dict) -> list[str]:
    """An ensemble of backbones' members' files and how their outputs are combined; nothing for one backbone."""
    if not model.get("combine"):
        return []
    files = ", ".join(f"`{m['file']}` (sha256 `{m['sha256'][:16]}…`)" for m in model["member_files"])
    return [f"- Member files: {files}", f"- Combined: {model['combine']}"]


def _outside_lines(outside: dict) -> list[str]:
    lines = ["", "## Outside its training images", ""]
    for source, figures in outside["held_out_by_source"].items():
        recalls = ", ".join(
            f"{k[7:-1]} recall {interval_text(v)}" for k, v in figures.items() if k.startswith("recall")
        )
        lines.append(f"- `{source}`, held out by its folds: accuracy {interval_text(figures['accuracy'])}; {recalls}")
    for e in outside["evaluations"]:
        kind = "same source as the study: not an external set" if e["relation"] == "same source" else e["relation"]
        counts = ", ".join(f"{c} {n:,}" for c, n in e["counts"].items())
        recalls = ", ".join(f"{c} recall {interval_text(v)}" for c, v in e["recall"].items())
        accuracy = "" if e["accuracy"] is None else f"accuracy {interval_text(e['accuracy'])}; "
        lines.append(f"- `{e['data']}` ({kind}; {counts}): {accuracy}{recalls}")
    for found in outside.get("under_shifts", {}).values():
        (unshifted,) = found["recall"]["none"]
        lines.append(
            f"- `{found['source']}` under acquisition shifts, held out by its folds ({found['folds']} folds): "
            f"{found['class']} recall {unshifted[1]:.3f} as acquired; mild to strong: {shifts_text(found['recall'])}"
        )
    if len(lines) == 3:
        lines.append("- No figure outside its training images has been saved yet.")
    return lines


def _served_lines(served: dict | None) -> list[str]:
    if not served:
        return []
    lines = ["", "## Why this model is served", "", f"{served['why']}. {served['rule']}", ""]
    if best := served.get("in_fold_best"):
        lines += [
            f"Ranked on in-fold accuracy on the paper's images alone, the first of the {len(served['others']) + 1} "
            f"candidates would be the {candidate_name(best['backbone'])} (`{best['protocol']}`, "
            f"study `{best['study_id']}`, "
            f"{best['split']}-level folds): in-fold accuracy {interval_text(best['paper_accuracy'])}, adult normals "
            f"called Normal {interval_text(best['adult_normals'])} ({best['adult_normals_how']}), external COVID-19 "
            f"recall {interval_text(best['external_covid'])}.",
            "",
        ]
    if served.get("measured"):
        lines += ["Its targets (a figure with an interval meets its bar only when the whole interval clears it):", ""]
        for name, figure in served["measured"].items():
            if isinstance(figure, dict):
                measured, verdict = interval_text(figure), interval_verdict(figure, TARGETS[name])
            elif figure is None:
                measured, verdict = "not measured", "not measured"
            else:
                measured = f"{figure:.3f} (pooled over its folds)"
                verdict = "met" if served["targets"].get(name) else "not met"
            lines.append(f"- {name}: {measured}, {verdict}")
        lines += ["", "The other candidates:", ""]
    for c in served["others"]:
        lines.append(
            f"- {candidate_name(c['backbone'])} (`{c['protocol']}`, study `{c['study_id']}`, {c['split']}-level "
            "folds): adult normals "
            f"called Normal {interval_text(c['adult_normals'])} ({c['adult_normals_how']}), external COVID-19 recall "
            f"{interval_text(c['external_covid'])}"
        )
    return lines


def write_model_card(export: Path, artifacts_root: Path | None = None) -> tuple[Path, Path]:
    """``<file>.card.json`` and ``<file>.card.md`` beside the exported file."""
    card = model_card(export, artifacts_root)
    atomic.write_json(card_path(export, "json"), card)
    atomic.write_text(card_path(export, "md"), card_markdown(card))
    return card_path(export, "json"), card_path(export, "md")


def rewrite_model_cards(artifacts_root: Path | None = None) -> list[Path]:
    """Write again the card of every exported file that has one (each says whether it is served, and why), after
    the served model changed; the Markdown cards written."""
    root = artifacts_root or settings.artifacts_dir()
    written = []
    for old in sorted([*root.glob("studies/*/runs/**/export/*.card.json"), *root.glob("studies/*/export/*.card.json")]):
        export = old.with_name(old.name.removesuffix(".card.json"))
        if export.is_file():
            written.append(write_model_card(export, artifacts_root)[1])
    return written
