"""Every parser in ``protocols``, fed arbitrary input, returns a value or raises a ReaderdError.

CI runs a few hundred examples per parser; ``READERD_HYPOTHESIS_EXAMPLES=10000`` is the local soak.
A parser added to ``protocols`` without a harness here fails ``test_every_parser_has_a_harness``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocols
from protocols import sip2
from protocols.apdu import CommandApdu, Response
from protocols.errors import ReaderdError
from protocols.jpki import JpkiSession, UserAuthCertificate, normalize_pin, parse_pin_status, parse_token
from protocols.mykey import normalize_member_id, normalize_mykey_id
from protocols.tlv import certificate_length, certificate_names, common_name, read_der_header
from protocols.transport import ReaderCapabilities

EXAMPLES = int(os.environ.get("READERD_HYPOTHESIS_EXAMPLES", "300"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BYTE_PARSERS: dict[str, Callable[[bytes], Any]] = {
    "apdu.CommandApdu.decode": CommandApdu.decode,
    "apdu.Response.parse": Response.parse,
    "tlv.read_der_header": read_der_header,
    "tlv.certificate_length": certificate_length,
    "tlv.certificate_names": certificate_names,
    "tlv.common_name": common_name,
    "jpki.parse_pin_status": lambda raw: parse_pin_status(Response.parse(raw)),
    "jpki.parse_token": parse_token,
    "jpki.UserAuthCertificate.from_der": UserAuthCertificate.from_der,
    "jpki.normalize_pin": normalize_pin,
    "sip2.parse": sip2.parse,
    "sip2.parse(cp932)": lambda raw: sip2.parse(raw, "cp932"),
}
TEXT_PARSERS: dict[str, Callable[[str], Any]] = {
    "jpki.normalize_pin": normalize_pin,
    "mykey.normalize_mykey_id": normalize_mykey_id,
    "mykey.normalize_member_id": normalize_member_id,
    "sip2.parse_sip_date": sip2.parse_sip_date,
}


def _felica_parsers() -> dict[str, Callable[[bytes], Any]]:
    try:
        felica = importlib.import_module("protocols.felica")
    except ImportError:  # pragma: no cover - the FeliCa codecs land with their own harnesses
        return {}
    return {
        f"felica.{name}": obj
        for name, obj in vars(felica).items()
        if name.startswith("parse_") and inspect.isfunction(obj)
    }


def test_every_parser_has_a_harness() -> None:
    """Names that look like parsers in protocols/ must be fuzzed here (or by their module's own test)."""
    covered = set(BYTE_PARSERS) | set(TEXT_PARSERS) | set(_felica_parsers())
    found = set()
    for info in pkgutil.iter_modules(protocols.__path__):
        module = importlib.import_module(f"protocols.{info.name}")
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) and name.startswith(("parse_", "normalize_", "read_der")):
                found.add(f"{info.name}.{name}")
            if inspect.isclass(obj):
                for meth in ("decode", "parse", "from_der", "unpack"):
                    if meth in vars(obj):
                        found.add(f"{info.name}.{name}.{meth}")
    felica_methods = {n for n in found if n.startswith("felica.") and n.count(".") == 2}
    missing = found - covered - felica_methods
    assert not missing, f"parsers without a never-leak harness: {sorted(missing)}"


def _run(parser: Callable[[Any], Any], value: Any) -> None:
    with contextlib.suppress(ReaderdError):
        parser(value)


@pytest.mark.parametrize("name", sorted(BYTE_PARSERS))
def test_byte_parsers_never_leak(name: str) -> None:
    parser = BYTE_PARSERS[name]

    @fuzz
    @given(st.one_of(st.binary(max_size=64), st.binary(min_size=64, max_size=2100)))
    def run(raw: bytes) -> None:
        _run(parser, raw)

    run()


@pytest.mark.parametrize("name", sorted(TEXT_PARSERS))
def test_text_parsers_never_leak(name: str) -> None:
    parser = TEXT_PARSERS[name]

    @fuzz
    @given(st.text(max_size=20))
    def run(text: str) -> None:
        _run(parser, text)

    run()


def test_der_prefixed_garbage_reaches_deep_into_the_certificate_parser() -> None:
    @fuzz
    @given(st.integers(0, 3000), st.binary(max_size=3000))
    def run(length: int, body: bytes) -> None:
        header = b"\x30\x82" + length.to_bytes(2, "big")
        _run(UserAuthCertificate.from_der, header + body)
        _run(certificate_length, header + body)

    run()


# --- the JPKI session against a card that answers arbitrary bytes -----------------------------------


@dataclass
class ChaosCard:
    answers: list[bytes]
    capabilities: ReaderCapabilities = field(default_factory=lambda: ReaderCapabilities(0x10000))
    sent: int = 0

    def transmit(self, apdu: bytes) -> bytes:
        self.sent += 1
        if not self.answers:
            return b"\x90\x00"
        return self.answers.pop(0)


answer = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\x90\x00", b"\x61\x10", b"\x6c\x00", b"\x62\x82", b"\x63\xc1", b"\x69\x84"]),
    st.binary(min_size=1, max_size=300).map(lambda b: b"\x30\x82\x01\x00" + b + b"\x90\x00"),
)


@fuzz
@given(st.lists(answer, max_size=30), st.booleans(), st.sampled_from(["identify", "token", "pin", "verify"]))
def test_jpki_session_against_chaos(answers: list[bytes], extended: bool, action: str) -> None:
    card = ChaosCard(answers, ReaderCapabilities(0x10000 if extended else 0))
    try:
        session = JpkiSession(card)
        if action == "identify":
            session.identify()
        elif action == "token":
            session.read_token()
        elif action == "pin":
            session.pin_status()
        else:
            session.verify("1234")
    except ReaderdError:
        pass
    # Bounded: no session plan may turn garbage into an unbounded conversation.
    assert card.sent <= 2 + 64 + 64 + 16 * 1024 // 256 + 4
