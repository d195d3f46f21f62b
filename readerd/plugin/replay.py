"""Which events each plugin was given, across restarts: the plugin host's cursors and its replay.

The feed's ``seq`` continues across restarts (the event log), so each plugin's cursor, the last seq it
was handed, says what it missed while the daemon was down or the plugin was out (disabled, quarantined,
``--no-plugins``, a crash). At the first message after a start the missed events the log still holds,
younger than ``replay_window``, are handed to the plugin again in order, marked ``replayed``; older ones
are reported as missed (docs/design.md D2: effects happen at least once, plugins key them by event id).

Cursors are written only once the results the plugins published while handling those events are logged
(``flushed``): a cursor past an event whose result a crash lost would keep that event from the replay.
They are written when the feed goes quiet (:data:`CURSOR_IDLE`), or at the end of a batch of feed
messages (:meth:`FeedCursors.hold`) once the oldest unwritten one is :data:`CURSOR_LAG` old, never once
per event: a tap's events arrive one or two at a time within a few milliseconds, and one wait for
``flushed`` and one transaction then cover the whole tap. A crash before that write only means those
events are handed again (at least once, docs/design.md D2), never that a result is lost.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import structlog

from readerd.bus.eventlog import EventLog
from readerd.config import PluginsConfig
from readerd.errors import GapUnrecoverableError, StoreBusyError, StoreUnavailableError
from readerd.events import Envelope, EventType
from readerd.plugin.store import Store

log = structlog.get_logger("readerd.plugins")


#: Seconds without a feed message after which the feed thread writes the cursors it holds.
CURSOR_IDLE = 0.02
#: Under a feed that never goes quiet, the oldest cursor of a handed event waits at most about this long.
CURSOR_LAG = 0.25


@dataclass
class Backlog:
    """What the event log holds of a range a plugin was not given: ``(seq, type)`` of every event, and
    the envelopes (private fields included) from the first one logged within ``replay_window`` on."""

    types: list[tuple[int, str]] = field(default_factory=list)
    recent: list[Envelope] = field(default_factory=list)


#: ``(after, upto, newer_than)`` -> the event log's :class:`Backlog` of ``(after, upto]``, None if pruned.
BacklogSource = Callable[[int, int, float], Backlog | None]


class Tracked(Protocol):
    """What the cursors keep of one loaded plugin."""

    name: str
    quarantined: str | None
    cursor: int | None
    missed: list[tuple[int, int]]
    replayed: int


class Host(Protocol):
    """What the cursors need of the plugin host."""

    @property
    def tracked(self) -> list[Tracked]: ...

    def deliver(self, envelope: Envelope, *, to: set[str] | None = None, replayed: bool = False) -> bool: ...

    def would_deliver(self, name: str, event_type: str) -> bool: ...

    def report(self, plugin: str, hook: str, code: str, message: str, quarantined: bool) -> None: ...


class FeedCursors:
    """The feed's position (gaps in ``seq``) and each plugin's cursor, for one plugin host."""

    def __init__(
        self,
        host: Host,
        config: PluginsConfig,
        *,
        store: Store | None,
        backlog: BacklogSource | None,
        flushed: Callable[[], bool] | None,
    ) -> None:
        self._host = host
        self._config = config
        self._store = store
        self._backlog = backlog
        self._flushed = flushed
        self.gaps: list[tuple[int, int]] = []  # (first missing seq, last missing seq) of the feed
        self._feed_seq: tuple[str, int] | None = None  # (run_id, last seq) seen on the feed
        self._pending: dict[str, int] = {}  # advanced but not yet written (no hook was called)
        self._pending_run_id = ""
        self._write_failing = False
        self._holding = 0  # inside hold(): a write due waits for its end
        self._due = False  # a hook was called with an event not yet written: write soon
        self._due_since = 0.0  # monotonic time the oldest such event was handed

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def read(self) -> dict[str, int]:
        """The cursors recorded by the last run (none when the store cannot say)."""
        if self._store is None:
            return {}
        try:
            return self._store.read_cursors()
        except (StoreUnavailableError, StoreBusyError) as e:
            log.error("plugin cursors unreadable: no restart gap check this run", error=str(e))
            return {}

    def observe(self, envelope: Envelope) -> None:
        """Each message of the feed, before it is delivered: the first one after a start checks every
        plugin's cursor (and replays); every one is checked for a gap in ``seq``."""
        if self._feed_seq is None:  # the first message since the host started
            try:
                self._check(envelope)
            except Exception:  # a broken check must not keep this (or any) event from the plugins
                log.exception("plugin cursor check failed")
        self._track(envelope)

    def advance(self, seq: int, run_id: str, *, flush: bool) -> None:
        """Every plugin not quarantined was given ``seq`` (delivered, or not of a type it wants, or its
        hook failed: that failure was reported on its own); a quarantined plugin's cursor stays, so the
        events it misses show at the next start.

        Written at once when a hook was called with the event outside :meth:`hold` (a direct
        :meth:`~readerd.plugin.host.PluginHost.dispatch`); the feed thread's batches keep it for the
        quiet feed or :data:`CURSOR_LAG` (module docstring); an event no hook was called with waits for
        the quiet feed or the host's stop. A write is a transaction; losing one in a crash only hands
        those events again."""
        for plugin in self._host.tracked:
            if not plugin.quarantined and (plugin.cursor is None or seq > plugin.cursor):
                plugin.cursor = seq
                self._pending[plugin.name] = seq
        self._pending_run_id = run_id
        if flush and self._holding:
            if not self._due:
                self._due = True
                self._due_since = time.monotonic()
        elif flush:
            self.flush()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Advance for a batch of events (feed thread only); at its end, write if a hook was called with
        an event that has waited :data:`CURSOR_LAG` unwritten, else leave it for the quiet feed. A write
        waits for ``flushed``: every result published while handling the events is logged before a
        cursor moves past its event."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding and self._due and time.monotonic() - self._due_since >= CURSOR_LAG:
                self.flush()

    def flush(self) -> None:
        """Write the cursors not yet recorded (feed thread only), once the results the plugins published
        while handling those events are logged. Not logged in time (the bus is stuck): kept for the next
        try."""
        if not self._pending:
            return
        if self._flushed is not None and not self._flushed():
            log.warning("plugin results not yet logged; cursors not recorded", cursors=self._pending)
            return
        pending, self._pending = self._pending, {}
        self._due = False
        self._write(pending, self._pending_run_id)

    def _write(self, cursors: dict[str, int], run_id: str) -> None:
        if self._store is None or not cursors:
            return
        try:
            self._store.write_cursors(cursors, run_id)
        except (StoreUnavailableError, StoreBusyError) as e:
            # Logged once per outage, never published: a plugin.error is itself a feed event, whose
            # cursor write would fail again.
            if not self._write_failing:
                log.error("plugin cursors not recorded", error=str(e))
            self._write_failing = True
            return
        if self._write_failing:
            log.info("plugin cursors recorded again")
        self._write_failing = False

    def _check(self, envelope: Envelope) -> None:
        """At the first message after a start: each plugin's recorded cursor against the feed's position.

        A plugin whose cursor is behind the last seq before this message was not given those events: the
        previous run stopped its host before the bus (results still in flight), ran without this plugin,
        or crashed. Those the event log still holds and that are younger than ``replay_window`` are
        handed to the plugin now. The rest are missed: only the events the plugin would have been handed
        count (a type it wants, a hook it implements, not its own result); without the log, or when it no
        longer holds them, the whole range does. Missed events are logged, kept in the plugin's
        ``missed`` (``readerctl plugins``), published as ``plugin.error`` (``events_missed``) and added
        to ``feed_gaps``.
        """
        seq, run_id = envelope.seq, envelope.run_id
        before = seq if envelope.event.type == EventType.HEARTBEAT else seq - 1  # the last seq not seen here
        behind = {}
        for plugin in self._host.tracked:
            if plugin.quarantined or plugin.cursor is None or plugin.cursor == before:
                continue
            if plugin.cursor > before:
                log.warning(
                    "the feed is behind a plugin's cursor (event log removed?)",
                    plugin=plugin.name,
                    cursor=plugin.cursor,
                    feed_seq=before,
                )
                continue
            behind[plugin.name] = plugin.cursor
        found = None
        if behind and self._backlog is not None:
            window = self._config.replay_window
            newer_than = time.time() - window if window > 0 else float("inf")
            found = self._backlog(min(behind.values()), before, newer_than)
        types = found.types if found is not None else None
        replay = found.recent if found is not None else []
        # Older than the window (or all, without a log): missed, up to the first replayable seq.
        missed_upto = replay[0].seq - 1 if replay else before
        by_name = {plugin.name: plugin for plugin in self._host.tracked}
        gaps: list[tuple[int, int]] = []
        for name, cursor in behind.items():
            if cursor >= missed_upto:
                continue  # all it missed is replayed
            gap = self._missed(by_name[name], cursor, missed_upto, types)
            if gap is not None:
                gaps.append(gap)
        if gaps:
            self.gaps.append((min(g[0] for g in gaps), max(g[1] for g in gaps)))
        self._replay(replay, behind, by_name)
        if replay and self._flushed is not None:
            self._flushed()  # the replayed events' results logged before the cursors move past them
        # From here on every plugin is at `before`: a gap is reported once, not at every start.
        moved = {}
        for plugin in self._host.tracked:
            if not plugin.quarantined:
                plugin.cursor = before
                moved[plugin.name] = before
        self._write(moved, run_id)

    def _replay(self, backlog: list[Envelope], cursors: dict[str, int], by_name: dict[str, Tracked]) -> None:
        """Hand each logged event to the plugins whose cursor is before it, in seq order."""
        counts: dict[str, int] = {}
        for envelope in backlog:
            to = {name for name, cursor in cursors.items() if cursor < envelope.seq}
            if not to:
                continue
            for name in to:
                if self._host.would_deliver(name, envelope.topic):
                    counts[name] = counts.get(name, 0) + 1
            self._host.deliver(envelope, to=to, replayed=True)
        for name, count in counts.items():
            by_name[name].replayed += count
            log.info(
                "events replayed to a plugin",
                plugin=name,
                count=count,
                first_seq=backlog[0].seq,
                last_seq=backlog[-1].seq,
            )

    def _missed(
        self, plugin: Tracked, cursor: int, before: int, types: list[tuple[int, str]] | None
    ) -> tuple[int, int] | None:
        """Report the events in ``(cursor, before]`` this plugin would have been given; their range."""
        if types is None:
            seqs = [cursor + 1, before]
            count = before - cursor
        else:
            seqs = [s for s, t in types if cursor < s <= before and self._host.would_deliver(plugin.name, t)]
            count = len(seqs)
        if not seqs:
            return None
        gap = (seqs[0], seqs[-1])
        plugin.missed.append(gap)
        log.error(
            "events missed by a plugin", plugin=plugin.name, first_seq=gap[0], last_seq=gap[1], count=count
        )
        message = (
            f"{count} event(s) in seq {gap[0]}..{gap[1]} were never given to the plugin (before this start)"
        )
        self._host.report(plugin.name, "feed", "events_missed", message, False)
        return gap

    def _track(self, envelope: Envelope) -> None:
        """Record gaps in the feed's ``seq`` (replay arrives with the LAN bus's ``events.since``)."""
        run_id, seq = envelope.run_id, envelope.seq
        if envelope.event.type == EventType.HEARTBEAT:
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


def _epoch(envelope: Envelope) -> float:
    """An envelope's ``ts`` in seconds (0 when unreadable: such an event counts as old)."""
    try:
        return datetime.fromisoformat(envelope.ts).timestamp()
    except ValueError:
        return 0.0


def log_backlog(event_log: EventLog) -> BacklogSource:
    """``backlog`` for the plugin host from the daemon's event log (the embedded host reads it in
    process), read a page at a time: only the recent tail is kept whole (the log may hold 100,000)."""

    def backlog(after: int, upto: int, newer_than: float) -> Backlog | None:
        found = Backlog()
        seq = after
        while seq < upto:
            try:
                answer = event_log.since(seq, limit=1000, private=True)
            except GapUnrecoverableError:
                return None
            for logged in answer.events:
                envelope = Envelope.from_dict(logged)
                if envelope.seq > upto:
                    return found
                found.types.append((envelope.seq, envelope.topic))
                if found.recent or _epoch(envelope) >= newer_than:
                    found.recent.append(envelope)
            if not answer.more or not answer.events:
                break
            seq = int(answer.events[-1]["seq"])
        return found

    return backlog
