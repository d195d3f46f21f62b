"""Event envelopes read back (the private feed, the event log, clients): ``Envelope.from_json`` and
``parse_envelope``. What may come out: an envelope (which must encode again), a JSON decode error, or the
``ValueError`` these functions document ("not an envelope", "an envelope is a JSON object", "envelope
lacks"); anything else is a finding."""

from __future__ import annotations

import json

from tests.fuzz.atheris._common import instrument, run

with instrument():
    from readerd.events import Envelope, parse_envelope

DOCUMENTED = ("not an envelope", "an envelope is a JSON object", "envelope lacks")


def _documented(error: ValueError) -> bool:
    return isinstance(error, json.JSONDecodeError | UnicodeDecodeError) or str(error).startswith(DOCUMENTED)


def TestOneInput(data: bytes) -> None:
    try:
        envelope = Envelope.from_json(data)
    except ValueError as e:
        if not _documented(e):
            raise
    else:
        envelope.public_json()
        envelope.private_json()
    try:
        parse_envelope(data)
    except ValueError as e:
        if not _documented(e):
            raise


if __name__ == "__main__":
    run(TestOneInput)
