"""A quarantined plugin comes back: after ``quarantine_cooldown`` (an injected clock, no sleeping) or by
the operator command ``plugins.reinstate`` (``readerctl plugins reinstate NAME``), with a new store handle
while the one revoked at the quarantine stays revoked. Cost: about 2 s in all (two daemons)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from readerd.bus.control_client import ControlSession
from readerd.bus.curve import CONTROL
from readerd.config import PluginsConfig, StoreConfig
from readerd.errors import StoreUnavailableError
from readerd.plugin.api import PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.host import PluginHost
from readerd.plugin.store import MigrationContext, PluginStore, Store
from tests.support.auth import error, ok
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


def _visits(ctx: MigrationContext) -> None:
    ctx.create_table("visits", sa.Column("id", sa.Integer, primary_key=True))


class Flaky:
    """Fails while ``failing``; otherwise records a visit in its shared store (the handle of its start)."""

    def __init__(self) -> None:
        self.failing = True
        self.contexts: list[PluginContext] = []
        self.store: PluginStore | None = None

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        self.contexts.append(context)
        self.store = context.store
        assert self.store is not None
        self.store.shared.migrate([_visits])

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        if self.failing:
            raise RuntimeError("plugin bug")
        assert self.store is not None
        visits = self.store.shared.table("visits")
        self.store.shared.transaction(lambda c: c.execute(visits.insert().values(id=event.seq)))


class Hanger:
    """Hangs in its first hook call, then (released) writes through the context that call was given."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.late: list[BaseException] = []

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        if self.release.is_set():
            return
        self.release.wait(10)
        assert context.store is not None
        try:
            context.store.shared.transaction(lambda c: c.exec_driver_sql("SELECT 1"))
        except StoreUnavailableError as e:
            self.late.append(e)


def _envelope(seq: int, kind: str = "card.identified") -> dict[str, Any]:
    return {"type": kind, "seq": seq, "run_id": "r1", "id": f"e{seq}", "ts": "t", "kiosk": "k", "data": {}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _host(tmp_path: Path, plugin: object, clock: Clock, **config: Any) -> tuple[PluginHost, Store]:
    store = Store.open(StoreConfig(), tmp_path)
    settings = PluginsConfig(
        **{"autoload": False, "quarantine_after": 1, "quarantine_cooldown": 60.0, **config}
    )
    host = PluginHost(
        settings, kiosk="k", publish=lambda _r: None, store=store, plugins={"flaky": plugin}, clock=clock
    )
    host.load()
    return host, store


def test_the_cool_down_reinstates_with_a_new_store_handle(tmp_path: Path) -> None:
    """Cost: ~0.1 s."""
    clock, flaky = Clock(), Flaky()
    host, store = _host(tmp_path, flaky, clock)
    try:
        host.dispatch(_envelope(1))  # raises: quarantined (quarantine_after = 1)
        old = flaky.store
        assert old is not None
        assert old.revoked
        flaky.failing = False
        clock.now += 59
        host.dispatch(_envelope(2))
        assert host.status()["quarantined"] == ["flaky"]  # not yet: 59 s < 60 s
        clock.now += 1
        host.dispatch(_envelope(2, "heartbeat"))  # a quiet feed's heartbeat (the last seq) is enough
        info = host.status()["plugins"][0]
        assert (info["quarantined"], info["reinstated"], info["failures_in_a_row"]) == (None, 1, 0)
        assert len(flaky.contexts) == 2  # readerd_startup again, with a new context ...
        new = flaky.store
        assert new is not None
        assert new is not old
        assert not new.revoked
        assert old.revoked  # the one revoked at the quarantine stays revoked
        host.dispatch(_envelope(3))
        visits = new.shared.table("visits")
        rows = new.shared.transaction(lambda c: c.execute(sa.select(visits.c.id)).scalars().all())
        assert rows == [3]
        assert host.status()["plugins"][0]["missed"] == [[1, 2]]  # not handed again: shown
    finally:
        host.stop(0.1)
        store.close()


def test_a_cool_down_of_0_never_reinstates(tmp_path: Path) -> None:
    """Cost: ~0.1 s."""
    clock, flaky = Clock(), Flaky()
    host, store = _host(tmp_path, flaky, clock, quarantine_cooldown=0.0)
    try:
        host.dispatch(_envelope(1))
        clock.now += 10**9
        host.dispatch(_envelope(2))
        assert host.status()["quarantined"] == ["flaky"]
        assert host.reinstate("flaky")["reinstated"] is True  # the operator still can
        assert host.status()["quarantined"] == []
    finally:
        host.stop(0.1)
        store.close()


def test_a_hung_plugin_comes_back_only_after_the_cool_down_and_its_old_handle_stays_revoked(
    tmp_path: Path,
) -> None:
    """Cost: ~0.3 s (one hook_timeout of 0.2 s)."""
    clock, hanger = Clock(), Hanger()
    host, store = _host(tmp_path, hanger, clock, hook_timeout=0.2, quarantine_after=3)
    try:
        host.dispatch(_envelope(1))  # times out: quarantined at once, its thread abandoned
        assert "timeout" in str(host.status()["plugins"][0]["quarantined"])
        host.dispatch(_envelope(2))
        assert host.status()["quarantined"] == ["flaky"]
        clock.now += 60
        hanger.release.set()  # the abandoned call goes on now, with the context it was given
        host.dispatch(_envelope(3))  # reinstated, and handed this event
        assert host.status()["quarantined"] == []
        for thread in threading.enumerate():
            if thread.name.startswith("plugin:flaky"):
                thread.join(5)
        assert len(hanger.late) == 1  # the abandoned call wrote through its revoked handle: refused
        assert "revoked" in str(hanger.late[0])
    finally:
        hanger.release.set()
        host.stop(0.1)
        store.close()


def test_plugins_reinstate_is_an_operator_command_and_readerctl_sends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cost: ~1 s (a daemon)."""
    from readerd.cli.ctl import main as ctl_main  # noqa: PLC0415

    flaky = Flaky()
    settings = PluginsConfig(autoload=False, quarantine_after=1, quarantine_cooldown=0.0)
    with (
        running_daemon(sim_config(tmp_path, plugins=settings), plugins={"flaky": flaky}) as d,
        d.subscriber("plugin.error") as sub,
    ):
        d.tap("alice", hold=False)
        assert sub.next()["data"]["quarantined"] is True
        assert d.daemon.bus is not None
        assert d.daemon.bus.role_sockets is not None
        with ControlSession(f"ipc://{d.daemon.bus.role_sockets.path(CONTROL)}") as screen:
            refused = error(screen.request("plugins.reinstate", {"name": "flaky"}))
        assert refused["code"] == "forbidden"
        assert error(d.request("plugins.reinstate", {"name": "nope"}))["code"] == "unknown_plugin"
        assert ok(d.request("plugins"))["quarantined"] == ["flaky"]
        flaky.failing = False
        capsys.readouterr()
        assert ctl_main(["--control", d.control, "plugins", "reinstate", "flaky"]) == 0
        assert "flaky: reinstated, ok" in capsys.readouterr().out.splitlines()
        again = ok(d.request("plugins.reinstate", {"name": "flaky"}))
        assert again == {"plugin": "flaky", "reinstated": False, "quarantined": None}
        status = ok(d.request("status"))
    assert status["plugins_quarantined"] == []
