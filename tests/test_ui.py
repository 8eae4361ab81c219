"""The Prefect UI of the embedded default, in a real browser (Debian's chromium, driven by
Playwright). Without a browser the test is skipped, except in CI (CI=true), where it fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ServiceFactory
from tests.harness import post_json, wait_until

CHROMIUM = os.environ.get("DROPFLOW_CHROMIUM", "/usr/bin/chromium")
"""The system chromium (`apt-get install chromium`; `.ci/run` installs it)."""

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # runs as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_skip() -> str:
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    reason = None
    if not found:
        reason = f"no chromium at {CHROMIUM} or on PATH (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (make install)"
    if reason is None:
        assert found is not None
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser test: {reason}")
    pytest.skip(reason)


def _recorded(api: str, flow_run_id: str) -> bool:
    """Whether the API has the run's last log line and its task runs' final states (both reach
    the server a moment after the result): the page then shows the run's whole story."""
    logs = post_json(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
    tasks = post_json(f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    ended = any(
        e["task_run_id"] is None and e["message"].startswith("Finished in state ") for e in logs
    )
    final = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
    return ended and bool(tasks) and all(t["state"]["type"] in final for t in tasks)


@pytest.mark.embedded
def test_the_flow_run_page_shows_the_run(embedded_service: ServiceFactory, tmp_path: Path) -> None:
    chromium = _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    # Prefect's INFO console lines on, to see its "View at" link.
    svc = embedded_service(extra_env={"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO"})
    svc.drop("browsed.yaml", "timeout: 5\nsleep: 0.2\nname: seen in the UI\n")
    svc.drop("stopped.yaml", "timeout: 1\nsleep: 30\nname: stopped in the UI\n")
    result = svc.wait_result("browsed.yaml", timeout=60)
    assert result["status"] == "completed"
    url = str(result["flow_run_url"])
    port = svc.config["server_port"]
    assert url == f"http://127.0.0.1:{port}/runs/flow-run/{result['flow_run_id']}"
    assert f"View at {url}" in svc.log()
    stopped = svc.wait_result("stopped.yaml", timeout=60)
    assert stopped["status"] == "canceled"
    api = f"http://127.0.0.1:{port}/api"
    wait_until(lambda: _recorded(api, str(stopped["flow_run_id"])), 30, interval=0.2)

    screenshot = tmp_path / "flow-run.png"
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            # The UI loads its data from the API after the page: wait for what it renders.
            expect(page.get_by_text("seen in the UI").first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Completed").first).to_be_visible(timeout=30_000)
            page.screenshot(path=str(screenshot), full_page=True)
            body = page.inner_text("body")

            # The job stopped at its timeout: Cancelled, its task run too (not a red Failed,
            # Prefect's TimedOut), and its logs (the page's first tab) with no ERROR line and
            # no traceback.
            page.goto(str(stopped["flow_run_url"]))
            expect(page.get_by_text("stopped in the UI").first).to_be_visible(timeout=30_000)
            told = page.get_by_text(f"Finished in state Cancelled('{stopped['message']}')")
            expect(told).to_be_visible(timeout=30_000)
            stopped_logs = page.inner_text("body")
            page.get_by_text("Task Runs", exact=True).click()
            task_run = page.locator(".state-list-item").filter(has_text="sleep-30.0s")
            expect(task_run.locator(".state-badge")).to_have_text("Cancelled", timeout=30_000)
            page.screenshot(path=str(tmp_path / "stopped-run.png"), full_page=True)
        finally:
            browser.close()
    assert "Oops" not in body
    assert screenshot.stat().st_size > 10_000
    assert "ERROR" not in stopped_logs.split(), stopped_logs
    for hidden in ("Traceback", "TimedOut", "TaskRunTimeoutError", "Failed"):
        assert hidden not in stopped_logs, stopped_logs
    print(f"screenshots: {screenshot}, {tmp_path / 'stopped-run.png'}")
    assert svc.stop() == 0
