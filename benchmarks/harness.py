"""What every benchmark shares: options, the machine's description, timing, output, recording."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.report import format_value
from engine import settings

PACKAGE_DIR = Path(__file__).resolve().parent
RESULTS_DIR = PACKAGE_DIR / "results"
DOCS_PATH = settings.PROJECT_ROOT / "docs" / "benchmarks.md"
PAPER_DATA = settings.shared_dir() / "data" / "covid19-radiography-paper"


@dataclass(frozen=True)
class Options:
    """Command-line options common to the benchmarks; ``tiny`` shrinks sizes and steps for tests."""

    data: Path = PAPER_DATA
    tiny: bool = False
    limit: int | None = None
    artifacts: Path | None = None
    record: bool = False
    results_dir: Path = RESULTS_DIR
    docs_path: Path = DOCS_PATH

    @property
    def input_size(self) -> int:
        return 32 if self.tiny else 224

    @property
    def weights(self) -> str | None:
        """ImageNet weights at full size; none in the tiny setting (tests run without shared weights)."""
        return None if self.tiny else "imagenet"


@dataclass
class Result:
    """One benchmark's outcome: the figures (named, JSON-safe numbers), a table, and how it was run."""

    name: str
    figures: dict[str, float]
    table: list[dict[str, object]]
    settings: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("keras", "tensorflow", "tensorflow-cpu", "tf-keras", "jax", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, object]:
    """The CPU, cores, memory, OS and package versions a result was measured with."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "versions": _versions(),
    }


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed:`` then ``elapsed()`` gives the seconds so far (frozen on exit)."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def check_figures(figures: dict[str, float]) -> None:
    for key, value in figures.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"figure {key}={value!r} is not a positive finite number")


def print_table(rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[format_value(row.get(c, "")).replace("\\|", "|") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def finish(result: Result, options: Options, *, command: str, load_before: list[float], seconds: float) -> dict:
    """Print the table and the figures (last line, JSON); with ``--record``, store them and regenerate the doc."""
    check_figures(result.figures)
    record = {
        **asdict(result),
        "command": command,
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "seconds": round(seconds, 1),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git_commit": git_commit(),
    }
    print_table(result.table)
    for note in result.notes:
        print(f"note: {note}")
    print(f"load average before {load_before}, after {record['load_average_after']}; {seconds:.1f} s")
    if options.record:
        from benchmarks.report import write_docs

        options.results_dir.mkdir(parents=True, exist_ok=True)
        path = options.results_dir / f"{result.name}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        write_docs(options.results_dir, options.docs_path)
        print(f"recorded {path} and {options.docs_path}")
    print(json.dumps(result.figures), flush=True)
    return record


def git_commit() -> str | None:
    """HEAD, followed by the tracked files that differ from it, if any: the code a record really ran.

    Earlier records and the docs made from them (``benchmarks/results/``, ``docs/``) are left out.
    """
    head = _git("rev-parse", "--short", "HEAD").strip()
    if not head:
        return None
    changed = [
        line[3:]
        for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
        if not line[3:].startswith(("benchmarks/results/", "docs/"))
    ]
    return f"{head} + uncommitted changes to {', '.join(changed)}" if changed else head


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=settings.PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def last_json_line(stdout: str) -> dict:
    """The figures a benchmark printed: its last non-empty stdout line."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("the benchmark printed nothing")
    return json.loads(lines[-1])
