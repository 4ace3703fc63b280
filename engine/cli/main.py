"""``python -m engine COMMAND``: the command line the app, the worker and the benchmarks share.

Bad arguments and bad inputs end with a one-line ``error: ...`` on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.results.studies import Study

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def expected_errors() -> tuple[type[BaseException], ...]:
    """What a user's input or machine can cause: bad arguments and data (``ValueError`` and the engine's
    subclasses of it), files and folders (``OSError``, the read-only demo's refusal among them), a missing
    weights file and a wrong backend. Anything else is a bug, and prints its traceback."""
    from engine.models.backbones import MissingWeightsError
    from engine.models.export.graph import BackendError

    return (ValueError, OSError, MissingWeightsError, BackendError)


def add_artifacts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts", type=Path, default=None, help="artifacts folder (default: CXR_ARTIFACTS or ./artifacts)"
    )


def add_study_options(parser: argparse.ArgumentParser) -> None:
    from engine.models.backbones import REGISTRY
    from engine.training.presets import PROTOCOLS

    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="PATH",
        help="dataset folder (one sub-folder per class) or its .zip; repeat it for a multi-source study (the first "
        "sets the classes, the others add images to them)",
    )
    parser.add_argument(
        "--split",
        default="patient",
        choices=["patient", "image"],
        help="folds by patient (default; from patients.csv or the public sets' file names) or by image (the paper's)",
    )
    parser.add_argument(
        "--arch",
        action="append",
        required=True,
        metavar="NAME",
        help=f"backbone, repeatable; 'paper' for the paper's 14. One of: {', '.join(REGISTRY)}",
    )
    parser.add_argument("--protocol", default="frozen", choices=sorted(PROTOCOLS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="override the protocol's (last stage's) epochs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--weights", default="imagenet", choices=["imagenet", "none"])
    add_artifacts(parser)


def study_job_request(args: argparse.Namespace):
    """The study that :func:`add_study_options`' options ask for: the request the app's form builds too
    (``JobRequest.for_study``), which ``study`` runs in the foreground and ``submit`` queues."""
    from engine.jobs.request import JobRequest

    return JobRequest.for_study(
        args.data,
        backbones=expand_arches(args.arch),
        protocol=args.protocol,
        folds=args.folds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        input_size=args.input_size,
        seed=args.seed,
        weights=args.weights,
        split=args.split,
    )


def expand_arches(arches: list[str]) -> list[str]:
    from engine.models.backbones import PAPER_BACKBONES

    out: list[str] = []
    for name in arches:
        for item in PAPER_BACKBONES if name == "paper" else [name]:
            if item not in out:
                out.append(item)
    return out


def summary_table(rows: list[dict], keys: tuple[str, ...]) -> str:
    header = ["backbone", "protocol", "folds", *keys]
    lines = [header]
    for row in rows:
        cells = [row["backbone"], row["protocol"], f"{row['folds_done']}/{row['n_folds']}"]
        for key in keys:
            m = row["metrics"].get(key)
            cells.append(f"{m['mean']:.3f}±{m['std']:.3f}" if m else "-")
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


TABLE_KEYS = ("accuracy", "precision", "recall", "f1", "macro_f1", "recall[COVID-19]", "loss")


def study_lines(study: Study) -> list[str]:
    """What a study is made of, before it trains: images by source and class, and how its folds were made."""
    lines = [f"study {study.study_id}: {study.title}", "images by source and class:"]
    for source, counts in study.dataset.by_source.items():
        lines.append(f"  {source}: " + ", ".join(f"{c} {n:,}" for c, n in counts.items() if n))
    if study.split_recorded:
        split = study.split
        spread = split.patients_in_several_folds
        rules = ", ".join(f"{rule} {n:,}" for rule, n in split.patient_rules.items())
        lines.append(
            f"folds: {split.level}-level; {split.patients:,} patients, {split.images_sharing_a_patient:,} "
            f"images share one (found by: {rules}); {spread['patients']:,} patients in more than one fold"
        )
    return lines


def cmd_study(args: argparse.Namespace) -> int:
    from engine.cli.progress import FoldBars
    from engine.training.runner import run_study
    from engine.training.study import summarize

    request = study_job_request(args)
    with FoldBars() as bars:
        study = run_study(
            request.sources,
            backbones=list(request.backbones),
            request=request.study_request(),
            input_size=request.input_size,
            artifacts_root=args.artifacts,
            on_progress=bars.on_progress,
            on_run=bars.on_run,
            on_study=lambda study: bars.say("\n".join(study_lines(study))),
        )
    rows = [r for r in summarize(args.artifacts) if r["study_id"] == study.study_id]
    print(f"study {study.study_id}: {study.title}")
    print(summary_table(rows, TABLE_KEYS))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from engine.training.study import summarize

    rows = summarize(args.artifacts)
    if args.json:
        print(json.dumps({"studies": rows}, indent=2))
    elif rows:
        print(summary_table(rows, TABLE_KEYS))
    else:
        print("no finished runs yet")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="COVID-19 chest X-ray transfer-learning studies"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("study", help="run a study in the foreground and print its summary")
    add_study_options(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("summary", help="mean and std over folds of every metric, per study and backbone")
    add_artifacts(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    from engine.cli import evaluation as cli_evaluation
    from engine.cli import export as cli_export
    from engine.cli import jobs as cli_jobs
    from engine.cli import models as cli_models

    cli_jobs.register(sub)
    cli_models.register(sub)
    cli_evaluation.register(sub)
    cli_export.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted; finished folds are kept", file=sys.stderr)
        return 130
    except expected_errors() as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"\nerror: {message}", file=sys.stderr)
        return 2
