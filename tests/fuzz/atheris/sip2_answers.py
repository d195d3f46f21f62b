"""SIP2 answers from a library system (``protocols.sip2.parse``, UTF-8 and cp932), then what the
library plugin does with a parsed message (``missing``, ``get``, ``flag``, ``encode``). Only a
``ReaderdError`` may come out."""

from __future__ import annotations

import contextlib

from tests.fuzz.atheris._common import instrument, run

with instrument():
    from protocols import sip2
    from protocols.errors import ReaderdError

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("protocols.sip2",)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    encoding = "cp932" if data[0] & 1 else "utf-8"
    try:
        message = sip2.parse(data[1:], encoding)
    except ReaderdError:
        return
    message.missing()
    message.get("AO")
    message.flag("ok")
    with contextlib.suppress(ReaderdError):
        message.encode(encoding)


if __name__ == "__main__":
    run(TestOneInput)
