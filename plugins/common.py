"""What the built-in plugins share, written against the public plugin API only (a model for authors).

- **Idempotency keys.** A kiosk that lost a reply sends the same command again with the same
  ``idempotency_key``; the plugin must apply it once and answer the same. :func:`idempotent` records the
  key, a digest of the arguments and the JSON result in the plugin's ``requests`` table *inside the
  command's own transaction*, so the effect and its record commit together or not at all. The same key
  with other arguments is refused (``idempotency_conflict``): that is a client bug, not a retry.
- **Instants** are stored as ISO-8601 UTC text of fixed width (``2026-11-23T01:00:00Z``), which sorts
  and compares as text the same on SQLite and PostgreSQL; business dates come from ``context.store.now()``
  and :mod:`readerd.plugin.business_time` (Asia/Tokyo).
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from readerd.plugin import JsonObject, MigrationContext, PluginDatabase, Refusal, StoreUnavailableError

KEY_MAX = 128


def iso(moment: datetime) -> str:
    """An aware instant as fixed-width UTC text."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: business times are always aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: object, field: str) -> datetime:
    """An ISO-8601 instant with its offset (``2026-11-23T10:00:00+09:00``); a naive one is refused,
    because a kiosk must never guess the zone of a time it is told."""
    if not isinstance(text, str):
        raise Refusal("bad_request", f"{field}: an ISO-8601 time with its offset")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Refusal("bad_request", f"{field}: {text!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise Refusal("bad_request", f"{field}: give the offset (+09:00 for JST)")
    return moment.astimezone(UTC)


def parse_date(text: object, field: str) -> date:
    if not isinstance(text, str):
        raise Refusal("bad_request", f"{field}: a date YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Refusal("bad_request", f"{field}: {text!r} is not a date YYYY-MM-DD") from None


def text_arg(args: JsonObject, name: str, *, max_length: int = 64, required: bool = True) -> str:
    """A non-empty, stripped string argument of at most ``max_length`` characters."""
    value = args.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise Refusal("bad_request", f"{name}: 1..{max_length} characters")
    return value.strip()


def create_requests_table(m: MigrationContext) -> None:
    """Migration step: the table that remembers idempotency keys and their results."""
    m.create_table(
        "requests",
        sa.Column("key", sa.String(KEY_MAX), primary_key=True),
        sa.Column("command", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(20), nullable=False),
    )


def requests_table(db: PluginDatabase) -> sa.Table:
    return db.table(
        "requests",
        sa.Column("key", sa.String(KEY_MAX), primary_key=True),
        sa.Column("command", sa.String(64)),
        sa.Column("digest", sa.String(64)),
        sa.Column("result", sa.Text),
        sa.Column("created_at", sa.String(20)),
    )


def request_digest(command: str, args: JsonObject) -> str:
    """What identifies a request besides its key: the command and its other arguments (SHA-256, hex)."""
    body = {k: v for k, v in args.items() if k != "idempotency_key"}
    return hashlib.sha256(json.dumps([command, body], sort_keys=True, default=str).encode()).hexdigest()


def idempotent(  # noqa: PLR0917 - mirrors the command handler's own arguments
    conn: Connection,
    table: sa.Table,
    command: str,
    args: JsonObject,
    now: datetime,
    apply: Callable[[Connection], JsonObject],
) -> JsonObject:
    """Run ``apply`` once per ``args["idempotency_key"]``; a repeat gets the first result back.

    Call it inside the command's transaction (``db.transaction(lambda conn: idempotent(conn, ...))``).
    A refusal raised by ``apply`` is not recorded: the client may fix the cause and retry with the key.
    """
    key = text_arg(args, "idempotency_key", max_length=KEY_MAX)
    digest = request_digest(command, args)
    # Claim the key first: a concurrent request with the same key waits on the unique index until this
    # transaction ends, then finds the committed record (READ COMMITTED) or is retried (SERIALIZABLE).
    # Checking first and inserting last would let both run ``apply`` before either had committed.
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)
    claimed = conn.execute(
        insert.values(key=key, command=command, digest=digest, result="", created_at=iso(now))
        .on_conflict_do_nothing()
        .returning(table.c.key)
    ).first()
    if claimed is None:
        row = conn.execute(
            sa.select(table.c.command, table.c.digest, table.c.result).where(table.c.key == key)
        ).one()
        if row.command != command or row.digest != digest:
            raise Refusal("idempotency_conflict", "this idempotency_key was used for another request")
        replay: dict[str, Any] = json.loads(row.result)
        return {**replay, "replayed": True}
    result = apply(conn)  # a Refusal here rolls the claim back with everything else
    conn.execute(
        table.update().where(table.c.key == key).values(result=json.dumps(result, ensure_ascii=False))
    )
    return result


def upsert(conn: Connection, table: sa.Table, key: str, values: JsonObject) -> None:
    """Insert or update the row whose ``key`` column is ``values[key]`` (portable, inside a transaction)."""
    column = table.c[key]
    if conn.execute(sa.select(column).where(column == values[key])).first() is None:
        conn.execute(table.insert().values(**values))
    else:
        conn.execute(table.update().where(column == values[key]).values(**values))


def person_of(data: JsonObject, *, allow_unenrolled: bool = False) -> str | None:
    """The person key of an identified (or authenticated) My Number Card, as every built-in keys people:
    ``mykey:<MyKey ID>``, ``member:<member ID>``, or, only where a plugin allows it, ``anon:<pseudonym>``."""
    if data.get("mykey_id"):
        return f"mykey:{data['mykey_id']}"
    if data.get("member_id"):
        return f"member:{data['member_id']}"
    if allow_unenrolled and data.get("pseudonym"):
        return f"anon:{data['pseudonym']}"
    return None


def persons_of_withdrawn(data: JsonObject) -> list[str]:
    """Every person key a withdrawn member (``member.withdrawn``'s data) may have been recorded under:
    ``member:<member ID>`` (before a MyKey ID, or by a grant or a registered card) and, when the event
    carries one, ``mykey:<MyKey ID>`` (what :func:`person_of` prefers). Empty for data naming neither."""
    persons = []
    for kind in ("member", "mykey"):
        value = data.get(f"{kind}_id")
        if isinstance(value, str) and value.strip():
            persons.append(f"{kind}:{value.strip()}")
    return persons


def withdrawn_key() -> str:
    """A fresh anonymous person key, ``withdrawn:<random>``, for the records a withdrawn member leaves that
    must keep counting: random (no way back to the member), one per person key and withdrawal, so a unique
    (thing, person) rule still holds after the re-keying."""
    return f"withdrawn:{uuid.uuid4().hex}"


def queue_withdrawal(conn: Connection, table: sa.Table, persons: list[str], now: datetime) -> dict[str, str]:
    """Inside a local transaction: the ``withdrawn:`` key of each person key, the one already queued (a
    replayed withdrawal whose shared part still waits) or a new one, queued in ``table`` (columns
    ``person``, ``anon``, ``queued_at``) until the shared store has re-keyed the person's records."""
    known = {
        row.person: row.anon
        for row in conn.execute(sa.select(table.c.person, table.c.anon).where(table.c.person.in_(persons)))
    }
    for person in persons:
        if person not in known:
            known[person] = withdrawn_key()
            conn.execute(table.insert().values(person=person, anon=known[person], queued_at=iso(now)))
    return known


def queued_withdrawals(conn: Connection, table: sa.Table) -> dict[str, str]:
    """Every queued withdrawal: person key -> its ``withdrawn:`` key."""
    return {row.person: row.anon for row in conn.execute(sa.select(table.c.person, table.c.anon))}


def rekey_request_results(conn: Connection, requests: sa.Table, command: str, anon: dict[str, str]) -> int:
    """Inside a shared transaction: the idempotency records of ``command`` whose result names one of the
    person keys (``"person": "member:…"``) name its ``withdrawn:`` key instead; how many were changed."""
    changed = 0
    for person, replacement in anon.items():
        quoted = json.dumps(person, ensure_ascii=False)
        rows = conn.execute(
            sa.select(requests.c.key, requests.c.result).where(
                requests.c.command == command, requests.c.result.contains(quoted, autoescape=True)
            )
        ).all()
        for row in rows:
            result = {k: replacement if v == person else v for k, v in json.loads(row.result or "{}").items()}
            conn.execute(
                requests.update()
                .where(requests.c.key == row.key)
                .values(result=json.dumps(result, ensure_ascii=False))
            )
            changed += 1
    return changed


def config_int(config: JsonObject, plugin: str, key: str, default: int) -> int:
    """A whole number >= 0 from ``[plugins.<plugin>]``; a wrong one stops the plugin at startup, named."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"[plugins.{plugin}] {key}: a whole number >= 0")
    return value


class OfflineQueues(Protocol):
    """What a plugin that works offline keeps for the shared store: withdrawals and an outbox."""

    def withdrawals_pending(self) -> int: ...

    def retry_withdrawals(self) -> int: ...

    def pending(self) -> int: ...

    def sync(self) -> JsonObject: ...


def push_offline(service: OfflineQueues, logger: Any, kept: str) -> None:  # noqa: ANN401 - structlog
    """One round of a sync loop: withdrawals that waited first (so a re-keyed offline row meets its
    re-keyed shared twin), then the outbox. While the shared store is still down, what waits is kept and
    said once a round (``kept``: "check-ins", "visits")."""
    try:
        if service.withdrawals_pending():
            service.retry_withdrawals()
        if service.pending():
            service.sync()
    except StoreUnavailableError:
        logger.info(f"shared store still unreachable; offline {kept} kept", pending=service.pending())


class Periodic:
    """Background work of a plugin (pushing offline records, retrying deferred ones): ``work`` runs every
    ``interval`` seconds on a daemon thread until :meth:`stop`; a failure is logged and the loop goes on."""

    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._work = work
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._work()
            except Exception:  # the loop must outlive any one failure
                structlog.get_logger("plugins").exception(
                    "plugin background work failed", thread=self._thread.name
                )
