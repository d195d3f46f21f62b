"""Municipal points (自治体ポイント): an append-only ledger on the shared store.

Rules, each a test:

* **A balance never goes negative**, even with many kiosks redeeming from one account at once. A
  redemption runs in one transaction that locks the account's row (``SELECT … FOR UPDATE`` on PostgreSQL;
  SQLite's ``BEGIN IMMEDIATE`` already serialises writers), sums the ledger, and appends the negative
  entry only if the sum covers it. On PostgreSQL that transaction runs READ COMMITTED: after the lock,
  the sum sees what the previous holder committed. SERIALIZABLE added nothing but aborts: its predicate
  locks on the ledger index made redemptions on *other* accounts fail and retry (bench/plugins_db.py:
  4,157 retries and 46 redemptions/s from 16 kiosks, 5 given up on one hot account).
* **Applied once.** Every command that changes money carries an ``idempotency_key``; earning from a
  check-in is keyed by the event and the person (``earn:<event>:<account>``), not the check-in's id, so a
  person admitted at two kiosks while they were offline earns once. The key's record commits with the
  entries.
* **Never silently lost.** An earning that cannot be credited now (the shared store down, the programme
  not defined or not open yet) waits in the kiosk's local ``pending_earns`` with its reason, is retried,
  and is credited or, once the programme's last earning day has passed, written off with the reason.
* **Programmes have dates** (JST business dates, inclusive): earning and grants until
  ``last_earning_day``, tickets issued until ``last_ticket_day``, points and tickets used until
  ``last_use_day``; after it, ``points.expire`` writes off what is left (an entry per account, so the
  ledger still sums to every balance).
* **No offline spending**: the shared store must answer (``store_unavailable`` otherwise), or two kiosks
  offline could spend the same points twice.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugins.common import (
    idempotent,
    iso,
    parse_date,
    queue_withdrawal,
    queued_withdrawals,
    rekey_request_results,
    request_digest,
    requests_table,
    text_arg,
    upsert,
)
from plugins.points.schema import LOCAL, SHARED, Tables, pending_table, withdrawals_table
from readerd.plugin import (
    JsonObject,
    PluginStore,
    Refusal,
    StoreBusyError,
    StoreUnavailableError,
    business_time,
)

T = TypeVar("T")

ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
MAX_AMOUNT = 1_000_000
TICKET_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U to misread


@dataclass(frozen=True)
class Programme:
    programme_id: str
    name: str
    last_earning_day: str
    last_ticket_day: str
    last_use_day: str
    ticket_valid_days: int
    first_earning_day: str | None = None


def slug(args: JsonObject, name: str) -> str:
    value = text_arg(args, name)
    if not ID.fullmatch(value):
        raise Refusal("bad_request", f"{name}: lower-case letters, digits and -, 1..64")
    return value


def amount_arg(args: JsonObject, name: str = "amount") -> int:
    value = args.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_AMOUNT:
        raise Refusal("bad_amount", f"{name}: a whole number of points, 1..{MAX_AMOUNT}")
    return value


#: Why an earning waits in ``pending_earns`` (retried); any other refusal writes it off.
WAITING = frozenset({"store_unavailable", "unknown_programme", "programme_not_open"})


class PointsService:
    def __init__(self, store: PluginStore, *, lock_accounts: bool = True) -> None:
        self.store = store
        self.db = store.shared
        self.t = Tables(self.db)
        self.requests = requests_table(self.db)
        #: Off only to demonstrate (bench, tests) what the row lock prevents; never in production.
        self.lock_accounts = lock_accounts
        self._migrated = False
        self._local_migrated = False
        self.pending = pending_table(store.local)
        self.withdrawals = withdrawals_table(store.local)

    # -- earnings that wait (the shared store down, the programme unknown or not open yet) --------------
    def defer_earn(
        self,
        account: str,
        programme_id: str,
        amount: int,
        checkin_id: str,
        *,
        event_id: str,
        reader: str,
        reason: str = "store_unavailable",
    ) -> None:
        """Keep an earning that cannot be credited now in the kiosk's local store, to retry later: one per
        event and person (a second check-in of the person at the event is no second earning)."""
        self._local_ready()
        values = {
            "reference": f"{event_id}:{account}",
            "checkin_id": checkin_id,
            "account": account,
            "programme_id": programme_id,
            "amount": amount,
            "event_id": event_id,
            "reader": reader,
            "reason": reason,
            "queued_at": iso(self.store.now()),
        }
        self.store.local.transaction(
            lambda conn: conn.execute(self.store.local.insert_or_ignore(self.pending).values(**values))
        )

    def deferred(self) -> list[dict[str, Any]]:
        """The earnings still waiting (not written off), oldest first: in the order they were deferred,
        also within one second (``queued_at`` has whole seconds; the local store is SQLite, whose rowid
        grows with each insert and is never reused below a row still there)."""
        self._local_ready()
        p = self.pending
        return self.store.local.transaction(
            lambda conn: [
                dict(r._mapping)
                for r in conn.execute(
                    sa.select(p)
                    .where(p.c.written_off_at.is_(None))
                    .order_by(p.c.queued_at, sa.literal_column("rowid"))
                )
            ],
            readonly=True,
        )

    def settle_deferred(self, reference: str) -> None:
        """A waiting earning credited (or found credited already): gone from the list."""
        self.store.local.transaction(
            lambda conn: conn.execute(self.pending.delete().where(self.pending.c.reference == reference))
        )

    def still_waiting(self, reference: str, reason: str) -> None:
        p = self.pending
        self.store.local.transaction(
            lambda conn: conn.execute(p.update().where(p.c.reference == reference).values(reason=reason))
        )

    def write_off(self, reference: str, reason: str) -> None:
        """A waiting earning that can never be credited: kept, with its reason, for the office to see."""
        p, now = self.pending, iso(self.store.now())
        self.store.local.transaction(
            lambda conn: conn.execute(
                p.update().where(p.c.reference == reference).values(reason=reason, written_off_at=now)
            )
        )

    def pending_report(self, limit: int = 200) -> JsonObject:
        """``points.pending``: counts by reason, waiting and written off, and the newest rows (member IDs
        only: an account keyed by MyKey ID is shown without it)."""
        self._local_ready()
        p = self.pending

        def read(conn: Connection) -> JsonObject:
            counts = conn.execute(
                sa.select(
                    p.c.reason, p.c.written_off_at.is_not(None), sa.func.count(), sa.func.sum(p.c.amount)
                ).group_by(p.c.reason, p.c.written_off_at.is_not(None))
            ).all()
            rows = conn.execute(sa.select(p).order_by(p.c.queued_at.desc(), p.c.reference).limit(limit)).all()
            return {"counts": counts, "rows": rows}

        found = self.store.local.transaction(read, readonly=True)
        summary: dict[str, dict[str, int]] = {"pending": {}, "written_off": {}}
        points = {"pending": 0, "written_off": 0}
        for reason, off, count, total in found["counts"]:
            state = "written_off" if off else "pending"
            key = reason or "store_unavailable"
            summary[state][key] = summary[state].get(key, 0) + int(count)
            points[state] += int(total or 0)
        listed = []
        for r in found["rows"]:
            kind, _, value = str(r.account).partition(":")
            listed.append(
                {
                    "event_id": r.event_id,
                    "programme_id": r.programme_id,
                    "amount": int(r.amount),
                    "member_id": value if kind == "member" else None,
                    "reason": r.reason or "store_unavailable",
                    "state": "written_off" if r.written_off_at else "pending",
                    "queued_at": r.queued_at,
                    "written_off_at": r.written_off_at,
                }
            )
        return {
            "pending": sum(summary["pending"].values()),
            "written_off": sum(summary["written_off"].values()),
            "pending_points": points["pending"],
            "written_off_points": points["written_off"],
            "reasons": summary,
            "rows": listed,
        }

    def _local_ready(self) -> None:
        if not self._local_migrated:
            self.store.local.migrate(LOCAL)
            self._local_migrated = True

    def _tx(self, fn: Callable[[Connection], T], *, readonly: bool = False, row_locked: bool = False) -> T:
        if not self._migrated:
            self.db.migrate(SHARED)
            self._migrated = True
        return self.db.transaction(fn, readonly=readonly, row_locked=row_locked and self.lock_accounts)

    def today(self) -> str:
        return business_time.business_date(self.store.now()).isoformat()

    def _once(
        self,
        command: str,
        args: JsonObject,
        apply: Callable[[Connection], JsonObject],
        *,
        row_locked: bool = False,
    ) -> JsonObject:
        """``apply`` once per idempotency key. ``row_locked``: ``apply`` locks the rows it decides on
        (the account before a debit, the ticket before its use), so PostgreSQL runs it READ COMMITTED."""
        now = self.store.now()
        return self._tx(
            lambda conn: idempotent(conn, self.requests, command, args, now, apply), row_locked=row_locked
        )

    # -- programmes and shops -------------------------------------------------------------------------
    def define_programme(self, args: JsonObject) -> JsonObject:
        programme_id = slug(args, "programme_id")
        days = [parse_date(args.get(k), k) for k in ("last_earning_day", "last_ticket_day", "last_use_day")]
        if not days[0] <= days[2] or not days[1] <= days[2]:
            raise Refusal(
                "bad_request", "last_earning_day and last_ticket_day must not be after last_use_day"
            )
        first = args.get("first_earning_day")
        if first is not None and parse_date(first, "first_earning_day") > days[0]:
            raise Refusal("bad_request", "first_earning_day must not be after last_earning_day")
        valid = args.get("ticket_valid_days", 30)
        if isinstance(valid, bool) or not isinstance(valid, int) or not 1 <= valid <= 366:
            raise Refusal("bad_request", "ticket_valid_days: 1..366")
        values = {
            "programme_id": programme_id,
            "name": text_arg(args, "name", max_length=200),
            "last_earning_day": days[0].isoformat(),
            "last_ticket_day": days[1].isoformat(),
            "last_use_day": days[2].isoformat(),
            "ticket_valid_days": valid,
        }
        values["first_earning_day"] = None if first is None else str(first)  # None: open from now

        def apply(conn: Connection) -> JsonObject:
            upsert(conn, self.t.programmes, "programme_id", {**values, "updated_at": iso(self.store.now())})
            return {"programme": values}

        return self._once("points.define_programme", args, apply)

    def define_shop(self, args: JsonObject) -> JsonObject:
        values = {
            "shop_id": slug(args, "shop_id"),
            "name": text_arg(args, "name", max_length=200),
            "area": slug(args, "area"),
        }

        def apply(conn: Connection) -> JsonObject:
            upsert(conn, self.t.shops, "shop_id", values)
            return {"shop": values}

        return self._once("points.define_shop", args, apply)

    def _programme(self, conn: Connection, programme_id: str) -> Programme:
        p = self.t.programmes
        row = conn.execute(sa.select(p).where(p.c.programme_id == programme_id)).first()
        if row is None:
            raise Refusal("unknown_programme", f"no programme {programme_id!r}")
        m: Any = row._mapping
        return Programme(
            m["programme_id"],
            m["name"],
            m["last_earning_day"],
            m["last_ticket_day"],
            m["last_use_day"],
            m["ticket_valid_days"],
            m["first_earning_day"],
        )

    def _shop(self, conn: Connection, shop_id: str) -> None:
        if (
            conn.execute(sa.select(self.t.shops.c.shop_id).where(self.t.shops.c.shop_id == shop_id)).first()
            is None
        ):
            raise Refusal("unknown_shop", f"no shop {shop_id!r}")

    # -- the ledger -----------------------------------------------------------------------------------
    def _open_account(self, conn: Connection, account: str, programme_id: str) -> None:
        a = self.t.accounts
        conn.execute(
            self.db.insert_or_ignore(a).values(
                account=account, programme_id=programme_id, opened_at=iso(self.store.now())
            )
        )

    def _balance(self, conn: Connection, account: str, programme_id: str, *, lock: bool) -> int:
        """The sum of the account's entries; with ``lock``, after locking its row for this transaction."""
        a, ledger = self.t.accounts, self.t.ledger
        if lock:
            self._open_account(conn, account, programme_id)
            locking = sa.select(a.c.account).where(a.c.account == account, a.c.programme_id == programme_id)
            conn.execute(locking.with_for_update() if self.lock_accounts else locking)
        total = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(ledger.c.amount), 0)).where(
                ledger.c.account == account, ledger.c.programme_id == programme_id
            )
        ).scalar_one()
        return int(total)

    def _entry(
        self,
        conn: Connection,
        account: str,
        programme_id: str,
        amount: int,
        kind: str,
        *,
        reference: str | None = None,
        shop_id: str | None = None,
    ) -> str:
        self._open_account(conn, account, programme_id)
        entry_id = str(uuid.uuid4())
        conn.execute(
            self.t.ledger.insert().values(
                id=entry_id,
                account=account,
                programme_id=programme_id,
                amount=amount,
                kind=kind,
                shop_id=shop_id,
                reference=reference,
                business_date=self.today(),
                created_at=iso(self.store.now()),
            )
        )
        return entry_id

    def _debit(self, conn: Connection, account: str, programme_id: str, amount: int) -> int:
        balance = self._balance(conn, account, programme_id, lock=True)
        if balance < amount:
            raise Refusal("insufficient_points", f"the balance is {balance} points", balance=balance)
        return balance - amount

    # -- earning --------------------------------------------------------------------------------------
    def earn(
        self, account: str, programme_id: str, amount: int, reference: str, *, event_id: str | None = None
    ) -> JsonObject:
        """Points for taking part: applied once per event and person (``event_id``; the ledger keeps
        ``reference``, the check-in's id), or once per ``reference`` without an event. A repeat answers
        the first result with ``replayed``, whatever its amount or kiosk: a person earns once per event.
        Refusals: ``unknown_programme``, ``programme_not_open``, ``programme_expired``."""
        if event_id is None:
            args: JsonObject = {
                "account": account,
                "programme_id": programme_id,
                "amount": amount,
                "idempotency_key": f"earn:{reference}",
            }
        else:
            args = {"account": account, "event_id": event_id, "idempotency_key": f"earn:{event_id}:{account}"}
        legacy = f"earn:{reference}"  # the key of an earning credited before keys were (event, person)

        def apply(conn: Connection) -> JsonObject:
            if (
                event_id is not None
                and conn.execute(sa.select(self.requests.c.key).where(self.requests.c.key == legacy)).first()
            ):
                return {"earned": 0, "replayed": True}  # credited before, under the check-in's id
            programme = self._programme(conn, programme_id)
            today = self.today()
            if programme.first_earning_day and today < programme.first_earning_day:
                raise Refusal(
                    "programme_not_open", f"{programme_id}: earning from {programme.first_earning_day}"
                )
            if today > programme.last_earning_day:
                raise Refusal(
                    "programme_expired", f"{programme_id}: no earning after {programme.last_earning_day}"
                )
            self._entry(conn, account, programme_id, amount, "earn", reference=reference)
            return {"balance": self._balance(conn, account, programme_id, lock=False), "earned": amount}

        return self._once("points.earn", args, apply)

    def grant(self, args: JsonObject) -> JsonObject:
        """A campaign's grant to the people the ward office found eligible (e.g. the long-life gift)."""
        programme_id = slug(args, "programme_id")
        campaign = text_arg(args, "campaign", max_length=128)
        amount = amount_arg(args)
        members = args.get("members")
        if not isinstance(members, list) or not members or len(members) > 10_000:
            raise Refusal("bad_request", "members: a list of 1..10000 member IDs")
        accounts = [account_of({"member_id": m}) for m in members]
        if len(set(accounts)) != len(accounts):
            raise Refusal("bad_request", "members: each member once")

        def apply(conn: Connection) -> JsonObject:
            programme = self._programme(conn, programme_id)
            if self.today() > programme.last_earning_day:
                raise Refusal(
                    "programme_expired", f"{programme_id}: no grants after {programme.last_earning_day}"
                )
            for account in accounts:
                self._entry(conn, account, programme_id, amount, "grant", reference=campaign)
            return {"granted": len(accounts), "amount": amount, "campaign": campaign}

        return self._once("points.grant", args, apply)

    def import_points(self, args: JsonObject) -> JsonObject:
        """Points converted from an earlier scheme, with the source's reference for the audit."""
        programme_id = slug(args, "programme_id")
        account = account_of(args)
        amount = amount_arg(args)
        source = text_arg(args, "source_ref", max_length=128)

        def apply(conn: Connection) -> JsonObject:
            self._programme(conn, programme_id)
            self._entry(conn, account, programme_id, amount, "import", reference=source)
            return {"balance": self._balance(conn, account, programme_id, lock=False), "imported": amount}

        return self._once("points.import", args, apply)

    # -- spending -------------------------------------------------------------------------------------
    def redeem(self, args: JsonObject) -> JsonObject:
        programme_id = slug(args, "programme_id")
        account = account_of(args)
        shop_id = slug(args, "shop_id")
        amount = amount_arg(args)

        def apply(conn: Connection) -> JsonObject:
            programme = self._programme(conn, programme_id)
            if self.today() > programme.last_use_day:
                raise Refusal(
                    "programme_expired", f"{programme_id}: points usable until {programme.last_use_day}"
                )
            self._shop(conn, shop_id)
            balance = self._debit(conn, account, programme_id, amount)
            entry = self._entry(conn, account, programme_id, -amount, "redeem", shop_id=shop_id)
            return {"redeemed": amount, "balance": balance, "shop_id": shop_id, "entry_id": entry}

        return self._once("points.redeem", args, apply, row_locked=True)

    def issue_ticket(self, args: JsonObject) -> JsonObject:
        programme_id = slug(args, "programme_id")
        account = account_of(args)
        amount = amount_arg(args)

        def apply(conn: Connection) -> JsonObject:
            programme = self._programme(conn, programme_id)
            today = self.today()
            if today > programme.last_ticket_day:
                raise Refusal(
                    "programme_expired", f"{programme_id}: tickets until {programme.last_ticket_day}"
                )
            balance = self._debit(conn, account, programme_id, amount)
            code = "".join(secrets.choice(TICKET_ALPHABET) for _ in range(10))
            until = date.fromisoformat(today) + timedelta(days=programme.ticket_valid_days - 1)
            expires_on = min(until.isoformat(), programme.last_use_day)
            self._entry(conn, account, programme_id, -amount, "ticket", reference=code)
            conn.execute(
                self.t.tickets.insert().values(
                    code=code,
                    account=account,
                    programme_id=programme_id,
                    amount=amount,
                    expires_on=expires_on,
                    issued_at=iso(self.store.now()),
                )
            )
            return {"ticket": code, "amount": amount, "expires_on": expires_on, "balance": balance}

        return self._once("points.issue_ticket", args, apply, row_locked=True)

    def use_ticket(self, args: JsonObject) -> JsonObject:
        code = text_arg(args, "ticket", max_length=16).upper()
        shop_id = slug(args, "shop_id")
        tickets = self.t.tickets

        def apply(conn: Connection) -> JsonObject:
            self._shop(conn, shop_id)
            row = conn.execute(sa.select(tickets).where(tickets.c.code == code).with_for_update()).first()
            if row is None:
                raise Refusal("unknown_ticket", "no such ticket")
            if row.used_at is not None:
                raise Refusal("ticket_used", "this ticket was used already", used_on=row.used_business_date)
            today = self.today()
            if today > row.expires_on:
                raise Refusal("ticket_expired", f"the ticket expired on {row.expires_on}")
            conn.execute(
                tickets.update()
                .where(tickets.c.code == code)
                .values(used_at=iso(self.store.now()), used_shop_id=shop_id, used_business_date=today)
            )
            return {"ticket": code, "amount": int(row.amount), "shop_id": shop_id}

        return self._once("points.use_ticket", args, apply, row_locked=True)

    def expire(self, args: JsonObject) -> JsonObject:
        """Write off what is left of a programme after its last use day: one entry per account."""
        programme_id = slug(args, "programme_id")
        ledger = self.t.ledger

        def apply(conn: Connection) -> JsonObject:
            programme = self._programme(conn, programme_id)
            if self.today() <= programme.last_use_day:
                raise Refusal("programme_active", f"points are usable until {programme.last_use_day}")
            totals = conn.execute(
                sa.select(ledger.c.account, sa.func.sum(ledger.c.amount))
                .where(ledger.c.programme_id == programme_id)
                .group_by(ledger.c.account)
            ).all()
            expired = 0
            accounts = 0
            for account, total in totals:
                if int(total) > 0:
                    self._entry(conn, account, programme_id, -int(total), "expire")
                    expired += int(total)
                    accounts += 1
            return {"accounts": accounts, "points": expired}

        return self._once("points.expire", args, apply)

    # -- reading --------------------------------------------------------------------------------------
    def balance(self, account: str) -> JsonObject:
        ledger = self.t.ledger

        def read(conn: Connection) -> JsonObject:
            rows = conn.execute(
                sa.select(ledger.c.programme_id, sa.func.sum(ledger.c.amount))
                .where(ledger.c.account == account)
                .group_by(ledger.c.programme_id)
                .order_by(ledger.c.programme_id)
            ).all()
            return {"balances": {programme: int(total) for programme, total in rows}}

        return self._tx(read, readonly=True)

    def settlement(self, first: date, last: date) -> JsonObject:
        """What each shop (and area) took in points between two JST dates, inclusive: redemptions and
        tickets used there. The ward pays the shops from this."""
        if last < first:
            raise Refusal("bad_request", "the period ends before it starts")
        ledger, tickets, shops = self.t.ledger, self.t.tickets, self.t.shops
        lo, hi = first.isoformat(), last.isoformat()

        def read(conn: Connection) -> JsonObject:
            redeemed = {
                shop: (-int(total), int(count))
                for shop, total, count in conn.execute(
                    sa.select(ledger.c.shop_id, sa.func.sum(ledger.c.amount), sa.func.count())
                    .where(ledger.c.kind == "redeem", ledger.c.business_date.between(lo, hi))
                    .group_by(ledger.c.shop_id)
                )
            }
            ticketed = {
                shop: (int(total), int(count))
                for shop, total, count in conn.execute(
                    sa.select(tickets.c.used_shop_id, sa.func.sum(tickets.c.amount), sa.func.count())
                    .where(tickets.c.used_business_date.between(lo, hi))
                    .group_by(tickets.c.used_shop_id)
                )
            }
            rows = []
            areas: dict[str, int] = {}
            for shop in conn.execute(sa.select(shops).order_by(shops.c.area, shops.c.shop_id)):
                points, redemptions = redeemed.get(shop.shop_id, (0, 0))
                ticket_points, used = ticketed.get(shop.shop_id, (0, 0))
                if not redemptions and not used:
                    continue
                total = points + ticket_points
                areas[shop.area] = areas.get(shop.area, 0) + total
                rows.append(
                    {
                        "shop_id": shop.shop_id,
                        "name": shop.name,
                        "area": shop.area,
                        "redeemed_points": points,
                        "redemptions": redemptions,
                        "ticket_points": ticket_points,
                        "tickets": used,
                        "total_points": total,
                    }
                )
            return {"from": lo, "to": hi, "shops": rows, "areas": areas, "total_points": sum(areas.values())}

        return self._tx(read, readonly=True)

    def ledger_check(self) -> JsonObject:
        """Every account: balance = sum of its entries, and none negative (soak tests, doctor)."""
        ledger = self.t.ledger

        def read(conn: Connection) -> JsonObject:
            negative = conn.execute(
                sa.select(ledger.c.account, ledger.c.programme_id)
                .group_by(ledger.c.account, ledger.c.programme_id)
                .having(sa.func.sum(ledger.c.amount) < 0)
            ).all()
            total = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(ledger.c.amount), 0))).scalar_one()
            return {"negative_accounts": len(negative), "outstanding_points": int(total)}

        return self._tx(read, readonly=True)

    # -- a member's withdrawal ------------------------------------------------------------------------
    def withdraw(self, persons: list[str]) -> JsonObject:
        """Forget a withdrawn member (each account key they may have: ``member:``, ``mykey:``) while the
        books still balance (schema.py: the one permitted update of the ledger).

        Local, one transaction: the withdrawal queued with a ``withdrawn:<random>`` key per account; the
        account's earnings waiting in ``pending_earns`` written off with reason ``withdrawn`` (those
        written off before keep their reason) and every such row re-keyed. Shared, one transaction: the
        account's ``accounts``, ``ledger``, ``tickets`` and idempotency records re-keyed, its ``cards``
        deleted; then the queue entry dropped. If the shared store is down the withdrawal stays queued
        and :meth:`retry_withdrawals` (the retry loop) finishes it. Idempotent: a second call finds
        nothing. Returns counts (``shared_pending`` true when the shared part waits)."""
        zero = {"accounts": 0, "entries": 0, "tickets": 0, "cards": 0, "requests": 0}
        if not persons:
            return {**zero, "pending_written_off": 0, "pending_rekeyed": 0, "shared_pending": False}
        self._local_ready()
        p, now = self.pending, self.store.now()

        def local(conn: Connection) -> tuple[dict[str, str], int, int]:
            anon = queue_withdrawal(conn, self.withdrawals, persons, now)
            written_off = rekeyed = 0
            for person, key in anon.items():
                written_off += conn.execute(
                    p.update()
                    .where(p.c.account == person, p.c.written_off_at.is_(None))
                    .values(reason="withdrawn", written_off_at=iso(now))
                ).rowcount
                for row in conn.execute(
                    sa.select(p.c.reference, p.c.event_id).where(p.c.account == person)
                ).all():
                    # rows keyed <event>:<account> name the person in their key too; older ones (the
                    # check-in id) do not
                    mine = row.reference == f"{row.event_id}:{person}"
                    reference = f"{row.event_id}:{key}" if mine else row.reference
                    conn.execute(
                        p.update()
                        .where(p.c.reference == row.reference)
                        .values(account=key, reference=reference)
                    )
                    rekeyed += 1
            return anon, written_off, rekeyed

        anon, written_off, rekeyed = self.store.local.transaction(local)
        counts: JsonObject = {"pending_written_off": written_off, "pending_rekeyed": rekeyed}
        try:
            shared = self._withdraw_shared(anon)
        except (StoreUnavailableError, StoreBusyError):
            return {**counts, **zero, "shared_pending": True}
        return {**counts, **shared, "shared_pending": False}

    def _withdraw_shared(self, anon: dict[str, str]) -> dict[str, int]:
        """The shared part of a withdrawal, in one transaction; then its queue entries dropped."""
        a, ledger, tickets, cards, r = (
            self.t.accounts,
            self.t.ledger,
            self.t.tickets,
            self.t.cards,
            self.requests,
        )

        def shared(conn: Connection) -> dict[str, int]:
            counts = dict.fromkeys(("accounts", "entries", "tickets", "cards", "requests"), 0)
            for person, key in anon.items():
                # the account rows first: a redemption holding one (FOR UPDATE) finishes before its
                # entries are re-keyed, and one starting after finds no account under the person
                counts["accounts"] += conn.execute(
                    a.update().where(a.c.account == person).values(account=key)
                ).rowcount
                counts["entries"] += conn.execute(
                    ledger.update().where(ledger.c.account == person).values(account=key)
                ).rowcount
                counts["tickets"] += conn.execute(
                    tickets.update().where(tickets.c.account == person).values(account=key)
                ).rowcount
                counts["cards"] += conn.execute(cards.delete().where(cards.c.account == person)).rowcount
                # earnings are keyed earn:<event>:<account>: the key names the person, so it is re-keyed,
                # with the digest of the re-keyed arguments (a replay under the new key still matches)
                suffix = f":{person}"
                earned = conn.execute(
                    sa.select(r.c.key).where(
                        r.c.command == "points.earn", r.c.key.endswith(suffix, autoescape=True)
                    )
                ).all()
                for row in earned:
                    event_id = row.key[len("earn:") : -len(suffix)]
                    new_key = f"earn:{event_id}:{key}"
                    digest = request_digest(
                        "points.earn", {"account": key, "event_id": event_id, "idempotency_key": new_key}
                    )
                    conn.execute(r.update().where(r.c.key == row.key).values(key=new_key, digest=digest))
                    counts["requests"] += 1
            counts["requests"] += rekey_request_results(conn, r, "points.register_card", anon)
            return counts

        counts = self._tx(shared, row_locked=True)
        self.store.local.transaction(
            lambda conn: conn.execute(
                self.withdrawals.delete().where(self.withdrawals.c.person.in_(list(anon)))
            )
        )
        return counts

    def withdrawals_pending(self) -> int:
        self._local_ready()
        w = self.withdrawals
        return int(
            self.store.local.transaction(
                lambda conn: conn.execute(sa.select(sa.func.count()).select_from(w)).scalar_one(),
                readonly=True,
            )
        )

    def retry_withdrawals(self) -> dict[str, int]:
        """Finish the withdrawals whose shared part waited (the retry loop). Raises
        :class:`StoreUnavailableError` while the store is still down."""
        self._local_ready()
        anon = self.store.local.transaction(
            lambda conn: queued_withdrawals(conn, self.withdrawals), readonly=True
        )
        if not anon:
            return {}
        return self._withdraw_shared(anon)

    # -- cards ----------------------------------------------------------------------------------------
    def register_card(self, card: str, args: JsonObject) -> JsonObject:
        account = account_of(args)

        def apply(conn: Connection) -> JsonObject:
            upsert(
                conn,
                self.t.cards,
                "card",
                {"card": card, "account": account, "registered_at": iso(self.store.now())},
            )
            return {"registered": True, "account": account}

        return self._once("points.register_card", {**args, "card": card}, apply)

    def account_for_card(self, card: str) -> str | None:
        cards = self.t.cards
        row = self._tx(
            lambda conn: conn.execute(sa.select(cards.c.account).where(cards.c.card == card)).first(),
            readonly=True,
        )
        return None if row is None else str(row.account)


def account_of(args: JsonObject) -> str:
    """The account key of a request: ``mykey_id`` or ``member_id`` (as the card events carry them)."""
    mykey, member = args.get("mykey_id"), args.get("member_id")
    if isinstance(mykey, str) and mykey.strip() and len(mykey) <= 32:
        return f"mykey:{mykey.strip()}"
    if isinstance(member, str) and member.strip() and len(member) <= 32:
        return f"member:{member.strip()}"
    raise Refusal("unknown_account", "give member_id or mykey_id (1..32 characters)")
