"""Library lending on readerd: patrons linked to MyKey/member IDs, loans through an :class:`IlsAdapter`.

A patron record is (library, person) -> library card number, with the date the registration runs out.
Registering and the yearly renewal of the registration need a JPKI proof of possession made on the same
reader moments before (``card.authenticated``, at most ``auth_window`` seconds old, the card still there):
the plugin never sees a PIN, it trusts the daemon's event. The same person may be a patron of several
libraries, one record each.

Loans are the ILS's: readerd asks it (SIP2, or the local store for a library without a system) and keeps
only the idempotency record of each command, so a kiosk that lost a reply and sends the same key again
gets the first answer without a second checkout.

A member's withdrawal (``member.withdrawn``) deletes their patron links (docs/privacy.md, "Withdrawal and
retention, per built-in"); the kiosk's local ``withdrawals`` keeps one only while the shared store is down.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugins.common import (
    KEY_MAX,
    create_requests_table,
    iso,
    queue_withdrawal,
    request_digest,
    requests_table,
    text_arg,
)
from plugins.library.ils import IlsAdapter, LoanResult
from readerd.plugin import (
    JsonObject,
    MigrationContext,
    PluginStore,
    Refusal,
    StoreBusyError,
    StoreUnavailableError,
    business_time,
)

T = TypeVar("T")


def _patron_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("library_id", sa.String(64), primary_key=True),
        sa.Column("person", sa.String(64), primary_key=True),
        sa.Column("library_card", sa.String(64), nullable=False),
        sa.Column("registered_at", sa.String(20), nullable=False),
        sa.Column("valid_until", sa.String(10), nullable=False),
    ]


def shared_v1(m: MigrationContext) -> None:
    m.create_table("patrons", *_patron_columns(), sa.UniqueConstraint("library_id", "library_card"))
    create_requests_table(m)


def _withdrawal_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("person", sa.String(64), primary_key=True),
        sa.Column("anon", sa.String(64), nullable=False),
        sa.Column("queued_at", sa.String(20), nullable=False),
    ]


def local_v1(m: MigrationContext) -> None:
    """The kiosk's own: withdrawals whose patron links wait for the shared store (it was down), kept only
    until they are deleted there."""
    m.create_table("withdrawals", *_withdrawal_columns())


#: The plugin's default schemas (``readerd_schemas`` declares them with the local ILS's, ``loans``).
SHARED_MIGRATIONS = (shared_v1,)
LOCAL_MIGRATIONS = (local_v1,)


@dataclass(frozen=True)
class Patron:
    library_card: str
    valid_until: str


class LibraryService:
    def __init__(self, store: PluginStore, library_id: str, *, registration_years: int = 1) -> None:
        self.store = store
        self.db = store.shared
        self.library_id = library_id
        self.registration_years = registration_years
        self.patrons = self.db.table("patrons", *_patron_columns())
        self.requests = requests_table(self.db)
        self._migrated = False
        self._local_migrated = False
        self.withdrawals = store.local.table("withdrawals", *_withdrawal_columns())
        self.ils: IlsAdapter | None = None

    def _tx(self, fn: Callable[[Connection], T], *, readonly: bool = False) -> T:
        if not self._migrated:
            self.db.migrate(SHARED_MIGRATIONS)
            self._migrated = True
        return self.db.transaction(fn, readonly=readonly)

    def today(self) -> date:
        return business_time.business_date(self.store.now())

    def _until(self, start: date) -> str:
        try:
            return start.replace(year=start.year + self.registration_years).isoformat()
        except ValueError:  # 29 February: the registration runs to 28 February
            return (start + timedelta(days=365 * self.registration_years)).isoformat()

    # -- patrons --------------------------------------------------------------------------------------
    def patron(self, person: str) -> Patron | None:
        p = self.patrons.c
        row = self._tx(
            lambda conn: conn.execute(
                sa.select(p.library_card, p.valid_until).where(
                    p.library_id == self.library_id, p.person == person
                )
            ).first(),
            readonly=True,
        )
        return None if row is None else Patron(row.library_card, row.valid_until)

    def is_card(self, library_card: str) -> bool:
        """A registered library card of this library (what the local ILS asks)."""
        p = self.patrons.c
        today = self.today().isoformat()
        row = self._tx(
            lambda conn: conn.execute(
                sa.select(p.valid_until).where(
                    p.library_id == self.library_id, p.library_card == library_card
                )
            ).first(),
            readonly=True,
        )
        return row is not None and row.valid_until >= today

    def register(self, person: str, args: JsonObject) -> JsonObject:
        card = text_arg(args, "library_card")
        if not card.isalnum():
            raise Refusal("bad_request", "library_card: letters and digits")
        today = self.today()

        def apply(conn: Connection) -> JsonObject:
            p = self.patrons.c
            mine = conn.execute(
                sa.select(p.library_card).where(p.library_id == self.library_id, p.person == person)
            ).first()
            if mine is not None and mine.library_card != card:
                raise Refusal("already_registered", "this person has another library card here")
            other = conn.execute(
                sa.select(p.person).where(p.library_id == self.library_id, p.library_card == card)
            ).first()
            if other is not None and other.person != person:
                raise Refusal("card_in_use", "this library card belongs to someone else")
            values = {"valid_until": self._until(today)}
            if mine is None:
                conn.execute(
                    self.patrons.insert().values(
                        library_id=self.library_id,
                        person=person,
                        library_card=card,
                        registered_at=iso(self.store.now()),
                        **values,
                    )
                )
            else:
                conn.execute(
                    self.patrons.update()
                    .where(p.library_id == self.library_id, p.person == person)
                    .values(**values)
                )
            return {"library_id": self.library_id, "registered": True, "valid_until": values["valid_until"]}

        return self._keyed("library.register", {**args, "person": person}, lambda: self._tx(apply))

    def renew_registration(self, person: str) -> JsonObject:
        """Another year from today (or from the current end, if that is later)."""
        current = self.patron(person)
        if current is None:
            raise Refusal("not_registered", "no patron record here for this card")
        start = max(self.today(), date.fromisoformat(current.valid_until))
        until = self._until(start)
        p = self.patrons.c
        self._tx(
            lambda conn: conn.execute(
                self.patrons.update()
                .where(p.library_id == self.library_id, p.person == person)
                .values(valid_until=until)
            )
        )
        return {"library_id": self.library_id, "valid_until": until}

    # -- a member's withdrawal ------------------------------------------------------------------------
    def withdraw(self, persons: list[str]) -> JsonObject:
        """Forget a withdrawn member: their patron links, (library, person) -> library card, deleted in
        every library of the store (the withdrawal reaches one kiosk only), in one transaction. The loans
        stay the library system's, keyed by the library card, until returned; the library keeps its own
        patron record by its own rules. If the shared store is down the withdrawal is queued locally and
        :meth:`retry_withdrawals` finishes it. Idempotent: a second call finds nothing."""
        if not persons:
            return {"patrons": 0, "shared_pending": False}
        self._local_ready()
        now = self.store.now()
        self.store.local.transaction(lambda conn: queue_withdrawal(conn, self.withdrawals, persons, now))
        try:
            deleted = self._withdraw_shared(persons)
        except (StoreUnavailableError, StoreBusyError):
            return {"patrons": 0, "shared_pending": True}
        return {"patrons": deleted, "shared_pending": False}

    def _withdraw_shared(self, persons: list[str]) -> int:
        p = self.patrons
        deleted = self._tx(lambda conn: conn.execute(p.delete().where(p.c.person.in_(persons))).rowcount)
        w = self.withdrawals
        self.store.local.transaction(lambda conn: conn.execute(w.delete().where(w.c.person.in_(persons))))
        return int(deleted)

    def retry_withdrawals(self) -> int:
        """Delete the patron links of queued withdrawals (how many); raises while the store is down."""
        self._local_ready()
        w = self.withdrawals
        persons = self.store.local.transaction(
            lambda conn: [str(r.person) for r in conn.execute(sa.select(w.c.person))], readonly=True
        )
        return self._withdraw_shared(persons) if persons else 0

    def _local_ready(self) -> None:
        if not self._local_migrated:
            self.store.local.migrate(LOCAL_MIGRATIONS)
            self._local_migrated = True

    # -- loans ----------------------------------------------------------------------------------------
    def _ils(self) -> IlsAdapter:
        if self.ils is None:
            raise Refusal("not_ready", "no library system configured")
        return self.ils

    def status(self, person: str) -> JsonObject:
        """What a tap shows: registered or not, loans and overdue counts (never names or titles)."""
        patron = self.patron(person)
        if patron is None:
            return {"status": "not_registered"}
        if patron.valid_until < self.today().isoformat():
            return {"status": "registration_expired", "valid_until": patron.valid_until}
        info = self._ils().patron(patron.library_card)
        status = "ok" if info.valid else "blocked"
        return {
            "status": status,
            "loans": info.loans,
            "overdue": info.overdue,
            "limit": info.limit,
            "valid_until": patron.valid_until,
        }

    def _card_of(self, person: str) -> str:
        patron = self.patron(person)
        if patron is None:
            raise Refusal("not_registered", "no patron record here for this card")
        if patron.valid_until < self.today().isoformat():
            raise Refusal("registration_expired", f"the registration ran out on {patron.valid_until}")
        return patron.library_card

    def checkout(self, person: str, args: JsonObject) -> JsonObject:
        item = _item(args)
        return self._keyed(
            "library.checkout",
            {**args, "person": person},
            lambda: _loan(self._ils().checkout(self._card_of(person), item), item),
        )

    def renew(self, person: str, args: JsonObject) -> JsonObject:
        item = _item(args)
        return self._keyed(
            "library.renew",
            {**args, "person": person},
            lambda: _loan(self._ils().renew(self._card_of(person), item), item),
        )

    def checkin(self, args: JsonObject) -> JsonObject:
        item = _item(args)
        return self._keyed("library.return", args, lambda: _loan(self._ils().checkin(item), item))

    def _keyed(self, command: str, args: JsonObject, run: Callable[[], JsonObject]) -> JsonObject:
        """Apply ``run`` once per idempotency key. The ILS call happens outside any transaction (a retried
        transaction must never check an item out twice); the record is written after it."""
        key = text_arg(args, "idempotency_key", max_length=KEY_MAX)
        r = self.requests.c
        digest = request_digest(command, args)
        row = self._tx(
            lambda conn: conn.execute(sa.select(r.command, r.digest, r.result).where(r.key == key)).first(),
            readonly=True,
        )
        if row is not None:
            if row.command != command or row.digest != digest:
                raise Refusal("idempotency_conflict", "this idempotency_key was used for another request")
            replay: dict[str, Any] = json.loads(row.result)
            return {**replay, "replayed": True}
        result = run()
        record = {
            "key": key,
            "command": command,
            "digest": digest,
            "result": json.dumps(result, ensure_ascii=False),
            "created_at": iso(self.store.now()),
        }
        self._tx(lambda conn: conn.execute(self.db.insert_or_ignore(self.requests).values(**record)))
        return result


def _item(args: JsonObject) -> str:
    item = text_arg(args, "item")
    if not item.isalnum():
        raise Refusal("unknown_item", "an item barcode is letters and digits")
    return item


def _loan(result: LoanResult, item: str) -> JsonObject:
    if not result.ok:
        raise Refusal(
            result.reason or "refused", f"the library system refused: {result.reason or 'no reason given'}"
        )
    return {"item": item, "due": result.due.isoformat() if result.due else None}
