"""The daemon's card sessions (``readerd.reading.sessions.CardSessions``) against cards that answer
arbitrary bytes.

A *transcript* is the list of answers a card gives, in order, whatever it is asked; the answers start
from what the simulator's real cards say (so mutated runs get deep into a read) and are then mutated by
hypothesis, or are taken from the corpus (``tests/fuzz/corpus/``). One run feeds a transcript to one
entry point of the daemon's session layer and checks what :func:`check_outcome` promises:

- the call returns (never raises), within the session deadline (a timeout here is a hang: these cards
  never stall), after a bounded number of commands;
- it ends with exactly one ``card.identified`` (and an identity) or one ``card.read_aborted`` whose
  error is a named ReaderdError code (``internal_error`` means another exception leaked from the
  session), or, on the contact path, with a card recognised as not a My Number Card (``card.presented``
  of kind ``unknown`` and no outcome);
- ``card.presented`` comes first when there is one.

Targets: ``contact`` (JPKI read, extended-length reader), ``contact_short`` (a reader without extended
APDUs: the SELECT EF + chunked READ BINARY path), ``felica`` (FeliCa frames after Polling, with block
reads configured), ``pcsc_felica`` (a FeliCa card behind a PC/SC reader: GET DATA and the part-3
transparent session).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.felica import PollingResponse, build_polling, parse_polling_response
from protocols.transport import ReaderCapabilities
from readerd.config import FelicaRead
from readerd.events import Event
from readerd.reading.identity import IdentityResolver, SqliteDirectory
from readerd.reading.sessions import CardSessions, ReadResult
from simulators.felica import FelicaPcscCard, VirtualFelicaCard, bathhouse_card
from simulators.inprocess import EXTENDED_CAPABILITIES, SHORT_CAPABILITIES
from simulators.mynumber import CardBehavior, CardProfile, build_card
from simulators.pki import PkiStore

CORPUS = Path(__file__).parent / "corpus"
TARGETS = ("contact", "contact_short", "felica", "pcsc_felica")
READER = "Fuzz 00"
#: Far above any real read (2 to ~12 commands): more means a plan that garbage turned into a loop.
MAX_COMMANDS = 2 + 64 + 64 + 16 * 1024 // 256 + 8
#: A session that needs longer on a card that answers at once is hung.
DEADLINE = 10.0
READS = (
    FelicaRead(name="bathhouse", service_code="000B", blocks=(0, 1), system_code="88B4"),
    FelicaRead(name="any", service_code="008B", blocks=(0,)),
)
NEUTRAL = b"\x90\x00"


@dataclass
class TranscriptCard:
    """Answers APDUs (or FeliCa frames) from a list, whatever is asked; ``9000`` once it runs out."""

    answers: list[bytes]
    capabilities: ReaderCapabilities = EXTENDED_CAPABILITIES
    live: Callable[[bytes], bytes] | None = None  # a real card model instead (recording a base)
    sent: list[bytes] = field(default_factory=list)

    def _next(self, command: bytes) -> bytes:
        self.sent.append(bytes(command))
        if len(self.sent) > MAX_COMMANDS:
            raise AssertionError(f"more than {MAX_COMMANDS} commands: the session does not stop")
        if self.live is not None:
            return self.live(bytes(command))
        return self.answers.pop(0) if self.answers else NEUTRAL

    def transmit(self, apdu: bytes) -> bytes:
        return self._next(apdu)

    def exchange(self, frame: bytes, timeout: float) -> bytes:
        return self._next(frame)


@dataclass
class Outcome:
    result: ReadResult
    events: list[Event]
    commands: int

    def signature(self) -> tuple[object, ...]:
        """What tells one run's ending from another's (the corpus keeps one transcript per signature)."""
        last = self.events[-1] if self.events else None
        data: dict[str, Any] = dict(last.data) if last is not None else {}
        return (
            str(last.type) if last is not None else None,
            data.get("reason"),
            data.get("error"),
            data.get("read_path"),
            tuple(sorted(data.get("services", {}).items())) if "services" in data else None,
            _bucket(self.commands),
        )


def _bucket(commands: int) -> str:
    """Commands sent, coarsely: 0, 1, 2, 3, 4-8 or 9+ (a real read takes 2 to about 12)."""
    if commands <= 3:
        return str(commands)
    return "4-8" if commands <= 8 else "9+"


class SessionFuzzer:
    """One resolver and member directory for many runs (a run costs a thread start and the read)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.directory = SqliteDirectory(state_dir / "members.db")
        self.resolver = IdentityResolver(b"\x42" * 32, self.directory)
        self.pki = PkiStore(state_dir / "pki")
        self._bases: dict[str, list[bytes]] = {}

    def close(self) -> None:
        self.directory.close()

    def sessions(self, events: list[Event]) -> CardSessions:
        return CardSessions(
            self.resolver, events.append, deadline=DEADLINE, repeat_window=0.0, felica_reads=READS
        )

    # -- the real cards' transcripts ------------------------------------------------------------------
    def base(self, target: str) -> list[bytes]:
        """What a good card answers on ``target`` (recorded from the simulator, once)."""
        if target not in self._bases:
            self._bases[target] = self._record(target)
        return list(self._bases[target])

    def _record(self, target: str) -> list[bytes]:
        answers: list[bytes] = []

        def recording(answer: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
            def wrapped(command: bytes) -> bytes:
                out = answer(command)
                answers.append(out)
                return out

            return wrapped

        if target in ("contact", "contact_short"):
            extended = target == "contact"
            card = build_card(
                CardProfile(name="fuzz", behavior=CardBehavior(extended_length=extended)), self.pki
            )
            card.power_on()
            outcome = self.run(target, [], answer=recording(card.process))
        elif target == "felica":
            felica = VirtualFelicaCard(bathhouse_card("FUZZ1", birth_year=1950, ward_code=13101))

            def frame(command: bytes) -> bytes:
                return felica.process_frame(command) or b""

            outcome = self.run(target, [], answer=recording(frame))
        else:
            pcsc = FelicaPcscCard(bathhouse_card("FUZZ1", birth_year=1950, ward_code=13101))
            pcsc.power_on()
            outcome = self.run(target, [], answer=recording(pcsc.process))
        assert outcome.events[-1].type == "card.identified", (target, outcome.events)
        return answers

    # -- one run --------------------------------------------------------------------------------------
    def run(
        self, target: str, answers: list[bytes], *, answer: Callable[[bytes], bytes] | None = None
    ) -> Outcome:
        if target not in TARGETS:
            raise ValueError(f"unknown fuzz target {target!r}")
        capabilities = SHORT_CAPABILITIES if target == "contact_short" else EXTENDED_CAPABILITIES
        card = TranscriptCard(list(answers), capabilities, live=answer)
        events: list[Event] = []
        sessions = self.sessions(events)
        if target in ("contact", "contact_short"):
            result = sessions.read_contact_card(READER, card, b"\x3b\x00")
        elif target == "felica":
            result = sessions.read_felica_card(READER, card, self._polling())
        else:
            result = sessions.read_pcsc_felica_card(READER, card, transparent=True)
        return Outcome(result, events, len(card.sent))

    def _polling(self) -> PollingResponse:
        felica = VirtualFelicaCard(bathhouse_card("FUZZ1", birth_year=1950, ward_code=13101))
        return parse_polling_response(felica.process_frame(build_polling()) or b"")


def check_outcome(target: str, outcome: Outcome) -> None:
    """The promises of the module docstring; an AssertionError names the broken one."""
    events = outcome.events
    types = [str(e.type) for e in events]
    outcomes = [e for e in events if e.type in ("card.identified", "card.read_aborted")]
    assert len(outcomes) <= 1, f"{target}: more than one outcome: {types}"
    if "card.presented" in types:
        assert types.index("card.presented") == 0, f"{target}: card.presented not first: {types}"
        assert types.count("card.presented") == 1, types
    if not outcomes:
        assert target.startswith("contact"), f"{target}: no outcome: {types}"
        assert types == ["card.presented"], types
        assert events[0].data["kind"] == "unknown", events[0].data
        assert str(outcome.result.kind) == "unknown"
        return
    out = outcomes[0]
    assert out is events[-1] or (
        # a stalled card's reader.error follows its abort; never expected here (see below)
        events[-1].type == "reader.error"
    ), types
    if out.type == "card.identified":
        assert outcome.result.identity is not None
        assert out.data["pseudonym"] == outcome.result.identity.pseudonym
        return
    data = out.data
    assert data["error"] != "internal_error", f"{target}: an exception leaked from the session: {data}"
    assert data["reason"] != "internal", data
    assert data["reason"] != "timeout", f"{target}: the session hung on a card that answers at once"
    assert outcome.result.identity is None


# -- the corpus ---------------------------------------------------------------------------------------


def corpus_entries() -> list[Path]:
    return sorted(CORPUS.glob("*/*.json"))


def load_entry(path: Path) -> tuple[str, list[bytes]]:
    entry = json.loads(path.read_text(encoding="utf-8"))
    return str(entry["target"]), [bytes.fromhex(a) for a in entry["answers"]]


def save_entry(target: str, answers: list[bytes], signature: tuple[object, ...], name: str) -> Path:
    path = CORPUS / target / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"target": target, "signature": repr(signature), "answers": [a.hex() for a in answers]}
    path.write_text(json.dumps(entry, indent=1) + "\n", encoding="utf-8")
    return path
