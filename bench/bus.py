"""Bus throughput and latency to 1, 10 and 50 subscribers, CURVE on and off, beside raw pyzmq PUB/SUB.

What is measured, all in one run on one machine, for each subscriber count and CURVE off/on:

- ``readerd``: events given to ``Bus.publish`` (the daemon's bus thread stamps each with its seq,
  appends it to the SQLite event log in the state directory, WAL + synchronous=NORMAL, and sends it on
  the PUB socket) and received by N plain SUB sockets over TCP loopback. With CURVE: the ZAP handler on
  the bus thread admits the subscribers' keys from an allowlist, as in production.
- ``raw``: a bare pyzmq PUB socket sending the same ``[topic, json]`` frames of the same size (the
  ``card.identified`` envelope's), to the same N subscribers; with CURVE, the same keys (no ZAP handler:
  libzmq then admits every key, so raw CURVE is the cipher's cost alone).
- ``events/s``: a burst of ``--events`` events, published as fast as possible; the rate at which every
  subscriber has received every event (the slowest subscriber ends the run).
- ``p50``/``p99``: latency from the publish call to the subscriber's receive, over every delivery of a
  paced run (``--rate`` events per second, ``--latency-events`` events), so it is the bus's latency and
  not the queueing of a burst.
- ``lost``: deliveries missing at the end (send HWM and receive HWM are raised so a burst fits; a loss
  here would be a bug, not back-pressure).

Every subscriber is a thread of this process with its own socket (the GIL is shared, for readerd and raw
alike). Run: ``python -m bench.bus [--events 5000] [--subscribers 1 10 50] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from readerd import events as ev
from readerd.bus.client import CurveKeys
from readerd.bus.curve import Allowlist, allowlist_dir, load_or_create_server_keys
from readerd.bus.eventlog import EventLog
from readerd.bus.server import Bus, CurveServer
from readerd.config import BusConfig
from readerd.logging import configure as configure_logging

HWM: Final = 1_000_000
# A card.identified's public data, the size the LAN sees.
DATA: Final = {
    "kind": "jpki",
    "pseudonym": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "enrolled": True,
    "member_id": "7K3M9Q2P",
    "repeat": False,
    "apdus": 2,
    "read_path": "extended_sfi",
}


@dataclass
class Subscriber:
    sock: zmq.Socket[bytes]
    expected: int = 0
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    live: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.sock.poll(50):
                continue
            topic, body = self.sock.recv_multipart()
            now = time.perf_counter()
            if topic in (b"heartbeat", b"warmup"):
                self.live.set()
                continue
            self.latencies.append(now - json.loads(body)["data"]["t"])
            self.received += 1
            if self.received >= self.expected:
                self.done.set()


@dataclass
class Rig:
    """N subscribers on one endpoint, and a way to publish one event (readerd's bus or a raw PUB)."""

    publish: Callable[[int], None]
    subscribers: list[Subscriber]
    stop: threading.Event
    threads: list[threading.Thread]
    close: Callable[[], None]

    def round(self, n: int, pace: float | None) -> tuple[float, list[float], int]:
        for sub in self.subscribers:
            sub.expected, sub.received, sub.latencies = n, 0, []
            sub.done.clear()
        started = time.perf_counter()
        for i in range(n):
            if pace:
                while time.perf_counter() < started + i / pace:
                    time.sleep(0.0002)
            self.publish(i)
        deadline = time.monotonic() + 60
        for sub in self.subscribers:
            sub.done.wait(max(0.0, deadline - time.monotonic()))
        elapsed = time.perf_counter() - started
        lost = sum(n - s.received for s in self.subscribers)
        return elapsed, [x for s in self.subscribers for x in s.latencies], lost


def _subscribers(
    endpoint: str, n: int, keys: CurveKeys | None
) -> tuple[list[Subscriber], threading.Event, list[threading.Thread]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    stop = threading.Event()
    subs = []
    for _ in range(n):
        sock: zmq.Socket[bytes] = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, HWM)
        if keys is not None:
            keys.apply(sock)
        sock.connect(endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        subs.append(Subscriber(sock))
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in subs]
    for thread in threads:
        thread.start()
    return subs, stop, threads


def _close(subs: list[Subscriber], stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for thread in threads:
        thread.join(5)
    for sub in subs:
        sub.sock.close()


def readerd_rig(state: Path, n: int, curve: bool) -> Rig:
    config = BusConfig(
        publish="tcp://127.0.0.1:0",
        control="tcp://127.0.0.1:0",
        heartbeat_interval=0.05,
        send_hwm=HWM,
        queue_size=HWM,
    )
    server = None
    keys = None
    if curve:
        pair, _ = load_or_create_server_keys(state / "curve")
        public, secret = zmq.curve_keypair()
        allowlist = Allowlist(allowlist_dir(state / "curve"))
        allowlist.allow("bench", public, "subscribe")
        server = CurveServer(pair, allowlist)
        keys = CurveKeys(pair.public, public, secret)
    log = EventLog(state / "events.db", max_events=10 * HWM)
    bus = Bus(config, kiosk="bench", event_log=log, curve=server)
    bus.start()
    subs, stop, threads = _subscribers(bus.publish_endpoint, n, keys)
    for sub in subs:  # heartbeats: every subscription is live
        if not sub.live.wait(10):
            raise RuntimeError("a subscriber never heard a heartbeat")

    def publish(_i: int) -> None:
        bus.publish(ev.Event("card.identified", "Sim 00", {**DATA, "t": time.perf_counter()}))

    def close() -> None:
        _close(subs, stop, threads)
        bus.stop()
        log.close()

    return Rig(publish, subs, stop, threads, close)


def raw_rig(n: int, curve: bool) -> Rig:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    pub: zmq.Socket[bytes] = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, HWM)
    keys = None
    if curve:
        server_public, server_secret = zmq.curve_keypair()
        pub.curve_server = True
        pub.curve_secretkey = server_secret
        pub.curve_publickey = server_public
        public, secret = zmq.curve_keypair()
        keys = CurveKeys(server_public, public, secret)
    pub.bind("tcp://127.0.0.1:*")
    subs, stop, threads = _subscribers(pub.getsockopt_string(zmq.LAST_ENDPOINT), n, keys)
    deadline = time.monotonic() + 10
    while not all(s.live.is_set() for s in subs):  # the slow joiner: warm up until everyone hears
        if time.monotonic() > deadline:
            raise RuntimeError("a raw subscriber never connected")
        pub.send_multipart([b"warmup", b"{}"])
        time.sleep(0.01)
    envelope = ev.stamp(
        ev.Event("card.identified", "Sim 00", dict(DATA)), seq=0, run_id="r" * 36, kiosk="bench"
    )
    base = envelope.public_dict()
    lock = threading.Lock()  # the bus thread owns its socket; here the caller's thread does

    def publish(i: int) -> None:
        body = {**base, "seq": i, "data": {**DATA, "t": time.perf_counter()}}
        with lock:
            pub.send_multipart([b"card.identified", json.dumps(body, separators=(",", ":")).encode()])

    def close() -> None:
        _close(subs, stop, threads)
        pub.close()

    return Rig(publish, subs, stop, threads, close)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def measure(make: Callable[[], Rig], events: int, latency_events: int, rate: float) -> dict[str, Any]:
    rig = make()
    try:
        elapsed, _lat, lost_burst = rig.round(events, None)
        _elapsed, latencies, lost_paced = rig.round(latency_events, rate)
    finally:
        rig.close()
    return {
        "events_per_s": events / elapsed,
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
        "lost": lost_burst + lost_paced,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per burst (throughput)")
    parser.add_argument("--latency-events", type=int, default=300, help="events of the paced run")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s of the paced run (latency)")
    parser.add_argument("--subscribers", type=int, nargs="+", help="subscriber counts (default 1 10 50)")
    parser.add_argument("--quick", action="store_true", help="a small run (CI smoke test)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.latency_events, args.rate = 300, 50, 500.0
    if args.subscribers is None:
        args.subscribers = [1, 10] if args.quick else [1, 10, 50]
    configure_logging("WARNING", "console")
    rows: list[dict[str, Any]] = []
    size = len(
        ev.stamp(
            ev.Event("card.identified", "Sim 00", DATA), seq=1, run_id="r" * 36, kiosk="bench"
        ).public_json()
    )
    with tempfile.TemporaryDirectory(prefix="readerd-bench-bus-") as tmp:
        for n in args.subscribers:
            for curve in (False, True):
                for kind in ("readerd", "raw"):
                    state = Path(tmp) / f"{kind}-{n}-{curve}"
                    state.mkdir()

                    def make(kind: str = kind, state: Path = state, n: int = n, curve: bool = curve) -> Rig:
                        return readerd_rig(state, n, curve) if kind == "readerd" else raw_rig(n, curve)

                    result = measure(make, args.events, args.latency_events, args.rate)
                    rows.append({"kind": kind, "subscribers": n, "curve": curve, **result})
                    sys.stderr.write(f"{kind:8} subs={n:<3} curve={curve!s:5} {result}\n")
    out = sys.stdout
    out.write(f"\nreaderd bus vs raw pyzmq PUB/SUB, {size}-byte envelopes, {platform.python_version()}, ")
    out.write(f"burst {args.events} events, latency at {args.rate:g}/s over {args.latency_events} events\n\n")
    out.write("| path | subscribers | CURVE | events/s | p50 ms | p99 ms | lost |\n")
    out.write("|---|---:|---|---:|---:|---:|---:|\n")
    for row in rows:
        out.write(
            f"| {row['kind']} | {row['subscribers']} | {'on' if row['curve'] else 'off'} "
            f"| {row['events_per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['lost']} |\n"
        )
    if args.json:
        args.json.write_text(json.dumps({"payload_bytes": size, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
