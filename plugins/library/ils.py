"""Where patrons and loans live: the library's own system (SIP2), or the plugin's store when it has none.

docs/design.md D19: patrons live in the library's system; readerd links a library card number to a
MyKey/member ID and asks the system about that card. :class:`IlsAdapter` is the four questions readerd
asks; :class:`Sip2Ils` asks them over SIP2 (one TCP connection, reconnected when it drops, every message
with a sequence number and checksum), :class:`LocalIls` answers them from the plugin's own tables with
the library's rules (loan limit, loan days, renewals).

Results carry status codes, counts and due dates: titles stay in the ILS (loan records are confidential;
they never reach an event).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugins.common import iso
from protocols import sip2
from protocols.errors import BadResponseError, ReaderdError
from readerd.plugin import MigrationContext, PluginStore, business_time

T = TypeVar("T")


class IlsUnavailableError(ReaderdError):
    """The library system did not answer (connection refused, timeout, a garbled reply)."""

    code = "ils_unavailable"


@dataclass(frozen=True)
class PatronStatus:
    valid: bool
    loans: int
    overdue: int
    limit: int | None = None


@dataclass(frozen=True)
class LoanResult:
    ok: bool
    due: date | None = None
    reason: str = ""  # a fixed code when not ok: limit_reached, not_on_loan, no_renewals_left, ...


class IlsAdapter(Protocol):
    def patron(self, card: str) -> PatronStatus: ...

    def checkout(self, card: str, item: str) -> LoanResult: ...

    def checkin(self, item: str) -> LoanResult: ...

    def renew(self, card: str, item: str) -> LoanResult: ...


# --- SIP2 ---------------------------------------------------------------------------------------------
class Sip2Ils:
    """A SIP2 client: the kiosk is the self-check station (SC), the library system the ACS."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        institution: str,
        terminal_password: str = "",
        timeout: float = 5.0,
        clock: business_time.Clock = business_time.utc_now,
    ) -> None:
        self.address = (host, port)
        self.institution = institution
        self.terminal_password = terminal_password
        self.timeout = timeout
        self.clock = clock
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._sequence = 0
        self._lock = threading.Lock()

    def _now(self) -> datetime:
        return business_time.to_business(self.clock()).replace(tzinfo=None)

    def _exchange(self, message: sip2.Message, expect: sip2.Code) -> sip2.Message:
        """Send one message and read its answer; one reconnect if the connection was found dead."""
        with self._lock:
            for attempt in (1, 2):
                reused = self._sock is not None
                try:
                    if self._sock is None:
                        self._sock = socket.create_connection(self.address, timeout=self.timeout)
                        self._buffer = b""
                    self._sequence = (self._sequence + 1) % 10
                    self._sock.sendall(
                        sip2.Message(message.code, message.fixed, message.fields, self._sequence).encode()
                    )
                    answer = sip2.parse(self._read_line())
                except (OSError, EOFError, ReaderdError) as e:
                    self.close_locked()
                    # Only a kept connection that turned out dead at sendall is tried again: once the request
                    # may have reached the ACS, the answer is lost and a second checkout must not follow.
                    dead_on_send = reused and isinstance(e, BrokenPipeError | ConnectionResetError)
                    if attempt == 2 or not dead_on_send:
                        raise IlsUnavailableError(f"SIP2 {self.address[0]}:{self.address[1]}: {e}") from e
                    continue
                if answer.code != expect:
                    self.close_locked()
                    raise IlsUnavailableError(f"SIP2 answered {answer.code} to {message.code}")
                return answer
        raise IlsUnavailableError("unreachable")  # pragma: no cover - the loop returns or raises

    def _read_line(self) -> bytes:
        assert self._sock is not None  # noqa: S101 - set by the caller
        while sip2.TERMINATOR not in self._buffer:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise EOFError("the ACS closed the connection")
            self._buffer += chunk
            if len(self._buffer) > 65536:
                raise BadResponseError("SIP2 answer without an end")
        line, _, self._buffer = self._buffer.partition(sip2.TERMINATOR)
        return line

    def close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()

    def _common(self, card: str | None = None, item: str | None = None) -> dict[str, list[str]]:
        fields = {"AO": [self.institution]}
        if card is not None:
            fields["AA"] = [card]
        if item is not None:
            fields["AB"] = [item]
        if self.terminal_password:
            fields["AC"] = [self.terminal_password]
        return fields

    def patron(self, card: str) -> PatronStatus:
        now = sip2.sip_date(self._now())
        answer = self._exchange(
            sip2.Message(
                sip2.Code.PATRON_INFO,
                {"language": "000", "transaction_date": now, "summary": " " * 10},
                self._common(card),
            ),
            sip2.Code.PATRON_INFO_RESPONSE,
        )
        limit = answer.get("CB").strip()
        return PatronStatus(
            valid=answer.get("BL", "N") == "Y",
            loans=_count(answer.fixed["charged_items_count"]),
            overdue=_count(answer.fixed["overdue_items_count"]),
            limit=int(limit) if limit.isdigit() else None,
        )

    def checkout(self, card: str, item: str) -> LoanResult:
        now = sip2.sip_date(self._now())
        fixed = {
            "sc_renewal_policy": "N",
            "no_block": "N",
            "transaction_date": now,
            "nb_due_date": sip2.sip_date(None),
        }
        answer = self._exchange(
            sip2.Message(sip2.Code.CHECKOUT, fixed, self._common(card, item)), sip2.Code.CHECKOUT_RESPONSE
        )
        return _loan(answer)

    def checkin(self, item: str) -> LoanResult:
        now = sip2.sip_date(self._now())
        fixed = {"no_block": "N", "transaction_date": now, "return_date": now}
        fields = {"AP": [self.institution], **self._common(item=item)}
        answer = self._exchange(sip2.Message(sip2.Code.CHECKIN, fixed, fields), sip2.Code.CHECKIN_RESPONSE)
        return LoanResult(
            ok=answer.flag("ok"), reason="" if answer.flag("ok") else _reason(answer, "not_on_loan")
        )

    def renew(self, card: str, item: str) -> LoanResult:
        now = sip2.sip_date(self._now())
        fixed = {
            "third_party_allowed": "N",
            "no_block": "N",
            "transaction_date": now,
            "nb_due_date": sip2.sip_date(None),
        }
        answer = self._exchange(
            sip2.Message(sip2.Code.RENEW, fixed, self._common(card, item)), sip2.Code.RENEW_RESPONSE
        )
        return _loan(answer)


def _count(text: str) -> int:
    return int(text) if text.strip().isdigit() else 0


def _reason(answer: sip2.Message, default: str) -> str:
    """A refusal's code: readerd's fake ACS and many systems put one in AF; keep it to a short code."""
    message = answer.get("AF").strip()
    return message if message.replace("_", "").isalnum() and len(message) <= 32 else default


def _loan(answer: sip2.Message) -> LoanResult:
    if not answer.flag("ok"):
        return LoanResult(ok=False, reason=_reason(answer, "refused"))
    due = answer.get("AH").strip()
    parsed = sip2.parse_sip_date(due) if len(due) == sip2.DATE_LENGTH else None
    return LoanResult(ok=True, due=parsed.date() if parsed else None)


# --- the local store ----------------------------------------------------------------------------------
def _loan_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("item", sa.String(64), primary_key=True),
        sa.Column("library_card", sa.String(64), nullable=False),
        sa.Column("due", sa.String(10), nullable=False),
        sa.Column("renewals", sa.Integer, nullable=False),
        sa.Column("checked_out_at", sa.String(20), nullable=False),
    ]


def local_ils_v1(m: MigrationContext) -> None:
    m.create_table("loans", *_loan_columns())
    m.create_index("by_card", "loans", "library_card")


@dataclass(frozen=True)
class LoanRules:
    limit: int = 10
    days: int = 14
    renewals: int = 2


class LocalIls:
    """Loans in the plugin's shared store, for a library without its own system.

    ``is_patron(card)`` says whether a library card is registered (the plugin's patron table). Each change
    is one transaction; the loan count is read in the transaction that adds a loan (SQLite's
    ``BEGIN IMMEDIATE``, PostgreSQL's SERIALIZABLE), so the limit holds with two kiosks at once.
    """

    def __init__(self, store: PluginStore, rules: LoanRules, is_patron: Callable[[str], bool]) -> None:
        self.store = store
        self.db = store.shared
        self.rules = rules
        self.is_patron = is_patron
        self.loans = self.db.table("loans", *_loan_columns())
        self._migrated = False

    def _tx(self, fn: Callable[[Connection], T], *, readonly: bool = False) -> T:
        if not self._migrated:
            self.db.migrate([local_ils_v1])  # the plugin's own migrations run first, in its store
            self._migrated = True
        return self.db.transaction(fn, readonly=readonly)

    def today(self) -> date:
        return business_time.business_date(self.store.now())

    def _counts(self, conn: Connection, card: str) -> tuple[int, int]:
        loans = self.loans.c
        rows = conn.execute(sa.select(loans.due).where(loans.library_card == card)).all()
        today = self.today().isoformat()
        return len(rows), sum(1 for (due,) in rows if due < today)

    def patron(self, card: str) -> PatronStatus:
        loans, overdue = self._tx(lambda conn: self._counts(conn, card), readonly=True)
        return PatronStatus(valid=self.is_patron(card), loans=loans, overdue=overdue, limit=self.rules.limit)

    def checkout(self, card: str, item: str) -> LoanResult:
        if not self.is_patron(card):
            return LoanResult(ok=False, reason="not_a_patron")

        def apply(conn: Connection) -> LoanResult:
            loans = self.loans.c
            holder = conn.execute(sa.select(loans.library_card).where(loans.item == item)).first()
            if holder is not None:
                return LoanResult(ok=False, reason="already_on_loan")
            count, overdue = self._counts(conn, card)
            if overdue:
                return LoanResult(ok=False, reason="overdue_items")
            if count >= self.rules.limit:
                return LoanResult(ok=False, reason="limit_reached")
            due = self.today() + timedelta(days=self.rules.days)
            conn.execute(
                self.loans.insert().values(
                    item=item,
                    library_card=card,
                    due=due.isoformat(),
                    renewals=0,
                    checked_out_at=iso(self.store.now()),
                )
            )
            return LoanResult(ok=True, due=due)

        return self._tx(apply)

    def checkin(self, item: str) -> LoanResult:
        def apply(conn: Connection) -> LoanResult:
            gone = conn.execute(self.loans.delete().where(self.loans.c.item == item)).rowcount
            return LoanResult(ok=True) if gone else LoanResult(ok=False, reason="not_on_loan")

        return self._tx(apply)

    def renew(self, card: str, item: str) -> LoanResult:
        def apply(conn: Connection) -> LoanResult:
            loans = self.loans.c
            row = conn.execute(
                sa.select(loans.library_card, loans.renewals, loans.due).where(loans.item == item)
            ).first()
            if row is None or row.library_card != card:
                return LoanResult(ok=False, reason="not_on_loan")
            if row.renewals >= self.rules.renewals:
                return LoanResult(ok=False, reason="no_renewals_left")
            due = max(self.today(), date.fromisoformat(row.due)) + timedelta(days=self.rules.days)
            conn.execute(
                self.loans.update()
                .where(loans.item == item)
                .values(due=due.isoformat(), renewals=row.renewals + 1)
            )
            return LoanResult(ok=True, due=due)

        return self._tx(apply)

    def overdue(self) -> list[dict[str, object]]:
        """Overdue loans: library card, item barcode, due date (the counter's list; no titles, no names)."""
        loans = self.loans.c
        today = self.today().isoformat()
        return self._tx(
            lambda conn: [
                {"library_card": card, "item": item, "due": due}
                for card, item, due in conn.execute(
                    sa.select(loans.library_card, loans.item, loans.due)
                    .where(loans.due < today)
                    .order_by(loans.due, loans.item)
                )
            ],
            readonly=True,
        )
