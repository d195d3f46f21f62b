"""readerd for plugin authors: everything a plugin's code uses, in one import.

    from readerd.plugin import hookimpl, PluginContext, PluginEvent, CommandSpec, Arg, ArgType, Refusal

A plugin is an object with ``@hookimpl`` methods (docs/plugins.md; the hooks, their arguments and when
they run: :mod:`readerd.plugin.hookspecs`). It is handed events as :class:`PluginEvent`, publishes
results and reaches its store through :class:`PluginContext`, answers control commands it declares as
:class:`CommandSpec`, and refuses one with :class:`Refusal`. Its tests use the ``readerd`` pytest
fixture of :mod:`readerd.testing`, which runs a real daemon on simulated readers.

The daemon's own modules (the host, its replay and link) live beside this one in ``readerd.plugin`` but
are not for plugins: what is not exported here may change without notice.
"""

from __future__ import annotations

from readerd.errors import ReaderdError, Refusal, StoreBusyError, StoreUnavailableError
from readerd.plugin import business_time
from readerd.plugin.api import (
    CONTROL,
    OPERATOR,
    Arg,
    ArgType,
    CardOnReader,
    CardsOnReaders,
    CheckResult,
    CheckStatus,
    CommandSpec,
    ConfigKey,
    CtlCommand,
    DoctorCheck,
    EventInterest,
    JsonObject,
    Level,
    PluginContext,
    PluginEvent,
    ResultSpec,
    ScreenText,
)
from readerd.plugin.hookspecs import hookimpl
from readerd.plugin.store import MigrationContext, PluginDatabase, PluginStore, Schema, contract

__all__ = [
    "CONTROL",
    "OPERATOR",
    "Arg",
    "ArgType",
    "CardOnReader",
    "CardsOnReaders",
    "CheckResult",
    "CheckStatus",
    "CommandSpec",
    "ConfigKey",
    "CtlCommand",
    "DoctorCheck",
    "EventInterest",
    "JsonObject",
    "Level",
    "MigrationContext",
    "PluginContext",
    "PluginDatabase",
    "PluginEvent",
    "PluginStore",
    "ReaderdError",
    "Refusal",
    "ResultSpec",
    "Schema",
    "ScreenText",
    "StoreBusyError",
    "StoreUnavailableError",
    "business_time",
    "contract",
    "hookimpl",
]
