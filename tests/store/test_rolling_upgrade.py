"""A ward upgrades kiosk by kiosk: migrations expand first, contract later.

A plugin "people" at version *old* declares v1..v2; at version *new* it adds v3 (expand: a column the new
code uses) and v4 (contract: it drops a column only the old code uses). Kiosks of both versions run side
by side on one schema until the operator's contract step; after it the old code is refused with a clear
:class:`StoreSchemaError`. Every store test runs on SQLite and on a private PostgreSQL (the ``backend``
fixture); the last test runs two ``readerd run --simulate`` processes of the two versions on one
PostgreSQL, with ``readerd migrate --contract`` between them. Cost: about 3 s for the store tests, about
8 s for the daemons (four daemon starts; PostgreSQL's private cluster is started once per session).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog

from readerd.bus.control_client import ControlSession, Unreachable
from readerd.cli.main import main
from readerd.config import StoreConfig
from readerd.errors import StoreSchemaError
from readerd.exitcodes import ExitCode
from readerd.ops.keys import create_pseudonym_key
from readerd.plugin import (
    EventInterest,
    MigrationContext,
    PluginContext,
    PluginDatabase,
    PluginEvent,
    contract,
    hookimpl,
    loader,
)
from readerd.plugin.store import MIGRATIONS_TABLE, Migration, MigrationRun, Store, migration_kind
from tests.store.conftest import Backend, run_threads

AHEAD = "database ahead of this code by expand migrations: fine during a rolling upgrade"


def people_v1(ctx: MigrationContext) -> None:
    ctx.create_table(
        "people",
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("legacy_code", sa.String(8), nullable=True),  # only the old code reads and writes it
    )


def people_v2(ctx: MigrationContext) -> None:
    ctx.create_index("by_name", "people", "name")


def people_v3(ctx: MigrationContext) -> None:
    """Expand: the new code's column, nullable, so the old code's inserts (which omit it) still work."""
    ctx.add_column("people", sa.Column("nickname", sa.String(40), nullable=True))


@contract
def people_v4(ctx: MigrationContext) -> None:
    """Contract: the new code no longer uses ``legacy_code``; the old code does."""
    table = ctx.connection.dialect.identifier_preparer.quote(ctx.table_name("people"))
    ctx.execute(f"ALTER TABLE {table} DROP COLUMN legacy_code")


OLD: list[Migration] = [people_v1, people_v2]
NEW: list[Migration] = [people_v1, people_v2, people_v3, people_v4]


@dataclass
class OldKiosk:
    """The plugin's previous version: it declares the columns it knows, as the built-in plugins do."""

    db: PluginDatabase

    @classmethod
    def on(cls, store: Store) -> OldKiosk:
        return cls(store.for_plugin("people").shared)

    def start(self) -> int:
        return self.db.migrate(OLD)

    def people(self) -> sa.Table:
        return self.db.table(
            "people", sa.Column("id", sa.String(20), primary_key=True), sa.Column("name", sa.String(40)),
            sa.Column("legacy_code", sa.String(8)),
        )  # fmt: skip

    def write(self, person: str, name: str) -> None:
        table = self.people()
        self.db.transaction(lambda c: c.execute(table.insert().values(id=person, name=name, legacy_code="L")))

    def read(self) -> dict[str, tuple[str, str | None]]:
        table = self.people()
        rows = self.db.transaction(lambda c: c.execute(sa.select(table)).all(), readonly=True)
        return {row.id: (row.name, row.legacy_code) for row in rows}


@dataclass
class NewKiosk:
    """The plugin's new version: it uses ``nickname`` and no longer touches ``legacy_code``."""

    db: PluginDatabase

    @classmethod
    def on(cls, store: Store) -> NewKiosk:
        return cls(store.for_plugin("people").shared)

    def start(self) -> int:
        return self.db.migrate(NEW)

    def people(self) -> sa.Table:
        return self.db.table(
            "people", sa.Column("id", sa.String(20), primary_key=True), sa.Column("name", sa.String(40)),
            sa.Column("nickname", sa.String(40)),
        )  # fmt: skip

    def write(self, person: str, name: str, nickname: str) -> None:
        table = self.people()
        self.db.transaction(
            lambda c: c.execute(table.insert().values(id=person, name=name, nickname=nickname))
        )

    def read(self) -> dict[str, tuple[str, str | None]]:
        table = self.people()
        rows = self.db.transaction(lambda c: c.execute(sa.select(table)).all(), readonly=True)
        return {row.id: (row.name, row.nickname) for row in rows}


def columns(db: PluginDatabase) -> set[str]:
    return {c["name"] for c in sa.inspect(db.database.engine).get_columns(db.table_name("people"))}


def kinds(db: PluginDatabase) -> list[tuple[int, str]]:
    with db.database.engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"SELECT version, kind FROM {MIGRATIONS_TABLE} WHERE plugin = 'people' ORDER BY version")  # noqa: S608
        ).all()
    return [(int(row.version), str(row.kind)) for row in rows]


def operator(backend: Backend) -> Store:
    """``readerd migrate --contract``'s store: the same databases, contract migrations allowed."""
    store = Store.open(backend.config, backend.state_dir, contract=True)
    backend.stores.append(store)
    return store


def test_contract_marks_only_what_it_decorates() -> None:
    assert [migration_kind(step) for step in NEW] == ["expand", "expand", "expand", "contract"]


def test_old_and_new_kiosks_run_side_by_side_until_the_contract_step(backend: Backend) -> None:
    # Before the upgrade: the ward runs the old version.
    old = OldKiosk.on(backend.open())
    assert old.start() == 2
    old.write("a1", "Aiko")

    # The first kiosk is upgraded: it applies the expand migration v3 and holds the contract v4 back.
    new = NewKiosk.on(backend.open())
    with structlog.testing.capture_logs() as logs:
        assert new.start() == 3
    assert new.db.version() == 3
    assert columns(new.db) == {"id", "name", "legacy_code", "nickname"}
    assert kinds(new.db) == [(1, "expand"), (2, "expand"), (3, "expand")]
    pending = [e for e in logs if e["event"].startswith("contract migration pending")]
    assert [(e["version"], e["name"]) for e in pending] == [(4, "people_v4")]

    # An old kiosk (re)starting now finds the database ahead by an expand migration: it runs, and says so.
    restarted_old = OldKiosk.on(backend.open())
    with structlog.testing.capture_logs() as logs:
        assert restarted_old.start() == 3
    ahead = [e for e in logs if e["event"] == AHEAD]
    assert [(e["database_version"], e["code_version"]) for e in ahead] == [(3, 2)]

    # Old and new write side by side, at the same time, and each reads what the other wrote.
    def write(i: int) -> None:
        for n in range(10):
            if i % 2:
                restarted_old.write(f"o{i}-{n}", f"old {n}")
            else:
                new.write(f"n{i}-{n}", f"new {n}", f"nick {n}")

    run_threads(4, write)
    seen_by_old, seen_by_new = restarted_old.read(), new.read()
    assert set(seen_by_old) == set(seen_by_new)
    assert len(seen_by_old) == 41
    assert seen_by_old["a1"] == ("Aiko", "L")
    assert seen_by_old["n0-3"] == ("new 3", None)
    assert seen_by_new["n2-9"] == ("new 9", "nick 9")
    assert seen_by_new["o1-0"] == ("old 0", None)

    # Every kiosk runs the new version: the operator applies the contract step.
    contracted = NewKiosk.on(operator(backend))
    assert contracted.start() == 4
    assert columns(contracted.db) == {"id", "name", "nickname"}
    assert kinds(contracted.db)[-1] == (4, "contract")

    # An old kiosk now refuses with what to do, and changes nothing.
    late_old = OldKiosk.on(backend.open())
    with pytest.raises(
        StoreSchemaError, match=r"schema version 4, this code knows 2.*version 4 \(people_v4\)"
    ):
        late_old.start()
    with pytest.raises(StoreSchemaError, match="contract migration this code cannot run on"):
        late_old.start()
    assert late_old.db.version() == 4

    # The new one runs on: its restart is a no-op, and it writes and reads as before.
    after = NewKiosk.on(backend.open())
    assert after.start() == 4
    after.write("b9", "Bunta", "Bun")
    assert after.read()["b9"] == ("Bunta", "Bun")
    assert after.read()["a1"] == ("Aiko", None)


def test_a_contract_migration_is_never_applied_at_ordinary_start(backend: Backend) -> None:
    calls: list[str] = []

    def v5(ctx: MigrationContext) -> None:
        """Expand, but listed after the contract v4: it waits for v4 (the list stays linear)."""
        calls.append("v5")
        ctx.add_column("people", sa.Column("email", sa.String(80), nullable=True))

    @contract
    def v4(ctx: MigrationContext) -> None:
        calls.append("v4")
        people_v4(ctx)

    migrations: list[Migration] = [people_v1, people_v2, people_v3, v4, v5]
    for _restart in range(3):  # kiosks restart many times during an upgrade
        store = backend.open()
        assert store.for_plugin("people").shared.migrate(migrations) == 3
        held_back = [
            (v, name.rsplit(".", 1)[-1], kind) for v, name, kind in store.migration_runs[-1].held_back
        ]
        assert held_back == [(4, "v4", "contract"), (5, "v5", "expand")]
    assert calls == []
    assert "legacy_code" in columns(store.for_plugin("people").shared)

    op = operator(backend)
    assert op.for_plugin("people").shared.migrate(migrations) == 5
    assert calls == ["v4", "v5"]
    assert list(op.migration_runs) == [
        MigrationRun(
            plugin="people",
            role="shared",
            database=op.shared.where,
            before=3,
            after=5,
            known=5,
            applied=(4, 5),
            held_back=(),
            ahead=0,
        )
    ]
    assert backend.open().for_plugin("people").shared.migrate(migrations) == 5  # and nothing runs again
    assert calls == ["v4", "v5"]


def test_the_local_store_holds_contract_migrations_back_as_well(backend: Backend) -> None:
    """The kiosk's own SQLite has no second kiosk, but a rolled-back kiosk is older code all the same."""
    local = backend.open().for_plugin("people").local
    assert local.migrate(NEW) == 3
    assert operator(backend).for_plugin("people").local.migrate(NEW) == 4
    assert "legacy_code" not in columns(local)


def test_a_migrations_table_from_before_kinds_is_upgraded_in_place(backend: Backend) -> None:
    store = backend.open()
    with store.shared.engine.begin() as conn:  # the bookkeeping table as the previous release made it
        conn.execute(
            sa.text(
                f"CREATE TABLE {MIGRATIONS_TABLE} (plugin VARCHAR(32) NOT NULL, role VARCHAR(8) NOT NULL, "
                "version INTEGER NOT NULL, name VARCHAR(200) NOT NULL, applied_at VARCHAR(32) NOT NULL, "
                "PRIMARY KEY (plugin, role, version))"
            )
        )
        legacy = "VALUES ('legacy', 'shared', 1, 'legacy_v1', '2026-01-01')"
        conn.execute(sa.text(f"INSERT INTO {MIGRATIONS_TABLE} {legacy}"))
    # readerd migrate's report reads the old shape too (no kind: expand).
    assert [(s.plugin, s.version, s.contract_versions) for s in store.recorded_schemas()] == [
        ("legacy", 1, ())
    ]

    # Kiosks starting together: one adds the column, the others find it there.
    kiosks = [NewKiosk.on(backend.open()) for _ in range(4)]
    assert run_threads(4, lambda i: kiosks[i].start()) == [3, 3, 3, 3]
    with store.shared.engine.connect() as conn:
        query = f"SELECT plugin, version, kind FROM {MIGRATIONS_TABLE} ORDER BY plugin, version"  # noqa: S608
        rows = conn.execute(sa.text(query))
        assert [tuple(row) for row in rows] == [
            ("legacy", 1, "expand"),  # recorded before: the column's default
            ("people", 1, "expand"),
            ("people", 2, "expand"),
            ("people", 3, "expand"),
        ]
    NewKiosk.on(operator(backend)).start()
    recorded = {(s.plugin, s.role): (s.version, s.contract_versions) for s in store.recorded_schemas()}
    assert recorded == {("legacy", "shared"): (1, ()), ("people", "shared"): (4, (4,))}


# --- two daemons, two versions, one PostgreSQL -------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
#: ``readerd`` with the test plugin as the built-in "people" (a daemon process loads plugins by name).
LAUNCH = (
    "import sys; from readerd.plugin import loader; "
    f"loader.BUILTIN['people'] = '{__name__}:PeopleKioskPlugin'; "
    "from readerd.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


class PeopleKioskPlugin:
    """The "people" plugin as a daemon runs it: migrates at startup (``[plugins.people] version``),
    records every identified card as the old or the new code does."""

    def __init__(self) -> None:
        self.kiosk: OldKiosk | NewKiosk | None = None

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified"}))

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        assert context.store is not None
        new = context.config.get("version") == "new"
        kiosk = NewKiosk(context.store.shared) if new else OldKiosk(context.store.shared)
        kiosk.start()
        self.kiosk = kiosk

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        person = f"{context.kiosk}-{event.seq}"
        if isinstance(self.kiosk, NewKiosk):
            self.kiosk.write(person, context.kiosk, "nick")
        elif isinstance(self.kiosk, OldKiosk):
            self.kiosk.write(person, context.kiosk)


@dataclass
class KioskProcess:
    """One kiosk of the ward: ``readerd run --simulate`` in a process of its own, started at the plugin
    version it is given, with its own state directory and sockets."""

    name: str
    directory: Path
    sockets: Path
    shared_url: str
    key: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "daemon.log"

    def config(self, version: str) -> Path:
        path = self.directory / f"readerd-{version}.toml"
        path.write_text(
            f'kiosk = "{self.name}"\n'
            f'[bus]\npublish = "ipc://{self.sockets}/events.sock"\ncontrol = "ipc://{self.sockets}/control.sock"\n'
            f'sockets_dir = "{self.sockets}"\nheartbeat_interval = 0.1\n'
            f'[identity]\npseudonym_key_file = "{self.key}"\n'
            f'[store]\nshared_url = "{self.shared_url}"\n'
            f'[plugins]\nautoload = false\nbuiltins = ["people"]\n[plugins.people]\nversion = "{version}"\n',
            encoding="utf-8",
        )
        return path

    def start(self, version: str) -> None:
        command = [sys.executable, "-c", LAUNCH, "run", "--simulate", "--config", str(self.config(version)),
                   "--state-dir", str(self.directory / "state"), "--log-format", "json"]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        with ControlSession(f"ipc://{self.sockets}/operator.sock", timeout_ms=300) as session:
            while True:
                assert self.process.poll() is None, self.log.read_text()
                with contextlib.suppress(Unreachable):
                    probe = session.request("people.ready_probe")
                    if probe.get("error", {}).get("code") == "unknown_command":
                        return  # every command registered: the plugins have started
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    def tap(self, card: str) -> None:
        with ControlSession(f"ipc://{self.sockets}/operator.sock") as session:
            assert "error" not in session.request("tap", {"card": card})
            assert "error" not in session.request("remove")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def logged(self, event: str) -> list[dict[str, object]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == event]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def ward(postgres_url: str, tmp_path: Path) -> Iterator[tuple[KioskProcess, KioskProcess]]:
    key = tmp_path / "ward.key"
    create_pseudonym_key(key)
    kiosks = []
    for name in ("a", "b"):
        sockets = Path(tempfile.mkdtemp(prefix="readerd-"))  # a socket path holds at most 107 bytes
        (tmp_path / name).mkdir()
        kiosks.append(KioskProcess(name, tmp_path / name, sockets, postgres_url, key))
    try:
        yield kiosks[0], kiosks[1]
    finally:
        for kiosk in kiosks:
            kiosk.stop()
            shutil.rmtree(kiosk.sockets, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_two_daemons_of_two_versions_share_the_ward_database_until_the_contract_step(
    ward: tuple[KioskProcess, KioskProcess],
    postgres_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(loader.BUILTIN, "people", f"{__name__}:PeopleKioskPlugin")  # readerd migrate's
    a, b = ward
    store = Store.open(StoreConfig(shared_url=postgres_url), tmp_path)
    try:
        people = store.for_plugin("people").shared

        def rows() -> dict[str, tuple[str, str | None, str | None]]:
            query = f"SELECT * FROM {people.table_name('people')}"  # noqa: S608
            with people.database.engine.connect() as conn:
                found = conn.execute(sa.text(query)).mappings().all()
            return {r["id"]: (r["name"], r.get("legacy_code"), r.get("nickname")) for r in found}

        a.start("old")  # the ward before the upgrade
        b.start("new")  # the first kiosk upgraded: v3 applied while a runs, v4 held back
        assert people.version() == 3
        a.tap("alice")
        b.tap("bob")
        wait_until(lambda: len(rows()) == 2, "both kiosks record their taps")
        assert sorted(rows().values()) == [("a", "L", None), ("b", None, "nick")]

        a.stop()
        a.start("old")  # an old kiosk restarting mid-upgrade runs on the expanded schema
        [ahead] = a.logged(AHEAD)
        assert (ahead["database_version"], ahead["code_version"]) == (3, 2)
        a.tap("carol")
        wait_until(lambda: len(rows()) == 3, "the restarted old kiosk records its tap")

        a.stop()  # taken out of service, so every kiosk still running runs the new version: contract
        capsys.readouterr()
        assert main(["migrate", "--contract", "--json", "--config", str(b.config("new")),
                     "--state-dir", str(b.directory / "state")]) == ExitCode.OK  # fmt: skip
        [run] = [r for r in json.loads(capsys.readouterr().out)["runs"] if r["role"] == "shared"]
        assert (run["before"], run["after"]) == (3, 4)
        assert "legacy_code" not in columns(people)
        b.tap("dave")  # the new kiosks run on
        wait_until(lambda: len(rows()) == 4, "a new kiosk records its tap after the contract step")

        a.start("old")  # back in service without its upgrade: its plugin is refused, clearly
        [failed] = a.logged("plugin hook failed")
        assert failed["hook"] == "readerd_startup"
        assert "contract migration this code cannot run on" in str(failed["message"])
    finally:
        store.close()
