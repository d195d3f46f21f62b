"""From a card to who it is on the bus: a keyed pseudonym, and the member/MyKey ID it is enrolled as.

The pseudonym (``protocols.mykey``) needs no database and reveals nothing without the deployment key.
The directory maps a pseudonym to readerd's own ``member_id`` and, when a remote MyKey adapter supplied
one, the real MyKey ID (docs/design.md D11). Unknown cards are not an error: they produce events with
``enrolled: false``; enrolment itself needs proof of possession, a PIN and a signature by the card
(:mod:`readerd.auth.manager`).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from protocols.jpki import UserAuthCertificate
from protocols.mykey import felica_pseudonym, jpki_pseudonym, new_member_id, normalize_mykey_id
from readerd.errors import StoreUnavailableError
from readerd.ops.statedir import create_private

#: The kiosk's own member directory in its state directory (a kiosk not part of a ward).
LOCAL_DIRECTORY = "members.db"


@dataclass(frozen=True)
class DirectoryEntry:
    pseudonym: str
    member_id: str
    mykey_id: str | None
    created_at: str


@dataclass(frozen=True)
class Identity:
    """What an identified card is, in the words events may carry."""

    pseudonym: str
    member_id: str | None = None
    mykey_id: str | None = None
    #: the ward's member directory could not be asked: enrolment as the kiosk's cache last saw it
    directory_offline: bool = False

    @property
    def enrolled(self) -> bool:
        return self.member_id is not None

    def public_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {"pseudonym": self.pseudonym, "enrolled": self.enrolled}
        if self.member_id is not None:
            fields["member_id"] = self.member_id
        if self.mykey_id is not None:
            fields["mykey_id"] = self.mykey_id
        if self.directory_offline:
            fields["directory_offline"] = True
        return fields


@dataclass(frozen=True)
class Lookup:
    """A tap's answer from the directory: the entry (None: not enrolled), and whether it is the cache's
    because the ward's directory could not be asked (:mod:`readerd.reading.ward`)."""

    entry: DirectoryEntry | None
    offline: bool = False


class MyKeyDirectory(Protocol):
    """Where pseudonyms are enrolled. The embedded SQLite one is the default; a remote one (the MyKey
    platform, a city's own registry) implements the same three methods."""

    def lookup(self, pseudonym: str) -> DirectoryEntry | None: ...

    def resolve(self, pseudonym: str) -> Lookup:
        """The tap path's lookup: fast, and never raising for a directory that cannot be reached."""
        ...

    def enroll(self, pseudonym: str, *, mykey_id: str | None = None) -> DirectoryEntry: ...

    def by_member_id(self, member_id: str) -> DirectoryEntry | None: ...

    def unenroll(self, pseudonym: str) -> DirectoryEntry | None:
        """Remove the pseudonym's entry; the removed entry, or ``None`` if there was none."""
        ...

    def relink(self, member_id: str, pseudonym: str) -> DirectoryEntry:
        """Move ``member_id`` to a new pseudonym (a renewed certificate); raises ``KeyError`` for an
        unknown member and ``ValueError`` when the new pseudonym is enrolled already."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    pseudonym  TEXT PRIMARY KEY,
    member_id  TEXT NOT NULL UNIQUE,
    mykey_id   TEXT UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS directory_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class SqliteDirectory:
    """The embedded directory: one SQLite file in the state directory (WAL, so readers never block),
    created 0600 before SQLite opens it, so that its -wal and -shm files are 0600 too."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            create_private(self.path)
        except OSError as e:
            raise StoreUnavailableError(f"member directory {self.path}: {e}") from e
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"member directory {self.path}: {e}") from e

    def record_key(self, fingerprint: str) -> str:
        """Remember the fingerprint of the deployment key the pseudonyms are made with (the first one
        recorded stays); returns the recorded one. ``members.import`` moves only entries made under the
        ward's key: a pseudonym made under another key names no card the ward can recognise."""
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR IGNORE INTO directory_meta (name, value) VALUES ('key_fingerprint', ?)",
                    (fingerprint,),
                )
                row = self._db.execute(
                    "SELECT value FROM directory_meta WHERE name = 'key_fingerprint'"
                ).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"member directory {self.path}: {e}") from e
        return str(row[0])

    def recorded_key(self) -> str | None:
        """The recorded key fingerprint, or None for a directory made before readerd recorded it."""
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT value FROM directory_meta WHERE name = 'key_fingerprint'"
                ).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"member directory {self.path}: {e}") from e
        return None if row is None else str(row[0])

    def entries(self) -> list[DirectoryEntry]:
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT pseudonym, member_id, mykey_id, created_at FROM members ORDER BY created_at"
                ).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"member directory {self.path}: {e}") from e
        return [DirectoryEntry(*row) for row in rows]

    def resolve(self, pseudonym: str) -> Lookup:
        return Lookup(self.lookup(pseudonym))

    def _entry(self, sql: str, value: str) -> DirectoryEntry | None:
        """One statement that yields at most one member row (autocommit), as an entry."""
        try:
            with self._lock:
                row = self._db.execute(sql, (value,)).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"member directory {self.path}: {e}") from e
        return DirectoryEntry(*row) if row else None

    def lookup(self, pseudonym: str) -> DirectoryEntry | None:
        return self._entry(
            "SELECT pseudonym, member_id, mykey_id, created_at FROM members WHERE pseudonym = ?", pseudonym
        )

    def enroll(self, pseudonym: str, *, mykey_id: str | None = None) -> DirectoryEntry:
        """Idempotent: enrolling a known pseudonym returns its entry (and records a MyKey ID if new)."""
        if mykey_id is not None:
            mykey_id = normalize_mykey_id(mykey_id)
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT pseudonym, member_id, mykey_id, created_at FROM members WHERE pseudonym = ?",
                        (pseudonym,),
                    ).fetchone()
                    if row is None:
                        entry = self._insert(pseudonym, mykey_id)
                    else:
                        entry = DirectoryEntry(*row)
                        if mykey_id is not None and entry.mykey_id != mykey_id:
                            self._db.execute(
                                "UPDATE members SET mykey_id = ? WHERE pseudonym = ?", (mykey_id, pseudonym)
                            )
                            entry = DirectoryEntry(
                                entry.pseudonym, entry.member_id, mykey_id, entry.created_at
                            )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"member directory {self.path}: {e}") from e
        return entry

    def by_member_id(self, member_id: str) -> DirectoryEntry | None:
        return self._entry(
            "SELECT pseudonym, member_id, mykey_id, created_at FROM members WHERE member_id = ?", member_id
        )

    def unenroll(self, pseudonym: str) -> DirectoryEntry | None:
        return self._entry(
            "DELETE FROM members WHERE pseudonym = ? RETURNING pseudonym, member_id, mykey_id, created_at",
            pseudonym,
        )

    def relink(self, member_id: str, pseudonym: str) -> DirectoryEntry:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if self._db.execute("SELECT 1 FROM members WHERE pseudonym = ?", (pseudonym,)).fetchone():
                        raise ValueError("the new card is enrolled already")
                    row = self._db.execute(
                        "UPDATE members SET pseudonym = ? WHERE member_id = ? "
                        "RETURNING pseudonym, member_id, mykey_id, created_at",
                        (pseudonym, member_id),
                    ).fetchone()
                    if row is None:
                        raise KeyError(member_id)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"member directory {self.path}: {e}") from e
        return DirectoryEntry(*row)

    def _insert(self, pseudonym: str, mykey_id: str | None) -> DirectoryEntry:
        created = datetime.now(UTC).isoformat(timespec="seconds")
        for _ in range(8):  # 40-bit IDs: a collision is rare; retry a few times rather than fail
            member_id = new_member_id()
            try:
                self._db.execute(
                    "INSERT INTO members (pseudonym, member_id, mykey_id, created_at) VALUES (?, ?, ?, ?)",
                    (pseudonym, member_id, mykey_id, created),
                )
            except sqlite3.IntegrityError as e:
                if "member_id" in str(e):
                    continue
                raise
            return DirectoryEntry(pseudonym, member_id, mykey_id, created)
        raise StoreUnavailableError("could not allocate a unique member_id")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class IdentityResolver:
    """Turns certificates and IDms into :class:`Identity` objects with the deployment key."""

    def __init__(self, key: bytes, directory: MyKeyDirectory) -> None:
        self._key = key
        self.directory = directory

    def _resolve(self, pseudonym: str) -> Identity:
        found = self.directory.resolve(pseudonym)
        entry = found.entry
        if entry is None:
            return Identity(pseudonym, directory_offline=found.offline)
        return Identity(pseudonym, entry.member_id, entry.mykey_id, directory_offline=found.offline)

    def jpki(self, certificate: UserAuthCertificate) -> Identity:
        return self._resolve(jpki_pseudonym(self._key, certificate.issuer_der, certificate.serial_number))

    def felica(self, idm: bytes) -> Identity:
        return self._resolve(felica_pseudonym(self._key, idm))
