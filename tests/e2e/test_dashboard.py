"""The dashboard page in headless Chromium (Debian's, driven by Playwright): token login,
overview, breakers, hourly chart, a request's waterfall and event log, and a new event
appearing live without a reload. Saves a screenshot to test-artifacts/."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.readside import ReadSide, make_request, side, visible, wait_for

pytestmark = pytest.mark.integration

__all__ = ["side"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright's sync API (which keeps an event
    loop running in this thread while it is open)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run `make setup`")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def sign_in(page: Page, side: ReadSide, token: str) -> None:
    page.goto(f"{side.url}/monitoring/dashboard")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("sign-in").click()


def test_bad_token_is_refused_with_a_message(side: ReadSide, browser: Browser) -> None:
    page = browser.new_page()
    try:
        sign_in(page, side, "not-a-token")
        expect(page.locator("#login-error")).to_contain_text("not a JWT")
        sign_in(page, side, side.token().rsplit(".", 1)[0] + ".forged")
        expect(page.locator("#login-error")).to_contain_text("Token rejected")
        expect(page.get_by_test_id("overview")).to_be_hidden()
    finally:
        page.close()


def test_dashboard_shows_requests_and_updates_live(
    side: ReadSide, browser: Browser, unique: str, artifacts: Path
) -> None:
    org = f"org-{unique}"
    done = make_request(side.tracker, org, "stu-1", "Photosynthesis and light")
    failed = make_request(side.tracker, org, "stu-2", "Fractions made easy", outcome="failed")
    side.tracker.breaker_state_changed(
        "nano_banana", "closed", "open", fail_counter=5, total_calls=12, total_failures=5
    )
    side.flush()
    wait_for(lambda: visible(side, done, "completed") and visible(side, failed, "failed"))
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        sign_in(page, side, side.token("teacher", "teacher-1", org))
        overview = page.get_by_test_id("overview")
        expect(overview).to_be_visible()
        expect(page.get_by_test_id("count-completed")).to_contain_text("1")
        expect(page.get_by_test_id("count-failed")).to_contain_text("1")
        expect(page.get_by_test_id("breaker-nano_banana")).to_contain_text("open")
        expect(page.get_by_test_id("hourly-chart").locator("rect").first).to_be_attached()
        expect(page.get_by_test_id("connection")).to_have_text("live")

        page.get_by_test_id("status-filter").select_option("all")
        rows = page.get_by_test_id("request-row")
        expect(rows).to_have_count(2)
        page.locator(f"tr[data-id='{done}']").click()
        detail = page.get_by_test_id("detail")
        expect(detail).to_be_visible()
        expect(page.get_by_test_id("detail-status")).to_have_text("completed")
        expect(page.get_by_test_id("waterfall-bar")).to_have_count(6)
        expect(page.get_by_test_id("event-row")).to_have_count(15)
        expect(page.get_by_test_id("video-link")).to_have_attribute("href", "https://cdn/v.mp4")

        # A new request's events arrive over the stream: the feed and the table update
        # without a reload.
        page.evaluate("window.__marker = 'same page'")
        fresh = make_request(side.tracker, org, "stu-3", "Volcanoes erupting", outcome="waiting")
        side.flush()
        feed = page.get_by_test_id("live-feed")
        expect(feed).to_contain_text(fresh[:8], timeout=15_000)
        expect(feed).to_contain_text("Waiting: circuit_open")
        expect(rows).to_have_count(3, timeout=10_000)
        expect(page.locator(f"tr[data-id='{fresh}']")).to_contain_text("circuit_open")
        expect(page.get_by_test_id("count-waiting")).to_contain_text("1")
        assert page.evaluate("window.__marker") == "same page"  # never reloaded

        # The selected request's event log also grows live.
        side.tracker.log_event(done, "teacher_viewed", "Viewed by the teacher", severity="info")
        side.flush()
        expect(page.get_by_test_id("event-row")).to_have_count(16, timeout=10_000)
        shot = artifacts / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        # The page ran whole under its Content Security Policy.
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        page.close()


def test_a_video_url_that_is_not_http_is_shown_as_no_link(
    side: ReadSide, browser: Browser, unique: str
) -> None:
    org = f"org-{unique}"
    rid, _ = side.tracker.create_request(
        "stu-x", "Tides and the moon", "two tides", "7", 3, organization_id=org
    )
    side.tracker.start_request(rid)
    side.tracker.complete_request(rid, "javascript:alert(document.domain)", "s", "")
    side.flush()
    wait_for(lambda: visible(side, rid, "completed"), what="fold")
    page = browser.new_page()
    try:
        sign_in(page, side, side.token("teacher", "t", org))
        page.get_by_test_id("status-filter").select_option("all")
        page.locator(f"tr[data-id='{rid}']").click()
        expect(page.get_by_test_id("detail-status")).to_have_text("completed")
        expect(page.get_by_test_id("video-link")).to_have_count(0)
        assert page.locator("a[href^='javascript']").count() == 0
    finally:
        page.close()


def test_a_bulk_retry_from_the_dashboard_confirms_the_count_and_a_sample_first(
    side: ReadSide, browser: Browser, unique: str, artifacts: Path
) -> None:
    """Filter to the failed requests, "Retry matching…": a confirmation with the count and
    a sample (screenshot), then Confirm retries exactly those; a student sees no button."""
    org = f"org-{unique}"
    failed = {
        make_request(side.tracker, org, f"stu-{i}", f"Topic number {i}", outcome="failed")
        for i in range(4)
    }
    done = make_request(side.tracker, org, "stu-ok", "Finished fine")
    side.flush()
    for rid in failed:
        wait_for(lambda rid=rid: visible(side, rid, "failed"), what="failed")  # type: ignore[misc]
    wait_for(lambda: visible(side, done, "completed"), what="completed")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        sign_in(page, side, side.token("teacher", "teacher-1", org))
        page.get_by_test_id("status-filter").select_option("failed")
        page.get_by_test_id("failed-at-filter").select_option("script_generation")
        page.get_by_test_id("since-filter").select_option("3600")
        page.get_by_test_id("filter").click()
        expect(page.get_by_test_id("request-row")).to_have_count(4)
        # Why each failed: its error, not its stage again (the stage has its own column).
        expect(page.get_by_test_id("why")).to_have_text(["gemini 503"] * 4)
        page.get_by_test_id("bulk-retry").click()
        confirm = page.get_by_test_id("bulk-confirm")
        expect(confirm).to_be_visible()
        expect(page.get_by_test_id("bulk-count")).to_contain_text("Retry 4 request(s)?")
        expect(page.get_by_test_id("bulk-sample-row")).to_have_count(4)
        page.get_by_test_id("bulk-reason").fill("after the Gemini outage")
        shot = artifacts / "dashboard-bulk-retry.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        page.get_by_test_id("bulk-go").click()
        expect(page.get_by_test_id("bulk-result")).to_contain_text("Retried 4 request(s)")
        expect(confirm).to_be_hidden()
        for rid in failed:
            d = wait_for(lambda rid=rid: visible(side, rid, "queued"), what="queued")  # type: ignore[misc]
            assert d["retry_count"] == 1
        assert visible(side, done, "completed")
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        page.close()
    student = browser.new_page()
    try:
        sign_in(student, side, side.token("student", "stu-1", org))
        expect(student.get_by_test_id("overview")).to_be_visible()
        expect(student.get_by_test_id("bulk-retry")).to_be_hidden()
    finally:
        student.close()
