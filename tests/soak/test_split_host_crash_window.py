"""What the split-host soak's SIGKILL cannot aim at: the moment right after ``readerd plugins`` has
recorded its cursor for an event, when the results its plugins published for that event must already have
left the process (docs/design.md D2: a cursor moves past an event only once its results are out).

A host that wrote its cursor first and sent the queued results afterwards lost them in a crash in between:
the next host resumes after the cursor and never hands the event to the plugins again. This test stands in
for the SIGKILL: the first host dies right after the cursor write of the event its plugin answered, and
what it still had queued dies with it (as a killed process's queue would); the next host must not have
to redo anything, because nothing may be lost.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from readerd.config import PluginsConfig
from readerd.plugin import split_host
from readerd.plugin.api import EventInterest, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.split_host import SplitHost
from tests.support.daemon import running_daemon, sim_config


class _Died(Exception):
    """The stand-in for SIGKILL, raised in the host's loop right after a cursor write."""


class Answerer:
    """Publishes one result per identified card, naming it (``cause``) as every plugin's result does."""

    def __init__(self) -> None:
        self.published = threading.Event()

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified"}))

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"seen": frozenset({"kind"})}

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        context.publish("seen", {"kind": event.data.get("kind")}, reader=event.reader)
        self.published.set()


def _run(host: SplitHost, errors: list[BaseException]) -> threading.Thread:
    def target() -> None:
        try:
            host.run()
        except _Died:
            pass
        except BaseException as e:  # reported by the test, never swallowed
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_result_queued_when_the_split_host_dies_after_its_cursor_write_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = sim_config(tmp_path, plugins=PluginsConfig(enabled=False, autoload=False))
    dead = threading.Event()
    real_flush, real_write = split_host.Uplink.flush, SplitHost._write_cursor

    def flush(self: split_host.Uplink) -> None:
        if dead.is_set():  # the process is gone: what it had queued never leaves
            while not self._out.empty():
                self._out.get_nowait()
            return
        real_flush(self)

    def write_cursor(self: SplitHost, seq: int) -> None:
        real_write(self, seq)
        if self is first and doomed.published.is_set() and not dead.is_set():  # that result's event
            dead.set()
            raise _Died

    monkeypatch.setattr(split_host.Uplink, "flush", flush)
    monkeypatch.setattr(SplitHost, "_write_cursor", write_cursor)
    errors: list[BaseException] = []
    doomed = Answerer()  # the first host's plugin: the host dies right after the cursor of its result
    with running_daemon(config) as d, d.subscriber("card.identified", "plugin.answerer.") as sub:
        first = SplitHost(config, plugins={"answerer": doomed})
        thread = _run(first, errors)
        assert first.ready.wait(10)
        tapped = d.tap("alice", hold=False)
        assert tapped["ok"]
        identified = sub.until(lambda e: e["type"] == "card.identified")[-1]
        thread.join(10)
        assert dead.is_set()
        dead.clear()
        second = SplitHost(config, plugins={"answerer": Answerer()})
        thread = _run(second, errors)
        assert second.ready.wait(10)
        # A live tap after the restart: its result comes after anything replayed (the feed is in order).
        d.tap("bob", hold=False)
        received = sub.until(lambda e: e["type"] == "plugin.answerer.seen" and e["cause"] != identified["id"])
        second.stop_event.set()
        thread.join(10)
    assert errors == []
    causes = [e.get("cause") for e in received if e["type"] == "plugin.answerer.seen"]
    assert identified["id"] in causes, "the first tap's result was lost with the first host"
