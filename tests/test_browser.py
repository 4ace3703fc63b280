"""The explorer in a real browser: every page, a tiny job run by a real worker, and a prediction.

Serves ``streamlit run streamlit_app.py`` on a free localhost port against a copy of the tiny
study, and drives Debian's headless Chromium with playwright (helpers shared with
``docs/screenshots/take.py``). Skipped when /usr/bin/chromium or playwright is missing.

A browser test, so allowed over 90 s (57 to 113 s on the 2-core machine in CONTRIBUTING.md's runs): a server,
a worker and a browser start once and every page is opened in the same session; split, each part would start all
three again. The other Chromium files, ``test_load.py`` and ``test_benchmarks_app.py``, say why they are long.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path

import pytest

from engine.jobs.store import JobStore
from engine.jobs.worker import worker_alive
from tests import app_fixtures
from tests.app_fixtures import TinyStudy
from tests.conftest import SHARED

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
JOB_TIMEOUT_S = 300
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's Chromium: apt-get install chromium"),
]
tiny_study = app_fixtures.tiny_study
playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")


def load_take():
    spec = importlib.util.spec_from_file_location("take_screenshots", PROJECT / "docs" / "screenshots" / "take.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def xray_file(tiny: TinyStudy) -> Path:
    """A real chest X-ray when the shared data is there, else one of the synthetic images."""
    real = sorted((SHARED / "data" / "covid19-radiography-paper" / "COVID-19").glob("*.png"))
    return real[0] if real else sorted(tiny.data.rglob("*.png"))[0]


def no_exception(page, where: str) -> None:
    assert page.locator("[data-testid=stException]").count() == 0, f"exception shown on {where}"


def submit_tiny_job(page, data: Path) -> None:
    sidebar = page.locator("[data-testid=stSidebar]")
    sidebar.get_by_role("textbox", name="Dataset folders on the server (one sub-folder per class), one per line").fill(
        str(data)
    )
    for label, value in (("Folds", "2"), ("Input size (px)", "32"), ("Batch size", "8")):
        sidebar.get_by_label(label, exact=True).fill(value)
    # The form opens on the recommended protocol, a logistic-regression head with no epochs to set.
    assert sidebar.get_by_label("Epochs", exact=True).count() == 0
    playwright.expect(sidebar.get_by_text("No epochs: the head is a logistic regression")).to_be_visible()
    weights = sidebar.locator("[data-testid=stSelectbox]").filter(has_text="Weights")
    weights.locator("input").click()
    page.keyboard.type("none")
    page.keyboard.press("Enter")
    playwright.expect(weights.get_by_role("combobox")).to_have_value("none")
    sidebar.get_by_role("button", name="Queue the job").click()
    sidebar.get_by_text(re.compile(r"Job .* queued")).wait_for(timeout=60_000)


def wait_for_job(page, root: Path) -> str:
    """Follow the job on the Jobs page until the worker finished it; returns the last progress text."""
    (job,) = JobStore(root).list_jobs()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    seen = ""
    while time.monotonic() < deadline:
        bars = page.locator("[data-testid=stProgress]")
        if bars.count():
            seen = bars.first.inner_text()
        if JobStore(root).get(job.id).state not in ("queued", "running"):
            break
        page.wait_for_timeout(2000)
    page.wait_for_timeout(3000)
    return seen


def stop_jobs(root: Path) -> None:
    store = JobStore(root)
    for job in store.list_jobs():
        if job.state in ("queued", "running"):
            store.cancel(job.id)
    deadline = time.monotonic() + 60
    while worker_alive(root) and time.monotonic() < deadline:
        time.sleep(1)


def test_pages_job_and_prediction_in_chromium(tiny_study: TinyStudy, tmp_path: Path) -> None:
    take = load_take()
    root = take.copy_studies(tiny_study.root, tmp_path / "artifacts")
    try:
        with take.serve(root) as url, take.browser_page() as page:
            for name in take.PAGES:
                take.open_page(page, url, name)
                no_exception(page, name)
                assert "not a diagnostic device" in page.locator("[data-testid=stSidebar]").inner_text()

            take.open_page(page, url, "home")
            submit_tiny_job(page, tiny_study.data)
            page.locator("[data-testid=stSidebar]").get_by_text("Follow it on the Jobs page").click()
            page.get_by_role("heading", name="Training jobs").wait_for()
            progress = wait_for_job(page, root)
            (job,) = JobStore(root).list_jobs()
            assert job.state == "done", JobStore(root).log(job.id)
            assert job.executor
            assert re.search(r"task \d/2", progress), progress
            assert page.get_by_text(re.compile(rf"done\W+job {job.id}")).count() == 1
            no_exception(page, "jobs")

            take.open_page(page, url, "classify")
            take.upload_xray(page, xray_file(tiny_study))
            no_exception(page, "classify")
            assert page.locator(".js-plotly-plot").filter(has_text="Grad-CAM").count() == 1
            assert page.locator(".js-plotly-plot").filter(has_text="probability").count() == 1
            assert page.get_by_role("button", name="Download results (CSV)").count() == 1
    finally:
        stop_jobs(root)
