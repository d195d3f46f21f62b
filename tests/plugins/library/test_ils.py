"""The two ILS adapters: SIP2 against the fake library system over real TCP, and the local store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from plugins.library.ils import IlsUnavailableError, LoanResult, LoanRules, LocalIls, Sip2Ils
from protocols import sip2
from readerd.config import StoreConfig
from readerd.plugin.store import Store
from simulators.sip2_acs import FakeAcs, Item, Library
from tests.support.ports import free_tcp_port

TODAY = date(2026, 11, 23)


@pytest.fixture
def library() -> Library:
    return Library(
        institution="chuo",
        patrons={"L0001": True, "L0002": False},
        items={f"B{n}": Item(f"本 {n}") for n in range(1, 5)},
        limit=2,
        max_renewals=1,
        today=TODAY,
    )


@pytest.fixture
def acs(library: Library) -> Iterator[FakeAcs]:
    with FakeAcs(library) as server:
        yield server


@pytest.fixture
def ils(acs: FakeAcs) -> Iterator[Sip2Ils]:
    client = Sip2Ils(
        "127.0.0.1", acs.port, institution="chuo", clock=lambda: datetime(2026, 11, 23, 1, tzinfo=UTC)
    )
    yield client
    client.close()


def test_sip2_loans_with_the_library_systems_rules(ils: Sip2Ils, library: Library) -> None:
    first = ils.checkout("L0001", "B1")
    second = ils.checkout("L0001", "B2")
    third = ils.checkout("L0001", "B3")
    taken = ils.checkout("L0001", "B1")
    blocked = ils.checkout("L0002", "B3")
    status = ils.patron("L0001")
    renewed = ils.renew("L0001", "B1")
    again = ils.renew("L0001", "B1")
    returned = ils.checkin("B1")
    not_lent = ils.checkin("B4")
    assert first == LoanResult(ok=True, due=date(2026, 12, 7))
    assert second.ok
    assert third == LoanResult(ok=False, reason="limit_reached")
    assert taken == LoanResult(ok=False, reason="already_on_loan")
    assert blocked == LoanResult(ok=False, reason="not_a_patron")
    assert (status.valid, status.loans, status.overdue, status.limit) == (True, 2, 0, 2)
    assert renewed == LoanResult(ok=True, due=date(2026, 12, 21))
    assert again == LoanResult(ok=False, reason="no_renewals_left")
    assert returned.ok
    assert not_lent == LoanResult(ok=False, reason="not_on_loan")
    # Every request went with a sequence number and a checksum, and said who the station is.
    assert all(m.sequence is not None for m in library.received)
    assert {m.get("AO") for m in library.received} == {"chuo"}
    assert library.received[0].fixed["transaction_date"] == "20261123    100000"  # JST on the wire


def test_sip2_reconnects_after_the_connection_drops(ils: Sip2Ils, acs: FakeAcs) -> None:
    assert ils.patron("L0001").valid
    acs.drop_next.set()  # the server closes the connection instead of answering the next request
    with pytest.raises(IlsUnavailableError):
        ils.patron("L0001")  # the answer was lost: said, not guessed
    assert ils.patron("L0001").valid  # and the next request connects again


def test_sip2_unreachable_is_a_named_error() -> None:
    ils = Sip2Ils("127.0.0.1", free_tcp_port(), institution="chuo", timeout=1.0)
    with pytest.raises(IlsUnavailableError, match=r"SIP2 127\.0\.0\.1"):
        ils.patron("L0001")


def test_sip2_garbage_is_a_named_error(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer_garbage() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"12garbage\r")
        conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    ils = Sip2Ils("127.0.0.1", port, institution="chuo", timeout=2.0)
    with pytest.raises(IlsUnavailableError):
        ils.patron("L0001")
    server.close()


def test_local_ils_limit_overdue_and_renewals(tmp_path: Path) -> None:
    class Clock:
        now = datetime(2026, 11, 23, 1, tzinfo=UTC)

        def __call__(self) -> datetime:
            return self.now

    clock = Clock()
    with Store.open(StoreConfig(), tmp_path, clock=clock) as store:
        ils = LocalIls(
            store.for_plugin("library"), LoanRules(limit=2, days=14, renewals=1), lambda card: card == "L1"
        )
        results = [
            ils.checkout("L1", "B1"),
            ils.checkout("L1", "B2"),
            ils.checkout("L1", "B3"),
            ils.checkout("L9", "B3"),
        ]
        renewed = ils.renew("L1", "B1")
        clock.now = datetime(2026, 12, 8, 1, tzinfo=UTC)  # B2 was due on 7 December
        status = ils.patron("L1")
        overdue = ils.overdue()
        blocked = ils.checkout("L1", "B4")
        assert [r.reason for r in results] == ["", "", "limit_reached", "not_a_patron"]
        assert renewed == LoanResult(ok=True, due=date(2026, 12, 21))
        assert ils.renew("L1", "B1") == LoanResult(ok=False, reason="no_renewals_left")
        assert (status.loans, status.overdue) == (2, 1)
        assert overdue == [{"library_card": "L1", "item": "B2", "due": "2026-12-07"}]
        assert blocked == LoanResult(ok=False, reason="overdue_items")
        assert ils.checkin("B2").ok
        assert ils.checkin("B2") == LoanResult(ok=False, reason="not_on_loan")


def test_sip2_dates_round_trip() -> None:
    assert sip2.parse_sip_date(sip2.sip_date(datetime(2026, 2, 28, 23, 59, 59))) == datetime(
        2026, 2, 28, 23, 59, 59
    )
