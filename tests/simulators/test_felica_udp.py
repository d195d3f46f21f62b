"""The virtual FeliCa card over nfcpy's ``udp`` driver, read by nfcpy's own reader side (the RC-S380 path).

Every wait is bounded: ``connect`` has a ``terminate`` deadline, nfcpy's FeliCa commands time out after
milliseconds, and the card thread stops within a second.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nfc
import nfc.tag.tt3
import nfc.tag.tt3_sony
import pytest

from simulators.felica import FelicaCardProfile, bathhouse_card, checkin_card, transport_card
from simulators.felica_udp import (
    FelicaUdpCard,
    add_felica_parser,
    parse_loopback_endpoint,
    profile_from_args,
    run_felica_command,
    run_felica_udp,
)

pytestmark = pytest.mark.timeout(60)

CONNECT_SECONDS = 10.0
IDM = bytes.fromhex("012E4CD29A15F600")


@contextlib.contextmanager
def emulated(profile: FelicaCardProfile) -> Iterator[FelicaUdpCard]:
    sim = FelicaUdpCard(profile).start()
    try:
        yield sim
    finally:
        sim.stop()
    assert sim.error is None


@contextlib.contextmanager
def reader(path: str) -> Iterator[Any]:
    clf = nfc.ContactlessFrontend(path)
    try:
        yield clf
    finally:
        clf.close()


def connect(clf: Any, seconds: float = CONNECT_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    return clf.connect(
        rdwr={
            "targets": ["212F"],
            "on-connect": lambda tag: False,  # hand the tag back instead of waiting for removal
            "iterations": 1,
            "interval": 0.05,
            "beep-on-connect": False,
        },
        terminate=lambda: time.monotonic() > deadline,
    )


def read_blocks(tag: Any, service: int, count: int) -> bytes:
    code = nfc.tag.tt3.ServiceCode(service >> 6, service & 0x3F)
    blocks = [nfc.tag.tt3.BlockCode(n, service=0) for n in range(count)]
    return bytes(tag.read_without_encryption([code], blocks))


@pytest.mark.parametrize(
    "profile",
    [bathhouse_card("00012345", 1950, 101, 2, idm=IDM), checkin_card("70123456789", idm=IDM)],
    ids=["bathhouse", "checkin"],
)
def test_lite_s_cards_are_found_and_read(profile):
    with emulated(profile) as sim, reader(sim.path) as clf:
        tag = connect(clf)
        assert isinstance(tag, nfc.tag.tt3_sony.FelicaLiteS), f"no Lite-S tag: {tag!r}"
        assert bytes(tag.idm) == IDM
        assert bytes(tag.pmm) == bytes.fromhex("00F1000000014300")
        assert tag.sys == 0x88B4
        blocks = profile.services[0x000B]
        assert read_blocks(tag, 0x000B, len(blocks)) == b"".join(blocks)
        # What nfcpy sent, spelled out: Polling for any system with request code 1, then the read.
        elements = b"".join(bytes([0x80, n]) for n in range(len(blocks)))
        body = b"\x06" + IDM + b"\x01\x0b\x00" + bytes([len(blocks)]) + elements
        assert sim.card.received[0] == bytes.fromhex("0600FFFF0100")
        assert sim.card.received[-1] == bytes([len(body) + 1]) + body


def test_bathhouse_block_contents_arrive_intact():
    profile = bathhouse_card("00012345", 1950, 0x0165, 2, idm=IDM)
    with emulated(profile) as sim, reader(sim.path) as clf:
        tag = connect(clf)
        data = read_blocks(tag, 0x000B, 2)
    assert data[0:4] == b"OTS1"
    assert data[4] == 2
    assert data[5:7] == b"\x01\x65"
    assert data[7:9] == (1950).to_bytes(2, "big")
    assert data[16:24] == b"00012345"
    assert sum(data) % 256 == 0


def test_transport_card_is_found_with_system_0003():
    profile = transport_card(idm=IDM)
    with emulated(profile) as sim, reader(sim.path) as clf:
        tag = connect(clf)
        assert isinstance(tag, nfc.tag.tt3_sony.FelicaStandard), f"no FeliCa Standard tag: {tag!r}"
        assert bytes(tag.idm) == IDM
        assert tag.sys == 0x0003
        idm, pmm, system = tag.polling(0x0003, request_code=1)
        assert (bytes(idm), bytes(pmm), bytes(system)) == (IDM, profile.pmm, b"\x00\x03")
        assert read_blocks(tag, 0x090F, 2) == b"".join(profile.services[0x090F])
        assert read_blocks(tag, 0x008B, 1) == profile.services[0x008B][0]
        with pytest.raises(nfc.tag.tt3.Type3TagCommandError) as failed:
            read_blocks(tag, 0x000B, 1)  # a Lite-S service the transit card does not have
        assert failed.value.errno == 0xFFA1


def test_a_reader_polling_for_another_system_finds_nothing():
    with emulated(transport_card(idm=IDM)) as sim, reader(sim.path) as clf:
        deadline = time.monotonic() + 1.0
        tag = clf.connect(
            rdwr={"targets": ["212F"], "on-connect": lambda tag: False, "iterations": 1},
            terminate=lambda: time.monotonic() > deadline,
        )
        assert tag is not None  # wildcard polling finds it
        assert bytes(tag.idm) == IDM
        with pytest.raises(nfc.tag.tt3.Type3TagCommandError):
            tag.polling(0x88B4)  # no answer for a system it lacks: nfcpy's timeout error


def test_removed_card_is_not_found_and_comes_back_on_insert():
    with emulated(checkin_card("42", idm=IDM)) as sim:
        sim.remove()
        with reader(sim.path) as clf:
            assert connect(clf, seconds=0.6) is None
        sim.insert()
        with reader(sim.path) as clf:
            tag = connect(clf)
            assert tag is not None
            assert bytes(tag.idm) == IDM
            assert read_blocks(tag, 0x000B, 1) == b"42" + bytes(14)
        assert sim.activations == 1


def test_removal_mid_session_silences_the_card():
    with emulated(checkin_card("42", idm=IDM)) as sim, reader(sim.path) as clf:
        tag = connect(clf)
        assert read_blocks(tag, 0x000B, 1)[:2] == b"42"
        sim.remove()
        # nfcpy waits a few ms per try (from the PMm) and tries 3 times; on a loaded machine an answer
        # to an earlier try can arrive late and wait in the reader's socket, where the next read takes
        # it. There are at most two such leftovers: after them, the removed card's silence shows.
        outcomes = []
        for _ in range(3):
            try:
                read_blocks(tag, 0x000B, 1)
            except nfc.tag.tt3.Type3TagCommandError:
                outcomes.append("silent")
                break
            outcomes.append("stale answer")
        assert outcomes[-1] == "silent", outcomes


def test_stray_datagrams_do_not_kill_the_card():
    with emulated(checkin_card("42", idm=IDM)) as sim:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
            for junk in (b"212F zz", b"nonsense", b"212F", b"212F 05", b"106A 26"):
                stray.sendto(junk, ("127.0.0.1", sim.port))
        with reader(sim.path) as clf:
            tag = connect(clf)
            assert read_blocks(tag, 0x000B, 1)[:2] == b"42"
        assert sim.error is None


# --- loopback only -----------------------------------------------------------------------------------
def _proc_net_udp_local_addresses(port: int) -> list[str]:
    """Local addresses (hex ``IP:PORT`` as the kernel prints them) of IPv4 UDP sockets on ``port``."""
    found = []
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        local = line.split()[1]
        if int(local.split(":")[1], 16) == port:
            found.append(local.split(":")[0])
    return found


def test_the_card_binds_loopback_only():
    with emulated(checkin_card("1", idm=IDM)) as sim:
        bound = sim.bound_address()
        assert bound is not None
        assert bound[0] == "127.0.0.1"
        assert bound[1] == sim.port != 0
        with reader(sim.path) as clf:  # and it still answers after nfcpy's listen ran
            assert connect(clf) is not None
        assert sim.bound_address() == bound
        if Path("/proc/net/udp").exists():
            assert _proc_net_udp_local_addresses(sim.port) == ["0100007F"]  # 127.0.0.1, never 00000000


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])  # noqa: S104 - refusing them is the test
def test_non_loopback_hosts_are_refused(host):
    with pytest.raises(ValueError, match="loopback"):
        FelicaUdpCard(checkin_card("1"), host, 0)


@pytest.mark.parametrize("text", ["0.0.0.0:54321", "192.168.1.10:54321", "example.org:1", "[::]:5"])
def test_cli_endpoint_refuses_non_loopback(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_loopback_endpoint(text)


def test_cli_endpoint_accepts_loopback():
    assert parse_loopback_endpoint("127.0.0.1:54321") == ("127.0.0.1", 54321)
    assert parse_loopback_endpoint("localhost:1") == ("127.0.0.1", 1)
    assert parse_loopback_endpoint("4000") == ("127.0.0.1", 4000)


# --- run_felica_udp and the command line ---------------------------------------------------------------
def test_run_felica_udp_serves_until_stopped():
    stop = threading.Event()
    events: list[tuple[str, dict[str, object]]] = []
    listening = threading.Event()

    def on_event(name, details):
        events.append((name, dict(details)))
        if name == "listening":
            listening.set()

    profile = bathhouse_card("7", 1944, 3, 1, idm=IDM)
    thread = threading.Thread(target=run_felica_udp, args=(profile, "127.0.0.1", 0, stop, on_event))
    thread.start()
    try:
        assert listening.wait(5)
        port = events[0][1]["port"]
        assert isinstance(port, int)
        with reader(f"udp:127.0.0.1:{port}") as clf:
            tag = connect(clf)
            assert read_blocks(tag, 0x000B, 2) == b"".join(profile.services[0x000B])
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    names = [name for name, _ in events]
    assert names[0] == "listening"
    assert "activated" in names


def test_cli_arguments_build_each_kind():
    parser = argparse.ArgumentParser()
    add_felica_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["felica", "--udp", "127.0.0.1:54321", "--kind", "bathhouse", "--member", "123", "--idm", IDM.hex()]
    )
    assert args.udp == ("127.0.0.1", 54321)
    profile = profile_from_args(args)
    assert profile.idm == IDM
    assert profile.services[0x000B][1][:3] == b"123"
    checkin = profile_from_args(parser.parse_args(["felica", "--kind", "checkin", "--member", "99"]))
    assert checkin.services[0x000B] == (b"99" + bytes(14),)
    transit = profile_from_args(parser.parse_args(["felica", "--kind", "transport"]))
    assert transit.system_code == 0x0003
    with pytest.raises(SystemExit):
        parser.parse_args(["felica", "--udp", "0.0.0.0:54321"])


def test_run_felica_command_serves_and_quits(monkeypatch):
    parser = argparse.ArgumentParser()
    add_felica_parser(parser.add_subparsers(dest="command"))
    monkeypatch.setattr("sys.stdin", io.StringIO("remove\ninsert\nbogus\nquit\n"))
    started = time.monotonic()
    assert run_felica_command(parser.parse_args(["felica", "--udp", "127.0.0.1:0", "--kind", "checkin"])) == 0
    assert time.monotonic() - started < 5
    bad = parser.parse_args(["felica", "--udp", "127.0.0.1:0", "--kind", "bathhouse", "--member", "abc"])
    assert run_felica_command(bad) == 78
