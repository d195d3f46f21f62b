"""The SIP2 session against the project's fake ACS (simulators/sip2_acs.py), which now checks the format
as a library system does: login required when configured, required fields, 96/97 resends, cp932 on the
wire; and the client's settings as ``[plugins.library]`` declares them.

Cost: about 1 s (a loopback server per test, no sleeps).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Iterator
from datetime import date, datetime

import pytest

from plugins.library import settings
from plugins.library.ils import KEEPALIVE, IlsUnavailableError, LoanResult, LoginRefusedError, Sip2Ils
from protocols import sip2
from protocols.errors import CommandEncodingError
from simulators.sip2_acs import FakeAcs, Item, Library
from tests.support.sip2_client import sip2_clients

pytestmark = pytest.mark.timeout(30)
TODAY = date(2026, 11, 23)
TITLE = "ポケット版 日本の野鳥"  # "ポ" is 0x83 0x7C in cp932: "|" as its second byte

Client = Callable[..., Sip2Ils]


@pytest.fixture
def library() -> Library:
    return Library(
        institution="chuo",
        patrons={"L0001": True},
        items={"B1": Item(TITLE), "B2": Item("こころ")},
        today=TODAY,
        login=("kiosk", "secret"),
    )


@pytest.fixture
def acs(library: Library) -> Iterator[FakeAcs]:
    with FakeAcs(library) as server:
        yield server


@pytest.fixture
def client(acs: FakeAcs) -> Iterator[Client]:
    defaults: dict[str, object] = {"user": "kiosk", "password": "secret", "keepalive": 0}
    with sip2_clients(**defaults) as make:
        yield functools.partial(make, acs.port)


def test_the_fake_wants_the_login_first(library: Library, client: Client) -> None:
    with pytest.raises(IlsUnavailableError, match="closed the connection"):
        client(user="").patron("L0001")  # no 93: the fake closes the connection
    assert library.refused == ["99: login required first"]
    ils = client()
    assert ils.checkout("L0001", "B1") == LoanResult(ok=True, due=date(2026, 12, 7))
    assert [m.code for m in library.sessions] == ["93", "99"]
    assert library.sessions[0].fields == {"CN": ["kiosk"], "CO": ["secret"]}  # no CP: none configured
    assert library.received[-1].fields["AC"] == [""]  # required in 11: sent, empty


def test_a_wrong_password_names_the_settings(library: Library, client: Client) -> None:
    with pytest.raises(LoginRefusedError) as refused:
        client(password="wrong").patron("L0001")  # noqa: S106 - a wrong one on purpose
    assert str(refused.value).endswith(
        "the library system refused the login (94 ok=0): check sip2_user / sip2_password"
    )
    assert refused.value.code == "ils_unavailable"
    assert library.refused == ["93: wrong login user or password"]
    assert library.received == []


def test_the_fake_refuses_a_message_without_a_required_field(library: Library) -> None:
    library.login = None
    now = sip2.sip_date(datetime(2026, 11, 23, 10))
    fixed = {"no_block": "N", "transaction_date": now, "return_date": now}
    with FakeAcs(library) as acs, socket.create_connection(("127.0.0.1", acs.port), timeout=3) as conn:
        conn.sendall(
            sip2.Message(sip2.Code.CHECKIN, fixed, {"AO": ["chuo"], "AB": ["B1"], "AC": [""]}, 1).encode()
        )
        assert conn.recv(4096) == b""  # AP missing: closed without an answer
    assert library.refused == ["09: missing required field AP"]
    assert library.received == []


def test_a_96_is_answered_by_one_resend_and_a_bad_checksum_by_a_97(
    library: Library, acs: FakeAcs, client: Client
) -> None:
    ils = client()
    assert ils.patron("L0001").valid
    acs.resend_next.set()  # the fake answers the checkout with 96, as if it had arrived garbled
    assert ils.checkout("L0001", "B1").ok
    acs.corrupt_next.set()  # the next answer arrives with a wrong checksum: readerd asks again (97)
    assert ils.renew("L0001", "B1").due == date(2026, 12, 21)
    checkouts = [m for m in library.received if m.code == sip2.Code.CHECKOUT]
    renewals = [m for m in library.received if m.code == sip2.Code.RENEW]
    assert (len(checkouts), len(renewals)) == (1, 1)  # each reached the catalogue once
    assert [m.code for m in library.sessions] == ["93", "99"]  # the same connection throughout


def test_cp932_on_the_wire(library: Library, client: Client) -> None:
    library.encoding = "cp932"
    ils = client(encoding="cp932")
    out = ils.checkout("L0001", "B1")
    status = ils.patron("L0001")  # AU carries the title, AE the name, in cp932
    assert out == LoanResult(ok=True, due=date(2026, 12, 7))
    assert (status.valid, status.loans) == (True, 1)
    with pytest.raises(IlsUnavailableError, match=r"not utf-8 \(check sip2_encoding\)"):
        client(encoding="utf-8").patron("L0001")  # a cp932 title read as UTF-8: said, not garbled


def test_encoding_and_checksum_are_over_the_wire_bytes() -> None:
    fixed = {"ok": "1", "renewal_ok": "N", "magnetic_media": "N", "desensitize": "Y"}
    fixed["transaction_date"] = sip2.sip_date(datetime(2026, 11, 23, 10))
    message = sip2.Message(sip2.Code.CHECKOUT_RESPONSE, fixed, {"AJ": [TITLE]}, 3)
    sjis, utf8 = message.encode("cp932"), message.encode("utf-8")
    assert b"\x83\x7c" in sjis  # ポ, its second byte "|"
    assert sjis[-5:-1] == sip2.checksum(sjis[:-5]).encode() != utf8[-5:-1]
    assert sip2.parse(sjis, "cp932").get("AJ") == TITLE
    with pytest.raises(sip2.ChecksumError):
        sip2.parse(sjis[:-2] + (b"0" if sjis[-2:-1] != b"0" else b"1") + b"\r", "cp932")
    with pytest.raises(CommandEncodingError):
        sip2.Message(sip2.Code.CHECKOUT_RESPONSE, fixed, {"AJ": ["𠮷野家"]}).encode("cp932")
    resend = sip2.resend_request(sip2.Code.REQUEST_SC_RESEND, error_detection=True).encode()
    assert resend == b"96AZ" + sip2.checksum(b"96AZ").encode() + b"\r"  # no AY on a 96


def test_the_settings_reach_the_client() -> None:
    declared = {key.name: key.default for key in settings.KEYS}
    assert declared["sip2_keepalive"] == KEEPALIVE
    assert (declared["sip2_error_detection"], declared["sip2_encoding"]) == (True, "utf-8")
    config = {
        "sip2_host": "10.0.0.5",
        "sip2_user": "kiosk",
        "sip2_password": "secret",
        "sip2_location": "chuo-2f",
        "sip2_encoding": "CP932",
        "sip2_keepalive": 0,
        "sip2_error_detection": False,
    }
    ils = Sip2Ils.from_config(config, "chuo")
    assert (ils.address, ils.institution, ils.user, ils.password, ils.location) == (
        ("10.0.0.5", 6001),
        "chuo",
        "kiosk",
        "secret",
        "chuo-2f",
    )
    assert (ils.encoding, ils.keepalive, ils.error_detection) == ("cp932", 0.0, False)
    with pytest.raises(ValueError, match="sip2_encoding"):
        Sip2Ils.from_config({**config, "sip2_encoding": "utf-16"}, "chuo")
    with pytest.raises(ValueError, match="sip2_keepalive"):
        Sip2Ils.from_config({**config, "sip2_keepalive": -1}, "chuo")


def test_a_connection_dropped_mid_request_is_said_and_the_next_logs_in_again(
    library: Library, acs: FakeAcs, client: Client
) -> None:
    ils = client()
    assert ils.patron("L0001").valid
    acs.drop_next.set()  # the connection dies with the checkout on it: the answer is lost
    with pytest.raises(IlsUnavailableError):
        ils.checkout("L0001", "B1")
    assert ils.patron("L0001").valid
    assert [m.code for m in library.sessions] == ["93", "99", "93", "99"]
