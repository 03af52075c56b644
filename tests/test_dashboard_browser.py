"""End-to-end run of `drf-batch dashboard` in headless Chromium, driven by Playwright.

Set DRF_BATCH_UPDATE_SCREENSHOT=1 to also write the screenshots to docs/ for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from dashboard_support import REPO_ROOT

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("DRF_BATCH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SERVER_START_TIMEOUT_S = 90.0
UPDATE_SCREENSHOT_ENV = "DRF_BATCH_UPDATE_SCREENSHOT"
SAMPLE_IMAGES = REPO_ROOT / "sample_data" / "images"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the dashboard server exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"the dashboard at {url} did not become healthy within {timeout_s:.0f} s")


def stop_process_group(server: subprocess.Popen) -> None:
    """Send SIGTERM to the server's process group, then SIGKILL if it is still running after 20 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture
def dashboard_url(scored_db: Path, tmp_path: Path) -> Iterator[str]:
    """Start `drf-batch dashboard` on the scored demo database at 127.0.0.1 and a free port."""
    port = free_port()
    command = [
        sys.executable, "-c", "from drf_batch.cli import app; app()",
        "dashboard", "--db", str(scored_db), "--image-root", str(SAMPLE_IMAGES),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        # A session of its own lets the cleanup stop every process the command started.
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, SERVER_START_TIMEOUT_S)
        yield url
    finally:
        stop_process_group(server)


def flagged_filter(db_path: Path) -> tuple[str, str, int]:
    """Choose a state filter whose posts include a flagged post with an image.

    Returns the modality, the state and how many posts have that state. An image flagged as
    low_quality is preferred, then an image post whose text is flagged.
    """
    with duckdb.connect(str(db_path), read_only=True) as connection:
        row = connection.execute(
            """
            SELECT modality, state
            FROM (
                SELECT CASE WHEN image_state = 'low_quality' THEN 'image' ELSE 'text' END AS modality,
                       CASE WHEN image_state = 'low_quality' THEN image_state ELSE text_state END AS state
                FROM scores
                WHERE image_path IS NOT NULL AND image_state IN ('ok', 'low_quality')
                  AND (image_state = 'low_quality' OR text_state <> 'ok')
            )
            GROUP BY modality, state
            ORDER BY modality = 'image' DESC, count(*) DESC
            LIMIT 1
            """
        ).fetchone()
        assert row is not None, "the demo database has no flagged post with an image"
        modality, state = row
        posts = connection.execute(f"SELECT count(*) FROM scores WHERE {modality}_state = ?", [state]).fetchone()[0]
    return modality, state, posts


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get(UPDATE_SCREENSHOT_ENV) == "1":
        shutil.copy(path, REPO_ROOT / "docs" / name)
    return path


def test_dashboard_in_chromium(scored_db, dashboard_url, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}; install Debian's chromium package or set DRF_BATCH_CHROMIUM")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the [test] extra")
    with duckdb.connect(str(scored_db), read_only=True) as connection:
        scored = connection.execute("SELECT count(*) FROM scores").fetchone()[0]
    modality, state, flagged_posts = flagged_filter(scored_db)
    badge = f"{modality}: {state.replace('_', ' ')}"

    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1100},
        )
        try:
            page = context.new_page()
            page.goto(dashboard_url)

            posts_scored = page.locator('[data-testid="stMetric"]').filter(has_text="Posts scored")
            posts_scored.wait_for(timeout=60_000)
            assert f"{scored:,}" in posts_scored.inner_text()
            assert page.locator('[data-testid="stMetric"]').filter(has_text="Rows rejected").count() == 1
            assert page.locator('[data-testid="stMetric"]').filter(has_text="Image low quality").count() == 1
            page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=30_000)
            save_screenshot(page, tmp_path, "dashboard.png")

            page.locator('[data-testid="stSidebar"]').get_by_text("Post explorer", exact=True).click()
            page.get_by_text(re.compile(r"posts match")).wait_for(timeout=30_000)

            state_filter = page.locator('[data-testid="stMultiSelect"]').filter(has_text=f"{modality.capitalize()} state")
            state_filter.locator("input").click()
            state_filter.locator("input").fill(state)
            state_filter.locator("input").press("Enter")
            page.keyboard.press("Escape")
            page.get_by_text(f"{flagged_posts:,} posts match").wait_for(timeout=30_000)

            card = (
                page.locator('[data-testid="stVerticalBlock"]')
                .filter(has_text=badge)
                .filter(has=page.locator('[data-testid="stImage"] img'))
                .last
            )
            card.wait_for(timeout=30_000)
            thumbnail = card.locator('[data-testid="stImage"] img').first
            page.wait_for_function("(image) => image.complete && image.naturalWidth > 0", arg=thumbnail.element_handle())
            assert thumbnail.evaluate("(image) => image.naturalWidth") > 0
            screenshot = save_screenshot(page, tmp_path, "dashboard-explorer.png")
        finally:
            context.close()

    assert screenshot.stat().st_size > 10_000
