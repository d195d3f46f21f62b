"""Two kiosks (here sixteen processes) redeeming from one account at the same instant.

Each process opens its own store (its own connection pool), waits at a barrier, then redeems 7 points
from a balance of 100 and sends the very same request again (same idempotency key), as a kiosk does that
lost the reply. Exactly 14 redemptions fit: 14 succeed, 2 get ``insufficient_points``, every repeat gets
the first answer, and the ledger still sums to the balance. On PostgreSQL (a private cluster, real
concurrent sessions) and on SQLite (one file, sixteen writers).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from plugins.points.service import PointsService
from readerd.config import StoreConfig
from readerd.plugin import Refusal
from readerd.plugin.store import Store

pytestmark = pytest.mark.timeout(180)

KIOSKS = 16
# Many quick retries: on SQLite sixteen writers queue for one lock; on PostgreSQL the row lock waits.
CONFIG = StoreConfig(busy_timeout=10.0, retries=100, retry_backoff=0.005, retry_backoff_max=0.05, pool_size=2)


def _kiosk(config: StoreConfig, state_dir: str, barrier: Any, results: Any, number: int) -> None:
    own = Path(state_dir) / f"kiosk-{number}"
    own.mkdir()
    with Store.open(config, own) as store:
        points = PointsService(store.for_plugin("points"))
        args = {
            "programme_id": "p",
            "member_id": "AAAA",
            "shop_id": "s",
            "amount": 7,
            "idempotency_key": f"k{number}",
        }
        outcomes = []
        barrier.wait(60)
        for _ in range(2):  # the same request twice: a lost reply, sent again
            try:
                result = points.redeem(args)
                outcomes.append(("ok", result["entry_id"]))
            except Refusal as e:
                outcomes.append((e.code, None))
        results.put((number, outcomes))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if request.param == "postgresql":
        return replace(CONFIG, shared_url=request.getfixturevalue("postgres_url"))
    return replace(CONFIG, local_path=str(tmp_path / "ward.db"))  # every kiosk on the one file


def test_sixteen_kiosks_redeem_at_once(config: StoreConfig, tmp_path: Path) -> None:
    (tmp_path / "office").mkdir()
    with Store.open(config, tmp_path / "office") as store:
        office = PointsService(store.for_plugin("points"))
        office.define_programme(
            {
                "programme_id": "p",
                "name": "p",
                "last_earning_day": "2099-12-31",
                "last_ticket_day": "2099-12-31",
                "last_use_day": "2099-12-31",
                "idempotency_key": "p",
            }
        )
        office.define_shop({"shop_id": "s", "name": "s", "area": "a", "idempotency_key": "s"})
        office.import_points(
            {
                "programme_id": "p",
                "member_id": "AAAA",
                "amount": 100,
                "source_ref": "r",
                "idempotency_key": "i",
            }
        )
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(KIOSKS), context.Queue()
        kiosks = [
            context.Process(target=_kiosk, args=(config, str(tmp_path), barrier, results, n))
            for n in range(KIOSKS)
        ]
        for kiosk in kiosks:
            kiosk.start()
        outcomes = dict(results.get(timeout=150) for _ in kiosks)
        for kiosk in kiosks:
            kiosk.join(30)
        balance = office.balance("member:AAAA")["balances"]["p"]
        check = office.ledger_check()
    firsts = [runs[0] for runs in outcomes.values()]
    assert sorted(code for code, _ in firsts).count("ok") == 14
    assert [code for code, _ in firsts].count("insufficient_points") == 2
    for first, repeat in outcomes.values():
        assert repeat == first  # the repeat got the first answer: the same entry, or the same refusal
    assert balance == 100 - 14 * 7 == 2
    assert check == {"negative_accounts": 0, "outstanding_points": 2}
    assert all(kiosk.exitcode == 0 for kiosk in kiosks)


def test_the_same_request_twice_at_the_same_instant_is_applied_once(
    config: StoreConfig, tmp_path: Path
) -> None:
    """Two kiosks (two stores) send one redemption with one key at once: one applies it, one replays it."""
    import threading  # noqa: PLC0415

    stores = []
    for name in ("office", "a", "b"):
        (tmp_path / name).mkdir()
        stores.append(Store.open(config, tmp_path / name))
    try:
        office, a, b = (PointsService(s.for_plugin("points")) for s in stores)
        office.define_programme(
            {
                "programme_id": "p",
                "name": "p",
                "last_earning_day": "2099-12-31",
                "last_ticket_day": "2099-12-31",
                "last_use_day": "2099-12-31",
                "idempotency_key": "p",
            }
        )
        office.define_shop({"shop_id": "s", "name": "s", "area": "a", "idempotency_key": "s"})
        office.import_points(
            {"programme_id": "p", "member_id": "M", "amount": 10, "source_ref": "r", "idempotency_key": "i"}
        )
        args = {"programme_id": "p", "member_id": "M", "shop_id": "s", "amount": 3, "idempotency_key": "same"}
        barrier = threading.Barrier(2)
        results: list[dict[str, object]] = []

        def kiosk(service: PointsService) -> None:
            barrier.wait(10)
            results.append(service.redeem(args))

        threads = [threading.Thread(target=kiosk, args=(s,)) for s in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        balance = office.balance("member:M")["balances"]["p"]
    finally:
        for store in stores:
            store.close()
    assert len(results) == 2
    assert sorted(bool(r.get("replayed")) for r in results) == [False, True]
    assert results[0]["entry_id"] == results[1]["entry_id"]
    assert balance == 7
