"""Plugins get the store (``context.store``): in a real daemon on the simulator, through restarts, with
the database down, and revoked when the plugin is quarantined."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from readerd.cli.main import main
from readerd.config import Config, PluginsConfig, StoreConfig
from readerd.errors import StoreUnavailableError
from readerd.exitcodes import ExitCode
from readerd.plugin.api import CommandSpec, JsonObject, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.store import MigrationContext, PluginStore
from tests.support.daemon import running_daemon, sim_config
from tests.support.ports import free_tcp_port

pytestmark = pytest.mark.timeout(60)

PASSWORD = "n0t-for-logs"  # noqa: S105 - a test value that must never show


def visits_v1(ctx: MigrationContext) -> None:
    ctx.create_table(
        "visits",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("pseudonym", sa.String(64), nullable=False),
    )


class Visits:
    """Counts visits per card in the shared store, keyed by the event id (exactly once)."""

    def __init__(self) -> None:
        self.store: PluginStore | None = None

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        assert context.store is not None
        self.store = context.store
        context.store.local.migrate([visits_v1])  # the local role works even with the shared one down

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        assert context.store is not None
        db = context.store.shared
        db.migrate([visits_v1])
        visits = db.table("visits")
        pseudonym = event.data["pseudonym"]

        def record(conn: sa.Connection) -> int:
            conn.execute(db.insert_or_ignore(visits).values(event_id=event.id, pseudonym=pseudonym))
            query = sa.select(sa.func.count()).select_from(visits).where(visits.c.pseudonym == pseudonym)
            return int(conn.execute(query).scalar_one())

        context.publish("counted", {"visits": db.transaction(record)}, reader=event.reader)

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"counted": frozenset({"visits"})}

    @hookimpl
    def readerd_commands(self, context: PluginContext) -> list[CommandSpec]:
        def count(args: JsonObject) -> JsonObject:
            assert self.store is not None
            db = self.store.shared
            visits = db.table("visits")
            query = sa.select(sa.func.count()).select_from(visits)
            return {"visits": db.transaction(lambda c: c.execute(query).scalar_one(), readonly=True)}

        return [CommandSpec("visits.count", count)]


class Raiser:
    def __init__(self) -> None:
        self.context: PluginContext | None = None

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        self.context = context

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        raise RuntimeError("plugin bug")


def config(state_dir: Path, *, store: StoreConfig | None = None, **plugins: Any) -> Config:
    settings = PluginsConfig(**{"autoload": False, "hook_timeout": 5, "quarantine_after": 2, **plugins})
    return sim_config(state_dir, plugins=settings, store=store or StoreConfig())


def test_a_plugin_keeps_its_data_in_the_state_dir_across_restarts(tmp_path: Path) -> None:
    counts = []
    for reader in ("Sim 00", "Sim 01"):  # the second run is a restart on the same state dir
        with (
            running_daemon(config(tmp_path), plugins={"visits": Visits()}) as d,
            d.subscriber("plugin.visits.") as sub,
        ):
            d.tap("alice", reader=reader, hold=False)
            counts.append(sub.next()["data"]["visits"])
            d.tap("bob", reader=reader, hold=False)
            counts.append(sub.next()["data"]["visits"])
            status = d.request("status")["result"]
    assert counts == [1, 1, 2, 2]
    assert (tmp_path / "store.db").is_file()
    assert status["store"]["local"]["database"] == str(tmp_path / "store.db")
    assert status["store"]["shared"]["transactions"] >= 2


def test_store_failures_are_reported_and_never_quarantine(tmp_path: Path) -> None:
    """The shared PostgreSQL is unreachable: every tap is a plugin.error with store_unavailable, more
    times than quarantine_after, and the plugin stays in; the password appears nowhere."""
    url = f"postgresql+psycopg://readerd:{PASSWORD}@127.0.0.1:{free_tcp_port()}/ledger"
    store = StoreConfig(shared_url=url, connect_timeout=2)
    with (
        running_daemon(config(tmp_path, store=store), plugins={"visits": Visits()}) as d,
        d.subscriber("plugin.") as sub,
    ):
        errors = []
        for _ in range(3):
            d.tap("alice", hold=False)
            errors.append(sub.until(lambda e: e["type"] == "plugin.error")[-1]["data"])
        command = d.request("visits.count")
        plugins = d.request("plugins")["result"]
        status = d.request("status")["result"]
    assert command["ok"] is False
    assert command["error"]["code"] == "store_unavailable"  # a command's caller gets the code too
    assert PASSWORD not in repr(command)
    assert [(e["plugin"], e["error"], e["quarantined"]) for e in errors] == [
        ("visits", "store_unavailable", False)
    ] * 3
    assert errors[0]["message"].startswith("shared store (postgresql+psycopg://readerd:***@127.0.0.1:")
    info = next(p for p in plugins["plugins"] if p["name"] == "visits")
    assert (info["quarantined"], info["failures_in_a_row"], info["store_failures"]) == (None, 0, 3)
    assert status["plugins_quarantined"] == []
    assert PASSWORD not in repr(errors) + repr(plugins) + repr(status)


def test_quarantine_revokes_the_plugins_store(tmp_path: Path) -> None:
    raiser, visits = Raiser(), Visits()
    with (
        running_daemon(
            config(tmp_path, quarantine_after=1), plugins={"raiser": raiser, "visits": visits}
        ) as d,
        d.subscriber("plugin.") as sub,
    ):
        d.tap("alice", hold=False)
        error = sub.until(lambda e: e["type"] == "plugin.error")[-1]
        sub.until(lambda e: e["type"] == "plugin.visits.counted")
    assert error["data"]["quarantined"] is True
    assert raiser.context is not None
    assert isinstance(raiser.context.store, PluginStore)
    assert raiser.context.store.revoked
    with pytest.raises(StoreUnavailableError, match="revoked"):
        raiser.context.store.local.transaction(lambda conn: None)
    assert visits.store is not None
    assert not visits.store.revoked


def test_a_plugin_name_the_store_cannot_prefix_is_rejected(tmp_path: Path) -> None:
    with running_daemon(config(tmp_path), plugins={"bad__name": Visits(), "visits": Visits()}) as d:
        plugins = d.request("plugins")["result"]
    assert "plugin name 'bad__name'" in plugins["rejected"]["bad__name"]
    assert [p["name"] for p in plugins["plugins"]] == ["visits"]


def test_without_plugins_no_store_is_opened(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path, plugins=PluginsConfig(enabled=False))) as d:
        assert d.daemon.store is None
    assert not (tmp_path / "store.db").exists()


def test_an_unusable_local_store_stops_the_start_with_69(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the bus binds anything (so no port of --simulate is touched)."""
    monkeypatch.setattr(signal, "signal", lambda *_args: None)  # keep pytest's own SIGINT handler
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "store.db").mkdir()  # a directory where the SQLite file should be
    assert main(["run", "--simulate", "--state-dir", str(tmp_path / "state")]) == ExitCode.UNAVAILABLE
