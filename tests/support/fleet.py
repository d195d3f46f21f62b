"""A ward's fleet of kiosks for tests and benchmarks: N ``readerd run --simulate`` processes, each with
its own state directory, configuration and plugins, all sharing one pseudonym key and one PostgreSQL
(directly, or each through a :class:`~tests.support.tcp_proxy.TcpProxy` of its own, to cut its link)::

    specs = [
        KioskSpec("hall-1", ("checkin", "points"), {"checkin": {"event": "ev1"}, "points": {...}}),
        KioskSpec("bath-1", ("bathhouse",), {"bathhouse": {"bath_house": "matsu"}}, via_proxy=True),
    ]
    with Fleet(tmp_path, postgres_url, specs) as fleet:
        hall = fleet["hall-1"]                      # or fleet.kiosks[0]
        with hall.subscriber("plugin.checkin") as sub:
            hall.tap("alice")
            sub.until(lambda e: e["type"] == "plugin.checkin.result", 10)
        fleet["bath-1"].proxy.mode = "drop"         # bath-1 loses PostgreSQL; the others go on
        hall.kill(); hall.restart()                 # SIGKILL, then the same state and sockets again
    events = fleet["hall-1"].events_from_log()      # the durable event log, after the stop

Each kiosk's configuration is :func:`tests.support.daemon.sim_config`'s, written out as TOML
(:func:`config_toml`), with every bus endpoint an ``ipc://`` socket in a short directory of its own: no
port to race for, and the same endpoints after a restart. The test process talks to the kiosk's
``operator.sock`` (every command) and subscribes to its PUB socket (``Kiosk.publish``). Kiosks start in
parallel (a start is about a second) and are ready when they answer with every command registered and
every simulated reader up; at the end they get SIGTERM, and SIGKILL after :data:`STOP_TIMEOUT`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import sqlalchemy as sa
import zmq

from protocols.mykey import key_fingerprint
from readerd.bus.control import result_of
from readerd.bus.control_client import ControlSession, Unreachable
from readerd.bus.eventlog import EventLog
from readerd.config import (
    BusConfig,
    Config,
    IdentityConfig,
    PluginsConfig,
    SimConfig,
    StoreConfig,
    load_config,
    with_overrides,
)
from readerd.ops.keys import create_pseudonym_key
from tests.support.daemon import Envelope, Subscriber, sim_config
from tests.support.tcp_proxy import TcpProxy

START_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 20.0
REQUEST_TIMEOUT: Final = 10.0
#: A command no daemon has: answered ``not_ready`` while the daemon still registers commands, then
#: ``unknown_command`` (readerd.bus.control.answer): the probe of :meth:`Kiosk.wait_ready`.
READY_PROBE: Final = "fleet.ready_probe"
LOG_TAIL: Final = 4000


@dataclass(frozen=True)
class KioskSpec:
    """One kiosk: its name (``kiosk`` in every event), the built-in plugins it runs, their
    ``[plugins.<name>]`` sections, whether it reaches PostgreSQL through a proxy of its own, its simulated
    readers, and any other configuration as dotted keys (``{"sessions.repeat_window": 0.0}``)."""

    name: str
    plugins: tuple[str, ...] = ()
    plugin_config: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    via_proxy: bool = False
    readers: tuple[str, ...] = ("Sim 00",)
    overrides: Mapping[str, object] = field(default_factory=dict)


def config_toml(config: Config) -> str:
    """``config`` as a TOML file :func:`readerd.config.load_config` reads back to the same Config."""
    data = asdict(config)
    lines = [f"{key} = {_toml(value)}" for key, value in data.items() if not isinstance(value, dict)]
    for table, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]", *(f"{key} = {_toml(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int | float | str):
        return json.dumps(value)  # JSON's numbers and escaped strings are TOML's too
    raise TypeError(f"no TOML for {value!r}")


def read_event_log(state_dir: Path) -> list[Envelope]:
    """Every event in a daemon's durable log (``<state_dir>/events.db``), oldest first."""
    log = EventLog(state_dir / "events.db")
    try:
        out: list[Envelope] = []
        after = 0
        while True:
            since = log.since(after, limit=5000)
            out.extend(since.events)
            if not since.more:
                return out
            after = int(since.events[-1]["seq"])
    finally:
        log.close()


class Kiosk:
    """One kiosk daemon of a :class:`Fleet`, in a process of its own."""

    def __init__(self, spec: KioskSpec, directory: Path, config: Config, proxy: TcpProxy | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.directory = directory
        self.state_dir = Path(config.state_dir)
        self.proxy = proxy
        self.config = config
        self.sockets_dir = Path(config.bus.sockets_dir)
        self.publish = config.bus.publish
        self.operator = f"ipc://{self.sockets_dir / 'operator.sock'}"
        self.config_path = directory / "readerd.toml"
        self.log_path = directory / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._terminated = False
        self.starts = 0
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_toml(config), encoding="utf-8")
        load_config(self.config_path).validate()  # a bad file fails here, not as a daemon's exit 78

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Kiosk({self.name}, {'+'.join(self.spec.plugins) or 'no plugins'}, {state})"

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, *, wait: bool = True) -> None:
        """Start the process; with ``wait``, until :meth:`wait_ready`."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        command = [
            sys.executable, "-m", "readerd.cli.main", "run", "--simulate", "--config", str(self.config_path),
            "--state-dir", str(self.state_dir), "--log-format", "json",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"=== fleet: start {self.starts + 1} of {self.name} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self._terminated = False
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the daemon has registered every command (its plugins') and shows all its readers."""
        deadline = time.monotonic() + timeout
        with ControlSession(self.operator, timeout_ms=500) as session:
            while True:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise RuntimeError(f"{self.name} is not running (exit {code}):\n{self.log_text()}")
                with contextlib.suppress(Unreachable):
                    probe = session.request(READY_PROBE)
                    if probe.get("error", {}).get("code") == "unknown_command":
                        readers = session.request("readers")
                        names = {r["name"] for r in readers.get("result", {}).get("readers", [])}
                        if set(self.spec.readers) <= names:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not ready within {timeout} s:\n{self.log_text()}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL (no shutdown at all), and reap it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)

    def terminate(self) -> None:
        """SIGTERM without waiting (:meth:`stop` waits); once per run: a second SIGTERM while Python
        finalises (its handlers are reset to the default by then) would kill the daemon with -15."""
        if self.running and not self._terminated:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (negative: the signal), None if never
        started."""
        if self.process is None:
            return None
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(STOP_TIMEOUT)

    def restart(self, *, wait: bool = True) -> None:
        """Stop (SIGTERM; nothing to do after :meth:`kill`) and start again on the same state."""
        self.stop()
        self.start(wait=wait)

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    # -- the control channel --------------------------------------------------------------------------
    def request(
        self, command: str, args: Mapping[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        """One request on the operator socket; the whole reply (``ok``, ``result`` or ``error``)."""
        with ControlSession(self.operator, timeout_ms=int(timeout * 1000)) as session:
            return session.request(command, dict(args or {}))

    def command(self, command: str, **args: object) -> dict[str, Any]:
        """A request's result; :class:`readerd.errors.Refusal` with its code when refused."""
        return result_of(self.request(command, args))

    def session(self, timeout: float = REQUEST_TIMEOUT) -> ControlSession:
        """A control session of its own (one caller: what ``auth.begin`` then ``auth.pin`` need)."""
        return ControlSession(self.operator, timeout_ms=int(timeout * 1000))

    def tap(
        self, card: str = "alice", kind: str = "mynumber", *, reader: str | None = None, **options: object
    ) -> dict[str, Any]:
        """Queue a simulated tap of ``card`` (a name: the same name, the same card on every kiosk): a My
        Number Card, or a FeliCa card of ``kind`` ``bathhouse``, ``checkin`` or ``transport``; ``options``
        as the control ``tap`` takes them (``hold=False``, ``faults=[...]``, ``pin=...``). Returns the
        reply; the outcome comes as an event."""
        felica = {} if kind == "mynumber" else {"felica": kind}
        args = {"card": card, **felica, **options, **({"reader": reader} if reader else {})}
        reply = self.request("tap", args)
        result_of(reply)
        return reply

    def remove(self, reader: str | None = None) -> None:
        result_of(self.request("remove", {"reader": reader} if reader else {}))

    @contextlib.contextmanager
    def subscriber(self, *prefixes: str, sync: bool = True, timeout: float = 10.0) -> Iterator[Subscriber]:
        """Events from the kiosk's PUB socket (all, or those whose type starts with a prefix); live once
        it yields (a heartbeat came through). ``.next()``, ``.until(pred, timeout)`` as in tests."""
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.publish)
        for prefix in {*prefixes, "heartbeat"} if prefixes else {""}:
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        sub = Subscriber(sock)
        try:
            if sync:
                sub.sync(timeout)
            yield sub
        finally:
            sock.close()

    # -- afterwards -----------------------------------------------------------------------------------
    def events_from_log(self) -> list[Envelope]:
        """Every event of every run of this kiosk, from its durable log (after a stop: it opens the log
        as the daemon does; :meth:`logged` reads it while the daemon runs)."""
        return read_event_log(self.state_dir)

    def logged(self, after: int = 0) -> list[Envelope]:
        """The events logged after seq ``after``, read-only (safe while the daemon runs and writes)."""
        path = self.state_dir / "events.db"
        if not path.exists():
            return []
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            rows = conn.execute("SELECT public FROM events WHERE seq > ? ORDER BY seq", (after,)).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # the daemon has not made it yet
                return []
            raise
        finally:
            conn.close()
        return [json.loads(public) for (public,) in rows]

    def log_text(self, limit: int = LOG_TAIL) -> str:
        try:
            text = self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return text if len(text) <= limit else "…" + text[-limit:]


class Fleet:
    """Kiosks sharing one key and one PostgreSQL; a context manager (started in ``with``, stopped after).

    ``fleet.kiosks`` in the order of the specs, ``fleet[name]`` or ``fleet[i]``; ``key_file`` and
    ``fingerprint`` are the ward's deployment key (pinned in every kiosk's ``[identity]``).
    """

    def __init__(
        self,
        base_dir: Path,
        postgres_url: str,
        kiosks: Sequence[KioskSpec],
        *,
        heartbeat: float = 0.1,
        connect_timeout: float = 2.0,
        key_file: Path | None = None,
    ) -> None:
        names = [spec.name for spec in kiosks]
        if len(set(names)) != len(names):
            raise ValueError(f"kiosk names must be unique: {names}")
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.postgres_url = postgres_url
        self.key_file = key_file or self.base_dir / "ward-pseudonym.key"
        if not self.key_file.exists():
            create_pseudonym_key(self.key_file)
        self.fingerprint = key_fingerprint(self.key_file.read_bytes())
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.kiosks: list[Kiosk] = []
        self._stack = contextlib.ExitStack()
        try:
            for spec in kiosks:
                self.kiosks.append(self._kiosk(spec))
        except BaseException:
            self._stack.close()
            raise

    def _kiosk(self, spec: KioskSpec) -> Kiosk:
        url = self.postgres_url
        proxy: TcpProxy | None = None
        if spec.via_proxy:
            target = sa.make_url(url)
            proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
            self._stack.callback(proxy.close)
            url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        directory = self.base_dir / spec.name
        config = sim_config(
            directory / "state",
            kiosk=spec.name,
            identity=IdentityConfig(str(self.key_file), self.fingerprint),
            sim=SimConfig(readers=spec.readers),
            store=StoreConfig(shared_url=url, connect_timeout=self.connect_timeout),
            plugins=PluginsConfig(
                autoload=False,
                builtins=spec.plugins,
                sections={name: dict(section) for name, section in spec.plugin_config.items()},
            ),
        )
        # sim_config made a short directory for the role sockets: the PUB and the (subscribe-only) TCP
        # control endpoint go there too, as ipc sockets.
        sockets = Path(config.bus.sockets_dir)
        self._stack.callback(shutil.rmtree, sockets, ignore_errors=True)
        bus = BusConfig(
            publish=f"ipc://{sockets / 'events.sock'}",
            control=f"ipc://{sockets / 'control-tcp.sock'}",
            heartbeat_interval=self.heartbeat,
            sockets_dir=str(sockets),
            log_max_events=10_000_000,  # a soak's whole run stays in the log for the final checks
        )
        config = with_overrides(replace(config, bus=bus), dict(spec.overrides))
        return Kiosk(spec, directory, config, proxy)

    # -- access ---------------------------------------------------------------------------------------
    def __getitem__(self, key: int | str) -> Kiosk:
        if isinstance(key, int):
            return self.kiosks[key]
        for kiosk in self.kiosks:
            if kiosk.name == key:
                return kiosk
        raise KeyError(key)

    def __iter__(self) -> Iterator[Kiosk]:
        return iter(self.kiosks)

    def __len__(self) -> int:
        return len(self.kiosks)

    def with_plugin(self, plugin: str) -> list[Kiosk]:
        return [kiosk for kiosk in self.kiosks if plugin in kiosk.spec.plugins]

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, kiosks: Sequence[Kiosk] | None = None) -> None:
        """Start kiosks (all not running) in parallel and wait until each is ready."""
        chosen = [k for k in (self.kiosks if kiosks is None else kiosks) if not k.running]
        for kiosk in chosen:
            kiosk.start(wait=False)
        for kiosk in chosen:
            kiosk.wait_ready()

    def stop(self, timeout: float = STOP_TIMEOUT) -> dict[str, int | None]:
        """SIGTERM to every kiosk at once, SIGKILL to those still running after ``timeout``; the exit
        codes by kiosk name."""
        for kiosk in self.kiosks:
            kiosk.terminate()
        deadline = time.monotonic() + timeout
        return {k.name: k.stop(max(0.1, deadline - time.monotonic())) for k in self.kiosks}

    def close(self) -> None:
        """Stop the kiosks, close the proxies, remove the socket directories."""
        try:
            self.stop()
        finally:
            self._stack.close()

    def __enter__(self) -> Fleet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def logs(self, limit: int = LOG_TAIL) -> str:
        """Every kiosk's log tail, for a failure message."""
        return "\n".join(f"--- {k.name} ({k.log_path}) ---\n{k.log_text(limit)}" for k in self.kiosks)
