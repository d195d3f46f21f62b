"""readerd's SIP2 client against an independent ACS: pysip2 0.1.0's server (its own framing, codec,
required-field checks, login gate and error detection), login required and checksums required, with the
fake library's catalogue behind it (tests/support/sip2_pysip2.py).

Cost: about 3 s (an AnyIO server thread per test; the keep-alive test waits 1.6 s of idle time).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import date, datetime

import pysip2
import pytest

from plugins.library.ils import IlsUnavailableError, LoanResult, LoginRefusedError
from protocols import sip2
from simulators.sip2_acs import Item, Library
from tests.support.sip2_client import Sip2ClientFactory, sip2_clients
from tests.support.sip2_pysip2 import PysipAcs
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(30)
TODAY = date(2026, 11, 23)
#: "ポ" is 0x83 0x7C in cp932: its second byte is "|", SIP2's field separator.
TITLES = {"B1": "ポケット版 日本の野鳥", "B2": "吾輩は猫である"}

Client = Sip2ClientFactory


@pytest.fixture
def library() -> Library:
    return Library(
        institution="chuo",
        patrons={"L0001": True},
        items={barcode: Item(title) for barcode, title in TITLES.items()},
        limit=5,
        max_renewals=1,
        today=TODAY,
    )


@pytest.fixture
def client() -> Iterator[Client]:
    defaults = {"user": "kiosk", "password": "secret", "location": "kiosk-1"}
    with sip2_clients(**defaults) as make:
        yield make


@pytest.mark.parametrize("encoding", ["utf-8", "cp932"])
def test_login_status_and_the_four_questions(library: Library, client: Client, encoding: str) -> None:
    with PysipAcs(library, encoding=encoding) as acs:
        ils = client(acs.port, encoding=encoding)
        out = ils.checkout("L0001", "B1")
        status = ils.patron("L0001")  # AE (a name) and AU (the title with ポ) in the answer
        renewed = ils.renew("L0001", "B1")
        returned = ils.checkin("B1")
        again = ils.checkin("B1")
    assert out == LoanResult(ok=True, due=date(2026, 12, 7))  # the ACS's due date, passed through
    assert (status.valid, status.loans, status.overdue, status.limit) == (True, 1, 0, 5)
    assert renewed == LoanResult(ok=True, due=date(2026, 12, 21))
    assert returned.ok
    assert again == LoanResult(ok=False, reason="not_on_loan")
    # What pysip2 decoded: a 93 Login first, then 99, then the circulation messages; one login.
    first, second, checkout, *_ = acs.requests
    assert isinstance(first, pysip2.LoginRequest)
    assert (first.login_user_id, first.login_password, first.location_code) == ("kiosk", "secret", "kiosk-1")
    assert isinstance(second, pysip2.SCStatusRequest)
    assert second.protocol_version == "2.00"
    assert isinstance(checkout, pysip2.CheckoutRequest)
    assert checkout.terminal_password == ""  # AC is required in 11: sent, empty
    checkin = next(r for r in acs.requests if isinstance(r, pysip2.CheckinRequest))
    assert (checkin.terminal_password, checkin.current_location) == ("", "kiosk-1")
    assert acs.logins == 1
    # Results carry codes, counts and dates only: no title, no name.
    assert all(title not in repr((out, status, renewed)) for title in TITLES.values())


def test_a_dropped_connection_logs_in_again(library: Library, client: Client) -> None:
    with PysipAcs(library) as acs, TcpProxy("127.0.0.1", acs.port) as proxy:
        ils = client(proxy.port)
        assert ils.checkout("L0001", "B1").ok
        proxy.mode = "refuse"  # the network resets the connection mid-session
        proxy.mode = "pass"
        assert ils.checkout("L0001", "B2").ok  # a new connection, logged in first: no error shown
        logins, statuses = acs.logins, acs.statuses
    assert (logins, statuses) == (2, 2)
    kinds = [type(r).__name__ for r in acs.requests]
    assert kinds == ["LoginRequest", "SCStatusRequest", "CheckoutRequest"] * 2


def test_a_wrong_password_is_ils_unavailable_with_the_reason(library: Library, client: Client) -> None:
    with PysipAcs(library) as acs:
        ils = client(acs.port, password="wrong")  # noqa: S106 - a wrong one on purpose
        with pytest.raises(LoginRefusedError) as refused:
            ils.patron("L0001")
        assert acs.logins == 0
        assert not any(isinstance(r, pysip2.PatronInformationRequest) for r in acs.requests)
    assert refused.value.code == "ils_unavailable"
    assert "refused the login (94 ok=0): check sip2_user / sip2_password" in str(refused.value)


def test_keep_alive_holds_an_idle_connection_the_acs_would_close(library: Library, client: Client) -> None:
    with PysipAcs(library, idle_timeout=0.5) as acs:  # pysip2 closes a connection silent for 0.5 s
        kept = client(acs.port, keepalive=0.15)
        idle = client(acs.port, keepalive=0)
        assert kept.patron("L0001").valid
        assert idle.patron("L0001").valid
        time.sleep(1.2)
        assert kept.patron("L0001").valid
        assert idle.patron("L0001").valid  # closed by the ACS meanwhile: connected and logged in again
        logins, statuses = acs.logins, acs.statuses
    assert logins == 3  # kept: 1, idle: 2
    assert statuses >= 3 + 4  # three at connect, and the keep-alives


def test_without_checksums_pysip2_asks_again_and_readerd_gives_up_after_one_resend(
    library: Library, client: Client
) -> None:
    with PysipAcs(library, error_detection="required") as acs:
        ils = client(acs.port, error_detection=False)
        with pytest.raises(IlsUnavailableError, match=r"asked twice for the same message \(96\)"):
            ils.patron("L0001")
    assert acs.requests == []  # pysip2 dispatched nothing without a checksum


def test_pysip2_closes_the_connection_on_a_checkout_without_ac(library: Library) -> None:
    """The finding this work answers: 11 without AC is refused by an ACS that checks the format."""
    now = sip2.sip_date(datetime(2026, 11, 23, 10))
    login = sip2.Message(sip2.Code.LOGIN, {"uid_algorithm": "0", "pwd_algorithm": "0"}, {})
    login.fields.update({"CN": ["kiosk"], "CO": ["secret"]})
    fixed = {"sc_renewal_policy": "N", "no_block": "N", "transaction_date": now, "nb_due_date": now}
    fields = {"AO": ["chuo"], "AA": ["L0001"], "AB": ["B1"]}
    with PysipAcs(library) as acs, socket.create_connection(("127.0.0.1", acs.port), timeout=3) as conn:
        conn.sendall(sip2.Message(login.code, login.fixed, login.fields, 1).encode())
        assert sip2.parse(conn.recv(4096)).flag("ok")
        conn.sendall(sip2.Message(sip2.Code.CHECKOUT, fixed, fields, 2).encode())
        assert conn.recv(4096) == b""  # closed, no answer
        with_ac = {**fields, "AC": [""]}
        with socket.create_connection(("127.0.0.1", acs.port), timeout=3) as second:
            second.sendall(sip2.Message(login.code, login.fixed, login.fields, 3).encode())
            second.recv(4096)
            second.sendall(sip2.Message(sip2.Code.CHECKOUT, fixed, with_ac, 4).encode())
            assert sip2.parse(second.recv(4096)).code == sip2.Code.CHECKOUT_RESPONSE
    assert library.items["B1"].on_loan_to == "L0001"  # only the checkout with AC reached the catalogue
