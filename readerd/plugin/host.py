"""The plugin host: loads plugins, feeds them bus events, runs their commands, keeps them apart.

The host is a subscriber of the daemon's private feed like any client (docs/design.md D1), on a thread of its
own (embedded in ``readerd run``) or in its own process (``readerd plugins``), so a slow or hung plugin can
never delay card reading. Embedded, it takes the feed from the bus in process (:mod:`readerd.bus.localfeed`):
the stamped envelopes themselves, in the same order, heartbeats included, never encoded as JSON for it nor
parsed back; ``readerd plugins`` gets the JSON over the private link. Each hook call of each plugin runs
separately, under ``hook_timeout``: pluggy's own ``hook(...)`` would stop at the first implementation that
raises and keep the event from the rest. The calls of one plugin run on its own long-lived worker thread, one
at a time (:mod:`readerd.plugin.worker`): a call that overruns is abandoned with its worker, a fresh worker
takes the plugin's next call, and once :data:`~readerd.plugin.worker.ABANDONED_LIMIT` abandoned workers are
still running the host asks to be restarted (:attr:`PluginHost.restart_reason`): the embedded host stops its
feed thread, so the daemon withholds its watchdog ping and systemd restarts it; ``readerd plugins`` exits
non-zero. An event is handed to every plugin's worker before the host waits for any
(:meth:`PluginHost.deliver`): the plugins handle it side by side; what they publish meanwhile is held per
call and released in the plugins' order (:class:`_HeldResults`), so a screen sees the same order at every tap.

Failure policy (docs/design.md D15): an exception counts as a failure and ``quarantine_after`` failures in a
row quarantine the plugin; a timeout quarantines it at once, since its worker is abandoned still running.
A quarantined plugin receives nothing and its commands are refused; ``readerctl status`` and
``readerctl plugins`` show it, and every failure is published as ``plugin.error``. Quarantine also revokes
the plugin's store handle, so a thread abandoned in a hook can never commit a late write.

Reinstatement: ``quarantine_cooldown`` seconds after its quarantine (checked at each feed message, heartbeats
included, and at each of its commands), or at once by the operator command ``plugins.reinstate``
(``readerctl plugins reinstate NAME``), the plugin gets a new context with a new store handle
(``store.for_plugin``) and ``readerd_startup`` again, then events and commands; the handle revoked at the
quarantine stays revoked (a thread still running in a hung hook keeps it). Logged and shown by
``readerctl plugins`` (``reinstated``); the events it was not given meanwhile are not handed again: they are
its ``missed``. A plugin quarantined before its start completed stays out until a restart.

Store failures are not the plugin's: a hook that raises :class:`StoreUnavailableError` (database down,
unreachable, unwritable) or :class:`StoreBusyError` (retries ran out) is published as ``plugin.error``
with that code (``store_unavailable``, ``store_busy``) and ``quarantined: false`` every time, and neither
counts towards ``quarantine_after`` nor resets the count: a shared PostgreSQL that is down for a minute
must not leave every ledger plugin quarantined after it is back, and a plugin such as check-in keeps working
offline on its local store between such failures. ``[store] statement_timeout`` (below ``hook_timeout``)
makes a slow or unreachable PostgreSQL such a failure rather than a hook timeout.

Data minimisation (docs/privacy.md): a plugin gets the private fields it asks for (``EventInterest.private``)
only as far as ``[plugins.<name>] grants`` allows, and its results reach the bus (the LAN, the event log)
only with the fields it declared (``readerd_result_fields``); a certificate serial, subject CN or IDm value
becomes ``"[redacted]"`` even in a declared field. What is dropped or redacted is counted per plugin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy
import structlog
import zmq

from readerd import __version__ as readerd_version
from readerd import events as ev
from readerd.bus.localfeed import LocalFeed
from readerd.config import PluginsConfig
from readerd.errors import (
    ConfigError,
    PluginError,
    ReaderdError,
    Refusal,
    StoreBusyError,
    StoreUnavailableError,
)
from readerd.events import Envelope, Event, EventType
from readerd.ops.deadline import SessionTimeoutError
from readerd.ops.worker import Countdown, Pending
from readerd.plugin import hookspecs, loader
from readerd.plugin.api import (
    LEVEL_RANK,
    SCREEN_FIELD,
    CommandSpec,
    EventInterest,
    JsonObject,
    PluginContext,
    PluginEvent,
    ResultSpec,
    check_config_keys,
    check_plugin_name,
    config_keys_of,
)
from readerd.plugin.replay import CURSOR_IDLE, BacklogSource, FeedCursors, Tracked
from readerd.plugin.store import PluginStore, Store
from readerd.plugin.worker import ABANDONED_LIMIT, Inline, Workers

log = structlog.get_logger("readerd.plugins")

#: What a certificate serial, subject CN or IDm in a plugin's result becomes (docs/privacy.md).
REDACTED = "[redacted]"
#: The private fields whose values never reach the bus in a plugin's result, whoever was granted them.
SECRET_FIELDS = ("serial", "subject_cn", "idm")
#: Shorter values are not matched (a count of 3 is not a serial): real ones are 14+ characters.
_MIN_SECRET = 4

#: The hook that receives other plugins' results (``plugin.<name>.<event>``, declared by exact type).
PLUGIN_RESULT_HOOK = "readerd_plugin_result"

#: What the host publishes once the plugins have handled a tap and the results it led to (``cause``).
HANDLED = "plugin.handled"
#: The events a screen waits on: each gets one ``plugin.handled`` (none when replayed).
HANDLED_FOR = frozenset({"card.identified", "card.authenticated"})
#: Seconds a tap's cascade may wait for a result still on its way before ``plugin.handled`` goes out
#: with ``settled: false`` (a result the bus dropped, a hook abandoned at its timeout); checked at each
#: feed message, heartbeats included.
SETTLE_TIMEOUT = 3.0
#: Seconds a hook may run before the results published so far for the event go out without waiting for
#: the other plugins (and its later ones at once): a plugin that shows "checking..." and asks a slow server.
RESULTS_AFTER = 0.02


#: Messages the feed thread takes off its socket before the cursors are written for them (one batch).
BATCH_MAX = 64
#: How the bus begins an envelope on the private feed: its seq and run id, read without parsing the rest.
_HEAD = re.compile(rb'\{"v":\d+,"seq":(\d+),"run_id":"([^"\\]*)"')

#: Which hook an event type goes to.
EVENT_HOOKS: dict[str, str] = {
    "card.identified": "readerd_card_identified",
    "card.authenticated": "readerd_card_authenticated",
    "card.removed": "readerd_card_removed",
    "card.read_aborted": "readerd_card_read_aborted",
    "reader.added": "readerd_reader_changed",
    "reader.removed": "readerd_reader_changed",
    "reader.error": "readerd_reader_changed",
    "member.enrolled": "readerd_member_enrolled",
    "member.withdrawn": "readerd_member_withdrawn",
}
#: The hooks of card events: ``[plugins.routing]`` applies to them (and to other plugins' results).
CARD_HOOKS = frozenset(hook for event, hook in EVENT_HOOKS.items() if event.startswith("card."))


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
    quarantined_at: float | None = None  # the host's clock at the quarantine (for the cool-down)
    started: bool = False  # its start completed (a plugin quarantined before that is not reinstated)
    reinstated: int = 0  # times it came back from quarantine (cool-down or plugins.reinstate)
    resume_from: int | None = None  # reinstated: its cursor then (what it missed shows at the next event)
    calls: int = 0
    last_seq: int = 0
    store_failures: int = 0  # hook calls that failed with store_unavailable / store_busy (not counted above)
    cursor: int | None = None  # the last feed seq this plugin was given (persisted in the store)
    missed: list[tuple[int, int]] = field(default_factory=list)  # seqs it never got, found at start
    replayed: int = 0  # events handed again after a start (missed by the last run, still in the log)
    asked: frozenset[str] = frozenset()  # private fields it asked for, granted or not
    results: dict[str, frozenset[str]] = field(default_factory=dict)  # readerd_result_fields
    specs: dict[str, ResultSpec] = field(default_factory=dict)  # the same, with the screen texts
    fields_dropped: int = 0  # undeclared result fields left out of its results
    values_redacted: int = 0  # certificate serial / subject CN / IDm values replaced in its results
    handed: deque[str] = field(default_factory=lambda: deque(maxlen=64))  # secret values it was given
    warned: set[str] = field(default_factory=set)  # what was already logged (once each)

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
            "reinstated": self.reinstated,
            "calls": self.calls,
            "store_failures": self.store_failures,
            "cursor": self.cursor,
            "missed": [list(gap) for gap in self.missed],
            "replayed": self.replayed,
            "last_seq": self.last_seq,
            "receives": sorted(self.interest.types),
            "private_fields": sorted(self.interest.private),
            "private_not_granted": sorted(self.asked - self.interest.private),
            "results": {event: sorted(names) for event, names in sorted(self.results.items())},
            # the statuses each result has words for (ResultSpec.texts; "*": any other)
            "screen_texts": {
                event: sorted(spec.texts) for event, spec in sorted(self.specs.items()) if spec.texts
            },
            "result_fields_dropped": self.fields_dropped,
            "result_values_redacted": self.values_redacted,
        }


@dataclass(frozen=True)
class _Origin:
    """The event a hook call handles: what the results it publishes name as their ``cause``, and where
    they wait while the host hands the same event to the other plugins (``held``)."""

    plugin: str
    event_id: str
    replayed: bool
    held: _HeldResults | None = None


class _HeldResults:
    """The results one hook call published, held back until the host takes them (any thread adds, the
    host's thread releases). The plugins handle an event side by side, yet their results go out in the
    plugins' order, together, as when they handled it one after the other: a screen shows them in the
    same order at every tap (docs/plugins.md, "One event, every plugin")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] | None = []  # None once released: later results are not held

    def hold(self, event: Event) -> bool:
        """Keep ``event`` for :meth:`release`; False once released (the caller publishes it itself)."""
        with self._lock:
            if self._events is None:
                return False
            self._events.append(event)
            return True

    def release(self) -> list[Event]:
        """What was held, in order; whatever comes later is not held."""
        with self._lock:
            events, self._events = self._events or [], None
        return events


#: The origin of the hook call running on this thread (a command handler or a plugin's own timer thread
#: has none, so a redemption published while the same plugin handles a tap is not taken for its result).
_HANDLING = threading.local()


@dataclass
class _HookCall:
    """A hook call handed to its plugin's worker, its result not yet taken
    (:meth:`PluginHost._begin_call`)."""

    loaded: LoadedPlugin
    hook: str
    pending: Pending[Any] | Inline[Any]
    started: float
    held: _HeldResults | None = None  # the results it published, until the host releases them


@dataclass
class _Cascade:
    """A tap (``card.identified``, ``card.authenticated``) and the results it led to, through other
    plugins' results too, until none is on its way: then ``plugin.handled`` (docs/plugins.md)."""

    event_id: str
    reader: str | None
    touched: float  # the host's clock at its last step (for SETTLE_TIMEOUT)
    outstanding: int = 0  # results published for it that have not come back on the feed yet
    plugins: list[str] = field(default_factory=list)  # whose hooks were called, first call first
    results: list[JsonObject] = field(default_factory=list)  # {id, type, plugin, status?, level?}


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
        clock: Callable[[], float] | None = None,
        abandoned_limit: int = ABANDONED_LIMIT,
        publish_lazily: Callable[[Event], object] | None = None,
        nudge: Callable[[], object] | None = None,
    ) -> None:
        """``publish`` takes a plugin result (:func:`readerd.events.plugin_result`, with its ``cause``
        and ``replayed``) to the bus; ``plugins`` adds plugin objects by name beside discovery (tests,
        embedding applications);
        ``report(plugin, hook, error_code, message, quarantined)`` publishes ``plugin.error``; ``store``
        gives each plugin ``store.for_plugin(name)`` as ``context.store`` (None: plugins get None), and
        keeps each plugin's cursor there; ``backlog(after, upto, newer_than)`` gives what the event log
        holds in ``(after, upto]``, or None when it no longer holds it all: what a start replays to the
        plugins that missed it (:func:`log_backlog`). ``flushed()`` waits until what the plugins published
        so far is logged (:meth:`readerd.bus.server.Bus.flushed`): cursors are written only after it.
        ``clock``: monotonic seconds for ``quarantine_cooldown`` (tests pass their own).
        ``abandoned_limit``: abandoned plugin workers still running at which the host asks to be restarted
        (:data:`~readerd.plugin.worker.ABANDONED_LIMIT`; tests pass a small one).
        ``publish_lazily`` and ``nudge`` (the embedded host: :meth:`readerd.bus.server.Bus.publish` with
        ``lazy`` and :meth:`~readerd.bus.server.Bus.nudge`): the results the plugins publish while they
        handle an event are queued without waking the bus, and the host nudges it once every plugin had
        the event, or once a hook has run :data:`RESULTS_AFTER` s: the results of one event leave in one
        batch, not each in a round of the bus and of this host (docs/performance.md)."""
        self.config = config
        self.kiosk = kiosk
        self.store = store
        self._publish = publish
        self._publish_lazily = publish_lazily if nudge is not None else None
        self._nudge = nudge
        self._report = _one_line_reports(report or (lambda *_args: None))  # plugin.error: one line
        self._given = dict(plugins or {})
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, LoadedPlugin] = {}
        self.rejected: dict[str, str] = {}  # plugins that could not be loaded, and why
        self.commands: dict[str, tuple[str, CommandSpec]] = {}
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="plugin-command")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drain_until = 0.0  # set by stop(): the feed thread delivers what arrived until then
        self.cursors = FeedCursors(self, config, store=store, backlog=backlog, flushed=flushed)
        self._lock = threading.Lock()
        self._card_secrets: deque[str] = deque(maxlen=64)  # of the cards identified lately, any reader
        self._clock: Callable[[], float] = clock or time.monotonic
        self._reinstating = threading.Lock()  # one reinstatement at a time (feed thread, commands)
        self._cascades: dict[str, _Cascade] = {}  # open taps by event id (module docstring)
        self._roots: dict[str, str] = {}  # event id (a tap, a result of one) -> the tap's id
        self._cascade_lock = threading.Lock()  # hook threads count results, the feed thread the rest
        self._workers = Workers(abandoned_limit)  # each plugin's hook calls run on its own worker
        self._light_topics: dict[bytes, bool] = {}  # feed topic -> only its seq is needed (_light)
        self._impls: dict[tuple[str, str], pluggy.HookImpl | None] = {}  # (plugin, hook) -> _impl
        #: Why the host asks to be restarted (too many abandoned workers), or None (module docstring).
        self.restart_reason: str | None = None

    # -- loading ------------------------------------------------------------------------------------
    def load(self) -> None:
        """Find, register and start every enabled plugin; a broken one is reported and skipped."""
        found = loader.candidates(self.config, self._given)
        for name, why in found.unknown.items():
            self._reject(name, why)
        for name in found.disabled:
            log.info("plugin disabled by configuration", plugin=name)
        for name in found.unnamed:
            log.info(
                "installed plugin not loaded: not named",
                plugin=name,
                enable=f'[plugins] load = ["{name}"] (and [plugins.{name}] grants for private fields)',
            )
        for candidate in found.load:
            self._add(candidate)
        known = {*self.plugins, *self.rejected, *found.disabled}
        unrouted = sorted(self.config.routed_names() - known)
        if unrouted:  # before any plugin starts: exit 78 (docs/configuration.md)
            raise ConfigError(
                f"plugins.routing: no plugin {', '.join(unrouted)} is loaded "
                f"(loaded: {', '.join(sorted(self.plugins)) or 'none'})"
            )
        self._check_config()  # before any plugin starts: a misspelt key must not run silently
        recorded = self.cursors.read()
        for loaded in list(self.plugins.values()):
            loaded.cursor = recorded.get(loaded.name)
            self._start_plugin(loaded)

    def _add(self, candidate: loader.Candidate) -> None:
        name, version = candidate.name, candidate.version
        try:
            check_plugin_name(name)
            if name in self.plugins:
                raise PluginError(name, "load", "a plugin of this name is already loaded")
            # Before loading: a name the store cannot prefix its tables with rejects the plugin cleanly.
            plugin_store = self.store.for_plugin(name) if self.store is not None else None
            plugin = loader.instantiate(candidate.load())
            self.pm.register(plugin, name=name)
            self._impls.clear()
            self._light_topics.clear()
        except pluggy.PluginValidationError as e:
            self._reject(name, f"bad hook implementation: {e}")
            return
        except (ImportError, ValueError, ReaderdError, AttributeError) as e:
            self._reject(name, f"{type(e).__name__}: {e}")
            return
        if version is None and isinstance(plugin, ModuleType):
            version = getattr(plugin, "__version__", None)
        if version is None and candidate.source == "builtin":
            version = readerd_version  # the built-ins ship with readerd: its version is theirs
        context = PluginContext(
            name=name,
            config={k: v for k, v in self.config.sections.get(name, {}).items() if k != "grants"},
            kiosk=self.kiosk,
            store=plugin_store,
            log=structlog.get_logger(f"readerd.plugin.{name}"),
            _publish=self._publish_result,
        )
        self.plugins[name] = LoadedPlugin(name, plugin, candidate.source, version, context)
        log.info("plugin loaded", plugin=name, source=candidate.source, version=version)

    def _check_config(self) -> None:
        """Each plugin's ``[plugins.<name>]`` against the keys it declares (``readerd_config_keys``):
        :class:`ConfigError` (exit 78) naming every unknown or mistyped key of every plugin; a plugin that
        declares none is not checked, and the log says so once."""
        problems: list[str] = []
        for loaded in self.plugins.values():
            try:
                keys = config_keys_of(self._call(loaded, "readerd_config_keys", {}))
            except ValueError as e:
                problems.append(f"plugin {loaded.name}: {e}")
                continue
            if keys is None:
                log.info(
                    "plugin configuration not checked: the plugin declares no keys",
                    plugin=loaded.name,
                    declare="readerd_config_keys (docs/plugins.md)",
                )
                continue
            section = self.config.sections.get(loaded.name, {})
            problems += [str(problem) for problem in check_config_keys(loaded.name, keys, section)]
        if problems:
            raise ConfigError("; ".join(problems))

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
            self._grant(loaded, interest)
        if not self._declare_results(loaded):
            return
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
        loaded.started = loaded.healthy

    def _declare_results(self, loaded: LoadedPlugin) -> bool:
        """Ask for its ``readerd_result_fields``; False once a bad answer or a failure quarantined it."""
        results = self._call(loaded, "readerd_result_fields", {})
        if results is not None:
            specs = _result_specs(results)
            if isinstance(specs, str):
                self._quarantine(loaded, "readerd_result_fields", "bad_result", specs)
            else:
                loaded.specs = specs
                loaded.results = {event: spec.fields for event, spec in specs.items()}
        return loaded.healthy

    def _grant(self, loaded: LoadedPlugin, interest: EventInterest) -> None:
        """What it asked for, as far as ``[plugins.<name>] grants`` allows (validated at config load)."""
        granted = self.config.grants(loaded.name)
        loaded.asked = interest.private
        loaded.interest = EventInterest(interest.types, interest.private & granted, interest.felica_services)
        if interest.private - granted:
            log.warning(
                "plugin asks for private fields it is not granted",
                plugin=loaded.name,
                not_granted=sorted(interest.private - granted),
                grant=f"[plugins.{loaded.name}] grants = [...] (docs/privacy.md)",
            )

    # -- calling one plugin's hook -----------------------------------------------------------------------
    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []) if plugin else []

    def _implements(self, loaded: LoadedPlugin, hook: str) -> bool:
        return self._impl(loaded.name, hook) is not None

    def _impl(self, name: str, hook: str) -> pluggy.HookImpl | None:
        """The plugin's implementation of ``hook``, looked up once (plugins register only at load)."""
        key = (name, hook)
        if key not in self._impls:
            found = [i for i in getattr(self.pm.hook, hook).get_hookimpls() if i.plugin_name == name]
            self._impls[key] = found[0] if found else None
        return self._impls[key]

    def _call(
        self, loaded: LoadedPlugin, hook: str, kwargs: JsonObject, origin: _Origin | None = None
    ) -> Any:  # noqa: ANN401 - a hook's result
        """Call ``loaded``'s implementation of ``hook`` (if any) under the timeout; None on failure.
        ``origin``: the event it handles, for the results it publishes from the hook's own thread."""
        call = self._begin_call(loaded, hook, kwargs, origin)
        return None if call is None else self._finish_call(call)

    def _begin_call(
        self,
        loaded: LoadedPlugin,
        hook: str,
        kwargs: JsonObject,
        origin: _Origin | None = None,
        countdown: Countdown | None = None,
    ) -> _HookCall | None:
        """Hand the call of :meth:`_call` to the plugin's worker and return at once (None: the plugin
        does not implement ``hook``); :meth:`_finish_call` waits for it. ``countdown``: see
        :meth:`deliver`."""
        impl = self._impl(loaded.name, hook)
        if impl is None:
            return None
        args = {name: kwargs[name] for name in impl.argnames}

        def call() -> Any:  # noqa: ANN401 - a hook's result
            _HANDLING.origin = origin
            try:
                return impl.function(**args)
            finally:
                _HANDLING.origin = None

        started = time.perf_counter()
        held = origin.held if origin is not None else None
        return _HookCall(loaded, hook, self._workers.begin(loaded.name, call, countdown), started, held)

    def _finish_call(self, call: _HookCall) -> Any:  # noqa: ANN401 - a hook's result
        """The hook's result, None on failure (quarantine and reports as the module docstring says). The
        timeout counts from the hand-over (:meth:`_begin_call`), whatever else the host waited for."""
        loaded, hook = call.loaded, call.hook
        timeout = self.config.hook_timeout
        try:
            waited = time.perf_counter() - call.started
            nudge = None
            if call.held is not None:  # a hook that takes long: its results so far go out now
                nudge = (max(0.0, RESULTS_AFTER - waited), lambda: self._release(call, nudge=True))
            try:
                result = call.pending.wait(max(0.0, timeout - waited), nudge)
            finally:
                self._release(call)  # before any report of its failure, as when published at once
        except SessionTimeoutError:
            self._quarantine(loaded, hook, "timeout", f"no return within {timeout} s")
            self._check_workers()
            return None
        except (StoreUnavailableError, StoreBusyError) as e:  # the database's failure (module docstring)
            self._store_failure(loaded, hook, e)
            return None
        except Exception as e:  # a plugin's exception is its own failure, never the host's
            self._fail(loaded, hook, "exception", error_line(e), e)
            return None
        finally:
            loaded.calls += 1
            if self.config.trace:
                duration = round((time.perf_counter() - call.started) * 1000, 3)
                log.info("hook call", plugin=loaded.name, hook=hook, duration_ms=duration)
        loaded.failures = 0
        return result

    def _release(self, call: _HookCall, *, nudge: bool = False) -> None:
        """Publish what the hook call published so far (:class:`_HeldResults`), lazily where the bus
        takes that; later ones go at once. ``nudge``: and send what is queued now."""
        if call.held is None:
            return
        events = call.held.release()
        for event in events:
            (self._publish_lazily or self._publish)(event)
        if nudge and events and self._nudge is not None:
            self._nudge()

    def _check_workers(self) -> None:
        """After an abandoned call: past the limit of abandoned workers still running, ask for a restart
        (once): the feed thread stops (the daemon's health check then fails), ``readerd plugins`` exits."""
        if self.restart_reason is not None or not self._workers.exhausted:
            return
        abandoned = self._workers.status()
        self.restart_reason = (
            f"{abandoned['running']} abandoned plugin workers still running (limit {abandoned['limit']})"
        )
        log.error(
            "plugin host stops to be restarted: hung plugin calls hold threads that cannot be freed",
            abandoned_running=abandoned["running"],
            abandoned_total=abandoned["total"],
            limit=abandoned["limit"],
            quarantined=sorted(p.name for p in self.plugins.values() if p.quarantined),
        )
        self._stop.set()

    def _fail(
        self, loaded: LoadedPlugin, hook: str, code: str, message: str, error: BaseException | None = None
    ) -> None:
        """``error``: the exception, whose traceback goes to the log (never to ``plugin.error``)."""
        loaded.failures += 1
        if loaded.failures >= self.config.quarantine_after:
            self._quarantine(loaded, hook, code, message, error)
            return
        log.error(
            "plugin hook failed", plugin=loaded.name, hook=hook, error=code, message=message, exc_info=error
        )
        self._report(loaded.name, hook, code, message, False)

    def _store_failure(self, loaded: LoadedPlugin, hook: str, error: ReaderdError) -> None:
        loaded.store_failures += 1
        log.warning(
            "plugin store failure", plugin=loaded.name, hook=hook, error=error.code, message=str(error)
        )
        self._report(loaded.name, hook, error.code, str(error), False)

    def _quarantine(
        self, loaded: LoadedPlugin, hook: str, code: str, message: str, error: BaseException | None = None
    ) -> None:
        loaded.quarantined = f"{hook}: {code}: {message}"
        loaded.quarantined_at = self._clock()
        if isinstance(loaded.context.store, PluginStore):
            loaded.context.store.revoke("quarantined")
        log.error(
            "plugin quarantined", plugin=loaded.name, hook=hook, error=code, message=message, exc_info=error
        )
        self._report(loaded.name, hook, code, message, True)

    # -- reinstatement (module docstring) ------------------------------------------------------------
    def reinstate(self, name: str) -> JsonObject:
        """``plugins.reinstate {name}``: bring a quarantined plugin back now (operator role). Refusal
        ``unknown_plugin``, or ``not_reinstatable`` for one quarantined before its start completed."""
        loaded = self.plugins.get(name)
        if loaded is None:
            raise Refusal("unknown_plugin", f"no plugin {name!r} is loaded", plugins=sorted(self.plugins))
        if loaded.quarantined and not loaded.started:
            raise Refusal(
                "not_reinstatable",
                f"plugin {name!r} was quarantined before its start completed ({loaded.quarantined}); "
                "restart the daemon (or the plugin host) after fixing it",
            )
        reinstated = self._reinstate(loaded, "operator")
        return {"plugin": name, "reinstated": reinstated, "quarantined": loaded.quarantined}

    def reinstate_command(self, args: JsonObject) -> Future[JsonObject]:
        """The control command's handler: the plugin's ``readerd_startup`` runs off the caller's thread."""
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise Refusal("bad_request", "plugins.reinstate {name}: the plugin's name")
        return self._executor.submit(self.reinstate, name)

    def _cool_down(self) -> None:
        """Reinstate the plugins whose ``quarantine_cooldown`` has passed (feed thread, commands)."""
        cooldown = self.config.quarantine_cooldown
        if cooldown <= 0:
            return
        now = self._clock()
        for loaded in list(self.plugins.values()):
            since = loaded.quarantined_at
            if loaded.quarantined and loaded.started and since is not None and now - since >= cooldown:
                self._reinstate(loaded, "cool-down")

    def _reinstate(self, loaded: LoadedPlugin, why: str) -> bool:
        """A new context and store handle, ``readerd_startup`` again; False if it was not quarantined or
        its startup failed (then it is quarantined again, and the cool-down starts over)."""
        with self._reinstating:
            if not loaded.quarantined:
                return False
            previous = loaded.quarantined
            store = self.store.for_plugin(loaded.name) if self.store is not None else None
            loaded.context = dataclasses.replace(loaded.context, store=store)  # the old one stays revoked
            loaded.failures = 0
            before = loaded.quarantined_at
            self._call(loaded, "readerd_startup", {"context": loaded.context})
            if loaded.quarantined_at != before:  # it timed out: quarantined again by _call
                return False
            if loaded.failures:
                self._quarantine(loaded, "readerd_startup", "reinstate_failed", "its startup failed again")
                return False
            loaded.quarantined = None
            loaded.quarantined_at = None
            loaded.reinstated += 1
            loaded.resume_from = loaded.cursor
            self._refresh_commands(loaded)
        log.warning("plugin reinstated", plugin=loaded.name, by=why, was=previous)
        return True

    def _refresh_commands(self, loaded: LoadedPlugin) -> None:
        """Its commands again (a handler may hold the old context): those registered at the start only,
        since the bus knows no other."""
        specs = self._call(loaded, "readerd_commands", {"context": loaded.context}) or []
        for spec in specs if isinstance(specs, list) else []:
            known = self.commands.get(getattr(spec, "name", ""))
            if isinstance(spec, CommandSpec) and known is not None and known[0] == loaded.name:
                self.commands[spec.name] = (loaded.name, spec)

    def _note_resumed(self, before: int) -> None:
        """A reinstated plugin's first feed message (``before``: the last seq before it): what came
        meanwhile is what it missed."""
        for loaded in self.plugins.values():
            if loaded.resume_from is None or loaded.quarantined:
                continue
            if before > loaded.resume_from:
                loaded.missed.append((loaded.resume_from + 1, before))
                log.warning("events missed while quarantined", plugin=loaded.name, seqs=loaded.missed[-1])
            loaded.resume_from = None

    # -- events -------------------------------------------------------------------------------------
    def dispatch(self, envelope: JsonObject | Envelope, *, replayed: bool = False) -> None:
        """Hand one private-feed envelope to every plugin that wants it (side by side: :meth:`deliver`); then
        record the plugins' cursors. ``replayed``: the split host's catch-up of what was logged before it
        connected (the plugins get it marked, as the embedded host's replay)."""
        if not isinstance(envelope, Envelope):
            envelope = Envelope.from_dict(envelope)
        self.cursors.observe(envelope)
        self._cool_down()
        self._note_resumed(envelope.seq if envelope.event.type == EventType.HEARTBEAT else envelope.seq - 1)
        if envelope.event.type == EventType.HEARTBEAT:
            self._settle_overdue()
            return
        root = None if replayed else self._join_cascade(envelope)
        called: list[str] = []
        delivered = self.deliver(envelope, replayed=replayed, called=called)
        self.cursors.advance(envelope.seq, envelope.run_id, flush=delivered)
        if root is not None:
            self._step_cascade(root, called)
        self._settle_overdue()

    # -- plugin.handled (docs/plugins.md, "When a tap is handled") ------------------------------------
    def _join_cascade(self, envelope: Envelope) -> str | None:
        """The tap whose cascade this event belongs to (a new one for a tap), or None. A result coming
        back on the feed is one fewer on its way, and is listed for the screen."""
        if envelope.event.replayed:
            return None
        with self._cascade_lock:
            if envelope.topic in HANDLED_FOR:
                tap = envelope.id
                self._cascades[tap] = _Cascade(tap, envelope.event.reader, self._clock())
                self._roots[tap] = tap
                return tap
            cause = envelope.event.cause
            root = self._roots.get(cause) if cause is not None else None
            cascade = self._cascades.get(root) if root is not None else None
            if root is None or cascade is None or hook_for(envelope.topic) != PLUGIN_RESULT_HOOK:
                return None
            tap = root
            cascade.outstanding = max(0, cascade.outstanding - 1)
            self._roots[envelope.id] = tap
            data = envelope.event.data
            plugin = envelope.topic.split(".")[1]
            listed: JsonObject = {"id": envelope.id, "type": envelope.topic, "plugin": plugin}
            if isinstance(data.get("status"), str):
                listed["status"] = data["status"]
            screen = data.get(SCREEN_FIELD)
            if isinstance(screen, dict) and screen.get("level") in LEVEL_RANK:
                listed["level"] = screen["level"]
            cascade.results.append(listed)
            return tap

    def _count_result(self, cause: str | None) -> None:
        """A result published on a hook's thread for ``cause``: its tap waits for it to come back."""
        with self._cascade_lock:
            tap = self._roots.get(cause) if cause is not None else None
            cascade = self._cascades.get(tap) if tap is not None else None
            if cascade is not None:
                cascade.outstanding += 1

    def _step_cascade(self, tap: str, called: list[str]) -> None:
        """After the plugins handled an event of ``tap``'s cascade: ``plugin.handled`` once nothing of
        it is on its way."""
        with self._cascade_lock:
            cascade = self._cascades.get(tap)
            if cascade is None:
                return
            cascade.plugins += [name for name in called if name not in cascade.plugins]
            cascade.touched = self._clock()
            if cascade.outstanding > 0:
                return
            self._close_cascade(cascade)
        self._publish_handled(cascade, settled=True)

    def _settle_overdue(self) -> None:
        """Taps whose results have not all come back within :data:`SETTLE_TIMEOUT`: handled, unsettled."""
        now = self._clock()
        with self._cascade_lock:
            overdue = [c for c in self._cascades.values() if now - c.touched > SETTLE_TIMEOUT]
            for cascade in overdue:
                self._close_cascade(cascade)
        for cascade in overdue:
            log.warning("tap handled before its results came back", cause=cascade.event_id)
            self._publish_handled(cascade, settled=False)

    def _close_cascade(self, cascade: _Cascade) -> None:
        del self._cascades[cascade.event_id]
        for event_id in [k for k, v in self._roots.items() if v == cascade.event_id]:
            del self._roots[event_id]

    def _publish_handled(self, cascade: _Cascade, *, settled: bool) -> None:
        data: JsonObject = {"plugins": cascade.plugins, "results": cascade.results, "settled": settled}
        self._publish(Event(HANDLED, cascade.reader, data, cause=cascade.event_id))

    def _routed(self, name: str, envelope: Envelope, hook: str) -> bool:
        """Whether ``[plugins.routing]`` lets the plugin act on this event's reader: card events and
        results name a reader; reader events and withdrawals reach every plugin."""
        if hook not in (PLUGIN_RESULT_HOOK, *CARD_HOOKS):
            return True
        return self.config.routed(name, envelope.event.reader)

    def _receives(self, loaded: LoadedPlugin, envelope: Envelope, hook: str, to: set[str] | None) -> bool:
        """Whether :meth:`deliver` hands this event to this plugin (if it implements the hook)."""
        event_type = envelope.topic
        if loaded.quarantined or not loaded.interest.wants(event_type):
            return False
        if event_type.startswith(f"plugin.{loaded.name}."):
            return False  # never its own results: a plugin answering itself would loop
        if to is not None and loaded.name not in to:
            return False
        return self._routed(loaded.name, envelope, hook)  # [plugins.routing]: this plugin's reader?

    def deliver(
        self,
        envelope: Envelope,
        *,
        to: set[str] | None = None,
        replayed: bool = False,
        called: list[str] | None = None,
    ) -> bool:
        """True if some plugin's hook was called with the event. ``to``: a replay, for these plugins;
        ``called``: gets the names of the plugins whose hook was called."""
        event_type = envelope.topic
        hook = hook_for(event_type)
        if hook is None:
            return False
        delivered = False
        calls: list[_HookCall] = []
        countdown = Countdown()
        secrets = _secret_values(envelope.event.private)
        if secrets:
            with self._lock:
                self._card_secrets.extend(secrets)
        # Every plugin has the event before the host waits for any: they handle it side by side, and the
        # host wakes once for their answers (docs/plugins.md, "One event, every plugin").
        # Their results are released in the plugins' order, and leave the bus together (lazily). A call
        # handed over is always waited for, even if handing over the next one failed: its plugin's slot is
        # taken until then.
        try:
            for loaded in list(self.plugins.values()):
                if not self._receives(loaded, envelope, hook, to):
                    continue
                if not self._implements(loaded, hook):
                    loaded.last_seq = envelope.seq  # wanted, but no hook to hand it to: nothing to build
                    continue
                shown = loaded.interest.strip(envelope.event.private)
                handed = _secret_values(shown)
                if handed:
                    with self._lock:
                        loaded.handed.extend(handed)
                event = PluginEvent.from_envelope(envelope, shown, replayed=replayed)
                delivered = True
                if called is not None:
                    called.append(loaded.name)
                origin = _Origin(loaded.name, event.id, event.replayed, _HeldResults())
                kwargs = {"event": event, "context": loaded.context}
                call = self._begin_call(loaded, hook, kwargs, origin, countdown)
                if call is not None:
                    calls.append(call)
                loaded.last_seq = event.seq
        finally:
            # One wake-up when the last plugin returns, not one per plugin the host would block on in
            # turn; a hook still running after RESULTS_AFTER is waited for as each call is (its results
            # so far released, its own deadline), so is one that runs on this thread (Inline).
            if len(calls) > 1:
                countdown.wait(min(RESULTS_AFTER, self.config.hook_timeout))
            for call in calls:
                self._finish_call(call)
        if calls and self._nudge is not None:  # every call here holds its results: send them together
            self._nudge()
        return delivered

    @property
    def tracked(self) -> list[Tracked]:
        return list(self.plugins.values())

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """(first missing seq, last missing seq) of the feed: found on it, or missed before this start."""
        return self.cursors.gaps

    def flush_cursors(self) -> None:
        self.cursors.flush()

    def would_deliver(self, name: str, event_type: str) -> bool:
        """Whether an event of this type is handed to this plugin (what :meth:`deliver` decides)."""
        hook = hook_for(event_type)
        return (
            hook is not None
            and self.plugins[name].interest.wants(event_type)
            and not event_type.startswith(f"plugin.{name}.")
            and hook in self.hooks_of(name)
        )

    def report(self, plugin: str, hook: str, code: str, message: str, quarantined: bool) -> None:
        self._report(plugin, hook, code, message, quarantined)

    def _publish_result(self, plugin: str, event: str, data: JsonObject, reader: str | None) -> None:
        """A result published while its plugin handles an event names that event (``cause``: a screen
        matches a result to its tap) and says when it was replayed: the card is long gone, so a kiosk
        screen must not show it, while other plugins still act on it."""
        origin: _Origin | None = getattr(_HANDLING, "origin", None)  # set on the hook's own thread only
        if origin is not None and origin.plugin != plugin:
            origin = None
        cause = origin.event_id if origin is not None else None
        replayed = origin is not None and origin.replayed
        data = self._screen(plugin, event, data)
        text = self._screen_text(plugin, event, data, reader)
        if text is not None:
            data[SCREEN_FIELD] = text
        if not replayed:
            self._count_result(cause)
        result = ev.plugin_result(plugin, event, data, reader, cause=cause, replayed=replayed)
        if origin is None or origin.held is None or not origin.held.hold(result):
            self._publish(result)

    def _screen_text(
        self, plugin: str, event: str, data: JsonObject, reader: str | None
    ) -> JsonObject | None:
        """The words of the plugin's :class:`ResultSpec` for this result (``{level, ja, en}``), or None:
        none declared, none whose fields it carries, or a reader ``[plugins.routing]`` keeps it off."""
        loaded = self.plugins.get(plugin)
        spec = loaded.specs.get(event) if loaded is not None else None
        if spec is None or not self.config.routed(plugin, reader):
            return None
        try:
            return spec.render(data)
        except (ValueError, KeyError, TypeError) as e:  # checked at load: not expected
            log.warning("plugin result text not rendered", plugin=plugin, result=event, error=str(e))
            return None

    def _screen(self, plugin: str, event: str, data: JsonObject) -> JsonObject:
        """``data`` with only the fields the plugin declared for ``event``, and no certificate serial,
        subject CN or IDm value in them (the plugin's own, or of a card identified lately)."""
        loaded = self.plugins.get(plugin)
        if loaded is None:  # not a loaded plugin's context: nothing declared
            return {}
        declared = loaded.results.get(event, frozenset())
        dropped = sorted(set(data) - declared)
        with self._lock:
            secrets = {*loaded.handed, *self._card_secrets}
        redacted = 0
        kept: JsonObject = {}
        for key in data:
            if key in declared:
                kept[key], found = _redact(data[key], secrets)
                redacted += found
        if not dropped and not redacted:
            return kept
        with self._lock:
            loaded.fields_dropped += len(dropped)
            loaded.values_redacted += redacted
            first = {f"{event}:{key}" for key in dropped} - loaded.warned
            first |= {f"{event}:{REDACTED}"} - loaded.warned if redacted else set()
            loaded.warned |= first
        if first:
            log.warning(
                "plugin result screened",
                plugin=plugin,
                result=f"plugin.{plugin}.{event}",
                undeclared_fields_dropped=dropped,
                certificate_values_redacted=redacted,
                declare="readerd_result_fields (docs/plugins.md)",
            )
        return kept

    # -- commands -----------------------------------------------------------------------------------
    def run_command(self, name: str, args: JsonObject) -> Future[JsonObject]:
        """Run a plugin command off the caller's thread (the bus thread must not wait for a plugin)."""
        owner, spec = self.commands[name]
        loaded = self.plugins[owner]
        checked = spec.check_args(args)
        return self._executor.submit(self._command, loaded, spec, checked)

    def _command(self, loaded: LoadedPlugin, spec: CommandSpec, args: JsonObject) -> JsonObject:
        if loaded.quarantined:
            self._cool_down()
            spec = self.commands.get(spec.name, (loaded.name, spec))[1]  # as asked again at reinstatement
        if loaded.quarantined:
            raise PluginError(loaded.name, spec.name, f"quarantined ({loaded.quarantined})")
        try:
            result = self._workers.run_once(
                f"cmd:{spec.name}", lambda: spec.handler(args), self.config.hook_timeout
            )
        except SessionTimeoutError as e:
            self._quarantine(loaded, spec.name, "timeout", f"no return within {self.config.hook_timeout} s")
            self._check_workers()  # its thread counts with the abandoned hook workers
            raise PluginError(loaded.name, spec.name, "timed out") from e
        except ReaderdError:
            raise  # a refusal with its own code (insufficient_points ...), not a failure of the plugin
        except Exception as e:
            self._fail(loaded, spec.name, "exception", error_line(e), e)
            raise PluginError(loaded.name, spec.name, type(e).__name__) from e
        if not isinstance(result, dict):
            raise PluginError(loaded.name, spec.name, "the handler did not return a JSON object")
        return result

    # -- the feed thread ----------------------------------------------------------------------------
    def start(
        self,
        feed: str | LocalFeed,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        *,
        heartbeat_now: Callable[[], None] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Subscribe to the feed and return once the subscription is live (ZeroMQ's slow joiner): the
        first message proves it; ``heartbeat_now`` asks the daemon for one so that needs no waiting.
        ``feed``: the private PUB endpoint, or the bus's in-process feed (:meth:`Bus.local_feed
        <readerd.bus.server.Bus.local_feed>`), where the first message also marks where the live events
        begin and the replay from the event log ends."""
        ready = threading.Event()
        if isinstance(feed, LocalFeed):
            target: Callable[..., None] = self._run_local
            args: tuple[Any, ...] = (feed, ready)
        else:
            target, args = self._run, (feed, context or zmq.Context.instance(), ready)
        self._thread = threading.Thread(target=target, args=args, name="plugin-host", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if heartbeat_now is not None:
                heartbeat_now()
            if time.monotonic() > deadline:
                where = "the in-process feed" if isinstance(feed, LocalFeed) else feed
                raise PluginError("host", "start", f"no message on {where} within {timeout} s")

    def _run_local(self, feed: LocalFeed, ready: threading.Event) -> None:
        """The feed thread on the bus's in-process feed: as :meth:`_run`, with envelopes, not frames."""
        rest: deque[Envelope] = deque()  # taken off the feed, not yet handed over (a stop came between)
        try:
            while not self._stop.is_set():
                if not rest:
                    batch = feed.get(self._feed_wait())
                    if batch is None:
                        if self.cursors.pending:
                            self.cursors.flush()  # the feed is idle
                        continue
                    ready.set()
                    rest.extend(batch)
                self._dispatch_local(feed, rest)
            # Stopping: what already arrived is handed over within the budget (as in _run).
            while time.monotonic() < self._drain_until:
                if not rest:
                    batch = feed.get_nowait()
                    if batch is None:
                        break
                    rest.extend(batch)
                self._dispatch_object(rest.popleft())
            self.cursors.flush()
        finally:
            feed.close()

    def _feed_wait(self) -> float:
        """How long the feed thread waits for the next message: :data:`CURSOR_IDLE` while it holds
        unwritten cursors (a feed that quiet means the tap is over: write them), else 50 ms (to see a
        stop)."""
        return CURSOR_IDLE if self.cursors.pending else 0.05

    def _dispatch_local(self, feed: LocalFeed, rest: deque[Envelope]) -> None:
        """``rest`` and what the feed holds, up to :data:`BATCH_MAX` envelopes, handed over one by one;
        the cursors are written once for the lot (:meth:`batch`). What is left stays in ``rest``."""
        with self.batch():
            for _ in range(BATCH_MAX):
                if not rest:
                    more = feed.get_nowait()
                    if more is None:
                        return
                    rest.extend(more)
                self._dispatch_object(rest.popleft())
                if self._stop.is_set():
                    return

    def _dispatch_object(self, envelope: Envelope) -> None:
        try:
            self.dispatch(envelope)
        except Exception:  # the host thread must outlive any event
            log.exception("plugin dispatch failed", topic=envelope.topic)

    def _run(self, endpoint: str, context: zmq.Context[zmq.Socket[bytes]], ready: threading.Event) -> None:
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)  # the private feed is local: keep every event for the plugins
        sock.connect(endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            while not self._stop.is_set():
                if sock.poll(int(self._feed_wait() * 1000)):
                    ready.set()
                    self._drain(sock)
                elif self.cursors.pending:
                    self.cursors.flush()  # the feed is idle
            # Stopping: the backends have stopped, so what already arrived is the rest of the run
            # (card.removed, plugin results). Hand it over within the budget instead of dropping it:
            # a dropped event is one the plugins never get (the cursors would show it at the next start).
            while time.monotonic() < self._drain_until and sock.poll(0):
                self._receive(sock)
            self.cursors.flush()
        finally:
            sock.close()

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        """What the socket holds, up to :data:`BATCH_MAX` messages, handed over one by one; the cursors
        are written once for the lot (:meth:`batch`)."""
        with self.batch():
            for _ in range(BATCH_MAX):
                try:
                    topic, body = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:  # drained
                    return
                self._handle(topic, body)
                if self._stop.is_set():
                    return

    def _receive(self, sock: zmq.Socket[bytes]) -> None:
        topic, body = sock.recv_multipart()
        self._handle(topic, body)

    def _handle(self, topic: bytes, body: bytes) -> None:
        try:
            self.dispatch(self._light(topic, body) or Envelope.from_json(body))
        except Exception:  # the host thread must outlive any event
            log.exception("plugin dispatch failed", topic=topic.decode(errors="replace"))

    def _light(self, topic: bytes, body: bytes) -> Envelope | None:
        """The envelope with only its seq, run id and type, when that is all the host needs of it: an
        event no loaded plugin is handed nor a tap's cascade counts (``card.presented``, the host's own
        ``plugin.handled``, ``plugin.error``, a card or reader event no plugin implements). Its JSON is
        then never parsed. None: parse it whole (also when its first bytes are not as the bus writes
        them, :meth:`readerd.events.Envelope.private_json`)."""
        light = self._light_topics.get(topic)
        if light is None:
            light = self._light_topics[topic] = self._needs_nothing(topic.decode(errors="replace"))
        if not light:
            return None
        head = _HEAD.match(body)
        if head is None:
            return None
        event = Event(topic.decode(), None, {})
        return Envelope(int(head[1]), head[2].decode(), "", "", self.kiosk, event)

    def _needs_nothing(self, event_type: str) -> bool:
        """Whether the host needs only the seq of events of this type (:meth:`_light`). The plugins'
        interests and hooks are fixed once loaded (a reinstatement changes neither)."""
        if event_type == EventType.HEARTBEAT or event_type in HANDLED_FOR:
            return False
        hook = hook_for(event_type)
        if hook is None:
            return True
        if hook == PLUGIN_RESULT_HOOK:
            return False  # a result: counted by its tap's cascade (its cause)
        return not any(
            loaded.interest.wants(event_type) and self._implements(loaded, hook)
            for loaded in self.plugins.values()
        )

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Dispatch several messages with the cursors written once at the end, if a hook was called with
        one of them (and, as always, after the results published meanwhile are logged)."""
        with self.cursors.hold():
            yield

    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what already arrived (within half of ``timeout``), then ``readerd_shutdown``."""
        self._drain_until = time.monotonic() + timeout / 2
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for loaded in list(self.plugins.values()):
            if not loaded.quarantined:
                self._call(loaded, "readerd_shutdown", {"context": loaded.context})
        self._workers.stop()
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
            "abandoned_workers": self._workers.status(),
            "restart_reason": self.restart_reason,
        }


def _result_specs(answer: object) -> dict[str, ResultSpec] | str:
    """A ``readerd_result_fields`` answer as :class:`ResultSpec` per result (the old form: no texts), or
    what is wrong with it (the texts' templates checked against the declared fields)."""
    if not isinstance(answer, Mapping):
        return "not a dict of event name to field names or ResultSpec"
    specs: dict[str, ResultSpec] = {}
    plain = _result_fields({k: v for k, v in answer.items() if not isinstance(v, ResultSpec)})
    if plain is None:
        return "not a dict of event name to field names or ResultSpec"
    for event, value in answer.items():
        if not isinstance(value, ResultSpec):
            specs[event] = ResultSpec(plain[event])
            continue
        problems = value.problems()
        if problems:
            return f"{event}: {'; '.join(problems)}"
        specs[event] = ResultSpec(frozenset(value.fields), dict(value.texts))
    return specs


def _result_fields(answer: object) -> dict[str, frozenset[str]] | None:
    """A ``readerd_result_fields`` answer as the host keeps it; None when malformed."""
    if not isinstance(answer, Mapping):
        return None
    declared: dict[str, frozenset[str]] = {}
    for event, names in answer.items():
        if isinstance(names, ResultSpec):
            names = names.fields  # noqa: PLW2901 - the new form's fields
        if not isinstance(event, str) or isinstance(names, str | bytes):
            return None
        try:
            fields = frozenset(names)
        except TypeError:
            return None
        if not all(isinstance(name, str) for name in fields):
            return None
        declared[event] = fields
    return declared


#: Where SQLAlchemy's message turns from the error to the statement, its parameters and its help link.
_SQL_TAIL = re.compile(r"\[SQL: |\[parameters: |\(Background on this error at")
#: Longest ``plugin.error`` message: a line on a console, not a dump.
MESSAGE_MAX = 300


def one_line(message: str) -> str:
    """The first line of ``message`` without SQLAlchemy's ``[SQL: …]``, ``[parameters: …]`` and
    ``(Background on this error at …)``, at most :data:`MESSAGE_MAX` characters: what ``plugin.error``
    carries (the traceback and the statement go to the host's log only)."""
    text = _SQL_TAIL.split(message, maxsplit=1)[0].strip()
    first = text.splitlines()[0].strip() if text else ""
    return first if len(first) <= MESSAGE_MAX else first[: MESSAGE_MAX - 1] + "…"


def error_line(error: BaseException) -> str:
    """``Type: first line`` of an exception (only ``Type`` when its message has no line of its own)."""
    first = one_line(str(error))
    return one_line(f"{type(error).__name__}: {first}") if first else type(error).__name__


def _one_line_reports(
    report: Callable[[str, str, str, str, bool], None],
) -> Callable[[str, str, str, str, bool], None]:
    """``report`` (which publishes ``plugin.error``) with every message made :func:`one_line`."""

    def reported(plugin: str, hook: str, code: str, message: str, quarantined: bool) -> None:
        report(plugin, hook, code, one_line(message), quarantined)

    return reported


def _secret_values(private: Mapping[str, Any]) -> list[str]:
    """The serial (hex and decimal), subject CN and IDm in ``private``, case-folded for matching."""
    found: list[str] = []
    if not private:  # most events carry no private field: nothing to look for
        return found
    for key in SECRET_FIELDS:
        value = private.get(key)
        if not isinstance(value, str) or len(value) < _MIN_SECRET:
            continue
        found.append(value.casefold())
        if key == "serial":
            with contextlib.suppress(ValueError):
                found.append(str(int(value, 16)))
    return found


def _redact(value: Any, secrets: set[str]) -> tuple[Any, int]:  # noqa: ANN401 - a JSON value
    """``value`` with every string or number that is or contains one of ``secrets`` replaced by
    :data:`REDACTED` (a mapping with such a key as a whole), and how many were replaced."""
    if not secrets:
        return value, 0
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value).casefold()
        return (REDACTED, 1) if any(secret in text for secret in secrets) else (value, 0)
    if isinstance(value, Mapping):
        if any(_redact(key, secrets)[1] for key in value):
            return REDACTED, 1
        out, count = {}, 0
        for key, item in value.items():
            out[key], found = _redact(item, secrets)
            count += found
        return out, count
    if isinstance(value, list | tuple):
        items = [_redact(item, secrets) for item in value]
        return [item for item, _ in items], sum(found for _, found in items)
    return value, 0


def hook_for(event_type: str) -> str | None:
    """The hook an event type goes to: a card or reader hook, or other plugins' results (never
    ``plugin.error`` nor the host's own ``plugin.handled``)."""
    hook = EVENT_HOOKS.get(event_type)
    if hook is None and event_type.startswith("plugin.") and event_type not in ("plugin.error", HANDLED):
        hook = PLUGIN_RESULT_HOOK
    return hook
