"""A FeliCa card behind a PC/SC reader: ``PcscFelica`` (GET DATA for the IDm and PMm, the part-3
transparent session, Polling through it) over a reader answering pseudo-APDUs from the input, plus the
part-3 response parsers. Only a ``ReaderdError`` may come out."""

from __future__ import annotations

from tests.fuzz.atheris._common import instrument, run, split_answers

with instrument():
    from protocols.errors import ReaderdError
    from protocols.felica import (
        PcscFelica,
        build_polling,
        is_felica_atr,
        parse_generic_status,
        parse_transparent_response,
    )
    from tests.fuzz.atheris._transcript import TranscriptCard

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("protocols.felica",)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0], data[1:]
    try:
        if mode & 0x80:  # the parsers alone
            (parse_transparent_response, parse_generic_status, is_felica_atr)[mode % 3](rest)
            return
        felica = PcscFelica(TranscriptCard(split_answers(rest)))
        try:
            felica.idm()
            felica.pmm()
            felica.open()
            if mode & 1:
                felica.poll()
            else:
                felica.exchange(build_polling(), 0.05)
        finally:
            felica.close()
    except ReaderdError:
        pass


if __name__ == "__main__":
    run(TestOneInput)
