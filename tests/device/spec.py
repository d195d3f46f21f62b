"""``READERD_DEVICE``: which real reader the device tests use, and whether a test can run on it.

Kept apart from conftest.py so the normal suite tests the skip logic itself (test_skip_logic.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: The environment variable naming the reader; unset: every device test is skipped.
ENV = "READERD_DEVICE"
#: Seconds a technician has for each step, overridable on slow days.
TIMEOUT_ENV = "READERD_DEVICE_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
BACKENDS = ("pcsc", "nfc")


@dataclass(frozen=True)
class DeviceSpec:
    """``pcsc:<reader name prefix>`` or ``nfc:<nfcpy path>``."""

    backend: str
    name: str

    @classmethod
    def parse(cls, value: str) -> DeviceSpec:
        backend, sep, name = value.strip().partition(":")
        if not sep or backend not in BACKENDS or not name.strip():
            raise ValueError(
                f"{ENV}={value!r}: expected pcsc:<reader name prefix> or nfc:<nfcpy path, e.g. usb>"
            )
        return cls(backend, name.strip())


def device_from_env(environ: Mapping[str, str]) -> DeviceSpec | None:
    """The reader ``READERD_DEVICE`` names; None when it is unset or empty (ValueError: malformed)."""
    value = environ.get(ENV, "").strip()
    return DeviceSpec.parse(value) if value else None


def timeout_from_env(environ: Mapping[str, str]) -> float:
    value = environ.get(TIMEOUT_ENV, "").strip()
    return float(value) if value else DEFAULT_TIMEOUT_S


def skip_reason(environ: Mapping[str, str], backend: str | None) -> str | None:
    """Why a device test for ``backend`` (None: any) cannot run here, or None when it can."""
    try:
        spec = device_from_env(environ)
    except ValueError as e:
        return str(e)
    if spec is None:
        return f"no real reader: set {ENV}=pcsc:<reader> or nfc:usb on a kiosk (tests/device/__init__.py)"
    if backend is not None and spec.backend != backend:
        return f"needs a {backend} reader; {ENV} names a {spec.backend} one ({spec.name})"
    return None
