"""Model commands: ``evaluate`` on unseen labelled images, ``classify`` images, ``report``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.cli.main import add_artifacts

REPORT_OUT = "docs/reproduction.md"
"""The project's own report; writing it rewrites the README's results table too, unless told otherwise."""


def _model_path(args: argparse.Namespace) -> Path:
    """``--model``, or the model served by default (the first listed)."""
    from engine.models.catalog import list_models

    if args.model:
        return Path(args.model)
    models = list_models(args.artifacts)
    if not models:
        raise ValueError("no trained model in the artifacts folder; run a study first or pass --model")
    return models[0].serving_path


def _pick_model(args: argparse.Namespace, path: Path | None = None):
    from engine.models.inference import load_classifier

    return load_classifier(path or _model_path(args), artifacts_root=args.artifacts)


SKIPPED_SHOWN = 10
"""Skipped files named with their reason in ``evaluate``'s text output; ``--json`` has them all."""


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.evaluation.bootstrap import interval_text
    from engine.evaluation.external import evaluate_folder, evaluate_study_ensemble
    from engine.evaluation.external_results import ExternalEvaluation
    from engine.models.backbone_ensemble import ensemble_study

    relation = "same source" if args.same_source else "other source"
    if args.study:
        if args.model:
            raise ValueError(f"give --model or --study, not both, got --model={args.model!r} --study={args.study!r}")
        result = evaluate_study_ensemble(args.study, args.data, artifacts_root=args.artifacts, relation=relation)
    elif study_id := ensemble_study(path := _model_path(args)):  # the same mean as --study, kept once
        result = evaluate_study_ensemble(study_id, args.data, artifacts_root=args.artifacts, relation=relation)
    else:
        result = evaluate_folder(_pick_model(args, path), args.data, artifacts_root=args.artifacts, relation=relation)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    evaluation = ExternalEvaluation.from_json(result)
    print(f"model: {evaluation.model_label} · {evaluation.protocol} (study {evaluation.study_id})")
    data = evaluation.data
    print(f"data: {data.name} ({data.fingerprint}) {data.counts}; skipped {len(data.skipped)}")
    for item in data.skipped[:SKIPPED_SHOWN]:
        print(f"  skipped {item['file']}: {item['reason']}")
    if len(data.skipped) > SKIPPED_SHOWN:
        print(f"  and {len(data.skipped) - SKIPPED_SHOWN} more (--json lists every one)")
    if data.relation == "same source":
        print("same source as the study: these are same-source held-out figures, not an external validation")
    seen = data.overlap
    print(
        f"overlap with the model's study: {seen.identical} identical and {seen.near_duplicates} near-duplicate "
        f"image(s) of {seen.checked} left out"
    )
    intervals = evaluation.intervals  # kept with every evaluation made today
    print(intervals.description)
    for name, found in intervals.metrics.items():
        print(f"{name} {interval_text(found, missing='undefined')}")
    for line in intervals.undefined:
        print(f"undefined: {line}")
    classes = evaluation.classes
    print("confusion matrix (rows: true, columns: predicted):", ", ".join(classes))
    for name, row in zip(classes, evaluation.metrics["confusion_matrix"], strict=True):
        print(f"  {name:<16} {row}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    classifier = _pick_model(args)
    items = []
    failed = 0
    for raw in args.images:
        path = Path(raw)
        try:
            items.append((str(path), path.read_bytes()))
        except OSError as exc:
            print(f"error: {path}: {exc.strerror or exc}", file=sys.stderr)
            failed += 1
    predictions = classifier.classify(items)
    rows = [
        {
            "file": p.name,
            "predicted": p.predicted,
            "probabilities": p.probabilities,
            "ood_score": p.ood_score,
            "unlike_training_images": p.unlike_training,
            "warnings": p.warnings,
            "error": p.error,
        }
        for p in predictions
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if row["error"]:
                print(f"error: {row['error']}")
                continue
            probs = "  ".join(f"{c} {v:.3f}" for c, v in row["probabilities"].items())
            ood = (
                ""
                if row["ood_score"] is None
                else f"  ood {row['ood_score']:.2f} (above 1: unlike the training images)"
            )
            print(f"{row['file']}: {row['predicted']}  ({probs}){ood}")
            for warning in row["warnings"]:
                print(f"  warning: {warning}")
    return 2 if failed or any(r["error"] for r in rows) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.evaluation.bootstrap import interval_text
    from engine.reports.model_card import rewrite_model_cards
    from engine.reports.served import candidate_name, choose, read_choice

    choice = choose(args.artifacts) if args.choose else read_choice(args.artifacts)
    if choice is None:
        print("no served model chosen yet (python -m engine serve --choose); the best held-out accuracy is served")
        return 0
    if args.choose:
        # every card says whether its export is served and why: all of them follow the choice
        for card in rewrite_model_cards(args.artifacts):
            print(f"rewrote {card} and its .json", file=sys.stderr)
    if args.json:
        print(json.dumps(choice, indent=2))
        return 0
    print(f"served: {candidate_name(choice['backbone'])}, folds {choice['folds']} of study {choice['study_id']}")
    print(f"why: {choice['why']}")
    for c in choice["candidates"]:
        met = sum(1 for ok in c["met"].values() if ok)
        print(
            f"  {c['backbone']:<17} {c['protocol']:<22} {c['study_id']} targets met {met}/{len(c['met'])}  "
            f"adult normals {interval_text(c['adult_normals'])} ({c['adult_normals_how']})  "
            f"external COVID-19 {interval_text(c['external_covid'])}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from engine.reports.readme import results_table, with_results_table
    from engine.reports.reproduction import reproduction_report

    text = reproduction_report(args.artifacts)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    readme = args.readme if args.readme is not None else ("README.md" if args.out == REPORT_OUT else "")
    if readme:
        Path(readme).write_text(with_results_table(Path(readme).read_text(), results_table(args.artifacts)))
        print(f"wrote the results table of {readme}")
    return 0


def add_model(p: argparse.ArgumentParser) -> None:
    """``--model``: the saved model that ``evaluate`` and ``classify`` load."""
    p.add_argument(
        "--model",
        default=None,
        help="a model.keras, an exported model or a backbone's run folder (its fold ensemble) in the artifacts "
        "folder (default: the fold ensemble of the best backbone)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model commands to the ``python -m engine`` parser."""
    p = sub.add_parser("serve", help="the model served by default, chosen on what holds outside its source")
    p.add_argument("--choose", action="store_true", help="rank the candidates again and write artifacts/served.json")
    p.add_argument("--json", action="store_true")
    add_artifacts(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("evaluate", help="evaluate a trained model on a folder of labelled images no fold has seen")
    p.add_argument(
        "--data",
        required=True,
        help="folder with one sub-folder per class, named as the class or a common variant (COVID, SARS-CoV-2; "
        "NORMAL, No Finding, Healthy; VIRAL_PNEUMONIA); some classes may be missing",
    )
    add_model(p)
    p.add_argument(
        "--study",
        default=None,
        help="a study id instead of --model: the mean of its backbones' fold ensembles (its ensemble row), "
        "each backbone evaluated and saved on the way",
    )
    p.add_argument(
        "--same-source",
        action="store_true",
        help="the images come from a source the study already has (more of one release): their figures are "
        "same-source held-out figures, not an external validation",
    )
    p.add_argument("--json", action="store_true", help="print the saved evaluation, every image's probabilities too")
    add_artifacts(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("classify", help="print each image's class probabilities")
    p.add_argument("images", nargs="+", help="PNG, JPEG or DICOM files")
    add_model(p)
    p.add_argument("--json", action="store_true")
    add_artifacts(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("report", help="write the reproduction report (docs/reproduction.md) from the artifacts")
    p.add_argument("--out", default=REPORT_OUT, help="output file, or - for stdout")
    p.add_argument(
        "--readme",
        default=None,
        help=f"README whose results table is rewritten too (default: README.md with --out {REPORT_OUT}; '' for none)",
    )
    add_artifacts(p)
    p.set_defaults(func=cmd_report)
