"""The dashboard in a real browser: `streamlit run app.py` against the demo workspace, driven by
Debian's Chromium through Playwright. Screenshots go to test-artifacts/.

Fixtures: `app_server` (module-scoped; yields the base URL) and `browser_page` (a fresh page per
test), so further page checks are one function each.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlparse

import pytest

from engine.dashboard import review
from engine.stats import core as stats
from engine.runs.predictions import read_predictions

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
ATTENTION, MLP = "Attention-Only (demo)", "Attention+MLP (demo)"
STARTUP_S = 60
RENDER_MS = 90_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit did not answer /_stcore/health within {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def app_server(demo_workspace, tmp_path_factory):
    """`streamlit run app.py` on a free loopback port; yields its base URL, stops it afterwards."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (install Debian's chromium package to run browser tests)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = dict(os.environ, QLORA_DASH_RUNS=str(demo_workspace))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(base, proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(app_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser_page(browser):
    """A fresh tab, tall enough that a whole page renders without scrolling."""
    page = browser.new_page(viewport={"width": 1400, "height": 3200})
    try:
        yield page
    finally:
        page.close()


def test_compare_two_configurations_in_the_browser(app_server, browser_page, demo_workspace):
    page = browser_page
    # A deep link on a freshly started server: the URL alone must select the configurations.
    page.goto(f"{app_server}/compare?" + urlencode([("configs", ATTENTION), ("configs", MLP)]))
    page.get_by_text("Paired test (McNemar)").wait_for(timeout=RENDER_MS)
    # ... and the page runs inside app.py's navigation, not as a classic pages/ script ("opro", "try clip")
    navigation = page.get_by_test_id("stSidebarNav")
    navigation.get_by_text("Prompt optimisation").wait_for(timeout=RENDER_MS)
    assert "Try a clip" in navigation.inner_text()

    records = {run: read_predictions(demo_workspace / run, "test")
               for run in ("demo-attention-s42", "demo-attention-mlp-s42")}
    summary = stats.evaluation_summary(records["demo-attention-mlp-s42"])
    table = page.get_by_test_id("stTable").first
    table.get_by_text(f"{MLP} · seed 42").wait_for(timeout=RENDER_MS)
    assert review.format_accuracy(summary["correct"], summary["n"], summary["ci"]) in table.inner_text()

    result = stats.mcnemar(records["demo-attention-s42"], records["demo-attention-mlp-s42"])
    p_text = f"seed 42: {result['method']}, p = {review.format_p(result['p_value'])}"
    page.get_by_text(p_text).wait_for(timeout=RENDER_MS)

    page.get_by_test_id("stPlotlyChart").first.wait_for(timeout=RENDER_MS)
    page.wait_for_timeout(1500)  # let the charts finish drawing before the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
    assert (ARTIFACTS / "compare.png").stat().st_size > 10_000


def test_try_a_clip_upload_scores(app_server, browser_page, demo_workspace, tmp_path):
    """Upload a wav, pick a demo adapter, Score: the clip worker starts, loads the tiny model once
    and the p(SPEECH) table appears. Workers this test started are shut down afterwards."""
    import re

    import numpy as np

    from engine.ops import clip_worker
    from engine.data.synth import write_wav

    seconds = np.arange(16000) / 16000
    clip = write_wav(tmp_path / "probe-tone.wav", 0.3 * np.sin(2 * np.pi * 220 * seconds))
    already_running = {worker.pid for worker in clip_worker.live_workers(demo_workspace)}
    page = browser_page
    try:
        page.goto(f"{app_server}/try_clip")
        upload = page.locator('input[type="file"]')
        upload.wait_for(state="attached", timeout=RENDER_MS)
        upload.set_input_files(str(clip))
        page.get_by_text("probe-tone.wav").first.wait_for(timeout=RENDER_MS)
        chooser = page.get_by_test_id("stMultiSelect").first
        if not chooser.get_by_text("demo-attention-s42", exact=True).count():
            chooser.locator("input").click()
            page.get_by_role("option", name="demo-attention-s42", exact=True).click()
            page.keyboard.press("Escape")
        chooser.get_by_text("demo-attention-s42", exact=True).wait_for(timeout=RENDER_MS)
        page.get_by_role("button", name="Score", exact=True).click()
        table = page.get_by_test_id("stTable").first  # the clips x adapters matrix
        table.get_by_text("seed 42").wait_for(timeout=90_000)  # the worker loads the model first
        text = table.inner_text()
        assert "probe-tone.wav" in text and "SPEECH" in text
        # each cell is p(SPEECH) as 0.ddd and the predicted label
        assert re.search(r"(?<![-+\d.])[01]\.\d{3} (NON)?SPEECH", text), text
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "try_clip.png"), full_page=True)
        assert (ARTIFACTS / "try_clip.png").stat().st_size > 10_000
    finally:
        for worker in clip_worker.live_workers(demo_workspace):
            if worker.pid not in already_running:
                worker.shutdown()


def test_prompt_optimisation_page_in_the_browser(app_server, browser_page):
    """Reached from the sidebar (so app.py registers it): the page renders its form and either the
    demo's OPRO searches or how to start one."""
    page = browser_page
    page.goto(app_server)
    page.get_by_test_id("stSidebarNav").get_by_text("Prompt optimisation").click()
    page.get_by_role("heading", name="Prompt optimisation").wait_for(timeout=RENDER_MS)
    assert urlparse(page.url).path.rstrip("/").endswith("/opro")
    page.get_by_role("heading", name="Search results").wait_for(timeout=RENDER_MS)
    # the optimisation curve of the demo's searches, or (without any) how to start one
    curve_or_hint = page.get_by_test_id("stPlotlyChart").or_(page.get_by_text("No prompt-optimisation runs in"))
    curve_or_hint.first.wait_for(timeout=RENDER_MS)
    page.wait_for_timeout(1500)  # let the widgets (and any chart) finish drawing before the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "opro.png"), full_page=True)
    assert (ARTIFACTS / "opro.png").stat().st_size > 10_000
