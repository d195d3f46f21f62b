"""The hooks a readerd plugin implements, with pluggy (project name ``readerd``).

A plugin is a module or object with functions marked ``@hookimpl``, named like the specs below, taking any
subset of the spec's arguments (pluggy passes them by name). Plugins are found through the ``readerd``
entry-point group and the built-in ``plugins`` package; see ``docs/plugins.md`` for a tutorial.

When the hooks run, and what that means for a plugin author:

- Event hooks run in the **plugin host**, which subscribes to the daemon's private event feed like any
  client: a slow plugin delays only itself, never card reading. Each call has a timeout
  (``plugins.hook_timeout``); a plugin that raises or times out is logged, reported as ``plugin.error``, and
  after ``plugins.quarantine_after`` failures in a row it receives nothing until the host is reloaded.
- Each plugin's event hooks are called one plugin at a time (not with pluggy's all-at-once ``hook()``), so
  one plugin raising does not keep the event from the others.
- A plugin sees only what it declared with :func:`readerd_event_interest`: by default the public fields of
  card and reader events; FeliCa blocks, the IDm or certificate details only when asked for by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from readerd.plugin.api import (
        CommandSpec,
        CtlCommand,
        DoctorCheck,
        EventInterest,
        PluginContext,
        PluginEvent,
    )

PROJECT = "readerd"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- lifecycle ---------------------------------------------------------------------------------------
@hookspec
def readerd_startup(context: PluginContext) -> None:
    """Called once when the host starts the plugin, before any event.

    ``context`` carries the plugin's name, its configuration section (``[plugins.<name>]``), the store
    handle, a logger bound to the plugin, and :meth:`PluginContext.publish` for results. Create tables or
    run migrations here. Raising here keeps the plugin out (it is reported and quarantined).
    """


@hookspec
def readerd_shutdown(context: PluginContext) -> None:
    """Called once when the host stops (daemon shutdown or plugin reload). Release what startup took."""


# --- what a plugin receives --------------------------------------------------------------------------
@hookspec(firstresult=True)
def readerd_event_interest() -> EventInterest | None:
    """Declare which events and which private fields this plugin receives (data minimisation).

    Called once per plugin at startup (firstresult per plugin: the host asks each plugin on its own).
    Return None for the default: every ``card.*`` and ``reader.*`` event with public fields only.
    """


@hookspec
def readerd_card_identified(event: PluginEvent, context: PluginContext) -> None:
    """A card was identified (``card.identified``): ``event.data`` has the pseudonym, member/MyKey ID,
    ``kind`` (``jpki`` / ``felica``), ``repeat``; ``event.private`` only the fields declared."""


@hookspec
def readerd_card_authenticated(event: PluginEvent, context: PluginContext) -> None:
    """The citizen proved possession with the PIN (``card.authenticated``)."""


@hookspec
def readerd_card_removed(event: PluginEvent, context: PluginContext) -> None:
    """The card left the reader (``card.removed``)."""


@hookspec
def readerd_card_read_aborted(event: PluginEvent, context: PluginContext) -> None:
    """A read ended without an identity (``card.read_aborted``): ``event.data["reason"]`` says why."""


@hookspec
def readerd_reader_changed(event: PluginEvent, context: PluginContext) -> None:
    """A reader came, went or failed (``reader.added`` / ``reader.removed`` / ``reader.error``)."""


@hookspec
def readerd_plugin_result(event: PluginEvent, context: PluginContext) -> None:
    """Another plugin published a result (``plugin.<name>.<event>``): how plugins cooperate without
    importing each other (the points plugin awards points for ``plugin.checkin.checked_in``).

    Only the types the plugin declared in :func:`readerd_event_interest` arrive (exact names, e.g.
    ``"plugin.checkin.checked_in"``); a plugin never receives its own results.
    """


# --- what a plugin offers ----------------------------------------------------------------------------
@hookspec
def readerd_commands(context: PluginContext) -> list[CommandSpec]:
    """Control-channel commands this plugin answers (``points.redeem``, ``library.checkout``...).

    Each :class:`CommandSpec` names the command (it must start with the plugin's name and a dot), its
    argument schema (checked before the handler runs) and the handler, which runs in the host with the
    hook timeout and returns a JSON object.
    """


@hookspec
def readerd_ctl_commands() -> list[CtlCommand]:
    """``readerctl`` subcommands this plugin contributes (``readerctl points settlement``...)."""


@hookspec
def readerd_doctor_checks() -> list[DoctorCheck]:
    """Checks for ``readerctl doctor``: each returns ok or a problem with its fix."""
