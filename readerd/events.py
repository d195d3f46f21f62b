"""Card and reader events: typed, versioned, and split into what may leave the kiosk and what may not.

An event has a ``type`` (the bus topic), a public ``data`` dict that goes on the PUB socket, and a
``private`` dict that only the plugin host's private feed sees (certificate serial and validity, FeliCa
IDm and blocks: docs/design.md D1). The bus stamps ``seq``, ``run_id``, ``id``, ``ts`` and ``kiosk`` when it
publishes, so every event has one publisher-assigned order. The JSON envelope is documented in
``docs/events.md``; ``v`` changes only with an incompatible change.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum, unique
from typing import Any

ENVELOPE_VERSION = 1


@unique
class EventType(StrEnum):
    READER_ADDED = "reader.added"
    READER_REMOVED = "reader.removed"
    READER_ERROR = "reader.error"
    CARD_PRESENTED = "card.presented"
    CARD_IDENTIFIED = "card.identified"
    CARD_AUTHENTICATED = "card.authenticated"
    CARD_AUTH_FAILED = "card.auth_failed"
    CARD_REMOVED = "card.removed"
    CARD_READ_ABORTED = "card.read_aborted"
    CARD_EVENTS_LOST = "card.events_lost"
    MEMBER_ENROLLED = "member.enrolled"
    MEMBER_WITHDRAWN = "member.withdrawn"
    HEARTBEAT = "heartbeat"
    PLUGIN_ERROR = "plugin.error"


#: The card lane (docs/design.md D14): what a citizen's tap leads to. The bus never drops these for a full
#: queue: they have capacity of their own and then wait briefly; one that is lost all the same makes the
#: daemon unhealthy and the kiosk screen ask for another tap. ``plugin.error`` is a report to the operator,
#: not a tap's answer, and goes with the ordinary events (heartbeats, readers), dropped and counted.
CARD_LANE_PREFIXES = ("card.", "member.", "plugin.")


def card_lane(event_type: str) -> bool:
    """Whether events of this type are in the card lane (never dropped silently; see above)."""
    return event_type.startswith(CARD_LANE_PREFIXES) and event_type != EventType.PLUGIN_ERROR


@unique
class CardKind(StrEnum):
    JPKI = "jpki"
    FELICA = "felica"
    UNKNOWN = "unknown"


@unique
class AbortReason(StrEnum):
    """Why a read ended without an identity (``card.read_aborted``)."""

    REMOVED = "removed"  # the card left during the read
    MALFORMED = "malformed"  # garbage, truncated data, a certificate we cannot parse
    TIMEOUT = "timeout"  # the card stalled past the session deadline
    TRANSPORT = "transport"  # the reader or its service failed
    AUTH_REQUIRED = "auth_required"  # smartphone JPKI: the certificate needs the PIN
    CARD_ERROR = "card_error"  # the card answered an unexpected status word
    DENIED = "denied"  # the guard refused a command (a bug, never a card's fault)
    INTERNAL = "internal_error"  # a bug in readerd: logged with its traceback


@dataclass(frozen=True)
class Event:
    """One event before the bus stamps it. ``private`` never reaches a non-plugin subscriber.

    ``type`` is an :class:`EventType`, or ``plugin.<name>.<event>`` for a plugin's result.
    """

    type: EventType | str
    reader: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    private: dict[str, Any] = field(default_factory=dict)
    # A plugin result's origin: the id of the event the plugin was handling (None: a command, a timer),
    # and whether that event was replayed after a restart (the card is gone: screens skip the result).
    cause: str | None = None
    replayed: bool = False


@dataclass(frozen=True)
class Envelope:
    """A stamped event as it travels: the JSON of ``docs/events.md``."""

    seq: int
    run_id: str
    id: str
    ts: str
    kiosk: str
    event: Event

    @functools.cached_property
    def topic(self) -> str:
        """Kept on the instance once asked (the plugin host asks a dozen times per event)."""
        return str(self.event.type)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Envelope:
        """An envelope read back (the private feed, the event log); ValueError when it is not one."""
        try:
            reader, cause = obj.get("reader"), obj.get("cause")
            if not isinstance(reader, str | None) or not isinstance(cause, str | None):
                raise TypeError("reader and cause are strings or null")  # else encoding it fails later
            event = Event(
                type=str(obj["type"]),
                reader=reader,
                data=dict(obj.get("data") or {}),
                private=dict(obj.get("private") or {}),
                cause=cause,
                replayed=bool(obj.get("replayed", False)),
            )
            return cls(
                seq=int(obj["seq"]),
                run_id=str(obj.get("run_id", "")),
                id=str(obj["id"]),
                ts=str(obj["ts"]),
                kiosk=str(obj["kiosk"]),
                event=event,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # Overflow: "seq": Infinity (fuzzer)
            raise ValueError(f"not an envelope: {type(e).__name__}: {e}") from e

    @classmethod
    def from_json(cls, body: bytes) -> Envelope:
        obj = json.loads(body)
        if not isinstance(obj, dict):
            raise ValueError("an envelope is a JSON object")
        return cls.from_dict(obj)

    def public_dict(self) -> dict[str, Any]:
        envelope = {
            "v": ENVELOPE_VERSION,
            "seq": self.seq,
            "run_id": self.run_id,
            "id": self.id,
            "ts": self.ts,
            "kiosk": self.kiosk,
            "reader": self.event.reader,
            "type": str(self.event.type),
            "data": self.event.data,
        }
        if self.event.cause is not None:
            envelope["cause"] = self.event.cause
        if self.event.replayed:
            envelope["replayed"] = True
        return envelope

    def private_dict(self) -> dict[str, Any]:
        return {**self.public_dict(), "private": self.event.private}

    def public_json(self) -> bytes:
        """Encoded once per envelope (kept on the instance, not a field): the event log and both PUB
        sockets send the same bytes."""
        encoded: bytes | None = self.__dict__.get("_public_json")
        if encoded is None:
            encoded = self._encode_public()
            object.__setattr__(self, "_public_json", encoded)  # frozen: set past the dataclass's guard
        return encoded

    def _encode_public(self) -> bytes:
        """The members of :meth:`public_dict`, in its order, written out directly: only ``data`` (and a
        ``cause``) go through the encoder, the rest are a few strings. The bus encodes every event on its
        one thread, so this is per-event cost. Byte for byte ``json.dumps(public_dict(),
        ensure_ascii=False, separators=(",", ":"))`` (tests/bus/test_envelope_encoding.py)."""
        event = self.event
        reader = "null" if event.reader is None else _string(event.reader)
        text = (
            f'{{"v":{ENVELOPE_VERSION},"seq":{int(self.seq)},"run_id":{_string(self.run_id)},'
            f'"id":{_string(self.id)},"ts":{_string(self.ts)},"kiosk":{_string(self.kiosk)},'
            f'"reader":{reader},"type":{_string(str(event.type))},"data":{_encode(event.data)}'
        )
        if event.cause is not None:
            text += f',"cause":{_encode(event.cause)}'
        if event.replayed:
            text += ',"replayed":true'
        return (text + "}").encode("utf-8")

    def private_json(self) -> bytes:
        """The public JSON with ``private`` added as its last member: the same bytes as encoding
        :meth:`private_dict`, without encoding the public part a second time."""
        private = _encode(self.event.private) if self.event.private else "{}"
        return self.public_json()[:-1] + b',"private":' + private.encode("utf-8") + b"}"


#: The envelope's encoder, made once (``json.dumps`` with options makes a new encoder at every call).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: A JSON string literal as that encoder writes one (json's own function for ``ensure_ascii=False``).
_string = json.encoder.encode_basestring


def utc_ts(now: datetime | None = None) -> str:
    """``ts`` as the envelope has it: RFC 3339 UTC with milliseconds and a ``Z``."""
    return (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text, from one read of the system's random source: the bus
    stamps a batch of events with them (``uuid.uuid4`` costs a system call and an object per id)."""
    raw = os.urandom(16 * count).hex()
    ids = []
    for start in range(0, 32 * count, 32):
        h = raw[start : start + 32]
        ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return ids


#: The first hex digit of the RFC 4122 variant (binary 10xx), from any random one.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def stamp(
    event: Event,
    *,
    seq: int,
    run_id: str,
    kiosk: str,
    now: datetime | None = None,
    ts: str | None = None,
    id: str | None = None,
) -> Envelope:
    """The envelope of ``event``. ``ts`` and ``id``: the bus gives them for a whole batch (:func:`utc_ts`
    once, :func:`new_ids`); otherwise the time now (or ``now``) and a fresh UUID."""
    return Envelope(
        seq=seq,
        run_id=run_id,
        id=id or str(uuid.uuid4()),
        ts=utc_ts(now) if ts is None else ts,
        kiosk=kiosk,
        event=event,
    )


def parse_envelope(raw: bytes) -> dict[str, Any]:
    """For clients and tests: decode and check the fields every envelope has."""
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("an envelope is a JSON object")
    missing = {"v", "seq", "run_id", "id", "ts", "kiosk", "reader", "type", "data"} - set(obj)
    if missing:
        raise ValueError(f"envelope lacks {sorted(missing)}")
    return obj


# --- constructors: one per event type, so every producer spells the fields the same way --------------
def reader_added(reader: str, backend: str, **extra: object) -> Event:
    return Event(EventType.READER_ADDED, reader, {"backend": backend, **extra})


def reader_removed(reader: str, backend: str) -> Event:
    return Event(EventType.READER_REMOVED, reader, {"backend": backend})


def reader_error(reader: str | None, backend: str, reason: str, message: str) -> Event:
    return Event(EventType.READER_ERROR, reader, {"backend": backend, "reason": reason, "message": message})


def card_presented(reader: str, kind: CardKind, *, simulated: bool = False, repeat: bool = False) -> Event:
    data: dict[str, Any] = {"kind": str(kind), "repeat": repeat}
    if simulated:
        data["simulated"] = True
    return Event(EventType.CARD_PRESENTED, reader, data)


def card_identified(
    reader: str,
    kind: CardKind,
    identity: dict[str, Any],
    *,
    repeat: bool,
    read: dict[str, Any],
    private: dict[str, Any],
    simulated: bool = False,
) -> Event:
    """A card identified. ``identity``: the identity's public fields (pseudonym, MyKey ID, member ID);
    ``read``: how it was read (``apdus`` and ``read_path``; FeliCa's ``system_code``, ``services`` and
    ``frames``); ``private``: what only plugins that ask may see (the certificate's serial, issuer and
    validity; the IDm, PMm and blocks). Never the certificate itself."""
    data: dict[str, Any] = {"kind": str(kind), **identity, "repeat": repeat, **read}
    if simulated:
        data["simulated"] = True
    return Event(EventType.CARD_IDENTIFIED, reader, data, private)


def card_removed(reader: str, kind: CardKind, *, simulated: bool = False) -> Event:
    data: dict[str, Any] = {"kind": str(kind)}
    if simulated:
        data["simulated"] = True
    return Event(EventType.CARD_REMOVED, reader, data)


def card_read_aborted(
    reader: str, kind: CardKind, reason: AbortReason, *, apdus: int, error: str, simulated: bool = False
) -> Event:
    data: dict[str, Any] = {"kind": str(kind), "reason": str(reason), "apdus": apdus, "error": error}
    if simulated:
        data["simulated"] = True
    return Event(EventType.CARD_READ_ABORTED, reader, data)


def card_events_lost(reader: str | None, lost: int) -> Event:
    """Card events of ``reader`` (None: of no reader in particular) were lost inside the daemon (its bus
    was wedged): the kiosk screen asks the citizen to touch again. ``lost``: how many."""
    return Event(EventType.CARD_EVENTS_LOST, reader, {"lost": lost})


def card_authenticated(
    reader: str, identity: dict[str, Any], assurance: str, validation: dict[str, Any]
) -> Event:
    """The citizen proved possession (PIN + signature) and the certificate validated. Carries the identity
    and the validator's public fields (an ``expires_within_days`` bucket at most): never the certificate,
    its serial, CN or dates, never the PIN."""
    return Event(EventType.CARD_AUTHENTICATED, reader, {**identity, "assurance": assurance, **validation})


def card_auth_failed(reader: str, reason: str, **facts: object) -> Event:
    """An authentication ended without proof: ``reason`` is the error code (``wrong_pin``, ``revoked``...),
    ``facts`` fixed fields such as ``tries_left`` (a kiosk screen shows them)."""
    return Event(EventType.CARD_AUTH_FAILED, reader, {"reason": reason, **facts})


def member_enrolled(
    reader: str, member_id: str, pseudonym: str, mykey_id: str | None = None, *, created: bool
) -> Event:
    """The card on ``reader`` is (now, or already was) enrolled as ``member_id`` (``mykey.enroll`` or
    ``mykey.relink`` with the citizen's PIN): a plugin holding the card's ``card.identified`` from before
    the enrolment updates it, so the counter's next command needs no second tap."""
    data: dict[str, Any] = {"member_id": member_id, "pseudonym": pseudonym, "created": created}
    if mykey_id is not None:
        data["mykey_id"] = mykey_id
    return Event(EventType.MEMBER_ENROLLED, reader, data)


def member_withdrawn(reader: str, member_id: str, pseudonym: str, mykey_id: str | None = None) -> Event:
    """A citizen withdrew (``mykey.unenroll`` with their PIN): plugins delete or anonymise what they keep
    of the member by their retention rules (docs/privacy.md). Carries the member ID, MyKey ID (when there
    is one) and pseudonym the plugins keyed their records by, nothing else."""
    data: dict[str, Any] = {"member_id": member_id, "pseudonym": pseudonym}
    if mykey_id is not None:
        data["mykey_id"] = mykey_id
    return Event(EventType.MEMBER_WITHDRAWN, reader, data)


def plugin_result(
    plugin: str,
    event: str,
    data: dict[str, Any],
    reader: str | None = None,
    *,
    cause: str | None = None,
    replayed: bool = False,
) -> Event:
    """A plugin's result, published by the daemon so that it gets its place in ``seq``."""
    return Event(f"plugin.{plugin}.{event}", reader, data, cause=cause, replayed=replayed)


def plugin_error(plugin: str, hook: str, error: str, message: str, *, quarantined: bool) -> Event:
    data = {"plugin": plugin, "hook": hook, "error": error, "message": message, "quarantined": quarantined}
    return Event(EventType.PLUGIN_ERROR, None, data)


def heartbeat(*, uptime_s: float, readers: int) -> Event:
    """A heartbeat's envelope ``seq`` is the last event's: heartbeats take no seq of their own."""
    return Event(EventType.HEARTBEAT, None, {"uptime_s": round(uptime_s, 3), "readers": readers})
