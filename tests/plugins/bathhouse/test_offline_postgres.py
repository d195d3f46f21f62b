"""Two bath houses on the ward's real PostgreSQL (the private cluster), the server stopped under them: each
decides from its own record, admitting at most ``monthly_cap`` minus the count it last saw; the server
comes back, each pushes its outbox, a second push changes nothing, and the month's report shows the visits
beyond the cap that two houses offline at once let through (the documented bound).

Cost: about 1 s (one test: the server stopped and started once), plus about 3 s for the private cluster
when this is the session's first PostgreSQL test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from plugins.bathhouse.service import BathhouseService
from readerd.config import StoreConfig
from readerd.errors import StoreUnavailableError
from readerd.plugin import JsonObject
from readerd.plugin.store import Store
from tests.plugins.bathhouse.support import RULES, Clock, jst, register, shared_visits, statuses
from tests.support.postgres import PrivatePostgres

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

CONFIG = StoreConfig(connect_timeout=2, retries=2, retry_backoff=0.001, retry_backoff_max=0.01)


@pytest.fixture
def clock() -> Clock:
    return Clock(jst(2026, 6, 1))


@pytest.fixture
def houses(tmp_path: Path, postgres_url: str, clock: Clock) -> Iterator[tuple[BathhouseService, ...]]:
    stores = []
    for name in ("matsu", "take"):
        (tmp_path / name).mkdir()
        stores.append(Store.open(replace(CONFIG, shared_url=postgres_url), tmp_path / name, clock=clock))
    yield tuple(BathhouseService(s.for_plugin("bathhouse"), RULES, retry_after=0.0) for s in stores)
    for store in stores:
        store.close()


def test_two_houses_offline_on_postgresql(
    houses: tuple[BathhouseService, BathhouseService], postgres_cluster: PrivatePostgres, clock: Clock
) -> None:
    matsu, take = houses

    def tap(bath: BathhouseService, day: int, card: str = "CARD1", hour: int = 10) -> JsonObject:
        clock.now = jst(2026, 6, day, hour)
        return bath.visit("matsu" if bath is matsu else "take", card=card, via="felica")

    register(matsu, "M1", "1950-01-01", "CARD1")
    register(matsu, "M2", "1950-01-01", "CARD2")  # M2 bathes only at matsu
    register(matsu, "M3", "1950-01-01", "CARD3")  # M3's card never tapped at take
    online = [tap(matsu, 1), tap(take, 2), tap(matsu, 2), tap(matsu, 1, "CARD2"), tap(matsu, 2, "CARD2")]
    online.append(tap(matsu, 2, "CARD3"))

    postgres_cluster.stop()
    try:
        at_matsu = [tap(matsu, 3), tap(matsu, 4)]  # knew 3: admits 1
        at_take = [tap(take, 3, hour=11), tap(take, 4), tap(take, 5)]  # knew 2: admits 2
        m2 = [tap(matsu, d, "CARD2") for d in (3, 4, 5)]  # knew 2, alone offline: admits 2, the cap holds
        unseen = tap(take, 3, "CARD3")
        with pytest.raises(StoreUnavailableError):
            take.sync()
        pending = (matsu.pending(), take.pending())
    finally:
        postgres_cluster.start()

    first = matsu.sync(), take.sync()
    second = matsu.sync(), take.sync()
    rows = shared_visits(matsu)
    report = take.report("2026-06")
    m1_after = tap(matsu, 6)
    m2_after = tap(take, 6, "CARD2")
    assert statuses(online) == ["accepted"] * 6
    assert statuses(at_matsu) == ["accepted", "monthly_cap_reached"]
    assert statuses(at_take) == ["accepted", "accepted", "monthly_cap_reached"]
    assert statuses(m2) == ["accepted", "accepted", "monthly_cap_reached"]
    assert all(r["offline"] is True for r in at_matsu + at_take + m2)
    assert (unseen["status"], unseen["offline"]) == ("store_unavailable", True)
    assert pending == (3, 2)
    assert [s["synced"] for s in first] == [3, 2]
    assert [(s["synced"], s["already_there"]) for s in second] == [(0, 0), (0, 0)]
    assert len(rows) == 6 + 3 + 2  # every visit once: 6 online, 3 + 2 offline
    assert len({row[0] for row in rows}) == len(rows)
    assert report["total_visits"] == 11
    assert report["total_over_cap"] == 2  # M1: 3 known + 1 (matsu) + 2 (take) = 6; M2 exactly 4
    assert {r["bath_house"]: r["over_cap"] for r in report["bath_houses"]} == {"matsu": 0, "take": 2}
    assert (m1_after["status"], m1_after["visits_this_month"]) == ("monthly_cap_reached", 6)
    assert (m2_after["status"], m2_after["visits_this_month"]) == ("monthly_cap_reached", 4)
