"""Plugins loaded outside the daemon: ``readerctl`` subcommands and ``doctor`` checks they contribute.

``readerctl`` is a short-lived process on the same machine: it imports the same plugins the daemon would
(built-in ones and the ``readerd`` entry-point group, minus those the configuration disables, none when
``READERD_DISABLE_PLUGIN_AUTOLOAD`` is set) and asks them only the hooks that need no running daemon
(``readerd_ctl_commands``, ``readerd_doctor_checks``). A plugin that fails to import or to answer is
reported on stderr by name and left out: one broken plugin must not take ``readerctl`` down with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pluggy

from readerd.config import PluginsConfig
from readerd.plugin import hookspecs, loader
from readerd.plugin.api import CtlCommand, DoctorCheck


@dataclass
class Discovered:
    """The plugins a ``readerctl`` process loaded, and why others were left out."""

    pm: pluggy.PluginManager
    problems: dict[str, str] = field(default_factory=dict)

    def _each(self, hook: str) -> list[tuple[str, Any]]:
        results = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                results.append((impl.plugin_name, impl.function()))
            except Exception as e:  # a plugin's failure is its own: report it and go on
                self.problems[impl.plugin_name] = f"{hook}: {type(e).__name__}: {e}"
        return results

    def ctl_commands(self, reserved: set[str]) -> dict[str, CtlCommand]:
        """Each plugin's ``readerctl`` subcommands by name; a name readerctl already has is refused."""
        commands: dict[str, CtlCommand] = {}
        for plugin, offered in self._each("readerd_ctl_commands"):
            for command in offered or []:
                if not isinstance(command, CtlCommand):
                    self.problems[plugin] = f"readerd_ctl_commands returned {type(command).__name__}"
                elif command.name in reserved or command.name in commands:
                    self.problems[plugin] = f"readerctl {command.name} exists already"
                else:
                    commands[command.name] = command
        return commands

    def doctor_checks(self) -> list[tuple[str, DoctorCheck]]:
        checks: list[tuple[str, DoctorCheck]] = []
        for plugin, offered in self._each("readerd_doctor_checks"):
            checks.extend((plugin, check) for check in offered or [] if isinstance(check, DoctorCheck))
        return checks


def discover(config: PluginsConfig) -> Discovered:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    found = Discovered(pm)
    for candidate in loader.candidates(config).load:
        try:
            pm.register(loader.instantiate(candidate.load()), name=candidate.name)
        except Exception as e:  # ImportError, a bad hookimpl (PluginValidationError), a plugin's bug
            found.problems[candidate.name] = f"{type(e).__name__}: {e}"
    return found
