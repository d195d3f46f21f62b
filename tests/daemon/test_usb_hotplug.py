"""USB NFC readers: enumeration against nfcpy's table, and the nfc backend's hotplug with real devices.

CI has no USB reader, so enumeration is fed pyusb-shaped device objects, and the hotplug test feeds the
backend's discovery with nfcpy ``udp`` devices that appear and disappear: the device threads, nfcpy and
the events are the real ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from readerd.config import NfcConfig
from readerd.reading.backends.nfc import NfcBackend
from readerd.reading.backends.usb import UsbReader, UsbWatcher, supported_ids, supported_readers
from readerd.reading.sessions import CardSessions
from simulators.felica import checkin_card
from simulators.felica_udp import FelicaUdpCard

pytestmark = pytest.mark.timeout(60)

RCS380 = (0x054C, 0x06C3)


@dataclass
class FakeUsbDevice:
    idVendor: int
    idProduct: int
    bus: int
    address: int


def test_supported_ids_are_nfcpys_and_include_the_sony_readers() -> None:
    table = supported_ids()
    assert table[RCS380] == "rcs380"
    assert table[(0x054C, 0x02E1)] == "rcs956"  # RC-S330/360/370


def test_enumeration_keeps_supported_readers_only_in_bus_order() -> None:
    devices = [
        FakeUsbDevice(0x1D6B, 0x0002, 1, 1),  # a root hub
        FakeUsbDevice(*RCS380, bus=3, address=7),
        FakeUsbDevice(0x072F, 0x2200, 1, 4),  # ACR122U
    ]
    readers = supported_readers(lambda: devices)
    assert readers == [UsbReader(1, 4, 0x072F, 0x2200, "acr122"), UsbReader(3, 7, *RCS380, "rcs380")]
    assert [r.path for r in readers] == ["usb:001:004", "usb:003:007"]
    assert readers[1].ids == "054c:06c3"


def test_watcher_reports_plugged_and_unplugged_once() -> None:
    now: list[UsbReader] = []
    watcher = UsbWatcher(lambda: list(now))
    assert watcher.poll() == ([], [])
    rcs = UsbReader(3, 7, *RCS380, "rcs380")
    now.append(rcs)
    assert watcher.poll() == ([rcs], [])
    assert watcher.poll() == ([], [])
    now.clear()
    replugged = UsbReader(3, 8, *RCS380, "rcs380")  # a replugged reader gets a new address
    now.append(replugged)
    assert watcher.poll() == ([replugged], [rcs])


def test_hotplugged_readers_come_and_go_with_events(tmp_path: Path) -> None:
    events: list[tuple[str, str | None]] = []
    seen = threading.Condition()

    def sink(event: object) -> None:
        with seen:
            events.append((str(event.type), event.reader))  # type: ignore[attr-defined]
            seen.notify_all()

    def wait_for(entry: tuple[str, str]) -> None:
        with seen:
            assert seen.wait_for(lambda: entry in events, timeout=15), events

    from readerd.reading.identity import IdentityResolver, SqliteDirectory  # noqa: PLC0415

    sessions = CardSessions(
        IdentityResolver(bytes(32), SqliteDirectory(tmp_path / "m.db")), sink, deadline=3, repeat_window=1
    )
    plugged: list[str] = []
    with FelicaUdpCard(checkin_card("C0001")) as one, FelicaUdpCard(checkin_card("C0002")) as two:
        backend = NfcBackend(
            NfcConfig(devices=("usb",)), sessions, discover=lambda: list(plugged), hotplug_interval=0.05
        )
        backend.start()
        try:
            plugged.extend([one.path, two.path])
            wait_for(("card.identified", f"nfc {one.path}"))
            wait_for(("card.identified", f"nfc {two.path}"))
            assert {r["name"] for r in backend.readers()} == {f"nfc {one.path}", f"nfc {two.path}"}
            plugged.remove(one.path)
            wait_for(("reader.removed", f"nfc {one.path}"))
            assert [r["name"] for r in backend.readers()] == [f"nfc {two.path}"]
            assert backend.alive()
        finally:
            backend.stop()
    added = {reader for kind, reader in events if kind == "reader.added"}
    assert added == {f"nfc {one.path}", f"nfc {two.path}"}
