"""Each plugin's hook calls run on one long-lived worker thread of its own, one at a time; a call that
overruns ``hook_timeout`` is abandoned with its worker and a fresh one takes the next; past a bound of
abandoned workers still running the host asks to be restarted. The feed thread writes the cursors once
per batch of messages and parses no envelope it only needs the seq of. Cost: about 1.5 s in all (one
daemon for the split host; the rest are hosts and sockets in this process)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from readerd.config import PluginsConfig, StoreConfig
from readerd.errors import PluginError
from readerd.events import Envelope, Event, stamp
from readerd.exitcodes import ExitCode
from readerd.ops.deadline import SessionTimeoutError
from readerd.plugin.api import CommandSpec, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.host import PluginHost
from readerd.plugin.loader import BUILTIN
from readerd.plugin.replay import CURSOR_LAG
from readerd.plugin.split_host import SplitHost
from readerd.plugin.store import Store
from readerd.plugin.worker import Workers
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


class Threads:
    """Records the thread (and its name) of every hook call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []  # (hook, thread ident, thread name)

    def _note(self, hook: str) -> None:
        thread = threading.current_thread()
        self.calls.append((hook, thread.ident or 0, thread.name))

    @hookimpl
    def readerd_startup(self) -> None:
        self._note("startup")

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        self._note(f"identified:{event.seq}")

    @hookimpl
    def readerd_shutdown(self) -> None:
        self._note("shutdown")


class Hanger:
    """Hangs in ``readerd_card_identified`` until released."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.entered = threading.Event()

    @hookimpl
    def readerd_card_identified(self, context: PluginContext) -> None:
        self.entered.set()
        self.release.wait(10)


def _envelope(seq: int, kind: str = "card.identified", run_id: str = "r1") -> dict[str, Any]:
    return {"type": kind, "seq": seq, "run_id": run_id, "id": f"e{seq}", "ts": "t", "kiosk": "k", "data": {}}


def _host(plugins: dict[str, object], **config: Any) -> PluginHost:
    settings = PluginsConfig(**{"autoload": False, "quarantine_after": 3, **config})
    host = PluginHost(settings, kiosk="k", publish=lambda _r: None, plugins=plugins, abandoned_limit=2)
    host.load()
    return host


def test_a_plugins_hooks_all_run_on_one_long_lived_thread_of_its_own() -> None:
    one, two = Threads(), Threads()
    host = _host({"one": one, "two": two})
    for seq in (1, 2, 3):
        host.dispatch(_envelope(seq))
    host.stop(0.1)
    hooks = ["startup", "identified:1", "identified:2", "identified:3", "shutdown"]
    assert [hook for hook, _, _ in one.calls] == hooks
    assert len({ident for _, ident, _ in one.calls}) == 1  # the same thread for every call
    assert {name for _, _, name in one.calls} == {"plugin:one"}  # named after the plugin while in a hook
    assert {ident for _, ident, _ in one.calls}.isdisjoint({ident for _, ident, _ in two.calls})
    assert threading.get_ident() not in {ident for _, ident, _ in one.calls}  # never the caller's thread


def test_calls_to_one_plugin_from_two_threads_never_overlap() -> None:
    workers = Workers()
    inside, release = threading.Event(), threading.Event()
    active, most = [0], [0]
    lock = threading.Lock()

    def hook(wait: bool) -> str:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        if wait:
            inside.set()
            release.wait(10)
        with lock:
            active[0] -= 1
        return "done"

    first = threading.Thread(target=lambda: workers.run("p", lambda: hook(True), 10.0))
    first.start()
    assert inside.wait(10)
    answers: list[str] = []
    second = threading.Thread(target=lambda: answers.append(workers.run("p", lambda: hook(False), 10.0)))
    second.start()
    second.join(0.05)  # it waits for the first call: one hook at a time per plugin
    assert answers == []
    release.set()
    first.join(10)
    second.join(10)
    assert answers == ["done"]
    assert most[0] == 1


def test_an_overrunning_call_is_abandoned_with_its_worker_and_its_late_answer_dropped() -> None:
    workers = Workers(limit=5)
    release = threading.Event()
    threads: list[threading.Thread] = []

    def hung() -> str:
        threads.append(threading.current_thread())
        release.wait(10)
        return "late"

    with pytest.raises(SessionTimeoutError):
        workers.run("p", hung, 0.05)
    assert workers.status() == {"running": 1, "total": 1, "limit": 5}
    assert workers.run("p", threading.current_thread, 5.0) is not threads[0]  # a fresh worker
    release.set()
    threads[0].join(5)  # the abandoned worker ends once its call returns: it takes no other call
    assert not threads[0].is_alive()
    assert workers.run("p", lambda: "next", 5.0) == "next"  # never the late "late"
    assert workers.status() == {"running": 0, "total": 1, "limit": 5}


def test_past_the_limit_of_abandoned_workers_the_embedded_host_stops_its_feed() -> None:
    """Two plugins hang (limit 2, hook_timeout 0.1 s): both quarantined, the feed thread ends, so the
    daemon's health check (``alive``) fails and its watchdog ping is withheld."""
    release = threading.Event()
    slow, stuck = Hanger(release), Hanger(release)
    host = _host({"slow": slow, "stuck": stuck}, hook_timeout=0.1)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.bind("inproc://feed")
    feed = [stamp(Event("heartbeat"), seq=0, run_id="r1", kiosk="k")]

    def send(envelope: Envelope) -> None:
        pub.send_multipart([envelope.topic.encode(), envelope.private_json()])

    try:
        host.start("inproc://feed", context, heartbeat_now=lambda: send(feed[0]))
        assert host._thread is not None
        assert host._thread.is_alive()
        assert host.status()["restart_reason"] is None
        send(stamp(Event("card.identified", "R1", {}), seq=1, run_id="r1", kiosk="k"))
        host._thread.join(10)
        assert not host.alive
        assert host.restart_reason == "2 abandoned plugin workers still running (limit 2)"
        status = host.status()
        assert status["quarantined"] == ["slow", "stuck"]
        assert status["abandoned_workers"] == {"running": 2, "total": 2, "limit": 2}
    finally:
        release.set()
        host.stop(0.1)
        context.destroy(linger=0)


def test_the_split_host_exits_non_zero_past_the_limit_for_systemd_to_restart_it(tmp_path: Path) -> None:
    release = threading.Event()
    hanger = Hanger(release)
    plugins = PluginsConfig(enabled=False, autoload=False, hook_timeout=0.2, disabled=tuple(BUILTIN))
    config = sim_config(tmp_path, plugins=plugins)
    with running_daemon(config) as d:
        host = SplitHost(config, plugins={"hanger": hanger}, abandoned_limit=1)
        result: dict[str, int] = {}
        thread = threading.Thread(target=lambda: result.setdefault("rc", host.run()), daemon=True)
        thread.start()
        try:
            assert host.ready.wait(10)
            d.tap("alice", hold=False)
            thread.join(10)
        finally:
            release.set()
            host.stop_event.set()
            thread.join(10)
    assert hanger.entered.is_set()
    assert result["rc"] == ExitCode.SOFTWARE


def test_cursors_are_written_when_the_feed_is_quiet_or_lags_after_results_are_logged(tmp_path: Path) -> None:
    store = Store.open(StoreConfig(), tmp_path)
    writes: list[dict[str, int]] = []
    write = store.write_cursors

    def counted(cursors: dict[str, int], run_id: str) -> None:
        writes.append(dict(cursors))
        write(cursors, run_id)

    store.write_cursors = counted  # type: ignore[method-assign] # counts the real SQLite writes
    order: list[str] = []
    one = Threads()

    def flushed() -> bool:
        order.append(f"flushed after {len(one.calls)} calls")
        return True

    settings = PluginsConfig(autoload=False)
    host = PluginHost(
        settings, kiosk="k", publish=lambda _r: None, store=store, plugins={"one": one}, flushed=flushed
    )
    host.load()
    try:
        host.dispatch(_envelope(1))  # the first message: the start's check writes, then this event
        writes.clear()
        order.clear()
        with host.batch():
            for seq in (2, 3, 4, 5):
                host.dispatch(_envelope(seq))
            host.dispatch(_envelope(6, "card.presented"))
            assert writes == []  # nothing written inside the batch
        assert writes == []  # nor at its end: the feed thread writes when the feed goes quiet
        with host.batch():
            host.dispatch(_envelope(7, "card.presented"))  # no hook called
        assert writes == []
        host.flush_cursors()  # the feed is quiet
        assert writes == [{"one": 7}]  # once, for the lot
        assert order == ["flushed after 6 calls"]  # the results of every call logged first
        assert store.read_cursors() == {"one": 7}
        with host.batch():
            host.dispatch(_envelope(8))
        assert len(writes) == 1  # handed just now: it waits for the quiet feed
        host.cursors._due_since -= CURSOR_LAG  # as if the feed had not gone quiet for CURSOR_LAG
        with host.batch():
            host.dispatch(_envelope(9))
        assert writes[1:] == [{"one": 9}]  # a feed that never goes quiet: written after CURSOR_LAG
    finally:
        host.stop(0.1)
        store.close()


def test_envelopes_the_host_needs_only_the_seq_of_are_not_parsed() -> None:
    """``card.presented`` (no hook), ``card.removed`` (no plugin implements it): seq and run id read off
    the first bytes; ``card.identified`` (a plugin's hook), a plugin result (a tap's cascade counts it)
    and bytes not in the bus's form are parsed whole."""
    host = _host({"one": Threads()})

    def light(kind: str, body: bytes | None = None) -> Envelope | None:
        envelope = stamp(Event(kind, "R1", {"x": 1}), seq=41, run_id="run-7", kiosk="k")
        return host._light(kind.encode(), body if body is not None else envelope.private_json())

    for kind in ("card.presented", "card.removed", "plugin.handled"):
        found = light(kind)
        assert found is not None, kind
        assert (found.seq, found.run_id, found.topic) == (41, "run-7", kind)
    assert light("card.identified") is None
    assert light("plugin.other.done") is None
    assert light("card.presented", b'{"seq":41,"v":1,"run_id":"run-7"}') is None
    host.stop(0.1)


class HangingCommand:
    """A command that hangs until released."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    @hookimpl
    def readerd_commands(self) -> list[CommandSpec]:
        return [CommandSpec("hanging.wait", self.wait, help="hangs")]

    def wait(self, _args: dict[str, Any]) -> dict[str, Any]:
        self.release.wait(10)
        return {}


def test_a_hung_plugin_command_counts_towards_the_limit_of_abandoned_threads() -> None:
    """A command is abandoned at ``hook_timeout`` like a hook; its thread, still running, counts with
    the abandoned workers: at the limit (1 here) the host asks to be restarted."""
    release = threading.Event()
    host = _host({"hanging": HangingCommand(release)}, hook_timeout=0.1)
    try:
        assert host._workers.limit == 2
        host._workers.limit = 1
        with pytest.raises(PluginError, match="timed out"):
            host.run_command("hanging.wait", {}).result(5)
        assert host.status()["abandoned_workers"] == {"running": 1, "total": 1, "limit": 1}
        assert host.restart_reason == "1 abandoned plugin workers still running (limit 1)"
        assert host.plugins["hanging"].quarantined is not None
    finally:
        release.set()
        host.stop(0.1)
