"""The daemon's errors: the tree of ``protocols.errors`` plus what only the daemon can fail at."""

from __future__ import annotations

from protocols.errors import *  # noqa: F403 - one tree, re-exported for daemon and plugin code
from protocols.errors import ReaderdError


class ConfigError(ReaderdError):
    """The configuration is invalid; the daemon exits 78 and systemd does not restart it."""

    code = "bad_config"


class StoreUnavailableError(ReaderdError):
    """A database (member directory, event log, plugin store) cannot be reached or written."""

    code = "store_unavailable"


class BusError(ReaderdError):
    """The ZeroMQ bus could not bind or send."""

    code = "bus_error"


class CardAbsentError(ReaderdError):
    """A command needs the card on a reader and there is none (or another card came meanwhile)."""

    code = "no_card"


class UnknownReaderError(ReaderdError):
    """A command named a reader this daemon does not have."""

    code = "unknown_reader"


class PluginError(ReaderdError):
    """A plugin hook raised or timed out; the plugin is named, the daemon goes on."""

    code = "plugin_error"

    def __init__(self, plugin: str, hook: str, message: str) -> None:
        self.plugin = plugin
        self.hook = hook
        super().__init__(f"plugin {plugin!r}, hook {hook}: {message}")
