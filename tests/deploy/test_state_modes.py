"""The state directory is the daemon's alone: 0700, and every file in it 0600 (SQLite's -wal and -shm
included), made so at start whatever the umask, and fixed when an earlier run or a copy left it loose."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from readerd.reading.identity import SqliteDirectory
from tests.support.auth import ok
from tests.support.daemon import running_daemon, sim_config


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    """Every directory and regular file under ``root`` (itself included), relative name -> mode; a
    directory's name ends in ``/``."""
    found = {"./": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            slash = "/" if stat.S_ISDIR(st.st_mode) else ""
            found[f"{path.relative_to(root)}{slash}"] = stat.S_IMODE(st.st_mode)
    return found


def test_member_directory_and_its_wal_are_0600_under_a_loose_umask(tmp_path: Path) -> None:
    """members.db (new, and an existing 0644 one) with its -wal and -shm. Cost: milliseconds."""
    with _umask(0o022):
        fresh = SqliteDirectory(tmp_path / "members.db")
        fresh.enroll("P" * 26)
        old = tmp_path / "old.db"
        sqlite3.connect(old).close()
        old.touch()
        old.chmod(0o644)
        existing = SqliteDirectory(old)
        existing.enroll("Q" * 26)
    try:
        modes = _modes(tmp_path)
    finally:
        fresh.close()
        existing.close()
    for name in ("members.db", "members.db-wal", "members.db-shm", "old.db", "old.db-wal", "old.db-shm"):
        assert modes[name] == 0o600, (name, oct(modes[name]))


def test_a_start_makes_the_state_dir_0700_and_every_file_0600(tmp_path: Path) -> None:
    """An existing 0755 state directory with a 0644 file and a 0755 subdirectory, umask 022: after a
    start, a tap, an authentication and an enrolment (members.db, events.db, store.db and their -wal and
    -shm, audit.log, the pseudonym key, the simulator's PKI), stat every file while the daemon runs.
    Cost: one in-process sim daemon with the plugin store (~1 s)."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    (state / "notes.txt").write_text("left by hand\n")
    (state / "notes.txt").chmod(0o644)
    (state / "old").mkdir()
    (state / "old").chmod(0o755)
    with (
        _umask(0o022),
        structlog.testing.capture_logs() as logs,
        running_daemon(sim_config(state)) as d,
        d.subscriber("card.") as sub,
        d.session() as ui,
    ):
        d.tap("alice", pin="4711")
        sub.until(lambda e: e["type"] == "card.identified")
        begun = ok(ui.request("auth.begin", {"reader": "Sim 00"}))
        authenticated = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "4711"}))
        ok(ui.request("mykey.enroll", {"auth_id": authenticated["auth_id"]}))
        d.tap("bob")  # a new card name: the simulator writes its key and certificates now
        alice = authenticated["pseudonym"]
        sub.until(lambda e: e["type"] == "card.identified" and e["data"]["pseudonym"] != alice)
        modes = _modes(state)
    loose = {name: oct(mode) for name, mode in modes.items() if mode != (0o700 if name[-1] == "/" else 0o600)}
    assert not loose, loose
    assert modes["./"] == 0o700
    assert modes["old/"] == 0o700
    assert modes["notes.txt"] == 0o600
    for name in ("members.db-wal", "members.db-shm", "events.db-wal", "events.db-shm", "store.db"):
        assert modes[name] == 0o600, name
    assert {"audit.log", "pseudonym.key", "sim-pki/"} <= set(modes)
    assert any(name.startswith("sim-pki/card-bob") for name in modes)
    fixed = [e for e in logs if e["event"] == "state directory was open to others: now 0700"]
    assert [e["was"] for e in fixed] == ["0o755"]
    assert any(e["event"] == "state files were open to others: set to owner only" for e in logs)
