"""Taps per second through daemon -> bus -> plugin host -> 4 no-op plugins, beside raw pyzmq PUB/SUB.

What is measured, all in one run on one machine:

- ``pipeline``: completed taps per second. One **tap** is a simulated My Number Card with ``hold: false``
  put on the sim backend's queue, as a reader's detection reaches its backend (``SimBackend.present``; the
  same taps as the control command ``tap`` run beside, alternating: ``by_control_request``): the backend
  builds the virtual card and inserts it, the daemon identifies it (SELECT AP + READ BINARY of the
  certificate, in process; HMAC pseudonym; member directory lookup), publishes ``card.presented``,
  ``card.identified`` and ``card.removed``; the plugin host gets ``card.identified`` on its in-process feed
  and hands it to ``readerd_card_identified`` of each of four no-op plugins, side by side; each publishes
  ``plugin.noopN.done`` back through the daemon (with ``--hook-ms``, after waiting that long, as a plugin
  that asks a server would). A tap is complete when a plain SUB socket on the daemon's PUB endpoint has
  all four results; that subscriber is a process of its own (:mod:`bench.lan_watcher`), as every LAN
  subscriber of a kiosk is. Taps alternate over two readers and two cards so none is a ``repeat``; at
  most ``--window`` taps are in flight.
- ``raw``: pyzmq alone, PUB -> SUB over TCP loopback, messages of the size of the ``card.identified``
  envelope the plugin host receives, ``[topic, payload]`` frames like the daemon's: the floor of one bus hop.
- ``latency``: one tap at a time, the time from putting the card on the queue to each stage (the LAN
  subscriber sees ``card.identified``, the first plugin hook starts, the last plugin publishes, the last
  result arrives).
- CPU time per tap: of the daemon's own threads (``daemon_cpu_ms_per_tap``: every thread of the process
  but the bench's driver, see :mod:`bench.threadcpu`) and of the whole process; per raw message for the
  baseline. Steadier than rates on a shared machine; the daemon's CPU per tap over the raw CPU per message
  is "raw messages' worth of CPU per tap".

The simulator re-reads and re-validates its RSA keys from PEM files on every tap (130-400 ms per card,
which would make this a benchmark of the simulator); the bench memoizes ``PkiStore._key`` in this process
(``--no-sim-key-cache`` turns that off) and prints both card-build costs. The daemon, its host and
plugins and the driver that taps run in one Python process: the GIL is shared, as it is in ``readerd
run``; the LAN subscriber does not share it (in the bench's process it did, and the daemon's threads'
waits for the GIL while it parsed every event counted as the daemon's CPU). The daemon's
state directory (store, event log) is a temporary directory; ``--state-in /dev/shm`` shows what the
disk's fsyncs cost.

Run: ``python -m bench.plugin_pipeline [--taps 500] [--runs 5] [--quick] [--json out.json]``; results and
how to read them: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import zmq

from bench import threadcpu
from readerd.logging import configure as configure_logging
from readerd.plugin.api import PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl

READERS: Final = ("Sim 00", "Sim 01")
TapVia = Literal["reader", "control"]
TAP_VIAS: Final[tuple[TapVia, ...]] = ("reader", "control")
CARDS: Final = ("alice", "bob")
TIMEOUT: Final = 30.0  # seconds without progress before a run is declared stuck


# -- the plugins --------------------------------------------------------------------------------------
@dataclass(eq=False)  # pluggy tells plugins apart by equality
class NoopPlugin:
    """Does nothing but say it saw the card; stamps its calls for the latency breakdown."""

    entered: dict[int, float] = field(default_factory=dict)  # card.identified seq -> hook entered
    publishing: dict[int, float] = field(default_factory=dict)  # -> about to publish its result
    #: Seconds the hook waits before it answers, as a plugin that asks a server (``--hook-ms``).
    wait_s: float = 0.0

    @hookimpl
    def readerd_result_fields(self) -> dict[str, frozenset[str]]:
        return {"done": frozenset({"seq"})}

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent, context: PluginContext) -> None:
        self.entered[event.seq] = time.perf_counter()
        if self.wait_s:
            time.sleep(self.wait_s)  # the GIL is free meanwhile, as in a socket read
        self.publishing[event.seq] = time.perf_counter()  # stamped first: the result may arrive at once
        context.publish("done", {"seq": event.seq}, reader=event.reader)


# -- statistics ---------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], digits: int = 1) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 0.99), 3)}


# -- the simulator's key cache ------------------------------------------------------------------------
_SIM_KEY_LOADER: list[Callable[..., Any]] = []  # the simulator's own PkiStore._key, once replaced


def cache_sim_keys() -> None:
    """Memoize the simulator's RSA key loading (a cost of the test rig, not of readerd)."""
    from simulators.pki import PkiStore

    load = PkiStore._key
    _SIM_KEY_LOADER.append(load)
    cache: dict[tuple[str, str], Any] = {}
    lock = threading.Lock()

    def cached(self: PkiStore, name: str) -> Any:  # noqa: ANN401 - rsa.RSAPrivateKey
        key = (str(self.root), name)
        with lock:
            if key not in cache:
                cache[key] = load(self, name)
            return cache[key]

    PkiStore._key = cached  # type: ignore[method-assign]


class SimBuildMeter:
    """CPU time the simulator spends inside the daemon's threads: ``build_card`` on the backend thread (the
    test rig making the virtual card) and ``VirtualMyNumberCard.process`` on the session thread (the card
    answering its APDUs, which a real card does on its own chip). Neither is readerd, so both are taken
    out of the daemon's CPU and shown apart."""

    def __init__(self) -> None:
        self.seconds = 0.0  # build and answers together (what comes off the daemon's CPU)
        self.answer_seconds = 0.0
        self._lock = threading.Lock()

    def reading(self) -> tuple[float, float]:
        """(the simulator's seconds in all, of them the card's answers) so far."""
        with self._lock:
            return self.seconds, self.answer_seconds

    def since(self, mark: tuple[float, float]) -> tuple[float, float]:
        """:meth:`reading` less an earlier one."""
        now = self.reading()
        return now[0] - mark[0], now[1] - mark[1]

    def install(self) -> None:
        from readerd.reading.backends import sim
        from simulators.mynumber import VirtualMyNumberCard

        build = getattr(sim, "build_card")  # the name the sim backend calls  # noqa: B009
        process = VirtualMyNumberCard.process

        def timed(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - the simulator's CardModel
            started = time.thread_time()
            try:
                return build(*args, **kwargs)
            finally:
                used = time.thread_time() - started
                with self._lock:
                    self.seconds += used

        def answered(card: VirtualMyNumberCard, apdu: bytes) -> bytes:
            started = time.thread_time()
            try:
                return process(card, apdu)
            finally:
                used = time.thread_time() - started
                with self._lock:
                    self.seconds += used
                    self.answer_seconds += used

        setattr(sim, "build_card", timed)  # noqa: B010 - the sim backend's own reference
        VirtualMyNumberCard.process = answered  # type: ignore[method-assign,assignment] # the card's own answers


def sim_card_build_ms(pki: Path) -> dict[str, float]:
    """What the simulator spends making one card for a tap (ms, median of 3, keys made already): as the
    bench ran, and with the simulator's own key loading (PEM parse and RSA check of 4 keys per card)."""
    from simulators.mynumber import CardProfile, build_card
    from simulators.pki import PkiStore

    def median_ms() -> float:
        store = PkiStore(pki)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            build_card(CardProfile(name=CARDS[0]), store)
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1000, 2)

    out = {"as_run": median_ms()}
    if _SIM_KEY_LOADER:
        cached = PkiStore._key
        PkiStore._key = _SIM_KEY_LOADER[0]  # type: ignore[method-assign]
        try:
            out["keys_reloaded"] = median_ms()
        finally:
            PkiStore._key = cached  # type: ignore[method-assign]
    else:
        out["keys_reloaded"] = out["as_run"]
    return out


def hook_call_overhead_us(calls: int = 2000) -> dict[str, float]:
    """The host runs every hook call on the plugin's kept worker thread (``readerd.plugin.worker``); it
    used to start a thread per call (``run_with_deadline``, which card commands still use). The cost of
    each for a function that does nothing, beside calling that function directly (microseconds per
    call, wall time)."""
    from readerd.ops.deadline import run_with_deadline
    from readerd.plugin.worker import Workers

    def noop() -> None:
        return None

    def per_call(call: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - t0) / calls * 1e6

    workers = Workers()
    try:
        worker = per_call(lambda: workers.run("bench", noop, 5.0))
    finally:
        workers.stop()
    return {
        "direct_us": round(per_call(noop), 2),
        "plugin_worker_us": round(worker, 1),
        "run_with_deadline_us": round(per_call(lambda: run_with_deadline(noop, 5.0, name="bench")), 1),
    }


# -- the daemon side ----------------------------------------------------------------------------------
@dataclass
class Tap:
    sent: float
    identified: float | None = None  # card.identified seen by the LAN subscriber
    seq: int | None = None
    done: float | None = None  # the last plugin result seen by the LAN subscriber


@dataclass
class _RunState:
    pending: list[Tap] = field(default_factory=list)  # sent, not identified yet (the backend keeps order)
    by_seq: dict[int, Tap] = field(default_factory=dict)  # identified, results outstanding
    done: list[Tap] = field(default_factory=list)


class Driver:
    """Taps (:meth:`send_tap`) and follows each to its last plugin result through the LAN subscriber, a
    process of its own (:mod:`bench.lan_watcher`) that reports on a pipe.

    The driver has a ZeroMQ context of its own (not the daemon's ``Context.instance()``) for the control
    socket, so that its libzmq I/O threads are the bench's and their CPU is not counted as the daemon's:
    ``threads`` are the native ids of the driver's threads (the calling thread and its context's)."""

    def __init__(
        self,
        control: str,
        publish: str,
        heartbeat_now: Callable[[], None],
        plugins: int,
        present: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.plugins = plugins
        self.present = present
        self.via: TapVia = "reader"
        zmq_before = threadcpu.zmq_threads()
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.control = self.context.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.connect(control)
        # libzmq starts a context's I/O and reaper threads with its first socket: those are the driver's
        self.threads = {threading.get_native_id(), *threadcpu.new_zmq_threads(zmq_before)}
        self.watcher = subprocess.Popen(  # noqa: S603 - this interpreter, the bench's own module
            [sys.executable, "-m", "bench.lan_watcher", publish, str(plugins)],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
        )
        assert self.watcher.stdout is not None  # noqa: S101 - asked for above
        self._pipe = self.watcher.stdout.fileno()
        os.set_blocking(self._pipe, False)
        self._buffer = b""
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self._pipe, zmq.POLLIN)
        self.sent = 0
        self.envelope_bytes: dict[str, int] = {}
        # Slow joiner: ask for heartbeats until the watcher saw one; then its subscription is live.
        deadline = time.monotonic() + 10
        while "ready" not in self._lines(20):
            heartbeat_now()
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the LAN subscriber saw no heartbeat from the daemon within 10 s")

    def close(self) -> None:
        self.watcher.kill()
        self.watcher.wait()
        if self.watcher.stdout is not None:
            self.watcher.stdout.close()
        self.control.close()
        self.context.term()

    def _lines(self, timeout_ms: int) -> list[str]:
        """The watcher's whole lines that arrived within ``timeout_ms``."""
        if not self.poller.poll(timeout_ms):
            return []
        return self._read_lines()

    def _read_lines(self) -> list[str]:
        while True:
            try:
                chunk = os.read(self._pipe, 65536)
            except BlockingIOError:
                break
            if not chunk:
                raise RuntimeError(f"the LAN subscriber ended (exit {self.watcher.poll()})")
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode() for line in lines]

    def send_tap(self) -> float:
        """One tap, by :attr:`via`: ``reader`` puts the card on the sim backend's queue from this thread,
        as a reader's detection reaches its backend; ``control`` sends the control request ``tap``."""
        i = self.sent
        self.sent += 1
        reader = READERS[i % 2]
        args: dict[str, Any] = {"card": CARDS[(i // 2) % 2], "reader": reader, "hold": False}
        sent = time.perf_counter()
        if self.via == "reader":
            self.present(reader, args)
        else:
            body = {"id": str(i), "cmd": "tap", "args": args}
            self.control.send_multipart([b"", json.dumps(body).encode()])
        return sent

    def run(self, taps: int, window: int) -> list[Tap]:
        """Drive ``taps`` taps with at most ``window`` in flight; every tap once complete."""
        state = _RunState()
        done = state.done
        sent = 0
        last_progress = time.monotonic()
        while len(done) < taps:
            while sent < taps and sent - len(done) < window:
                state.pending.append(Tap(self.send_tap()))
                sent += 1
            events = dict(self.poller.poll(1000))
            if self.control in events:
                while self.control.poll(0):
                    reply = json.loads(self.control.recv_multipart()[-1])
                    if not reply.get("ok"):
                        raise RuntimeError(f"tap refused: {reply}")
            if self._pipe in events:
                for line in self._read_lines():
                    self._fact(line, state)
                last_progress = time.monotonic()
            if time.monotonic() - last_progress > TIMEOUT:
                raise RuntimeError(f"stuck: {len(done)} of {taps} taps complete after {TIMEOUT} s")
        return done

    def _fact(self, line: str, state: _RunState) -> None:
        """One line of the watcher (:mod:`bench.lan_watcher`)."""
        kind, _, rest = line.partition(" ")
        if kind == "i":
            seq, at, size = rest.split()
            self.envelope_bytes.setdefault("public", int(size))
            tap = state.pending.pop(0)
            tap.identified, tap.seq = float(at), int(seq)
            state.by_seq[tap.seq] = tap
        elif kind == "d":
            seq, at = rest.split()
            tap = state.by_seq.pop(int(seq))
            tap.done = float(at)
            state.done.append(tap)
        elif kind == "a":
            raise RuntimeError(f"a tap aborted: {rest}")
        elif kind == "e":
            raise RuntimeError(f"a plugin failed: {rest}")


def private_envelope_bytes(heartbeat_now: Callable[[], None], tap: Callable[[], object]) -> int:
    """The size of one ``card.identified`` as the plugin host receives it (the private feed)."""
    from readerd.daemon import PRIVATE_FEED

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(PRIVATE_FEED)
    sock.setsockopt(zmq.SUBSCRIBE, b"card.identified")
    sock.setsockopt(zmq.SUBSCRIBE, b"heartbeat")
    try:
        deadline = time.monotonic() + 10
        while not sock.poll(20):  # slow joiner: a heartbeat proves the subscription
            heartbeat_now()
            if time.monotonic() > deadline:
                raise RuntimeError("no heartbeat on the private feed within 10 s")
        tap()
        while True:
            if not sock.poll(10_000):
                raise RuntimeError("no card.identified on the private feed within 10 s")
            topic, body = sock.recv_multipart()
            if topic == b"card.identified":
                return len(body)
    finally:
        sock.close()


@dataclass
class Throughput:
    """The throughput runs of one way of tapping (:data:`TapVia`), one value per run."""

    taps_per_s: list[float] = field(default_factory=list)
    cpu_s_per_tap: list[float] = field(default_factory=list)  # this process, every thread (driver too)
    daemon_cpu_s_per_tap: list[float] = field(default_factory=list)  # all but the driver's, less the card
    sim_build_cpu_s_per_tap: list[float] = field(default_factory=list)  # the card build (backend thread)
    sim_answer_cpu_s_per_tap: list[float] = field(default_factory=list)  # the card's answers (session)
    by_thread_ms: dict[str, list[float]] = field(default_factory=dict)  # "exited": threads that ended

    def threads_ms_per_tap(self) -> dict[str, float]:
        """Median by thread name, largest first."""
        per_thread = {name: round(statistics.median(v), 3) for name, v in self.by_thread_ms.items()}
        return dict(sorted(per_thread.items(), key=lambda kv: -kv[1]))


@dataclass
class PipelineResult:
    throughput: dict[TapVia, Throughput]
    driver_threads: int
    latency: dict[str, dict[str, float]]
    envelope_bytes: dict[str, int]
    daemon: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    taps: int
    runs: int
    window: int
    latency_taps: int
    plugins: int
    hook_ms: float = 0.0


def measure_pipeline(work: Path, plan: Plan, meter: SimBuildMeter) -> PipelineResult:
    from readerd.config import PluginsConfig
    from readerd.reading.backends.sim import SimBackend
    from tests.support.daemon import running_daemon, sim_config

    taps, runs, window, latency_taps = plan.taps, plan.runs, plan.window, plan.latency_taps
    plugins = [NoopPlugin(wait_s=plan.hook_ms / 1000) for _ in range(plan.plugins)]
    from readerd.config import BUILTIN_PLUGINS

    # Only the no-op plugins: no third-party ones, and the built-in municipal plugins kept out (whether
    # they load by default or only when named in the configuration).
    builtin = tuple(BUILTIN_PLUGINS)
    only_ours = PluginsConfig(autoload=False, disabled=builtin)
    config = sim_config(work / "state", plugins=only_ours)
    with running_daemon(config, plugins={f"noop{i}": p for i, p in enumerate(plugins)}) as running:
        bus, host = running.daemon.bus, running.daemon.host
        if bus is None or host is None or len(host.plugins) != plan.plugins:
            loaded = sorted(host.plugins) if host is not None else None
            raise RuntimeError(f"want exactly the {plan.plugins} no-op plugins, loaded: {loaded}")
        backend = running.daemon.backends[0]
        if not isinstance(backend, SimBackend):
            raise RuntimeError(f"want the sim backend, got {type(backend).__name__}")
        driver = Driver(running.control, running.publish, bus.heartbeat_now, plan.plugins, backend.present)
        try:
            driver.run(4, 1)  # warm-up: the simulator makes the cards' keys and certificates
            private = private_envelope_bytes(bus.heartbeat_now, lambda: driver.run(1, 1))
            envelope_bytes = {"private": private, "public": driver.envelope_bytes["public"]}
            # Closed loop: one tap at a time, where the time goes.
            stages: dict[str, list[float]] = {
                "tap_to_identified_on_lan": [],
                "tap_to_first_plugin_hook": [],
                "tap_to_last_plugin_publish": [],
                "tap_to_last_result_on_lan": [],
            }
            for tap in driver.run(latency_taps, 1):
                assert tap.seq is not None  # noqa: S101 - set when card.identified arrived
                assert tap.identified is not None  # noqa: S101
                assert tap.done is not None  # noqa: S101
                entered = [p.entered[tap.seq] for p in plugins]
                publishing = [p.publishing[tap.seq] for p in plugins]
                stages["tap_to_identified_on_lan"].append(tap.identified - tap.sent)
                stages["tap_to_first_plugin_hook"].append(min(entered) - tap.sent)
                stages["tap_to_last_plugin_publish"].append(max(publishing) - tap.sent)
                stages["tap_to_last_result_on_lan"].append(tap.done - tap.sent)
            latency = {name: latency_summary(values) for name, values in stages.items()}
            # Throughput: `window` taps in flight, runs of the two ways of tapping alternating (the
            # machine's speed drifts over seconds).
            throughput: dict[TapVia, Throughput] = {via: Throughput() for via in TAP_VIAS}
            for _ in range(runs):
                for via in TAP_VIAS:
                    driver.via = via
                    measure_run(driver, taps, window, meter, throughput[via])
            driver.via = "reader"
        finally:
            driver.close()
        status = host.status()
        daemon = {
            "bus_dropped": dict(bus.stats.dropped),
            "plugin_calls": sum(p["calls"] for p in status["plugins"]),
            "plugins_quarantined": status["quarantined"],
            "feed_gaps_recorded": len(host.gaps),
        }
    return PipelineResult(throughput, len(driver.threads), latency, envelope_bytes, daemon)


def measure_run(driver: Driver, taps: int, window: int, meter: SimBuildMeter, into: Throughput) -> None:
    """One throughput run, its figures appended to ``into``."""
    started, before, mark = time.perf_counter(), threadcpu.snapshot(), meter.reading()
    completed = driver.run(taps, window)
    after, (built, answered) = threadcpu.snapshot(), meter.since(mark)
    finished = max(t.done for t in completed if t.done is not None)
    into.taps_per_s.append(taps / (finished - started))
    split = threadcpu.daemon_cpu(before, after, driver.threads)
    into.cpu_s_per_tap.append(split.process_s / taps)
    into.daemon_cpu_s_per_tap.append((split.daemon_s - built) / taps)
    into.sim_build_cpu_s_per_tap.append((built - answered) / taps)
    into.sim_answer_cpu_s_per_tap.append(answered / taps)
    for name, seconds in [*split.by_name.items(), ("exited", split.exited_s)]:
        into.by_thread_ms.setdefault(name, []).append(seconds / taps * 1e3)


# -- the baseline -------------------------------------------------------------------------------------
def measure_raw(payload_bytes: int, messages: int) -> tuple[float, float]:
    """Messages per second from a PUB thread to a SUB socket over TCP loopback (no drops: HWM off)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = context.socket(zmq.PUB)
    sub = context.socket(zmq.SUB)
    for sock in (pub, sub):
        sock.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
    pub.bind("tcp://127.0.0.1:*")
    sub.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    topic = b"card.identified"
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    payload = b"x" * payload_bytes
    joined = threading.Event()
    started: list[float] = []

    def publisher() -> None:
        # Slow joiner: probes until the subscriber has received one, then the measured messages.
        while not joined.is_set():
            pub.send_multipart([topic, b"probe"])
            joined.wait(0.001)
        started.append(time.perf_counter())
        started.append(time.process_time())
        for _ in range(messages):
            pub.send_multipart([topic, payload])

    thread = threading.Thread(target=publisher, name="raw-pub", daemon=True)
    try:
        thread.start()
        received = 0
        while received < messages:
            try:
                _, body = sub.recv_multipart()
            except zmq.Again:
                raise RuntimeError(
                    f"raw PUB/SUB: {received} of {messages} messages after {TIMEOUT} s"
                ) from None
            if len(body) == payload_bytes:
                received += 1
            else:
                joined.set()
        finished, cpu_finished = time.perf_counter(), time.process_time()
        thread.join()
    finally:
        pub.close()
        sub.close()
        context.term()
    return messages / (finished - started[0]), (cpu_finished - started[1]) / messages


# -- the command --------------------------------------------------------------------------------------
def throughput_figures(runs: Throughput) -> dict[str, Any]:
    return {
        "taps_per_s": spread(runs.taps_per_s),
        "cpu_ms_per_tap": spread([c * 1e3 for c in runs.cpu_s_per_tap], 3),
        # every thread of the process but the driver's (its own thread and its zmq context's)
        "daemon_cpu_ms_per_tap": spread([c * 1e3 for c in runs.daemon_cpu_s_per_tap], 3),
        # the simulator's card build on the backend thread: the test rig, taken out of the above
        "sim_card_build_cpu_ms_per_tap": spread([c * 1e3 for c in runs.sim_build_cpu_s_per_tap], 3),
        # the simulated card answering its APDUs on the session thread: a real card's chip, taken out too
        "sim_card_answers_cpu_ms_per_tap": spread([c * 1e3 for c in runs.sim_answer_cpu_s_per_tap], 3),
        "daemon_cpu_by_thread_ms_per_tap": runs.threads_ms_per_tap(),
    }


def markdown(result: dict[str, Any]) -> str:
    pipe, raw = result["pipeline"], result["raw_pubsub"]
    control = pipe["by_control_request"]
    control_cpu = control["daemon_cpu_ms_per_tap"]
    by_control = result["daemon_cpu_per_tap_in_raw_messages_by_control_request"]
    size = result["payload_bytes"]
    overhead = result["hook_call_overhead"]
    sim = result["sim_card_build_ms"]
    lines = [
        f"plugin pipeline bench, {result['date']}, {result['machine']['cpus']} CPUs, "
        f"Python {result['machine']['python']}, pyzmq {result['machine']['pyzmq']} "
        f"(libzmq {result['machine']['libzmq']})",
        "",
        "| what | per second (median) | min | max | runs |",
        "|---|---:|---:|---:|---:|",
        f"| taps through daemon -> bus -> host -> {pipe['plugins']} no-op plugins "
        f"({pipe['taps']} taps, window {pipe['window']}) "
        f"| {pipe['taps_per_s']['median']:,.1f} | {pipe['taps_per_s']['min']:,.1f} "
        f"| {pipe['taps_per_s']['max']:,.1f} | {len(pipe['taps_per_s']['runs'])} |",
        f"| raw pyzmq PUB/SUB messages, tcp loopback, {size['private']} B payload "
        f"({raw['messages']} messages) "
        f"| {raw['msgs_per_s']['median']:,.0f} | {raw['msgs_per_s']['min']:,.0f} "
        f"| {raw['msgs_per_s']['max']:,.0f} | {len(raw['msgs_per_s']['runs'])} |",
        "",
        f"ratio raw msgs/s : taps/s = {result['ratio_raw_to_pipeline']:,.0f} : 1 "
        f"(one tap = {result['bus_messages_per_tap']} bus messages on each of two PUB sockets)",
        f"CPU time of this process (all threads, median): {pipe['cpu_ms_per_tap']['median']} ms per tap, "
        f"{raw['cpu_us_per_msg']['median']} us per raw message",
        f"CPU time of the daemon's threads (all but the bench's driver; less the simulator: card build "
        f"{pipe['sim_card_build_cpu_ms_per_tap']['median']} ms, the card's answers "
        f"{pipe['sim_card_answers_cpu_ms_per_tap']['median']} ms), median (min-max): "
        f"{pipe['daemon_cpu_ms_per_tap']['median']} ({pipe['daemon_cpu_ms_per_tap']['min']}-"
        f"{pipe['daemon_cpu_ms_per_tap']['max']}) ms per tap = "
        f"{result['daemon_cpu_per_tap_in_raw_messages']['median']:,.0f} "
        f"({result['daemon_cpu_per_tap_in_raw_messages']['min']:,.0f}-"
        f"{result['daemon_cpu_per_tap_in_raw_messages']['max']:,.0f}) raw messages' worth",
        "daemon threads' CPU by name, ms per tap (median; the simulator included; exited = threads that "
        "ended within the run): "
        + ", ".join(f"{name} {ms}" for name, ms in pipe["daemon_cpu_by_thread_ms_per_tap"].items()),
        "the same taps as the control request `tap` (runs alternating with the above): "
        f"{control['taps_per_s']['median']:,.1f} taps/s, the daemon's CPU "
        f"{control_cpu['median']} ({control_cpu['min']}-{control_cpu['max']}) ms per tap = "
        f"{by_control['median']:,.0f} ({by_control['min']:,.0f}-{by_control['max']:,.0f}) raw messages' "
        f"worth; bus thread {control['daemon_cpu_by_thread_ms_per_tap'].get('bus', 0)} ms against "
        f"{pipe['daemon_cpu_by_thread_ms_per_tap'].get('bus', 0)} ms",
        "",
        "| one tap at a time, from the card on the reader's queue to | p50 ms | p99 ms |",
        "|---|---:|---:|",
    ]
    for stage, values in result["latency"].items():
        lines.append(
            f"| {stage.removeprefix('tap_to_').replace('_', ' ')} | {values['p50_ms']} | {values['p99_ms']} |"
        )
    lines += [
        "",
        f"payload: card.identified envelope {size['private']} B on the private feed (the host's input), "
        f"{size['public']} B on the LAN PUB",
        f"one tap: a My Number Card put on the sim backend's queue as a reader's detection (hold=false) "
        f"on {' / '.join(READERS)}, cards "
        f"{' / '.join(CARDS)} alternating (never a repeat); complete when all {pipe['plugins']} "
        "plugin.noopN.done results reached a LAN subscriber",
        f"simulator: card build per tap {sim['as_run']} ms as run (key cache "
        f"{'on' if result['sim_key_cache'] else 'off'}), {sim['keys_reloaded']} ms with the simulator's own "
        "key loading",
        f"hook call overhead (no-op, outside the daemon): direct {overhead['direct_us']} us, on the "
        f"plugin's worker (as the host does) {overhead['plugin_worker_us']} us, through run_with_deadline "
        f"(a thread per call, as the host did) {overhead['run_with_deadline_us']} us",
        f"daemon: {json.dumps(result['daemon'])}, state directory under {result['state_dir_in']}",
    ]
    if result["daemon"]["feed_gaps_recorded"] or result["daemon"]["bus_dropped"]:
        lines.append("warning: the plugin host missed events (seq gaps) or the bus dropped some: see above")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--taps", type=int, help="taps per throughput run (default 500, quick 100)")
    parser.add_argument("--runs", type=int, help="throughput runs of each kind (default 5, quick 3)")
    parser.add_argument("--window", type=int, default=8, help="taps in flight at most (default 8)")
    parser.add_argument("--plugins", type=int, default=4, help="no-op plugins (default 4)")
    parser.add_argument(
        "--hook-ms",
        type=float,
        default=0.0,
        help="each plugin's hook waits this long before it answers, as one that asks a server (default 0)",
    )
    parser.add_argument("--messages", type=int, help="raw PUB/SUB messages per run (default 100000)")
    parser.add_argument("--quick", action="store_true", help="small counts: finishes in well under 20 s")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--no-sim-key-cache", action="store_true", help="let the simulator reload keys")
    parser.add_argument(
        "--state-in",
        type=Path,
        metavar="DIR",
        help="where the daemon's temporary state directory goes (default: the system's temp dir; "
        "/dev/shm takes the disk's fsync out of the store's and event log's commits)",
    )
    parser.add_argument("--log-level", default="WARNING", help="the daemon's log level (stderr)")
    args = parser.parse_args(argv)
    taps = args.taps or (100 if args.quick else 500)
    runs = args.runs or (3 if args.quick else 5)
    messages = args.messages or (20_000 if args.quick else 100_000)
    latency_taps = min(taps, 20) if args.quick else 200
    if min(taps, runs, args.window, messages, args.plugins) < 1:
        parser.error("--taps, --runs, --window, --plugins and --messages must be positive")

    work = Path(tempfile.mkdtemp(prefix="readerd-bench-", dir=args.state_in))
    if not args.no_sim_key_cache:
        cache_sim_keys()
    configure_logging(args.log_level, "console")  # the daemon's log lines, to stderr
    try:
        meter = SimBuildMeter()
        meter.install()
        plan = Plan(taps, runs, args.window, latency_taps, args.plugins, args.hook_ms)
        pipeline = measure_pipeline(work, plan, meter)
        sim_build = sim_card_build_ms(work / "state" / "sim-pki")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = [measure_raw(pipeline.envelope_bytes["private"], messages) for _ in range(runs)]
    raw_rates = [rate for rate, _ in raw]
    raw_cpu = [cpu for _, cpu in raw]
    tapped = pipeline.throughput["reader"]
    taps_median = statistics.median(tapped.taps_per_s)
    raw_cpu_median = statistics.median(raw_cpu)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
        },
        "payload_bytes": pipeline.envelope_bytes,
        "pipeline": {
            "taps": taps,
            "window": args.window,
            "plugins": args.plugins,
            "hook_ms": args.hook_ms,
            # taps put on the sim backend's queue, as a reader's detection (Driver.send_tap)
            "tap_via": "reader",
            **throughput_figures(tapped),
            "driver_threads": pipeline.driver_threads,
            # the same taps sent as the control request `tap` (the bus thread reads, checks and answers
            # each): what a tap cost when the benches drove the simulator through the control socket
            "by_control_request": throughput_figures(pipeline.throughput["control"]),
        },
        "raw_pubsub": {
            "messages": messages,
            "msgs_per_s": spread(raw_rates, 0),
            "cpu_us_per_msg": spread([c * 1e6 for _, c in raw], 2),
        },
        "ratio_raw_to_pipeline": round(statistics.median(raw_rates) / taps_median, 1),
        # the daemon's CPU per tap in raw messages' worth of CPU (each run's own over the raw median)
        "daemon_cpu_per_tap_in_raw_messages": spread(
            [c / raw_cpu_median for c in tapped.daemon_cpu_s_per_tap], 0
        ),
        "daemon_cpu_per_tap_in_raw_messages_by_control_request": spread(
            [c / raw_cpu_median for c in pipeline.throughput["control"].daemon_cpu_s_per_tap], 0
        ),
        # card.presented, card.identified, card.removed and one result per plugin
        "bus_messages_per_tap": 3 + args.plugins,
        "latency": pipeline.latency,
        "latency_taps": latency_taps,
        "sim_key_cache": not args.no_sim_key_cache,
        "sim_card_build_ms": sim_build,
        "hook_call_overhead": hook_call_overhead_us(),
        "daemon": pipeline.daemon,
        "state_dir_in": str(work.parent),
    }
    sys.stdout.write(markdown(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
