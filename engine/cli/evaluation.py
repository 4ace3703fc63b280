"""Evaluation commands on a study's out-of-fold predictions and saved models, as tables or JSON.

``intervals`` (bootstrap intervals and calibration), ``operating-point``, ``failures`` and
``robustness``: the same figures the app's evaluation pages show, from the same cached artifacts.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from engine.cli.main import add_artifacts

if TYPE_CHECKING:
    from engine.results.studies import Study


def _study_id(args: argparse.Namespace) -> str:
    from engine.results import artifacts

    ids = artifacts.list_study_ids(args.artifacts)
    if args.study not in ids:
        raise ValueError(f"unknown study {args.study!r}; studies here: {', '.join(ids) or 'none'}")
    return args.study


def _out_of_fold(args: argparse.Namespace):
    from engine.evaluation.predictions import model_names, study_out_of_fold

    study_id = _study_id(args)
    names = model_names(study_id, args.artifacts)
    if args.model not in names:
        raise ValueError(f"model must be one of {', '.join(names)} for study {study_id}, got model={args.model!r}")
    return study_out_of_fold(study_id, args.model, args.artifacts)


def cmd_intervals(args: argparse.Namespace) -> int:
    from engine.evaluation.bootstrap import interval_text
    from engine.evaluation.summary import model_summary

    summary = model_summary(_out_of_fold(args), args.artifacts)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['model']} of study {summary['study_id']}: {summary['n_images']} images, folds {summary['folds']}")
    print(summary["intervals"]["description"])
    width = max(len(name) for name in summary["metrics"])
    for name, found in summary["metrics"].items():
        print(f"  {name:<{width}}  {interval_text(found, missing='undefined')}")
    calibration = summary["calibration"]
    after = calibration["after"]
    line = f"calibration: ECE (top label) {calibration['before']['ece_top_label']:.4f}"
    line += f", Brier {calibration['before']['brier']:.4f}"
    if after:
        line += f"; after cross-fitted temperature scaling {after['ece_top_label']:.4f}, Brier {after['brier']:.4f}"
    print(line)
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from engine.data.sources import study_dataset
    from engine.evaluation.predictions import ENSEMBLE, backbones_of, shared_folds
    from engine.evaluation.robustness import ensemble_fold_robustness, fold_robustness, pooled_table, saved_results
    from engine.results import artifacts

    study_id = _study_id(args)
    study = artifacts.read_study(study_id, args.artifacts)
    dataset = study_dataset(study, args.artifacts, data=args.data)
    if args.backbone == ENSEMBLE:
        folds = set(shared_folds(study_id, backbones_of(study_id, args.artifacts), args.artifacts, with_model=True))
        if args.fold is not None and args.fold not in folds:
            raise ValueError(
                f"fold={args.fold} is not a fold where every backbone of study {study_id} kept its model "
                f"(model.keras): those are {sorted(folds) or 'none'}"
            )
        folds = {f for f in folds if args.fold is None or f == args.fold}
        for fold in sorted(folds):
            ensemble_fold_robustness(study_id, fold, dataset, artifacts_root=args.artifacts)
    else:
        runs = [r for r in artifacts.study_runs(study_id, args.artifacts) if r.backbone == args.backbone]
        runs = [r for r in runs if args.fold is None or r.fold == args.fold]
        with_model = [r for r in runs if r.model_path is not None]
        if not with_model:
            raise ValueError(
                f"no saved model of backbone={args.backbone!r}"
                + (f" fold {args.fold}" if args.fold is not None else "")
                + f" in study {study_id}; robustness needs each fold's model.keras"
            )
        for run in with_model:
            fold_robustness(run, dataset, artifacts_root=args.artifacts)
        folds = {r.fold for r in with_model}
    table = pooled_table([r for r in saved_results(study_id, args.backbone, args.artifacts) if r["fold"] in folds])
    if args.json:
        print(json.dumps({"study_id": study_id, "backbone": args.backbone, "folds": sorted(folds), "table": table}))
        return 0
    print(f"{args.backbone} of study {study_id}, folds {sorted(folds)} (each model on its own held-out fold)")
    for row in table:
        recall = ", ".join(f"{c} {v:.3f}" for c, v in row["recall"].items() if v is not None)
        figures = f"accuracy {row['accuracy']:.3f} ({row['change']:+.3f})"
        print(f"  {row['setting']:<22} {row['strength']:<7} {figures}  {recall}")
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    from engine.data.sources import study_dataset
    from engine.models.inference import OOD_FILE
    from engine.results import artifacts
    from engine.training.fold import fit_run_detector

    study_id = _study_id(args)
    study = artifacts.read_study(study_id, args.artifacts)
    runs = [r for r in artifacts.study_runs(study_id, args.artifacts) if r.backbone == args.backbone and r.model_path]
    if not runs:
        raise ValueError(f"no saved model of backbone={args.backbone!r} in study {study_id}")
    dataset = study_dataset(study, args.artifacts, data=args.data)
    for run in runs:
        if (run.path / OOD_FILE).is_file() and not args.force:
            print(f"{run.backbone} fold {run.fold}: {OOD_FILE} already there (--force fits it again)")
            continue
        saved = fit_run_detector(run, dataset, study)
        print(f"{run.backbone} fold {run.fold}: " + (f"wrote {saved}" if saved else "too few training images"))
    if len(runs) > 1:
        print(fit_ensemble_detector(runs, dataset, study, force=args.force, artifacts_root=args.artifacts))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from engine.data.sources import study_dataset
    from engine.evaluation.bootstrap import interval_text
    from engine.evaluation.shortcuts import CONDITIONS, acquisition_baseline, model_audit
    from engine.results import artifacts

    study_id = _study_id(args)
    study = artifacts.read_study(study_id, args.artifacts)
    runs = artifacts.study_runs(study_id, args.artifacts)
    backbones = args.backbone or sorted({r.backbone for r in runs if r.model_path})
    dataset = study_dataset(study, args.artifacts, data=args.data)
    baseline = acquisition_baseline(study, dataset, artifacts_root=args.artifacts)
    audits = [model_audit(study, b, dataset, artifacts_root=args.artifacts) for b in backbones]
    if args.json:
        print(json.dumps({"study_id": study_id, "baseline": baseline, "models": audits}))
        return 0
    print(f"shortcut audit of study {study_id} ({study.title})")
    print(f"  no-anatomy baseline: accuracy {interval_text(baseline['figures']['metrics']['accuracy'])}")
    for audit in audits:
        line = ", ".join(
            f"{condition} {interval_text(audit['occlusion'][condition]['metrics']['accuracy'])}"
            for condition in CONDITIONS
        )
        print(f"  {audit['backbone']} (folds {audit['folds']}): {line}")
        for name, probe in audit["source_probe"].get("by_class", {}).items():
            print(f"    source told apart within {name}: balanced accuracy {probe['balanced_accuracy']:.3f}")
    print(f"  lung fields: {audits[0]['region']['description'] if audits else '-'}")
    return 0


def fit_ensemble_detector(runs: list, dataset, study: Study, *, force: bool, artifacts_root) -> str:
    """The fold ensemble's own detector (the default model a user gets), fitted on its members' training
    images, as its export's is (every study image when the members cover every fold)."""
    from engine.models.export import training_indices
    from engine.models.inference import ensemble_detector_path, fit_detector, load_classifier
    from engine.models.ood import MIN_FIT_ROWS

    folder = runs[0].path.parent
    path = ensemble_detector_path(folder, [r.fold for r in runs])
    if path.is_file() and not force:
        return f"{runs[0].backbone} ensemble: {path.name} already there (--force fits it again)"
    training = dataset.images[training_indices(study, [r.fold for r in runs])]
    if len(training) < MIN_FIT_ROWS:
        return f"{runs[0].backbone} ensemble: too few training images"
    classifier = load_classifier(folder, artifacts_root=artifacts_root)
    return f"{runs[0].backbone} ensemble: wrote {fit_detector(classifier, training).save(path)}"


def add_study_data(p: argparse.ArgumentParser) -> None:
    """``--data``, for a study whose images are not cached: the commands that re-read a study's images share it."""
    p.add_argument(
        "--data",
        action="append",
        default=None,
        help="the study's dataset folder or .zip (repeat for each source, in order), if its images are not cached",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the evaluation commands to the ``python -m engine`` parser."""
    p = sub.add_parser("intervals", help="bootstrap intervals and calibration of a study's out-of-fold predictions")
    p.add_argument("--study", required=True, help="study id")
    p.add_argument("--model", required=True, help="a backbone of the study, or 'ensemble'")
    p.add_argument("--json", action="store_true")
    add_artifacts(p)
    p.set_defaults(func=cmd_intervals)

    p = sub.add_parser("robustness", help="saved fold models on their held-out images under acquisition shifts")
    p.add_argument("--study", required=True, help="study id")
    p.add_argument(
        "--backbone",
        required=True,
        help="a backbone of the study, or 'ensemble': the mean of every backbone's model of each fold (the folds "
        "where every backbone kept its model)",
    )
    p.add_argument("--fold", type=int, default=None, help="one fold (default: every fold with a saved model)")
    add_study_data(p)
    p.add_argument("--json", action="store_true")
    add_artifacts(p)
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("audit", help="the shortcut audit: no-anatomy baseline, occlusion and source probe of a study")
    p.add_argument("--study", required=True, help="study id")
    p.add_argument("--backbone", action="append", default=None, help="default: every backbone with a saved model")
    add_study_data(p)
    p.add_argument("--json", action="store_true")
    add_artifacts(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "ood", help="fit the out-of-distribution detector of each saved fold model of a backbone, and of their ensemble"
    )
    p.add_argument("--study", required=True, help="study id")
    p.add_argument("--backbone", required=True)
    add_study_data(p)
    p.add_argument("--force", action="store_true", help="fit again where a detector is already saved")
    add_artifacts(p)
    p.set_defaults(func=cmd_ood)
