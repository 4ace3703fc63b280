"""Job commands: ``submit``, ``jobs``, ``cancel``, ``logs`` and ``worker``.

``submit`` takes the same options as ``study`` but queues the study for the background worker
(and starts one unless ``--no-worker``) instead of training in the foreground.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def cmd_submit(args: argparse.Namespace) -> int:
    from engine.cli.main import study_job_request
    from engine.jobs.store import JobStore
    from engine.jobs.worker import ensure_worker

    store = JobStore(args.artifacts)
    asked_at = time.time()
    job = store.submit(study_job_request(args))
    if job.created_at < asked_at:
        print(f"the same study is already {job.state} as job {job.id}", file=sys.stderr)
    if not args.no_worker and ensure_worker(args.artifacts):
        print(f"started a worker (log: {store.root / 'logs' / 'worker.log'})", file=sys.stderr)
    print(job.id)
    return 0


def _job_line(job) -> list[str]:
    progress = job.live_progress
    where = f"{progress.backbone} fold {progress.fold}" if job.state == "running" and progress.backbone else ""
    return [
        job.id,
        job.state,
        time.strftime("%Y-%m-%d %H:%M", time.localtime(job.created_at)),
        f"{progress.tasks_done}/{progress.tasks_total}",
        f"{progress.fraction:.0%}",
        where,
        job.request.job_kind.short(job.request),
        ",".join(job.request.backbones),
        job.study_id or "-",
    ]


def cmd_jobs(args: argparse.Namespace) -> int:
    from engine.jobs.store import JobStore

    jobs = JobStore(args.artifacts).list_jobs()
    if args.json:
        print(json.dumps({"jobs": [job.to_dict() for job in jobs]}, indent=2))
        return 0
    if not jobs:
        print("no jobs yet")
        return 0
    lines = [["id", "state", "created", "tasks", "done", "now", "protocol or kind", "backbones", "study"]]
    lines += [_job_line(job) for job in jobs]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from engine.jobs.states import ACTIVE_STATES
    from engine.jobs.store import JobStore

    job = JobStore(args.artifacts).cancel(args.job)
    if job.state in ACTIVE_STATES:
        print(f"{job.id}: cancel requested; the worker stops it within one batch")
    else:
        print(f"{job.id}: {job.state}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from engine.jobs.store import JobStore

    sys.stdout.write(JobStore(args.artifacts).log(args.job))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.jobs.worker import run_worker

    return run_worker(args.artifacts, once=args.once)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the job commands to the ``python -m engine`` parser."""
    from engine.cli.main import add_artifacts, add_study_options

    p = sub.add_parser("submit", help="queue a study for the background worker; prints the job id")
    add_study_options(p)
    p.add_argument("--no-worker", action="store_true", help="only queue it; do not start a worker")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="every job, newest first, with its progress")
    add_artifacts(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("cancel", help="cancel a queued or running job (finished folds are kept)")
    p.add_argument("job", help="job id")
    add_artifacts(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("logs", help="print a job's log")
    p.add_argument("job", help="job id")
    add_artifacts(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("worker", help="run queued jobs one task at a time (the app starts one by itself)")
    add_artifacts(p)
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=cmd_worker)
