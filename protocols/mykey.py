"""Identifiers that may leave the card session: MyKey IDs, member IDs and keyed pseudonyms.

The certificate serial and a FeliCa IDm are stable identifiers of a person; published on a LAN they
would let anyone who copies a card be followed across services. Events therefore carry a MyKey ID (from
the Digital Agency's platform), a ``member_id`` issued by readerd's own directory, or a pseudonym keyed
by a per-deployment secret (docs/design.md D10 and D11). The pseudonym spec is versioned by its domain
separation prefix; the test vector in ``docs/identifiers.md`` pins it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

from protocols.errors import IdentifierFormatError

#: MyKey IDs are "8 alphanumeric characters" (docs/card-facts.md §7); their case rules are not documented.
#: readerd compares them case-insensitively and stores them upper case: one place to change if a real
#: platform answer shows otherwise.
MYKEY_ID_LENGTH = 8
MYKEY_ID_CASE_SENSITIVE = False

MEMBER_ID_LENGTH = 8
#: Crockford base32: no I, L, O, U, so an ID read aloud at a counter cannot be misheard as another.
CROCKFORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_ALIASES = {"O": "0", "I": "1", "L": "1"}

PSEUDONYM_KEY_LENGTH = 32
PSEUDONYM_LENGTH = 26
JPKI_PSEUDONYM_DOMAIN = b"readerd-jpki-v1"
FELICA_PSEUDONYM_DOMAIN = b"readerd-felica-v1"
FELICA_IDM_LENGTH = 8


def _clean(text: str) -> str:
    """NFKC (full-width ＡＢ１２ becomes AB12), drop spaces and hyphens a person may type."""
    if not isinstance(text, str):
        raise IdentifierFormatError("an identifier is text")
    return "".join(c for c in unicodedata.normalize("NFKC", text) if c not in " -\t")


def normalize_mykey_id(text: str) -> str:
    """Canonical MyKey ID (8 ASCII letters or digits, upper case); else :class:`IdentifierFormatError`."""
    value = _clean(text)
    if not MYKEY_ID_CASE_SENSITIVE:
        value = value.upper()
    if len(value) != MYKEY_ID_LENGTH or not (value.isascii() and value.isalnum()):
        raise IdentifierFormatError("a MyKey ID is 8 letters or digits")
    return value


def is_mykey_id(text: str) -> bool:
    try:
        normalize_mykey_id(text)
    except IdentifierFormatError:
        return False
    return True


def new_member_id() -> str:
    """A fresh random member ID: 8 Crockford base32 characters (40 bits)."""
    return "".join(secrets.choice(CROCKFORD_ALPHABET) for _ in range(MEMBER_ID_LENGTH))


def normalize_member_id(text: str) -> str:
    """Canonical member ID: upper case, O->0 and I/L->1 as Crockford decodes them."""
    value = "".join(_CROCKFORD_ALIASES.get(c, c) for c in _clean(text).upper())
    if len(value) != MEMBER_ID_LENGTH or any(c not in CROCKFORD_ALPHABET for c in value):
        raise IdentifierFormatError("a member ID is 8 Crockford base32 characters")
    return value


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != PSEUDONYM_KEY_LENGTH:
        raise IdentifierFormatError(f"the pseudonym key is {PSEUDONYM_KEY_LENGTH} bytes")


def _pseudonym(key: bytes, message: bytes) -> str:
    _check_key(key)
    mac = hmac.new(bytes(key), message, hashlib.sha256).digest()
    return base64.b32encode(mac).decode("ascii").rstrip("=")[:PSEUDONYM_LENGTH]


def serial_bytes(serial: int) -> bytes:
    """Minimal unsigned big-endian encoding of a certificate serial (0 is one zero byte)."""
    if serial < 0:
        raise IdentifierFormatError("a certificate serial is not negative")
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


def jpki_pseudonym(key: bytes, issuer_der: bytes, serial: int) -> str:
    """base32(HMAC-SHA256(key, "readerd-jpki-v1" || issuer Name DER || serial))[:26]."""
    return _pseudonym(key, JPKI_PSEUDONYM_DOMAIN + bytes(issuer_der) + serial_bytes(serial))


def felica_pseudonym(key: bytes, idm: bytes) -> str:
    """base32(HMAC-SHA256(key, "readerd-felica-v1" || IDm))[:26]."""
    if len(idm) != FELICA_IDM_LENGTH:
        raise IdentifierFormatError("a FeliCa IDm is 8 bytes")
    return _pseudonym(key, FELICA_PSEUDONYM_DOMAIN + bytes(idm))


def key_fingerprint(key: bytes) -> str:
    """Safe to log and to pin in a shared store: SHA-256 of the key, first 16 hex digits."""
    _check_key(key)
    return hashlib.sha256(b"readerd-pseudonym-key-fingerprint" + bytes(key)).hexdigest()[:16]
