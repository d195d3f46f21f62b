"""The daemon's errors: the tree of ``protocols.errors`` plus what only the daemon can fail at."""

from __future__ import annotations

from protocols.errors import *  # noqa: F403 - one tree, re-exported for daemon and plugin code
from protocols.errors import ReaderdError


class ConfigError(ReaderdError):
    """The configuration is invalid; the daemon exits 78 and systemd does not restart it."""

    code = "bad_config"


class StoreUnavailableError(ReaderdError):
    """A database (member directory, event log, plugin store) cannot be reached or written."""

    code = "store_unavailable"


class StoreBusyError(ReaderdError):
    """A transaction kept meeting serialization failures, deadlocks or locks through every retry
    (``readerd.plugin.store``); nothing was written and the caller may try again later."""

    code = "store_busy"


class StoreSchemaError(ReaderdError):
    """A plugin's tables cannot be brought to the version its code expects: the database is newer than
    the code, a migration failed, or a table or plugin name is not allowed (``readerd.plugin.store``)."""

    code = "store_schema"


class BusError(ReaderdError):
    """The ZeroMQ bus could not bind or send."""

    code = "bus_error"


class MetricsUnavailableError(BusError):
    """The metrics endpoint cannot listen (port in use): like a bus bind failure, the daemon exits 69."""

    code = "metrics_unavailable"


class CardAbsentError(ReaderdError):
    """A command needs the card on a reader and there is none (or another card came meanwhile)."""

    code = "no_card"


class UnknownReaderError(ReaderdError):
    """A command named a reader this daemon does not have."""

    code = "unknown_reader"


class Refusal(ReaderdError):
    """A request refused with a code of its own: the one coded error of the control plane.

    A command handler raises it (``bad_request``, ``unknown_reader``; a plugin's ``insufficient_points``,
    ``no_card``); the caller gets ``code``, the message and ``details`` in the reply's ``error``, and the
    clients (readerctl, the bus client, the test fixture) raise it again from such a reply. It is not a
    failure of the plugin that raised it: no ``plugin.error``, no quarantine.
    """

    def __init__(self, code: str, message: str, **details: object) -> None:
        self.code = code
        self._details = details
        super().__init__(message)

    def details(self) -> dict[str, object]:
        return dict(self._details)


class PluginError(ReaderdError):
    """A plugin hook raised or timed out; the plugin is named, the daemon goes on."""

    code = "plugin_error"

    def __init__(self, plugin: str, hook: str, message: str) -> None:
        self.plugin = plugin
        self.hook = hook
        super().__init__(f"plugin {plugin!r}, hook {hook}: {message}")


# --- certificate validation (readerd.auth.certvalidation) -------------------------------------------------
class TrustAnchorError(ConfigError):
    """A configured trust anchor file or directory is missing, unreadable, empty or holds no usable CA.

    A configuration error: the daemon exits 78 rather than run without knowing whom it trusts.
    """

    code = "bad_trust_anchors"


class CrlUnavailableError(ReaderdError):
    """A configured CRL file is missing, unreadable or not a CRL. ``reason`` is a fixed code
    (``missing``, ``unreadable``, ``corrupt``); the validator turns it into a ``crl_unavailable`` result."""

    code = "crl_unavailable"

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class CertificateRejectedError(ReaderdError):
    """A validator did not accept the card's certificate; ``outcome`` says why (never which certificate)."""

    code = "certificate_rejected"

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome
        super().__init__(f"certificate not accepted: {outcome}")

    def details(self) -> dict[str, object]:
        return {"validation": self.outcome}


# --- JPKI authentication on the control channel (readerd.auth) ----------------------------------------------
class AuthNotConfiguredError(ReaderdError):
    """No trust anchors and CRL are configured: a proof of possession could not be judged, so none is
    attempted (no PIN is asked for)."""

    code = "auth_not_configured"


class AuthSessionInvalidError(ReaderdError):
    """The ``auth_id`` is unknown, expired, spent, belongs to another caller, or its card left the reader.
    Nothing was sent to the card. ``reason`` is a fixed code."""

    code = "auth_session_invalid"

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)

    def details(self) -> dict[str, object]:
        return {"reason": self.reason}


# --- proof of possession (readerd.auth.challenges) --------------------------------------------------------
class ChallengeError(ReaderdError):
    """A challenge could not be redeemed; nothing signed against it may be accepted."""

    code = "challenge_invalid"


class ChallengeUnknownError(ChallengeError):
    """No such challenge: never issued here, or evicted from the bounded store."""

    code = "challenge_unknown"


class ChallengeUsedError(ChallengeError):
    """The challenge was already redeemed: each one is good for one attempt only."""

    code = "challenge_used"


class ChallengeExpiredError(ChallengeError):
    """The challenge is older than its time to live."""

    code = "challenge_expired"


class ChallengeMismatchError(ChallengeError):
    """The challenge was issued for another reader; it is spent all the same."""

    code = "challenge_mismatch"


class SignatureInvalidError(ReaderdError):
    """The card's signature over a challenge does not verify with the certificate's public key."""

    code = "signature_invalid"


# --- the LAN bus (readerd.bus) ------------------------------------------------------------------------------
class GapUnrecoverableError(ReaderdError):
    """``events.since`` was asked for events the log no longer holds (older than its retention): the
    caller lost events for good and must know it. ``oldest_seq`` is the oldest event still held."""

    code = "gap_unrecoverable"

    def __init__(self, *, oldest_seq: int, asked: int) -> None:
        self.oldest_seq = oldest_seq
        self.asked = asked
        super().__init__(f"events after seq {asked} are no longer logged; the oldest held is {oldest_seq}")

    def details(self) -> dict[str, object]:
        return {"oldest_seq": self.oldest_seq}


class ForbiddenError(ReaderdError):
    """The caller's CURVE key is allowed on the bus but not for this command (a subscribe-only key)."""

    code = "forbidden"


class BusSilentError(ReaderdError):
    """A client heard neither an event nor a heartbeat within its heartbeat timeout: the daemon is dead,
    the network silent, or this client's key was revoked. The client keeps its sockets and may go on."""

    code = "bus_silent"
