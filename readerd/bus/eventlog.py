"""The durable event log: every published event, with its ``seq``, in SQLite in the state directory.

Why it exists (docs/design.md D2): ZeroMQ PUB drops for late joiners and slow subscribers, so a client
that sees a gap in ``seq`` asks ``events.since`` on the control channel and gets the missed events from
here; and ``seq`` survives a restart because the next one is the last logged plus one.

Only the bus thread writes (it owns the order of events), on one connection under a lock. Reads
(``events.since``, answered on worker threads, and the plugin host's catch-up) use a read-only connection
per thread and never take that lock: WAL lets them read while the bus thread appends, so a long read
never delays a card event. WAL with ``synchronous=NORMAL``: a commit is not fsynced, the WAL is at
checkpoints, so a power cut can lose the last few events but never corrupt the file, and an append costs
microseconds instead of a disk flush per card tap.

It is personal data (pseudonyms, member IDs, and in the ``private`` column what only plugins may see), so
it is bounded by age (default 7 days) and by count, pruned as it grows; docs/privacy.md says who reads it.
The certificate's fields (serial, issuer, CN, validity dates: notAfter gives the birthday away) are never
written, so that no stored record carries them (docs/privacy.md): a plugin that catches up through the
log gets the event without them, as if it had not asked for them.
The highest ``seq`` ever logged is kept in ``meta`` too, so a log pruned to nothing still continues the
numbering after a restart: a prune writes it there before it deletes (an append does not: the table's
own highest seq says it until a prune, and a card event's append is one INSERT, its own transaction).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from readerd.errors import GapUnrecoverableError, StoreUnavailableError
from readerd.events import Envelope

log = structlog.get_logger("readerd.eventlog")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    logged_at REAL NOT NULL,
    type TEXT NOT NULL,
    public TEXT NOT NULL,
    private TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

INSERT = "INSERT INTO events VALUES (?, ?, ?, ?, ?)"
#: ``meta.last_seq``: written by a prune, before it deletes (the table's own MAX(seq) counts until then).
KEEP_LAST_SEQ = (
    "INSERT INTO meta VALUES ('last_seq', ?) "
    "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)"
)

#: Prune at most every this many appends (and at open): a DELETE per event would double the cost.
PRUNE_EVERY = 256
DAY = 86400.0


#: Private fields that describe the card's certificate: never stored (see the module docstring).
CERTIFICATE_FIELDS = frozenset({"serial", "issuer_der", "subject_cn", "not_before", "not_after"})


def _storable(private: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in private.items() if key not in CERTIFICATE_FIELDS}


#: How the ``private`` column is written (``json.dumps(..., ensure_ascii=False)``), made once.
_encode_private = json.JSONEncoder(ensure_ascii=False).encode


@dataclass(frozen=True)
class Since:
    """What ``events.since`` answers: the events after a seq, in order, and whether more follow."""

    events: list[dict[str, Any]]
    last_seq: int  # the highest seq logged when the answer was made
    more: bool  # the limit cut the answer: ask again from the last event's seq


@dataclass(frozen=True)
class SinceJson:
    """:class:`Since` with each event as its stored JSON text."""

    events: list[str]
    last_seq: int
    more: bool


class EventLog:
    def __init__(
        self,
        path: Path,
        *,
        max_events: int = 100_000,
        max_age_s: float = 7 * DAY,
        clock: Any = time.time,  # noqa: ANN401 - a () -> float, injectable for retention tests
    ) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._appends = 0
        self._local = threading.local()  # each reading thread's own connection
        self._readers: list[sqlite3.Connection] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                self.path.touch(mode=0o600)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailableError(f"event log {self.path}: {e}") from e
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        self.last_seq = self._read_last_seq()
        self.prune()

    def _read_last_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        top = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return max(int(row[0]) if row else 0, int(top[0]) if top and top[0] is not None else 0)

    def append(self, envelopes: Sequence[Envelope]) -> None:
        """Log stamped envelopes in one transaction (the bus appends a drained batch before sending it)."""
        if not envelopes:
            return
        now = self._clock()
        rows = [
            (
                e.seq,
                now,
                e.topic,
                e.public_json().decode(),
                _encode_private(_storable(e.event.private)) if e.event.private else "{}",
            )
            for e in envelopes
        ]
        with self._lock:
            try:
                if len(rows) == 1:  # one statement is one transaction already (autocommit)
                    self._db.execute(INSERT, rows[0])
                else:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(INSERT, rows)
                    self._db.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise StoreUnavailableError(f"event log append: {e}") from e
            self.last_seq = max(self.last_seq, envelopes[-1].seq)
            self._appends += len(envelopes)
        if self._appends >= PRUNE_EVERY:
            self.prune()

    def prune(self) -> int:
        """Drop events past the retention (age or count); the number dropped.

        One range of ``seq`` from the oldest: the events up to the count limit, and those logged before
        the first one young enough to keep (``logged_at`` grows with ``seq``; after a clock step back an
        old event behind a young one waits for it). So a prune reads only what it deletes and the first
        row it keeps, by the primary key, not the whole table (``logged_at`` has no index: one would cost
        every append)."""
        with self._lock:
            self._appends = 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(KEEP_LAST_SEQ, (self.last_seq,))
                cur = self._db.execute(
                    "DELETE FROM events WHERE seq < MAX(?, COALESCE("
                    "(SELECT seq FROM events WHERE logged_at >= ? ORDER BY seq LIMIT 1), ?))",
                    (self.last_seq - self.max_events + 1, self._clock() - self.max_age_s, self.last_seq + 1),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                log.error("event log prune failed", error=str(e))
                return 0
            dropped = cur.rowcount
        if dropped:
            log.info("event log pruned", dropped=dropped)
        return dropped

    def oldest_seq(self) -> int:
        """The oldest seq still held; ``last_seq + 1`` when the log holds nothing."""
        with self._lock:
            row = self._db.execute("SELECT MIN(seq) FROM events").fetchone()
        return int(row[0]) if row and row[0] is not None else self.last_seq + 1

    def since(self, seq: int, *, limit: int = 1000, private: bool = False) -> Since:
        """The events after ``seq``, oldest first, at most ``limit``.

        Raises :class:`GapUnrecoverableError` when some of them were already pruned: the caller must know
        it lost events rather than get a stream that silently skips. ``private`` adds the plugin-only
        fields (the in-process plugin host; never on the control channel).
        """
        raw = self.since_json(seq, limit=limit, private=private)
        return Since([json.loads(event) for event in raw.events], raw.last_seq, raw.more)

    def since_json(self, seq: int, *, limit: int = 1000, private: bool = False) -> SinceJson:
        """:meth:`since` with each envelope as the JSON text it was stored as (nothing decoded)."""
        last = self.last_seq
        try:
            rows = (
                self._reader()
                .execute(
                    "SELECT seq, public, private FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                    (seq, last, limit + 1),
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"event log read: {e}") from e
        if seq < last and (not rows or rows[0][0] != seq + 1):
            oldest = int(rows[0][0]) if rows else last + 1
            raise GapUnrecoverableError(oldest_seq=oldest, asked=seq)
        more = len(rows) > limit
        if private:  # the stored public envelope is an object: the private fields go in before its "}"
            events = [
                f'{public[:-1]},"private":{private_json}}}' for _s, public, private_json in rows[:limit]
            ]
        else:
            events = [public for _s, public, _p in rows[:limit]]
        return SinceJson(events, last, more)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (made on its first read)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in (self._db, *self._readers):
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._readers.clear()
