"""A ward of kiosks on one PostgreSQL: tap -> result p50/p99 and results/s with 8 and 32 kiosk processes.

What is measured, all in one run on one machine:

- ``fleet``: N real ``readerd run --simulate`` processes (``tests/support/fleet.py``), each with its own
  state directory, all sharing one pseudonym key and one private PostgreSQL cluster
  (``tests/support/postgres.py``). Every kiosk runs the ``checkin`` and ``points`` plugins; every fourth
  one (the first included) is a bath house and runs ``bathhouse`` too. The ward's citizens hold
  bath-house FeliCa cards, each registered to a member for check-in and for the bath houses (on the first
  kiosk, before anything is measured). Each kiosk admits to two events of its own, one per simulated
  reader: ``Sim 00`` for the human-rate phase, ``Sim 01`` for the burst, so each phase starts with nobody
  checked in. Each kiosk walks the citizen list from its own offset, so a tap is a new check-in (an
  ``accepted`` result, then a points credit) until a kiosk has seen every citizen.
- **tap -> result**: from sending the simulator's ``tap`` control request (a DEALER socket of the bench's
  on the kiosk's operator socket) to the kiosk's ``plugin.checkin.result`` for that tap (its ``cause`` is
  the tap's ``card.identified``) arriving on a SUB socket of the bench's on that kiosk's PUB socket. On
  bath-house kiosks ``plugin.bathhouse.visit`` is timed too, and a tap is complete when both came.
- **human** rate: every kiosk taps once every ``--interval`` seconds on average (uniform jitter of +-50 %,
  first taps spread out); **burst**: every kiosk taps again as soon as its last tap is complete (one tap
  in flight per kiosk), for ``--burst-seconds``. results/s = completed taps / (first send to last result).
- **the baseline**, same run, same cluster: a bare psycopg connection over TCP loopback (as the kiosks
  connect), ``SELECT 1`` round trips and single-row ``INSERT`` + ``COMMIT``, with the fleet not yet
  started; and during every phase a probe thread doing ``SELECT 1`` ten times a second, to show what the
  load does to a bare round trip.
- **CPU, apart**: PostgreSQL's (the postmaster and its backends, from ``/proc/<pid>/stat``, reaped
  backends included through the postmaster's ``cutime``), the kiosk processes', this bench's own
  process (the driver), and the whole machine's busy time from ``/proc/stat``; "other" is the machine
  less those three (other work on a shared machine). Each as CPU milliseconds per result.

The private cluster runs with ``fsync=off`` and ``synchronous_commit=off`` (a throwaway test cluster):
these figures leave the disk out. 32 kiosk processes on a 2-CPU machine measure the machine as much as
readerd or PostgreSQL: the CPU figures say which.

Run: ``python -m bench.fleet [--kiosks 8,32] [--seconds 30] [--burst-seconds 10] [--quick]
[--json out.json]``; figures and how to read them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final

import zmq

from readerd.bus.control_client import ControlSession
from readerd.ops.keys import create_pseudonym_key
from tests.support.fleet import Fleet, Kiosk, KioskSpec
from tests.support.postgres import PostgresUnavailable, PrivatePostgres, missing_tools

HUMAN_READER: Final = "Sim 00"
BURST_READER: Final = "Sim 01"
READERS: Final = (HUMAN_READER, BURST_READER)
BATH_EVERY: Final = 4  # kiosks 0, 4, 8, ... are bath houses
PROGRAMME: Final = "ward-points"
POINTS: Final = 10
DRAIN_TIMEOUT: Final = 30.0  # seconds after a phase's end to wait for outstanding results
PROBE_INTERVAL: Final = 0.1  # seconds between the probe's SELECT 1s during a phase
CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")
RESULT_TYPES: Final = ("plugin.checkin.result", "plugin.bathhouse.visit")


# -- statistics ---------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99 (ms) and count of a list of durations in seconds."""
    if not seconds:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 0.99), 3), "n": len(ms)}


# -- CPU accounting from /proc ------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3, the state, is index 0); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process, every thread, and of its children it has reaped (0 if gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICK  # utime stime cutime cstime


def children_of(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                out.append(int(entry.name))
    return out


def postgres_cpu_s(postmaster: int) -> float:
    """The cluster's CPU: the postmaster (with the backends that have exited, through its cutime) and
    every live backend and auxiliary process (checkpointer, walwriter, autovacuum, ...)."""
    return process_cpu_s(postmaster) + sum(process_cpu_s(pid) for pid in children_of(postmaster))


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (all CPUs)."""
    first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    busy = user + nice + system + irq + softirq + steal  # guest time is counted in user already
    return busy / CLOCK_TICK, (busy + idle + iowait) / CLOCK_TICK


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    postgres: float
    kiosks: float
    driver: float
    machine_busy: float
    machine_total: float

    @classmethod
    def take(cls, postmaster: int, kiosks: Sequence[int]) -> CpuSnapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy, total = machine_cpu_s()
        return cls(
            wall=time.perf_counter(),
            postgres=postgres_cpu_s(postmaster),
            kiosks=sum(process_cpu_s(pid) for pid in kiosks),
            driver=usage.ru_utime + usage.ru_stime,
            machine_busy=busy,
            machine_total=total,
        )


def cpu_between(before: CpuSnapshot, after: CpuSnapshot, results: int) -> dict[str, Any]:
    """CPU seconds spent between two snapshots, apart, and per result (ms)."""
    spent = {
        "postgres_s": after.postgres - before.postgres,
        "kiosks_s": after.kiosks - before.kiosks,
        "driver_s": after.driver - before.driver,
        "machine_busy_s": after.machine_busy - before.machine_busy,
    }
    spent["other_s"] = spent["machine_busy_s"] - spent["postgres_s"] - spent["kiosks_s"] - spent["driver_s"]
    wall = after.wall - before.wall
    capacity = after.machine_total - before.machine_total
    out: dict[str, Any] = {k: round(v, 3) for k, v in spent.items()}
    out["wall_s"] = round(wall, 3)
    out["machine_busy_pct"] = round(100 * spent["machine_busy_s"] / capacity, 1) if capacity else None
    # in CPUs: 1.0 is one CPU kept busy for the whole phase
    out["cpus"] = {k.removesuffix("_s"): round(v / wall, 2) for k, v in spent.items()} if wall else {}
    out["per_result_ms"] = (
        {k.removesuffix("_s"): round(1000 * v / results, 2) for k, v in spent.items()} if results else {}
    )
    return out


# -- the bare round trip ------------------------------------------------------------------------------
def _connect(cluster: PrivatePostgres, database: str) -> Any:  # noqa: ANN401 - psycopg.Connection
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname=database)


def baseline(cluster: PrivatePostgres, database: str, rounds: int) -> dict[str, Any]:
    """Bare psycopg over TCP loopback, one connection: ``SELECT 1`` and single-row INSERT + COMMIT,
    p50/p99 and per second, with PostgreSQL's and this process's CPU per INSERT + COMMIT."""
    postmaster = cluster.pid
    if postmaster is None:
        raise RuntimeError("the cluster is not running")
    with _connect(cluster, database) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_fleet_baseline (id BIGSERIAL PRIMARY KEY, n INTEGER)")
        conn.commit()
        selects: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            selects.append(time.perf_counter() - t0)
        conn.commit()
        inserts: list[float] = []
        before = CpuSnapshot.take(postmaster, [])
        for i in range(rounds):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO bench_fleet_baseline (n) VALUES (%s)", (i,))
            conn.commit()
            inserts.append(time.perf_counter() - t0)
        cpu = cpu_between(before, CpuSnapshot.take(postmaster, []), rounds)
    return {
        "select1": {**latency(selects), "per_s": round(len(selects) / sum(selects), 1)},
        "insert_commit": {**latency(inserts), "per_s": round(len(inserts) / sum(inserts), 1)},
        "insert_commit_cpu_per_op_ms": {
            "postgres": cpu["per_result_ms"]["postgres"],
            "client": cpu["per_result_ms"]["driver"],
        },
    }


class Probe:
    """``SELECT 1`` every PROBE_INTERVAL on a connection of its own, on a thread, while a phase runs."""

    def __init__(self, cluster: PrivatePostgres, database: str, ward: str) -> None:
        self.cluster, self.database, self.ward = cluster, database, ward
        self.samples: list[float] = []
        self.connections: list[int] = []  # the ward database's connections, sampled once a second
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-probe", daemon=True)

    def _run(self) -> None:
        with _connect(self.cluster, self.database) as conn:
            conn.autocommit = True
            count = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            rounds = 0
            while not self._stop.wait(PROBE_INTERVAL):
                t0 = time.perf_counter()
                try:
                    conn.execute("SELECT 1").fetchone()
                    self.samples.append(time.perf_counter() - t0)
                    rounds += 1
                    if rounds % round(1 / PROBE_INTERVAL) == 1:
                        row = conn.execute(count, (self.ward,)).fetchone()
                        self.connections.append(int(row[0]) if row else 0)
                except Exception:  # counted; the phase goes on
                    self.errors += 1

    @contextmanager
    def running(self) -> Iterator[Probe]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)


def transactions(cluster: PrivatePostgres, database: str) -> int:
    """Committed + rolled back transactions of the database (pg_stat_database). A backend reports its
    counts at most once a second, an idle one within 10 s: ``--settle`` waits that out around a phase;
    without it a phase's count is approximate."""
    with _connect(cluster, "postgres") as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


# -- the ward -----------------------------------------------------------------------------------------
def citizen(i: int) -> tuple[str, str]:
    """The i-th citizen's bath-house card number and member number (both [0-9A-Z]{1,16})."""
    return f"C{i:05d}", f"M{i:05d}"


def kiosk_specs(kiosks: int, tag: str) -> list[KioskSpec]:
    specs = []
    for i in range(kiosks):
        bath = i % BATH_EVERY == 0
        name = f"{'bath' if bath else 'hall'}-{i:02d}"
        config: dict[str, dict[str, object]] = {
            "checkin": {"readers": {r: event_id(tag, name, r) for r in READERS}},
            "points": {"earn_programme": PROGRAMME},
        }
        plugins: tuple[str, ...] = ("checkin", "points")
        if bath:
            plugins += ("bathhouse",)
            config["bathhouse"] = {"bath_house": f"yu-{i:02d}"}
        specs.append(KioskSpec(name, plugins, config, readers=READERS))
    return specs


def event_id(tag: str, kiosk: str, reader: str) -> str:
    return f"{tag}-{kiosk}-{'human' if reader == HUMAN_READER else 'burst'}"


def _command(session: ControlSession, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    reply = session.request(cmd, args)
    if not reply.get("ok"):
        raise RuntimeError(f"{cmd} refused: {reply.get('error')}")
    result: dict[str, Any] = reply["result"]
    return result


def _result_of(cause: str, env: dict[str, Any]) -> bool:
    return env["type"] in RESULT_TYPES and env.get("cause") == cause


def register_citizens(counter: Kiosk, citizens: int) -> None:
    """At the first bath-house kiosk, as at a ward office counter: each citizen's card on the reader,
    registered for check-in and for the bath houses, taken off. A counter command acts on the card its
    plugin saw last, so each waits for both plugins' results of that card's tap."""
    with counter.session() as session, counter.subscriber("card.identified", "plugin.") as sub:
        for i in range(citizens):
            card, member = citizen(i)
            tap = {"card": card, "felica": "bathhouse", "reader": HUMAN_READER, "hold": True}
            _command(session, "tap", tap)
            identified = sub.until(lambda e: e["type"] == "card.identified", 10)[-1]["id"]
            seen: set[str] = set()
            while seen != set(RESULT_TYPES):
                env = sub.until(partial(_result_of, identified), 10)
                seen.add(env[-1]["type"])
            register: dict[str, Any] = {
                "reader": HUMAN_READER,
                "member_id": member,
                "idempotency_key": f"reg-{card}",
            }
            _command(session, "checkin.register_card", register)
            bath: dict[str, Any] = {
                "reader": HUMAN_READER,
                "member_number": member,
                "birth_date": "1950-04-01",
                "ward": 13101,
                "idempotency_key": f"bath-{card}",
            }
            _command(session, "bathhouse.register", bath)
            _command(session, "remove", {"reader": HUMAN_READER})


def define_ward(counter: Kiosk, kiosks: Sequence[Kiosk], tag: str, *, programme: bool) -> None:
    """Every kiosk's two events (open now, for hours), and the points programme they earn in."""
    now = datetime.now(UTC)
    with counter.session() as session:
        if programme:
            _command(
                session,
                "points.define_programme",
                {
                    "programme_id": PROGRAMME,
                    "name": "区民ポイント",
                    "last_earning_day": "2099-12-31",
                    "last_ticket_day": "2099-12-31",
                    "last_use_day": "2099-12-31",
                    "idempotency_key": f"programme-{PROGRAMME}",
                },
            )
        for kiosk in kiosks:
            for reader in READERS:
                ident = event_id(tag, kiosk.name, reader)
                _command(
                    session,
                    "checkin.define_event",
                    {
                        "event_id": ident,
                        "name": f"bench {ident}",
                        "place": "区民センター",
                        "starts_at": (now - timedelta(hours=1)).isoformat(),
                        "ends_at": (now + timedelta(hours=12)).isoformat(),
                        "capacity": 1_000_000,
                        "points": POINTS,
                        "idempotency_key": f"define-{ident}",
                    },
                )


# -- the driver ---------------------------------------------------------------------------------------
@dataclass
class Tap:
    kiosk: int
    sent: float
    identified: float | None = None
    checkin: float | None = None
    status: str | None = None
    visit: float | None = None
    visit_status: str | None = None
    done: float | None = None
    aborted: bool = False


@dataclass
class Link:
    """The bench's two sockets on one kiosk and its taps in flight."""

    index: int
    kiosk: Kiosk
    bath: bool
    dealer: zmq.Socket[bytes]
    sub: zmq.Socket[bytes]
    next_card: int
    pending: deque[Tap] = field(default_factory=deque)  # sent, not identified yet (the backend keeps order)
    by_event: dict[str, Tap] = field(default_factory=dict)  # identified, results outstanding
    next_due: float = 0.0
    sent: int = 0

    @property
    def in_flight(self) -> int:
        return len(self.pending) + len(self.by_event)


@dataclass
class PhaseTally:
    taps: list[Tap] = field(default_factory=list)  # complete
    other: Counter[str] = field(default_factory=Counter)  # points results, plugin errors, refusals
    sent: int = 0


@dataclass
class PhaseRun:
    """One phase as it runs: its mode, reader and clock, and what it counted."""

    mode: str  # "human" or "burst"
    reader: str
    start: float
    seconds: float
    interval: float
    tally: PhaseTally = field(default_factory=PhaseTally)
    last: float = 0.0  # when the last result came (the start until one does)

    @property
    def end(self) -> float:
        return self.start + self.seconds


class Driver:
    """One thread, one poller: sends taps on every kiosk's operator socket and reads every kiosk's PUB."""

    def __init__(self, kiosks: Sequence[Kiosk], citizens: int, seed: int) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.citizens = citizens
        self.rng = random.Random(seed)  # noqa: S311 - a replayable tap schedule, not a secret
        self.links: list[Link] = []
        self.poller = zmq.Poller()
        self.by_socket: dict[zmq.Socket[bytes], Link] = {}
        self._ids = 0
        for i, kiosk in enumerate(kiosks):
            dealer = self.context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(kiosk.operator)
            sub = self.context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 0)
            sub.connect(kiosk.publish)
            for prefix in ("card.identified", "card.read_aborted", "plugin.", "heartbeat"):
                sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
            offset = i * citizens // max(1, len(kiosks))
            link = Link(i, kiosk, "bathhouse" in kiosk.spec.plugins, dealer, sub, next_card=offset)
            self.links.append(link)
            for sock in (dealer, sub):
                self.poller.register(sock, zmq.POLLIN)
                self.by_socket[sock] = link

    def close(self) -> None:
        for link in self.links:
            link.dealer.close()
            link.sub.close()

    def sync(self, timeout: float = 30.0) -> None:
        """Until every SUB socket has had a heartbeat: then its subscription is live (slow joiner)."""
        waiting = {link.sub for link in self.links}
        deadline = time.monotonic() + timeout
        while waiting:
            if time.monotonic() > deadline:
                names = [self.by_socket[s].kiosk.name for s in waiting]
                raise RuntimeError(f"no heartbeat within {timeout} s from {names}")
            for sock, _ in self.poller.poll(100):
                while self._recv(sock) is not None:
                    waiting.discard(sock)

    @staticmethod
    def _recv(sock: zmq.Socket[bytes]) -> list[bytes] | None:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None

    def send_tap(self, link: Link, reader: str, tally: PhaseTally) -> None:
        card, _member = citizen(link.next_card % self.citizens)
        link.next_card += 1
        self._ids += 1
        body = {"id": str(self._ids), "cmd": "tap", "args": {"card": card, "felica": "bathhouse",
                                                               "reader": reader, "hold": False}}  # fmt: skip
        link.pending.append(Tap(link.index, time.perf_counter()))
        link.dealer.send_multipart([b"", json.dumps(body).encode()])
        link.sent += 1
        tally.sent += 1

    def run(self, mode: str, reader: str, seconds: float, interval: float) -> PhaseRun:
        """One phase, until its end and every tap sent is complete (or DRAIN_TIMEOUT past the end)."""
        run = PhaseRun(mode, reader, time.perf_counter(), seconds, interval)
        run.last = run.start
        for link in self.links:
            link.next_due = run.start + (self.rng.uniform(0, interval) if mode == "human" else 0.0)
        while True:
            now = time.perf_counter()
            if now < run.end:
                self._send_due(run, now)
            outstanding = sum(link.in_flight for link in self.links)
            if now >= run.end and outstanding == 0:
                return run
            if now >= run.end + DRAIN_TIMEOUT:
                run.tally.other["lost: no result within the drain timeout"] += outstanding
                for link in self.links:
                    link.pending.clear()
                    link.by_event.clear()
                return run
            wait = 0.05
            if mode == "human" and now < run.end:
                wait = max(0.0, min(wait, min(link.next_due for link in self.links) - now))
            for sock, _ in self.poller.poll(int(wait * 1000) + 1):
                self._drain(sock, run)

    def _send_due(self, run: PhaseRun, now: float) -> None:
        for link in self.links:
            if run.mode == "human" and link.next_due <= now:
                self.send_tap(link, run.reader, run.tally)
                link.next_due += run.interval * self.rng.uniform(0.5, 1.5)
            elif run.mode == "burst" and link.in_flight == 0:
                self.send_tap(link, run.reader, run.tally)

    def _drain(self, sock: zmq.Socket[bytes], run: PhaseRun) -> None:
        """Everything waiting on one socket; each message stamped as it is taken."""
        link = self.by_socket[sock]
        while (frames := self._recv(sock)) is not None:
            t = time.perf_counter()
            if sock is link.dealer:
                reply = json.loads(frames[-1])
                if not reply.get("ok"):
                    run.tally.other[f"tap refused: {reply.get('error', {}).get('code')}"] += 1
                    link.pending.pop()  # the newest tap: the backend queued nothing
                continue
            done = self._event(link, run, frames, t)
            if done is not None:
                run.tally.taps.append(done)
                run.last = max(run.last, t)
                if run.mode == "burst" and t < run.end:
                    self.send_tap(link, run.reader, run.tally)

    def _event(self, link: Link, run: PhaseRun, frames: list[bytes], t: float) -> Tap | None:
        """One event of a kiosk; the tap it completes, if it does."""
        topic = frames[0].decode()
        if topic == "heartbeat":
            return None
        env = json.loads(frames[1])
        if topic in ("card.identified", "card.read_aborted"):
            if env.get("reader") != run.reader or not link.pending:
                return None
            tap = link.pending.popleft()
            tap.identified = t
            if topic == "card.read_aborted":
                tap.aborted, tap.done = True, t
                run.tally.other[f"read aborted: {env['data'].get('reason')}"] += 1
                return tap
            link.by_event[env["id"]] = tap
            return None
        if topic == "plugin.error":
            run.tally.other[f"plugin.error: {env['data'].get('plugin')}/{env['data'].get('error')}"] += 1
            return None
        if topic.startswith("plugin.points."):
            run.tally.other[topic] += 1
        found = link.by_event.get(str(env.get("cause")))
        if topic not in RESULT_TYPES or found is None:
            return None
        if topic == "plugin.checkin.result":
            found.checkin, found.status = t, str(env["data"].get("status"))
        else:
            found.visit, found.visit_status = t, str(env["data"].get("status"))
        if found.checkin is not None and (found.visit is not None or not link.bath):
            found.done = t
            del link.by_event[env["cause"]]
            return found
        return None


# -- one phase, one fleet -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    kiosks: tuple[int, ...]
    seconds: float
    burst_seconds: float
    interval: float
    citizens: int
    baseline_rounds: int
    seed: int
    settle: float


def phase_figures(run: PhaseRun, cpu: dict[str, Any], probe: Probe, xacts: int) -> dict[str, Any]:
    taps = [t for t in run.tally.taps if not t.aborted]
    results = [t for t in taps if t.checkin is not None]
    span = run.last - run.start
    bath = [t for t in taps if t.visit is not None]
    return {
        "taps_sent": run.tally.sent,
        "results": len(results),
        "results_per_s": round(len(results) / span, 2) if span > 0 else 0.0,
        "span_s": round(span, 3),
        "tap_to_result": latency([t.checkin - t.sent for t in results if t.checkin is not None]),
        "tap_to_identified": latency([t.identified - t.sent for t in taps if t.identified is not None]),
        "tap_to_bath_visit": latency([t.visit - t.sent for t in bath if t.visit is not None]),
        "tap_to_complete": latency([t.done - t.sent for t in taps if t.done is not None]),
        "checkin_statuses": dict(Counter(t.status for t in results)),
        "visit_statuses": dict(Counter(t.visit_status for t in bath)),
        "other": dict(run.tally.other),
        "pg_select1_during": {**latency(probe.samples), "errors": probe.errors},
        "pg_connections": {
            "max": max(probe.connections, default=0),
            "median": statistics.median(probe.connections) if probe.connections else 0,
        },
        "pg_transactions": xacts,
        "pg_transactions_per_result": round(xacts / len(results), 2) if results else None,
        "cpu": cpu,
    }


@dataclass(frozen=True)
class Ward:
    """What every fleet of a run shares: the cluster, the ward's database, the key, the plan."""

    cluster: PrivatePostgres
    database: str
    url: str
    key: Path
    work: Path
    plan: Plan


def measure_fleet(ward: Ward, n: int, *, first: bool) -> dict[str, Any]:
    """Start n kiosks, register the citizens (the first fleet only: the database is kept), define the
    events, then the human-rate phase and the burst."""
    plan, postmaster = ward.plan, ward.cluster.pid
    if postmaster is None:
        raise RuntimeError("the cluster is not running")
    tag = f"n{n}"
    specs = kiosk_specs(n, tag)
    t0 = time.perf_counter()
    fleet = Fleet(ward.work / f"fleet-{n}", ward.url, specs, heartbeat=1.0, key_file=ward.key)
    out: dict[str, Any] = {"kiosks": n, "bath_kiosks": sum(1 for s in specs if "bathhouse" in s.plugins)}
    with ExitStack() as stack:
        stack.enter_context(fleet)
        out["start_s"] = round(time.perf_counter() - t0, 2)
        sys.stderr.write(f"bench fleet: {n} kiosks ready in {out['start_s']} s\n")
        counter = fleet.kiosks[0]
        if first:
            t1 = time.perf_counter()
            register_citizens(counter, plan.citizens)
            sys.stderr.write(
                f"bench fleet: {plan.citizens} citizens registered in {time.perf_counter() - t1:.1f} s\n"
            )
        define_ward(counter, fleet.kiosks, tag, programme=first)
        pids = [k.pid for k in fleet.kiosks if k.pid is not None]
        driver = Driver(fleet.kiosks, plan.citizens, plan.seed + n)
        stack.callback(driver.close)
        driver.sync()
        phases: dict[str, Any] = {}
        time.sleep(plan.settle)  # idle backends report their transactions within 10 s
        xacts_mark = transactions(ward.cluster, ward.database)
        for mode, reader, seconds in (
            ("human", HUMAN_READER, plan.seconds),
            ("burst", BURST_READER, plan.burst_seconds),
        ):
            # the probe connects to another database: the ward's transactions are counted
            probe = Probe(ward.cluster, "postgres", ward.database)
            before = CpuSnapshot.take(postmaster, pids)
            with probe.running():
                run = driver.run(mode, reader, seconds, plan.interval)
            after = CpuSnapshot.take(postmaster, pids)
            time.sleep(plan.settle)
            xacts = transactions(ward.cluster, ward.database)
            results = sum(1 for t in run.tally.taps if t.checkin is not None)
            cpu = cpu_between(before, after, results)
            phases[mode] = phase_figures(run, cpu, probe, xacts - xacts_mark)
            xacts_mark = xacts
            sys.stderr.write(f"bench fleet: {n} kiosks, {mode}: {_summary(phases[mode])}\n")
        out["kiosk_rss_mib"] = round(sum(rss_mib(pid) for pid in pids), 1)
        out["phases"] = phases
        out["exit_codes"] = fleet.stop()
    return out


def _summary(phase: dict[str, Any]) -> str:
    lat = phase["tap_to_result"]
    return (
        f"{phase['results']} results, {phase['results_per_s']}/s, p50 {lat['p50_ms']} ms, "
        f"p99 {lat['p99_ms']} ms, machine {phase['cpu']['machine_busy_pct']} % busy"
    )


# -- output -------------------------------------------------------------------------------------------
def report(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"# bench.fleet  {result['date']}  {machine['cpus']} CPUs, load {machine['load']}",
    ]
    if "skipped" in result:
        return "\n".join([*lines, f"skipped: {result['skipped']}"]) + "\n"
    plan, base = result["plan"], result["baseline"]
    lines += [
        f"# human: a tap per kiosk every {plan['interval']} s (+-50 %) for {plan['seconds']} s; burst: "
        f"one tap in flight per kiosk for {plan['burst_seconds']} s; {plan['citizens']} citizens; every "
        f"{BATH_EVERY}th kiosk a bath house",
        "",
        "| kiosks | mode | results | results/s | tap -> result p50 ms | p99 ms | bath visit p50 ms | "
        "PG SELECT 1 during, p50 (p99) ms | machine busy | CPU ms/result: PG | kiosks | driver | other |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for fleet in result["fleets"]:
        for mode, p in fleet["phases"].items():
            per = p["cpu"]["per_result_ms"] or {}
            probe = p["pg_select1_during"]
            lines.append(
                f"| {fleet['kiosks']} | {mode} | {p['results']} | {p['results_per_s']:.1f} "
                f"| {p['tap_to_result']['p50_ms']:.1f} | {p['tap_to_result']['p99_ms']:.1f} "
                f"| {p['tap_to_bath_visit']['p50_ms']:.1f} "
                f"| {probe['p50_ms']:.2f} ({probe['p99_ms']:.1f}) | {p['cpu']['machine_busy_pct']} % "
                f"| {per.get('postgres', float('nan')):.2f} | {per.get('kiosks', float('nan')):.1f} "
                f"| {per.get('driver', float('nan')):.2f} | {per.get('other', float('nan')):.1f} |"
            )
    s, i = base["select1"], base["insert_commit"]
    lines += [
        "",
        f"baseline, bare psycopg over TCP loopback, fleet not started: SELECT 1 p50 {s['p50_ms']} ms "
        f"(p99 {s['p99_ms']}), {s['per_s']:,.0f}/s; INSERT + COMMIT p50 {i['p50_ms']} ms "
        f"(p99 {i['p99_ms']}), {i['per_s']:,.0f}/s, "
        f"PostgreSQL CPU {base['insert_commit_cpu_per_op_ms']['postgres']} ms each",
    ]
    for fleet in result["fleets"]:
        for mode, p in fleet["phases"].items():
            lines.append(
                f"{fleet['kiosks']} kiosks, {mode}: statuses {p['checkin_statuses']}, visits "
                f"{p['visit_statuses']}, PG transactions/result ~{p['pg_transactions_per_result']}, "
                f"PG connections (max) {p['pg_connections']['max']}, "
                f"CPUs busy {p['cpu']['cpus']}" + (f", other: {p['other']}" if p["other"] else "")
            )
        lines.append(
            f"{fleet['kiosks']} kiosks: ready in {fleet['start_s']} s, VmRSS of all kiosks "
            f"{fleet['kiosk_rss_mib']:,.0f} MiB, exit codes {sorted(set(fleet['exit_codes'].values()))}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kiosks", default="8,32", help="kiosk processes, one fleet each (default 8,32)")
    parser.add_argument("--seconds", type=float, help="human-rate phase (default 30, quick 4)")
    parser.add_argument("--burst-seconds", type=float, help="burst phase (default 10, quick 2)")
    parser.add_argument("--interval", type=float, default=2.0, help="mean seconds between a kiosk's taps")
    parser.add_argument("--citizens", type=int, help="registered cards (default 400, quick 6)")
    parser.add_argument("--baseline-rounds", type=int, help="bare round trips (default 2000, quick 100)")
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds before and after each phase for PostgreSQL's transaction counts (default 11, quick 0)",
    )
    parser.add_argument("--quick", action="store_true", help="short phases, few citizens: about 30 s")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        kiosks = tuple(int(k) for k in args.kiosks.split(","))
    except ValueError:
        parser.error("--kiosks: comma-separated whole numbers, e.g. 8,32")
    plan = Plan(
        kiosks=kiosks,
        seconds=args.seconds or (4.0 if args.quick else 30.0),
        burst_seconds=args.burst_seconds or (2.0 if args.quick else 10.0),
        interval=args.interval,
        citizens=args.citizens or (6 if args.quick else 400),
        baseline_rounds=args.baseline_rounds or (100 if args.quick else 2000),
        seed=args.seed,
        settle=args.settle if args.settle is not None else (0.0 if args.quick else 11.0),
    )
    if min(*plan.kiosks, plan.seconds, plan.burst_seconds, plan.interval, plan.citizens) <= 0:
        parser.error("--kiosks, --seconds, --burst-seconds, --interval and --citizens must be positive")
    # SIGTERM unwinds like Ctrl-C: the kiosks and the private cluster are stopped and removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(),
        },
        "plan": {
            "kiosks": list(plan.kiosks),
            "seconds": plan.seconds,
            "burst_seconds": plan.burst_seconds,
            "interval": plan.interval,
            "citizens": plan.citizens,
            "baseline_rounds": plan.baseline_rounds,
            "bath_every": BATH_EVERY,
            "settle": plan.settle,
        },
    }
    cluster, why = _cluster()
    if cluster is None:
        result["skipped"] = why
    else:
        try:
            result["machine"]["postgresql"] = str(cluster.bindir)
            result |= _measure(cluster, plan)
        finally:
            cluster.remove()
    sys.stdout.write(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def _cluster() -> tuple[PrivatePostgres | None, str | None]:
    missing = missing_tools()
    if missing:
        return None, f"needs {', '.join(missing)} (scripts/bootstrap --test installs them)"
    try:
        return PrivatePostgres().start(), None
    except (PostgresUnavailable, OSError) as e:
        return None, str(e)


def _measure(cluster: PrivatePostgres, plan: Plan) -> dict[str, Any]:
    database = "ward"
    url = cluster.create_database(database)
    with tempfile.TemporaryDirectory(prefix="readerd-bench-fleet-") as tmp:
        work = Path(tmp)
        key = work / "ward-pseudonym.key"
        create_pseudonym_key(key)
        base = baseline(cluster, database, plan.baseline_rounds)
        ward = Ward(cluster, database, url, key, work, plan)
        fleets = [measure_fleet(ward, n, first=i == 0) for i, n in enumerate(plan.kiosks)]
    return {"baseline": base, "fleets": fleets}


if __name__ == "__main__":
    sys.exit(main())
