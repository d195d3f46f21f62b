"""Where the plugin host keeps its cursors: the last feed ``seq`` each plugin was given.

A table of the local database (``readerd_plugin_cursors``), not the shared one: ``seq`` is per kiosk (its
event log), not per ward. :class:`readerd.plugin.replay.FeedCursors` decides when a cursor moves; this
module only reads and writes the rows, through the store's retrying transactions.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from readerd.ops.database import Database
from readerd.plugin import business_time

CURSORS_TABLE: Final = "readerd_plugin_cursors"

_cursors = sa.Table(
    CURSORS_TABLE,
    sa.MetaData(),
    sa.Column("plugin", sa.String(32), primary_key=True),  # a plugin name (readerd.plugin.api)
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
)


class CursorTable:
    """The cursor rows of one (local, SQLite) database; the table is made on the first write."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._ready = False

    def read(self) -> dict[str, int]:
        def read(conn: Connection) -> dict[str, int]:
            if not sa.inspect(conn).has_table(CURSORS_TABLE):
                return {}
            rows = conn.execute(sa.select(_cursors.c.plugin, _cursors.c.seq)).all()
            return {str(row.plugin): int(row.seq) for row in rows}

        return self.database.transaction(read, readonly=True)

    def write(self, cursors: dict[str, int], run_id: str) -> None:
        if not cursors:
            return
        now = business_time.utc_now().isoformat(timespec="seconds")

        def write(conn: Connection) -> None:
            if not self._ready:
                _cursors.create(conn, checkfirst=True)
            rows = [
                {"plugin": p, "seq": seq, "run_id": run_id, "updated_at": now} for p, seq in cursors.items()
            ]
            insert = sqlite_dialect.insert(_cursors)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[_cursors.c.plugin],
                    set_={"seq": insert.excluded.seq, "run_id": insert.excluded.run_id, "updated_at": now},
                ),
                rows,
            )

        self.database.transaction(write)
        self._ready = True
