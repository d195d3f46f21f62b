"""The real PC/SC stack end to end: pyscard -> libpcsclite -> private pcscd -> vpcd -> tests' tiny vicc.

Proves the harness in tests/support (pcscd.py, vicc.py) before anything of readerd is involved.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from smartcard import scard  # noqa: TID251 - this test is about pyscard itself
from smartcard.System import readers as system_readers  # noqa: TID251

from tests.support import pcscd as pcscd_module
from tests.support.pcscd import PrivatePcscd
from tests.support.vicc import POWER_ON, Vicc

pytestmark = [pytest.mark.pcscd, pytest.mark.timeout(90)]

READER0, READER1 = "Virtual PCD 00 00", "Virtual PCD 00 01"
ATR = bytes.fromhex("3B 88 80 01 00 00 05 E0 B3 81 A1 00 7F")
SELECT_JPKI = bytes.fromhex("00 A4 04 0C 0A D3 92 F0 00 26 01 00 00 00 01")
READ_EXTENDED = bytes.fromhex("00 B0 8A 00 00 00 00")
SW_OK = b"\x90\x00"
BIG = bytes(i % 251 for i in range(900))
DETECT_TIMEOUT = 5.0


def handler(apdu: bytes) -> bytes:
    if apdu == SELECT_JPKI:
        return SW_OK
    if apdu == READ_EXTENDED:
        return BIG + SW_OK
    return b"\x6d\x00"


@contextmanager
def context() -> Iterator[int]:
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
    try:
        yield ctx
    finally:
        scard.SCardReleaseContext(ctx)


def list_readers(ctx: int) -> tuple[int, list[str]]:
    hr, names = scard.SCardListReaders(ctx, [])
    return hr, [str(n) for n in names] if hr == scard.SCARD_S_SUCCESS else []


def reader_state(ctx: int, reader: str) -> tuple[int, bytes]:
    hr, states = scard.SCardGetStatusChange(ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
    assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
    _, event, atr = states[0]
    return int(event), bytes(atr)


def wait_state(ctx: int, reader: str, flag: int, timeout: float = DETECT_TIMEOUT) -> float:
    """Block in SCardGetStatusChange until ``reader`` has ``flag`` (bounded); return the seconds waited."""
    start = time.monotonic()
    deadline = start + timeout
    known = scard.SCARD_STATE_UNAWARE
    while True:
        remaining_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        hr, states = scard.SCardGetStatusChange(ctx, remaining_ms, [(reader, known)])
        if hr == scard.SCARD_S_SUCCESS:
            event = int(states[0][1])
            if event & flag:
                return time.monotonic() - start
            known = event & ~scard.SCARD_STATE_CHANGED
        elif hr != scard.SCARD_E_TIMEOUT:
            pytest.fail(f"SCardGetStatusChange: {scard.SCardGetErrorMessage(hr)}")
        if time.monotonic() >= deadline:
            pytest.fail(f"{reader} did not reach state {flag:#x} within {timeout} s")


def transmit(card: int, protocol: int, apdu: bytes) -> bytes:
    hr, response = scard.SCardTransmit(card, protocol, list(apdu))
    assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
    return bytes(response)


def test_pyscard_sees_exactly_the_two_vpcd_readers(private_pcscd: PrivatePcscd) -> None:
    assert os.environ["PCSCLITE_CSOCK_NAME"] == str(private_pcscd.socket_path)
    assert [str(r) for r in system_readers()] == [READER0, READER1]
    with context() as ctx:
        assert list_readers(ctx) == (scard.SCARD_S_SUCCESS, [READER0, READER1])
        for reader in (READER0, READER1):
            event, _ = reader_state(ctx, reader)
            assert event & scard.SCARD_STATE_EMPTY, f"{reader}: {event:#x}"
    assert private_pcscd.readers == [READER0, READER1]
    assert private_pcscd.ports[1] == private_pcscd.ports[0] + 1


def test_apdus_through_pcscd_and_vpcd(private_pcscd: PrivatePcscd) -> None:
    card = Vicc(private_pcscd.ports[0], ATR, handler)
    with context() as ctx:
        card.insert()
        inserted_after = wait_state(ctx, READER0, scard.SCARD_STATE_PRESENT)
        event, atr = reader_state(ctx, READER0)
        assert atr == ATR
        assert reader_state(ctx, READER1)[0] & scard.SCARD_STATE_EMPTY, "slot 0's port drives reader 0 only"

        hr, hcard, protocol = scard.SCardConnect(
            ctx, READER0, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
        hr, _, _, _, status_atr = scard.SCardStatus(hcard)
        assert hr == scard.SCARD_S_SUCCESS
        assert bytes(status_atr) == ATR
        assert POWER_ON in card.controls

        assert transmit(hcard, protocol, SELECT_JPKI) == SW_OK
        assert card.apdus == [SELECT_JPKI]

        # One extended APDU, one transmit: vpcd advertises 64 KiB, pcscd passes 902 bytes back whole.
        response = transmit(hcard, protocol, READ_EXTENDED)
        assert card.apdus[-1] == READ_EXTENDED
        assert len(response) == 902
        assert response == BIG + SW_OK

        # TCP_NODELAY + TCP_QUICKACK: a round trip is far below the ~48 ms delayed-ACK stall.
        rounds = []
        for _ in range(20):
            start = time.perf_counter()
            transmit(hcard, protocol, SELECT_JPKI)
            rounds.append(time.perf_counter() - start)
        assert statistics.median(rounds) < 0.02, rounds

        assert scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD) == scard.SCARD_S_SUCCESS
        card.remove()
        removed_after = wait_state(ctx, READER0, scard.SCARD_STATE_EMPTY)
        event, _ = reader_state(ctx, READER0)
        assert not event & scard.SCARD_STATE_PRESENT
    assert card.errors == []
    print(f"insert seen after {inserted_after * 1000:.0f} ms, removal after {removed_after * 1000:.0f} ms")
    print(f"SELECT round trip median {statistics.median(rounds) * 1e3:.3f} ms")


def test_restart_with_more_readers_needs_a_fresh_context(private_pcscd: PrivatePcscd) -> None:
    first_pid = private_pcscd.pid
    card = Vicc(private_pcscd.ports[0], ATR, handler)
    hr, old = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == scard.SCARD_S_SUCCESS
    try:
        assert list_readers(old)[1] == [READER0, READER1]
        card.insert()
        wait_state(old, READER0, scard.SCARD_STATE_PRESENT)

        private_pcscd.restart(n_readers=4)

        # The card's connection died with pcscd: the vicc thread ends quietly.
        deadline = time.monotonic() + DETECT_TIMEOUT
        while card.inserted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not card.inserted
        card.remove()
        assert card.errors == []

        # The old context does not come back with the new daemon (and SCardIsValidContext, a purely
        # client-side check, still calls it valid: it is no liveness test).
        assert list_readers(old)[0] == scard.SCARD_E_NO_SERVICE
        hr, _ = scard.SCardGetStatusChange(old, 0, [(READER0, scard.SCARD_STATE_UNAWARE)])
        assert hr == scard.SCARD_E_NO_SERVICE
        assert list_readers(old)[0] == scard.SCARD_E_NO_SERVICE
        assert scard.SCardIsValidContext(old) == scard.SCARD_S_SUCCESS
    finally:
        scard.SCardReleaseContext(old)

    assert private_pcscd.pid != first_pid
    four = [READER0, READER1, "Virtual PCD 1 00 00", "Virtual PCD 1 00 01"]
    assert private_pcscd.readers == four
    with context() as ctx:
        assert list_readers(ctx) == (scard.SCARD_S_SUCCESS, four)
        # Four cards with distinct ATRs: every reader shows its own card, none aliases another entry's
        # slot (libifdvpcd indexes its connections by slot only; the harness gives entry 1 its own copy).
        # Slot 0 also proves that vpcd could bind its port again after the restart.
        cards = [Vicc(port, ATR[:-1] + bytes([i]), handler) for i, port in enumerate(private_pcscd.ports)]
        for card_i in cards:
            card_i.insert()
        try:
            for reader in four:
                wait_state(ctx, reader, scard.SCARD_STATE_PRESENT)
            assert [reader_state(ctx, reader)[1] for reader in four] == [c.atr for c in cards]
        finally:
            for card_i in cards:
                card_i.remove()
    assert [c.errors for c in cards] == [[]] * 4

    with pytest.raises(ValueError, match="2 readers per"):
        private_pcscd.restart(n_readers=3)  # vpcd slots come in pairs
    private_pcscd.restart(entries=0)
    with context() as ctx:
        assert list_readers(ctx)[0] == scard.SCARD_E_NO_READERS_AVAILABLE


LIST_TWICE = """
import json, os, sys
from smartcard import scard
out = []
for path in sys.argv[1:]:
    os.environ["PCSCLITE_CSOCK_NAME"] = path
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    hr, names = scard.SCardListReaders(ctx, [])
    out.append(list(names) if hr == 0 else scard.SCardGetErrorMessage(hr))
    scard.SCardReleaseContext(ctx)
print(json.dumps(out))
"""


def _list_from_subprocess(env: dict[str, str], *paths: Path) -> list[object]:
    done = subprocess.run(
        [sys.executable, "-c", LIST_TWICE, *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: list[object] = json.loads(done.stdout)
    return result


def test_socket_name_is_read_once_per_process(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    with PrivatePcscd(tmp_path / "second", entries=2) as second:
        a, b = private_pcscd.socket_path, second.socket_path
        # A process that talks to pcscd A first keeps talking to A, whatever the variable says later.
        assert _list_from_subprocess(private_pcscd.env(), a, b) == [private_pcscd.readers] * 2
        # env() points a fresh process at B.
        assert _list_from_subprocess(second.env(), b) == [second.readers]
        assert len(second.readers) == 4


def test_private_pcscd_leaves_run_pcscd_alone(private_pcscd: PrivatePcscd) -> None:
    if not private_pcscd.isolated:
        pytest.skip("unshare cannot make a private mount namespace here: pcscd writes /run/pcscd/pcscd.pid")
    pid = str(private_pcscd.pid)
    run = Path("/run/pcscd")
    files = sorted(run.iterdir()) if run.is_dir() else []
    assert all(pid not in f.read_text(errors="replace") for f in files if f.is_file())
    assert not (run / "pcscd.comm").exists() or not os.environ["PCSCLITE_CSOCK_NAME"].startswith("/run/")


@pytest.mark.parametrize(("ci", "outcome"), [("true", "failed"), ("", "skipped")])
def test_missing_pcscd_skips_only_outside_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str, outcome: str
) -> None:
    monkeypatch.setattr(pcscd_module, "missing_tools", lambda: ["pcscd"])
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "failed" else pytest.skip.Exception
    with pytest.raises(expected, match="pcscd tests need pcscd"):
        pcscd_module.private_pcscd_fixture(tmp_path)
