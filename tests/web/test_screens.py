"""The kiosk screen and the console in a real browser: Debian's chromium, headless, driven by Playwright,
against ``readerd web`` following a daemon on the sim backend. Assertions wait explicitly (10 s at
most); nothing sleeps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from readerd import events as ev
from readerd.testing import RunningDaemon
from readerd.web import WebServer
from readerd.web.launch import kiosk_url, read_secret, write_launch_page
from tests.web.conftest import TOKEN

pytestmark = [pytest.mark.web, pytest.mark.timeout(60)]

READER = "Sim 00"
WAIT_MS = 10_000


@pytest.fixture
def card_off(daemon: RunningDaemon) -> Iterator[None]:
    """Each test starts and ends with an empty reader."""
    yield
    daemon.request("remove", {"reader": READER})


def open_kiosk(page: Any, web: WebServer, lang: str = "ja") -> None:
    """As on a kiosk: the launcher reads the per-boot secret and writes its launch page (in the session's
    runtime directory, here the test's), which hands the secret to the kiosk page in the URL's fragment."""
    secret_file = Path(web.settings.kiosk_secret_file)
    url = kiosk_url(web.url, READER, read_secret([secret_file]), lang=lang, hold="30")
    page.goto(write_launch_page(url, secret_file.parent.parent / "readerd-kiosk", READER).as_uri())
    # the stream is open once the app said hello: a tap from now on reaches this page
    page.wait_for_selector("body[data-connected=yes]", timeout=WAIT_MS)
    assert "secret" not in page.url  # out of the address at once


def test_a_tap_shows_the_check_in_result(page, web, daemon, card_off, screenshots: Path) -> None:
    open_kiosk(page, web)
    page.wait_for_selector("#title:text('カードをかざしてください')", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-idle.png")
    started = time.monotonic()
    daemon.tap("alice", reader=READER)
    page.wait_for_selector("body[data-state=result] #title:text('受付しました')", timeout=WAIT_MS)
    elapsed = time.monotonic() - started
    page.screenshot(path=screenshots / "kiosk-checkin-accepted.png")
    assert page.inner_text("#title") == "受付しました 1/100"  # the plugin's own words (data.screen)
    body = page.inner_text("body")
    assert "member" not in body
    assert elapsed < 10

    daemon.request("remove", {"reader": READER})
    daemon.tap("alice", reader=READER)
    page.wait_for_selector("#title:text('受付済みです')", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-checkin-again.png")


def test_english_and_a_pulled_card_in_plain_words(page, web, daemon, card_off, screenshots: Path) -> None:
    open_kiosk(page, web, lang="en")
    page.wait_for_selector("#title:text('Please touch your card')", timeout=WAIT_MS)
    daemon.tap("bob", reader=READER, faults=[{"action": "remove", "after_apdus": 1}])
    page.wait_for_selector("body[data-state=error]", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-read-aborted-en.png")
    assert page.inner_text("#title") == "Please leave the card on the reader"


def test_a_lost_card_event_asks_for_another_touch(page, web, daemon, card_off, screenshots: Path) -> None:
    """The daemon's bus lost a card event of this reader (a wedged bus: tests/bus/test_card_lane.py
    makes that happen for real) and says so with ``card.events_lost``: the screen asks for another tap.
    Cost: about 1 s."""
    open_kiosk(page, web)
    page.wait_for_selector("#title:text('カードをかざしてください')", timeout=WAIT_MS)
    bus = daemon.daemon.bus
    assert bus is not None
    assert bus.publish(ev.card_events_lost(READER, 1))
    page.wait_for_selector(
        "body[data-state=error] #title:text('もう一度タッチしてください')", timeout=WAIT_MS
    )
    page.screenshot(path=screenshots / "kiosk-events-lost.png")
    assert page.inner_text("#detail") == "読み取った結果をお伝えできませんでした"


def press(page: Any, digits: str) -> None:
    for digit in digits:
        page.click(f"#key-{digit}")


def test_pin_on_the_keypad_ends_in_card_authenticated(page, web, daemon, card_off, screenshots: Path) -> None:
    open_kiosk(page, web)
    daemon.tap("carol", reader=READER, pin="4321")
    page.click("#pin-start", timeout=WAIT_MS)
    page.wait_for_selector("body[data-state=pin] #pin-tries:text('残り 3 回')", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-pin.png")
    press(page, "1111")
    page.click("#key-ok")
    page.wait_for_selector("#title:text('暗証番号が違います（残り 2 回）')", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-pin-wrong.png")
    press(page, "4321")
    page.click("#key-ok")
    done = "body[data-state=authenticated] #title:text('本人確認ができました')"
    page.wait_for_selector(done, timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-authenticated.png")


def test_last_try_is_warned_and_asked_for(page, web, daemon, card_off, screenshots: Path) -> None:
    """The confirm key under the warning sends the app's one-time confirmation: the last try is used."""
    open_kiosk(page, web)
    daemon.tap("dave", reader=READER, tries=1, pin="4321")
    page.click("#pin-start", timeout=WAIT_MS)
    page.wait_for_selector("#pin-lastwarn:visible", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-pin-last-try.png")
    assert "残り 1 回" in page.inner_text("#pin-tries")
    assert "ロック" in page.inner_text("#pin-lastwarn")
    assert page.inner_text("#key-ok") == "最後の1回を使う"
    press(page, "4321")
    page.click("#key-ok")
    page.wait_for_selector("body[data-state=authenticated]", timeout=WAIT_MS)


def test_a_page_without_the_secret_is_refused(page, web, screenshots: Path) -> None:
    """Opened without the launcher (no secret in the fragment): no events, no keypad, a plain refusal.
    Cost: about 0.5 s."""
    page.goto(f"{web.url}/kiosk?reader={READER.replace(' ', '%20')}#secret=not-this-boots")
    page.wait_for_selector("body[data-connected=refused][data-state=refused]", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-refused.png")
    assert page.inner_text("#title") == "この画面は使えません"


def test_console_refuses_a_wrong_token_and_shows_a_tap(page, web, daemon, card_off, screenshots) -> None:
    page.goto(f"{web.url}/console")
    page.fill("#token", "wrong")
    page.click("#login button")
    page.wait_for_selector("#login-error:text('トークンが違います')", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "console-refused.png")
    assert page.is_hidden("#main")

    page.fill("#token", TOKEN)
    page.click("#login button")
    page.wait_for_selector("body[data-state=console] #readers:has-text('Sim 00')", timeout=WAIT_MS)
    daemon.tap("erin", reader=READER)
    page.wait_for_selector("#recent:has-text('card.identified')", timeout=WAIT_MS)
    page.wait_for_selector("#taps-chart svg rect", timeout=WAIT_MS)
    page.wait_for_selector("#plugins:has-text('checkin')", timeout=WAIT_MS)
    page.wait_for_selector("#fleet td.ok:has-text('healthy')", timeout=WAIT_MS)
    assert "hall-2 (test-kiosk)" in page.inner_text("#fleet")
    page.wait_for_selector("#fleet td.bad:has-text('unreachable')", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "console.png", full_page=True)


def test_console_shows_a_wedged_reader(page, web, daemon, screenshots) -> None:
    """A card that stops answering past ``sessions.deadline`` (3 s here) wedges its reader: the daemon
    publishes ``reader.error(wedged)`` and the console marks that reader until it recovers."""
    page.goto(f"{web.url}/console")
    page.fill("#token", TOKEN)
    page.click("#login button")
    page.wait_for_selector("#readers:has-text('Sim 01')", timeout=WAIT_MS)
    daemon.tap("frank", reader="Sim 01", faults=[{"action": "stall", "after_apdus": 1, "seconds": 4}])
    try:
        page.wait_for_selector("#readers td.bad:has-text('error: wedged')", timeout=WAIT_MS)
        page.screenshot(path=screenshots / "console-reader-wedged.png", full_page=True)
    finally:
        daemon.request("remove", {"reader": "Sim 01"})


def test_console_shows_a_reader_going_away(page, web, daemon, screenshots) -> None:
    """A reader unplugged (the sim backend's ``unplug``: ``reader.removed`` as pcsc/nfc report it) stays on
    the console, marked removed, until it is back."""
    page.goto(f"{web.url}/console")
    page.fill("#token", TOKEN)
    page.click("#login button")
    page.wait_for_selector("#readers:has-text('Sim 01')", timeout=WAIT_MS)
    assert daemon.request("unplug", {"reader": "Sim 01"})["ok"]
    try:
        page.wait_for_selector("#readers tr:has-text('Sim 01') td.bad:has-text('removed')", timeout=WAIT_MS)
        page.screenshot(path=screenshots / "console-reader-removed.png", full_page=True)
    finally:
        assert daemon.request("plug", {"reader": "Sim 01"})["ok"]
    page.wait_for_selector("#readers tr:has-text('Sim 01') td.ok", timeout=WAIT_MS)
