"""Fixtures of the bus tests: a bus with CURVE on loopback and keys for its clients."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.client import BusClient, CurveKeys
from readerd.bus.curve import Allowlist, allowlist_dir, generate, load_or_create_server_keys, read_certificate
from readerd.bus.eventlog import EventLog
from readerd.bus.server import Bus, CurveServer
from readerd.config import BusConfig


@dataclass
class CurveBus:
    bus: Bus
    curve_dir: Path
    allowlist: Allowlist

    def keys(self, name: str, role: str | None = "control") -> CurveKeys:
        """A client key pair; allowed with ``role`` unless None."""
        public_path, secret_path = generate(self.curve_dir.parent / "clients-own", name)
        if role is not None:
            pair, _ = read_certificate(public_path)
            Allowlist(allowlist_dir(self.curve_dir)).allow(name, pair.public, role)
        return CurveKeys.from_files(self.curve_dir / "server.key", secret_path)

    def client(self, keys: CurveKeys, **kwargs: Any) -> BusClient:
        return BusClient(self.bus.publish_endpoint, self.bus.control_endpoint, curve=keys, **kwargs)


@pytest.fixture
def curve_bus(tmp_path: Path) -> Iterator[CurveBus]:
    curve_dir = tmp_path / "curve"
    keys, created = load_or_create_server_keys(curve_dir)
    assert created
    assert (curve_dir / "server.key_secret").stat().st_mode & 0o777 == 0o600
    allowlist = Allowlist(allowlist_dir(curve_dir))
    config = BusConfig(publish="tcp://127.0.0.1:0", control="tcp://127.0.0.1:0", heartbeat_interval=0.05)
    log = EventLog(tmp_path / "events.db")
    bus = Bus(config, kiosk="k", event_log=log, curve=CurveServer(keys, allowlist, poll=0.1))
    bus.register_command("points.redeem", lambda _req: {"redeemed": True})
    bus.register_command("mykey.relink", lambda _req: {"relinked": True}, role="operator")
    bus.start()
    yield CurveBus(bus, curve_dir, allowlist)
    bus.stop()
    log.close()
