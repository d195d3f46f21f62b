"""``plugin.error`` says what went wrong in one line; the traceback and the SQL go to the host's log.

A plugin whose hook raises SQLAlchemy's ``OperationalError`` (a real one, from an in-memory SQLite): the
published message is ``Type: first line``, without "Traceback", "[SQL:", SQLAlchemy's help link or a
newline, while the host's log line (readerd's JSON format) holds the traceback. Also: the built-in
plugins carry readerd's version, and ``readerctl tail`` prints a ``plugin.error`` as plugin, hook, code
and that one line. Cost: about 0.5 s in all (no daemon).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import readerd.logging
from readerd import __version__
from readerd.cli.ctl import _format_event
from readerd.config import PluginsConfig, StoreConfig
from readerd.plugin.api import PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.host import MESSAGE_MAX, PluginHost, error_line, one_line
from readerd.plugin.store import Store

pytestmark = pytest.mark.timeout(30)

Report = tuple[str, str, str, str, bool]


class BadQuery:
    """Runs a statement on a table that does not exist: SQLAlchemy's multi-line OperationalError."""

    def __init__(self) -> None:
        self.engine = sa.create_engine("sqlite://")

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        with self.engine.connect() as conn:
            conn.execute(
                sa.text("SELECT pseudonym, visits FROM no_such_table WHERE member_id = :m"), {"m": 7}
            )


def _envelope(seq: int) -> dict[str, Any]:
    envelope = {"type": "card.identified", "seq": seq, "run_id": "r1", "id": f"e{seq}", "ts": "t"}
    return envelope | {"kiosk": "k", "data": {}}


@pytest.fixture
def host_log() -> Iterator[io.StringIO]:
    """The host's log as ``readerd`` writes it (JSON lines, tracebacks rendered), into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    readerd.logging.configure("INFO", "json")
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_an_sql_error_is_one_line_on_the_bus_and_a_traceback_in_the_log(host_log: io.StringIO) -> None:
    reports: list[Report] = []
    settings = PluginsConfig(autoload=False, quarantine_after=2)
    host = PluginHost(
        settings,
        kiosk="k",
        publish=lambda _r: None,
        report=lambda *args: reports.append(args),
        plugins={"ledger": BadQuery()},
    )
    host.load()
    host.dispatch(_envelope(1))  # a failure
    host.dispatch(_envelope(2))  # the second in a row: quarantined
    assert [(r[0], r[1], r[2], r[4]) for r in reports] == [
        ("ledger", "readerd_card_identified", "exception", False),
        ("ledger", "readerd_card_identified", "exception", True),
    ]
    for _plugin, _hook, _code, message, _quarantined in reports:
        assert message == "OperationalError: (sqlite3.OperationalError) no such table: no_such_table"
        assert "\n" not in message
        assert "Traceback" not in message
        assert "[SQL:" not in message
        assert "Background on this error" not in message
    quarantined = host.status()["plugins"][0]["quarantined"]
    assert quarantined == f"readerd_card_identified: exception: {reports[1][3]}"  # readerctl plugins too

    lines = [line for line in host_log.getvalue().splitlines() if '"readerd.plugins"' in line]
    failed = [line for line in lines if "plugin hook failed" in line or "plugin quarantined" in line]
    assert len(failed) == 2
    for line in failed:
        assert "Traceback (most recent call last)" in line
        assert "readerd_card_identified" in line
        assert "no_such_table WHERE member_id" in line  # the statement is in the log, for whoever debugs


def test_one_line_keeps_the_first_line_and_drops_what_sqlalchemy_appends() -> None:
    sql_only = "\n[SQL: DELETE FROM t]\n(Background on this error at: https://sqlalche.me/e/20/e3q8)"
    assert one_line(sql_only) == ""
    assert error_line(RuntimeError(sql_only)) == "RuntimeError"
    assert error_line(ValueError("bad value\nmore detail")) == "ValueError: bad value"
    assert error_line(KeyError("visits")) == "KeyError: 'visits'"
    long = one_line("x" * 1000)
    assert len(long) == MESSAGE_MAX
    assert long.endswith("…")


def test_the_built_in_plugins_carry_readerds_version(tmp_path: Path) -> None:
    store = Store.open(StoreConfig(), tmp_path)
    host = PluginHost(
        PluginsConfig(autoload=False, builtins=("checkin",)), kiosk="k", publish=lambda _r: None, store=store
    )
    try:
        host.load()
        (checkin,) = host.status()["plugins"]
        assert (checkin["name"], checkin["source"], checkin["version"]) == ("checkin", "builtin", __version__)
        assert __version__
    finally:
        host.stop(0.1)
        store.close()


def test_tail_prints_a_plugin_error_as_plugin_hook_code_and_one_line() -> None:
    """Also an older daemon's event, whose message still carries the statement and a traceback."""
    message = (
        "OperationalError: (sqlite3.OperationalError) database is locked\n"
        "[SQL: UPDATE visits SET n = n + 1]\nTraceback (most recent call last):\n  File ..."
    )
    data = {"plugin": "bathhouse", "hook": "readerd_card_identified", "error": "exception"}
    env = {"ts": "2026-12-07T01:32:05.000Z", "seq": 42, "type": "plugin.error", "reader": None}
    line = _format_event(env | {"data": data | {"message": message, "quarantined": True}})
    assert "\n" not in line
    assert line.startswith("2026-12-07T10:32:05.000+09:00 #42 plugin.error")
    assert line.endswith(
        "bathhouse readerd_card_identified: exception: "
        "OperationalError: (sqlite3.OperationalError) database is locked (quarantined)"
    )
    assert "[SQL:" not in line
    assert "Traceback" not in line
