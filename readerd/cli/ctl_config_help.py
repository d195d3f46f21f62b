"""``readerctl help config``: every key of the configuration file, readerd's own and the plugins'.

readerd's keys come from :mod:`readerd.config` (each dataclass field is a key, its default the default,
the comment beside or above it the help); the plugins' from their ``readerd_config_keys`` declarations,
for the plugins the configuration loads (built-ins named in ``[plugins] builtins``, entry points named in
``[plugins] load``), as ``readerd`` checks them at start. Nothing runs but the plugins' import: no daemon
is asked, nothing is written.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from readerd.config import Config, PluginsConfig, config_path, load_config
from readerd.errors import ConfigError
from readerd.exitcodes import ExitCode

_FIELD = re.compile(r"^    (\w+): [^=]+(?:= .*?)?(?:\s+#\s*(?P<trailing>.*))?$")
_COMMENT = re.compile(r"^    #\s?(.*)$")
#: A declared :class:`~readerd.plugin.ArgType` in TOML words.
_ARG_TOML = {"object": "table", "array": "list"}


@dataclass(frozen=True)
class KeyHelp:
    """One key as listed: its dotted name, TOML type, default (None: none) and help."""

    key: str
    type: str
    default: object
    help: str

    def as_json(self) -> dict[str, object]:
        return {"key": self.key, "type": self.type, "default": _plain(self.default), "help": self.help}


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of ``cls``: the one beside it, else the lines just above."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        comment = _COMMENT.match(line)
        if comment:
            above.append(comment.group(1).strip())
            continue
        field = _FIELD.match(line)
        if field:
            found[field.group(1)] = field.group("trailing") or " ".join(above)
        above = []
    return found


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, tuple):
        return "list"
    return "table"


def readerd_keys() -> dict[str, list[KeyHelp]]:
    """readerd's own keys by section (``""``: the top level); a section's tables (``[plugins.<name>]``)
    are the plugins' and listed apart."""
    sections: dict[str, list[KeyHelp]] = {}

    def walk(instance: object, prefix: str) -> None:
        comments = _comments(type(instance))
        section = sections.setdefault(prefix, [])
        for field in dataclasses.fields(instance):  # type: ignore[arg-type] # a config dataclass
            if field.metadata.get("extra_tables"):
                continue
            value = getattr(instance, field.name)
            dotted = f"{prefix}.{field.name}" if prefix else field.name
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, dotted)
                continue
            section.append(KeyHelp(dotted, _toml_type(value), value, comments.get(field.name, "")))

    walk(Config(), "")
    return sections


def plugin_keys(plugins: PluginsConfig) -> tuple[dict[str, list[KeyHelp] | None], dict[str, str]]:
    """The keys each plugin the configuration loads declares (None: it declares none), and the plugins
    that could not be loaded or asked, with why."""
    from readerd.plugin.api import config_keys_of  # noqa: PLC0415 - loads the plugin face
    from readerd.plugin.discovery import discover  # noqa: PLC0415 - imports the plugins

    found = discover(plugins)
    problems = dict(found.problems)
    listed: dict[str, list[KeyHelp] | None] = {name: None for name, _ in found.pm.list_name_plugin()}
    for impl in found.pm.hook.readerd_config_keys.get_hookimpls():
        name = impl.plugin_name
        try:
            keys = config_keys_of(impl.function())
        except Exception as e:  # a plugin's failure is its own: reported, the others listed
            problems[name] = f"readerd_config_keys: {type(e).__name__}: {e}"
            continue
        listed[name] = (
            None
            if keys is None
            else [
                KeyHelp(
                    f"plugins.{name}.{k.name}", _ARG_TOML.get(str(k.type), str(k.type)), k.default, k.help
                )
                for k in keys
            ]
        )
    return listed, problems


def _line(key: KeyHelp, width: int) -> str:
    default = "(none)" if key.default is None else json.dumps(_plain(key.default), ensure_ascii=False)
    return f"  {key.key.ljust(width)}  {key.type:<7}  {default}  {key.help}".rstrip()


def run_config_help(given: Path | None, *, as_json: bool, out: TextIO | None = None) -> int:
    """Print every key (``--json``: one object); exit 78 when the configuration file does not load."""
    out = out or sys.stdout
    path = config_path(given)
    try:
        config = load_config(path) if path else Config()
    except ConfigError as e:
        sys.stderr.write(f"readerctl: {e}\n")
        return ExitCode.CONFIG
    own = readerd_keys()
    plugins, problems = plugin_keys(config.plugins)
    if as_json:
        body = {
            "readerd": {s: [k.as_json() for k in keys] for s, keys in own.items()},
            "plugins": {p: None if k is None else [x.as_json() for x in k] for p, k in plugins.items()},
            "problems": problems,
        }
        out.write(json.dumps(body, ensure_ascii=False, default=str) + "\n")
        return ExitCode.OK
    every = [k for keys in own.values() for k in keys] + [k for keys in plugins.values() for k in keys or []]
    width = max(len(k.key) for k in every)
    lines: list[str] = []
    for section, keys in own.items():
        if keys:
            lines += [f"[{section}]" if section else "(top level)", *(_line(k, width) for k in keys)]
    for plugin, declared in plugins.items():
        lines.append(f"[plugins.{plugin}]")
        if declared is None:
            lines.append(f"  (the plugin declares no keys: [plugins.{plugin}] is not checked)")
        else:
            lines += [_line(k, width) for k in declared]
    lines += [f"readerctl: plugin {plugin} left out: {why}" for plugin, why in problems.items()]
    if not plugins:
        lines.append("(no plugin configured: [plugins] builtins or load name them)")
    out.write("\n".join(lines) + "\n")
    return ExitCode.OK
