"""Identifiers of the JPKI application on the My Number Card (docs/card-facts.md §1, §2, §4).

Only what readerd uses is named here. The card-info applications and the signature files are named in
:mod:`protocols.guard` only, as what the guard refuses.
"""

from __future__ import annotations

from enum import IntEnum, unique

#: 公的個人認証AP, selected by DF name.
JPKI_AID = bytes.fromhex("D392F000260100000001")


@unique
class JpkiEf(IntEnum):
    """Files of the JPKI AP readerd uses (all FIDs are selected with ``00 A4 02 0C 02 <FID>``)."""

    TOKEN = 0x0006  # token info, ASCII, space padded
    AUTH_CERT = 0x000A  # user-authentication certificate (利用者証明用電子証明書), readable without PIN
    AUTH_CA_CERT = 0x000B  # its CA certificate (never trusted: anchors come from configuration)
    AUTH_KEY = 0x0017  # user-authentication private key (internal reference)
    AUTH_PIN = 0x0018  # user-authentication PIN IEF: 4 digits, 3 tries


#: Files that may be selected, read, and read by short EF identifier (SFI = low 5 bits of the FID).
SELECTABLE_EFS: frozenset[int] = frozenset(JpkiEf)
READABLE_EFS: frozenset[int] = frozenset({JpkiEf.TOKEN, JpkiEf.AUTH_CERT, JpkiEf.AUTH_CA_CERT})
SFI_TO_EF: dict[int, int] = {ef & 0x1F: int(ef) for ef in READABLE_EFS}

PIN_LENGTH = 4
PIN_MAX_TRIES = 3

#: Bytes of the token EF to read: myna reads 32, TRET 20; both work on real cards (docs/card-facts.md §2).
TOKEN_READ_LENGTH = 32


@unique
class TokenKind(IntEnum):
    """What the token EF says the JPKI holder is."""

    UNKNOWN = 0
    MY_NUMBER_CARD = 1  # JPKIAPICCTOKEN2
    JUKI_CARD = 2  # JPKIAPICCTOKEN: the old 住基カード
    SMARTPHONE = 3  # JPKIAPGPSETOKEN: smartphone JPKI (GP SE), certificate read needs the PIN


TOKEN_NAMES: dict[str, TokenKind] = {
    "JPKIAPICCTOKEN2": TokenKind.MY_NUMBER_CARD,
    "JPKIAPICCTOKEN": TokenKind.JUKI_CARD,
    "JPKIAPGPSETOKEN": TokenKind.SMARTPHONE,
}
