"""A Sony RC-S380 (nfcpy over libusb) with a real My Number Card (Type B) and a FeliCa card.

The udev rule must be installed and port100 not loaded (`readerctl doctor`: usb_access, port100).

Run on a kiosk, with the reader plugged in and readerd stopped (tests/device/__init__.py)::

    sudo systemctl stop readerd
    sudo READERD_DEVICE="nfc:usb" /tmp/readerd-test/bin/python -m pytest -m device \\
        tests/device/test_rcs380_nfc.py
    sudo systemctl start readerd

Each test starts a daemon in the test process on that reader only and prompts on the terminal; the
technician has ``READERD_DEVICE_TIMEOUT`` seconds (30) per step. Skipped unless ``READERD_DEVICE`` names a
``nfc:`` reader. Cost: a minute or two of tapping.
"""

from __future__ import annotations

import pytest

from protocols.jpki import pin_tries_query
from tests.device.cards import GET_RESPONSE_INS, SELECT_INS, VERIFY_INS, tries_over_nfc
from tests.device.checks import (
    MY_NUMBER,
    Technician,
    identify_my_number_card,
    pull_mid_read,
    read_felica_card,
)
from tests.device.spec import DeviceSpec
from tests.support.daemon import RunningDaemon, Subscriber

pytestmark = [pytest.mark.device("nfc"), pytest.mark.timeout(300)]


def test_a_my_number_card_is_identified(
    device_daemon: tuple[RunningDaemon, Subscriber], technician: Technician
) -> None:
    _d, sub = device_daemon
    identify_my_number_card(sub, technician)


def test_the_pin_tries_are_only_asked(device: DeviceSpec, technician: Technician) -> None:
    """SELECT and the tries query, nothing else: no PIN is ever sent (tests/device/cards.py)."""
    technician.say(MY_NUMBER + " (and leave it there)")
    status, sent = tries_over_nfc(device.name, technician.timeout)
    assert 0 <= status.tries_left <= 3
    assert sent[-1] == pin_tries_query().encode()
    assert {apdu[1] for apdu in sent} <= {SELECT_INS, VERIFY_INS, GET_RESPONSE_INS}
    technician.say(f"tries left: {status.tries_left}; take the card off / カードを離してください")


def test_a_felica_card_is_read(
    device_daemon: tuple[RunningDaemon, Subscriber], technician: Technician
) -> None:
    _d, sub = device_daemon
    read_felica_card(sub, technician)


def test_a_card_pulled_mid_read(
    device_daemon: tuple[RunningDaemon, Subscriber], technician: Technician
) -> None:
    d, sub = device_daemon
    pull_mid_read(d, sub, technician)
