"""Save a PNG screenshot of every page of the explorer into docs/screenshots/.

    python docs/screenshots/take.py [--artifacts artifacts] [--xray some.png] [--job-data folder] [--read-only]

The studies and saved evaluations of ``--artifacts`` are copied into a temporary folder first and the app is served
from the copy, so taking screenshots never writes to the real artifacts. ``--job-data`` queues a
small job on that folder in the copy (and starts its worker), so the Jobs page shows live progress;
it is cancelled when the screenshots are done. Needs
Debian's Chromium (``apt-get install chromium``) and the ``playwright`` package. The browser
test (tests/test_browser.py) drives the app with the same helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
PAGES = {
    "home": "",
    "comparison": "comparison",
    "confusion": "confusion",
    "curves": "curves",
    "discrimination": "discrimination?zoom=on",
    "calibration": "calibration?temperature=on",
    "operating_point": "operating_point",
    "failures": "failures",
    "robustness": "robustness",
    "audit": "audit",
    "external": "external",
    "classify": "classify",
    "jobs": "jobs",
    "report": "report",
}
START_TIMEOUT_S = 90
IDLE_TIMEOUT_MS = 120_000
DEMO_SEED = 7
ACTION_TIMEOUT_MS = 90_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    """A running ``streamlit run``: its base URL, its process and the file its output goes to."""

    url: str
    process: subprocess.Popen
    log: Path


@contextlib.contextmanager
def server(artifacts: Path, *, read_only: bool = False, port: int | None = None) -> Iterator[Server]:
    """``streamlit run streamlit_app.py`` on localhost against ``artifacts``, until the block ends."""
    port = port or free_port()
    env = {**os.environ, "CXR_ARTIFACTS": str(artifacts), "CXR_READ_ONLY": "1" if read_only else "0"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "streamlit_app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "localhost",
        "--browser.gatherUsageStats",
        "false",
    ]
    with tempfile.TemporaryDirectory(prefix="cxr-server-") as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://localhost:{port}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"streamlit did not start on port {port}:\n{log_path.read_text()}") from None
                    time.sleep(0.5)
            yield Server(url, process, log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextlib.contextmanager
def serve(artifacts: Path, *, read_only: bool = False, port: int | None = None) -> Iterator[str]:
    """Like :func:`server`; yields only the base URL."""
    with server(artifacts, read_only=read_only, port=port) as running:
        yield running.url


@contextlib.contextmanager
def browser_page(*, width: int = 1440, height: int = 1000):
    """A headless Chromium page (Debian's binary, no sandbox, no background traffic)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(ACTION_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def wait_until_idle(page, *, timeout_ms: int = IDLE_TIMEOUT_MS) -> None:
    """Wait until the app is drawn and its script is no longer running (no status widget)."""
    page.wait_for_selector("[data-testid=stMain] h1", timeout=timeout_ms)
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=timeout_ms)
    page.wait_for_timeout(500)


def open_page(page, url: str, name: str) -> None:
    page.goto(f"{url}/{PAGES[name]}")
    wait_until_idle(page)


def upload_xray(page, xray: Path) -> None:
    page.locator("[data-testid=stMain] input[type=file]").set_input_files(str(xray))
    page.get_by_text("Predicted:").first.wait_for(timeout=IDLE_TIMEOUT_MS)
    wait_until_idle(page)


def screenshot(page, path: Path, *, width: int = 1440, max_height: int = 7000) -> None:
    """The whole page: Streamlit scrolls inside its main block, so the window is made as tall as the content."""
    height = page.evaluate(
        "() => Math.max(...['stMain', 'stSidebarContent'].map("
        "id => document.querySelector(`[data-testid=${id}]`)?.scrollHeight || 0))"
    )
    page.set_viewport_size({"width": width, "height": min(max_height, max(800, int(height) + 40))})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": width, "height": 1000})


def copy_studies(artifacts: Path, target: Path) -> Path:
    """The studies of ``artifacts`` (results and models), its saved external evaluations, its datasets' manifests
    and the served model's choice under ``target``; no images, caches or job store."""
    shutil.copytree(artifacts / "studies", target / "studies")
    if (artifacts / "evaluations").is_dir():
        shutil.copytree(artifacts / "evaluations", target / "evaluations")
    for kept in [*artifacts.glob("datasets/*/manifest.json"), *artifacts.glob("datasets/*/hashes-*.json")]:
        (target / kept.relative_to(artifacts)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(kept, target / kept.relative_to(artifacts))
    if (artifacts / "served.json").is_file():
        shutil.copy(artifacts / "served.json", target / "served.json")
    return target


def queue_demo_job(root: Path, data: Path) -> str:
    """A frozen-protocol MobileNet-0.25 job on ``data`` in ``root``, with its worker started.

    Its own seed makes new folds, so it trains (a study that exists would be read from disk at once).
    """
    from engine.jobs.store import JobRequest, JobStore
    from engine.jobs.worker import ensure_worker

    job = JobStore(root).submit(
        JobRequest.for_study(data, backbones=("MobileNet-0.25",), protocol="frozen", seed=DEMO_SEED)
    )
    ensure_worker(root)
    return job.id


def stop_demo_job(root: Path, job_id: str) -> None:
    from engine.jobs.store import JobStore
    from engine.jobs.worker import worker_alive

    JobStore(root).cancel(job_id)
    deadline = time.monotonic() + 60
    while worker_alive(root) and time.monotonic() < deadline:
        time.sleep(1)


def take(
    artifacts: Path,
    out: Path,
    *,
    xray: Path | None,
    job_data: Path | None,
    read_only: bool,
    pages: list[str] | None = None,
) -> list[Path]:
    saved = []
    with tempfile.TemporaryDirectory() as scratch:
        copy = copy_studies(artifacts, Path(scratch) / "artifacts")
        job_id = queue_demo_job(copy, job_data) if job_data else None
        try:
            with serve(copy, read_only=read_only) as url, browser_page() as page:
                for name in pages or PAGES:
                    open_page(page, url, name)
                    if name == "classify" and xray is not None:
                        upload_xray(page, xray)
                    path = out / f"{name}.png"
                    screenshot(page, path)
                    saved.append(path)
        finally:
            if job_id:
                stop_demo_job(copy, job_id)
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=PROJECT / "artifacts")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--xray", type=Path, default=None, help="a chest X-ray to show on the Classify page")
    parser.add_argument("--job-data", type=Path, default=None, help="a dataset folder to queue a demo job on")
    parser.add_argument("--read-only", action="store_true", help="serve as the hosted read-only demo")
    parser.add_argument("--page", action="append", choices=list(PAGES), help="only these pages (repeatable)")
    args = parser.parse_args()
    sys.path.insert(0, str(PROJECT))
    found = take(
        args.artifacts, args.out, xray=args.xray, job_data=args.job_data, read_only=args.read_only, pages=args.page
    )
    for path in found:
        print(path)


if __name__ == "__main__":
    main()
