"""The operator console in a real browser (Debian's chromium, headless, Playwright) reads as staff read:
a tap is a line in words at its JST time, the page says the times are +09:00, the taps chart has its
axes with the hour in JST, and the built-in plugin shows readerd's version. Cost: about 8 s (its own
daemon, ``readerd web`` and chromium: the module-scoped fixtures of conftest.py), one test."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from readerd import __version__
from readerd.testing import RunningDaemon
from readerd.web import WebServer
from tests.web.conftest import TOKEN

pytestmark = [pytest.mark.web, pytest.mark.timeout(60)]

READER = "Sim 00"
WAIT_MS = 10_000
JST = timezone(timedelta(hours=9))


def test_the_console_shows_a_tap_in_words_at_jst(
    page: Any, web: WebServer, daemon: RunningDaemon, screenshots: Path
) -> None:
    page.goto(f"{web.url}/console")
    page.fill("#token", TOKEN)
    page.click("#login button")
    page.wait_for_selector("body[data-state=console] #readers:has-text('Sim 00')", timeout=WAIT_MS)
    assert "+09:00" in page.inner_text("#tz")

    before = datetime.now(UTC)
    assert daemon.tap("alice", reader=READER)["ok"]
    after = datetime.now(UTC)
    try:
        line = page.locator("#recent tr", has=page.locator("td.line", has_text="カード読み取り"))
        line.first.wait_for(timeout=WAIT_MS)
        text = line.first.locator("td.line").inner_text()
        assert text.startswith("カード読み取り (マイナンバーカード")
        assert "{" not in page.inner_text("#recent")  # no raw JSON anywhere in the list
        shown = line.first.locator("td.time").inner_text()
        assert re.fullmatch(r"\d\d:\d\d:\d\d", shown)
        # the wall clock of Tokyo at the tap, not UTC (9 hours apart, so this cannot pass by chance)
        allowed = {(moment.astimezone(JST)).strftime("%H:%M") for moment in (before, after)}
        assert shown[:5] in allowed, (shown, allowed)

        checkin = page.locator("#recent td.line", has_text=re.compile(r"^checkin: .*1 ?/ ?100"))
        checkin.first.wait_for(timeout=WAIT_MS)

        page.wait_for_selector("#taps-chart svg rect.bar", timeout=WAIT_MS)
        assert "(JST)" in page.text_content("#taps-chart svg text.x-title") or ""
        hour = f"{before.astimezone(JST).hour}時"
        ticks = page.locator("#taps-chart svg text.tick").all_text_contents()
        assert hour in ticks or f"{after.astimezone(JST).hour}時" in ticks, ticks
        assert "taps" in page.text_content("#taps-chart svg text.y-title") or ""
        assert "ms" in page.text_content("#latency-chart svg text.y-title") or ""

        row = page.locator("#plugins tr", has=page.locator("td", has_text="checkin"))
        assert row.locator("td").nth(1).inner_text() == __version__
        assert row.locator("td").nth(2).inner_text() == "built-in"
        page.screenshot(path=screenshots / "console-words.png", full_page=True)
    finally:
        daemon.request("remove", {"reader": READER})
