"""The hosted demo under load: ten browser sessions at once classifying uploads, two rounds.

One read-only ``streamlit run`` (loopback only) serves a copy of the committed demo study; ten
headless Chromium pages open the Classify page together and each uploads a chest X-ray. Every
session must get its prediction with no exception shown, the server must load the model once
(its log says each load) and its resident memory must stay flat from one round to the next.
The sessions open ``/classify`` directly on a fresh server, so they also check that a deep link goes
through the router (``pages.common.require_router``).

A browser test, so allowed over 90 s (49 to 111 s on the 2-core machine in CONTRIBUTING.md's runs): ten Chromium
pages and the server share the two cores, twice, and the test is about that many sessions at once and the
server's memory from one round to the next.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from engine import settings
from tests.conftest import SHARED
from tests.test_browser import CHROMIUM, load_take

SESSIONS = 10
ROUNDS = 2
ROUND_TIMEOUT_MS = 240_000
FLAT_MB = 150
DEMO = settings.PROJECT_ROOT / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's Chromium: apt-get install chromium"),
    pytest.mark.skipif(not (DEMO / "studies").is_dir(), reason="the committed demo study is missing"),
]
pytest.importorskip("playwright.async_api", reason="needs the playwright package")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def uploads(tmp_path: Path) -> list[Path]:
    """Distinct X-rays (real ones when the shared data is there), so no session reuses another's result."""
    real = sorted((SHARED / "data" / "covid19-radiography-paper" / "Normal").glob("*.png"))[:SESSIONS]
    if len(real) == SESSIONS:
        return real
    from tests.synthetic import make_dataset

    made = make_dataset(tmp_path / "uploads", n_per_class=4, size=224)
    return sorted(made.rglob("*.png"))[:SESSIONS]


async def one_session(browser, take, url: str, xray: Path) -> str:
    """Open Classify, upload ``xray``, wait for the prediction; returns the predicted line."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        page.set_default_timeout(ROUND_TIMEOUT_MS)
        await page.goto(f"{url}/{take.PAGES['classify']}")
        await page.wait_for_selector("[data-testid=stMain] h1")
        await page.wait_for_selector("[data-testid=stStatusWidget]", state="detached")
        await page.locator("[data-testid=stMain] input[type=file]").set_input_files(str(xray))
        predicted = page.get_by_text("Predicted:").first
        await predicted.wait_for()
        await page.wait_for_selector("[data-testid=stStatusWidget]", state="detached")
        assert await page.locator("[data-testid=stException]").count() == 0, f"exception shown for {xray.name}"
        sidebar = await page.locator("[data-testid=stSidebar]").inner_text()
        assert "Read-only demo" in sidebar, "the deep link ran its page without the router"
        return await predicted.inner_text()
    finally:
        await context.close()


async def rounds(url: str, take, files: list[Path], pid: int) -> list[tuple[list[str], float]]:
    from playwright.async_api import async_playwright

    done = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=take.CHROMIUM_ARGS)
        try:
            for _ in range(ROUNDS):
                answers = await asyncio.gather(*(one_session(browser, take, url, f) for f in files))
                done.append((answers, rss_mb(pid)))
        finally:
            await browser.close()
    return done


def test_ten_sessions_classify_at_once_with_one_model_load_and_flat_memory(tmp_path: Path) -> None:
    take = load_take()
    root = take.copy_studies(DEMO, tmp_path / "artifacts")
    files = uploads(tmp_path)
    with take.server(root, read_only=True) as running:
        results = asyncio.run(rounds(running.url, take, files, running.process.pid))
        log = running.log.read_text()
    for answers, _ in results:
        assert len(answers) == SESSIONS and all("Predicted:" in a for a in answers), answers
    loads = re.findall(r"^.*engine\.models\.(?:inference|runtime): loaded (?:exported )?model (\S+)", log, re.MULTILINE)
    # one load of each file the served model needs (an ensemble of backbones: each member's export once)
    assert loads and len(loads) == len(set(loads)), "a model file was loaded more than once:\n" + "\n".join(loads)
    print("server RSS after each round (MB):", [round(rss) for _, rss in results])
    first, last = results[0][1], results[-1][1]
    assert last - first < FLAT_MB, f"server memory grew from {first:.0f} MB to {last:.0f} MB over {ROUNDS} rounds"
    assert "Traceback" not in log, log[-3000:]
