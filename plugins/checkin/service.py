"""Event check-in: the rules, on the plugin store, without the daemon (the plugin class wires it to hooks).

One check-in per person per event, across every kiosk: ``checkins`` in the shared store has a unique
``(event_id, person)``, and the capacity is counted in the same serializable transaction as the insert, so
two kiosks can neither both admit the last place nor both count one person.

Offline (the shared store unreachable) a kiosk still admits people: it checks its own ``outbox`` (a
person already checked in *here* is answered "already checked in"), admits within the window, and keeps
the row with ``synced = 0``. :meth:`CheckinService.sync` later inserts each row under its own id
(a nonce made at the tap): a row that arrives twice is one row; a person who checked in at two offline
kiosks is kept once, and the second row is marked ``duplicate`` (pretix's offline check-in works the same
way). Capacity cannot be enforced across kiosks while they are offline: documented, and the attendance
report shows the real count.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from plugins.checkin.schema import LOCAL, SHARED, Tables
from plugins.common import (
    idempotent,
    iso,
    parse_instant,
    queue_withdrawal,
    queued_withdrawals,
    rekey_request_results,
    requests_table,
    text_arg,
    upsert,
)
from readerd.plugin import JsonObject, PluginStore, Refusal, StoreUnavailableError

log = structlog.get_logger("plugins.checkin")

T = TypeVar("T")

EVENT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
#: Check-in ids from a tap's bus event id (uuid5): distinct from the bus ids, the same for the same tap.
TAP_NAMESPACE = uuid.UUID("6f1c7a52-3b8e-4d0f-9a61-2c5e8d4b7a90")


@dataclass(frozen=True)
class Event:
    event_id: str
    name: str
    place: str
    starts_at: str
    ends_at: str
    capacity: int | None
    points: int

    def public(self) -> JsonObject:
        return {
            "event_id": self.event_id,
            "name": self.name,
            "place": self.place,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "capacity": self.capacity,
            "points": self.points,
        }


class CheckinService:
    def __init__(self, store: PluginStore, kiosk: str, *, retry_after: float = 30.0) -> None:
        self.store = store
        self.kiosk = kiosk
        self.t = Tables(store.shared, store.local)
        self.requests = requests_table(store.shared)
        self._shared_migrated = False
        self._down_until = 0.0
        self.retry_after = retry_after
        store.local.migrate(LOCAL)

    def _shared_tx(self, fn: Callable[[Connection], T], *, readonly: bool = False, probe: bool = False) -> T:
        """A transaction on the shared store, which may be down (a kiosk keeps checking people in).

        The schema is migrated on first contact (a kiosk must start while the server is down). After a
        failure the store is taken for down for ``retry_after`` seconds and not tried at a tap, so a tap
        never waits out a connection timeout twice; ``probe`` (the sync loop) tries anyway.
        """
        if not probe and time.monotonic() < self._down_until:
            raise StoreUnavailableError("shared store down (retrying in the background)")
        try:
            if not self._shared_migrated:
                self.store.shared.migrate(SHARED)
                self._shared_migrated = True
            result = self.store.shared.transaction(fn, readonly=readonly)
        except StoreUnavailableError:
            self._down_until = time.monotonic() + self.retry_after
            raise
        self._down_until = 0.0
        return result

    def now(self) -> datetime:
        return self.store.now()

    # -- events -----------------------------------------------------------------------------------
    def define_event(self, args: JsonObject) -> JsonObject:
        event_id = text_arg(args, "event_id")
        if not EVENT_ID.fullmatch(event_id):
            raise Refusal("bad_request", "event_id: lower-case letters, digits and -, 1..64")
        starts = parse_instant(args.get("starts_at"), "starts_at")
        ends = parse_instant(args.get("ends_at"), "ends_at")
        if ends <= starts:
            raise Refusal("bad_request", "ends_at must be after starts_at")
        capacity = args.get("capacity")
        if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
            raise Refusal("bad_request", "capacity: a positive whole number (or leave it out: no limit)")
        points = args.get("points", 0)
        if not isinstance(points, int) or not 0 <= points <= 100_000:
            raise Refusal("bad_request", "points: 0..100000 participation points")
        event = Event(
            event_id,
            text_arg(args, "name", max_length=200),
            text_arg(args, "place", max_length=200),
            iso(starts),
            iso(ends),
            capacity,
            points,
        )
        values = {**event.public(), "updated_at": iso(self.now())}

        def apply(conn: Connection) -> JsonObject:
            upsert(conn, self.t.events, "event_id", values)
            return {"event": event.public()}

        now = self.now()
        result = self._shared_tx(
            lambda conn: idempotent(conn, self.requests, "checkin.define_event", args, now, apply)
        )
        self.store.local.transaction(lambda conn: upsert(conn, self.t.event_cache, "event_id", values))
        return result

    def event(self, event_id: str) -> Event | None:
        """The event from the shared store (refreshing the kiosk's cache), or from the cache offline."""
        try:
            row = self._shared_tx(
                lambda conn: conn.execute(
                    sa.select(self.t.events).where(self.t.events.c.event_id == event_id)
                ).first(),
                readonly=True,
            )
            if row is not None:
                values = dict(row._mapping)
                self.store.local.transaction(
                    lambda conn: upsert(conn, self.t.event_cache, "event_id", values)
                )
        except StoreUnavailableError:
            row = self.store.local.transaction(
                lambda conn: conn.execute(
                    sa.select(self.t.event_cache).where(self.t.event_cache.c.event_id == event_id)
                ).first(),
                readonly=True,
            )
        if row is None:
            return None
        m: Any = row._mapping
        return Event(
            m["event_id"], m["name"], m["place"], m["starts_at"], m["ends_at"], m["capacity"], m["points"]
        )

    # -- check-in ---------------------------------------------------------------------------------
    def check_in(
        self, event_id: str, person: str, via: str, reader: str, tap: str | None = None
    ) -> JsonObject:
        """Admit ``person`` to the event or say why not; the result is what the kiosk screen shows.

        ``tap``: the bus event's id. The check-in's id is derived from it, so the same tap handed again
        (a replay after a crash between the commit and the result reaching the bus) is recognised and
        answered ``accepted`` with the same ``checkin_id`` (the points plugin credits that once), where
        another tap of the same person is ``already_checked_in``.
        """
        event = self.event(event_id)
        base: JsonObject = {"event_id": event_id}
        if event is None:
            return {**base, "status": "unknown_event"}
        now = iso(self.now())
        if now < event.starts_at:
            return {**base, "status": "not_open", "starts_at": event.starts_at}
        if now >= event.ends_at:
            return {**base, "status": "closed"}
        base["capacity"] = event.capacity
        out = self.t.outbox
        local = self.store.local.transaction(
            lambda conn: conn.execute(
                sa.select(out.c.id).where(out.c.event_id == event_id, out.c.person == person)
            ).first(),
            readonly=True,
        )
        row_id = str(uuid.uuid5(TAP_NAMESPACE, tap)) if tap else str(uuid.uuid4())
        if local is not None and local.id != row_id:
            return {**base, "status": "already_checked_in"}
        row = {
            "id": row_id,
            "event_id": event_id,
            "person": person,
            "via": via,
            "kiosk": self.kiosk,
            "reader": reader,
            "checked_in_at": now,
        }
        try:
            status, count = self._shared_tx(lambda conn: self._admit(conn, event, row))
            offline = False
        except StoreUnavailableError:
            status, count, offline = "accepted", None, True
        if status in ("accepted", "already_checked_in"):
            synced = {"synced": 0 if offline else 1, "outcome": None if offline else "synced"}
            self.store.local.transaction(
                lambda conn: conn.execute(self.store.local.insert_or_ignore(out).values(**row, **synced))
            )
        result: JsonObject = {**base, "status": status}
        if count is not None:
            result["count"] = count
        if status == "accepted":
            result |= {"checkin_id": row["id"], "points": event.points}
        if offline:
            result["offline"] = True
        return result

    def _admit(self, conn: Connection, event: Event, row: JsonObject) -> tuple[str, int]:
        c = self.t.checkins.c
        count = int(conn.execute(sa.select(sa.func.count()).where(c.event_id == event.event_id)).scalar_one())
        there = conn.execute(
            sa.select(c.id).where(c.event_id == event.event_id, c.person == row["person"])
        ).first()
        if there is not None:
            if there.id == row["id"]:
                return "accepted", count  # this very tap, handed again: its check-in is there
            row["id"] = there.id  # the local record points at the shared one
            return "already_checked_in", count
        if event.capacity is not None and count >= event.capacity:
            return "full", count
        conn.execute(self.t.checkins.insert().values(**row))
        return "accepted", count + 1

    # -- offline outbox ---------------------------------------------------------------------------
    def sync(self) -> JsonObject:
        """Push every check-in taken offline to the shared store, each exactly once (a probe: tried
        even while the store is taken for down)."""
        out = self.t.outbox
        pending = self.store.local.transaction(
            lambda conn: [dict(r._mapping) for r in conn.execute(sa.select(out).where(out.c.synced == 0))],
            readonly=True,
        )
        if not pending:
            return {"synced": 0, "duplicates": 0, "pending": 0}
        synced = duplicates = 0
        for record in pending:
            row = {
                k: record[k] for k in ("id", "event_id", "person", "via", "kiosk", "reader", "checked_in_at")
            }
            outcome = self._shared_tx(functools.partial(self._push, row=row), probe=True)
            mark = out.update().where(out.c.id == row["id"]).values(synced=1, outcome=outcome)
            self.store.local.transaction(functools.partial(_execute, statement=mark))
            if outcome == "duplicate":
                duplicates += 1
            else:
                synced += 1
        log.info("offline check-ins synced", synced=synced, duplicates=duplicates)
        return {"synced": synced, "duplicates": duplicates, "pending": 0}

    def _push(self, conn: Connection, row: JsonObject) -> str:
        c = self.t.checkins.c
        there = conn.execute(
            sa.select(c.id).where(c.event_id == row["event_id"], c.person == row["person"])
        ).first()
        if there is None:
            conn.execute(self.store.shared.insert_or_ignore(self.t.checkins).values(**row))
            return "synced"
        return "synced" if there.id == row["id"] else "duplicate"

    def pending(self) -> int:
        out = self.t.outbox
        return int(
            self.store.local.transaction(
                lambda conn: conn.execute(sa.select(sa.func.count()).where(out.c.synced == 0)).scalar_one(),
                readonly=True,
            )
        )

    # -- FeliCa check-in cards --------------------------------------------------------------------
    def register_card(self, card: str, person: str, args: JsonObject) -> JsonObject:
        now = self.now()
        values = {"card": card, "person": person, "registered_at": iso(now)}

        def apply(conn: Connection) -> JsonObject:
            upsert(conn, self.t.cards, "card", values)
            return {"registered": True, "person": person}

        result = self._shared_tx(
            lambda conn: idempotent(
                conn, self.requests, "checkin.register_card", {**args, "card": card}, now, apply
            )
        )
        self.store.local.transaction(lambda conn: upsert(conn, self.t.card_cache, "card", values))
        return result

    def person_for_card(self, card: str) -> str | None:
        try:
            row = self._shared_tx(
                lambda conn: conn.execute(
                    sa.select(self.t.cards.c.person).where(self.t.cards.c.card == card)
                ).first(),
                readonly=True,
            )
        except StoreUnavailableError:
            cache = self.t.card_cache
            row = self.store.local.transaction(
                lambda conn: conn.execute(sa.select(cache.c.person).where(cache.c.card == card)).first(),
                readonly=True,
            )
        return None if row is None else str(row.person)

    # -- a member's withdrawal --------------------------------------------------------------------
    def withdraw(self, persons: list[str]) -> JsonObject:
        """Forget a withdrawn member (each of the person keys they may be recorded under).

        Their check-ins keep counting (capacity, attendance) under ``withdrawn:<random>``, one random key
        per person key, so the unique (event, person) rule holds; their FeliCa check-in cards are
        deleted. Local first (``outbox`` re-keyed, synced or not, ``card_cache`` deleted; the withdrawal
        queued), in one transaction; then the shared store (``checkins`` re-keyed, ``cards`` deleted, the
        idempotency records of their card registrations re-keyed), in one transaction, and the queue
        entry dropped. If the shared store is down, the withdrawal stays queued and
        :meth:`retry_withdrawals` (the sync loop) finishes it. Idempotent: a second call finds nothing.
        Returns counts (``shared_pending`` true when the shared part waits)."""
        if not persons:
            return {"checkins": 0, "outbox": 0, "cards": 0, "card_cache": 0, "shared_pending": False}
        out, cache, queue = self.t.outbox, self.t.card_cache, self.t.withdrawals
        now = self.now()

        def local(conn: Connection) -> tuple[dict[str, str], int, int]:
            anon = queue_withdrawal(conn, queue, persons, now)
            rekeyed = deleted = 0
            for person, key in anon.items():
                rekeyed += conn.execute(
                    out.update().where(out.c.person == person).values(person=key)
                ).rowcount
                deleted += conn.execute(cache.delete().where(cache.c.person == person)).rowcount
            return anon, rekeyed, deleted

        anon, outbox, card_cache = self.store.local.transaction(local)
        counts: JsonObject = {"outbox": outbox, "card_cache": card_cache}
        try:
            checkins, cards = self._withdraw_shared(anon)
        except StoreUnavailableError:
            return {**counts, "checkins": 0, "cards": 0, "shared_pending": True}
        return {**counts, "checkins": checkins, "cards": cards, "shared_pending": False}

    def _withdraw_shared(self, anon: dict[str, str]) -> tuple[int, int]:
        """The shared part of a withdrawal (a probe: tried even while the store is taken for down), then
        its queue entries dropped. (re-keyed check-ins, deleted cards)."""
        checkins, cards = self.t.checkins, self.t.cards

        def shared(conn: Connection) -> tuple[int, int]:
            rekeyed = deleted = 0
            for person, key in anon.items():
                rekeyed += conn.execute(
                    checkins.update().where(checkins.c.person == person).values(person=key)
                ).rowcount
                deleted += conn.execute(cards.delete().where(cards.c.person == person)).rowcount
            rekey_request_results(conn, self.requests, "checkin.register_card", anon)
            return rekeyed, deleted

        done = self._shared_tx(shared, probe=True)
        queue = self.t.withdrawals
        self.store.local.transaction(
            lambda conn: conn.execute(queue.delete().where(queue.c.person.in_(list(anon))))
        )
        return done

    def withdrawals_pending(self) -> int:
        queue = self.t.withdrawals
        return int(
            self.store.local.transaction(
                lambda conn: conn.execute(sa.select(sa.func.count()).select_from(queue)).scalar_one(),
                readonly=True,
            )
        )

    def retry_withdrawals(self) -> int:
        """Finish the withdrawals whose shared part waited (the sync loop, before the outbox is pushed, so
        a re-keyed offline row meets its re-keyed shared twin). How many persons were done; raises
        :class:`StoreUnavailableError` while the store is still down."""
        queue = self.t.withdrawals
        anon = self.store.local.transaction(lambda conn: queued_withdrawals(conn, queue), readonly=True)
        if not anon:
            return 0
        checkins, cards = self._withdraw_shared(anon)
        log.info("member withdrawn: shared check-ins anonymised", checkins=checkins, cards=cards)
        return len(anon)

    # -- reports ----------------------------------------------------------------------------------
    def attendance(self, event_id: str) -> JsonObject:
        """Every check-in of the event, in order (the shared store: the whole ward's record)."""
        c = self.t.checkins.c
        rows = self._shared_tx(
            lambda conn: [
                dict(r._mapping)
                for r in conn.execute(
                    sa.select(c.person, c.via, c.kiosk, c.checked_in_at)
                    .where(c.event_id == event_id)
                    .order_by(c.checked_in_at, c.person)
                )
            ],
            readonly=True,
        )
        return {"event_id": event_id, "count": len(rows), "rows": rows}

    def status(self, event_id: str) -> JsonObject:
        event = self.event(event_id)
        if event is None:
            raise Refusal("unknown_event", f"no event {event_id!r}")
        now = iso(self.now())
        try:
            count: int | None = self.attendance(event_id)["count"]
        except StoreUnavailableError:
            count = None
        return {
            **event.public(),
            "open": event.starts_at <= now < event.ends_at,
            "checked_in": count,
            "pending_sync": self.pending(),
        }


def _execute(conn: Connection, statement: sa.Executable) -> None:
    conn.execute(statement)
