"""The JPKI application: command builders, response parsers, the certificate read planner and
:class:`JpkiSession`, which drives a card through an abstract transport as yubikit's sessions do.

Every command of a session passes the allow-list guard (:mod:`protocols.guard`); the session cannot be
made to select the card-info applications, and neither can anything built on it.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import NameOID

from protocols.apdu import (
    EXTENDED_MAX_NE,
    INS_PSO,
    INS_READ_BINARY,
    INS_SELECT,
    INS_VERIFY,
    SHORT_MAX_NE,
    CommandApdu,
    Response,
    error_for_sw,
    transceive,
)
from protocols.errors import (
    AuthRequiredError,
    BadResponseError,
    CertificateParseError,
    CommandEncodingError,
    ExtendedLengthUnsupportedError,
    LastTryRefusedError,
    MalformedTlvError,
    NotJpkiCardError,
    PinBlockedError,
    PinFormatError,
    PinResultUnknownError,
    PinStatusUnknownError,
    TransportError,
    TruncatedDataError,
)
from protocols.guard import GuardedTransport, SessionKind
from protocols.jpki_constants import (
    JPKI_AID,
    PIN_LENGTH,
    TOKEN_NAMES,
    TOKEN_READ_LENGTH,
    JpkiEf,
    TokenKind,
)
from protocols.status_words import (
    PIN_BLOCKED_SWS,
    READ_SUCCESS_SWS,
    SW,
    counter_value,
    is_counter,
    is_wrong_le,
)
from protocols.tlv import MAX_HEADER_LENGTH, certificate_length, certificate_names, common_name
from protocols.transport import Transport

#: Largest offset READ BINARY can address in its P1-P2 form (P1 bit 8 clear).
MAX_READ_OFFSET = 0x7FFF

#: An RSA-2048 signature (docs/card-facts.md §3.3).
SIGNATURE_LENGTH = 256

#: Status words on an extended read that mean "this card or reader does not do extended length here":
#: fall back to short reads (docs/design.md, "Identification in the fewest APDUs").
EXTENDED_FALLBACK_SWS: frozenset[int] = frozenset(
    {SW.WRONG_LENGTH, SW.WRONG_P1P2, SW.COMMAND_INCOMPATIBLE, SW.INS_NOT_SUPPORTED, SW.WRONG_P1P2_OFFSET}
)

# DigestInfo prefixes (RFC 8017 §9.2 note 1): DER of AlgorithmIdentifier + OCTET STRING header.
_DIGEST_INFO_PREFIX: dict[str, bytes] = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


# --- builders ----------------------------------------------------------------------------------------
def select_jpki_ap() -> CommandApdu:
    return CommandApdu(0x00, INS_SELECT, 0x04, 0x0C, JPKI_AID)


def select_ef(ef: JpkiEf) -> CommandApdu:
    return CommandApdu(0x00, INS_SELECT, 0x02, 0x0C, int(ef).to_bytes(2, "big"))


def read_binary(offset: int, length: int) -> CommandApdu:
    """READ BINARY of the current EF; ``length`` 1..256 (256 is sent as Le=00)."""
    if not 0 <= offset <= MAX_READ_OFFSET:
        raise CommandEncodingError(f"offset {offset} outside 0..{MAX_READ_OFFSET}")
    if not 1 <= length <= SHORT_MAX_NE:
        raise CommandEncodingError(f"short read length {length} outside 1..256")
    return CommandApdu(0x00, INS_READ_BINARY, offset >> 8, offset & 0xFF, ne=length)


def read_binary_sfi(ef: JpkiEf, offset: int = 0, length: int = EXTENDED_MAX_NE) -> CommandApdu:
    """READ BINARY by short EF identifier (no SELECT EF): ``00 B0 <80|SFI> <offset> <Le>``.

    With the default ``length`` this is ``00 B0 8A 00 00 00 00`` for the user-auth certificate: the
    whole file in one extended APDU.
    """
    if not 0 <= offset <= 0xFF:
        raise CommandEncodingError(f"short-EF read offset {offset} outside 0..255")
    return CommandApdu(0x00, INS_READ_BINARY, 0x80 | (int(ef) & 0x1F), offset, ne=length)


def pin_tries_query() -> CommandApdu:
    """VERIFY with no data: the card answers 63Cx with the remaining tries and counts nothing."""
    return CommandApdu(0x00, INS_VERIFY, 0x00, 0x80)


def verify_apdu(pin: bytes | bytearray) -> bytearray:
    """The VERIFY APDU as a mutable buffer, so the caller can zero it after the one transmit."""
    if len(pin) != PIN_LENGTH:
        raise PinFormatError("the user-authentication PIN has 4 digits")
    buf = bytearray((0x00, INS_VERIFY, 0x00, 0x80, len(pin)))
    buf += pin
    return buf


def compute_signature(digest_info: bytes) -> CommandApdu:
    """``80 2A 00 80 Lc <DigestInfo> 00``: the card pads (PKCS#1 v1.5 type 1) and signs."""
    if not 0 < len(digest_info) <= 245:
        raise CommandEncodingError("a DigestInfo for RSA-2048 has 1..245 bytes")
    return CommandApdu(0x80, INS_PSO, 0x00, 0x80, bytes(digest_info), ne=SHORT_MAX_NE)


def digest_info(digest: bytes, algorithm: str = "sha256") -> bytes:
    """DER DigestInfo for a digest computed by the host (the card does not hash)."""
    try:
        prefix = _DIGEST_INFO_PREFIX[algorithm]
    except KeyError:
        raise CommandEncodingError(f"unsupported hash {algorithm!r}") from None
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise CommandEncodingError(f"a {algorithm} digest has {hashlib.new(algorithm).digest_size} bytes")
    return prefix + bytes(digest)


def normalize_pin(pin: str | bytes | bytearray) -> bytearray:
    """The PIN as 4 ASCII digit bytes; full-width digits (０１２３) are NFKC-normalised first.

    Anything else raises :class:`PinFormatError` before it can reach the card. The message never
    contains the PIN.
    """
    if isinstance(pin, bytes | bytearray):
        try:
            text = bytes(pin).decode("ascii")
        except UnicodeDecodeError:
            raise PinFormatError("the PIN must be 4 digits") from None
    else:
        text = unicodedata.normalize("NFKC", pin)
    if len(text) != PIN_LENGTH or not all("0" <= c <= "9" for c in text):
        raise PinFormatError("the PIN must be 4 digits")
    return bytearray(text.encode("ascii"))


# --- parsers -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PinStatus:
    """Remaining tries of the user-authentication PIN."""

    tries_left: int
    blocked: bool

    @property
    def last_try(self) -> bool:
        return self.tries_left == 1 and not self.blocked


def parse_pin_status(response: Response) -> PinStatus:
    """Interpret the answer to the tries query (VERIFY with no data).

    Only 63Cx, 6983 and 6984 are understood; the card never answers 9000 here (docs/card-facts.md §3.1), so
    anything else fails closed with :class:`PinStatusUnknownError`.
    """
    if response.data:
        raise PinStatusUnknownError(f"tries query returned {len(response.data)} unexpected data bytes")
    if is_counter(response.sw):
        tries = counter_value(response.sw)
        return PinStatus(tries_left=tries, blocked=tries == 0)
    if response.sw in PIN_BLOCKED_SWS:
        return PinStatus(tries_left=0, blocked=True)
    raise PinStatusUnknownError(f"tries query answered SW={response.sw:04X}; refusing to send a PIN")


@dataclass(frozen=True)
class JpkiToken:
    """The token EF: what kind of JPKI holder this is."""

    name: str
    kind: TokenKind


def parse_token(data: bytes) -> JpkiToken:
    """The token EF is ASCII padded with spaces (or NULs)."""
    name_bytes = bytes(data).rstrip(b" \x00")
    try:
        name = name_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise BadResponseError("token EF is not ASCII") from None
    if not name.isprintable():
        raise BadResponseError("token EF holds control characters")
    return JpkiToken(name, TOKEN_NAMES.get(name, TokenKind.UNKNOWN))


#: Issuer Names as certificates hold them -> as ``cryptography`` encodes them (the same bytes for a DER
#: certificate; kept so that a pseudonym never depends on which of the two was read). A handful of
#: J-LIS CAs issue every card; the bound keeps a stream of made-up issuers from growing it.
_ISSUERS: dict[bytes, bytes] = {}
MAX_ISSUERS = 64


@dataclass(frozen=True)
class UserAuthCertificate:
    """The user-authentication certificate: the card's identity, readable without a PIN.

    It holds no name or address, but ``not_after`` is the fifth birthday after issuance: it is personal
    data and never published (docs/design.md D1).
    """

    der: bytes
    serial_number: int
    issuer_der: bytes
    subject_cn: str
    not_before: datetime
    not_after: datetime

    @classmethod
    def from_der(cls, der: bytes) -> UserAuthCertificate:
        """Parsed by ``cryptography``, which checks the whole certificate. The two names are taken from
        the DER as the card holds them (:func:`protocols.tlv.certificate_names`): building them as
        ``cryptography`` objects was the largest part of a tap's parse, and more so on a CPU that was
        idle before the tap. The issuer's bytes stay those ``cryptography`` encodes (the pseudonym is
        made of them): learnt once per issuer, :data:`_ISSUERS`."""
        der = bytes(der)
        try:
            cert = x509.load_der_x509_certificate(der)
            serial = cert.serial_number
            validity = (cert.not_valid_before_utc, cert.not_valid_after_utc)
            try:
                issuer_raw, subject_raw = certificate_names(der)
            except (MalformedTlvError, TruncatedDataError):  # parsed above: not expected
                issuer_raw, subject_raw = b"", b""
            issuer = _ISSUERS.get(issuer_raw) if issuer_raw else None
            if issuer is None:
                issuer = cert.issuer.public_bytes()
                if issuer_raw and len(_ISSUERS) < MAX_ISSUERS:
                    _ISSUERS[issuer_raw] = issuer
            cn = common_name(subject_raw) if subject_raw else None
            if cn is None:  # another string type: cryptography's own reading
                cn_attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                cn = str(cn_attrs[0].value) if cn_attrs else ""
        except (ValueError, TypeError, x509.InvalidVersion) as e:
            raise CertificateParseError(f"not a usable X.509 certificate: {e}") from e
        if serial < 0:
            raise CertificateParseError("negative certificate serial number")
        return cls(der, serial, issuer, cn, *validity)

    def to_x509(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)


# --- planner -----------------------------------------------------------------------------------------
class ReadPath(Enum):
    """How a certificate is read; the session learns per reader which one works."""

    #: ``00 B0 8A 00 00 00 00``: the whole EF in one extended APDU, no SELECT EF.
    EXTENDED_SFI = "extended_sfi"
    #: SELECT EF, then short reads of up to 256 bytes.
    SHORT = "short"


@dataclass(frozen=True)
class ReadStep:
    offset: int
    length: int


def plan_short_reads(total_length: int, already: int = 0, chunk: int = SHORT_MAX_NE) -> list[ReadStep]:
    """Exact-length READ BINARYs for bytes ``already..total_length`` (ceil(remaining/chunk) steps)."""
    if total_length < 0 or already < 0 or not 1 <= chunk <= SHORT_MAX_NE:
        raise CommandEncodingError("invalid read plan")
    if total_length - 1 > MAX_READ_OFFSET:
        raise CommandEncodingError(f"{total_length} bytes cannot be addressed by READ BINARY offsets")
    remaining = max(0, total_length - already)
    return [
        ReadStep(already + i * chunk, min(chunk, remaining - i * chunk))
        for i in range(math.ceil(remaining / chunk))
    ]


def expected_identification_apdus(path: ReadPath, certificate_length: int) -> int:
    """APDUs an identification costs: SELECT AP + the reads.

    Documented in docs/design.md, "Identification in the fewest APDUs".
    """
    if path is ReadPath.EXTENDED_SFI:
        return 2
    return 2 + len(plan_short_reads(certificate_length))  # SELECT AP, SELECT EF, reads


# --- the session -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JpkiIdentity:
    """What one identification read: the certificate and how many APDUs it took."""

    certificate: UserAuthCertificate
    read_path: ReadPath
    apdus: int


class JpkiSession:
    """A session with the JPKI AP of one card, over any :class:`Transport`.

    The constructor selects the AP; a card without it raises :class:`NotJpkiCardError`. ``read_path``
    is the caller's memory of what worked on this reader before; after a read, :attr:`read_path` tells
    what worked now (it only downgrades after a definitive status word *and* a successful fallback).
    """

    def __init__(self, transport: Transport, *, read_path: ReadPath | None = None) -> None:
        self._transport = GuardedTransport(transport, SessionKind.JPKI)
        if read_path is None:
            short_only = transport.capabilities.extended_length is False
            read_path = ReadPath.SHORT if short_only else ReadPath.EXTENDED_SFI
        self.read_path = read_path
        self.select()

    @property
    def apdu_count(self) -> int:
        """APDUs that reached the card in this session (the guard counts them)."""
        return self._transport.apdu_count

    def _send(self, command: CommandApdu) -> Response:
        return transceive(self._transport, command)

    def select(self) -> None:
        """SELECT the JPKI AP; also the logout (the card drops the verified state on re-select)."""
        response = self._send(select_jpki_ap())
        if response.sw == SW.FILE_NOT_FOUND:
            raise NotJpkiCardError("the card has no JPKI application")
        response.check()

    logout = select

    def _select_ef(self, ef: JpkiEf) -> None:
        self._send(select_ef(ef)).check()

    # -- reading ------------------------------------------------------------------------------------
    def read_token(self) -> JpkiToken:
        self._select_ef(JpkiEf.TOKEN)
        return parse_token(self._send(read_binary(0, TOKEN_READ_LENGTH)).check(READ_SUCCESS_SWS))

    def identify(self) -> JpkiIdentity:
        """Read and parse the user-authentication certificate in the fewest APDUs."""
        before = self.apdu_count
        der = self.read_certificate(JpkiEf.AUTH_CERT)
        # + 1: the SELECT AP that recognised the card is part of every identification.
        return JpkiIdentity(UserAuthCertificate.from_der(der), self.read_path, self.apdu_count - before + 1)

    def read_certificate(self, ef: JpkiEf) -> bytes:
        if ef not in (JpkiEf.AUTH_CERT, JpkiEf.AUTH_CA_CERT):
            raise CommandEncodingError(f"EF {int(ef):04X} holds no certificate")
        if self.read_path is ReadPath.EXTENDED_SFI:
            der = self._read_extended(ef)
            if der is not None:
                return der
            der = self._read_short(ef)
            self.read_path = ReadPath.SHORT  # definitive answer and the fallback worked
            return der
        return self._read_short(ef)

    def _read_extended(self, ef: JpkiEf) -> bytes | None:
        """The one-APDU read; ``None`` when the card or reader definitively cannot do it."""
        try:
            response = self._send(read_binary_sfi(ef))
        except ExtendedLengthUnsupportedError:
            return None
        if response.sw == SW.SECURITY_STATUS_NOT_SATISFIED:
            raise AuthRequiredError(response.sw, response.data)
        if response.sw in EXTENDED_FALLBACK_SWS or is_wrong_le(response.sw):
            return None
        data = response.check(READ_SUCCESS_SWS)
        total = certificate_length(data[:MAX_HEADER_LENGTH])
        if len(data) >= total:
            return data[:total]
        # The card answered less than the whole file: go on with offset reads of the now-current EF.
        return data + self._read_steps(plan_short_reads(total, already=len(data)), total)

    def _read_short(self, ef: JpkiEf) -> bytes:
        self._select_ef(ef)
        first = self._read_chunk(ReadStep(0, SHORT_MAX_NE))
        try:
            total = certificate_length(first[:MAX_HEADER_LENGTH])
        except TruncatedDataError as e:
            raise BadResponseError(f"EF {int(ef):04X} is too short to hold a certificate") from e
        if len(first) >= total:
            return first[:total]
        return first + self._read_steps(plan_short_reads(total, already=len(first)), total)

    def _read_steps(self, steps: Iterable[ReadStep], total: int) -> bytes:
        out = bytearray()
        for step in steps:
            out += self._read_chunk(step)
        data = bytes(out)
        if len(data) > total:
            data = data[:total]
        return data

    def _read_chunk(self, step: ReadStep) -> bytes:
        data = self._send(read_binary(step.offset, step.length)).check(READ_SUCCESS_SWS)
        if not data:
            raise BadResponseError(f"READ BINARY at offset {step.offset} returned no data")
        return data

    # -- PIN ----------------------------------------------------------------------------------------
    def pin_status(self) -> PinStatus:
        """Remaining tries of the user-auth PIN; reading them costs no try."""
        self._select_ef(JpkiEf.AUTH_PIN)
        return parse_pin_status(self._send(pin_tries_query()))

    def verify(self, pin: str | bytes | bytearray, *, allow_last_try: bool = False) -> None:
        """Check the tries, then send the PIN exactly once.

        Refuses (without asking the card) a malformed PIN, a blocked PIN, and the last try unless
        ``allow_last_try``. A wrong PIN raises :class:`InvalidPinError` with the tries left; a link failure
        during VERIFY raises :class:`PinResultUnknownError` and is never retried.
        """
        pin_bytes = normalize_pin(pin)
        apdu = bytearray()
        try:
            status = self.pin_status()
            if status.blocked:
                raise PinBlockedError(SW.REFERENCE_DATA_UNUSABLE, message="the PIN is blocked")
            if status.last_try and not allow_last_try:
                raise LastTryRefusedError
            apdu = verify_apdu(pin_bytes)
            try:
                raw = self._transport.transmit(bytes(apdu))
            except TransportError as e:
                raise PinResultUnknownError(
                    "the link failed during VERIFY; the try may have been counted"
                ) from e
        finally:
            pin_bytes[:] = bytes(len(pin_bytes))
            apdu[:] = bytes(len(apdu))
        response = Response.parse(raw)
        if response.sw != SW.OK:
            raise error_for_sw(response.sw, response.data)  # InvalidPinError(tries_left), PinBlockedError

    # -- signing ------------------------------------------------------------------------------------
    def sign(self, digest_info_bytes: bytes) -> bytes:
        """Sign a DigestInfo with the user-auth key; needs a successful :meth:`verify` first."""
        self._select_ef(JpkiEf.AUTH_KEY)
        signature = self._send(compute_signature(digest_info_bytes)).check()
        if len(signature) != SIGNATURE_LENGTH:
            raise BadResponseError(f"signature of {len(signature)} bytes, expected {SIGNATURE_LENGTH}")
        return signature
