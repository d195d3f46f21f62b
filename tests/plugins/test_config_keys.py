"""Checked plugin configuration: each plugin declares its ``[plugins.<name>]`` keys (``readerd_config_keys``);
an unknown or mistyped key stops the process that loads it with exit 78, naming the plugin, the key and
the closest known key; ``readerctl help config`` lists the keys.

Cost: about 5 s (10 s on a busy machine): two ``readerd run --simulate`` and one ``readerd plugins``
subprocess that stop at the configuration (1 to 3 s each: the start-up imports), about 1 s for
``readerctl help config``, the rest in milliseconds.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from readerd.cli.ctl import main as readerctl_main
from readerd.cli.ctl_config_help import plugin_keys, run_config_help
from readerd.config import BUILTIN_PLUGINS, PluginsConfig
from readerd.errors import ConfigError
from readerd.exitcodes import ExitCode
from readerd.plugin import ArgType, ConfigKey, hookimpl
from readerd.plugin.api import check_config_keys, config_keys_of
from readerd.plugin.host import PluginHost

REPO = Path(__file__).resolve().parents[2]
KEYS = [
    ConfigKey("event", ArgType.STRING, None, "the event"),
    ConfigKey("limit", ArgType.INTEGER, 3, "how many"),
    ConfigKey("ratio", ArgType.NUMBER, 0.5, "how much"),
]


class Declaring:
    @hookimpl
    def readerd_config_keys(self) -> list[ConfigKey]:
        return KEYS


class Silent:
    """Declares nothing: its table is not checked."""

    @hookimpl
    def readerd_startup(self) -> None:
        pass


def _host(sections: dict[str, dict[str, object]], **plugins: object) -> PluginHost:
    config = PluginsConfig(autoload=False, sections=sections)
    return PluginHost(config, kiosk="k", publish=lambda _e: None, plugins=dict(plugins))


# --- the check itself ----------------------------------------------------------------------------------
def test_unknown_keys_are_named_with_the_closest_known_one() -> None:
    problems = check_config_keys("demo", KEYS, {"evnt": "x", "zzz": 1, "grants": ["idm"], "event": "ok"})
    assert [(p.key, str(p)) for p in problems] == [
        ("evnt", "[plugins.demo] evnt: unknown key; did you mean `event`? (known keys: event, limit, ratio)"),
        ("zzz", "[plugins.demo] zzz: unknown key (known keys: event, limit, ratio)"),
    ]


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("limit", "3", False),
        ("limit", True, False),  # TOML true is no integer
        ("limit", 2.5, False),
        ("limit", 4, True),
        ("ratio", 1, True),  # a number takes an integer
        ("ratio", "half", False),
        ("event", 7, False),
    ],
)
def test_values_must_have_the_declared_type(key: str, value: object, ok: bool) -> None:
    problems = check_config_keys("demo", KEYS, {key: value})
    assert (problems == []) is ok
    if not ok:
        assert problems[0].message.startswith("expected ")


def test_a_malformed_declaration_is_refused() -> None:
    assert config_keys_of(None) is None
    with pytest.raises(ValueError, match="not a list of ConfigKey"):
        config_keys_of(["event"])
    with pytest.raises(ValueError, match="declared twice"):
        config_keys_of([KEYS[0], KEYS[0]])
    assert ConfigKey("limit", ArgType.INTEGER, 3).get({}) == 3
    assert ConfigKey("limit", ArgType.INTEGER, 3).get({"limit": 9}) == 9


# --- the host ------------------------------------------------------------------------------------------
def test_the_host_refuses_an_unknown_or_mistyped_key_before_any_plugin_starts() -> None:
    started: list[str] = []

    class Starts(Declaring):
        @hookimpl
        def readerd_startup(self) -> None:
            started.append("yes")

    host = _host({"demo": {"evnt": "x", "limit": "many"}}, demo=Starts())
    with pytest.raises(ConfigError) as raised:
        host.load()
    assert "[plugins.demo] evnt: unknown key; did you mean `event`?" in str(raised.value)
    assert "[plugins.demo] limit: expected an integer, not 'many'" in str(raised.value)
    assert started == []

    good = _host({"demo": {"event": "bon-odori", "limit": 2, "grants": []}}, demo=Starts())
    good.load()
    assert started == ["yes"]


def test_a_plugin_that_declares_nothing_is_not_checked_and_the_log_says_so_once() -> None:
    with structlog.testing.capture_logs() as logs:
        _host({"quiet": {"anything": "goes"}}, quiet=Silent()).load()
    said = [e for e in logs if e["event"] == "plugin configuration not checked: the plugin declares no keys"]
    assert [e["plugin"] for e in said] == ["quiet"]


# --- the processes: readerd run, readerd plugins -------------------------------------------------------
def _config(tmp_path: Path, section: str) -> Path:
    sockets = tmp_path / "s"
    sockets.mkdir(exist_ok=True)
    path = tmp_path / "readerd.toml"
    path.write_text(
        f'[bus]\npublish = "ipc://{sockets}/e.sock"\ncontrol = "ipc://{sockets}/c.sock"\n'
        f'sockets_dir = "{sockets}"\n'
        f'[plugins]\nautoload = false\nbuiltins = ["checkin"]\n[plugins.checkin]\n{section}\n',
        encoding="utf-8",
    )
    return path


def _readerd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, READERD_DISABLE_PLUGIN_AUTOLOAD="1")
    command = [sys.executable, "-m", "readerd.cli.main", *args, "--state-dir", str(tmp_path / "state")]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ('evnt = "bon-odori-2026"', "[plugins.checkin] evnt: unknown key; did you mean `event`?"),
        ('sync_interval = "ten"', "[plugins.checkin] sync_interval: expected a number, not 'ten'"),
    ],
)
def test_readerd_run_stops_with_exit_78_naming_the_key(tmp_path: Path, section: str, named: str) -> None:
    result = _readerd(tmp_path, "run", "--simulate", "--config", str(_config(tmp_path, section)))
    assert result.returncode == 78, result.stdout + result.stderr  # ExitCode.CONFIG
    assert named in result.stdout + result.stderr


def test_the_split_plugin_host_stops_with_exit_78_too(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)  # the daemon's, made at its start: the host opens its store
    result = _readerd(tmp_path, "plugins", "--config", str(_config(tmp_path, 'evnt = "x"')))
    assert result.returncode == ExitCode.CONFIG, result.stdout + result.stderr
    assert "[plugins.checkin] evnt: unknown key; did you mean `event`?" in result.stdout + result.stderr


# --- the built-ins' declarations -----------------------------------------------------------------------
def _keys_read(source: str) -> dict[str, object]:
    """Each key a plugin's code reads from its configuration, with the default it uses there:
    ``config.get("key", default)`` and ``config_int(config, "plugin", "key", default)``."""
    found: dict[str, object] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func, args = node.func, node.args
        if isinstance(func, ast.Attribute) and func.attr == "get" and "config" in ast.unparse(func.value):
            if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                found[args[0].value] = _literal(args[1]) if len(args) > 1 else None
        elif isinstance(func, ast.Name) and func.id == "config_int" and len(args) == 4:
            found[ast.literal_eval(args[2])] = ast.literal_eval(args[3])
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "config":
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                found.setdefault(key.value, None)
    return found


def _literal(node: ast.expr) -> object:
    """The default as written, or None when it is computed (``service.library_id``)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


@pytest.mark.parametrize("name", sorted(BUILTIN_PLUGINS))
def test_every_key_a_builtin_reads_is_declared_with_the_default_it_uses(name: str) -> None:
    source = (REPO / "plugins" / name / "__init__.py").read_text(encoding="utf-8")
    read = _keys_read(source)
    listed, problems = plugin_keys(PluginsConfig(autoload=False, builtins=(name,)))
    assert problems == {}
    declared = {k.key.rsplit(".", 1)[1]: k.default for k in listed[name] or []}
    assert read, "the plugin reads no key: the scan is broken"
    for key, default in read.items():
        assert key in declared, f"{name} reads {key!r} but does not declare it"
        if default is not None and not isinstance(default, dict):
            assert declared[key] == default, (
                f"{name}.{key}: declared {declared[key]!r}, read with {default!r}"
            )


# --- readerctl help config -----------------------------------------------------------------------------
def test_readerctl_help_config_lists_readerds_and_the_plugins_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "readerd.toml"
    path.write_text('[plugins]\nautoload = false\nbuiltins = ["checkin", "library"]\n', encoding="utf-8")
    assert readerctl_main(["--config", str(path), "help", "config"]) == ExitCode.OK
    lines = capsys.readouterr().out.splitlines()
    (event,) = [line for line in lines if line.strip().startswith("plugins.checkin.event ")]
    assert event.split()[1:3] == ["string", "(none)"]
    (ils,) = [line for line in lines if line.strip().startswith("plugins.library.ils ")]
    assert ils.split()[1:3] == ["string", '"local"']
    (timeout,) = [line for line in lines if line.strip().startswith("plugins.hook_timeout ")]
    assert timeout.split()[1:3] == ["number", "5.0"]
    assert "[plugins.points]" not in lines  # not configured: not listed

    out = io.StringIO()
    assert run_config_help(path, as_json=True, out=out) == ExitCode.OK
    body: dict[str, Any] = json.loads(out.getvalue())
    checkin = {k["key"]: k for k in body["plugins"]["checkin"]}
    assert checkin["plugins.checkin.sync_interval"] == {
        "key": "plugins.checkin.sync_interval",
        "type": "number",
        "default": 10,
        "help": "seconds between pushes of offline check-ins",
    }
    assert {k["key"] for k in body["readerd"]["store"]} >= {"store.shared_url", "store.local_path"}


def test_readerctl_help_config_with_a_bad_file_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "readerd.toml"
    path.write_text("[plugins]\nbuiltins = 3\n", encoding="utf-8")
    assert run_config_help(path, as_json=False, out=io.StringIO()) == ExitCode.CONFIG
