"""The host hands an event to every plugin before it waits for any: the plugins handle it side by side,
their results still go out in the plugins' order, a slow hook's results so far go out before it returns,
and with the bus's lazy publish the results of one event leave together (docs/plugins.md, "One event,
every plugin"). Cost: about 0.5 s (hosts in this process, no daemon)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from readerd.config import PluginsConfig
from readerd.events import Event
from readerd.ops.worker import Countdown, DeadlineWorker
from readerd.plugin import host as host_module
from readerd.plugin.api import PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.host import PluginHost

pytestmark = pytest.mark.timeout(30)

#: Longest a test's plugin waits for something that should happen at once (a failure, not a timing).
PATIENCE = 5.0


class Answers:
    """Publishes ``said`` from ``readerd_card_identified``, after ``before()`` (which may wait)."""

    def __init__(self, before: Callable[[], object] = lambda: None, *, also: str | None = None) -> None:
        self.before = before
        self.also = also  # a second result, published after ``before()``; the first goes before it
        self.returned = threading.Event()

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"said": frozenset({"seq"}), "checking": frozenset({"seq"})}

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        if self.also is not None:
            context.publish(self.also, {"seq": event.seq}, reader=event.reader)
        self.before()
        context.publish("said", {"seq": event.seq}, reader=event.reader)
        self.returned.set()


def _identified(seq: int = 1) -> dict[str, Any]:
    return {
        "type": "card.identified",
        "seq": seq,
        "run_id": "r1",
        "id": f"e{seq}",
        "ts": "t",
        "kiosk": "k",
        "reader": "Sim 00",
        "data": {},
    }


def _host(plugins: dict[str, object], publish: Callable[[Event], object], **wiring: Any) -> PluginHost:
    config = PluginsConfig(autoload=False, hook_timeout=PATIENCE * 2)
    host = PluginHost(config, kiosk="k", publish=publish, plugins=plugins, **wiring)
    host.load()
    return host


def test_every_plugin_has_the_event_before_the_host_waits_for_any() -> None:
    """Two hooks that each wait for the other: one after the other, the first would wait in vain."""
    meet = threading.Barrier(2, timeout=PATIENCE)
    published: list[Event] = []
    host = _host({"left": Answers(meet.wait), "right": Answers(meet.wait)}, published.append)
    host.dispatch(_identified())
    assert [str(e.type) for e in published] == ["plugin.left.said", "plugin.right.said"]
    assert not meet.broken
    assert [p.quarantined for p in host.plugins.values()] == [None, None]


def test_results_go_out_in_the_plugins_order_whoever_finishes_first() -> None:
    """``first`` answers only after ``second`` has published: the host still sends ``first``'s first,
    as the screen's order must not depend on which plugin was quicker this time."""
    second_done = threading.Event()
    second = Answers()

    def after_second() -> None:
        if second.returned.wait(PATIENCE):
            second_done.set()

    first = Answers(after_second)
    published: list[Event] = []
    host = _host({"first": first, "second": second}, published.append)
    host.dispatch(_identified())
    assert second_done.is_set()  # second really did finish first
    assert [str(e.type) for e in published] == ["plugin.first.said", "plugin.second.said"]
    assert [e.cause for e in published] == ["e1", "e1"]


def test_a_slow_hooks_results_so_far_go_out_before_it_returns() -> None:
    """``slow`` shows "checking" and then waits (as for a server) until that has been published: held
    until it returned, it would wait in vain. ``quick`` (before it in order) is out by then too."""
    seen = threading.Event()

    def publish(event: Event) -> None:
        published.append(event)
        if str(event.type) == "plugin.slow.checking":
            seen.set()

    published: list[Event] = []
    slow = Answers(lambda: seen.wait(PATIENCE), also="checking")
    host = _host({"quick": Answers(), "slow": slow}, publish)
    host.dispatch(_identified())
    assert seen.is_set()
    assert [str(e.type) for e in published] == [
        "plugin.quick.said",
        "plugin.slow.checking",
        "plugin.slow.said",
    ]


def test_with_a_lazy_bus_the_results_of_an_event_leave_together() -> None:
    """The embedded host queues the results without waking the bus and nudges once, after the last
    plugin: one round of the bus for them all (readerd.bus.server.Bus.publish ``lazy``)."""
    direct: list[Event] = []
    lazily: list[Event] = []
    nudged: list[int] = []
    host = _host(
        {"a": Answers(), "b": Answers(), "c": Answers()},
        direct.append,
        publish_lazily=lazily.append,
        nudge=lambda: nudged.append(len(lazily)),
    )
    host.dispatch(_identified())
    assert direct == []
    assert [str(e.type) for e in lazily] == ["plugin.a.said", "plugin.b.said", "plugin.c.said"]
    assert nudged == [3]  # once, with all three queued


def test_a_result_published_outside_a_hook_goes_out_at_once() -> None:
    """A command or a plugin's own timer publishes with no event being handed round: nothing would
    nudge the bus for it, so it is never lazy."""
    direct: list[Event] = []
    lazily: list[Event] = []
    plugin = Answers()
    host = _host({"a": plugin}, direct.append, publish_lazily=lazily.append, nudge=lambda: None)
    host.plugins["a"].context.publish("said", {"seq": 0})
    assert [str(e.type) for e in direct] == ["plugin.a.said"]
    assert lazily == []


def test_a_failed_hand_over_leaves_the_calls_already_handed_over_waited_for() -> None:
    """Handing the event to ``b`` fails (a thread that cannot start): ``a``'s call, already handed over,
    is still waited for and its result sent, and ``a``'s worker takes the next event (its slot was not
    left taken, which would hang the host at the next event)."""
    published: list[Event] = []
    host = _host({"a": Answers(), "b": Answers()}, published.append)
    workers = host._workers
    begin = workers.begin
    failures = ["b"]

    def failing_begin(plugin: str, fn: Callable[[], Any], countdown: Any = None) -> Any:
        if plugin in failures:
            failures.remove(plugin)
            raise RuntimeError("can't start new thread")
        return begin(plugin, fn, countdown)

    workers.begin = failing_begin  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        host.dispatch(_identified(1))
    host.dispatch(_identified(2))
    assert [(str(e.type), e.cause) for e in published] == [
        ("plugin.a.said", "e1"),
        ("plugin.a.said", "e2"),
        ("plugin.b.said", "e2"),
    ]


def test_the_host_wakes_once_for_all_the_plugins_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three hooks answer in the reverse of the plugins' order, once the host waits. Blocking on each
    plugin's answer in turn, the host would block on the first and wake for it; waiting on the
    countdown, it wakes once, when the last answer is ready, and then finds every answer there."""
    monkeypatch.setattr(host_module, "RESULTS_AFTER", PATIENCE)  # no early release of results here
    gates = {name: threading.Event() for name in ("a", "b", "c")}
    published: list[Event] = []
    plugins: dict[str, object] = {
        name: Answers(functools.partial(gate.wait, PATIENCE)) for name, gate in gates.items()
    }
    host = _host(plugins, published.append)  # loaded before the watching starts: its calls are not counted
    host_waits = threading.Event()
    blocked: list[str] = []  # workers whose answer was not ready when the host went to take it
    collect, wait = DeadlineWorker.collect, Countdown.wait

    def watched_collect(self: DeadlineWorker, *args: Any, **kwargs: Any) -> object:
        if self._outbox.empty():
            blocked.append(self.name)
        host_waits.set()
        return collect(self, *args, **kwargs)

    def watched_wait(self: Countdown, timeout: float) -> bool:
        host_waits.set()
        return wait(self, timeout)

    monkeypatch.setattr(DeadlineWorker, "collect", watched_collect)
    monkeypatch.setattr(Countdown, "wait", watched_wait)

    def release_in_reverse() -> None:
        if host_waits.wait(PATIENCE):
            for name in ("c", "b", "a"):
                gates[name].set()

    releaser = threading.Thread(target=release_in_reverse)
    releaser.start()
    host.dispatch(_identified())
    releaser.join(PATIENCE)
    assert [str(e.type) for e in published] == ["plugin.a.said", "plugin.b.said", "plugin.c.said"]
    assert blocked == []
