"""Every hook of :mod:`readerd.plugin.hookspecs` is implemented by a test plugin that a real host runs.

The check (as datasette's ``test_plugin_hooks_have_tests``): for each hookspec, some file under ``tests/``
or ``docs/examples/readerd-hello/tests`` holds a ``@hookimpl``-decorated ``def <hook>(``. This file counts
too: it holds the tests of the hooks no other test implemented, one in-process sim daemon each, asserting
what the hook did; the check itself builds its pattern at run time, so it cannot count itself.

Cost: about 2 s in all (the file scan takes milliseconds; each daemon test about 0.2-0.5 s).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest
import sqlalchemy as sa

from readerd.config import Config, PluginsConfig
from readerd.plugin import (
    EventInterest,
    MigrationContext,
    PluginContext,
    PluginEvent,
    hookimpl,
    hookspecs,
)
from readerd.plugin.store import Store
from tests.support.auth import ok
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
TEST_TREES = (ROOT / "tests", ROOT / "docs" / "examples" / "readerd-hello" / "tests")
#: ``@hookimpl`` (or ``@hookimpl(...)``), maybe more decorators, then ``def <name>(``.
IMPLEMENTATION = re.compile(r"^[ \t]*@hookimpl\b[^\n]*\n(?:[ \t]*@[^\n]*\n)*[ \t]*def (\w+)\(", re.MULTILINE)


def hook_names() -> list[str]:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return sorted(name for name in vars(pm.hook) if name.startswith(f"{hookspecs.PROJECT}_"))


def implementations() -> dict[str, list[str]]:
    """Hook name -> the test files (relative to the repository) that implement it."""
    found: dict[str, list[str]] = {}
    for tree in TEST_TREES:
        for path in sorted(tree.rglob("*.py")):
            for name in set(IMPLEMENTATION.findall(path.read_text(encoding="utf-8"))):
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_hookspec_is_implemented_by_some_test() -> None:
    names = hook_names()
    assert "readerd_card_identified" in names  # the spec module was read at all
    found = implementations()
    missing = [name for name in names if name not in found]
    assert not missing, f"hooks no test implements (write a test plugin for each): {', '.join(missing)}"


# --- tests of the hooks no other test implements -------------------------------------------------------
class Watcher:
    """Publishes what each of the lesser event hooks receives, and records the events."""

    def __init__(self) -> None:
        self.seen: list[PluginEvent] = []

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {
            "reader": frozenset({"backend", "type"}),
            "aborted": frozenset({"reason", "type"}),
            "removed": frozenset({"kind", "type"}),
            "authenticated": frozenset({"pseudonym", "assurance", "type"}),
        }

    def _saw(self, event: PluginEvent, context: PluginContext, result: str, data: dict[str, object]) -> None:
        self.seen.append(event)
        context.publish(result, {**data, "type": event.type}, reader=event.reader)

    @hookimpl
    def readerd_reader_changed(self, event: PluginEvent, context: PluginContext) -> None:
        self._saw(event, context, "reader", {"backend": event.data["backend"]})

    @hookimpl
    def readerd_card_read_aborted(self, event: PluginEvent, context: PluginContext) -> None:
        self._saw(event, context, "aborted", {"reason": event.data["reason"]})

    @hookimpl
    def readerd_card_removed(self, event: PluginEvent, context: PluginContext) -> None:
        self._saw(event, context, "removed", {"kind": event.data["kind"]})

    @hookimpl
    def readerd_card_authenticated(self, event: PluginEvent, context: PluginContext) -> None:
        data = {"pseudonym": event.data["pseudonym"], "assurance": event.data["assurance"]}
        self._saw(event, context, "authenticated", data)


def _config(tmp_path: Path) -> Config:
    return sim_config(tmp_path, plugins=PluginsConfig(autoload=False, hook_timeout=5, quarantine_after=2))


def _result_of(kind: str) -> Callable[[dict[str, Any]], bool]:
    """Until the watcher's result for a ``kind`` event seen by this subscriber: the results for the
    readers added at the start may come after the subscription, and are not it."""
    causes: set[str] = set()

    def done(e: dict[str, Any]) -> bool:
        if e["type"] == kind:
            causes.add(e["id"])
        return e["type"] == "plugin.watcher.reader" and e.get("cause") in causes

    return done


def test_reader_changed_gets_readers_coming_and_going(tmp_path: Path) -> None:
    watcher = Watcher()
    with (
        running_daemon(_config(tmp_path), plugins={"watcher": watcher}) as d,
        d.subscriber("reader.", "plugin.watcher.") as sub,
    ):
        d.request("unplug", {"reader": "Sim 01"})
        removed = sub.until(_result_of("reader.removed"))
        d.request("plug", {"reader": "Sim 01"})
        added = sub.until(_result_of("reader.added"))
    at_start = [(e.type, e.reader) for e in watcher.seen[:2]]
    assert at_start == [("reader.added", "Sim 00"), ("reader.added", "Sim 01")]  # the host starts first
    for events, kind in ((removed, "reader.removed"), (added, "reader.added")):
        result = events[-1]
        event = next(e for e in events if e["id"] == result["cause"])
        assert event["type"] == kind
        assert result["data"] == {"backend": "sim", "type": kind}
        assert (result["reader"], result["cause"]) == ("Sim 01", event["id"])


def test_card_read_aborted_gets_the_reason(tmp_path: Path) -> None:
    garbage = [{"action": "garbage", "match": "00B0", "data": "DEADBEEF9000"}]
    with (
        running_daemon(_config(tmp_path), plugins={"watcher": Watcher()}) as d,
        d.subscriber("card.read_aborted", "plugin.watcher.aborted") as sub,
    ):
        d.tap("alice", faults=garbage)
        aborted, result = sub.until(lambda e: e["type"] == "plugin.watcher.aborted")
    assert aborted["type"] == "card.read_aborted"
    assert result["data"] == {"reason": "malformed", "type": "card.read_aborted"}
    assert (result["reader"], result["cause"]) == ("Sim 00", aborted["id"])


def test_card_removed_names_the_reader(tmp_path: Path) -> None:
    watcher = Watcher()
    with (
        running_daemon(_config(tmp_path), plugins={"watcher": watcher}) as d,
        d.subscriber("card.removed", "plugin.watcher.removed") as sub,
    ):
        d.tap("alice", reader="Sim 01")
        d.remove("Sim 01")
        removed, result = sub.until(lambda e: e["type"] == "plugin.watcher.removed")
    assert removed["type"] == "card.removed"
    assert result["data"] == {"kind": "jpki", "type": "card.removed"}
    assert (result["reader"], result["cause"]) == ("Sim 01", removed["id"])
    assert [e.type for e in watcher.seen if e.type.startswith("card.")] == ["card.removed"]


def test_card_authenticated_follows_the_pin(tmp_path: Path) -> None:
    with (
        running_daemon(_config(tmp_path), plugins={"watcher": Watcher()}) as d,
        d.subscriber("card.identified", "card.authenticated", "plugin.watcher.authenticated") as sub,
        d.session() as ui,
    ):
        d.tap("alice", pin="4711")
        identified = sub.until(lambda e: e["type"] == "card.identified")[-1]
        begun = ok(ui.request("auth.begin", {"reader": "Sim 00"}))
        ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "4711"}))
        authenticated, result = sub.until(lambda e: e["type"] == "plugin.watcher.authenticated")
    assert authenticated["type"] == "card.authenticated"
    assert result["data"] == {
        "pseudonym": identified["data"]["pseudonym"],
        "assurance": "jpki_pin_signature",
        "type": "card.authenticated",
    }
    assert (result["reader"], result["cause"]) == ("Sim 00", authenticated["id"])


def stops_v1(ctx: MigrationContext) -> None:
    ctx.create_table("stops", sa.Column("n", sa.Integer, primary_key=True, autoincrement=True))


class Stopper:
    """Writes a row to its store when the host stops; ``interest`` is what it declares."""

    def __init__(self, interest: object = None) -> None:
        self.interest = interest
        self.shutdowns: list[str] = []
        self.thread = ""

    @hookimpl
    def readerd_event_interest(self) -> object:
        return self.interest

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        assert context.store is not None
        context.store.local.migrate([stops_v1])

    @hookimpl
    def readerd_shutdown(self, context: PluginContext) -> None:
        assert context.store is not None
        stops = context.store.local.table("stops")
        context.store.local.transaction(lambda conn: conn.execute(sa.insert(stops)))
        self.shutdowns.append(context.name)
        self.thread = threading.current_thread().name


def test_shutdown_runs_once_at_stop_with_the_store_still_open(tmp_path: Path) -> None:
    stopper, broken = Stopper(EventInterest()), Stopper("not an EventInterest")
    plugins: dict[str, object] = {"stopper": stopper, "broken": broken}
    with running_daemon(_config(tmp_path), plugins=plugins) as d:
        status = d.request("plugins")["result"]
        assert stopper.shutdowns == []
    assert status["quarantined"] == ["broken"]  # a wrong readerd_event_interest answer: never started
    assert stopper.shutdowns == ["stopper"]
    assert stopper.thread == "plugin:stopper"  # under hook_timeout, on a thread of its own
    assert broken.shutdowns == []  # a quarantined plugin is not shut down
    with Store.open(_config(tmp_path).store, tmp_path) as store:
        local = store.for_plugin("stopper").local
        stops = local.table("stops")
        rows = local.transaction(
            lambda c: c.execute(sa.select(sa.func.count()).select_from(stops)).scalar_one()
        )
    assert rows == 1  # the write in readerd_shutdown was committed: the daemon closes the store after
