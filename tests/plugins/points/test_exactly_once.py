"""Points for a check-in are credited once per event and person, and an earning that cannot be credited
yet waits, visible, until it is credited or written off with its reason (never silently lost).

Two regressions: a citizen admitted at two kiosks while the ward's PostgreSQL was down earned twice after
the sync; a check-in at an event whose programme was not defined yet earned nothing, ever.
"""

from __future__ import annotations

import io
import itertools
from argparse import Namespace
from collections.abc import Iterator
from contextlib import ExitStack, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog

from plugins.checkin import CheckinPlugin
from plugins.points import RESULT_FIELDS, PointsPlugin
from plugins.points.ctl import _run
from readerd.config import StoreConfig
from readerd.plugin.api import PluginContext, PluginEvent
from readerd.plugin.store import Store
from tests.support.postgres import PrivatePostgres

START = datetime(2026, 8, 15, 9, 0, tzinfo=UTC)  # 18:00 JST, during the festival
PROGRAMME = {
    "programme_id": "ward",
    "name": "区民ポイント",
    "last_earning_day": "2026-08-31",
    "last_ticket_day": "2026-08-31",
    "last_use_day": "2026-09-30",
    "idempotency_key": "p",
}
FEST = {
    "event_id": "fest",
    "name": "まつり",
    "place": "公園",
    "starts_at": "2026-08-15T17:00:00+09:00",
    "ends_at": "2026-08-15T21:00:00+09:00",
    "points": 50,
    "idempotency_key": "e",
}
SEQ = itertools.count(1)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class Kiosk:
    """One kiosk's check-in and points plugins, meeting as on the bus (check-in results handed on)."""

    def __init__(self, stack: ExitStack, directory: Path, config: StoreConfig, clock: Clock) -> None:
        directory.mkdir()
        store = stack.enter_context(Store.open(config, directory, clock=clock))
        self.name = directory.name
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.checkin, self.points = CheckinPlugin(), PointsPlugin()
        self.checkin_context = self._context(store, "checkin", {"event": "fest", "sync_interval": 3600})
        self.points_context = self._context(
            store, "points", {"earn_programme": "ward", "retry_interval": 3600}
        )
        self.checkin.readerd_startup(self.checkin_context)
        self.points.readerd_startup(self.points_context)
        stack.callback(self.checkin.readerd_shutdown)
        stack.callback(self.points.readerd_shutdown)

    def _context(self, store: Store, name: str, settings: dict[str, Any]) -> PluginContext:
        return PluginContext(
            name=name,
            config=settings,
            kiosk=self.name,
            store=store.for_plugin(name),
            log=structlog.get_logger("test"),
            _publish=self._on_result,
        )

    def _on_result(self, plugin: str, event: str, data: dict[str, Any], reader: str | None) -> None:
        self.published.append((f"{plugin}.{event}", data))
        if plugin == "checkin":
            result = PluginEvent(f"plugin.checkin.{event}", next(SEQ), "r", "ts", self.name, reader, data)
            self.points.readerd_plugin_result(result, self.points_context)

    def tap(self, member: str) -> dict[str, Any]:
        """A tap of the member's card: the check-in result (the points results follow it)."""
        card = {"kind": "jpki", "pseudonym": f"p-{member}", "member_id": member}
        tap = PluginEvent("card.identified", next(SEQ), f"tap-{next(SEQ)}", "ts", self.name, "R", card)
        self.checkin.readerd_card_identified(tap, self.checkin_context)
        return next(data for name, data in self.published if name == "checkin.result")

    def points_results(self) -> list[str]:
        return [name for name, _ in self.published if name.startswith("points.")]


def assert_declared(kiosk: Kiosk) -> None:
    """Every points result carries only declared fields (readerd drops the rest from the bus)."""
    for name, data in kiosk.published:
        if name.startswith("points."):
            event = name.split(".", 1)[1]
            assert event in RESULT_FIELDS, event
            assert set(data) - {"replayed"} <= RESULT_FIELDS[event] | {"replayed"}, (event, data)


def earn_entries(kiosk: Kiosk) -> int:
    service = kiosk.points._service()
    ledger = service.t.ledger
    return service._tx(
        lambda conn: conn.execute(
            sa.select(sa.func.count()).where(ledger.c.kind == "earn", ledger.c.account == "member:M1")
        ).scalar_one(),
        readonly=True,
    )


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_admitted_at_two_offline_kiosks_earns_once(
    tmp_path: Path, postgres_url: str, postgres_cluster: PrivatePostgres
) -> None:
    """Cost: about 1.5 s (PostgreSQL stopped and started once)."""
    config = StoreConfig(
        shared_url=postgres_url, connect_timeout=2, retries=1, retry_backoff=0.001, retry_backoff_max=0.01
    )
    clock = Clock()
    with ExitStack() as stack:
        a = Kiosk(stack, tmp_path / "kiosk-a", config, clock)
        b = Kiosk(stack, tmp_path / "kiosk-b", config, clock)
        a.checkin._service().define_event(FEST)
        b.checkin._service().event("fest")  # kiosk b has seen the event while online (its cache)
        a.points._service().define_programme(PROGRAMME)
        postgres_cluster.stop()
        try:
            offline = [a.tap("M1"), b.tap("M1")]
            waiting = (len(a.points._service().deferred()), len(b.points._service().deferred()))
        finally:
            postgres_cluster.start()
        synced = (a.checkin._service().sync(), b.checkin._service().sync())
        settled = (a.points.retry_deferred(), b.points.retry_deferred(), a.points.retry_deferred())
        attendance = a.checkin._service().attendance("fest")["count"]
        balance = a.points._service().balance("member:M1")
        entries = earn_entries(a)
        pending = (a.points._service().pending_report(), b.points._service().pending_report())
    assert [r["status"] for r in offline] == ["accepted", "accepted"]
    assert all(r.get("offline") for r in offline)
    assert waiting == (1, 1)
    assert [s["duplicates"] for s in synced] == [0, 1]
    assert attendance == 1
    assert settled == (1, 1, 0)  # b's earning was found credited (the same event and person)
    assert balance == {"balances": {"ward": 50}}
    assert entries == 1
    assert [(p["pending"], p["written_off"]) for p in pending] == [(0, 0), (0, 0)]
    assert a.points_results() == ["points.earn_deferred", "points.earned"]
    assert b.points_results() == ["points.earn_deferred"]
    assert b.published[-1][1] == {"event_id": "fest", "reason": "store_unavailable"}
    assert_declared(a)
    assert_declared(b)


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[tuple[Kiosk, Clock]]:
    clock = Clock()
    with ExitStack() as stack:
        kiosk = Kiosk(stack, tmp_path / "kiosk", StoreConfig(), clock)
        kiosk.checkin._service().define_event(FEST)
        yield kiosk, clock


def test_check_in_before_the_programme_exists_is_credited_once_it_does(
    kiosk: tuple[Kiosk, Clock],
) -> None:
    """Cost: under 0.5 s (SQLite)."""
    k, _ = kiosk
    points = k.points._service()
    assert k.tap("M1")["status"] == "accepted"
    event, data = k.published[-1]
    before = (points.pending_report(), k.points.retry_deferred())
    points.define_programme(PROGRAMME)
    settled = (k.points.retry_deferred(), k.points.retry_deferred())
    out = io.StringIO()
    with redirect_stdout(out):
        _run(Namespace(points_action="pending"), lambda command, args: points.pending_report())
    assert (event, data) == ("points.earn_deferred", {"event_id": "fest", "reason": "unknown_programme"})
    report, retried = before
    assert retried == 0
    assert (report["pending"], report["pending_points"], report["written_off"]) == (1, 50, 0)
    assert report["reasons"] == {"pending": {"unknown_programme": 1}, "written_off": {}}
    assert report["rows"][0]["member_id"] == "M1"
    assert report["rows"][0]["state"] == "pending"
    assert settled == (1, 0)
    assert k.published[-1] == (
        "points.earned",
        {"balance": 50, "earned": 50, "event_id": "fest", "deferred": True},
    )
    assert points.balance("member:M1") == {"balances": {"ward": 50}}
    assert points.pending_report()["pending"] == 0
    assert out.getvalue().startswith("pending 0 (0 points), written off 0 (0 points)")
    assert_declared(k)


def test_an_earning_waits_until_the_programme_opens(kiosk: tuple[Kiosk, Clock]) -> None:
    """Cost: under 0.5 s (SQLite, the clock moved by hand)."""
    k, clock = kiosk
    points = k.points._service()
    points.define_programme({**PROGRAMME, "first_earning_day": "2026-08-20"})  # not open at the festival
    k.tap("M1")
    waiting = (points.pending_report()["reasons"]["pending"], k.points.retry_deferred())
    clock.now = datetime(2026, 8, 19, 15, 0, tzinfo=UTC)  # 00:00 JST on 20 August: open
    credited = (k.points.retry_deferred(), points.balance("member:M1"), points.pending_report()["pending"])
    assert waiting == ({"programme_not_open": 1}, 0)
    assert credited == (1, {"balances": {"ward": 50}}, 0)
    assert k.points_results() == ["points.earn_deferred", "points.earned"]
    assert_declared(k)


def test_a_waiting_earning_is_written_off_after_the_last_earning_day(kiosk: tuple[Kiosk, Clock]) -> None:
    """Cost: under 0.5 s (SQLite, the clock moved by hand)."""
    k, clock = kiosk
    points = k.points._service()
    k.tap("M1")  # no programme yet
    clock.now = datetime(2026, 8, 31, 15, 0, tzinfo=UTC)  # 00:00 JST on 1 September: earning has ended
    points.define_programme(PROGRAMME)  # defined too late
    written_off = (k.points.retry_deferred(), k.points.retry_deferred())
    report = points.pending_report()
    out = io.StringIO()
    with redirect_stdout(out):
        _run(Namespace(points_action="pending"), lambda command, args: report)
    assert written_off == (1, 0)
    assert (report["pending"], report["written_off"], report["written_off_points"]) == (0, 1, 50)
    assert report["reasons"]["written_off"] == {"programme_expired": 1}
    assert report["rows"][0]["written_off_at"] == "2026-08-31T15:00:00Z"
    assert k.published[-1] == ("points.earn_written_off", {"reason": "programme_expired", "event_id": "fest"})
    assert points.balance("member:M1") == {"balances": {}}
    assert "written_off programme_expired 1" in " ".join(out.getvalue().split())
    assert_declared(k)


def test_an_earning_credited_under_its_check_in_id_is_not_credited_again(kiosk: tuple[Kiosk, Clock]) -> None:
    """A check-in credited before earnings were keyed by event and person, retried after: no second
    credit. Cost: under 0.5 s (SQLite)."""
    k, _ = kiosk
    points = k.points._service()
    points.define_programme(PROGRAMME)
    points.earn("member:M1", "ward", 50, "c-1")  # the key before: the check-in id
    again = points.earn("member:M1", "ward", 50, "c-1", event_id="fest")
    other_kiosk = points.earn("member:M1", "ward", 50, "c-9", event_id="fest")
    assert again == {"earned": 0, "replayed": True}
    assert other_kiosk == again
    assert points.balance("member:M1") == {"balances": {"ward": 50}}
