"""systemd's notify protocol end to end: a real unix datagram socket as ``$NOTIFY_SOCKET`` with
``$WATCHDOG_USEC`` set, READY=1, WATCHDOG=1 pings, STOPPING=1, and no ping while a backend thread is
dead or wedged (readerd/ops/liveness.py). No timed asserts: the tests wait for the daemon's own counters of
pinged and withheld main-loop rounds, and everything the daemon sent before a round is already queued
on the socket when that round's counter moves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from readerd.config import SessionConfig
from readerd.daemon import Daemon
from readerd.ops.sdnotify import Notifier
from readerd.reading.backends.sim import SimBackend
from tests.deploy.support import VENV_BIN
from tests.support.daemon import running_daemon, sim_config
from tests.support.ports import free_tcp_port

WATCHDOG_USEC = "100000"  # pings every 50 ms


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)  # a hang fails the test instead of blocking it
    yield sock
    sock.close()


def _until(sock: socket.socket, wanted: str, seen: list[str]) -> None:
    while not any(m.startswith(wanted) for m in seen):
        seen.append(sock.recv(4096).decode())


def _drain(sock: socket.socket) -> list[str]:
    """What is queued on the socket now (a socket with a timeout would wait even with MSG_DONTWAIT)."""
    messages = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.settimeout(timeout)


def _wait_for(condition: Callable[[], bool], sock: socket.socket, seen: list[str] | None = None) -> None:
    """Wait for ``condition``, reading the socket all along (a full queue would make the daemon drop
    notifications); what arrived goes to ``seen``."""
    while not condition():  # bounded by the suite's pytest-timeout
        (seen if seen is not None else []).extend(_drain(sock))
        time.sleep(0.01)
    (seen if seen is not None else []).extend(_drain(sock))


def test_readerd_run_under_a_notify_socket(tmp_path: Path, notify_socket: socket.socket) -> None:
    """The real command line, as systemd starts it: the environment alone turns notifications on."""
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.getsockname(), WATCHDOG_USEC=WATCHDOG_USEC)
    env.pop("WATCHDOG_PID", None)
    endpoints = [
        "--publish",
        f"tcp://127.0.0.1:{free_tcp_port()}",
        "--control",
        f"tcp://127.0.0.1:{free_tcp_port()}",
    ]
    command = [
        str(VENV_BIN / "readerd"),
        "run",
        "--simulate",
        "--no-plugins",
        "--state-dir",
        "state",
        *endpoints,
    ]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []
    try:
        _until(notify_socket, "READY=1", seen)
        assert seen == [m for m in seen if m.startswith("READY=1")]  # nothing before READY
        while seen.count("WATCHDOG=1") < 3:
            seen.append(notify_socket.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        _until(notify_socket, "STOPPING=1", seen)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stdout is not None
        output = proc.stdout.read().decode()
        proc.stdout.close()
    assert seen[0].startswith("READY=1\nSTATUS=1 readers"), output


def _daemon_notifier(monkeypatch: pytest.MonkeyPatch, sock: socket.socket) -> Notifier:
    monkeypatch.setenv("NOTIFY_SOCKET", sock.getsockname())
    monkeypatch.setenv("WATCHDOG_USEC", WATCHDOG_USEC)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    assert notifier.watchdog_interval == 0.1
    return notifier


def _pings_stop(daemon: Daemon, sock: socket.socket) -> list[str]:
    """Wait until the daemon withholds pings; return what it sent over the next three rounds."""
    _wait_for(lambda: daemon.watchdog_withheld >= 1, sock)  # and drop the pings from before the fault
    withheld = daemon.watchdog_withheld
    seen: list[str] = []
    _wait_for(lambda: daemon.watchdog_withheld >= withheld + 3, sock, seen)
    return seen


def test_pings_stop_while_the_backend_thread_is_wedged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: socket.socket
) -> None:
    release = threading.Event()
    real_tap = SimBackend._tap

    def wedged_tap(self: SimBackend, reader: str, args: dict[str, object]) -> None:
        if args.get("card") == "wedge":
            release.wait()  # a bug's endless wait: the thread stays alive and does nothing
        else:
            real_tap(self, reader, args)

    monkeypatch.setattr(SimBackend, "_tap", wedged_tap)
    config = sim_config(tmp_path, sessions=SessionConfig(deadline=0.2, repeat_window=10.0))
    with running_daemon(config, _daemon_notifier(monkeypatch, notify_socket)) as d:
        seen: list[str] = []
        _until(notify_socket, "WATCHDOG=1", seen)
        assert seen[0].startswith("READY=1")
        d.tap("wedge")
        try:
            assert "WATCHDOG=1" not in _pings_stop(d.daemon, notify_socket)
            assert not d.daemon.healthy()
            assert d.request("status")["result"]["healthy"] is False
        finally:
            release.set()
        # The step ended: the loop is healthy again and the pings resume.
        _until(notify_socket, "WATCHDOG=1", [])


class _Bug(Exception):
    pass


# The thread's death is the point of the test (pytest reports it as a warning, which is an error here).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_pings_stop_when_the_backend_thread_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: socket.socket
) -> None:
    def dying_tap(self: SimBackend, reader: str, args: dict[str, object]) -> None:
        raise _Bug("a bug the backend loop does not catch")

    monkeypatch.setattr(SimBackend, "_tap", dying_tap)
    with running_daemon(sim_config(tmp_path), _daemon_notifier(monkeypatch, notify_socket)) as d:
        _until(notify_socket, "WATCHDOG=1", [])
        d.tap("alice")
        assert "WATCHDOG=1" not in _pings_stop(d.daemon, notify_socket)
        assert not any(b.alive() for b in d.daemon.backends)


def test_a_stalled_card_does_not_stop_the_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: socket.socket
) -> None:
    """docs/design.md D9: a stalled card is the session deadline's business (read aborted, worker
    abandoned), not the watchdog's: restarting the daemon would cut every other reader off too."""
    config = sim_config(tmp_path, sessions=SessionConfig(deadline=0.2, repeat_window=10.0))
    notifier = _daemon_notifier(monkeypatch, notify_socket)
    with running_daemon(config, notifier) as d, d.subscriber("card.") as sub:
        d.tap("alice", faults=[{"action": "stall", "after_apdus": 1, "seconds": 10}])
        aborted = sub.until(lambda e: e["type"] == "card.read_aborted")[-1]
        assert aborted["data"]["reason"] == "timeout"
        pings = d.daemon.watchdog_pings
        _wait_for(lambda: d.daemon.watchdog_pings >= pings + 3, notify_socket)
        assert d.daemon.watchdog_withheld == 0


def test_pings_stop_while_the_bus_thread_is_wedged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, notify_socket: socket.socket
) -> None:
    """A control command handler that never returns holds the bus thread (handlers run on it)."""
    release = threading.Event()
    with running_daemon(sim_config(tmp_path), _daemon_notifier(monkeypatch, notify_socket)) as d:
        bus = d.daemon.bus
        assert bus is not None
        bus.step_watch.budget = 0.2
        bus.register_command("test.hang", lambda _req: {"released": release.wait()})
        _until(notify_socket, "WATCHDOG=1", [])
        session = d.session()
        caller = threading.Thread(target=lambda: session.request("test.hang", timeout_ms=30_000), daemon=True)
        caller.start()
        try:
            assert "WATCHDOG=1" not in _pings_stop(d.daemon, notify_socket)
            assert not bus.alive
        finally:
            release.set()
            caller.join(30)
            session.close()
        _until(notify_socket, "WATCHDOG=1", [])  # the round ended: healthy again
