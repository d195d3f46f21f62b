"""Which plugins a process loads, and how: the one loader of the daemon's host and of ``readerctl``.

Built-in plugins (``plugins/``) load only when a kiosk names them in ``[plugins] builtins``: a plugin a
kiosk does not use must not receive its cards. Third-party plugins come from the ``readerd`` entry-point
group when ``[plugins] load`` names them; an installed one not named is left out (``unnamed``), unless
``autoload`` is on (every installed one: not for kiosks) and :data:`DISABLE_AUTOLOAD_ENV` is not set
(as pytest's ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``); ``disabled`` names are left out whatever their source.
The daemon's host and ``readerctl`` go through the same list, so ``readerctl`` offers exactly the
subcommands of the plugins the daemon runs.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from readerd.config import BUILTIN_PLUGINS, PluginsConfig

ENTRY_POINT_GROUP = "readerd"
#: Set (to anything but "" or "0") to load no third-party plugin, as PYTEST_DISABLE_PLUGIN_AUTOLOAD does.
DISABLE_AUTOLOAD_ENV = "READERD_DISABLE_PLUGIN_AUTOLOAD"
#: The built-in plugins, name -> ``module:object`` (the same dict as the configuration's: tests patch it).
BUILTIN = BUILTIN_PLUGINS


def load_object(spec: str) -> object:
    """``module`` or ``module:attribute``, as in entry points."""
    module, _, attribute = spec.partition(":")
    loaded: object = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        loaded = getattr(loaded, part)
    return loaded


def instantiate(plugin: object) -> object:
    """A plugin class is instantiated once per process, so its state lives in its instance; a module or
    an object is registered as it is."""
    return plugin() if isinstance(plugin, type) else plugin


@dataclass(frozen=True)
class Candidate:
    """A plugin to load: ``load()`` imports it (and may raise: the caller reports it by name)."""

    name: str
    load: Callable[[], object]
    source: str  # builtin | entrypoint | given
    version: str | None = None


@dataclass
class Candidates:
    """What a configuration asks to load, in load order; the disabled ones and unknown built-ins apart."""

    load: list[Candidate] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)  # name -> why
    unnamed: list[str] = field(default_factory=list)  # installed entry points that ``load`` does not name


def autoload_allowed(config: PluginsConfig) -> bool:
    return config.autoload and os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")


def candidates(config: PluginsConfig, given: Mapping[str, object] | None = None) -> Candidates:
    """Built-ins first (in the configured order), then entry points, then ``given`` plugin objects
    (tests, embedding applications)."""
    found = Candidates()
    offered: list[Candidate] = []
    for name in config.builtins:
        if name not in BUILTIN:
            found.unknown[name] = f"no built-in plugin {name!r} (there are: {', '.join(sorted(BUILTIN))})"
            continue
        offered.append(Candidate(name, functools.partial(load_object, BUILTIN[name]), "builtin"))
    everything, installed = autoload_allowed(config), set[str]()
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        installed.add(entry.name)
        if not everything and entry.name not in config.load:
            found.unnamed.append(entry.name)
            continue
        version = entry.dist.version if entry.dist is not None else None
        offered.append(Candidate(entry.name, entry.load, "entrypoint", version))
    for name in config.load:
        if name not in installed and name not in config.disabled:
            found.unknown[name] = f"no installed plugin {name!r} (entry-point group {ENTRY_POINT_GROUP!r})"
    for name, plugin in (given or {}).items():
        offered.append(Candidate(name, functools.partial(_identity, plugin), "given"))
    for candidate in offered:
        (
            found.disabled.append(candidate.name)
            if candidate.name in config.disabled
            else found.load.append(candidate)
        )
    return found


def _identity(plugin: object) -> object:
    return plugin
