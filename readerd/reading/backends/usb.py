"""USB NFC readers that nfcpy drives: which are plugged in, for hotplug and for ``readerctl doctor``.

The list of supported vendor/product ids is nfcpy's own (``nfc.clf.device.usb_device_map``), so readerd
supports exactly what the library that drives the reader supports, and a new nfcpy release brings its
new readers with it. Enumeration reads the USB descriptors through pyusb (sysfs on Linux): it needs no
permission on the device, so a reader that is plugged in but not accessible is still seen, and opening it
then fails with a permission error that the backend and ``doctor`` report as such.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nfc.clf.device
import structlog
import usb.core

log = structlog.get_logger("readerd.backends.usb")

#: ``nfc.devices`` entry that means "every supported USB reader, as they come and go".
HOTPLUG = "usb"


@dataclass(frozen=True, order=True)
class UsbReader:
    """One supported reader on the bus; ``path`` is the nfcpy device string that opens exactly it."""

    bus: int
    address: int
    vendor: int
    product: int
    driver: str

    @property
    def path(self) -> str:
        return f"usb:{self.bus:03d}:{self.address:03d}"

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.product:04x}"


def supported_ids() -> dict[tuple[int, int], str]:
    """(vendor, product) -> nfcpy driver name, from the installed nfcpy."""
    return dict(nfc.clf.device.usb_device_map)


def _pyusb_devices() -> Iterable[Any]:
    try:
        return list(usb.core.find(find_all=True) or [])
    except (usb.core.NoBackendError, usb.core.USBError, OSError) as e:
        log.warning("usb enumeration failed", error=str(e))
        return []


def supported_readers(devices: Callable[[], Iterable[Any]] = _pyusb_devices) -> list[UsbReader]:
    """The supported readers plugged in now, in bus/address order (``devices``: pyusb's device objects)."""
    table = supported_ids()
    found = []
    for device in devices():
        key = (int(device.idVendor), int(device.idProduct))
        if key in table:
            found.append(UsbReader(int(device.bus), int(device.address), key[0], key[1], table[key]))
    return sorted(found)


class UsbWatcher:
    """Turns successive enumerations into "plugged" and "unplugged" lists (by nfcpy path)."""

    def __init__(self, enumerate_readers: Callable[[], list[UsbReader]] = supported_readers) -> None:
        self._enumerate = enumerate_readers
        self.present: dict[str, UsbReader] = {}

    def poll(self) -> tuple[list[UsbReader], list[UsbReader]]:
        now = {reader.path: reader for reader in self._enumerate()}
        plugged = [reader for path, reader in now.items() if path not in self.present]
        unplugged = [reader for path, reader in self.present.items() if path not in now]
        self.present = now
        return plugged, unplugged
