"""The plugin host: loads plugins, feeds them bus events, runs their commands, keeps them apart.

The host is a subscriber of the daemon's private feed like any client (DESIGN decision 1), on a thread of
its own (embedded in ``readerd run``) or in its own process (``readerd plugins``), so a slow or hung plugin
can never delay card reading. Each hook call of each plugin runs separately, under ``hook_timeout``: pluggy's
own ``hook(...)`` would stop at the first implementation that raises and keep the event from the rest.

Failure policy (DESIGN decision 15): an exception counts as a failure and ``quarantine_after`` failures in a
row quarantine the plugin; a timeout quarantines it at once, since its thread is abandoned still running.
A quarantined plugin receives nothing until the host is reloaded; ``readerctl status`` and
``readerctl plugins`` show it, and every failure is published as ``plugin.error``. Quarantine also revokes
the plugin's store handle, so a thread abandoned in a hook can never commit a late write.

Store failures are not the plugin's: a hook that raises :class:`StoreUnavailableError` (database down,
unreachable, unwritable) or :class:`StoreBusyError` (retries ran out) is published as ``plugin.error``
with that code (``store_unavailable``, ``store_busy``) and ``quarantined: false`` every time, and neither
counts towards ``quarantine_after`` nor resets the count. Quarantine needs a reload to undo; a shared
PostgreSQL that is down for a minute must not leave every ledger plugin quarantined after it is back,
and a plugin such as check-in keeps working offline on its local store between such failures.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any

import pluggy
import structlog
import zmq

from readerd import events as ev
from readerd.bus.eventlog import EventLog
from readerd.config import PluginsConfig
from readerd.errors import (
    GapUnrecoverableError,
    PluginError,
    ReaderdError,
    StoreBusyError,
    StoreUnavailableError,
)
from readerd.events import Event
from readerd.plugin import builtins as builtin_plugins
from readerd.plugin import hookspecs
from readerd.plugin.api import (
    CommandSpec,
    EventInterest,
    JsonObject,
    PluginContext,
    PluginEvent,
    check_plugin_name,
)
from readerd.plugin.store import PluginStore, Store
from readerd.reading.sessions import SessionTimeoutError, run_with_deadline

log = structlog.get_logger("readerd.plugins")

ENTRY_POINT_GROUP = "readerd"
#: Set (to anything but "" or "0") to load no third-party plugin, as PYTEST_DISABLE_PLUGIN_AUTOLOAD does.
DISABLE_AUTOLOAD_ENV = "READERD_DISABLE_PLUGIN_AUTOLOAD"
#: The built-in plugins (readerd/plugin/builtins.py), the same dict: tests and tools patch it here.
BUILTIN = builtin_plugins.BUILTIN

#: The hook that receives other plugins' results (``plugin.<name>.<event>``, declared by exact type).
PLUGIN_RESULT_HOOK = "readerd_plugin_result"


def load_object(spec: str) -> object:
    """``module`` or ``module:attribute``, as in entry points."""
    module, _, attribute = spec.partition(":")
    loaded: object = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        loaded = getattr(loaded, part)
    return loaded


#: Which hook an event type goes to.
EVENT_HOOKS: dict[str, str] = {
    "card.identified": "readerd_card_identified",
    "card.authenticated": "readerd_card_authenticated",
    "card.removed": "readerd_card_removed",
    "card.read_aborted": "readerd_card_read_aborted",
    "reader.added": "readerd_reader_changed",
    "reader.removed": "readerd_reader_changed",
    "reader.error": "readerd_reader_changed",
}


@dataclass
class LoadedPlugin:
    name: str
    plugin: object
    source: str  # builtin | entrypoint | given
    version: str | None
    context: PluginContext
    interest: EventInterest = field(default_factory=EventInterest)
    failures: int = 0
    quarantined: str | None = None  # why, once quarantined
    calls: int = 0
    last_seq: int = 0
    store_failures: int = 0  # hook calls that failed with store_unavailable / store_busy (not counted above)
    cursor: int | None = None  # the last feed seq this plugin was given (persisted in the store)
    missed: list[tuple[int, int]] = field(default_factory=list)  # seqs it never got, found at start
    replayed: int = 0  # events handed again after a start (missed by the last run, still in the log)

    @property
    def healthy(self) -> bool:
        return self.quarantined is None

    def info(self, hooks: list[str]) -> JsonObject:
        return {
            "name": self.name,
            "source": self.source,
            "version": self.version,
            "hooks": hooks,
            "quarantined": self.quarantined,
            "failures_in_a_row": self.failures,
            "calls": self.calls,
            "store_failures": self.store_failures,
            "cursor": self.cursor,
            "missed": [list(gap) for gap in self.missed],
            "replayed": self.replayed,
            "last_seq": self.last_seq,
            "receives": sorted(self.interest.types),
            "private_fields": sorted(self.interest.private),
        }


@dataclass(frozen=True)
class _Origin:
    """The event a hook call handles: what the results it publishes name as their ``cause``."""

    plugin: str
    event_id: str
    replayed: bool


#: The origin of the hook call running on this thread (a command handler or a plugin's own timer thread
#: has none, so a redemption published while the same plugin handles a tap is not taken for its result).
_HANDLING = threading.local()


@dataclass
class Backlog:
    """What the event log holds of a range a plugin was not given: ``(seq, type)`` of every event, and
    the envelopes (private fields included) from the first one logged within ``replay_window`` on."""

    types: list[tuple[int, str]] = field(default_factory=list)
    recent: list[JsonObject] = field(default_factory=list)


#: ``(after, upto, newer_than)`` -> the event log's :class:`Backlog` of ``(after, upto]``, None if pruned.
BacklogSource = Callable[[int, int, float], Backlog | None]


class PluginHost:
    def __init__(
        self,
        config: PluginsConfig,
        *,
        kiosk: str,
        publish: Callable[[Event], object],
        report: Callable[[str, str, str, str, bool], None] | None = None,
        store: Store | None = None,
        plugins: dict[str, object] | None = None,
        backlog: BacklogSource | None = None,
        flushed: Callable[[], bool] | None = None,
    ) -> None:
        """``publish`` takes a plugin result (:func:`readerd.events.plugin_result`, with its ``cause``
        and ``replayed``) to the bus; ``plugins`` adds plugin objects by name beside discovery (tests,
        embedding applications);
        ``report(plugin, hook, error_code, message, quarantined)`` publishes ``plugin.error``; ``store``
        gives each plugin ``store.for_plugin(name)`` as ``context.store`` (None: plugins get None), and
        keeps each plugin's cursor there; ``backlog(after, upto, newer_than)`` gives what the event log
        holds in ``(after, upto]``, or None when it no longer holds it all: what a start replays to the
        plugins that missed it (:func:`log_backlog`). ``flushed()`` waits until what the plugins published
        so far is logged (:meth:`readerd.bus.server.Bus.flushed`): cursors are written only after it."""
        self.config = config
        self.kiosk = kiosk
        self.store = store
        self._publish = publish
        self._report = report or (lambda *_args: None)
        self._given = dict(plugins or {})
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, LoadedPlugin] = {}
        self.rejected: dict[str, str] = {}  # plugins that could not be loaded, and why
        self.commands: dict[str, tuple[str, CommandSpec]] = {}
        self.gaps: list[tuple[int, int]] = []  # (first missing seq, last missing seq) of the feed
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="plugin-command")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._feed_seq: tuple[str, int] | None = None  # (run_id, last seq) seen on the feed
        self._cursor_write_failing = False
        self._backlog = backlog
        self._flushed = flushed
        self._drain_until = 0.0  # set by stop(): the feed thread delivers what arrived until then
        self._pending_cursors: dict[str, int] = {}  # advanced but not yet written (no hook was called)
        self._pending_run_id = ""
        self._lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------------------
    def load(self) -> None:
        """Find, register and start every enabled plugin; a broken one is reported and skipped."""
        for name in self.config.builtins:
            if name not in BUILTIN:
                self._reject(name, f"no built-in plugin {name!r} (there are: {', '.join(sorted(BUILTIN))})")
                continue
            self._add(name, functools.partial(load_object, BUILTIN[name]), "builtin", None)
        if self.config.autoload and os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0"):
            for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                version = entry.dist.version if entry.dist is not None else None
                self._add(entry.name, entry.load, "entrypoint", version)
        for name, plugin in self._given.items():
            self._add(name, functools.partial(_identity, plugin), "given", None)
        recorded = self._read_cursors()
        for loaded in list(self.plugins.values()):
            loaded.cursor = recorded.get(loaded.name)
            self._start_plugin(loaded)

    def _add(self, name: str, load: Callable[[], object], source: str, version: str | None) -> None:
        if name in self.config.disabled:
            log.info("plugin disabled by configuration", plugin=name)
            return
        try:
            check_plugin_name(name)
            if name in self.plugins:
                raise PluginError(name, "load", "a plugin of this name is already loaded")
            # Before loading: a name the store cannot prefix its tables with rejects the plugin cleanly.
            plugin_store = self.store.for_plugin(name) if self.store is not None else None
            plugin = load()
            if isinstance(plugin, type):
                plugin = plugin()
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as e:
            self._reject(name, f"bad hook implementation: {e}")
            return
        except (ImportError, ValueError, ReaderdError, AttributeError) as e:
            self._reject(name, f"{type(e).__name__}: {e}")
            return
        if version is None and isinstance(plugin, ModuleType):
            version = getattr(plugin, "__version__", None)
        context = PluginContext(
            name=name,
            config=dict(self.config.sections.get(name, {})),
            kiosk=self.kiosk,
            store=plugin_store,
            log=structlog.get_logger(f"readerd.plugin.{name}"),
            _publish=self._publish_result,
        )
        self.plugins[name] = LoadedPlugin(name, plugin, source, version, context)
        log.info("plugin loaded", plugin=name, source=source, version=version)

    def _reject(self, name: str, why: str) -> None:
        self.rejected[name] = why
        log.error("plugin not loaded", plugin=name, error=why)
        self._report(name, "load", "plugin_rejected", why, True)

    def _start_plugin(self, loaded: LoadedPlugin) -> None:
        interest = self._call(loaded, "readerd_event_interest", {})
        if loaded.quarantined:
            return
        if interest is not None:
            if not isinstance(interest, EventInterest):
                self._quarantine(
                    loaded, "readerd_event_interest", "bad_result", "did not return an EventInterest"
                )
                return
            loaded.interest = interest
        self._call(loaded, "readerd_startup", {"context": loaded.context})
        if not loaded.healthy:
            return
        specs = self._call(loaded, "readerd_commands", {"context": loaded.context}) or []
        for spec in specs if isinstance(specs, list) else []:
            if not isinstance(spec, CommandSpec) or not spec.name.startswith(f"{loaded.name}."):
                self._fail(
                    loaded, "readerd_commands", "bad_result", f"command {spec!r} is not <plugin>.<verb>"
                )
                continue
            self.commands[spec.name] = (loaded.name, spec)

    # -- calling one plugin's hook -----------------------------------------------------------------------
    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []) if plugin else []

    def _implements(self, loaded: LoadedPlugin, hook: str) -> bool:
        return any(i.plugin_name == loaded.name for i in getattr(self.pm.hook, hook).get_hookimpls())

    def _call(
        self, loaded: LoadedPlugin, hook: str, kwargs: JsonObject, origin: _Origin | None = None
    ) -> Any:  # noqa: ANN401 - a hook's result
        """Call ``loaded``'s implementation of ``hook`` (if any) under the timeout; None on failure.
        ``origin``: the event it handles, for the results it publishes from the hook's own thread."""
        impls = [i for i in getattr(self.pm.hook, hook).get_hookimpls() if i.plugin_name == loaded.name]
        if not impls:
            return None
        impl = impls[0]
        args = {name: kwargs[name] for name in impl.argnames}
        started = time.perf_counter()

        def call() -> Any:  # noqa: ANN401 - a hook's result
            _HANDLING.origin = origin
            try:
                return impl.function(**args)
            finally:
                _HANDLING.origin = None

        try:
            result = run_with_deadline(call, self.config.hook_timeout, name=f"plugin:{loaded.name}")
        except SessionTimeoutError:
            self._quarantine(loaded, hook, "timeout", f"no return within {self.config.hook_timeout} s")
            return None
        except (StoreUnavailableError, StoreBusyError) as e:  # the database's failure (module docstring)
            self._store_failure(loaded, hook, e)
            return None
        except Exception as e:  # a plugin's exception is its own failure, never the host's
            self._fail(loaded, hook, "exception", f"{type(e).__name__}: {e}")
            return None
        finally:
            loaded.calls += 1
            if self.config.trace:
                duration = round((time.perf_counter() - started) * 1000, 3)
                log.info("hook call", plugin=loaded.name, hook=hook, duration_ms=duration)
        loaded.failures = 0
        return result

    def _fail(self, loaded: LoadedPlugin, hook: str, code: str, message: str) -> None:
        loaded.failures += 1
        if loaded.failures >= self.config.quarantine_after:
            self._quarantine(loaded, hook, code, message)
            return
        log.error("plugin hook failed", plugin=loaded.name, hook=hook, error=code, message=message)
        self._report(loaded.name, hook, code, message, False)

    def _store_failure(self, loaded: LoadedPlugin, hook: str, error: ReaderdError) -> None:
        loaded.store_failures += 1
        log.warning(
            "plugin store failure", plugin=loaded.name, hook=hook, error=error.code, message=str(error)
        )
        self._report(loaded.name, hook, error.code, str(error), False)

    def _quarantine(self, loaded: LoadedPlugin, hook: str, code: str, message: str) -> None:
        loaded.quarantined = f"{hook}: {code}: {message}"
        if isinstance(loaded.context.store, PluginStore):
            loaded.context.store.revoke("quarantined")
        log.error("plugin quarantined", plugin=loaded.name, hook=hook, error=code, message=message)
        self._report(loaded.name, hook, code, message, True)

    # -- events -------------------------------------------------------------------------------------
    def dispatch(self, envelope: JsonObject, *, replayed: bool = False) -> None:
        """Hand one private-feed envelope to every plugin that wants it, one plugin at a time; then
        record the plugins' cursors. ``replayed``: the split host's catch-up of what was logged before it
        connected (the plugins get it marked, as the embedded host's replay)."""
        if self._feed_seq is None:  # the first message since the host started
            try:
                self._check_cursors(envelope)
            except Exception:  # a broken check must not keep this (or any) event from the plugins
                log.exception("plugin cursor check failed")
        self._track_seq(envelope)
        event_type = str(envelope.get("type"))
        if event_type == "heartbeat":
            return
        hook = _hook_for(event_type)
        delivered = (
            self._deliver(envelope, event_type, hook, replayed=replayed) if hook is not None else False
        )
        self._advance_cursors(int(envelope.get("seq", 0)), str(envelope.get("run_id", "")), flush=delivered)

    def _deliver(
        self,
        envelope: JsonObject,
        event_type: str,
        hook: str,
        *,
        to: set[str] | None = None,
        replayed: bool = False,
    ) -> bool:
        """True if some plugin's hook was called with the event. ``to``: a replay, for these plugins."""
        replayed = replayed or to is not None
        private = envelope.get("private") or {}
        delivered = False
        for loaded in list(self.plugins.values()):
            if loaded.quarantined or not loaded.interest.wants(event_type):
                continue
            if event_type.startswith(f"plugin.{loaded.name}."):
                continue  # never its own results: a plugin answering itself would loop
            if to is not None and loaded.name not in to:
                continue
            shown = loaded.interest.strip(private)
            event = PluginEvent.from_envelope(envelope, shown, replayed=replayed)
            delivered = delivered or self._implements(loaded, hook)
            origin = _Origin(loaded.name, event.id, event.replayed)
            self._call(loaded, hook, {"event": event, "context": loaded.context}, origin)
            loaded.last_seq = event.seq
        return delivered

    def _publish_result(self, plugin: str, event: str, data: JsonObject, reader: str | None) -> None:
        """A result published while its plugin handles an event names that event (``cause``: a screen
        matches a result to its tap) and says when it was replayed: the card is long gone, so a kiosk
        screen must not show it, while other plugins still act on it."""
        origin: _Origin | None = getattr(_HANDLING, "origin", None)  # set on the hook's own thread only
        if origin is not None and origin.plugin != plugin:
            origin = None
        cause = origin.event_id if origin is not None else None
        replayed = origin is not None and origin.replayed
        self._publish(ev.plugin_result(plugin, event, data, reader, cause=cause, replayed=replayed))

    # -- cursors: which seqs each plugin was given, across restarts (DESIGN decision 2) ---------------
    def _read_cursors(self) -> dict[str, int]:
        if self.store is None:
            return {}
        try:
            return self.store.read_cursors()
        except (StoreUnavailableError, StoreBusyError) as e:
            log.error("plugin cursors unreadable: no restart gap check this run", error=str(e))
            return {}

    def _advance_cursors(self, seq: int, run_id: str, *, flush: bool) -> None:
        """Every plugin not quarantined was given ``seq`` (delivered, or not of a type it wants, or its
        hook failed: that failure was reported on its own); a quarantined plugin's cursor stays, so the
        events it misses show at the next start.

        Written at once when a hook was called with the event; otherwise kept until the feed is idle or
        the host stops (:meth:`flush_cursors`). A local write costs a disk flush (milliseconds) and a tap
        brings several events no plugin handles; losing such an update in a crash is harmless, since
        the check at the next start counts only events a plugin would have been handed."""
        for loaded in self.plugins.values():
            if not loaded.quarantined and (loaded.cursor is None or seq > loaded.cursor):
                loaded.cursor = seq
                self._pending_cursors[loaded.name] = seq
        self._pending_run_id = run_id
        if flush:
            self.flush_cursors()

    def flush_cursors(self) -> None:
        """Write the cursors not yet recorded (feed thread only), once the results the plugins published
        while handling those events are logged: a cursor past an event whose result a crash lost would
        keep that event from the replay. Not logged in time (the bus is stuck): kept for the next try."""
        if not self._pending_cursors:
            return
        if self._flushed is not None and not self._flushed():
            log.warning("plugin results not yet logged; cursors not recorded", cursors=self._pending_cursors)
            return
        pending, self._pending_cursors = self._pending_cursors, {}
        self._write_cursors(pending, self._pending_run_id)

    def _write_cursors(self, cursors: dict[str, int], run_id: str) -> None:
        if self.store is None or not cursors:
            return
        try:
            self.store.write_cursors(cursors, run_id)
        except (StoreUnavailableError, StoreBusyError) as e:
            # Logged once per outage, never published: a plugin.error is itself a feed event, whose
            # cursor write would fail again.
            if not self._cursor_write_failing:
                log.error("plugin cursors not recorded", error=str(e))
            self._cursor_write_failing = True
            return
        if self._cursor_write_failing:
            log.info("plugin cursors recorded again")
        self._cursor_write_failing = False

    def _check_cursors(self, envelope: JsonObject) -> None:
        """At the first message after a start: each plugin's recorded cursor against the feed's position.

        The feed's ``seq`` continues across restarts (the event log), so a plugin whose cursor is behind
        the last seq before this message was not given those events: the previous run stopped its host
        before the bus (results still in flight), ran without this plugin (disabled, quarantined,
        ``--no-plugins``), or crashed. Those the event log still holds and that are younger than
        ``replay_window`` are handed to the plugin now, in order, marked ``replayed`` (at least once:
        DESIGN decision 2). The rest are missed: only the events the plugin would have been handed count
        (a type it wants, a hook it implements, not its own result); without the log, or when it no
        longer holds them, the whole range does. Missed events are logged, kept in the plugin's
        ``missed`` (``readerctl plugins``), published as ``plugin.error`` (``events_missed``) and added
        to ``feed_gaps``.
        """
        seq, run_id = int(envelope.get("seq", 0)), str(envelope.get("run_id", ""))
        before = seq if envelope.get("type") == "heartbeat" else seq - 1  # the last seq not seen here
        behind = {}
        for loaded in self.plugins.values():
            if loaded.quarantined or loaded.cursor is None or loaded.cursor == before:
                continue
            if loaded.cursor > before:
                log.warning(
                    "the feed is behind a plugin's cursor (event log removed?)",
                    plugin=loaded.name,
                    cursor=loaded.cursor,
                    feed_seq=before,
                )
                continue
            behind[loaded.name] = loaded.cursor
        found = None
        if behind and self._backlog is not None:
            window = self.config.replay_window
            newer_than = time.time() - window if window > 0 else float("inf")
            found = self._backlog(min(behind.values()), before, newer_than)
        types = found.types if found is not None else None
        replay = found.recent if found is not None else []
        # Older than the window (or all, without a log): missed, up to the first replayable seq.
        missed_upto = int(replay[0]["seq"]) - 1 if replay else before
        gaps: list[tuple[int, int]] = []
        for name, cursor in behind.items():
            if cursor >= missed_upto:
                continue  # all it missed is replayed
            gap = self._missed(self.plugins[name], cursor, missed_upto, types)
            if gap is not None:
                gaps.append(gap)
        if gaps:
            self.gaps.append((min(g[0] for g in gaps), max(g[1] for g in gaps)))
        self._replay(replay, behind)
        if replay and self._flushed is not None:
            self._flushed()  # the replayed events' results logged before the cursors move past them
        # From here on every plugin is at `before`: a gap is reported once, not at every start.
        moved = {}
        for loaded in self.plugins.values():
            if not loaded.quarantined:
                loaded.cursor = before
                moved[loaded.name] = before
        self._write_cursors(moved, run_id)

    def _replay(self, backlog: list[JsonObject], cursors: dict[str, int]) -> None:
        """Hand each logged event to the plugins whose cursor is before it, in seq order."""
        counts: dict[str, int] = {}
        for envelope in backlog:
            seq, event_type = int(envelope["seq"]), str(envelope.get("type"))
            to = {name for name, cursor in cursors.items() if cursor < seq}
            hook = _hook_for(event_type)
            if hook is None or not to:
                continue
            for name in to:
                if self._would_deliver(self.plugins[name], event_type):
                    counts[name] = counts.get(name, 0) + 1
            self._deliver(envelope, event_type, hook, to=to)
        for name, count in counts.items():
            self.plugins[name].replayed += count
            log.info(
                "events replayed to a plugin",
                plugin=name,
                count=count,
                first_seq=int(backlog[0]["seq"]),
                last_seq=int(backlog[-1]["seq"]),
            )

    def _missed(
        self, loaded: LoadedPlugin, cursor: int, before: int, types: list[tuple[int, str]] | None
    ) -> tuple[int, int] | None:
        """Report the events in ``(cursor, before]`` this plugin would have been given; their range."""
        if types is None:
            seqs = [cursor + 1, before]
            count = before - cursor
        else:
            seqs = [s for s, t in types if cursor < s <= before and self._would_deliver(loaded, t)]
            count = len(seqs)
        if not seqs:
            return None
        gap = (seqs[0], seqs[-1])
        loaded.missed.append(gap)
        log.error(
            "events missed by a plugin", plugin=loaded.name, first_seq=gap[0], last_seq=gap[1], count=count
        )
        message = (
            f"{count} event(s) in seq {gap[0]}..{gap[1]} were never given to the plugin (before this start)"
        )
        self._report(loaded.name, "feed", "events_missed", message, False)
        return gap

    def _would_deliver(self, loaded: LoadedPlugin, event_type: str) -> bool:
        """Whether an event of this type is handed to this plugin (what :meth:`_deliver` decides)."""
        hook = _hook_for(event_type)
        return (
            hook is not None
            and loaded.interest.wants(event_type)
            and not event_type.startswith(f"plugin.{loaded.name}.")
            and hook in self.hooks_of(loaded.name)
        )

    def _track_seq(self, envelope: JsonObject) -> None:
        """Record gaps in the feed's ``seq`` (replay arrives with the LAN bus's ``events.since``)."""
        run_id, seq = str(envelope.get("run_id")), int(envelope.get("seq", 0))
        if envelope.get("type") == "heartbeat":
            if self._feed_seq is not None and self._feed_seq[0] == run_id and seq > self._feed_seq[1]:
                self._gap(self._feed_seq[1] + 1, seq)
                self._feed_seq = (run_id, seq)
            elif self._feed_seq is None or self._feed_seq[0] != run_id:
                self._feed_seq = (run_id, seq)
            return
        if self._feed_seq is not None and self._feed_seq[0] == run_id and seq > self._feed_seq[1] + 1:
            self._gap(self._feed_seq[1] + 1, seq - 1)
        self._feed_seq = (run_id, seq)

    def _gap(self, first: int, last: int) -> None:
        self.gaps.append((first, last))
        log.error("events missed on the feed", first_seq=first, last_seq=last)

    # -- commands -----------------------------------------------------------------------------------
    def run_command(self, name: str, args: JsonObject) -> Future[JsonObject]:
        """Run a plugin command off the caller's thread (the bus thread must not wait for a plugin)."""
        owner, spec = self.commands[name]
        loaded = self.plugins[owner]
        checked = spec.check_args(args)
        return self._executor.submit(self._command, loaded, spec, checked)

    def _command(self, loaded: LoadedPlugin, spec: CommandSpec, args: JsonObject) -> JsonObject:
        if loaded.quarantined:
            raise PluginError(loaded.name, spec.name, f"quarantined ({loaded.quarantined})")
        try:
            result = run_with_deadline(
                lambda: spec.handler(args), self.config.hook_timeout, name=f"cmd:{spec.name}"
            )
        except SessionTimeoutError as e:
            self._quarantine(loaded, spec.name, "timeout", f"no return within {self.config.hook_timeout} s")
            raise PluginError(loaded.name, spec.name, "timed out") from e
        except ReaderdError:
            raise  # a refusal with its own code (insufficient_points ...), not a failure of the plugin
        except Exception as e:
            self._fail(loaded, spec.name, "exception", f"{type(e).__name__}: {e}")
            raise PluginError(loaded.name, spec.name, type(e).__name__) from e
        if not isinstance(result, dict):
            raise PluginError(loaded.name, spec.name, "the handler did not return a JSON object")
        return result

    # -- the feed thread ----------------------------------------------------------------------------
    def start(
        self,
        feed_endpoint: str,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        *,
        heartbeat_now: Callable[[], None] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Subscribe to the feed and return once the subscription is live (ZeroMQ's slow joiner): the
        first message proves it; ``heartbeat_now`` asks the daemon for one so that needs no waiting."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(feed_endpoint, context or zmq.Context.instance(), ready),
            name="plugin-host",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if heartbeat_now is not None:
                heartbeat_now()
            if time.monotonic() > deadline:
                raise PluginError("host", "start", f"no message on {feed_endpoint} within {timeout} s")

    def _run(self, endpoint: str, context: zmq.Context[zmq.Socket[bytes]], ready: threading.Event) -> None:
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)  # the private feed is local: keep every event for the plugins
        sock.connect(endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            while not self._stop.is_set():
                if sock.poll(50):
                    ready.set()
                    self._receive(sock)
                elif self._pending_cursors:
                    self.flush_cursors()  # the feed is idle
            # Stopping: the backends have stopped, so what already arrived is the rest of the run
            # (card.removed, plugin results). Hand it over within the budget instead of dropping it:
            # a dropped event is one the plugins never get (the cursors would show it at the next start).
            while time.monotonic() < self._drain_until and sock.poll(0):
                self._receive(sock)
            self.flush_cursors()
        finally:
            sock.close()

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        topic, body = sock.recv_multipart()
        try:
            self.dispatch(_json(body))
        except Exception:  # the host thread must outlive any event
            log.exception("plugin dispatch failed", topic=topic.decode(errors="replace"))

    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what already arrived (within half of ``timeout``), then ``readerd_shutdown``."""
        self._drain_until = time.monotonic() + timeout / 2
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for loaded in list(self.plugins.values()):
            if not loaded.quarantined:
                self._call(loaded, "readerd_shutdown", {"context": loaded.context})
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> JsonObject:
        return {
            "plugins": [p.info(self.hooks_of(p.name)) for p in self.plugins.values()],
            "rejected": dict(self.rejected),
            "quarantined": sorted(p.name for p in self.plugins.values() if p.quarantined),
            "feed_gaps": [list(g) for g in self.gaps],
        }


def _identity(plugin: object) -> object:
    return plugin


def _hook_for(event_type: str) -> str | None:
    """The hook an event type goes to: a card or reader hook, or other plugins' results."""
    hook = EVENT_HOOKS.get(event_type)
    if hook is None and event_type.startswith("plugin.") and event_type != "plugin.error":
        hook = PLUGIN_RESULT_HOOK
    return hook


def _epoch(envelope: JsonObject) -> float:
    """An envelope's ``ts`` in seconds (0 when unreadable: such an event counts as old)."""
    try:
        return datetime.fromisoformat(str(envelope["ts"])).timestamp()
    except (KeyError, ValueError):
        return 0.0


def _json(body: bytes) -> JsonObject:
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("an envelope is a JSON object")
    return value


def log_backlog(event_log: EventLog) -> BacklogSource:
    """``backlog`` for :class:`PluginHost` from the daemon's event log (the embedded host reads it in
    process), read a page at a time: only the recent tail is kept whole (the log may hold 100,000)."""

    def backlog(after: int, upto: int, newer_than: float) -> Backlog | None:
        found = Backlog()
        seq = after
        while seq < upto:
            try:
                answer = event_log.since(seq, limit=1000, private=True)
            except GapUnrecoverableError:
                return None
            for envelope in answer.events:
                if int(envelope["seq"]) > upto:
                    return found
                found.types.append((int(envelope["seq"]), str(envelope["type"])))
                if found.recent or _epoch(envelope) >= newer_than:
                    found.recent.append(envelope)
            if not answer.more or not answer.events:
                break
            seq = int(answer.events[-1]["seq"])
        return found

    return backlog
