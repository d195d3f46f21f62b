"""The soak's machinery: a daemon on simulated readers with the check-in and points plugins on a private
PostgreSQL, a plugin that crashes every few calls, random taps with fault scripts, and a fault schedule
(daemon restarts, the database stopped and started, pcscd killed and restarted).

Everything the soak asserts is read back at the end from the daemon's durable event log (gap-free across
restarts, docs/design.md D2) and from the stores, not from what a subscriber happened to receive: the
subscriber is only how the driver waits for the daemon to catch up.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from plugins.points.service import PointsService
from readerd.config import (
    Config,
    PcscConfig,
    PluginsConfig,
    SessionConfig,
    SimConfig,
    StoreConfig,
)
from readerd.plugin.api import EventInterest, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from simulators.faults import FaultScript, FaultyCard
from simulators.inprocess import CardModel
from simulators.mynumber import CardProfile, build_card
from simulators.pki import PkiStore
from simulators.vicc import ViccBridge
from tests.support.daemon import Envelope, RunningDaemon, Subscriber, hardware_config, running_daemon
from tests.support.fleet import read_event_log
from tests.support.pcscd import PrivatePcscd
from tests.support.postgres import PrivatePostgres

POINTS_PER_EVENT = 10
OUTCOMES = ("card.identified", "card.read_aborted")
#: The one real PC/SC reader (pcscd + vpcd, slot 0 of the private pcscd); the daemon uses only it
#: (``[pcsc] readers``), not the second reader of the vpcd entry.
PCSC_READER = "Virtual PCD 00 00"
#: What a card pulled from a vpcd reader mid-read looks like through pcscd (tests/daemon, docs/simulator.md).
PCSC_PULL = ([{"action": "remove", "after_apdus": 1}], {"removed", "transport"})

#: Fault scripts for a My Number Card tap, each with the abort reasons it may produce (a truncated answer
#: ends in two bytes of the certificate, which the session reads as a status word).
#: ``stall`` gets its seconds from the session deadline (see :meth:`Soak.fault_script`).
CARD_FAULTS: dict[str, tuple[list[dict[str, Any]], set[str]]] = {
    "pull_at_select": ([{"action": "remove", "after_apdus": 0}], {"removed"}),
    "pull_at_read": ([{"action": "remove", "after_apdus": 1}], {"removed"}),
    "garbage_read": ([{"action": "garbage", "match": "00B0", "data": "DEADBEEF9000"}], {"malformed"}),
    "truncated_read": ([{"action": "truncate", "match": "00B0", "keep": 40}], {"malformed", "card_error"}),
    "vanish_at_read": ([{"action": "vanish", "match": "00B0", "seconds": 0}], {"transport"}),
    "stall_read": ([{"action": "stall", "match": "00B0"}], {"timeout"}),
}


class FlakyPlugin:
    """A plugin with a bug: every ``every``-th ``card.identified`` raises; the others publish ``seen``.

    Never more than one failure in a row, so it is never quarantined (``quarantine_after`` is 3): each
    identified card gives exactly one ``plugin.flaky.seen`` or one ``plugin.error`` of this plugin.
    """

    def __init__(self, every: int = 4) -> None:
        self.every = every
        self.calls = 0
        self.crashes = 0
        self._lock = threading.Lock()

    @hookimpl
    def readerd_event_interest(self) -> EventInterest:
        return EventInterest(types=frozenset({"card.identified"}))

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        with self._lock:
            self.calls += 1
            crash = self.calls % self.every == 0
            if crash:
                self.crashes += 1
        if crash:
            raise RuntimeError("soak: the flaky plugin crashed on purpose")
        context.publish("seen", {"kind": event.data.get("kind")}, reader=event.reader)

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"seen": frozenset({"kind"})}


class DaemonHandle(Protocol):
    """What the driver needs of a daemon: :class:`RunningDaemon` (in-process) or a subprocess's."""

    def request(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]: ...

    def tap(self, card: str = "alice", **args: object) -> dict[str, Any]: ...

    def remove(self, reader: str | None = None) -> None: ...


@dataclass
class Tap:
    index: int
    reader: str
    card: str
    felica: bool
    fault: str | None = None  # a CARD_FAULTS key (on PC/SC: "pcsc_pull")
    pcsc: bool = False

    @property
    def expected(self) -> str:
        return "card.read_aborted" if self.fault else "card.identified"


@dataclass
class SoakReport:
    taps: int = 0
    pcsc_taps: int = 0
    identified: int = 0
    aborted: int = 0
    aborted_by_reason: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)  # injected, by kind
    checkin_results: Counter[str] = field(default_factory=Counter)  # by status
    points_earned: int = 0
    earn_refused: Counter[str] = field(default_factory=Counter)  # by reason
    plugin_errors: Counter[str] = field(default_factory=Counter)  # by plugin/code
    flaky_seen: int = 0
    reader_events: Counter[str] = field(default_factory=Counter)  # the PC/SC reader's, by type:reason
    sim_reader_events: Counter[str] = field(default_factory=Counter)  # the sim readers', by type
    refused_unplugged: int = 0  # taps refused (unknown_reader) on a sim reader while it was unplugged
    held_at_unplug: int = 0  # cards on a sim reader when it was unplugged (card.removed first)
    events_logged: int = 0
    runs: int = 0
    outstanding_points: int = 0
    attendance: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"soak: {self.taps} taps in {self.seconds:.1f} s over {self.runs} daemon runs, "
            f"{self.events_logged} events logged",
            f"  of which {self.pcsc_taps} through pcscd + vpcd; PC/SC reader events "
            f"{dict(sorted(self.reader_events.items()))}",
            f"  outcomes: {self.identified} card.identified, {self.aborted} card.read_aborted "
            f"{dict(sorted(self.aborted_by_reason.items()))}",
            f"  faults injected: {dict(sorted(self.faults.items()))}",
            f"  check-in results: {dict(sorted(self.checkin_results.items()))}; "
            f"attendance rows {self.attendance}",
            f"  points: {self.points_earned} earned, refused {dict(self.earn_refused)}, "
            f"outstanding {self.outstanding_points}",
            f"  flaky plugin: {self.flaky_seen} seen, "
            f"plugin.error {dict(sorted(self.plugin_errors.items()))}",
            f"  readers unplugged and plugged: pcscd restarted with fewer entries "
            f"{self.faults['pcsc_unplug']} (then the same again), sim readers {self.faults['sim_unplug']} "
            f"({self.held_at_unplug} with a card on them); PC/SC reader.removed "
            f"{self.reader_events['reader.removed']} = pcscd kills + unplugs, reader.added "
            f"{self.reader_events['reader.added']} = runs + kills + unplugs; sim reader.removed "
            f"{self.sim_reader_events['reader.removed']} = unplugs, reader.added "
            f"{self.sim_reader_events['reader.added']} = runs x readers + plugs; "
            f"{self.refused_unplugged} taps refused while unplugged",
        ]


def _window() -> tuple[str, str]:
    now = datetime.now(UTC)
    return (now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=6)).isoformat()


class Soak:
    """Drives one soak: :meth:`run` taps and faults, then :meth:`verify` checks and counts."""

    def __init__(
        self,
        state_dir: Path,
        postgres: PrivatePostgres,
        shared_url: str,
        pcscd: PrivatePcscd | None = None,
        *,
        seed: int,
        readers: int = 4,
        members: int = 6,
        deadline: float = 1.0,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - a replayable tap schedule, not a secret
        self.postgres = postgres
        self.pcscd = pcscd
        self.pki = PkiStore(state_dir.parent / "pcsc-pki")
        self.state_dir = state_dir
        self.reader_names = tuple(f"Sim {i:02d}" for i in range(readers))
        self.events = {name: f"ev{i}" for i, name in enumerate(self.reader_names)}
        if pcscd is not None:
            self.events[PCSC_READER] = "ev-pcsc"
        self.base_events = dict(self.events)
        self.all_events: set[str] = set()
        self.generation = 0
        self.members = {f"CARD{i}": f"m{i}" for i in range(members)}  # FeliCa check-in card -> member
        self.jpki_cards = ("alice", "bob", "carol")
        self.deadline = deadline
        self.log = log
        self.flaky: FlakyPlugin | None = FlakyPlugin()
        #: Results the daemon will never give (a SIGKILL took them): subtracted when waiting.
        sections: dict[str, dict[str, object]] = {
            "checkin": {"readers": dict(self.events), "sync_interval": 0.2, "retry_after": 0.2},
            "points": {"earn_programme": "ward"},
        }
        self.config: Config = hardware_config(
            state_dir,
            ("sim", "pcsc") if pcscd is not None else ("sim",),
            pcsc=PcscConfig(readers=(PCSC_READER,), allow_virtual_readers=True),
            sessions=SessionConfig(deadline=deadline, repeat_window=0.0),
            sim=SimConfig(readers=self.reader_names, allow_simulated_cards=True),  # beside pcsc
            store=StoreConfig(shared_url=shared_url, connect_timeout=2.0, retries=3),
            plugins=PluginsConfig(
                autoload=False, builtins=("checkin", "points"), sections=sections, quarantine_after=3
            ),
        )
        # The whole run must stay in the event log for the final check (an hour is ~250,000 events).
        self.config = replace(self.config, bus=replace(self.config.bus, log_max_events=10_000_000))
        self.taps: list[Tap] = []
        self.removals = 0  # card.removed events owed: taps not held, and removals asked for
        self.report = SoakReport()
        self._stack = contextlib.ExitStack()
        self.daemon: DaemonHandle | None = None
        self.sub: Subscriber | None = None
        self.seen: list[Envelope] = []  # everything the subscribers received, all runs
        self.unplugged: Counter[str] = Counter()  # sim reader -> times unplugged and plugged again

    # -- the daemon -----------------------------------------------------------------------------------
    def start(self) -> None:
        stack = contextlib.ExitStack()
        plugins: dict[str, object] = {"flaky": self.flaky} if self.flaky is not None else {}
        running = stack.enter_context(running_daemon(self.config, plugins=plugins))
        self.in_process: RunningDaemon | None = running
        self.daemon = running
        self.sub = stack.enter_context(running.subscriber())
        self._stack = stack
        self.report.runs += 1
        if self.pcscd is not None:  # the monitor lists pcscd's readers on its own thread after start
            deadline = time.monotonic() + 30
            while PCSC_READER not in [r["name"] for r in self.command("readers")["readers"]]:
                assert time.monotonic() < deadline, "the PC/SC reader never showed up"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.sub is not None:
            self._drain()
        self._stack.close()
        self.daemon, self.sub = None, None

    @contextlib.contextmanager
    def running(self) -> Iterator[Soak]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def restart_daemon(self, *, new_events: bool = True) -> None:
        """Stop and start the daemon on the same state; with ``new_events`` every reader admits to a new
        event from then on (a new day at the community centre), so a long run keeps accepting check-ins
        and awarding points instead of answering ``already_checked_in`` after its first minutes."""
        self.quiesce()
        self.stop()
        if new_events:
            self.generation += 1
            self.events = {
                reader: f"{event}-g{self.generation}" for reader, event in self.base_events.items()
            }
            sections = dict(self.config.plugins.sections)
            sections["checkin"] = {**sections["checkin"], "readers": dict(self.events)}
            self.config = replace(self.config, plugins=replace(self.config.plugins, sections=sections))
        self.start()
        if new_events:
            self.define_events()
        self.report.faults["daemon_restart"] += 1

    def _d(self) -> DaemonHandle:
        assert self.daemon is not None, "the daemon is not running"
        return self.daemon

    def command(self, cmd: str, **args: object) -> dict[str, Any]:
        reply = self._d().request(cmd, args)
        assert reply["ok"], (cmd, reply)
        result: dict[str, Any] = reply["result"]
        return result

    # -- what the driver waits on ---------------------------------------------------------------------
    def _drain(self, timeout: float = 0.0) -> bool:
        """Take what the subscriber has; True if something arrived."""
        assert self.sub is not None
        got = False
        with contextlib.suppress(TimeoutError):
            while True:
                self.seen.append(self.sub.next(timeout))
                got = True
                timeout = 0.0
        return got

    def _pending(self) -> str | None:
        """What the daemon still owes the driver, or None when it has caught up."""
        seen = Counter(e["type"] for e in self.seen)
        outcomes = seen["card.identified"] + seen["card.read_aborted"]
        if outcomes < len(self.taps):
            return f"{len(self.taps) - outcomes} tap outcome(s)"
        if seen["card.removed"] < self.removals:
            return f"{self.removals - seen['card.removed']} card.removed"
        identified = seen["card.identified"]
        if unanswered_taps(self.seen):
            return "check-in results"
        flaky = seen["plugin.flaky.seen"] + sum(
            1 for e in self.seen if e["type"] == "plugin.error" and e["data"].get("plugin") == "flaky"
        )
        if self.flaky is not None and flaky < identified:
            return "flaky plugin results"
        if unanswered_earnings(self.seen):
            return "points results"
        return None

    def quiesce(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (pending := self._pending()) is not None:
            assert time.monotonic() < deadline, f"the daemon never caught up: waiting for {pending}"
            self._drain(0.2)

    # -- taps -----------------------------------------------------------------------------------------
    def fault_script(self, name: str) -> list[dict[str, Any]]:
        script = [dict(entry) for entry in CARD_FAULTS[name][0]]
        if name == "stall_read":
            script[0]["seconds"] = self.deadline + 0.5
        return script

    def tap(
        self, reader: str, card: str, *, felica: bool, fault: str | None = None, hold: bool = False
    ) -> Tap:
        tap = Tap(len(self.taps), reader, card, felica, fault)
        args: dict[str, object] = {"reader": reader, "hold": hold}
        if felica:
            args["felica"] = "checkin"
        if fault is not None:
            args["faults"] = self.fault_script(fault)
            self.report.faults[fault] += 1
        self._d().tap(card, **args)
        self.taps.append(tap)
        self.removals += 0 if hold else 1
        return tap

    def random_tap(self, fault_rate: float = 0.2) -> Tap:
        reader = self.rng.choice(self.reader_names)
        if self.rng.random() < 0.6:
            return self.tap(reader, self.rng.choice(sorted(self.members)), felica=True)
        fault = None
        if self.rng.random() < fault_rate / 0.4:
            # a stall costs a whole deadline (and abandons a thread): rarer than the others
            names = [n for n in CARD_FAULTS if n != "stall_read"]
            fault = "stall_read" if self.rng.random() < 0.05 else self.rng.choice(names)
        return self.tap(reader, self.rng.choice(self.jpki_cards), felica=False, fault=fault)

    # -- the PC/SC reader -----------------------------------------------------------------------------
    def _wait_seen(
        self, what: str, predicate: Callable[[Envelope], bool], count: int, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for e in self.seen if predicate(e)) < count:
            assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
            self._drain(0.1)

    def _on_pcsc(self, *types: str) -> Callable[[Envelope], bool]:
        return lambda e: e["type"] in types and e["reader"] == PCSC_READER

    def pcsc_tap(self, fault: bool = False) -> Tap:
        """A card put on the vpcd reader through pcscd, read, taken off (synchronous: pcscd's presence
        poll quantises insert and removal, docs/design.md D8)."""
        assert self.pcscd is not None
        name = self.rng.choice(("dora", "eve"))  # not a sim card: another PKI, another pseudonym
        card: CardModel = build_card(CardProfile(name=f"pcsc-{name}"), self.pki)
        if fault:
            card = FaultyCard(card, FaultScript.from_data(PCSC_PULL[0]))
            self.report.faults["pcsc_pull"] += 1
        tap = Tap(len(self.taps), PCSC_READER, f"pcsc-{name}", False, "pcsc_pull" if fault else None, True)
        self.taps.append(tap)
        done = sum(1 for t in self.taps if t.pcsc)
        bridge = ViccBridge(card, port=self.pcscd.ports[0])
        bridge.insert()
        try:
            self._wait_seen("the PC/SC outcome", self._on_pcsc(*OUTCOMES), done, 20)
        finally:
            bridge.remove()
        self.removals += 1
        self._wait_seen("the PC/SC removal", self._on_pcsc("card.removed"), done, 20)
        assert bridge.errors == [], bridge.errors
        return tap

    def pcscd_crash(self) -> None:
        """SIGKILL pcscd (no card on the reader), wait for the reader to go, start it, wait for it back."""
        assert self.pcscd is not None
        self.quiesce()
        removed = sum(1 for e in self.seen if self._on_pcsc("reader.removed")(e))
        added = sum(1 for e in self.seen if self._on_pcsc("reader.added")(e))
        self.pcscd.kill()
        self.report.faults["pcscd_kill"] += 1
        self._wait_seen("reader.removed after pcscd died", self._on_pcsc("reader.removed"), removed + 1, 30)
        self.pcscd.start()
        self._wait_seen("reader.added after pcscd came back", self._on_pcsc("reader.added"), added + 1, 30)

    def _count(self, predicate: Callable[[Envelope], bool]) -> int:
        return sum(1 for e in self.seen if predicate(e))

    def pcsc_unplug(self) -> None:
        """The vpcd reader unplugged and plugged again: pcscd restarted with fewer reader entries (none:
        the soak's reader is entry 0's first slot, so only then does it go, as a USB reader pulled out),
        then with the same entries again (vpcd's readers are configuration entries, so a restart is how
        they come and go). Same ports: the cards still find it."""
        assert self.pcscd is not None
        self.quiesce()
        removed = self._count(self._on_pcsc("reader.removed"))
        added = self._count(self._on_pcsc("reader.added"))
        entries = self.pcscd.entries
        self.pcscd.restart(0)
        self.report.faults["pcsc_unplug"] += 1
        try:
            self._wait_seen("reader.removed at the unplug", self._on_pcsc("reader.removed"), removed + 1, 30)
            assert PCSC_READER not in [r["name"] for r in self.command("readers")["readers"]]
        finally:
            self.pcscd.restart(entries)
        self._wait_seen("reader.added after the replug", self._on_pcsc("reader.added"), added + 1, 30)

    def sim_unplug(self) -> None:
        """A simulated reader unplugged with a card on it (``card.removed``, then ``reader.removed``), a
        tap on it refused while it is gone, then plugged back (``reader.added``) for the next taps."""
        self.quiesce()
        reader = self.rng.choice(self.reader_names)
        self.tap(reader, self.rng.choice(sorted(self.members)), felica=True, hold=True)
        self.quiesce()

        def on(kind: str) -> Callable[[Envelope], bool]:
            return lambda e: e["type"] == kind and e["reader"] == reader

        removed, added = self._count(on("reader.removed")), self._count(on("reader.added"))
        cards_removed = self._count(on("card.removed"))
        assert self.command("unplug", reader=reader)["queued"]
        self.report.faults["sim_unplug"] += 1
        self.report.held_at_unplug += 1
        self.removals += 1  # the held card leaves first
        self._wait_seen(f"reader.removed of {reader}", on("reader.removed"), removed + 1, 10)
        kinds = [e["type"] for e in self.seen if e["reader"] == reader]
        gone = [k for k in kinds if k.startswith(("card.", "reader."))][-2:]  # plugin.handled may be late
        assert gone == ["card.removed", "reader.removed"], gone
        assert self._count(on("card.removed")) == cards_removed + 1
        refused = self._d().request("tap", {"card": "alice", "reader": reader})
        assert not refused["ok"], refused
        assert refused["error"]["code"] == "unknown_reader", refused
        self.report.refused_unplugged += 1
        assert reader not in [r["name"] for r in self.command("readers")["readers"]]
        assert self.command("plug", reader=reader)["queued"]
        self._wait_seen(f"reader.added of {reader}", on("reader.added"), added + 1, 10)
        self.unplugged[reader] += 1

    # -- setup ----------------------------------------------------------------------------------------
    def define_events(self) -> None:
        starts, ends = _window()
        self.all_events.update(self.events.values())
        for reader, event_id in self.events.items():
            self.command(
                "checkin.define_event",
                event_id=event_id,
                name=f"soak {reader}",
                place="区民センター",
                starts_at=starts,
                ends_at=ends,
                capacity=1000,
                points=POINTS_PER_EVENT,
                idempotency_key=f"define-{event_id}",
            )

    def setup_plugins(self) -> None:
        self.define_events()
        self.command(
            "points.define_programme",
            programme_id="ward",
            name="区民ポイント",
            last_earning_day="2099-12-31",
            last_ticket_day="2099-12-31",
            last_use_day="2099-12-31",
            idempotency_key="programme",
        )
        # Register the FeliCa check-in cards: on the reader (held), register, take it off.
        reader = self.reader_names[0]
        for card, member in sorted(self.members.items()):
            self.tap(reader, card, felica=True, hold=True)
            self.quiesce()
            self.command("checkin.register_card", reader=reader, member_id=member, idempotency_key=card)
            self._d().remove(reader)
            self.removals += 1

    # -- faults outside the card ----------------------------------------------------------------------
    def database_outage(self, taps: int) -> None:
        """Stop PostgreSQL, tap ``taps`` times while it is down, start it again."""
        self.quiesce()
        self.postgres.stop()
        self.report.faults["database_outage"] += 1
        try:
            for _ in range(taps):
                self.random_tap()
            self.quiesce()
        finally:
            self.postgres.start()

    # -- the end --------------------------------------------------------------------------------------
    def points_service(self) -> PointsService:
        assert self.in_process is not None
        store = self.in_process.daemon.store
        assert store is not None
        return PointsService(store.for_plugin("points"))

    def finish(self) -> None:
        """Push offline check-ins, then read the stores back (the daemon still running)."""
        self.quiesce()
        deadline = time.monotonic() + 30
        while (synced := self.command("checkin.sync")).get("pending", 0):
            assert time.monotonic() < deadline, f"offline check-ins never synced: {synced}"
            time.sleep(0.2)
        points = self.points_service()
        check = points.ledger_check()
        assert check["negative_accounts"] == 0, check
        self.report.outstanding_points = int(check["outstanding_points"])
        ledger = points.t.ledger
        self.ledger = {
            str(row.account): int(row.total)
            for row in points.db.transaction(
                lambda conn: conn.execute(
                    sa.select(ledger.c.account, sa.func.sum(ledger.c.amount).label("total")).group_by(
                        ledger.c.account
                    )
                ).all(),
                readonly=True,
            )
        }
        self.ledger_rows = int(
            points.db.transaction(
                lambda conn: conn.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one(),
                readonly=True,
            )
        )
        self.ledger_references = points.db.transaction(
            lambda conn: conn.execute(
                sa.select(ledger.c.reference, sa.func.count().label("n"))
                .group_by(ledger.c.reference)
                .having(sa.func.count() > 1)
            ).all(),
            readonly=True,
        )
        self.attendance = {
            event_id: [row["person"] for row in self.command("checkin.attendance", event_id=event_id)["rows"]]
            for event_id in sorted(self.all_events)
        }

    def logged_events(self) -> list[Envelope]:
        """Every event of every run, from the durable log (after the last stop)."""
        return read_event_log(Path(self.config.state_dir))


def _earns(data: dict[str, Any]) -> bool:
    """A check-in result the points plugin credits (accepted, for an enrolled member, with points)."""
    return data.get("status") == "accepted" and bool(data.get("member_id")) and bool(data.get("points"))


#: The points plugin's answers to an earning check-in result (``earned`` later from the deferred queue
#: is not an answer to one: it has no ``cause``).
POINTS_ANSWERS = ("plugin.points.earned", "plugin.points.earn_refused", "plugin.points.earn_deferred")


def unanswered_taps(events: list[Envelope]) -> set[str]:
    """Ids of ``card.identified`` events no check-in result names as its ``cause`` (yet)."""
    answered = {e.get("cause") for e in events if e["type"] == "plugin.checkin.result"}
    return {str(e["id"]) for e in events if e["type"] == "card.identified"} - answered


def unanswered_earnings(events: list[Envelope]) -> set[str]:
    """Ids of earning check-in results (live or replayed) the points plugin has not answered (yet)."""
    answered = {e.get("cause") for e in events if e["type"] in POINTS_ANSWERS}
    earning = {str(e["id"]) for e in events if e["type"] == "plugin.checkin.result" and _earns(e["data"])}
    return earning - answered


def verify(soak: Soak, events: list[Envelope]) -> SoakReport:
    """Check every promise against the event log and the stores; fill and return the report."""
    report = soak.report
    report.taps = len(soak.taps)
    report.events_logged = len(events)
    seqs = [int(e["seq"]) for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the event log has a gap"
    assert len({e["run_id"] for e in events}) == report.runs, "one run_id per daemon run"

    # Every tap: exactly one outcome, in the order the taps were sent (one backend thread), of the
    # expected type on the expected reader; an interrupted tap's abort names the fault's reason.
    # The sim backend's taps are in order among themselves (one thread), the PC/SC reader's likewise.
    outcomes = [e for e in events if e["type"] in OUTCOMES]
    assert len(outcomes) == len(soak.taps), (len(outcomes), len(soak.taps))
    sim_taps = [t for t in soak.taps if not t.pcsc]
    pcsc_taps = [t for t in soak.taps if t.pcsc]
    sim_outcomes = [e for e in outcomes if e["reader"] != PCSC_READER]
    pcsc_outcomes = [e for e in outcomes if e["reader"] == PCSC_READER]
    report.pcsc_taps = len(pcsc_taps)
    pseudonyms: dict[str, str] = {}
    pairs = [*zip(sim_taps, sim_outcomes, strict=True), *zip(pcsc_taps, pcsc_outcomes, strict=True)]
    for tap, out in pairs:
        where = f"tap #{tap.index} ({tap.card} on {tap.reader}, fault {tap.fault})"
        assert out["type"] == tap.expected, f"{where}: {out['type']} {out['data']}"
        assert out["reader"] == tap.reader, where
        if tap.fault is None:
            assert out["data"]["kind"] == ("felica" if tap.felica else "jpki"), where
            known = pseudonyms.setdefault(tap.card, out["data"]["pseudonym"])
            assert out["data"]["pseudonym"] == known, f"{where}: another pseudonym for the same card"
            report.identified += 1
        else:
            reasons = PCSC_PULL[1] if tap.pcsc else CARD_FAULTS[tap.fault][1]
            assert out["data"]["reason"] in reasons, f"{where}: {out['data']}"
            report.aborted += 1
            report.aborted_by_reason[out["data"]["reason"]] += 1
    removed = [e for e in events if e["type"] == "card.removed"]
    assert len(removed) == len(soak.taps), "every tap ends with card.removed"
    report.reader_events = Counter(
        f"{e['type']}:{e['data'].get('reason', '')}".rstrip(":")
        for e in events
        if e["type"].startswith("reader.") and e["reader"] == PCSC_READER
    )
    # Readers unplugged and plugged again: exactly one reader.removed per unplug (or pcscd kill) and one
    # reader.added per plug (or pcscd start), besides the one each daemon start announces.
    if soak.pcscd is not None:
        gone = report.faults["pcscd_kill"] + report.faults["pcsc_unplug"]
        assert report.reader_events["reader.removed"] == gone, report.reader_events
        assert report.reader_events["reader.added"] == report.runs + gone, report.reader_events
    for reader in soak.reader_names:
        kinds = Counter(e["type"] for e in events if e["reader"] == reader and e["type"].startswith("reader"))
        assert kinds["reader.removed"] == soak.unplugged[reader], (reader, kinds)
        assert kinds["reader.added"] == report.runs + soak.unplugged[reader], (reader, kinds)
        report.sim_reader_events.update(kinds)

    # Exactly one check-in result per identified card, per reader.
    identified = Counter(e["reader"] for e in events if e["type"] == "card.identified")
    results = [e for e in events if e["type"] == "plugin.checkin.result"]
    assert Counter(e["reader"] for e in results) == identified
    report.checkin_results = Counter(e["data"]["status"] for e in results)
    # The flaky plugin: one `seen` or one plugin.error for each identified card, never quarantined.
    errors = [e for e in events if e["type"] == "plugin.error"]
    report.plugin_errors = Counter(f"{e['data']['plugin']}/{e['data']['error']}" for e in errors)
    assert not [e for e in errors if e["data"]["quarantined"]], "no plugin may end up quarantined"
    report.flaky_seen = sum(1 for e in events if e["type"] == "plugin.flaky.seen")
    flaky_errors = sum(1 for e in errors if e["data"]["plugin"] == "flaky")
    assert report.flaky_seen + flaky_errors == report.identified
    assert soak.flaky is not None
    assert flaky_errors == soak.flaky.crashes
    assert {k for k in report.plugin_errors if not k.endswith("/store_unavailable")} <= {"flaky/exception"}

    # Check-in recorded once: one accepted result per (event, member), the same set as the attendance.
    accepted = Counter(
        (e["data"]["event_id"], f"member:{e['data']['member_id']}")
        for e in results
        if e["data"]["status"] == "accepted"
    )
    assert all(n == 1 for n in accepted.values()), f"accepted twice: {accepted}"
    for event_id, persons in soak.attendance.items():
        assert len(persons) == len(set(persons)), f"{event_id}: a person recorded twice"
        assert set(persons) == {p for (ev, p) in accepted if ev == event_id}, event_id
    report.attendance = sum(len(p) for p in soak.attendance.values())

    # Points awarded once: each crediting check-in result gets exactly one earned, earn_refused or (the
    # shared store down) earn_deferred, in feed order; deferred ones are credited later, in the order
    # they were deferred ("earned" with deferred: true); the ledger holds exactly the earned ones.
    earning = [e for e in results if _earns(e["data"])]

    def first_answer(e: Envelope) -> bool:
        kind = e["type"]
        if kind == "plugin.points.earned":
            return not e["data"].get("deferred")
        return kind in ("plugin.points.earn_refused", "plugin.points.earn_deferred")

    answers = [e for e in events if first_answer(e)]
    assert len(answers) == len(earning), (len(answers), len(earning))
    balances: Counter[str] = Counter()
    deferred: list[Envelope] = []
    for result, answer in zip(earning, answers, strict=True):
        assert answer["data"]["event_id"] == result["data"]["event_id"]
        assert answer["reader"] == result["reader"]
        if answer["type"] == "plugin.points.earned":
            balances[f"member:{result['data']['member_id']}"] += int(result["data"]["points"])
            report.points_earned += 1
        elif answer["type"] == "plugin.points.earn_deferred":
            deferred.append(result)
            report.earn_refused["deferred"] += 1
        else:
            report.earn_refused[answer["data"]["reason"]] += 1
    late = [e for e in events if e["type"] == "plugin.points.earned" and e["data"].get("deferred")]
    assert len(late) <= len(deferred), (len(late), len(deferred))
    for result, credit in zip(deferred, late, strict=False):
        assert credit["data"]["event_id"] == result["data"]["event_id"]
        balances[f"member:{result['data']['member_id']}"] += int(result["data"]["points"])
        report.points_earned += 1
    assert {a: b for a, b in soak.ledger.items() if b} == {a: b for a, b in balances.items() if b}
    assert soak.ledger_references == [], "a check-in credited twice"
    assert report.outstanding_points == sum(balances.values())
    return report
