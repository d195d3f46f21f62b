"""The LAN subscriber of :mod:`bench.plugin_pipeline`, in a process of its own, as a kiosk screen, the
web console or a ward bridge is: it subscribes to the daemon's PUB endpoint and tells the bench, one line
per fact on stdout, when each tap was identified and when its last plugin result arrived.

In the bench's own process it parsed every event's JSON while the daemon's threads waited for the GIL,
and that waiting counted as the daemon's CPU (its threads' context switches); no LAN subscriber of a
kiosk shares the daemon's GIL. Times are ``time.perf_counter()``, CLOCK_MONOTONIC on Linux: the same
clock as the bench's.

Lines: ``ready`` (a heartbeat came: the subscription is live), ``i SEQ TIME BYTES`` (``card.identified``
with its public JSON's size), ``d SEQ TIME`` (the tap with that seq has all its plugins' results),
``a JSON`` (``card.read_aborted``), ``e JSON`` (``plugin.error``).

Run by the bench: ``python -m bench.lan_watcher PUBLISH_ENDPOINT PLUGINS``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import zmq

PREFIXES = (b"card.identified", b"card.read_aborted", b"plugin.", b"heartbeat")


def watch(publish: str, plugins: int) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(publish)
    for prefix in PREFIXES:
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
    out = sys.stdout
    ready = False
    results: dict[int, int] = {}
    while True:
        topic, body = sub.recv_multipart()
        now = time.perf_counter()
        if topic == b"heartbeat":
            if not ready:
                ready = True
                out.write("ready\n")
                out.flush()
            continue
        if topic == b"card.identified":
            seq = json.loads(body)["seq"]
            out.write(f"i {seq} {now!r} {len(body)}\n")
        elif topic == b"card.read_aborted":
            out.write(f"a {body.decode()}\n")
        elif topic.startswith(b"plugin.noop"):
            seq = json.loads(body)["data"]["seq"]
            results[seq] = results.get(seq, 0) + 1
            if results[seq] < plugins:
                continue
            del results[seq]
            out.write(f"d {seq} {now!r}\n")
        elif topic == b"plugin.error":
            out.write(f"e {body.decode()}\n")
        else:
            continue
        out.flush()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):  # the bench kills it when done
        watch(sys.argv[1], int(sys.argv[2]))
