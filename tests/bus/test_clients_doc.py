"""docs/clients.md's raw client (pyzmq and json only: what a client in another language does) against
a CURVE bus: it catches up from seq 0 and prints each event once, in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from readerd import events as ev
from tests.bus.conftest import CurveBus

RAW_CLIENT = Path(__file__).parents[2] / "docs" / "examples" / "bus-client" / "raw_client.py"


def test_the_raw_client_of_the_docs_catches_up_and_follows(curve_bus: CurveBus) -> None:
    keys = curve_bus.keys("raw", "subscribe")
    for i in range(5):
        curve_bus.bus.publish(ev.Event("card.presented", "R", {"i": i}))
    command = [
        sys.executable,
        str(RAW_CLIENT),
        "--publish",
        curve_bus.bus.publish_endpoint,
        "--control",
        curve_bus.bus.control_endpoint,
        # key=value: a Z85 key may begin with "-", which argparse would take for an option
        f"--server-key={keys.server_public.decode()}",
        f"--public={keys.public.decode()}",
        f"--secret={keys.secret.decode()}",
        "--since",
        "0",
        "--count",
        "8",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as client:
        assert client.stdout is not None
        first = [json.loads(client.stdout.readline()) for _ in range(5)]  # the history
        for i in range(5, 8):  # then live ones
            curve_bus.bus.publish(ev.Event("card.presented", "R", {"i": i}))
        rest = [json.loads(client.stdout.readline()) for _ in range(3)]
        assert client.wait(10) == 0
    assert [e["data"]["i"] for e in first + rest] == list(range(8))
    assert [e["seq"] for e in first + rest] == list(range(1, 9))
