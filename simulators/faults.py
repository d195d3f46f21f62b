"""Fault scripts: make a simulated card misbehave the way real cards and readers do.

A script is plain data (JSON or TOML) so tests and users can write one without Python::

    # faults.toml
    [[faults]]
    action = "remove"        # the card leaves the field: no answer, the reader sees it gone
    after_apdus = 3          # ... on the 4th APDU

    [[faults]]
    action = "status"        # answer only a status word
    sw = "6F00"
    match = "00B0"           # on the first READ BINARY (hex prefix of the command)

Actions: ``remove``, ``garbage`` (answer ``data`` hex, default ``DEADBEEF``), ``truncate`` (the real
answer cut to ``keep`` bytes, at least 1, status word included), ``stall`` (wait ``seconds``, then
answer), ``status`` (answer ``sw`` alone), ``set_pin_tries`` (set the user-auth PIN counter to
``tries_left`` before the command, as if another terminal had used tries), and ``vanish`` (the reader
link drops for ``seconds``: vicc disconnect and reconnect). Each fault fires once, at the first APDU that
is past ``after_apdus`` and matches ``match`` (when given). What the reading side sees for each, through
pcscd and vpcd, is in docs/simulator.md (tests/simulators/test_faults_on_the_wire.py shows it).
"""

from __future__ import annotations

import json
import threading
import tomllib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from simulators.inprocess import CardModel, CardPulled, ReaderVanished


class FaultAction(Enum):
    REMOVE = "remove"
    GARBAGE = "garbage"
    TRUNCATE = "truncate"
    STALL = "stall"
    STATUS = "status"
    SET_PIN_TRIES = "set_pin_tries"
    VANISH = "vanish"


class FaultScriptError(ValueError):
    """A fault script that cannot be understood; the message names the entry and the field."""


@dataclass
class Fault:
    action: FaultAction
    after_apdus: int = 0
    match: bytes | None = None
    seconds: float = 0.0
    keep: int = 0
    data: bytes = bytes.fromhex("DEADBEEF")
    sw: int = 0x6F00
    tries_left: int = 0
    fired: bool = False

    @classmethod
    def from_dict(cls, entry: dict[str, Any], index: int = 0) -> Fault:
        where = f"fault #{index + 1}"
        try:
            action = FaultAction(entry["action"])
        except (KeyError, ValueError) as e:
            names = ", ".join(a.value for a in FaultAction)
            raise FaultScriptError(f"{where}: 'action' must be one of {names}") from e
        unknown = set(entry) - {
            "action",
            "after_apdus",
            "match",
            "seconds",
            "keep",
            "data",
            "sw",
            "tries_left",
        }
        if unknown:
            raise FaultScriptError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            fault = cls(
                action,
                after_apdus=int(entry.get("after_apdus", 0)),
                match=bytes.fromhex(entry["match"]) if "match" in entry else None,
                seconds=float(entry.get("seconds", 0.0)),
                keep=int(entry.get("keep", 0)),
                data=bytes.fromhex(entry.get("data", "DEADBEEF")),
                sw=int(str(entry.get("sw", "6F00")), 16),
                tries_left=int(entry.get("tries_left", 0)),
            )
        except (TypeError, ValueError) as e:
            raise FaultScriptError(f"{where}: {e}") from e
        if fault.after_apdus < 0 or fault.seconds < 0 or fault.keep < 0 or not 0 <= fault.sw <= 0xFFFF:
            raise FaultScriptError(f"{where}: negative or out-of-range value")
        # An empty answer is no answer: vpcd then waits for bytes that never come and wedges its reader
        # slot in pcscd until the card disconnects (measured). 'stall' and 'remove' say that honestly.
        if action is FaultAction.TRUNCATE and fault.keep < 1:
            raise FaultScriptError(f"{where}: truncate needs keep >= 1 (for no answer use stall or remove)")
        if action is FaultAction.GARBAGE and not fault.data:
            raise FaultScriptError(f"{where}: garbage needs data (for no answer use stall or remove)")
        return fault

    def applies(self, index: int, apdu: bytes) -> bool:
        return (
            not self.fired
            and index >= self.after_apdus
            and (self.match is None or apdu.startswith(self.match))
        )


@dataclass
class FaultScript:
    faults: list[Fault] = field(default_factory=list)

    @classmethod
    def from_data(cls, data: dict[str, Any] | list[dict[str, Any]]) -> FaultScript:
        entries = data.get("faults", []) if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise FaultScriptError("'faults' must be a list")
        return cls([Fault.from_dict(e, i) for i, e in enumerate(entries)])

    @classmethod
    def load(cls, path: Path) -> FaultScript:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise FaultScriptError(f"{path}: {e}") from e
        return cls.from_data(data)


class FaultyCard:
    """Wraps a card model and applies a :class:`FaultScript` to the APDUs it receives.

    Raises :class:`CardPulled` or :class:`ReaderVanished` for the reader side (the in-process reader or
    the vicc bridge) to act on; other faults change or delay the answer.
    """

    def __init__(self, card: CardModel, script: FaultScript, stop: threading.Event | None = None) -> None:
        self.card = card
        self.script = script
        self.apdus = 0
        self._stop = stop or threading.Event()

    @property
    def atr(self) -> bytes:
        return self.card.atr

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def interrupt(self) -> None:
        """End a stall early (test teardown, simulator shutdown)."""
        self._stop.set()

    def process(self, raw: bytes) -> bytes:
        index, self.apdus = self.apdus, self.apdus + 1
        fault = next((f for f in self.script.faults if f.applies(index, raw)), None)
        if fault is None:
            return self.card.process(raw)
        fault.fired = True
        action = fault.action
        if action is FaultAction.REMOVE:
            raise CardPulled
        if action is FaultAction.VANISH:
            raise ReaderVanished(fault.seconds)
        if action is FaultAction.GARBAGE:
            return fault.data
        if action is FaultAction.STATUS:
            return fault.sw.to_bytes(2, "big")
        if action is FaultAction.SET_PIN_TRIES:
            set_tries = getattr(self.card, "set_auth_pin_tries", None)
            if set_tries is None:
                raise FaultScriptError("set_pin_tries needs a My Number card")
            set_tries(fault.tries_left)
            return self.card.process(raw)
        if action is FaultAction.STALL:
            self._stop.wait(fault.seconds)
            return self.card.process(raw)
        return self.card.process(raw)[: fault.keep]  # TRUNCATE
