"""The device tests' skip logic, in the normal suite: without ``READERD_DEVICE`` (or with another kind of
reader, or a malformed value) a device test is skipped with a reason that says how to run it.

Cost: a few milliseconds (no reader, no daemon).
"""

from __future__ import annotations

import pytest

from tests.device.spec import DeviceSpec, device_from_env, skip_reason, timeout_from_env


def test_unset_or_empty_skips_every_device_test() -> None:
    for environ in ({}, {"READERD_DEVICE": ""}, {"READERD_DEVICE": "  "}):
        assert device_from_env(environ) is None
        reason = skip_reason(environ, "pcsc")
        assert reason is not None
        assert "READERD_DEVICE=pcsc:<reader>" in reason


def test_a_reader_of_the_other_kind_skips() -> None:
    environ = {"READERD_DEVICE": "nfc:usb"}
    assert skip_reason(environ, "nfc") is None
    assert skip_reason(environ, None) is None
    assert skip_reason(environ, "pcsc") == "needs a pcsc reader; READERD_DEVICE names a nfc one (usb)"


def test_a_pcsc_reader_is_named_by_a_prefix() -> None:
    environ = {"READERD_DEVICE": "pcsc:SONY FeliCa RC-S300"}
    assert device_from_env(environ) == DeviceSpec("pcsc", "SONY FeliCa RC-S300")
    assert skip_reason(environ, "pcsc") is None


@pytest.mark.parametrize("value", ["usb", "pcsc:", "serial:/dev/ttyUSB0", ":x"])
def test_a_malformed_value_skips_with_the_format(value: str) -> None:
    reason = skip_reason({"READERD_DEVICE": value}, None)
    assert reason is not None
    assert "expected pcsc:<reader name prefix> or nfc:<nfcpy path" in reason
    with pytest.raises(ValueError, match="expected pcsc"):
        device_from_env({"READERD_DEVICE": value})


def test_the_timeout_per_step() -> None:
    assert timeout_from_env({}) == 30.0
    assert timeout_from_env({"READERD_DEVICE_TIMEOUT": "90"}) == 90.0
