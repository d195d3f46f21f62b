"""A scripted transport (testing tier 2): it fails on any unexpected APDU and on leftovers at close.

No MagicMock stands in for a card: a transcript says exactly which bytes the card receives and answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.transport import ReaderCapabilities


def HEX(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


class TranscriptMismatch(AssertionError):
    pass


@dataclass
class Exchange:
    command: bytes
    response: bytes | Callable[[], bytes]


@dataclass
class ScriptedTransport:
    """Answers each expected command with its scripted response, in order."""

    script: list[Exchange] = field(default_factory=list)
    capabilities: ReaderCapabilities = field(default_factory=lambda: ReaderCapabilities(0x10000))
    sent: list[bytes] = field(default_factory=list)

    def expect(self, command: str | bytes, response: str | bytes | Callable[[], bytes]) -> ScriptedTransport:
        cmd = HEX(command) if isinstance(command, str) else command
        resp = HEX(response) if isinstance(response, str) else response
        self.script.append(Exchange(cmd, resp))
        return self

    def transmit(self, apdu: bytes) -> bytes:
        apdu = bytes(apdu)
        self.sent.append(apdu)
        if not self.script:
            raise TranscriptMismatch(f"unexpected APDU after the script ended: {apdu.hex()}")
        step = self.script.pop(0)
        if apdu != step.command:
            raise TranscriptMismatch(f"expected {step.command.hex()}, got {apdu.hex()}")
        return step.response() if callable(step.response) else step.response

    def close(self) -> None:
        if self.script:
            left = ", ".join(s.command.hex() for s in self.script)
            raise TranscriptMismatch(f"{len(self.script)} scripted APDUs never sent: {left}")
