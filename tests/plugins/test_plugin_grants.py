"""Plugins load only when named, see only the private fields granted to them, and publish only the result
fields they declare: with no certificate serial, subject CN or IDm value in them (docs/privacy.md).

Real hosts and a real daemon on the sim backend, read from a SUB socket and the event log as a LAN client
and an auditor would. Cost: about 2 s in all (each daemon test about 0.3-0.6 s).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from readerd.cli.main import main as readerd_main
from readerd.config import GRANTABLE_FIELDS, PluginsConfig, load_config
from readerd.errors import ConfigError
from readerd.exitcodes import ExitCode
from readerd.plugin import EventInterest, PluginContext, PluginEvent, hookimpl
from readerd.plugin.api import PRIVATE_FIELDS
from readerd.plugin.host import REDACTED, PluginHost
from readerd.plugin.loader import DISABLE_AUTOLOAD_ENV, candidates
from tests.plugins.test_plugin_host import installed_entry_point  # noqa: F401 - a fixture
from tests.support.daemon import running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)

CERTIFICATE = frozenset({"serial", "issuer_der", "subject_cn", "not_before", "not_after"})


class Nosy:
    """Asks for every certificate field and the IDm; copies what it got into its results."""

    def __init__(self) -> None:
        self.events: list[PluginEvent] = []

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        wanted = frozenset({"card.identified"})
        return EventInterest(types=wanted, private=CERTIFICATE | {"idm"})

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"seen": frozenset({"kind", "note", "copy", "nested"})}

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        self.events.append(event)
        serial = str(event.private.get("serial", ""))
        data = {
            "kind": event.data["kind"],
            "note": "hello",
            "copy": serial,  # declared, but a certificate value: redacted
            "nested": {"who": f"card {serial.lower()}"},  # declared, a serial inside: redacted
            "serial": serial,  # not declared: dropped
        }
        context.publish("seen", data, reader=event.reader)
        context.publish("undeclared", {"serial": serial, "count": 1}, reader=event.reader)


def _config(tmp_path: Path, **plugins: Any) -> Any:
    return sim_config(tmp_path, plugins=PluginsConfig(autoload=False, **plugins))


def test_an_installed_plugin_loads_only_when_named(
    installed_entry_point: Path,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cost: milliseconds (hosts without a daemon)."""
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    assert PluginsConfig().autoload is False
    unnamed = PluginHost(PluginsConfig(), kiosk="k", publish=lambda _r: None)
    unnamed.load()
    named = PluginHost(PluginsConfig(load=("epplug", "ghost")), kiosk="k", publish=lambda _r: None)
    named.load()
    everything = PluginHost(PluginsConfig(autoload=True), kiosk="k", publish=lambda _r: None)
    everything.load()
    assert "epplug" not in unnamed.plugins
    assert "epplug" in candidates(PluginsConfig()).unnamed
    assert named.plugins["epplug"].source == "entrypoint"
    assert "no installed plugin 'ghost'" in named.rejected["ghost"]
    assert "epplug" in everything.plugins  # autoload = true: every installed one (not for kiosks)


def test_grants_are_checked_when_the_configuration_loads(tmp_path: Path) -> None:
    """Cost: about 0.1 s (``readerd run`` stops at the configuration)."""
    good = tmp_path / "good.toml"
    good.write_text('[plugins.nosy]\ngrants = ["serial", "idm"]\ngreeting = "hi"\n', encoding="utf-8")
    config = load_config(good).validate()
    assert config.plugins.grants("nosy") == {"serial", "idm"}
    assert config.plugins.grants("other") == frozenset()
    bad = tmp_path / "bad.toml"
    bad.write_text('[plugins.nosy]\ngrants = ["serial", "pin"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"plugins\.nosy\.grants: no private field pin"):
        load_config(bad).validate()
    assert readerd_main(["run", "--simulate", "--config", str(bad)]) == ExitCode.CONFIG
    assert int(ExitCode.CONFIG) == 78
    assert GRANTABLE_FIELDS == PRIVATE_FIELDS  # what a kiosk may grant is what a plugin may ask for


def test_a_plugin_without_grants_sees_no_certificate_field_even_if_it_asks(tmp_path: Path) -> None:
    """Cost: about 0.4 s (one sim daemon, one tap each of two plugins)."""
    nosy, granted = Nosy(), Nosy()
    sections = {"granted": {"grants": ["not_after"]}, "nosy": {"greeting": "hi"}}
    plugins: dict[str, object] = {"nosy": nosy, "granted": granted}
    with (
        running_daemon(_config(tmp_path, sections=sections), plugins=plugins) as d,
        d.subscriber("plugin.nosy.seen") as sub,
    ):
        d.tap("alice")
        sub.next()
        status = {p["name"]: p for p in d.request("plugins")["result"]["plugins"]}
    assert nosy.events[0].private == {}
    assert set(granted.events[0].private) == {"not_after"}  # what it asked for and was granted
    assert status["nosy"]["private_fields"] == []
    assert status["nosy"]["private_not_granted"] == sorted(CERTIFICATE | {"idm"})
    assert status["granted"]["private_fields"] == ["not_after"]


def test_undeclared_fields_and_certificate_values_never_reach_the_lan_or_the_event_log(
    tmp_path: Path,
) -> None:
    """A plugin granted the serial copies it into a declared field, an undeclared one and an undeclared
    result. Cost: about 0.5 s (one sim daemon, one tap, the event log read back)."""
    nosy = Nosy()
    config = _config(tmp_path, sections={"nosy": {"grants": ["serial", "subject_cn"]}})
    with (
        running_daemon(config, plugins={"nosy": nosy}) as d,
        d.subscriber("card.identified", "plugin.nosy.") as sub,
    ):
        d.tap("alice")
        events = sub.until(lambda e: e["type"] == "plugin.nosy.undeclared")
        status = d.request("plugins")["result"]["plugins"][0]
        daemon_status = d.request("status")["result"]
        event_log = d.daemon.bus.event_log if d.daemon.bus is not None else None
        assert event_log is not None
        logged = event_log.since(0, limit=1000, private=True).events
    serial = str(nosy.events[0].private["serial"])
    subject = str(nosy.events[0].private["subject_cn"])
    assert len(serial) >= 8  # the plugin did get them
    assert len(subject) >= 8
    seen, undeclared = events[-2], events[-1]
    assert seen["type"] == "plugin.nosy.seen"
    assert seen["data"] == {"kind": "jpki", "note": "hello", "copy": REDACTED, "nested": {"who": REDACTED}}
    assert undeclared["data"] == {}  # published, so a screen still sees it happened; nothing of its data
    on_the_lan = json.dumps(sub.received)
    in_the_log = json.dumps([e for e in logged if str(e["type"]).startswith("plugin.")])
    for text in (on_the_lan, in_the_log):
        assert serial not in text
        assert serial.lower() not in text
        assert subject not in text
    assert [e["data"] for e in logged if e["type"] == "plugin.nosy.seen"] == [seen["data"]]
    assert status["results"] == {"seen": ["copy", "kind", "nested", "note"]}
    assert (status["result_fields_dropped"], status["result_values_redacted"]) == (3, 2)
    assert daemon_status["plugins_results_screened"] == {"nosy": {"fields_dropped": 3, "values_redacted": 2}}
