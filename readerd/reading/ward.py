"""The ward's member directory: one member per card across every kiosk, in the shared PostgreSQL.

A ward's kiosks share one store (``[store] shared_url``). If each kept its own member directory, a citizen
enrolled at the library would be a stranger at the community centre, and enrolling again there would make
a second member: two accounts, two check-ins for one person. So with a shared store the directory lives
there (``readerd_members``), with member IDs unique ward-wide and enrolment and relink in one
transaction each, idempotent (a card enrolled twice, at one kiosk or at two at once, is one member).

A tap must not wait for the network. The daemon owns the directory's connection and answers a tap from a
local cache first (``<state_dir>/members-cache.db``, a SQLite file, so it survives restarts): an entry
checked less than ``directory_cache_ttl`` seconds ago answers at once, as does a miss checked less than
``directory_negative_ttl`` ago (negative caching: an unenrolled card tapped again and again costs one
query per window). Otherwise the kiosk asks the ward, waiting at most ``directory_budget`` (200 ms by
default) inside the card session; when the ward does not answer in time or cannot be reached, the tap is
answered from the cache, however old, and says so (``Lookup.offline``, ``directory_offline: true`` in the
event), and the directory is not asked again for ``directory_retry`` seconds, so a dead link costs one
budget per window, not one per tap. A query that overran its budget still completes in the background and
fills the cache for the next tap.

What follows: a member withdrawn or relinked at kiosk A may still be recognised from kiosk B's cache for
up to ``directory_cache_ttl`` (5 minutes by default), and while B is offline, until it is back. Enrolment,
withdrawal and relink never use the cache: they need the ward and say so when it is down
(:class:`~readerd.errors.StoreUnavailableError`, ``directory_unavailable`` to the caller).

The kiosk's own SQLite directory (``members.db``) stays untouched: ``members.import`` moves its entries
into the ward's directory when they were made under the ward's deployment key (docs/identifiers.md).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from protocols.mykey import key_fingerprint, new_member_id, normalize_mykey_id
from readerd.errors import Refusal, StoreBusyError, StoreUnavailableError
from readerd.ops.database import Database
from readerd.ops.keys import load_pseudonym_key
from readerd.ops.statedir import create_private
from readerd.reading.identity import LOCAL_DIRECTORY, DirectoryEntry, Lookup, SqliteDirectory

log = structlog.get_logger("readerd.directory")

MEMBERS_TABLE: Final = "readerd_members"
CACHE_FILE: Final = "members-cache.db"
#: pg_advisory_xact_lock key while the ward's directory table is created: b"members\0" as an int64.
_SCHEMA_LOCK_KEY: Final = int.from_bytes(b"members\0", "big")
#: Background lookups allowed at once: on a dead link the rest of the taps go offline at once instead of
#: queueing behind a connection attempt that will time out.
_MAX_IN_FLIGHT: Final = 2

_members = sa.Table(
    MEMBERS_TABLE,
    sa.MetaData(),
    sa.Column("pseudonym", sa.String(64), primary_key=True),
    sa.Column("member_id", sa.String(32), nullable=False, unique=True),
    sa.Column("mykey_id", sa.String(64), unique=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("kiosk", sa.String(64), nullable=False),  # where the member enrolled (support questions)
)
_COLUMNS = (_members.c.pseudonym, _members.c.member_id, _members.c.mykey_id, _members.c.created_at)

_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    pseudonym  TEXT PRIMARY KEY,
    member_id  TEXT,
    mykey_id   TEXT,
    created_at TEXT,
    checked_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class WardDirectorySettings:
    budget: float = 0.2  # seconds a tap waits for the ward's directory
    cache_ttl: float = 300.0  # seconds an enrolled card's cached entry answers without asking
    negative_ttl: float = 10.0  # seconds a cached "not enrolled" answers without asking
    retry: float = 5.0  # seconds the directory is not asked after it failed to answer


class MemberCache:
    """The kiosk's copy of the ward's answers, as (entry or "not enrolled", when it was checked)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            create_private(self.path)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_CACHE_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise StoreUnavailableError(f"member cache {self.path}: {e}") from e

    def get(self, pseudonym: str) -> tuple[DirectoryEntry | None, float] | None:
        """``(entry or None for "not enrolled", checked_at)``, or None when the card was never looked up."""
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT member_id, mykey_id, created_at, checked_at FROM cache WHERE pseudonym = ?",
                    (pseudonym,),
                ).fetchone()
        except sqlite3.Error as e:
            log.warning("member cache unreadable", error=str(e))
            return None
        if row is None:
            return None
        member_id, mykey_id, created_at, checked_at = row
        if member_id is None:
            return None, float(checked_at)
        return DirectoryEntry(pseudonym, member_id, mykey_id, created_at), float(checked_at)

    def put(self, pseudonym: str, entry: DirectoryEntry | None, checked_at: float) -> None:
        values = (entry.member_id, entry.mykey_id, entry.created_at) if entry else (None, None, None)
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO cache (pseudonym, member_id, mykey_id, created_at, checked_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (pseudonym, *values, checked_at),
                )
        except sqlite3.Error as e:  # a cache that cannot be written costs a query next time, nothing more
            log.warning("member cache not written", error=str(e))

    def forget_member(self, member_id: str) -> None:
        """Drop every cached entry of ``member_id`` (it moved to another card, or withdrew)."""
        try:
            with self._lock:
                self._db.execute("DELETE FROM cache WHERE member_id = ?", (member_id,))
        except sqlite3.Error as e:
            log.warning("member cache not written", error=str(e))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class WardDirectory:
    """The :class:`~readerd.reading.identity.MyKeyDirectory` of a ward (module docstring)."""

    def __init__(
        self,
        database: Database,
        cache_path: Path,
        *,
        kiosk: str,
        settings: WardDirectorySettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.cache = MemberCache(cache_path)
        self.kiosk = kiosk[:64]
        self.settings = settings or WardDirectorySettings()
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=_MAX_IN_FLIGHT, thread_name_prefix="readerd-directory")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._quiet_until = 0.0  # no lookups before this (clock) after the ward failed to answer
        self._schema_ready = False
        self.stats = {"cached": 0, "asked": 0, "offline": 0}

    @property
    def where(self) -> str:
        return self.database.where

    # -- schema ---------------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the ward's table if no kiosk has yet (serialised across kiosks starting together)."""

        def create(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
            _members.create(conn, checkfirst=True)

        pg = self.database.dialect == "postgresql"
        self.database.transaction(create, isolation="READ COMMITTED" if pg else None)
        self._schema_ready = True

    def _ready(self) -> None:
        if not self._schema_ready:
            self.ensure_schema()

    # -- a tap ----------------------------------------------------------------------------------------
    def resolve(self, pseudonym: str) -> Lookup:
        """The tap path: cache first, the ward within the budget, the cache again when it cannot answer."""
        now = self.clock()
        cached = self.cache.get(pseudonym)
        if cached is not None:
            entry, checked_at = cached
            ttl = self.settings.cache_ttl if entry is not None else self.settings.negative_ttl
            if now - checked_at < ttl:
                self._count("cached")
                return Lookup(entry)
        future = self._ask(pseudonym)
        if future is not None:
            try:
                entry = future.result(timeout=self.settings.budget)
            except FutureTimeout:
                self._go_quiet("the ward's member directory did not answer within the budget")
            except (StoreUnavailableError, StoreBusyError) as e:
                self._go_quiet(str(e))
            else:
                self._count("asked")
                return Lookup(entry)
        self._count("offline")
        return Lookup(cached[0] if cached is not None else None, offline=True)

    def _ask(self, pseudonym: str) -> Future[DirectoryEntry | None] | None:
        with self._lock:
            if self.clock() < self._quiet_until or self._in_flight >= _MAX_IN_FLIGHT:
                return None
            self._in_flight += 1
        future = self._pool.submit(self._fetch, pseudonym)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[DirectoryEntry | None]) -> None:
        with self._lock:
            self._in_flight -= 1

    def _fetch(self, pseudonym: str) -> DirectoryEntry | None:
        """One lookup at the ward; the answer goes to the cache even when the tap has stopped waiting."""
        checked_at = self.clock()
        entry = self.lookup(pseudonym)
        self.cache.put(pseudonym, entry, checked_at)
        return entry

    def _go_quiet(self, why: str) -> None:
        with self._lock:
            first = self.clock() >= self._quiet_until
            self._quiet_until = self.clock() + self.settings.retry
        if first:
            log.warning("member directory offline: taps answered from the cache", error=why)

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def status(self) -> dict[str, object]:
        with self._lock:
            return {
                "directory": "ward",
                "database": self.where,
                "offline": self.clock() < self._quiet_until,
                **self.stats,
            }

    # -- the directory (always the ward, never the cache) ----------------------------------------------
    def lookup(self, pseudonym: str) -> DirectoryEntry | None:
        return self._one(_members.c.pseudonym == pseudonym)

    def by_member_id(self, member_id: str) -> DirectoryEntry | None:
        return self._one(_members.c.member_id == member_id)

    def _one(self, where: sa.ColumnElement[bool]) -> DirectoryEntry | None:
        self._ready()
        row = self.database.transaction(
            lambda conn: conn.execute(sa.select(*_COLUMNS).where(where)).first(), readonly=True
        )
        return DirectoryEntry(*row) if row else None

    def enroll(self, pseudonym: str, *, mykey_id: str | None = None) -> DirectoryEntry:
        """Idempotent across the ward: a card enrolled at two kiosks at once is one member (the second
        transaction meets the first's row and, under SERIALIZABLE, is retried until it reads it)."""
        self._ready()
        if mykey_id is not None:
            mykey_id = normalize_mykey_id(mykey_id)
        created = datetime.now(UTC).isoformat(timespec="seconds")

        def enrol(conn: Connection) -> DirectoryEntry:
            for _ in range(8):  # 40-bit IDs: a collision is rare; a new one is drawn
                row = conn.execute(sa.select(*_COLUMNS).where(_members.c.pseudonym == pseudonym)).first()
                if row is not None:
                    entry = DirectoryEntry(*row)
                    if mykey_id is not None and entry.mykey_id != mykey_id:
                        conn.execute(
                            _members.update()
                            .where(_members.c.pseudonym == pseudonym)
                            .values(mykey_id=mykey_id)
                        )
                        entry = DirectoryEntry(pseudonym, entry.member_id, mykey_id, entry.created_at)
                    return entry
                member_id = new_member_id()
                inserted = conn.execute(
                    self.database.insert_or_ignore(_members).values(
                        pseudonym=pseudonym,
                        member_id=member_id,
                        mykey_id=mykey_id,
                        created_at=created,
                        kiosk=self.kiosk,
                    )
                ).rowcount
                if inserted:
                    return DirectoryEntry(pseudonym, member_id, mykey_id, created)
            raise StoreUnavailableError("could not allocate a unique member_id")

        entry = self.database.transaction(enrol)
        self.cache.put(pseudonym, entry, self.clock())
        return entry

    def unenroll(self, pseudonym: str) -> DirectoryEntry | None:
        self._ready()

        def remove(conn: Connection) -> DirectoryEntry | None:
            row = conn.execute(
                _members.delete().where(_members.c.pseudonym == pseudonym).returning(*_COLUMNS)
            ).first()
            return DirectoryEntry(*row) if row else None

        entry = self.database.transaction(remove)
        if entry is not None:
            self.cache.forget_member(entry.member_id)
        self.cache.put(pseudonym, None, self.clock())
        return entry

    def relink(self, member_id: str, pseudonym: str) -> DirectoryEntry:
        self._ready()

        def move(conn: Connection) -> DirectoryEntry:
            taken = conn.execute(sa.select(_members.c.member_id).where(_members.c.pseudonym == pseudonym))
            if taken.first() is not None:
                raise ValueError("the new card is enrolled already")
            row = conn.execute(
                _members.update()
                .where(_members.c.member_id == member_id)
                .values(pseudonym=pseudonym)
                .returning(*_COLUMNS)
            ).first()
            if row is None:
                raise KeyError(member_id)
            return DirectoryEntry(*row)

        entry = self.database.transaction(move)
        self.cache.forget_member(member_id)
        self.cache.put(pseudonym, entry, self.clock())
        return entry

    # -- moving a kiosk's own directory in ------------------------------------------------------------
    def import_entries(self, entries: list[DirectoryEntry], *, dry_run: bool = False) -> ImportReport:
        """Add a kiosk's local members to the ward's directory, one transaction for all: an entry already
        there with the same member ID is ``present``; a card the ward knows under another member ID, or a
        member ID the ward gave to another card, is a conflict (reported, not changed: the ward wins)."""
        self._ready()

        def run(conn: Connection) -> ImportReport:
            report = ImportReport()
            for entry in entries:
                by_card = conn.execute(
                    sa.select(_members.c.member_id).where(_members.c.pseudonym == entry.pseudonym)
                ).scalar_one_or_none()
                by_id = conn.execute(
                    sa.select(_members.c.pseudonym).where(_members.c.member_id == entry.member_id)
                ).scalar_one_or_none()
                if by_card == entry.member_id:
                    report.present.append(entry.member_id)
                elif by_card is not None:
                    report.conflicts.append(
                        {
                            "member_id": entry.member_id,
                            "reason": "card_enrolled_as",
                            "ward_member_id": by_card,
                        }
                    )
                elif by_id is not None:
                    report.conflicts.append({"member_id": entry.member_id, "reason": "member_id_taken"})
                elif (
                    entry.mykey_id is not None
                    and conn.execute(
                        sa.select(_members.c.member_id).where(_members.c.mykey_id == entry.mykey_id)
                    ).first()
                ):
                    report.conflicts.append({"member_id": entry.member_id, "reason": "mykey_id_taken"})
                else:
                    if not dry_run:
                        conn.execute(
                            _members.insert().values(
                                pseudonym=entry.pseudonym,
                                member_id=entry.member_id,
                                mykey_id=entry.mykey_id,
                                created_at=entry.created_at,
                                kiosk=self.kiosk,
                            )
                        )
                    report.imported.append(entry.member_id)
            return report

        report = self.database.transaction(run)
        if not dry_run:
            now = self.clock()
            for entry in entries:
                if entry.member_id in report.imported:
                    self.cache.put(entry.pseudonym, entry, now)
        return report

    def close(self, timeout: float = 3.0) -> None:
        """Stop: lookups still waiting on a dead link get ``timeout`` seconds (the link's own bounds,
        ``tcp_user_timeout`` and ``connect_timeout``, end them) before the connections are dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0:
                    break
            time.sleep(0.02)
        self.database.close()
        self.cache.close()


@dataclass
class ImportReport:
    """What ``members.import`` did: member IDs added, already there, and conflicts left as they were."""

    imported: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    conflicts: list[dict[str, str]] = field(default_factory=list)


def import_local_directory(
    ward: WardDirectory, state_dir: Path, fingerprint: str, *, dry_run: bool = False
) -> dict[str, object]:
    """``members.import``: the kiosk's own directory (``members.db``) into the ward's.

    Only a directory made under the ward's deployment key is moved: its pseudonyms are the ones the ward
    computes for the same cards. One made under another key (a kiosk that ran on its own key before it
    joined the ward) is refused as a whole: those members enrol again at their next PIN tap. A directory
    from before readerd recorded its key is taken to be made under the kiosk's own key file
    (``<state_dir>/pseudonym.key``) when there is one; otherwise it cannot be told and is refused.
    """
    path = state_dir / LOCAL_DIRECTORY
    if not path.exists():
        return {
            "members": 0,
            "imported": 0,
            "present": 0,
            "conflicts": [],
            "dry_run": dry_run,
            "note": "this kiosk has no directory of its own: nothing to import",
        }
    local = SqliteDirectory(path)
    try:
        made_under = local.recorded_key()
        own = state_dir / "pseudonym.key"
        if made_under is None and own.exists():
            made_under = key_fingerprint(load_pseudonym_key(own))
        if made_under != fingerprint:
            raise Refusal(
                "other_deployment_key",
                f"this kiosk's member directory was made under the pseudonym key {made_under or 'unknown'}, "
                f"the ward's key is {fingerprint}: its pseudonyms name no card the ward knows, so nothing is "
                "imported; those members enrol again with their PIN at their next visit",
                recorded=made_under,
                ward=fingerprint,
            )
        entries = local.entries()
    finally:
        local.close()
    report = ward.import_entries(entries, dry_run=dry_run)
    log.info(
        "local member directory imported" if not dry_run else "local member directory checked",
        members=len(entries),
        imported=len(report.imported),
        present=len(report.present),
        conflicts=len(report.conflicts),
    )
    return {
        "members": len(entries),
        "imported": len(report.imported),
        "present": len(report.present),
        "conflicts": report.conflicts,
        "dry_run": dry_run,
    }
