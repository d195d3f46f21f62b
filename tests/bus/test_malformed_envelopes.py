"""Messages that are not envelopes: the event_envelopes fuzzer's findings (tests/fuzz/atheris).

``Envelope.from_json`` (the private feed, the event log) raised ``OverflowError`` for ``"seq": Infinity``
(Python's JSON reader takes it) instead of its documented ``ValueError("not an envelope: ...")``; it took
a number for ``reader`` (or ``cause``), which failed only when the envelope was encoded again.

``Stream.live`` reads ``seq`` as an integer, ``type`` and ``run_id``; a JSON object without them made
``BusClient.next`` raise ``KeyError`` (no ``type``) or ``OverflowError`` (``"seq": Infinity``) from deep
inside the client. Now ``_parse`` refuses such a message with the ``ValueError`` the envelope readers
document ("envelope lacks ...") and a warning. The inputs are the fuzzer's corpus entries (their first
byte is the harness's client mode, the rest the message body)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import zmq

from readerd.bus.client import BusClient, Stream, Verdict, _parse
from readerd.events import Envelope

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus" / "event_envelopes"
FINDINGS = sorted(CORPUS.glob("crash-client-*"))
NOT_ENVELOPES = [
    b'{"seq": "1", "type": "card.presented", "run_id": "r"}',
    b'{"seq": true, "type": "card.presented", "run_id": "r"}',
    b'{"seq": NaN, "type": "card.presented", "run_id": "r"}',
    b'{"seq": 1, "type": 7, "run_id": "r"}',
    b'{"seq": 1, "type": "card.presented"}',
]


def test_the_fuzzers_findings_are_in_the_corpus() -> None:
    assert len(FINDINGS) >= 2, FINDINGS


@pytest.mark.parametrize(
    "body", [p.read_bytes()[1:] for p in FINDINGS] + NOT_ENVELOPES, ids=lambda b: b.decode()[:40]
)
def test_a_message_the_stream_cannot_follow_is_refused_by_name_and_logged(body: bytes) -> None:
    with structlog.testing.capture_logs() as logs, pytest.raises(ValueError, match=r"^envelope lacks"):
        _parse(body)
    assert [e["event"] for e in logs] == ["a live message is not an envelope"]
    assert logs[0]["size"] == len(body)


def test_an_envelope_read_back_with_an_infinite_seq_is_not_an_envelope() -> None:
    body = (CORPUS / "crash-envelope-seq-infinity").read_bytes()[1:]
    with pytest.raises(ValueError, match=r"^not an envelope: OverflowError"):
        Envelope.from_json(body)
    finite = Envelope.from_json(body.replace(b"Infinity", b"12"))
    assert finite.seq == 12


@pytest.mark.parametrize("field", ["reader", "cause"])
def test_an_envelope_read_back_with_a_number_for_a_reader_or_cause_is_not_an_envelope(field: str) -> None:
    """The fuzzer's finding: ``"reader": 7`` was taken, and encoding the envelope again (the split plugin
    host, a client's re-publication) raised ``TypeError`` deep in the encoder."""
    body = (CORPUS / "crash-envelope-reader-number").read_bytes()[1:]
    if field == "cause":
        body = body.replace(b'"reader":7', b'"reader":null,"cause":7')
    with pytest.raises(ValueError, match=r"^not an envelope: TypeError: reader and cause are strings"):
        Envelope.from_json(body)
    named = Envelope.from_json(body.replace(b":7", b':"Sim 00"'))
    assert named.public_json()


def test_an_envelope_still_goes_through() -> None:
    env = _parse(b'{"seq": 3, "type": "card.presented", "run_id": "r", "data": {}}')
    stream = Stream(2, ())
    assert stream.live(env) is Verdict.DELIVER
    assert stream.take(env)
    assert stream.last_seq == 3


def _read_until_one_arrives(client: BusClient, pub: zmq.Socket[bytes], body: bytes) -> None:
    """A SUB socket joins late: send until the client has read one message."""
    while True:
        pub.send_multipart([b"card.presented", body])
        try:
            client.next(timeout=0.05)
        except TimeoutError:
            continue


def test_a_subscriber_gets_the_named_error_from_a_real_feed() -> None:
    """A publisher on the feed's endpoint that is not readerd (no CURVE on loopback): the client's
    ``next`` says ``ValueError: envelope lacks ...``, not ``KeyError``."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    body = FINDINGS[0].read_bytes()[1:]
    try:
        with BusClient(f"tcp://127.0.0.1:{port}", "tcp://127.0.0.1:1", heartbeat_timeout=60) as client:
            with pytest.raises(ValueError, match=r"^envelope lacks"):
                _read_until_one_arrives(client, pub, body)
            assert client.stats.delivered == 0
    finally:
        pub.close()
