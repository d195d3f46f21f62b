"""A virtual My Number Card: a card OS that answers APDUs as the real card does (docs/card-facts.md §1-§5).

The card is an ``INS -> handler`` table with one place that turns a :class:`CardStatus` into a status
word, as vsmartcard's virtual cards are built. It parses commands with its own small ISO 7816 decoder:
reusing readerd's reader-side parser to answer itself would hide a bug on both sides.

Where the real card's answer is not known for certain (docs/card-facts.md, "Open uncertainties"), the
choice is a field of :class:`CardBehavior`, so a test can try both and a real card can correct the
default.

The card-info applications are present, with a fake My Number and fake attributes, so tests can prove
readerd never touches them: every APDU the card receives is recorded in :attr:`VirtualMyNumberCard.log`.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# Constants the card needs to be itself. The JPKI AID is shared with readerd (it is public and fixed);
# the card-info AIDs are the card's own: protocols/ only knows them as a deny-list.
from protocols.jpki_constants import JPKI_AID
from simulators.pki import Attributes, CaKind, PkiStore

log = structlog.get_logger("readerd.sim.card")

KENHOJO_AID = bytes.fromhex("D3921000310001010408")  # 券面事項入力補助AP
KENMEN_AID = bytes.fromhex("D3921000310001010402")  # 券面AP
JUKI_AID = bytes.fromhex("D3921000310001010401")  # 住基AP
COMMON_AID = bytes.fromhex("D3921000310001010100")  # common DF (manufacture number)
CARD_INFO_AIDS = frozenset({KENHOJO_AID, KENMEN_AID, JUKI_AID, COMMON_AID})

#: Contactless ATR of a real card (PC/SC part 3, Type B; docs/card-facts.md §5, "JPKI (06)").
ATR_CONTACTLESS = bytes.fromhex("3B888001000005E0B381A1007F")
ATR_CONTACT = bytes.fromhex("3BE000FF8131FE4514")

#: ATRs real My Number Cards show, by the name ``CardProfile.atr`` and ``readerd-sim --atr`` take
#: (docs/card-facts.md §5: OpenSC's list, pcsc-tools' smartcard_list.txt). The ATR depends on the reader
#: as much as on the card; readerd identifies by a SELECT of the JPKI AP whatever the ATR says.
NAMED_ATRS: dict[str, bytes] = {
    "contactless": ATR_CONTACTLESS,  # JPKI (06): application data 00 00 05 E0
    "contactless-41": bytes.fromhex("3B888001000041E0B381A1003B"),  # JPKI (07)
    "contactless-4b51": bytes.fromhex("3B888001004B51FFB381D1000F"),  # JPKI (09)
    "contactless-f5": bytes.fromhex("3BF59100FF918171FE400042000100D1D6"),  # JPKI (04)
    "contact": ATR_CONTACT,  # OpenSC card-jpki.c; pcsc-tools calls it the 住基カード's
    "contact-02": bytes.fromhex("3BDA13FF8131FB468012392F31C173C601C03B"),  # JPKI (02)
    "contact-03": bytes.fromhex("3BC5FF8131FB458073C6010000"),  # JPKI (03)
}
#: The name of the contactless ATR whose application data is a fresh random PUPI on every card made.
ATR_RANDOM_PUPI = "contactless-pupi"
ATR_NAMES = (*NAMED_ATRS, ATR_RANDOM_PUPI)


def with_tck(body: bytes) -> bytes:
    """``body`` (from TS up to the last historical byte) followed by its check byte TCK (XOR of T0..)."""
    tck = 0
    for byte in body[1:]:
        tck ^= byte
    return body + bytes((tck,))


def pupi_atr(pupi: bytes, protocol_info: bytes = bytes.fromhex("B381A1")) -> bytes:
    """The PC/SC part-3 ATR of a Type B card from a reader that puts the (random) PUPI where the ATQB's
    application data would go: ``3B 88 80 01`` + PUPI + protocol info + ``00`` + TCK."""
    if len(pupi) != 4 or len(protocol_info) != 3:
        raise ValueError("a PUPI has 4 bytes and the protocol info 3")
    return with_tck(bytes.fromhex("3B888001") + pupi + protocol_info + b"\x00")


def atr_named(name: str) -> bytes:
    """The ATR called ``name`` (:data:`ATR_NAMES`); ``contactless-pupi`` draws a new PUPI each call."""
    if name == ATR_RANDOM_PUPI:
        return pupi_atr(secrets.token_bytes(4))
    try:
        return NAMED_ATRS[name]
    except KeyError:
        raise ValueError(f"unknown ATR name {name!r}; known: {', '.join(ATR_NAMES)}") from None


#: A well-formed fake individual number (valid check digit) that exists only on simulated cards.
FAKE_MY_NUMBER = "123456789018"


class CardStatus(Exception):
    """Raised by a handler to answer with a status word (and optional data)."""

    def __init__(self, sw: int, data: bytes = b"") -> None:
        super().__init__(f"{sw:04X}")
        self.sw = sw
        self.data = data


SW_OK = 0x9000


class LeBeyondEof(Enum):
    """What the card answers when a specific Le asks for more than the file holds [docs/card-facts.md U5]."""

    PARTIAL_6282 = "6282"  # ISO: the remaining bytes and 6282
    EXACT_6CXX = "6cxx"  # no data, 6Cxx with the exact remaining length


@dataclass
class CardBehavior:
    """Answers the sources do not settle; defaults follow the best evidence in docs/card-facts.md."""

    extended_length: bool = True  # accept extended APDUs (jsapdu reads whole EFs this way)
    blocked_verify_sw: int = 0x6984  # VERIFY once blocked (§3.4: 6984, one maintained source)
    blocked_query_sw: int = 0x63C0  # the bare tries query once blocked (unconfirmed: 63C0)
    beyond_eof_sw: int = 0x6B00  # offset at or past the end of the file
    le_beyond_eof: LeBeyondEof = LeBeyondEof.PARTIAL_6282
    #: Answer long responses with 61xx and GET RESPONSE chunks of this size (T=0 style); None: never.
    get_response_chunk: int | None = None
    #: Cap on the bytes of one extended read (a reader or card that answers less than asked).
    max_extended_response: int = 65536
    #: SELECT with P2=00 (FCI requested): content unknown on the real card; 9000 with no data here.
    fci_on_select: bool = False


@dataclass
class Pin:
    value: bytes
    max_tries: int
    tries_left: int = -1

    def __post_init__(self) -> None:
        if self.tries_left < 0:
            self.tries_left = self.max_tries

    @property
    def blocked(self) -> bool:
        return self.tries_left == 0


@dataclass
class BinaryEf:
    data: bytes
    #: FID of the PIN whose verification is needed to read, or None for a public file.
    read_pin: int | None = None


@dataclass
class KeyEf:
    key: rsa.RSAPrivateKey
    pin: int


@dataclass
class Application:
    aid: bytes
    name: str
    efs: dict[int, BinaryEf | KeyEf | Pin] = field(default_factory=dict)
    records: dict[int, dict[int, bytes]] = field(default_factory=dict)  # SFI -> record number -> bytes


@dataclass(frozen=True)
class Command:
    """The card's own view of a command APDU."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int | None  # None: no Le; else the expected length (256 / 65536 for Le=00 / 0000)
    extended: bool
    raw: bytes

    @property
    def le_is_max(self) -> bool:
        return self.le == (65536 if self.extended else 256)


def parse_command(raw: bytes) -> Command:
    """ISO 7816-3 case detection from the card's side; malformed lengths answer 6700."""
    if len(raw) < 4:
        raise CardStatus(0x6700)
    cla, ins, p1, p2 = raw[:4]
    body = raw[4:]
    if not body:
        return Command(cla, ins, p1, p2, b"", None, False, raw)
    if len(body) == 1:
        return Command(cla, ins, p1, p2, b"", body[0] or 256, False, raw)
    if body[0] != 0:
        lc = body[0]
        if len(body) == 1 + lc:
            return Command(cla, ins, p1, p2, body[1:], None, False, raw)
        if len(body) == 2 + lc:
            return Command(cla, ins, p1, p2, body[1:-1], body[-1] or 256, False, raw)
        raise CardStatus(0x6700)
    if len(body) == 3:
        return Command(cla, ins, p1, p2, b"", int.from_bytes(body[1:], "big") or 65536, True, raw)
    lc = int.from_bytes(body[1:3], "big")
    if lc and len(body) == 3 + lc:
        return Command(cla, ins, p1, p2, body[3:], None, True, raw)
    if lc and len(body) == 5 + lc:
        return Command(cla, ins, p1, p2, body[3:-2], int.from_bytes(body[-2:], "big") or 65536, True, raw)
    raise CardStatus(0x6700)


@dataclass(frozen=True)
class ReceivedApdu:
    """One APDU as the card received it, with the application that was selected at that moment."""

    raw: bytes
    application: str | None


def _pkcs1_type1_sign(key: rsa.RSAPrivateKey, digest_info: bytes) -> bytes:
    """What the card does: pad 00 01 FF..FF 00 || DigestInfo, then the raw RSA private operation."""
    numbers = key.private_numbers()
    k = (key.key_size + 7) // 8
    if len(digest_info) > k - 11:
        raise CardStatus(0x6700)
    block = b"\x00\x01" + b"\xff" * (k - 3 - len(digest_info)) + b"\x00" + digest_info
    signature = pow(int.from_bytes(block, "big"), numbers.d, numbers.public_numbers.n)
    return signature.to_bytes(k, "big")


# --- the card-info audit across processes ------------------------------------------------------------
#: When this environment variable names a file, every simulated card in every process appends one JSON line
#: to it for each SELECT by DF name of an application other than the JPKI AP. The test session sets it
#: (tests/conftest.py) and fails on a card-info line no ``touches_card_info`` test explains: a card behind a
#: ``readerd run --simulate``, a bench or a vicc subprocess is out of reach of :func:`observe_cards`.
CARD_AUDIT_ENV = "READERD_CARD_AUDIT"


def selected_name(raw: bytes) -> bytes | None:
    """The DF name (AID) a SELECT by DF name (P1=04) asks for; None for any other APDU.

    SELECT of an EF by file identifier (P1=02) inside the current application is not an application
    select. Whatever the CLA (the card refuses other channels, but the reader still asked); a malformed
    length gives everything after the header, so the card-info test below still sees the AID in it.
    """
    if len(raw) < 4 or raw[1] != 0xA4 or raw[2] != 0x04:
        return None
    try:
        return parse_command(raw).data
    except CardStatus:
        return raw[4:]


def names_card_info(name: bytes) -> bool:
    """Whether a SELECT of ``name`` could reach a card-info AP: the exact AID, a partial DF name that one
    begins with (ISO 7816-4 selects by the first match), or a malformed body holding one."""
    return bool(name) and any(aid.startswith(name) or aid in name for aid in CARD_INFO_AIDS)


def audit_apdu(raw: bytes, card: str, via: str) -> None:
    """Append an audit line for ``raw`` if it selects an application other than JPKI and the audit is on.

    One ``os.write`` of one line to a file opened ``O_APPEND``: lines from many processes never interleave.
    A file that cannot be written is logged, not raised: the card must answer as a card would.
    """
    path = os.environ.get(CARD_AUDIT_ENV)
    if not path:
        return
    name = selected_name(raw)
    if name is None or name == JPKI_AID:
        return
    line = {
        "pid": os.getpid(),
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "card": card,
        "aid": name.hex().upper(),
        "card_info": names_card_info(name),
        "via": via,
        "process": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
        "test": os.environ.get("PYTEST_CURRENT_TEST"),
    }
    data = (json.dumps(line, ensure_ascii=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        log.error("card audit line not written", path=path, error=str(e), aid=line["aid"])


def audit_model_apdu(model: object, raw: bytes, via: str) -> None:
    """For a reader link (vicc, in-process, nfcpy): audit an APDU it hands to a card model, unless the model
    is a :class:`VirtualMyNumberCard`, which audits what it receives itself. Other models (a FeliCa card
    behind PC/SC, a fault wrapper) are audited here; a wrapped My Number Card may so give two lines."""
    if not isinstance(model, VirtualMyNumberCard):
        audit_apdu(raw, type(model).__name__, via)


#: Called with every card made while registered: how the test suite checks, over all its tests, that no
#: card ever received a SELECT of a card-info AP (tests/conftest.py). Nothing is kept when none is set.
_card_observers: list[Callable[[VirtualMyNumberCard], None]] = []


def observe_cards(callback: Callable[[VirtualMyNumberCard], None]) -> Callable[[], None]:
    """Call ``callback`` with each card created from now on; returns the function that stops it."""
    _card_observers.append(callback)
    return lambda: _card_observers.remove(callback)


class VirtualMyNumberCard:
    """The card. Feed it command APDU bytes with :meth:`process`; it returns response bytes."""

    def __init__(
        self,
        applications: list[Application],
        *,
        atr: bytes = ATR_CONTACTLESS,
        behavior: CardBehavior | None = None,
        label: str = "card",
    ) -> None:
        self.applications = {app.aid: app for app in applications}
        #: A name for the audit line (the profile's name): says which simulated card it was, nothing more.
        self.label = label
        self.atr = atr
        self.behavior = behavior or CardBehavior()
        self.log: list[ReceivedApdu] = []
        self.powered = False
        for observer in list(_card_observers):
            observer(self)
        self._handlers: dict[tuple[int, int], Callable[[Command], bytes]] = {
            (0x00, 0xA4): self._select,
            (0x00, 0xB0): self._read_binary,
            (0x00, 0xB2): self._read_record,
            (0x00, 0x20): self._verify,
            (0x80, 0x2A): self._sign,
            (0x00, 0xC0): self._get_response,
        }
        self._reset_state()

    # -- power ----------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.current_app: Application | None = None
        self.current_ef: int | None = None
        self.verified: set[int] = set()
        self._pending: bytes = b""

    def power_on(self) -> bytes:
        self.powered = True
        self._reset_state()
        return self.atr

    def power_off(self) -> None:
        self.powered = False
        self._reset_state()

    reset = power_on

    # -- what tests look at ---------------------------------------------------------------------------
    @property
    def selected_aids(self) -> list[bytes]:
        """Every AID a SELECT by DF name asked for, in order (whether or not it exists)."""
        return [r.raw[5 : 5 + r.raw[4]] for r in self.log if r.raw[1:3] == b"\xa4\x04" and len(r.raw) > 5]

    def touched_card_info(self) -> bool:
        """True if any APDU ever named a card-info application (the hard privacy rule)."""
        return any(aid in r.raw for r in self.log for aid in CARD_INFO_AIDS)

    def pin(self, app_aid: bytes, fid: int) -> Pin:
        ef = self.applications[app_aid].efs[fid]
        if not isinstance(ef, Pin):
            raise TypeError(f"EF {fid:04X} is not a PIN")
        return ef

    def set_auth_pin_tries(self, tries_left: int) -> None:
        """Fault injection: another terminal used (or a reset restored) tries of the user-auth PIN."""
        pin = self.pin(JPKI_AID, 0x0018)
        pin.tries_left = max(0, min(tries_left, pin.max_tries))

    # -- dispatch -------------------------------------------------------------------------------------
    def process(self, raw: bytes) -> bytes:
        raw = bytes(raw)
        self.log.append(ReceivedApdu(raw, self.current_app.name if self.current_app else None))
        audit_apdu(raw, self.label, "card")
        try:
            command = parse_command(raw)
            if command.cla & 0x03 and command.cla != 0xFF:
                raise CardStatus(0x6881)  # only the basic logical channel
            if command.extended and not self.behavior.extended_length:
                raise CardStatus(0x6700)
            if command.cla not in (0x00, 0x80):
                raise CardStatus(0x6E00)
            handler = self._handlers.get((command.cla, command.ins))
            if handler is None:
                raise CardStatus(0x6D00)
            if command.ins == 0xC0:
                return self._get_response(command)
            self._pending = b""
            return self._respond(handler(command))
        except CardStatus as status:
            return status.data + status.sw.to_bytes(2, "big")

    def _respond(self, data: bytes) -> bytes:
        """Success; with ``get_response_chunk`` set, long answers come in 61xx pieces (T=0 style)."""
        chunk = self.behavior.get_response_chunk
        if chunk is not None and len(data) > chunk:
            self._pending = data[chunk:]
            return data[:chunk] + self._more_data_sw()
        return data + SW_OK.to_bytes(2, "big")

    def _more_data_sw(self) -> bytes:
        return bytes((0x61, min(len(self._pending), 256) % 256))

    # -- handlers -------------------------------------------------------------------------------------
    def _select(self, c: Command) -> bytes:
        if c.p1 == 0x04:
            app = self.applications.get(c.data)
            if app is None:
                raise CardStatus(0x6A82)
            self.current_app, self.current_ef = app, None
            self.verified = set()  # re-select is the card's logout
            if c.p2 not in (0x0C, 0x00):
                raise CardStatus(0x6A86)
            return b""
        if c.p1 == 0x02:
            if self.current_app is None:
                raise CardStatus(0x6A82)
            if len(c.data) != 2:
                raise CardStatus(0x6700)
            fid = int.from_bytes(c.data, "big")
            if fid not in self.current_app.efs:
                raise CardStatus(0x6A82)
            if c.p2 not in (0x0C, 0x00):
                raise CardStatus(0x6A86)
            self.current_ef = fid
            return b""
        raise CardStatus(0x6A86)  # by path (08/09) does not work on the real card (OpenSC PR #801)

    def _binary(self, fid: int) -> BinaryEf:
        assert self.current_app is not None  # noqa: S101 - callers check
        ef = self.current_app.efs.get(fid)
        if not isinstance(ef, BinaryEf):
            raise CardStatus(0x6981)  # a key or PIN EF is not readable
        if ef.read_pin is not None and ef.read_pin not in self.verified:
            raise CardStatus(0x6982)
        return ef

    def _read_binary(self, c: Command) -> bytes:
        if c.data or c.le is None:
            raise CardStatus(0x6700)
        if self.current_app is None:
            raise CardStatus(0x6986)
        if c.p1 & 0x80:
            if c.p1 & 0x60:
                raise CardStatus(0x6A86)
            sfi = c.p1 & 0x1F
            fid = next((f for f in self.current_app.efs if f & 0x1F == sfi and f <= 0x1F), None)
            if fid is None:
                raise CardStatus(0x6A82)
            offset = c.p2
            ef = self._binary(fid)
            self.current_ef = fid
        else:
            if self.current_ef is None:
                raise CardStatus(0x6986)
            ef = self._binary(self.current_ef)
            offset = (c.p1 << 8) | c.p2
        size = len(ef.data)
        if offset >= size:
            raise CardStatus(self.behavior.beyond_eof_sw)
        want = c.le
        if c.extended:
            want = min(want, self.behavior.max_extended_response)
        remaining = size - offset
        if want <= remaining:
            return ef.data[offset : offset + want]
        if c.le_is_max:
            return ef.data[offset:]
        if self.behavior.le_beyond_eof is LeBeyondEof.EXACT_6CXX and remaining <= 256:
            raise CardStatus(0x6C00 | (remaining % 256))
        raise CardStatus(0x6282, ef.data[offset:])

    def _read_record(self, c: Command) -> bytes:
        if self.current_app is None:
            raise CardStatus(0x6986)
        sfi = c.p2 >> 3
        records = self.current_app.records.get(sfi)
        if records is None or (c.p2 & 0x07) != 0x04:
            raise CardStatus(0x6A82 if records is None else 0x6A86)
        record = records.get(c.p1)
        if record is None:
            raise CardStatus(0x6A83)
        return record

    def _pin_for(self, c: Command) -> tuple[int, Pin]:
        if self.current_app is None:
            raise CardStatus(0x6986)
        if c.p1 != 0x00:
            raise CardStatus(0x6A86)
        if c.p2 == 0x80:
            fid = self.current_ef
        elif c.p2 & 0x80:
            fid = c.p2 & 0x1F  # VERIFY by IEF short identifier (jsapdu style)
        else:
            raise CardStatus(0x6A86)
        pin = self.current_app.efs.get(fid) if fid is not None else None
        if fid is None or not isinstance(pin, Pin):
            raise CardStatus(0x6986 if fid is None else 0x6981)
        return fid, pin

    def _verify(self, c: Command) -> bytes:
        fid, pin = self._pin_for(c)
        if not c.data:
            # The tries query: always 63Cx, even while verified (docs/card-facts.md §3.1, OpenSC PR #959).
            if pin.blocked:
                raise CardStatus(self.behavior.blocked_query_sw)
            raise CardStatus(0x63C0 | pin.tries_left)
        if pin.blocked:
            raise CardStatus(self.behavior.blocked_verify_sw)
        if c.data == pin.value:
            pin.tries_left = pin.max_tries
            self.verified.add(fid)
            return b""
        pin.tries_left -= 1
        self.verified.discard(fid)
        raise CardStatus(0x63C0 | pin.tries_left)

    def _sign(self, c: Command) -> bytes:
        if (c.p1, c.p2) != (0x00, 0x80):
            raise CardStatus(0x6A86)
        if self.current_app is None or self.current_ef is None:
            raise CardStatus(0x6986)
        ef = self.current_app.efs.get(self.current_ef)
        if not isinstance(ef, KeyEf):
            raise CardStatus(0x6981)
        if ef.pin not in self.verified:
            raise CardStatus(0x6982)
        if not c.data:
            raise CardStatus(0x6700)
        return _pkcs1_type1_sign(ef.key, c.data)

    def _get_response(self, c: Command) -> bytes:
        if not self._pending:
            raise CardStatus(0x6985)
        want = c.le or 256
        data, self._pending = self._pending[:want], self._pending[want:]
        return data + (self._more_data_sw() if self._pending else SW_OK.to_bytes(2, "big"))


# --- building a card from a profile ------------------------------------------------------------------
@dataclass
class CardProfile:
    """A simulated citizen's card: what a test or a developer chooses."""

    name: str = "alice"
    auth_pin: str = "1234"
    sign_password: str = "ABC123"  # noqa: S105 - a simulated card's test password
    auth_tries_left: int = 3
    sign_tries_left: int = 5
    token: str = "JPKIAPICCTOKEN2"  # noqa: S105 - the token EF name, not a secret
    my_number: str = FAKE_MY_NUMBER
    kenhojo_pin: str = "1234"
    juki_pin: str = "1234"
    revoked: bool = False
    expired: bool = False
    contactless: bool = True
    #: A name of :data:`ATR_NAMES`, or the ATR's bytes; None: by ``contactless``. Any ATR at all may be
    #: given, so a test can show that readerd identifies by SELECT, not by ATR.
    atr: str | bytes | None = None
    behavior: CardBehavior = field(default_factory=CardBehavior)
    #: A copied-certificate card: it carries this profile's user-auth certificate (byte for byte) but
    #: signs with its own key (``name``'s), so it reads as that citizen and its signature never verifies.
    cloned_from: str | None = None

    def card_atr(self) -> bytes:
        """The ATR this profile's card presents (a new random PUPI each call for ``contactless-pupi``)."""
        if isinstance(self.atr, bytes):
            return self.atr
        if self.atr is not None:
            return atr_named(self.atr)
        return ATR_CONTACTLESS if self.contactless else ATR_CONTACT

    @property
    def certificate_holder(self) -> str:
        """The profile whose user-auth certificate the card carries."""
        return self.cloned_from or self.name


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def build_card(profile: CardProfile, store: PkiStore, *, now: datetime | None = None) -> VirtualMyNumberCard:
    """A card for ``profile`` with keys and certificates from ``store`` (created once, then cached).

    With ``cloned_from``, the user-auth certificate is that profile's while the key stays ``name``'s.
    """
    now = now or datetime.now(UTC)
    if profile.cloned_from is not None and (profile.cloned_from == profile.name or profile.expired):
        raise ValueError("cloned_from names another profile, and a clone's certificate is not expired")
    if profile.expired:
        auth_cert = store.user_auth_certificate(
            profile.name, not_before=now - timedelta(days=5 * 365 + 30), not_after=now - timedelta(days=30)
        )
    else:
        auth_cert = store.user_auth_certificate(profile.certificate_holder)
    sign_cert = store.signature_certificate(profile.name, Attributes())
    jpki = Application(
        JPKI_AID,
        "JPKI",
        {
            0x0006: BinaryEf(profile.token.encode("ascii").ljust(32, b" ")),
            0x000A: BinaryEf(_der(auth_cert)),
            0x000B: BinaryEf(store.ca(CaKind.USER_AUTH).der),
            0x0001: BinaryEf(_der(sign_cert), read_pin=0x001B),
            0x0002: BinaryEf(store.ca(CaKind.SIGNATURE).der),
            0x0017: KeyEf(store.card_key(profile.name, "auth"), pin=0x0018),
            0x0018: Pin(profile.auth_pin.encode("ascii"), 3, profile.auth_tries_left),
            0x001A: KeyEf(store.card_key(profile.name, "sign"), pin=0x001B),
            0x001B: Pin(profile.sign_password.encode("ascii"), 5, profile.sign_tries_left),
        },
    )
    number = profile.my_number.encode("ascii")
    attributes = Attributes()
    kenhojo = Application(
        KENHOJO_AID,
        "券面事項入力補助AP",
        {
            0x0011: Pin(profile.kenhojo_pin.encode("ascii"), 3),
            0x0001: BinaryEf(b"\xff\x10\x0c" + number + b"\x00\x00", read_pin=0x0011),
            0x0002: BinaryEf(
                (attributes.name + "\n" + attributes.address + "\n" + attributes.birth_date).encode(),
                read_pin=0x0011,
            ),
        },
    )
    kenmen = Application(
        KENMEN_AID,
        "券面AP",
        {0x0013: Pin(number, 3), 0x0005: BinaryEf(number, read_pin=0x0013)},
    )
    juki = Application(JUKI_AID, "住基AP", {0x001C: Pin(profile.juki_pin.encode("ascii"), 3)})
    common = Application(
        COMMON_AID,
        "common DF",
        {0x001C: Pin(profile.juki_pin.encode("ascii"), 3)},
        records={1: {1: b"\xdf\x0f\x0f" + b"SIM0000000000001"[:15]}},
    )
    return VirtualMyNumberCard(
        [jpki, kenhojo, kenmen, juki, common],
        atr=profile.card_atr(),
        behavior=profile.behavior,
        label=profile.name,
    )


#: PC/SC part-3 ATR of a MIFARE Classic 1K: a common contactless card that is not a My Number Card.
ATR_OTHER_CARD = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")


def blank_card() -> VirtualMyNumberCard:
    """A card with no JPKI application: every SELECT answers 6A82 (readerd reports kind=unknown)."""
    return VirtualMyNumberCard([], atr=ATR_OTHER_CARD, label="blank")


def crl_for(
    profiles: list[CardProfile], store: PkiStore, *, now: datetime | None = None
) -> x509.CertificateRevocationList:
    """The user-auth CRL that revokes every profile marked ``revoked``."""
    serials = [store.user_auth_certificate(p.certificate_holder).serial_number for p in profiles if p.revoked]
    return store.ca(CaKind.USER_AUTH).crl(serials, this_update=now)
