"""The composed kiosk screen in a real browser: the four built-ins on one reader, each result's words
from its plugin's declaration (``data.screen``), shown together at ``plugin.handled``, the one that
matters most first; ``[plugins.routing]`` keeps the bath house off ``Sim 01``; a page for a reader the
daemon does not have says so. Debian's chromium, headless, driven by Playwright (tests/web/conftest.py).

Cost: about 10 s (a daemon with four plugins, ``readerd web``, chromium; a tap with its enrolment about
1 s). Assertions wait explicitly (10 s at most); nothing sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from readerd.config import PluginsConfig
from readerd.testing import RunningDaemon, running_daemon, sim_config
from readerd.web import WebServer, WebSettings

pytestmark = [pytest.mark.web, pytest.mark.timeout(90)]

WAIT_MS = 10_000
ALL_FOUR = "Sim 00"
NO_BATH = "Sim 01"  # routed: checkin, points and library only
BATH_WORDS = ("おたっしゃ", "bath-house")  # bathhouse's unknown_card in either language


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    sections: dict[str, dict[str, object]] = {
        "checkin": {"event": "fest"},
        "points": {"earn_programme": "ward"},
        "bathhouse": {"bath_house": "matsu-no-yu"},
        "library": {"library_id": "chuo"},
    }
    plugins = PluginsConfig(
        autoload=False,
        builtins=("checkin", "points", "library", "bathhouse"),
        sections=sections,
        routing={NO_BATH: ["checkin", "points", "library"]},
    )
    with running_daemon(sim_config(tmp_path_factory.mktemp("daemon"), plugins=plugins)) as d:
        now = datetime.now(UTC)
        event = {
            "event_id": "fest",
            "name": "区民まつり",
            "place": "区役所前広場",
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(),
            "capacity": 100,
            "points": 50,
            "idempotency_key": "e1",
        }
        programme = {
            "programme_id": "ward",
            "name": "区民ポイント",
            "last_earning_day": "2099-12-31",
            "last_ticket_day": "2099-12-31",
            "last_use_day": "2099-12-31",
            "idempotency_key": "p1",
        }
        for cmd, args in (("checkin.define_event", event), ("points.define_programme", programme)):
            reply = d.request(cmd, args)
            assert reply["ok"], reply
        yield d


@pytest.fixture(scope="module")
def web(daemon: RunningDaemon) -> Iterator[WebServer]:
    with WebServer(WebSettings(publish=daemon.publish, control=daemon.control)) as server:
        yield server


def enrol(daemon: RunningDaemon, card: str, reader: str) -> None:
    """The card enrolled (MyKey) with its PIN, then taken off: its next tap is an enrolled citizen's."""
    with daemon.subscriber("card.") as sub:
        daemon.tap(card, reader=reader)
        sub.until(lambda e: e["type"] == "card.identified" and e["reader"] == reader)
    with daemon.session() as ui:
        begun = ui.request("auth.begin", {"reader": reader})
        assert begun["ok"], begun
        proved = ui.request("auth.pin", {"auth_id": begun["result"]["auth_id"], "pin": "1234"})
        assert proved["ok"], proved
        enrolled = ui.request("mykey.enroll", {"auth_id": proved["result"]["auth_id"]})
        assert enrolled["ok"], enrolled
    daemon.remove(reader)


def open_kiosk(page: Any, web: WebServer, reader: str, lang: str = "ja") -> None:
    page.goto(f"{web.url}/kiosk?reader={quote(reader)}&lang={lang}&hold=30#secret={web.kiosk_secret}")
    page.wait_for_selector("body[data-connected=yes]", timeout=WAIT_MS)


def composed(page: Any) -> tuple[str, list[str]]:
    """The screen's first line and the lines beneath it, once a tap's results are shown."""
    page.wait_for_selector("body[data-state=result]", timeout=WAIT_MS)
    return page.inner_text("#title"), [li.inner_text() for li in page.query_selector_all("#others li")]


def test_an_enrolled_citizen_sees_the_check_in_and_the_points(page, web, daemon, screenshots: Path) -> None:
    enrol(daemon, "alice", ALL_FOUR)
    open_kiosk(page, web, ALL_FOUR)
    daemon.tap("alice", reader=ALL_FOUR)
    try:
        title, others = composed(page)
        page.screenshot(path=screenshots / "kiosk-composed-ja.png")
    finally:
        daemon.remove(ALL_FOUR)
    assert title.startswith("受付しました ")
    assert title.endswith("/100")
    assert page.get_attribute("body", "data-level") == "success"
    assert page.get_attribute("#title", "data-plugin") == "checkin"
    assert "ポイント +50（残高 50）" in others
    # the other plugins' answers are beneath it, never above: not a refusal of this citizen
    assert any("おたっしゃカード" in line for line in others)
    assert "図書館の登録はありません" in others
    assert "登録されていないカードです" not in [title, *others]


def test_the_same_in_english(page, web, daemon, screenshots: Path) -> None:
    enrol(daemon, "bob", ALL_FOUR)
    open_kiosk(page, web, ALL_FOUR, lang="en")
    daemon.tap("bob", reader=ALL_FOUR)
    try:
        title, others = composed(page)
        page.screenshot(path=screenshots / "kiosk-composed-en.png")
    finally:
        daemon.remove(ALL_FOUR)
    assert title.startswith("Checked in ")
    assert title.endswith("/100")
    assert "Points +50 (balance 50)" in others
    assert "Not registered at this library" in others
    assert page.get_attribute("html", "lang") == "en"


def test_an_unenrolled_card_is_told_to_register_first(page, web, daemon, screenshots: Path) -> None:
    open_kiosk(page, web, ALL_FOUR)
    daemon.tap("carol", reader=ALL_FOUR)
    try:
        title, others = composed(page)
        page.screenshot(path=screenshots / "kiosk-composed-not-enrolled.png")
    finally:
        daemon.remove(ALL_FOUR)
    assert title == "カードの登録が必要です"
    assert page.get_attribute("body", "data-level") == "refusal"
    assert page.get_attribute("#title", "data-plugin") == "checkin"
    assert not any(line.startswith("ポイント") for line in others)


def test_a_plugin_routed_away_never_speaks_on_that_screen(page, web, daemon, screenshots: Path) -> None:
    enrol(daemon, "dave", NO_BATH)
    open_kiosk(page, web, NO_BATH)
    daemon.tap("dave", reader=NO_BATH)
    try:
        title, others = composed(page)
        page.screenshot(path=screenshots / "kiosk-composed-routed.png")
    finally:
        daemon.remove(NO_BATH)
    assert title.startswith("受付しました ")
    assert "ポイント +50（残高 50）" in others
    assert page.query_selector("[data-plugin=bathhouse]") is None
    assert not any(word in line for word in BATH_WORDS for line in [title, *others])


def test_a_page_for_a_reader_the_daemon_lacks_says_so(page, web, screenshots: Path) -> None:
    open_kiosk(page, web, "Sim 99")
    page.wait_for_selector("body[data-state=noreader]", timeout=WAIT_MS)
    page.screenshot(path=screenshots / "kiosk-no-such-reader.png")
    assert page.inner_text("#title") == "読み取り機「Sim 99」が見つかりません"
    assert "Sim 00" in page.inner_text("#detail")  # the readers it has, for the staff
