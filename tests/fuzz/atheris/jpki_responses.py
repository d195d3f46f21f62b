"""JPKI card answers: a ``JpkiSession`` (select, identify, token, PIN status, verify, sign) over a card
answering from the input, plus the JPKI response parsers. Only a ``ReaderdError`` may come out."""

from __future__ import annotations

from tests.fuzz.atheris._common import instrument, run, split_answers

with instrument():
    from protocols.apdu import Response
    from protocols.errors import ReaderdError
    from protocols.jpki import (
        JpkiSession,
        ReadPath,
        UserAuthCertificate,
        digest_info,
        parse_pin_status,
        parse_token,
    )
    from protocols.transport import ReaderCapabilities
    from tests.fuzz.atheris._transcript import TranscriptCard

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("protocols.jpki", "protocols.apdu", "protocols.guard")

CAPABILITIES = (ReaderCapabilities(), ReaderCapabilities(0), ReaderCapabilities(65535))
PATHS = (None, *ReadPath)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    try:
        if mode & 0x80:  # the parsers alone
            parser = (
                parse_token,
                UserAuthCertificate.from_der,
                lambda b: parse_pin_status(Response.parse(b)),
            )
            parser[mode % 3](rest)
            return
        card = TranscriptCard(split_answers(rest), CAPABILITIES[mode % 3])
        session = JpkiSession(card, read_path=PATHS[(mode >> 2) % len(PATHS)])
        action = (mode >> 5) % 4
        if action == 0:
            session.identify()
        elif action == 1:
            session.read_token()
        elif action == 2:
            session.pin_status()
            session.verify("1234")
        else:
            session.sign(digest_info(bytes(32)))
    except ReaderdError:
        pass


if __name__ == "__main__":
    run(TestOneInput)
