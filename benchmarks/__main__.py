"""``python -m benchmarks NAME [--tiny] [--limit N] [--record]``; ``all`` runs each in its own process."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.harness import DOCS_PATH, PAPER_DATA, RESULTS_DIR, Options, finish, last_json_line, load_average  # noqa: E402

BENCHMARKS = (
    "pipeline",
    "finetune_epoch",
    "frozen_study",
    "classify",
    "memory",
    "features",
    "gpu",
    "hosted",
    "evaluation",
)
MODULES = {"finetune_epoch": "finetune", "frozen_study": "frozen_study"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("name", choices=[*BENCHMARKS, "all", "docs"], help="a benchmark, all of them, or docs (regenerate)")
    p.add_argument("--data", type=Path, default=PAPER_DATA, help="a folder of class folders (default: the paper's set)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes and few steps, for tests")
    p.add_argument("--limit", type=int, default=None, help="images per epoch or per method (shorter runs)")
    p.add_argument("--artifacts", type=Path, default=None, help="artifacts folder to reuse (default: a temp folder)")
    p.add_argument("--record", action="store_true", help="store the result and regenerate docs/benchmarks.md")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--docs", type=Path, default=DOCS_PATH)
    return p


def run_one(name: str, options: Options, *, command: str) -> dict:
    module = importlib.import_module(f"benchmarks.{MODULES.get(name, name)}")
    before = load_average()
    started = time.perf_counter()
    result = module.run(options)
    return finish(result, options, command=command, load_before=before, seconds=time.perf_counter() - started)


def run_all(argv: list[str]) -> int:
    """Each benchmark in a fresh process (own memory peak, own Keras backend); figures merged at the end."""
    figures: dict[str, dict] = {}
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks", name, *argv], stdout=subprocess.PIPE, text=True, check=False
        )
        print(proc.stdout, end="", flush=True)
        if proc.returncode != 0:
            failed.append(name)
            continue
        figures[name] = last_json_line(proc.stdout)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    print(json.dumps(figures))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.name == "all":
        return run_all(argv[1:])
    if args.name == "docs":
        from benchmarks.report import write_docs

        write_docs(args.results_dir, args.docs)
        print(f"wrote {args.docs}")
        return 0
    options = Options(
        data=args.data,
        tiny=args.tiny,
        limit=args.limit,
        artifacts=args.artifacts,
        record=args.record,
        results_dir=args.results_dir,
        docs_path=args.docs,
    )
    run_one(args.name, options, command=shlex.join(["python", "-m", "benchmarks", *argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
