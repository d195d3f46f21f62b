"""A flood on the control socket does not delay card events (a daemon in a process of its own).

While ten LAN clients send 1,000 ``events.since`` requests and another sends 100 requests larger than
``bus.max_request_bytes`` (spread over about two seconds), taps keep coming: their card events arrive
about as fast as without the flood, none is lost, the daemon stays healthy and small. Latency is
compared within this test (no fixed figure): the p99 of tap -> ``card.identified`` under the flood is at
most twice the p99 without it, with a floor of 5 ms for timer noise on a busy 2-core machine.
Cost: about 5 s.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from readerd.bus.control_client import ControlSession, request
from tests.support.ports import free_tcp_port

TAPS = 60
NOISE_FLOOR_S = 0.005


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, str, str]]:
    publish, control = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    config = tmp_path / "readerd.toml"
    config.write_text('kiosk = "flood"\n[plugins]\nenabled = false\n', encoding="utf-8")
    command = [
        sys.executable, "-m", "readerd.cli.main", "run", "--simulate", "--config", str(config),
        "--state-dir", str(tmp_path / "state"), "--publish", publish, "--control", control,
        "--heartbeat", "0.2", "--log-level", "WARNING", "--log-format", "json",
    ]  # fmt: skip
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()[-2000:]
            try:
                if request(control, "status", timeout_ms=500)["ok"]:
                    break
            except Exception:  # noqa: S110 - not up yet
                pass
            assert time.monotonic() < deadline, "the daemon did not answer within 30 s"
        yield process, publish, control, f"ipc://{tmp_path / 'state' / 'run' / 'control.sock'}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _tap_latencies(session: ControlSession, sub: zmq.Socket[bytes], count: int) -> list[float]:
    """Tap ``count`` cards (each removed again) and time each tap request to its ``card.identified``."""
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        reply = session.request(
            "tap", {"card": f"flood{i % 3}", "reader": "Simulated Reader 00"}, timeout_ms=10_000
        )
        assert reply["ok"], reply
        while True:
            assert sub.poll(10_000), "no card.identified within 10 s"
            topic, _body = sub.recv_multipart()
            if topic == b"card.identified":
                latencies.append(time.perf_counter() - started)
                break
        assert session.request("remove", {"reader": "Simulated Reader 00"}, timeout_ms=10_000)["ok"]
    return latencies


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


#: The flood, in a process of its own (its sends and reads must not share the GIL with the taps timed
#: here): 1,000 ``events.since`` from ten clients and 100 oversize requests over about two seconds, then
#: every answer read back and counted by outcome (one JSON line on stdout).
FLOOD = """
import json, sys, time, uuid, zmq
from collections import Counter
control = sys.argv[1]
context = zmq.Context()
flooders = [context.socket(zmq.DEALER) for _ in range(11)]
since = json.dumps({"id": "x", "cmd": "events.since", "args": {"seq": 0}}).encode()
pad = {"pad": "x" * 70_000}
oversize = json.dumps({"id": str(uuid.uuid4()), "cmd": "status", "args": pad}).encode()
for flooder in flooders:
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.SNDHWM, 0)
    flooder.connect(control)
print("ready", flush=True)
sys.stdin.readline()  # go
for _ in range(100):
    for flooder in flooders[:10]:
        flooder.send_multipart([b"", since])
    flooders[10].send_multipart([b"", oversize])
    time.sleep(0.02)
counts = Counter()
for flooder in flooders[:10]:
    for _ in range(100):
        if not flooder.poll(5000):
            break
        reply = json.loads(flooder.recv_multipart()[-1])
        counts["ok" if reply["ok"] else reply["error"]["code"]] += 1
print(json.dumps(counts))
"""


def test_a_control_flood_does_not_delay_card_events(
    daemon: tuple[subprocess.Popen[bytes], str, str, str],
) -> None:
    process, publish, control, local = daemon
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(publish)
    sub.setsockopt(zmq.SUBSCRIBE, b"card.identified")
    time.sleep(0.3)  # the subscription reaches the daemon (slow joiner)
    try:
        with ControlSession(local) as session:  # the kiosk's own socket; the flood comes over TCP
            _tap_latencies(session, sub, 5)  # warm up: the simulator builds its cards once
            # The flooder starts (an interpreter, zmq) before the quiet taps, and floods when told.
            flood = subprocess.Popen(
                [sys.executable, "-c", FLOOD, control],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert flood.stdin is not None
            assert flood.stdout is not None
            assert flood.stdout.readline().strip() == "ready"
            quiet = _tap_latencies(session, sub, TAPS)
            flood.stdin.write("go\n")
            flood.stdin.flush()
            flooded: list[float] = []
            while flood.poll() is None or len(flooded) < TAPS:
                flooded += _tap_latencies(session, sub, 1)
            status = session.request("status", timeout_ms=10_000)
    finally:
        sub.close()
    out, _ = flood.communicate(timeout=30)  # closes its pipes
    counts = json.loads(out)
    answered = sum(counts.get(code, 0) for code in ("ok", "rate_limited", "busy"))
    assert answered == 1000, f"every events.since got an answer (events or rate_limited/busy): {counts}"
    assert counts.get("ok", 0) >= 10, counts
    assert status["ok"], status
    assert status["result"]["healthy"], status
    assert status["result"]["dropped"] == {}, "no event was dropped"
    assert _rss_mib(process.pid) < 200
    assert _p99(flooded) <= 2 * max(_p99(quiet), NOISE_FLOOR_S), (
        f"p99 {_p99(flooded) * 1000:.1f} ms under the flood ({len(flooded)} taps), "
        f"{_p99(quiet) * 1000:.1f} ms without"
    )
