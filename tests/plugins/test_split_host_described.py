"""A split plugin host's commands are described as the embedded host's are: ``plugins.register`` carries
each command's ``CommandSpec.schema()``, so the daemon's ``commands`` answer (``readerctl help``) gives
their help and typed arguments and ``readerctl call`` sends an integer as an integer.

Cost: about 2 s (one in-process daemon without the embedded host, the split host on a thread).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from readerd import config as readerd_config
from readerd.cli import ctl
from readerd.config import Config, PluginsConfig
from readerd.plugin.api import Arg, ArgType, CommandSpec, JsonObject, PluginContext
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.split_host import SplitHost
from tests.support.daemon import RunningDaemon, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)


class Counter:
    """Two commands: one with typed arguments that echoes their Python types, one that moves value."""

    @hookimpl
    def readerd_commands(self, context: PluginContext) -> list[CommandSpec]:
        return [
            CommandSpec(
                "counter.add",
                self._add,
                {"by": Arg(ArgType.INTEGER, help="how many"), "note": Arg(ArgType.STRING, required=False)},
                help="add to the counter\nsecond line",
            ),
            CommandSpec(
                "counter.spend", self._add, {"by": Arg(ArgType.INTEGER)}, help="spend", possession=True
            ),
        ]

    def _add(self, args: JsonObject) -> JsonObject:
        return {"types": {key: type(value).__name__ for key, value in sorted(args.items())}}


@contextmanager
def split_host(config: Config) -> Iterator[SplitHost]:
    host = SplitHost(config, plugins={"counter": Counter()})
    thread = threading.Thread(target=host.run, daemon=True)
    thread.start()
    assert host.ready.wait(10), "the split host did not start"
    try:
        yield host
    finally:
        host.stop_event.set()
        thread.join(10)


@pytest.fixture
def split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningDaemon]:
    monkeypatch.setattr(readerd_config, "DEFAULT_CONFIG", tmp_path / "absent.toml")
    config = sim_config(tmp_path, plugins=PluginsConfig(enabled=False, autoload=False))
    with running_daemon(config) as d, split_host(config):
        yield d


def _entry(d: RunningDaemon, name: str) -> dict[str, Any]:
    listed = d.request("commands")["result"]["commands"]
    found: dict[str, Any] = next(c for c in listed if c["name"] == name)
    return found


def test_the_split_hosts_commands_carry_their_specs(split: RunningDaemon) -> None:
    add, spend, plugins = (_entry(split, n) for n in ("counter.add", "counter.spend", "plugins.reinstate"))
    assert add["described"] is True
    assert add["help"] == "add to the counter\nsecond line"
    assert add["args"] == {
        "by": {"type": "integer", "required": True, "help": "how many"},
        "note": {"type": "string", "required": False, "help": ""},
    }
    assert add["possession"] is False
    # A command that moves value: described as such, with the auth_id of the PIN proof it takes.
    assert (spend["described"], spend["possession"]) == (True, True)
    assert set(spend["args"]) == {"by", "auth_id"}
    assert spend["role"] == "control"
    # The link's own commands are described too.
    assert plugins["described"] is True
    assert plugins["args"]["name"]["required"] is True


def test_readerctl_types_a_split_hosts_arguments(
    split: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    help_code = ctl.main(["--control", split.control, "help"])
    listing = capsys.readouterr().out
    call_code = ctl.main(["--control", split.control, "--json", "call", "counter.add", "by=3", "note=x"])
    called = capsys.readouterr().out
    bad_code = ctl.main(["--control", split.control, "call", "counter.add", "by=three"])
    refused = capsys.readouterr().err
    line = next(row for row in listing.splitlines() if row.startswith("counter.add"))
    assert help_code == call_code == 0
    assert "not described" not in listing
    assert line.split(maxsplit=2)[1:] == ["control", "add to the counter"]
    assert next(row for row in listing.splitlines() if row.startswith("counter.spend")).endswith(" *")
    assert '"types": {"by": "int", "note": "str"}' in called  # sent as JSON 3, not "3"
    assert bad_code == 64  # checked by readerctl against the spec: nothing sent
    assert "not an integer" in refused
