"""The one exception tree of readerd.

It lives in ``protocols`` because that is the lowest layer: the daemon, simulator and plugins raise and
catch the same classes (``readerd.errors`` re-exports them and adds the daemon's own). Every parser in
``protocols`` raises a subclass of :class:`ReaderdError` on bad input, never a bare ``ValueError``,
``IndexError`` or ``struct.error``: callers (and the hypothesis tests) rely on that.
"""

from __future__ import annotations

from protocols.status_words import describe_sw


class ReaderdError(Exception):
    """Root of every error readerd raises on purpose."""

    #: Stable machine-readable code, used on the control channel and in events.
    code: str = "error"

    def details(self) -> dict[str, object]:
        """Machine-readable facts a caller acts on (``tries_left``); the control channel sends them
        beside the code. Never personal data, never a PIN."""
        return {}


# --- transport ---------------------------------------------------------------------------------------
class TransportError(ReaderdError):
    """The reader or the link to the card failed (PC/SC, USB, vpcd socket)."""

    code = "transport_error"


class CardRemovedError(TransportError):
    """The card left the field while a command was in flight."""

    code = "card_removed"


class ReaderUnavailableError(TransportError):
    """The reader vanished or its service (pcscd, USB device) is gone."""

    code = "reader_unavailable"


class ExtendedLengthUnsupportedError(TransportError):
    """The reader (not the card) refused an extended-length APDU; short APDUs may still work."""

    code = "extended_length_unsupported"


# --- responses and encodings -------------------------------------------------------------------------
class BadResponseError(ReaderdError):
    """A response was malformed, truncated or not what the protocol allows."""

    code = "bad_response"


class TruncatedDataError(BadResponseError):
    """Fewer bytes than the structure needs; more data may complete it."""

    code = "truncated"


class MalformedTlvError(BadResponseError):
    """A BER/DER structure that is invalid, indefinite or absurdly long."""

    code = "malformed_tlv"


class CertificateParseError(BadResponseError):
    """The bytes read from the card are not an X.509 certificate we can use."""

    code = "bad_certificate"


class CommandEncodingError(ReaderdError):
    """A command cannot be encoded (e.g. data longer than an extended APDU allows)."""

    code = "bad_command"


# --- the card said no --------------------------------------------------------------------------------
class ApduError(ReaderdError):
    """The card answered with a status word other than success.

    ``str()`` gives the status word and its meaning, e.g. ``SW=6982 (security status not satisfied)``.
    """

    code = "apdu_error"

    def __init__(self, sw: int, data: bytes = b"", message: str | None = None) -> None:
        self.sw = sw
        self.data = bytes(data)
        detail = message or describe_sw(sw)
        super().__init__(f"SW={sw:04X} ({detail})")


class WrongLengthError(ApduError):
    """6700 or 6Cxx: Lc or Le is not what the card accepts."""

    code = "wrong_length"


class SecurityStatusError(ApduError):
    """6982: the command needs a verified PIN (or the EF is protected)."""

    code = "security_status_not_satisfied"


class AuthRequiredError(SecurityStatusError):
    """6982 on the user-auth certificate: a smartphone JPKI token wants the PIN before reading it."""

    code = "auth_required"


class FileNotFoundApduError(ApduError):
    """6A82: application or file not found (on SELECT of the JPKI AP: not a My Number Card)."""

    code = "file_not_found"


class WrongP1P2Error(ApduError):
    """6A86 / 6B00: wrong parameters or offset beyond the end of the file."""

    code = "wrong_p1p2"


class NoCurrentEfError(ApduError):
    """6986: the command needs a selected EF."""

    code = "no_current_ef"


class CommandNotSupportedError(ApduError):
    """6D00 / 6E00 / 6881 / 6981: instruction, class or channel not supported for this file or card."""

    code = "not_supported"


class InvalidPinError(ApduError):
    """63Cx after VERIFY: the PIN was wrong; ``tries_left`` says how many attempts remain."""

    code = "wrong_pin"

    def __init__(self, sw: int, tries_left: int) -> None:
        self.tries_left = tries_left
        super().__init__(sw, message=f"wrong PIN, {tries_left} tries left")

    def details(self) -> dict[str, object]:
        return {"tries_left": self.tries_left}


class PinBlockedError(ApduError):
    """6984 / 6983 (or 63C0): the PIN is blocked; only the municipal office can reset it."""

    code = "pin_blocked"

    def details(self) -> dict[str, object]:
        return {"tries_left": 0}


# --- PIN policy, enforced before anything reaches the card -------------------------------------------
class PinPolicyError(ReaderdError):
    """readerd refused to send a PIN; the card was not asked."""

    code = "pin_refused"


class PinFormatError(PinPolicyError):
    """The PIN is not 4 decimal digits (after NFKC normalisation)."""

    code = "bad_pin_format"


class LastTryRefusedError(PinPolicyError):
    """One try left and the caller did not pass ``allow_last_try``: a wrong PIN now would block the card."""

    code = "last_try_refused"

    def __init__(self, message: str = "only one PIN try left; refusing without allow_last_try") -> None:
        self.tries_left = 1
        super().__init__(message)

    def details(self) -> dict[str, object]:
        return {"tries_left": 1}


class PinStatusUnknownError(PinPolicyError):
    """The tries query did not answer 63Cx/6983/6984: fail closed and send no PIN."""

    code = "pin_status_unknown"


class PinResultUnknownError(ReaderdError):
    """The link failed during VERIFY: whether the try was counted is unknown. Never resent."""

    code = "pin_result_unknown"


# --- safety guard ------------------------------------------------------------------------------------
class DeniedCommandError(ReaderdError):
    """The allow-list guard refused a command; it never reached the card."""

    code = "denied_command"


class DeniedApplicationError(DeniedCommandError):
    """A SELECT of an application readerd must never touch (the card-info APs holding the My Number)."""

    code = "denied_application"


class NotJpkiCardError(ReaderdError):
    """The card has no JPKI AP: not a My Number Card (or the wrong interface)."""

    code = "not_jpki_card"


# --- FeliCa ------------------------------------------------------------------------------------------
class FelicaError(ReaderdError):
    """Base of FeliCa protocol failures."""

    code = "felica_error"


class FelicaFrameError(FelicaError, BadResponseError):
    """A FeliCa response frame with a wrong length, command code or IDm."""

    code = "felica_bad_frame"


class FelicaStatusError(FelicaError):
    """The card answered with non-zero status flags (SF1, SF2)."""

    code = "felica_status"

    def __init__(self, sf1: int, sf2: int) -> None:
        self.sf1 = sf1
        self.sf2 = sf2
        super().__init__(f"FeliCa status flags {sf1:02X} {sf2:02X}")


# --- identifiers -------------------------------------------------------------------------------------
class IdentifierFormatError(ReaderdError):
    """A MyKey ID, member ID or pseudonym key that does not have the documented format."""

    code = "bad_identifier"
