"""DER headers (``protocols.tlv``): the length of a certificate from the first bytes read from the card.
Only a ``ReaderdError`` may come out, and a header read must lie within what it was given."""

from __future__ import annotations

from tests.fuzz.atheris._common import instrument, run

with instrument():
    from protocols.errors import ReaderdError
    from protocols.tlv import certificate_length, read_der_header

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("protocols.tlv",)


def TestOneInput(data: bytes) -> None:
    try:
        header = read_der_header(data)
        if header.header_length > len(data):
            raise AssertionError(f"header of {header.header_length} bytes read from {len(data)}")
    except ReaderdError:
        pass
    try:
        if certificate_length(data) <= 0:
            raise AssertionError("a certificate of no bytes")
    except ReaderdError:
        pass


if __name__ == "__main__":
    run(TestOneInput)
