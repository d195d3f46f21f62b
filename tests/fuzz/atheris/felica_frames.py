"""FeliCa frames: the ``parse_*`` functions of ``protocols.felica`` and a ``FelicaSession`` (block reads,
Request System Code, Request Service) over a card answering from the input, after a Polling answer
that is itself the first answer. Only a ``ReaderdError`` may come out."""

from __future__ import annotations

from tests.fuzz.atheris._common import instrument, run, split_answers

with instrument():
    from protocols.errors import ReaderdError
    from protocols.felica import (
        BlockElement,
        FelicaSession,
        ServiceCode,
        parse_polling_response,
        parse_read_without_encryption_response,
        parse_request_service_response,
        parse_request_system_code_response,
    )
    from tests.fuzz.atheris._transcript import TranscriptCard

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("protocols.felica",)

IDM = bytes.fromhex("0123456789ABCDEF")
SERVICES = (ServiceCode.from_int(0x000B), ServiceCode.from_int(0x008B))


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    try:
        if mode & 0x80:  # the parsers alone, on the whole frame
            n = (mode >> 2) % 16
            which = mode % 4
            if which == 0:
                parse_polling_response(rest, (mode >> 2) % 3)
            elif which == 1:
                parse_read_without_encryption_response(rest, IDM, n)
            elif which == 2:
                parse_request_system_code_response(rest, IDM)
            else:
                parse_request_service_response(rest, IDM, n)
            return
        answers = split_answers(rest)
        if not answers:
            return
        polling = parse_polling_response(answers.pop(0))
        session = FelicaSession(TranscriptCard(answers), polling, max_blocks_per_read=1 + mode % 15)
        action = (mode >> 4) % 3
        if action == 0:
            blocks = [BlockElement(0, i) for i in range(1 + (mode & 0x0F))]
            session.read_blocks(SERVICES[:1], blocks)
        elif action == 1:
            session.request_system_codes()
        else:
            session.request_service(SERVICES)
    except ReaderdError:
        pass


if __name__ == "__main__":
    run(TestOneInput)
