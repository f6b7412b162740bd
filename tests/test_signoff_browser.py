"""A lead signs off in a real browser: the Prefect UI's Resume dialog renders the sign-off form,
and the proof is the one-time code the run sent that lead by Slack DM; a wrong code is refused.

Needs Debian's chromium (/usr/bin/chromium) and Playwright for Python; Playwright drives the
system browser (never `playwright install`). The filled form is kept at
test-artifacts/signoff-form.png.
"""

from __future__ import annotations

import shutil

import pytest

from sandbox import config
from tests.support.signoff import RELEASE, SignoffRun, signoff_environment

pytestmark = pytest.mark.sandbox

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI = config.PREFECT_API_URL.removesuffix("/api")
SCREENSHOT = config.REPO_ROOT / "test-artifacts" / "signoff-form.png"


@pytest.fixture
def browser_page(tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is missing: apt-get install -y --no-install-recommends chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install playwright (it drives the system chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(20_000)
        try:
            yield context.new_page()
        finally:
            context.close()


def choose(page, fieldset, value: str) -> None:
    """Pick ``value`` in one of the UI's select boxes (it opens on the keyboard, not on a synthetic click)."""
    fieldset.locator("button.p-select-button__control").focus()
    page.keyboard.press("Space")
    page.locator(".p-select-option").filter(has_text=value).first.click()


def open_resume_dialog(page, run_id):
    page.goto(f"{UI}/runs/flow-run/{run_id}")
    page.get_by_role("button", name="Resume").click()
    return page.get_by_role("dialog")


def fill_and_submit(page, dialog, role: str, decision: str, proof: str, notes: str, screenshot=None) -> None:
    fields = dialog.locator("fieldset")  # the form's order: role, decision, proof, notes
    choose(page, fields.nth(0), role)
    choose(page, fields.nth(1), decision)
    fields.nth(2).locator("textarea").fill(proof)
    fields.nth(3).locator("textarea").fill(notes)
    if screenshot:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot))
    assert role in fields.nth(0).inner_text() and decision in fields.nth(1).inner_text()
    dialog.get_by_role("button", name="Submit").click()
    page.get_by_text("Flow run resumed").first.wait_for()


@pytest.fixture
def signoff_env(sandbox_up, environment_copy) -> str:
    # Saved before the browser starts: Playwright's event loop would turn Prefect's calls async.
    return signoff_environment(environment_copy)


def test_a_lead_signs_off_in_the_prefect_ui(signoff_env, browser_page):
    page = browser_page
    run = SignoffRun(timeout_s=300, environment=signoff_env).start()
    try:
        first_key = run.wait_paused()
        code = run.code("engineering")  # what Eve reads in her Slack DM
        dialog = open_resume_dialog(page, run.id)
        dialog.get_by_text("Signed 0/4").wait_for()
        shown = dialog.inner_text()
        for expected in (
            RELEASE.version,
            RELEASE.commit,
            "sha256:9c1e9c1e",
            "Missing:",
            "Eve Engineer",
            "smoke: 24/24 checks passed",
            "P95 latency",
            "one-time code",
        ):
            assert expected in shown, f"the form does not show {expected!r}"
        try:
            fill_and_submit(
                page,
                dialog,
                "engineering",
                "approve",
                code,
                "Code reviewed; tests pass (coverage 81 %)",
                screenshot=SCREENSHOT,
            )
        finally:
            page.screenshot(path=str(SCREENSHOT.with_name("signoff-submitted.png")))

        # The run goes on: it records the sign-off and pauses for the next lead.
        second_key = run.wait_paused(after_key=first_key)
        assert [(s.role.value, s.name, s.path) for s in run.ledger().signed] == [("engineering", "Eve Engineer", "ui")]
        dialog = open_resume_dialog(page, run.id)
        dialog.get_by_text("Signed 1/4").wait_for()
        assert "engineering — Eve Engineer" in dialog.inner_text()

        # A second attempt in the browser, with a wrong code: refused, told in Slack, nothing counts.
        fill_and_submit(page, dialog, "devops", "approve", "ZZZZZ-ZZZZZ", "trust me")
        run.wait_paused(after_key=second_key)
        assert [s.role.value for s in run.ledger().signed] == ["engineering"]
        assert "wrong one-time code" in run.wait_for_slack("⛔ Sign-off refused")["text"]
        assert "ZZZZZ" not in str([m.get("text") for m in run.slack()]), "the refusal repeats the offered proof"
        dialog = open_resume_dialog(page, run.id)
        dialog.get_by_text("Signed 1/4").wait_for()
        dialog.get_by_role("button", name="Close").click()

        run.sign("devops")
        run.sign("security")
        run.sign("product", expect_pause=False)
        state = run.result()
        assert state.is_completed(), state.message
        assert "Code reviewed; tests pass (coverage 81 %)" in run.document()
        page.reload()
        page.get_by_text("Completed").first.wait_for()
    finally:
        run.close()
