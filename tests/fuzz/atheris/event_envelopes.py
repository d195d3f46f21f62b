"""Event envelopes read back, by the daemon's own readers and by a subscriber's client.

``Envelope.from_json`` and ``parse_envelope`` (the private feed, the event log); then the path every
message of the live feed takes in ``readerd.bus.client`` (``BusClient.next``, ``AsyncBusClient.next``):
``_parse``, then the client's ``Stream`` verdict on it (deliver, drop, catch up) and, when delivered,
``Stream.take``. What may come out: an envelope (which must encode again), a JSON decode error, or the
``ValueError`` these functions document ("not an envelope", "an envelope is a JSON object", "envelope
lacks"); anything else is a finding.

The first byte of the input picks the client's cursor and topic filter (a client that starts with the
feed, or resumes after seq 0..6; all topics or ``card.`` only); the rest is the message body."""

from __future__ import annotations

import json

from tests.fuzz.atheris._common import instrument, run

with instrument():
    from readerd.bus.client import Stream, Verdict, _parse
    from readerd.events import Envelope, parse_envelope

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("readerd.events", "readerd.bus.client")

DOCUMENTED = ("not an envelope", "an envelope is a JSON object", "envelope lacks")
TOPICS = ((), ("card.",))


def _documented(error: ValueError) -> bool:
    return isinstance(error, json.JSONDecodeError | UnicodeDecodeError) or str(error).startswith(DOCUMENTED)


def _client(mode: int, body: bytes) -> None:
    """One live message into a fresh client's bookkeeping, as ``BusClient.next`` does it."""
    since = None if mode & 7 == 7 else mode & 7
    stream = Stream(since, TOPICS[(mode >> 3) & 1])
    try:
        env = _parse(body)
    except ValueError as e:
        if not _documented(e):
            raise
        return
    verdict = stream.live(env)
    if verdict is Verdict.DELIVER:
        stream.take(env)
        if stream.last_seq is None or stream.last_seq != int(env["seq"]):
            raise AssertionError(f"delivered seq {env['seq']!r} but the cursor is {stream.last_seq!r}")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    try:
        envelope = Envelope.from_json(body)
    except ValueError as e:
        if not _documented(e):
            raise
    else:
        envelope.public_json()
        envelope.private_json()
    try:
        parse_envelope(body)
    except ValueError as e:
        if not _documented(e):
            raise
    _client(mode, body)


if __name__ == "__main__":
    run(TestOneInput)
