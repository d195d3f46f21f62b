"""Where patrons and loans live: the library's own system (SIP2), or the plugin's store when it has none.

docs/design.md D19: patrons live in the library's system; readerd links a library card number to a
MyKey/member ID and asks the system about that card. :class:`IlsAdapter` is the four questions readerd
asks; :class:`Sip2Ils` asks them over SIP2 (one TCP connection, logged in and reconnected when it drops,
kept alive, every message with a sequence number and checksum: docs/sip2.md), :class:`LocalIls` answers
them from the plugin's own tables with the library's rules (loan limit, loan days, renewals).

Results carry status codes, counts and due dates: titles stay in the ILS (loan records are confidential;
they never reach an event).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from plugins.common import config_int, iso
from protocols import sip2
from protocols.errors import BadResponseError, ReaderdError
from readerd.plugin import JsonObject, MigrationContext, PluginStore, business_time

T = TypeVar("T")


class IlsUnavailableError(ReaderdError):
    """The library system did not answer (connection refused, timeout, a garbled reply)."""

    code = "ils_unavailable"
    #: Why, as a fixed code a result may carry (no address, no message text on the bus).
    reason = "unreachable"


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
#: The ``99`` SC Status readerd sends: status 0 (the station works), no printer, protocol 2.00.
SC_STATUS_FIXED = {"status_code": "0", "max_print_width": "000", "protocol_version": "2.00"}
#: Seconds of silence after which the kept connection is kept open with a ``99`` (0: never).
KEEPALIVE = 30.0


class LoginRefusedError(IlsUnavailableError):
    """The ACS answered the ``93`` Login with ``94`` ok=0 (the configured user or password is wrong)."""

    #: What a tap's result says (``reason``): staff fix the kiosk's settings, not the citizen's card.
    reason = "login_refused"


class Sip2Ils:
    """A SIP2 client: the kiosk is the self-check station (SC), the library system the ACS.

    One TCP connection, opened on the first request and again after it drops. Each new connection starts
    with a ``93`` Login (when ``user`` is set) and a ``99`` SC Status; a connection silent for ``keepalive``
    seconds gets another ``99`` so the ACS does not close it as idle. With ``error_detection`` every
    message carries ``AY``/``AZ``: a ``96`` from the ACS is answered by one resend, an answer with a bad
    checksum by one ``97``. Text is ``encoding`` on the wire (``utf-8``, or ``cp932`` for older Japanese
    systems). The wire facts: docs/sip2.md.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        institution: str,
        terminal_password: str = "",
        user: str = "",
        password: str = "",
        location: str = "",
        error_detection: bool = True,
        encoding: str = "utf-8",
        keepalive: float = KEEPALIVE,
        timeout: float = 5.0,
        clock: business_time.Clock = business_time.utc_now,
    ) -> None:
        self.address = (host, port)
        self.institution = institution
        self.terminal_password = terminal_password
        self.user = user
        self.password = password
        self.location = location
        self.error_detection = error_detection
        self.encoding = sip2.wire_encoding(encoding)
        self.keepalive = keepalive
        self.timeout = timeout
        self.clock = clock
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._sequence = 0
        self._last_used = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: JsonObject, library_id: str) -> Sip2Ils:
        """The client ``[plugins.library]`` describes (``ils = "sip2"``; plugins/library/settings.py)."""

        def text(key: str, default: str = "") -> str:
            value = config.get(key, default)
            return default if value is None else str(value)

        host = text("sip2_host")
        if not host:
            raise ValueError('[plugins.library] sip2_host: needed with ils = "sip2"')
        keepalive = config.get("sip2_keepalive", KEEPALIVE)
        if isinstance(keepalive, bool) or not isinstance(keepalive, int | float) or keepalive < 0:
            raise ValueError("[plugins.library] sip2_keepalive: seconds >= 0 (0: no keep-alive)")
        try:
            sip2.wire_encoding(text("sip2_encoding", "utf-8"))
        except ValueError as e:
            raise ValueError(f"[plugins.library] sip2_encoding: {e}") from None
        return cls(
            host,
            config_int(config, "library", "sip2_port", 6001),
            institution=text("institution") or library_id,
            terminal_password=text("terminal_password"),
            user=text("sip2_user"),
            password=text("sip2_password"),
            location=text("sip2_location"),
            error_detection=bool(config.get("sip2_error_detection", True)),
            encoding=text("sip2_encoding", "utf-8"),
            keepalive=float(keepalive),
        )

    def _now(self) -> datetime:
        return business_time.to_business(self.clock()).replace(tzinfo=None)

    def _where(self) -> str:
        return f"SIP2 {self.address[0]}:{self.address[1]}"

    # -- the connection -------------------------------------------------------------------------------
    def _exchange(self, message: sip2.Message, expect: sip2.Code) -> sip2.Message:
        """Send one message and read its answer, on a logged-in connection (opened here if there is
        none, or if the ACS closed the kept one while it was idle). One retry, on a new connection, when
        the kept one was found dead at sending; never once the request may have reached the ACS."""
        with self._lock:
            for attempt in (1, 2):
                if self._sock is not None and self._peer_closed():
                    self.close_locked()  # closed by the ACS while idle: nothing was sent on it
                reused = self._sock is not None
                if not reused:
                    self._connect_locked()
                try:
                    answer = self._roundtrip_locked(message)
                except (OSError, EOFError, ReaderdError) as e:
                    self.close_locked()
                    dead_on_send = reused and isinstance(e, BrokenPipeError | ConnectionResetError)
                    if attempt == 2 or not dead_on_send:
                        raise IlsUnavailableError(f"{self._where()}: {e}") from e
                    continue
                if answer.code != expect:
                    self.close_locked()
                    raise IlsUnavailableError(f"{self._where()}: answered {answer.code} to {message.code}")
                return answer
        raise IlsUnavailableError("unreachable")  # pragma: no cover - the loop returns or raises

    def _connect_locked(self) -> None:
        """A new connection: ``93`` Login (when a user is configured), then ``99`` SC Status."""
        try:
            self._sock = socket.create_connection(self.address, timeout=self.timeout)
            self._buffer = b""
            if self.user:
                fields = {"CN": [self.user], "CO": [self.password]}
                if self.location:
                    fields["CP"] = [self.location]
                login = self._roundtrip_locked(
                    sip2.Message(sip2.Code.LOGIN, {"uid_algorithm": "0", "pwd_algorithm": "0"}, fields)
                )
                if login.code != sip2.Code.LOGIN_RESPONSE:
                    raise BadResponseError(f"answered {login.code} to the login (93)")
                if not login.flag("ok"):
                    raise LoginRefusedError(
                        "the library system refused the login (94 ok=0): check sip2_user / sip2_password"
                    )
            status = self._status_locked()
            if status.fixed.get("online_status") == "N":
                raise IlsUnavailableError("the library system says it is offline (98 online status N)")
        except (OSError, EOFError, ReaderdError) as e:
            self.close_locked()
            error = LoginRefusedError if isinstance(e, LoginRefusedError) else IlsUnavailableError
            raise error(f"{self._where()}: {e}") from e
        self._start_keeper()

    def _status_locked(self) -> sip2.Message:
        answer = self._roundtrip_locked(sip2.Message(sip2.Code.SC_STATUS, dict(SC_STATUS_FIXED)))
        if answer.code != sip2.Code.ACS_STATUS:
            raise BadResponseError(f"answered {answer.code} to the SC status (99)")
        return answer

    def _roundtrip_locked(self, message: sip2.Message) -> sip2.Message:
        """Send, read the answer; a ``96`` gets one resend, an answer with a bad checksum one ``97``."""
        assert self._sock is not None  # noqa: S101 - the caller connected
        sequence = None
        if self.error_detection:
            self._sequence = (self._sequence + 1) % 10
            sequence = self._sequence
        wire = sip2.Message(message.code, message.fixed, message.fields, sequence).encode(
            self.encoding, error_detection=self.error_detection
        )
        self._sock.sendall(wire)
        self._last_used = time.monotonic()
        resent = asked = False
        while True:
            try:
                answer = sip2.parse(self._read_line(), self.encoding)
            except sip2.ChecksumError:
                if asked:
                    raise
                asked = True
                self._sock.sendall(
                    sip2.resend_request(sip2.Code.REQUEST_ACS_RESEND, error_detection=True).encode("ascii")
                )
                continue
            if answer.code == sip2.Code.REQUEST_SC_RESEND:
                if resent:
                    raise BadResponseError("the library system asked twice for the same message (96)")
                resent = True
                self._sock.sendall(wire)
                continue
            if sequence is not None and answer.sequence is not None and answer.sequence != sequence:
                raise BadResponseError(f"answer with sequence {answer.sequence}, expected {sequence}")
            self._last_used = time.monotonic()
            return answer

    def _peer_closed(self) -> bool:
        """Whether the kept connection was closed (or reset) by the other end, without waiting."""
        assert self._sock is not None  # noqa: S101 - the caller checked
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if not readable:
                return False
            # Readable with no request outstanding: an end of file, a reset, or bytes nobody asked for.
            self._sock.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True
        return True

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

    # -- keep-alive -----------------------------------------------------------------------------------
    def _start_keeper(self) -> None:
        if self.keepalive <= 0 or (self._keeper is not None and self._keeper.is_alive()):
            return
        self._stop = threading.Event()
        self._keeper = threading.Thread(
            target=self._keep_alive, args=(self._stop,), name="library-sip2-keepalive", daemon=True
        )
        self._keeper.start()

    def _keep_alive(self, stop: threading.Event) -> None:
        """A ``99`` on a connection silent for ``keepalive`` seconds; a failure closes it (the next request
        connects and logs in again)."""
        while not stop.wait(self.keepalive / 4):
            with self._lock:
                if stop.is_set() or self._sock is None:
                    continue
                if time.monotonic() - self._last_used < self.keepalive:
                    continue
                try:
                    if self._peer_closed():
                        raise EOFError("closed by the ACS")
                    self._status_locked()
                except (OSError, EOFError, ReaderdError):
                    self.close_locked()

    def close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buffer = b""

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self.close_locked()
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout=self.timeout)

    # -- the four questions ---------------------------------------------------------------------------
    def _common(
        self, card: str | None = None, item: str | None = None, *, password_required: bool
    ) -> dict[str, list[str]]:
        """AO, AA, AB, and AC: a required AC goes even when empty (``AC|``); an optional one when set."""
        fields = {"AO": [self.institution]}
        if card is not None:
            fields["AA"] = [card]
        if item is not None:
            fields["AB"] = [item]
        if self.terminal_password or password_required:
            fields["AC"] = [self.terminal_password]
        return fields

    def patron(self, card: str) -> PatronStatus:
        now = sip2.sip_date(self._now())
        answer = self._exchange(
            sip2.Message(
                sip2.Code.PATRON_INFO,
                {"language": "000", "transaction_date": now, "summary": " " * 10},
                self._common(card, password_required=False),
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
            "nb_due_date": now,  # a date, as the format wants; only read with no_block = Y
        }
        answer = self._exchange(
            sip2.Message(sip2.Code.CHECKOUT, fixed, self._common(card, item, password_required=True)),
            sip2.Code.CHECKOUT_RESPONSE,
        )
        return _loan(answer)

    def checkin(self, item: str) -> LoanResult:
        now = sip2.sip_date(self._now())
        fixed = {"no_block": "N", "transaction_date": now, "return_date": now}
        fields = {
            "AP": [self.location or self.institution],
            **self._common(item=item, password_required=True),
        }
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
            "nb_due_date": now,  # a date, as the format wants; only read with no_block = Y
        }
        answer = self._exchange(
            sip2.Message(sip2.Code.RENEW, fixed, self._common(card, item, password_required=False)),
            sip2.Code.RENEW_RESPONSE,
        )
        return _loan(answer)


def _count(text: str) -> int:
    return int(text) if text.strip().isdigit() else 0


def _reason(answer: sip2.Message, default: str) -> str:
    """A refusal's code: readerd's fake ACS and many systems put one in AF; keep it to a short code."""
    message = answer.get("AF").strip()
    return message if message.replace("_", "").isalnum() and len(message) <= 32 else default


def _due(text: str) -> date | None:
    """AH, the due date: SIP2's ``YYYYMMDDZZZZHHMMSS`` or, as some systems send, an ISO date; None when it
    is neither (the loan happened: an odd date format must not turn it into an error)."""
    text = text.strip()
    try:
        if len(text) == sip2.DATE_LENGTH:
            parsed = sip2.parse_sip_date(text)
            return parsed.date() if parsed else None
        return date.fromisoformat(text[:10]) if len(text) >= 10 else None
    except (BadResponseError, ValueError):
        return None


def _loan(answer: sip2.Message) -> LoanResult:
    if not answer.flag("ok"):
        return LoanResult(ok=False, reason=_reason(answer, "refused"))
    return LoanResult(ok=True, due=_due(answer.get("AH")))


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


#: The local ILS's tables are a schema of their own in the plugin's shared store, beside the patron tables
#: (:data:`plugins.library.service.SHARED_MIGRATIONS`, the default schema): each list counts its own
#: versions in ``readerd_migrations``.
LOCAL_ILS_SCHEMA = "loans"
LOCAL_ILS_MIGRATIONS = (local_ils_v1,)


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
            self.db.migrate(LOCAL_ILS_MIGRATIONS, schema=LOCAL_ILS_SCHEMA)  # its own schema name
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
