"""``readerd plugins``: the plugin host in its own process (here: its own thread and sockets), fed over
ipc by the daemon's private feed through readerd.bus.client, results published back by the daemon, plugin
commands forwarded to it; events it missed while down are replayed (with the private fields)."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from readerd.config import Config, PluginsConfig
from readerd.plugin.api import (
    Arg,
    ArgType,
    CommandSpec,
    EventInterest,
    JsonObject,
    PluginContext,
    PluginEvent,
)
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.link import runtime_dir
from readerd.plugin.split_host import SplitHost
from tests.support.daemon import running_daemon, sim_config


class Recorder:
    """Records every card.identified it is given (with the one private field it asked for), answers a
    greeting, and publishes a result per event."""

    def __init__(self) -> None:
        self.events: list[PluginEvent] = []
        self.got = threading.Condition()

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified"}), private=frozenset({"serial"}))

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"seen": frozenset({"count"})}

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        with self.got:
            self.events.append(event)
            self.got.notify_all()
        context.publish("seen", {"count": len(self.events)}, reader=event.reader)

    @hookimpl
    def readerd_commands(self, context: PluginContext) -> list[CommandSpec]:
        return [CommandSpec("recorder.hello", self._hello, {"name": Arg(ArgType.STRING)})]

    def _hello(self, args: JsonObject) -> JsonObject:
        return {"hello": args["name"], "seen": len(self.events)}

    def wait(self, n: int, timeout: float = 10.0) -> list[PluginEvent]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.events) >= n, timeout), self.events
            return list(self.events)


@contextmanager
def split_host(config: Config, plugin: Recorder) -> Iterator[SplitHost]:
    host = SplitHost(config, plugins={"recorder": plugin})
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", host.run()), daemon=True)
    thread.start()
    assert host.ready.wait(10), "the split host did not start"
    try:
        yield host
    finally:
        host.stop_event.set()
        thread.join(10)
    assert result.get("rc") == 0


def test_split_host_gets_events_publishes_results_answers_commands_and_catches_up(tmp_path: Path) -> None:
    granted: dict[str, dict[str, object]] = {"recorder": {"grants": ["serial"]}}
    config = sim_config(tmp_path, plugins=PluginsConfig(enabled=False, autoload=False, sections=granted))
    plugin = Recorder()
    with running_daemon(config) as d, d.subscriber() as sub:
        for name in ("private.sock", "plugins.sock"):
            mode = (runtime_dir(config) / name).stat().st_mode
            assert stat.S_ISSOCK(mode)
            assert mode & 0o777 == 0o600
        assert d.request("recorder.hello", {"name": "x"})["error"]["code"] == "unknown_command"
        with split_host(config, plugin):
            d.tap("alice", hold=False)
            first = plugin.wait(1)
            result = sub.until(lambda e: e["type"] == "plugin.recorder.seen")[-1]
            hello = d.request("recorder.hello", {"name": "kiosk"})
            listed = d.request("plugins")
        # The host is down: these two taps happen while nobody feeds the plugin.
        d.tap("bob", hold=False, reader="Sim 01")
        d.tap("carol", hold=False, reader="Sim 01")
        for _ in range(2):  # bob's and carol's reads are over before the host comes back
            sub.until(lambda e: e["type"] == "card.removed" and e["reader"] == "Sim 01")
        down = d.request("recorder.hello", {"name": "kiosk"})
        with split_host(config, plugin):
            events = plugin.wait(3)
        missed_results = sub.until(lambda e: e["type"] == "plugin.recorder.seen" and e["data"]["count"] == 3)
    assert first[0].private == {"serial": first[0].private["serial"]}  # the private field it declared
    assert result["data"] == {"count": 1}
    assert result["seq"] > first[0].seq  # the daemon gave the result its place in seq
    assert hello["result"] == {"hello": "kiosk", "seen": 1}
    assert [p["name"] for p in listed["result"]["plugins"]] == ["recorder"]
    assert down["error"]["code"] == "plugin_host_unavailable"
    # Caught up after its restart: every identification once, in order, with its private field.
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert len({e.id for e in events}) == 3
    # Live, the plugin gets the private field it declared; replayed from the event log it does not:
    # certificate fields are never stored (eventlog.CERTIFICATE_FIELDS), as if it had not asked.
    assert [set(e.private) for e in events] == [{"serial"}, set(), set()]
    assert missed_results[-1]["data"] == {"count": 3}
    # What it caught up at its second start was logged while no host was there: marked replayed, and
    # so are the results it published for them (screens skip them), each naming its tap.
    assert [e.replayed for e in events] == [False, True, True]
    assert missed_results[-1]["replayed"] is True
    assert missed_results[-1]["cause"] == events[2].id
    assert "replayed" not in result
    assert result["cause"] == first[0].id


def test_readerd_plugins_runs_the_host_as_its_own_process(tmp_path: Path) -> None:
    """The real command, in a process of its own: the example plugin installed in the test venv
    (docs/examples/readerd-hello) greets a tapped card through the daemon's bus."""
    config = sim_config(tmp_path, plugins=PluginsConfig(enabled=False))
    toml = tmp_path / "plugins.toml"  # an installed plugin runs only when named
    toml.write_text('[plugins]\nenabled = false\nload = ["hello"]\n', encoding="utf-8")
    with running_daemon(config) as d, d.subscriber("plugin.") as sub:
        command = [sys.executable, "-m", "readerd.cli.main", "plugins", "--state-dir", str(tmp_path)]
        command += ["--config", str(toml)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as host:
            try:
                while True:  # the host has registered its commands once the daemon lists it
                    reply = d.request("status")["result"]
                    if reply.get("plugin_host") == "split":
                        break
                    assert host.poll() is None, host.stdout.read() if host.stdout else ""
                    time.sleep(0.05)  # polling a condition, not a timed wait
                d.tap("alice")
                greeting = sub.until(lambda e: e["type"].startswith("plugin.hello."))[-1]
            finally:
                host.send_signal(signal.SIGTERM)
                assert host.wait(10) == 0
    assert greeting["type"] == "plugin.hello.greeting"


def test_readerd_plugins_without_a_daemon_exits_69(tmp_path: Path) -> None:
    config = sim_config(tmp_path, plugins=PluginsConfig(enabled=False, autoload=False))
    assert SplitHost(config, register_timeout=0.5).run() == 69  # systemd restarts it (on-failure)
