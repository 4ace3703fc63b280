"""The job store under load: many reader processes and threads and one busy writer, all at once.

Everything starts on a fresh artifacts folder at the same instant, so the first-time schema
creation races too. No reader may ever see "database is locked", a half-written job, or progress
going backwards.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from engine.jobs.store import JobRequest, JobStore

READER_PROCESSES = 3
THREADS_PER_READER = 4
WRITES = 300
RUN_S = 5.0


def _reader_thread(root: Path, deadline: float, results: list) -> None:
    reads, errors, last = 0, [], -1
    store = JobStore(root)
    while time.monotonic() < deadline:
        try:
            for job in store.list_jobs():
                job = store.get(job.id)
                step = job.progress.get("step", -1)
                if step < last:
                    errors.append(f"progress went back from step {last} to {step}")
                last = step
                if len(store.tasks(job.id)) != 2:
                    errors.append(f"job {job.id} seen with {len(store.tasks(job.id))} tasks")
                store.log(job.id)
                reads += 1
        except Exception as exc:  # every failure is what this test counts
            errors.append(f"{type(exc).__name__}: {exc}")
    results.append((reads, errors, last))


def _reader(root: str, barrier, out) -> None:
    barrier.wait(timeout=120)
    deadline = time.monotonic() + RUN_S
    results: list = []
    threads = [
        threading.Thread(target=_reader_thread, args=(Path(root), deadline, results)) for _ in range(THREADS_PER_READER)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(("reader", results))


def _writer(root: str, data: str, barrier, out) -> None:
    import engine.training.study  # noqa: F401 - submit's checks import it; loaded before the start, not during the race

    barrier.wait(timeout=120)
    errors, writes = [], 0
    try:
        store = JobStore(Path(root))
        job = store.submit(JobRequest(data=data, backbones=("MobileNet-0.25",), folds=2, input_size=32, weights="none"))
        task = store.claim_next(executor="local")
        for step in range(WRITES):
            line = f"step {step}" if step % 10 == 0 else None
            store.set_progress(job.id, {"step": step, "fraction": step / WRITES}, log_line=line)
            writes += 1
        store.finish_task(task, state="done")
    except Exception as exc:  # every failure is what this test counts
        errors.append(f"{type(exc).__name__}: {exc}")
    out.put(("writer", (writes, errors)))


@pytest.mark.slow
def test_many_readers_and_a_writer_never_see_a_locked_database(artifacts_root: Path, tiny_data: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(READER_PROCESSES + 1), ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(str(artifacts_root), barrier, out)) for _ in range(READER_PROCESSES)]
    procs.append(ctx.Process(target=_writer, args=(str(artifacts_root), str(tiny_data), barrier, out)))
    for p in procs:
        p.start()
    reports = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    ((writes, writer_errors),) = [r for kind, r in reports if kind == "writer"]
    assert writer_errors == [] and writes == WRITES
    threads = [t for kind, r in reports if kind == "reader" for t in r]
    assert len(threads) == READER_PROCESSES * THREADS_PER_READER
    assert [e for _, errors, _ in threads for e in errors] == []
    assert all(reads >= 10 for reads, _, _ in threads), [reads for reads, _, _ in threads]
    assert max(last for _, _, last in threads) > 0

    store = JobStore(artifacts_root)
    (job,) = store.list_jobs()
    assert job.progress["step"] == WRITES - 1
    assert store.log(job.id).count("  step ") == WRITES // 10
    assert [t.state for t in store.tasks(job.id)] == ["done", "queued"]
