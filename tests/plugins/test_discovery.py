"""Built-in plugins are found by module name and ``readerctl`` grows the subcommands plugins contribute.

``probe_plugin`` stands in for a module of ``plugins/``: the host and ``readerctl`` load it through
``BUILTIN`` exactly as they will load the municipal plugins.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from readerd.cli import ctl
from readerd.config import PluginsConfig
from readerd.plugin import loader
from readerd.plugin.api import CheckStatus
from readerd.plugin.discovery import discover
from tests.support.daemon import running_daemon, sim_config

PROBE = "tests.plugins.probe_plugin"


@pytest.fixture
def builtin_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(loader.BUILTIN, "probe", PROBE)
    monkeypatch.setenv(loader.DISABLE_AUTOLOAD_ENV, "1")  # only the built-ins


def readerctl_config(tmp_path: Path) -> Path:
    """The kiosk's configuration as readerctl reads it: the probe is one of its built-ins."""
    path = tmp_path / "readerd.toml"
    path.write_text('[plugins]\nbuiltins = ["probe"]\n', encoding="utf-8")
    return path


def test_a_builtin_plugin_is_loaded_with_its_commands(builtin_probe: None, tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path, plugins=PluginsConfig(builtins=("probe",)))) as d:
        listed = d.request("plugins")["result"]
        echoed = d.request("probe.echo", {"text": "hi"})
    probe = next(p for p in listed["plugins"] if p["name"] == "probe")
    assert probe["source"] == "builtin"
    assert probe["version"] == "0.1"
    assert echoed == {"id": echoed["id"], "ok": True, "result": {"echo": "hi"}}


def test_a_disabled_builtin_is_not_loaded(builtin_probe: None, tmp_path: Path) -> None:
    with running_daemon(
        sim_config(tmp_path, plugins=PluginsConfig(builtins=("probe",), disabled=("probe",)))
    ) as d:
        names = [p["name"] for p in d.request("plugins")["result"]["plugins"]]
        unknown = d.request("probe.echo", {"text": "hi"})
    assert "probe" not in names
    assert unknown["error"]["code"] == "unknown_command"
    assert "probe" not in discover(PluginsConfig(builtins=("probe",), disabled=("probe",))).ctl_commands(
        set()
    )
    assert "probe" not in discover(PluginsConfig()).ctl_commands(set())  # built-ins are opt-in


def test_readerctl_runs_a_plugin_subcommand(
    builtin_probe: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_daemon(sim_config(tmp_path, plugins=PluginsConfig(builtins=("probe",)))) as d:
        code = ctl.main(
            ["--config", str(readerctl_config(tmp_path)), "--control", d.control, "probe", "hello"]
        )
    assert code == 0
    assert "probe says hello" in capsys.readouterr().out


def test_readerctl_reports_a_refusal_from_the_daemon(
    builtin_probe: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The daemon runs without the plugin (readerctl has it): the command is unknown there.
    with running_daemon(sim_config(tmp_path)) as d:
        code = ctl.main(
            ["--config", str(readerctl_config(tmp_path)), "--control", d.control, "probe", "hello"]
        )
    assert code == 1
    assert "error (unknown_command)" in capsys.readouterr().err


def test_a_plugin_cannot_take_a_readerctl_name_and_a_broken_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(loader.DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.setitem(loader.BUILTIN, "probe", PROBE)
    monkeypatch.setitem(loader.BUILTIN, "missing", "tests.plugins.no_such_module")
    found = discover(PluginsConfig(builtins=("probe", "missing")))
    assert found.ctl_commands({"probe"}) == {}
    assert found.problems["probe"] == "readerctl probe exists already"
    assert "ModuleNotFoundError" in found.problems["missing"]
    checks = found.doctor_checks()
    assert [(plugin, check.name) for plugin, check in checks] == [("probe", "probe")]
    assert checks[0][1].run().status is CheckStatus.OK
