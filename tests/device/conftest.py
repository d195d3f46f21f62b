"""The device tests' skip and their fixtures: a daemon on the real reader, and the technician's prompts.

Every test here carries ``pytest.mark.device`` (with the backend it needs: ``device("pcsc")``); the
autouse fixture below skips it unless ``READERD_DEVICE`` names such a reader (tests/device/spec.py), so
both the normal run and ``pytest -m device`` skip them cleanly on a machine without one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from readerd.config import NfcConfig, PcscConfig
from tests.device.checks import Technician
from tests.device.spec import DeviceSpec, device_from_env, skip_reason, timeout_from_env
from tests.support.daemon import RunningDaemon, Subscriber, hardware_config, running_daemon


@pytest.fixture(autouse=True)
def _real_reader_or_skip(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("device")
    if marker is None:  # the skip logic's own tests run everywhere
        return
    backend = marker.args[0] if marker.args else None
    reason = skip_reason(os.environ, backend)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def device() -> DeviceSpec:
    spec = device_from_env(os.environ)
    assert spec is not None  # the autouse fixture skipped the test otherwise
    return spec


@pytest.fixture
def technician(capsys: pytest.CaptureFixture[str]) -> Technician:
    def say(text: str) -> None:
        with capsys.disabled():
            print(f"\n>>> {text}", flush=True)  # the technician reads the terminal

    return Technician(say, timeout_from_env(os.environ))


@pytest.fixture
def device_daemon(tmp_path: Path, device: DeviceSpec) -> Iterator[tuple[RunningDaemon, Subscriber]]:
    """A daemon in this process on the real reader only, and a subscriber to its card events."""
    if device.backend == "pcsc":
        config = hardware_config(
            tmp_path / "state", ("pcsc",), pcsc=PcscConfig(readers=(device.name,), felica_transparent=True)
        )
    else:
        config = hardware_config(tmp_path / "state", ("nfc",), nfc=NfcConfig(devices=(device.name,)))
    with running_daemon(config) as d, d.subscriber("card.", "reader.") as sub:
        yield d, sub
