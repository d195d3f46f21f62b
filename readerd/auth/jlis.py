"""The J-LIS user-authentication CA certificates, by SHA-256 fingerprint: what a kiosk may trust.

Source: J-LIS (地方公共団体情報システム機構), which publishes the root certificates of the JPKI
user-authentication CA (公的個人認証サービス 利用者証明用電子証明書 認証局) on its JPKI pages; the same
public certificates are in the jpki/myna repository (``src/ta/``). The fingerprints and dates below were
computed from those certificates (``openssl x509 -noout -fingerprint -sha256 -serial -enddate``); copies
are tests/deploy/data/jlis_auth_ca_2015.pem and jlis_auth_ca_2023.pem. Both have the subject
``C=JP, O=JPKI, OU=JPKI for user authentication, OU=Japan Agency for Local Authority Information Systems``
(a test CA may carry the same name: only the fingerprint tells them apart).

Pure data and a lookup: ``readerctl doctor`` names each configured trust anchor with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class JlisCa:
    """One J-LIS user-authentication root certificate."""

    name: str
    serial: str  # hex, as openssl prints it
    not_after: datetime  # UTC
    sha256: str  # upper-case hex pairs separated by colons, as openssl prints it


#: The known J-LIS user-authentication CAs, oldest first.
USER_AUTH_CAS: tuple[JlisCa, ...] = (
    JlisCa(
        name="J-LIS user-authentication CA 2015",
        serial="01",
        not_after=datetime(2025, 10, 19, 14, 59, 59, tzinfo=UTC),  # 2025-10-19 23:59:59 JST
        sha256="4D:CF:C4:CA:0A:AF:9F:B2:A3:08:1B:3F:0C:99:1C:32:0B:3A:"
        "CC:00:86:67:A3:41:EE:AE:C5:AF:1D:58:CA:7D",
    ),
    JlisCa(
        name="J-LIS user-authentication CA 2023",
        serial="06D18006",
        not_after=datetime(2033, 7, 15, 14, 59, 59, tzinfo=UTC),  # 2033-07-15 23:59:59 JST
        sha256="64:11:4F:29:62:0C:24:ED:26:31:D4:64:76:A0:40:E7:"
        "EE:74:0D:95:60:89:C0:0B:03:6A:6A:81:18:C3:22:B5",
    ),
)


def normalize_fingerprint(fingerprint: str) -> str:
    """``AB:CD:...`` from hex in any case, with or without colons or spaces."""
    digits = "".join(c for c in fingerprint if c not in ": ").upper()
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def lookup(sha256: str) -> JlisCa | None:
    """The J-LIS CA with this SHA-256 fingerprint (of the certificate's DER), or None: a test or foreign
    CA."""
    wanted = normalize_fingerprint(sha256)
    return next((ca for ca in USER_AUTH_CAS if ca.sha256 == wanted), None)
