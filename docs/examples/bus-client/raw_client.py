"""A LAN client of readerd written against the wire only: pyzmq and json, nothing from readerd.

It is the reference for a client in another language: every ZeroMQ call here has a one-to-one
equivalent in libzmq's bindings (zmq_setsockopt ZMQ_CURVE_SERVERKEY/PUBLICKEY/SECRETKEY, ZMQ_SUBSCRIBE,
zmq_connect, zmq_send/recv of multipart messages). It subscribes, asks ``events.since`` for what it
missed (also after every gap in ``seq`` and when a heartbeat is ahead), and prints each event once, in
order, as one JSON line.

    python raw_client.py --publish tcp://kiosk-3:7410 --control tcp://kiosk-3:7411 \
        --server-key 'rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7' \
        --public '...' --secret '...' --since 0 --count 10
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any

import zmq


def curve(sock: zmq.Socket[bytes], args: argparse.Namespace) -> None:
    if args.server_key:  # z85 text keys, 40 characters each
        sock.setsockopt(zmq.CURVE_SERVERKEY, args.server_key.encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, args.public.encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, args.secret.encode())


def since(dealer: zmq.Socket[bytes], seq: int) -> list[dict[str, Any]]:
    """events.since until ``more`` is false: frames [b"", json] out, [b"", json] back (DEALER)."""
    events: list[dict[str, Any]] = []
    while True:
        request_id = str(uuid.uuid4())
        body = {"id": request_id, "cmd": "events.since", "args": {"seq": seq}}
        dealer.send_multipart([b"", json.dumps(body).encode()])
        while True:
            if not dealer.poll(5000):
                raise SystemExit("the control endpoint does not answer")
            reply = json.loads(dealer.recv_multipart()[-1])
            if reply.get("id") == request_id:
                break
        if not reply["ok"]:  # gap_unrecoverable: {"oldest_seq": N} in details; start again from there
            error = reply["error"]
            if error["code"] != "gap_unrecoverable":
                raise SystemExit(f"events.since refused: {error}")
            sys.stderr.write(f"lost events {seq + 1}..{error['details']['oldest_seq'] - 1}\n")
            seq = error["details"]["oldest_seq"] - 1
            continue
        events += reply["result"]["events"]
        if not reply["result"]["more"]:
            return events
        seq = events[-1]["seq"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--publish", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--server-key", help="the daemon's CURVE public key (readerctl keys list)")
    parser.add_argument("--public", help="this client's CURVE public key")
    parser.add_argument("--secret", help="this client's CURVE secret key")
    parser.add_argument("--since", type=int, help="resume after this seq (omit: start with the live feed)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many events")
    args = parser.parse_args()

    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    dealer = context.socket(zmq.DEALER)
    for sock in (sub, dealer):
        sock.setsockopt(zmq.LINGER, 0)
        curve(sock, args)
    sub.connect(args.publish)
    sub.setsockopt(zmq.SUBSCRIBE, b"")  # everything: seq counts every event, so filter after
    dealer.connect(args.control)

    last: int | None = args.since
    printed = 0
    while args.count <= 0 or printed < args.count:
        if not sub.poll(15_000):  # three heartbeats missed
            raise SystemExit("no heartbeat for 15 s: the daemon is down or this key is not allowed")
        topic, body = sub.recv_multipart()  # frames: [topic, json envelope]
        env = json.loads(body)
        if last is None:  # starting with the live feed
            last = env["seq"] if topic == b"heartbeat" else env["seq"] - 1
        behind = env["seq"] > last if topic == b"heartbeat" else env["seq"] > last + 1
        if topic == b"heartbeat" and not behind:
            continue
        batch = since(dealer, last) if behind else [env]
        for event in batch:
            if event["seq"] <= last:
                continue  # already printed: a duplicate from the live feed
            last = event["seq"]
            print(json.dumps(event, ensure_ascii=False), flush=True)
            printed += 1
            if printed == args.count:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
