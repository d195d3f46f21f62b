"""The plugin host in a real daemon (sim backend): delivery, isolation, quarantine, data minimisation,
commands, discovery and disabling. Plugins here are small objects with real ``@hookimpl`` functions."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import readerd.logging
from readerd.config import FelicaConfig, FelicaRead, PluginsConfig
from readerd.errors import ReaderdError
from readerd.plugin.api import Arg, ArgType, CommandSpec, EventInterest, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.host import PluginHost
from readerd.plugin.loader import BUILTIN, DISABLE_AUTOLOAD_ENV, load_object
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """Records what it receives; ``interest`` is what it declares."""

    def __init__(self, interest: EventInterest | None = None) -> None:
        self.events: list[PluginEvent] = []
        self.interest = interest
        self.started = threading.Event()

    @hookimpl
    def readerd_event_interest(self) -> EventInterest | None:
        return self.interest

    @hookimpl
    def readerd_startup(self, context: PluginContext) -> None:
        self.started.set()

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        self.events.append(event)
        context.publish("seen", {"pseudonym": event.data["pseudonym"]}, reader=event.reader)

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"seen": frozenset({"pseudonym"})}


class Raiser:
    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        raise RuntimeError("plugin bug")


class Hanger:
    def __init__(self) -> None:
        self.release = threading.Event()

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        self.release.wait(30)


class BadSignature:
    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, weather: str) -> None:  # no such argument
        raise AssertionError("never called")


class Points:
    def __init__(self) -> None:
        self.balance = 10

    def redeem(self, args: dict[str, Any]) -> dict[str, Any]:
        if args["amount"] > self.balance:
            raise InsufficientPointsError(f"balance {self.balance} < {args['amount']}")
        self.balance -= args["amount"]
        return {"balance": self.balance}

    @hookimpl
    def readerd_commands(self, context: PluginContext) -> list[CommandSpec]:
        spec = CommandSpec(
            "points.redeem",
            self.redeem,
            {"amount": Arg(ArgType.INTEGER), "shop": Arg(ArgType.STRING, required=False)},
            help="spend points",
        )
        return [spec]


class InsufficientPointsError(ReaderdError):
    code = "insufficient_points"


def _config(tmp_path: Path, **plugins: Any) -> Any:
    settings = PluginsConfig(autoload=False, hook_timeout=0.5, quarantine_after=2, **plugins)
    return sim_config(tmp_path, plugins=settings)


def test_plugins_receive_events_and_publish_results(tmp_path: Path) -> None:
    recorder = Recorder()
    with (
        running_daemon(_config(tmp_path), plugins={"recorder": recorder}) as d,
        d.subscriber("card.identified", "plugin.") as sub,
    ):
        d.tap("alice")
        events = sub.until(lambda e: e["type"] == "plugin.recorder.seen")
        status = d.request("plugins")["result"]
    identified = next(e for e in events if e["type"] == "card.identified")
    result = events[-1]
    assert result["data"] == {"pseudonym": identified["data"]["pseudonym"]}
    assert result["reader"] == "Sim 00"
    assert result["seq"] > identified["seq"]  # the daemon gave the result its place in seq
    assert recorder.events[0].seq == identified["seq"]
    assert recorder.events[0].private == {}  # nothing private was asked for
    (info,) = status["plugins"]
    assert info["name"] == "recorder"
    assert "readerd_card_identified" in info["hooks"]
    assert info["quarantined"] is None


def test_a_raising_plugin_is_reported_then_quarantined_and_others_still_receive(tmp_path: Path) -> None:
    recorder = Recorder()
    with (
        running_daemon(_config(tmp_path), plugins={"raiser": Raiser(), "recorder": recorder}) as d,
        d.subscriber("plugin.error", "plugin.recorder.") as sub,
    ):
        for _ in range(3):
            d.tap("alice", hold=False)
            sub.until(lambda e: e["type"] == "plugin.recorder.seen")
        errors = [e for e in sub.received if e["type"] == "plugin.error"]
        status = d.request("status")["result"]
    assert [e["data"]["quarantined"] for e in errors] == [False, True]  # quarantine_after = 2
    assert errors[0]["data"]["plugin"] == "raiser"
    assert errors[0]["data"]["hook"] == "readerd_card_identified"
    assert "RuntimeError: plugin bug" in errors[0]["data"]["message"]
    assert len(recorder.events) == 3
    assert status["plugins_quarantined"] == ["raiser"]


def test_a_hanging_plugin_times_out_and_is_quarantined_at_once(tmp_path: Path) -> None:
    hanger, recorder = Hanger(), Recorder()
    try:
        with (
            running_daemon(_config(tmp_path), plugins={"hanger": hanger, "recorder": recorder}) as d,
            d.subscriber("plugin.error", "plugin.recorder.", "card.identified") as sub,
        ):
            d.tap("alice", hold=False)
            first = sub.until(lambda e: e["type"] == "plugin.recorder.seen")
            d.tap("bob", hold=False)
            second = sub.until(lambda e: e["type"] == "plugin.recorder.seen")
    finally:
        hanger.release.set()
    error = next(e for e in first if e["type"] == "plugin.error")
    assert error["data"]["error"] == "timeout"
    assert error["data"]["quarantined"] is True
    assert not any(e["type"] == "plugin.error" for e in second)  # quarantined: not called again
    assert [e.data["pseudonym"] for e in recorder.events] == [
        e["data"]["pseudonym"] for e in first + second if e["type"] == "card.identified"
    ]


def test_a_bad_hook_signature_is_rejected_by_name_at_startup(tmp_path: Path) -> None:
    recorder = Recorder()
    with (
        running_daemon(_config(tmp_path), plugins={"bad": BadSignature(), "recorder": recorder}) as d,
        d.subscriber("plugin.recorder.") as sub,
    ):
        status = d.request("plugins")["result"]
        d.tap("alice")
        sub.next()
    assert "bad" in status["rejected"]
    assert "weather" in status["rejected"]["bad"]
    assert [p["name"] for p in status["plugins"]] == ["recorder"]


def test_felica_blocks_reach_only_the_plugin_that_asked_for_that_service(tmp_path: Path) -> None:
    reads = FelicaConfig(
        reads=(
            FelicaRead(name="bathhouse", service_code="000B", blocks=(0, 1), system_code="88B4"),
            FelicaRead(name="other", service_code="000B", blocks=(0,), system_code="88B4"),
        )
    )
    plain = Recorder()
    bath = Recorder(EventInterest(private=frozenset({"blocks"}), felica_services=frozenset({"bathhouse"})))
    idm_only = Recorder(EventInterest(private=frozenset({"idm"})))
    grants = {"bath": {"grants": ["blocks"]}, "idm": {"grants": ["idm"]}}
    config = replace(_config(tmp_path, sections=grants), felica=reads)
    plugins: dict[str, object] = {"plain": plain, "bath": bath, "idm": idm_only}
    with running_daemon(config, plugins=plugins) as d, d.subscriber("plugin.") as sub:
        d.tap("B0001", felica="bathhouse")
        for _ in range(3):
            sub.next()
    assert plain.events[0].private == {}
    assert set(bath.events[0].private) == {"blocks"}
    assert set(bath.events[0].private["blocks"]) == {"bathhouse"}
    assert len(bath.events[0].private["blocks"]["bathhouse"]) == 2
    assert set(idm_only.events[0].private) == {"idm"}


def test_plugin_commands_with_schema_and_their_own_error_codes(tmp_path: Path) -> None:
    points = Points()
    with running_daemon(_config(tmp_path), plugins={"points": points}) as d:
        ok = d.request("points.redeem", {"amount": 4, "shop": "s-1"})
        short = d.request("points.redeem", {"amount": 40})
        bad_type = d.request("points.redeem", {"amount": "4"})
        missing = d.request("points.redeem", {})
        unknown = d.request("points.redeem", {"amount": 1, "pin": "1234"})
        listed = d.request("plugins")["result"]
    assert ok == {"id": ok["id"], "ok": True, "result": {"balance": 6}}
    assert short["error"]["code"] == "insufficient_points"
    assert bad_type["error"]["code"] == "bad_request"
    assert "amount" in bad_type["error"]["message"]
    assert missing["error"]["code"] == "bad_request"
    assert unknown["error"]["code"] == "bad_request"
    assert points.balance == 6
    assert listed["plugins"][0]["name"] == "points"


def test_a_disabled_plugin_is_not_loaded(tmp_path: Path) -> None:
    recorder = Recorder()
    with running_daemon(_config(tmp_path, disabled=("recorder",)), plugins={"recorder": recorder}) as d:
        status = d.request("plugins")["result"]
    assert status["plugins"] == []
    assert not recorder.started.is_set()


ENTRY_POINT_PLUGIN = """
from readerd.plugin.hookspecs import hookimpl
__version__ = "1.2.3"
SEEN = []

@hookimpl
def readerd_card_identified(event):
    SEEN.append(event.seq)
"""


@pytest.fixture
def installed_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A distribution with a ``readerd`` entry point, found by importlib.metadata on sys.path."""
    site = tmp_path / "site"
    (site / "ep_plugin").mkdir(parents=True)
    (site / "ep_plugin" / "__init__.py").write_text(ENTRY_POINT_PLUGIN)
    info = site / "ep_plugin-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[readerd]\nepplug = ep_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def _host(**config: Any) -> PluginHost:
    return PluginHost(PluginsConfig(**config), kiosk="k", publish=lambda _result: None)


def test_entry_point_plugins_are_discovered_with_their_version(
    installed_entry_point: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    host = _host(load=("epplug",))
    host.load()
    assert host.plugins["epplug"].source == "entrypoint"
    assert host.plugins["epplug"].version == "1.2.3"
    assert host.hooks_of("epplug") == ["readerd_card_identified"]
    host.dispatch(
        {"type": "card.identified", "seq": 7, "id": "x", "ts": "t", "kiosk": "k", "reader": "r", "data": {}}
    )
    import ep_plugin  # type: ignore[import-not-found]  # noqa: PLC0415 - installed by the fixture

    assert ep_plugin.SEEN == [7]


def test_the_environment_and_the_config_turn_autoload_off(
    installed_entry_point: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    by_env = _host(autoload=True)
    by_env.load()
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV)
    by_config = _host(autoload=False)
    by_config.load()
    assert "epplug" not in by_env.plugins
    assert "epplug" not in by_config.plugins


def test_gaps_in_the_feed_are_detected() -> None:
    host = _host(autoload=False)
    host.load()

    def envelope(seq: int, kind: str = "card.removed", run: str = "r1") -> dict[str, Any]:
        return {
            "type": kind,
            "seq": seq,
            "run_id": run,
            "id": "x",
            "ts": "t",
            "kiosk": "k",
            "reader": None,
            "data": {},
        }

    for seq in (1, 2, 5):
        host.dispatch(envelope(seq))
    host.dispatch(envelope(8, "heartbeat"))  # events 6..8 never arrived
    host.dispatch(envelope(1, run="r2"))  # a restarted daemon: seqs start again, no gap
    assert host.gaps == [(3, 4), (6, 8)]
    assert host.status()["feed_gaps"] == [[3, 4], [6, 8]]


def test_trace_logs_every_hook_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Through the daemon's own logging setup (structlog -> stdlib), as `readerd run` logs.
    readerd.logging.configure("INFO", "json")
    logging.getLogger().addHandler(caplog.handler)  # configure() replaced the root handlers
    recorder = Recorder()
    with (
        caplog.at_level("INFO"),
        running_daemon(_config(tmp_path, trace=True), plugins={"recorder": recorder}) as d,
        d.subscriber("plugin.") as sub,
    ):
        caplog.clear()
        d.tap("alice")
        sub.next()
    logs = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    calls = [entry for entry in logs if entry["event"] == "hook call"]
    assert calls
    assert calls[0]["plugin"] == "recorder"
    assert calls[0]["hook"] == "readerd_card_identified"
    assert calls[0]["duration_ms"] >= 0


def test_readerctl_plugins_lists_versions_hooks_and_rejections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from readerd.cli.ctl import main as ctl_main  # noqa: PLC0415

    plugins: dict[str, object] = {"recorder": Recorder(), "bad": BadSignature()}
    with running_daemon(_config(tmp_path), plugins=plugins) as d:
        capsys.readouterr()
        assert ctl_main(["--control", d.control, "plugins"]) == 0
    out = capsys.readouterr().out
    assert "recorder - [given] ok" in out
    hooks = "readerd_card_identified, readerd_event_interest, readerd_result_fields, readerd_startup"
    assert f"hooks: {hooks}" in out
    assert "bad NOT LOADED" in out


def test_run_flags_turn_on_tracing_and_turn_off_the_host() -> None:
    from readerd.cli.main import build_parser, config_from_args  # noqa: PLC0415

    traced = config_from_args(build_parser().parse_args(["run", "--simulate", "--trace-plugins"]))
    off = config_from_args(build_parser().parse_args(["run", "--simulate", "--no-plugins"]))
    assert (traced.plugins.trace, traced.plugins.enabled) == (True, True)
    assert (off.plugins.trace, off.plugins.enabled) == (False, False)


def test_docs_carry_the_generated_hook_reference() -> None:
    from readerd.plugin.docs import reference  # noqa: PLC0415

    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert reference() in text, "regenerate with: python -m readerd.plugin.docs"


def test_the_built_in_staff_commands_need_the_operator_role() -> None:
    """On the LAN a shop terminal's control key redeems and checks in; definitions, card registrations,
    grants and reports with personal data need the ward office's operator key (docs/clients.md)."""
    roles: dict[str, str] = {}
    for spec_path in BUILTIN.values():
        plugin = load_object(spec_path)
        instance: Any = plugin() if isinstance(plugin, type) else plugin
        roles |= {spec.name: spec.role for spec in instance.readerd_commands()}
    assert {name for name, role in roles.items() if role == "operator"} == {
        "points.define_programme", "points.define_shop", "points.grant", "points.import", "points.expire",
        "points.register_card", "points.settlement", "points.pending", "checkin.define_event",
        "checkin.register_card", "checkin.attendance", "bathhouse.register", "bathhouse.reissue",
        "bathhouse.link_mynumber", "bathhouse.report", "library.overdue",
    }  # fmt: skip
    assert roles["points.redeem"] == roles["checkin.sync"] == roles["library.checkout"] == "control"
    with pytest.raises(ValueError, match="role is one of"):
        CommandSpec("x.y", lambda _a: {}, role="subscribe")
