"""The allow-list guard: the one choke point every APDU of a card session passes.

readerd must never touch the applications that hold the My Number or the citizen's name and address,
nor the signature key and its PIN. Rather than listing what is forbidden (and missing a truncated AID, a
SELECT by path or another logical channel), the guard admits only the exact commands readerd needs
(docs/design.md D3) and refuses everything else with :class:`DeniedCommandError` before it reaches the
card. It also follows the card state it can see (selected AP and EF, a successful VERIFY) so that, for
instance, a signature is only ever requested right after a VERIFY in the same transaction.

The card-info application identifiers appear in this module only, in :data:`DENIED_APPLICATIONS`, to name
them in errors and in tests; no code path builds a SELECT for them.
"""

from __future__ import annotations

import logging
from enum import Enum

from protocols.apdu import (
    INS_GET_RESPONSE,
    INS_PSO,
    INS_READ_BINARY,
    INS_SELECT,
    INS_VERIFY,
    CommandApdu,
    Response,
)
from protocols.errors import BadResponseError, DeniedApplicationError, DeniedCommandError
from protocols.jpki_constants import (
    JPKI_AID,
    PIN_LENGTH,
    READABLE_EFS,
    SELECTABLE_EFS,
    SFI_TO_EF,
    JpkiEf,
)
from protocols.status_words import READ_SUCCESS_SWS, SW, is_more_data
from protocols.transport import ReaderCapabilities, Transport

log = logging.getLogger(__name__)

#: Below DEBUG: APDU traces are for developers on a bench, never on by default.
TRACE = 5

#: Applications readerd refuses to select, with the reason (docs/card-facts.md §1). Never built, only named.
DENIED_APPLICATIONS: dict[bytes, str] = {
    bytes.fromhex("D3921000310001010408"): "券面事項入力補助AP (holds the My Number)",
    bytes.fromhex("D3921000310001010402"): "券面AP (card-face data and the My Number)",
    bytes.fromhex("D3921000310001010401"): "住基AP (resident registry)",
    bytes.fromhex("D3921000310001010100"): "card-info common DF (manufacture number)",
}

#: JPKI files readerd never uses: the signature certificate, key and PIN (docs/design.md, "Card safety
#: and privacy (hard rules)").
DENIED_EFS: dict[int, str] = {
    0x0001: "signature certificate",
    0x001A: "signature private key",
    0x001B: "signature PIN",
}

#: The largest DigestInfo a PKCS#1 v1.5 signature with a 2048-bit key can carry (256 - 11 bytes).
MAX_DIGEST_INFO = 245


class SessionKind(Enum):
    """What a guarded transport is for: the JPKI allow-list, or FeliCa pseudo-APDUs through PC/SC."""

    JPKI = "jpki"
    FELICA = "felica"


def _deny(command: CommandApdu, why: str) -> DeniedCommandError:
    header = f"{command.cla:02X} {command.ins:02X} {command.p1:02X} {command.p2:02X}"
    return DeniedCommandError(f"refused {header}: {why}")


def format_command(command: CommandApdu) -> str:
    """Hex of a command for traces, with PIN bytes redacted."""
    head = f"{command.cla:02X}{command.ins:02X}{command.p1:02X}{command.p2:02X}"
    if command.ins == INS_VERIFY and command.data:
        return f"{head} <PIN redacted>"
    body = command.data.hex().upper()
    le = "" if command.ne is None else f" Le={command.ne}"
    return f"{head} {body}{le}".rstrip()


def format_response(command: CommandApdu, response: Response) -> str:
    """Status word and, for file reads, only the length: certificates are not for logs."""
    if command.ins == INS_READ_BINARY and response.data:
        return f"<{len(response.data)} bytes> SW={response.sw:04X}"
    return f"{response.data.hex().upper()} SW={response.sw:04X}".lstrip()


class GuardedTransport:
    """A :class:`Transport` that admits only the allow-listed commands for its :class:`SessionKind`."""

    def __init__(self, inner: Transport, kind: SessionKind = SessionKind.JPKI) -> None:
        self._inner = inner
        self.kind = kind
        self.apdu_count = 0
        self.reset()

    @property
    def capabilities(self) -> ReaderCapabilities:
        return self._inner.capabilities

    def reset(self) -> None:
        """Forget the card state: a new transaction, a card reset or a new card."""
        self.ap_selected = False
        self.current_ef: int | None = None
        self.verified = False
        self._more_data_pending = False

    # -- the checks -----------------------------------------------------------------------------------
    def check(self, command: CommandApdu) -> None:
        """Raise :class:`DeniedCommandError` unless ``command`` is allowed in the current state."""
        if self.kind is SessionKind.FELICA:
            self._check_felica(command)
        else:
            self._check_jpki(command)

    def _check_felica(self, command: CommandApdu) -> None:
        # PC/SC part 3 pseudo-APDUs only: GET DATA (UID / PMm) and the transparent session.
        if command.cla != 0xFF:
            raise _deny(command, "a FeliCa session sends only FF-class pseudo-APDUs")
        if command.ins == 0xCA and command.p1 in (0x00, 0x01) and command.p2 == 0x00 and not command.data:
            return
        if command.ins == 0xC2 and command.p1 == 0x00 and command.p2 in (0x00, 0x01, 0x02):
            return
        raise _deny(command, "not a PC/SC FeliCa pseudo-APDU readerd uses")

    def _check_jpki(self, command: CommandApdu) -> None:
        key = (command.cla, command.ins)
        if key == (0x00, INS_SELECT):
            self._check_select(command)
        elif key == (0x00, INS_GET_RESPONSE):
            self._check_get_response(command)
        elif not self.ap_selected:
            raise _deny(command, "the JPKI AP is not selected")
        elif key == (0x00, INS_READ_BINARY):
            self._check_read(command)
        elif key == (0x00, INS_VERIFY) and (command.p1, command.p2) == (0x00, 0x80):
            self._check_verify(command)
        elif key == (0x80, INS_PSO) and (command.p1, command.p2) == (0x00, 0x80):
            self._check_sign(command)
        else:
            raise _deny(command, "not on the allow-list")

    def _check_get_response(self, command: CommandApdu) -> None:
        if command.p1 or command.p2 or command.data or command.ne is None:
            raise _deny(command, "malformed GET RESPONSE")
        if not self._more_data_pending:
            raise _deny(command, "GET RESPONSE only after a 61xx answer")

    def _check_read(self, command: CommandApdu) -> None:
        if command.data or command.ne is None:
            raise _deny(command, "READ BINARY carries no data and needs Le")
        if command.p1 & 0x80:
            if command.p1 & 0x60:
                raise _deny(command, "reserved bits in the short-EF form of READ BINARY")
            if (command.p1 & 0x1F) not in SFI_TO_EF:
                raise _deny(command, f"short EF identifier {command.p1 & 0x1F:02X} is not allow-listed")
        elif self.current_ef not in READABLE_EFS:
            raise _deny(command, "the current EF is not an allow-listed readable file")

    def _check_verify(self, command: CommandApdu) -> None:
        if self.current_ef != JpkiEf.AUTH_PIN:
            raise _deny(command, "VERIFY only of the user-authentication PIN (EF 0018)")
        if command.ne is not None:
            raise _deny(command, "VERIFY carries no Le")
        if command.data and not (len(command.data) == PIN_LENGTH and command.data.isdigit()):
            raise _deny(command, "VERIFY data must be empty or 4 ASCII digits")

    def _check_sign(self, command: CommandApdu) -> None:
        if self.current_ef != JpkiEf.AUTH_KEY:
            raise _deny(command, "signature only with the user-authentication key (EF 0017) selected")
        if not self.verified:
            raise _deny(command, "signature only after a successful VERIFY in this transaction")
        if not 0 < len(command.data) <= MAX_DIGEST_INFO:
            raise _deny(command, "signature input must be a DigestInfo of 1..245 bytes")

    def _check_select(self, command: CommandApdu) -> None:
        p1, p2, data = command.p1, command.p2, command.data
        if p1 == 0x04:
            if data in DENIED_APPLICATIONS:
                raise DeniedApplicationError(f"refused SELECT of {DENIED_APPLICATIONS[data]}")
            if data != JPKI_AID:
                raise DeniedApplicationError(f"refused SELECT of application {data.hex().upper()}")
            if p2 != 0x0C or command.ne is not None:
                raise _deny(command, "the JPKI AP is selected with P2=0C and no Le")
            return
        if p1 == 0x02:
            if p2 != 0x0C or command.ne is not None or len(data) != 2:
                raise _deny(command, "SELECT EF is 00 A4 02 0C 02 <FID>")
            fid = int.from_bytes(data, "big")
            if fid in DENIED_EFS:
                raise _deny(command, f"EF {fid:04X} is the {DENIED_EFS[fid]}: never used")
            if fid not in SELECTABLE_EFS:
                raise _deny(command, f"EF {fid:04X} is not allow-listed")
            if not self.ap_selected:
                raise _deny(command, "the JPKI AP is not selected")
            return
        raise _deny(command, "only SELECT by DF name (04) and by EF identifier (02) are allowed")

    # -- the state it follows -------------------------------------------------------------------------
    def _observe(self, command: CommandApdu, response: Response) -> None:
        self._more_data_pending = is_more_data(response.sw)
        ok = response.sw == SW.OK or self._more_data_pending
        if command.ins == INS_SELECT:
            if command.p1 == 0x04:
                # Re-selecting the AP is also the card's logout: the verified state is gone either way.
                self.ap_selected = ok
                self.current_ef = None
                self.verified = False
            else:
                self.current_ef = int.from_bytes(command.data, "big") if ok else None
        elif command.ins == INS_READ_BINARY and command.p1 & 0x80 and response.sw in READ_SUCCESS_SWS:
            self.current_ef = SFI_TO_EF[command.p1 & 0x1F]  # ISO 7816-4: a short-EF read selects the EF
        elif command.ins == INS_VERIFY and command.data:
            self.verified = response.sw == SW.OK

    # -- Transport ------------------------------------------------------------------------------------
    def transmit(self, apdu: bytes) -> bytes:
        try:
            command = CommandApdu.decode(apdu)
        except BadResponseError as e:  # the decoder reports malformed input as a bad response
            raise DeniedCommandError(f"refused malformed APDU: {e}") from e
        self.check(command)
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "> %s", format_command(command))
        raw = self._inner.transmit(apdu)
        self.apdu_count += 1
        response = Response.parse(raw)
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "< %s", format_response(command, response))
        if self.kind is SessionKind.JPKI:
            self._observe(command, response)
        return raw
