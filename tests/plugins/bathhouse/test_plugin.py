"""The plugin around the rules: a tap while the ward's store is down publishes an offline decision, the
timer started at ``readerd_startup`` pushes the outbox once the store is back, ``readerd_shutdown`` stops
it; ``readerctl bathhouse`` shows the visits over the cap in its table and keeps the CSV's columns.
Kiosks on SQLite files (support.Ward), the timer at 20 ms.

Cost: about 1 s (2 tests).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from plugins.bathhouse import RESULT_FIELDS, BathhousePlugin, _run
from readerd.plugin import JsonObject, PluginContext, PluginEvent
from tests.plugins.bathhouse.support import Clock, Ward, jst, register


def identified(card: str, n: int) -> PluginEvent:
    return PluginEvent(
        type="card.identified",
        seq=n,
        id=f"e{n}",
        ts="",
        kiosk="matsu-kiosk",
        reader="R1",
        data={"kind": "felica", "pseudonym": card},
    )


def test_offline_taps_are_published_and_pushed_by_the_timer(tmp_path: Path) -> None:
    clock = Clock(jst(2026, 6, 1))
    ward = Ward(tmp_path, clock)
    published: list[dict[str, Any]] = []
    context = PluginContext(
        name="bathhouse",
        config={"bath_house": "matsu", "sync_interval": 0.02, "retry_after": 0},
        kiosk="matsu-kiosk",
        store=ward.store("matsu"),
        log=structlog.get_logger("test"),
        _publish=lambda _plugin, _event, data, _reader: published.append(data),
    )
    plugin = BathhousePlugin()
    plugin.readerd_startup(context)
    try:
        service = plugin._service()
        register(service, "M1", "1950-01-01", "CARD1")
        plugin.readerd_card_identified(identified("CARD1", 1), context)
        clock.now = jst(2026, 6, 2)
        with ward.outage():
            plugin.readerd_card_identified(identified("CARD1", 2), context)
            plugin.readerd_card_identified(identified("STRANGER", 3), context)
            time.sleep(0.1)  # the timer tries, and fails, a few times
            pending_offline = service.pending()
            service._sync_lock.acquire()  # the timer waits while the ward's file is put back
        service._sync_lock.release()
        deadline = time.monotonic() + 10
        while service.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        pending_after = service.pending()
        report = service.report("2026-06")
    finally:
        plugin.readerd_shutdown()
        ward.close()
    timer = plugin._sync
    assert [(r["status"], r.get("offline")) for r in published] == [
        ("accepted", None),
        ("accepted", True),
        ("store_unavailable", True),
    ]
    assert all(set(r) <= RESULT_FIELDS["visit"] for r in published)
    assert pending_offline == 1
    assert pending_after == 0
    assert report["total_visits"] == 2
    assert timer is not None
    assert not timer._thread.is_alive()


def test_readerctl_shows_over_cap_in_the_table_and_the_csv(capsys: pytest.CaptureFixture[str]) -> None:
    answers: dict[str, JsonObject] = {
        "bathhouse.report": {
            "month": "2026-06",
            "bath_houses": [{"bath_house": "take", "visits": 3, "members": 1, "over_cap": 2}],
            "total_visits": 3,
            "total_over_cap": 2,
        },
        "bathhouse.sync": {"synced": 2, "already_there": 1, "pending": 0},
    }

    def call(command: str, _args: JsonObject) -> JsonObject:
        return answers[command]

    report = argparse.Namespace(bathhouse_action="report", month="2026-06", bath_house=None, csv=False)
    _run(report, call)
    table = capsys.readouterr().out
    _run(argparse.Namespace(**{**vars(report), "csv": True}), call)
    csv_text = capsys.readouterr().out
    _run(argparse.Namespace(bathhouse_action="sync"), call)
    synced = capsys.readouterr().out
    assert table.splitlines()[0] == "2026-06: 3 visits, 2 over the monthly cap"
    assert table.splitlines()[1].endswith("1 members    2 over the cap")
    assert csv_text == "bath_house,visits,members,over_cap\ntake,3,1,2\n"
    assert synced == "synced 2, already there 1\n"
