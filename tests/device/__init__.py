"""Tests on real readers and cards, run by a technician at a kiosk (marker ``device``).

They need a real reader named in ``READERD_DEVICE`` and a person to tap the cards; everywhere else (a
developer's machine, CI) every one of them is skipped, ``pytest -m device`` included. How to run them on
a kiosk, from the source tree, in a virtualenv of their own with the test dependencies, the daemon
stopped (it must not hold the reader meanwhile):

    cd /usr/local/src/readerd
    python3 -m venv /tmp/readerd-test && /tmp/readerd-test/bin/pip install -e '.[dev]'
    sudo systemctl stop readerd
    sudo READERD_DEVICE="pcsc:SONY FeliCa RC-S300" /tmp/readerd-test/bin/python -m pytest -m device \\
        tests/device
    sudo READERD_DEVICE="nfc:usb" /tmp/readerd-test/bin/python -m pytest -m device tests/device
    sudo systemctl start readerd

``READERD_DEVICE`` is ``pcsc:<a prefix of the reader's name as pcsc_scan shows it>`` for a PC/SC reader
(RC-S300: tests/device/test_rcs300_pcsc.py) or ``nfc:<an nfcpy path>`` (``usb``, ``usb:054c:06c3``) for a
reader nfcpy drives (RC-S380: tests/device/test_rcs380_nfc.py). Each test prints what to do on the
terminal ("hold the My Number Card on the reader") and waits ``READERD_DEVICE_TIMEOUT`` seconds (30 by
default) for it. Have a My Number Card and a FeliCa card (the ward's bath-house or check-in card, or a
transit card) at hand. No test sends a PIN: the PIN test only asks how many tries are left.
"""
