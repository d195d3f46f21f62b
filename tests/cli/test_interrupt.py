"""Ctrl-C anywhere in readerctl ends it with exit 130 and one line, never a traceback: at the PIN prompt
of ``readerctl auth``, while waiting for a daemon's reply, and in ``readerctl tail``, which also says
within about 3 s that no daemon accepts its connection (and keeps waiting), and during start-up (the
plugins' import). ``readerctl --version`` imports neither ZeroMQ nor SQLAlchemy.

Cost: about 8 s (readerctl in subprocesses, one in-process daemon for the PIN prompt; ``tail`` waits
its 3 s).
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from tests.support.auth import READER, tap
from tests.support.daemon import running_daemon, sim_config
from tests.support.ports import free_tcp_port

pytestmark = pytest.mark.timeout(60)

BIN = Path(sys.executable).parent


class Lines:
    """A stream's lines as they come, read on a thread (a pipe read would block the test)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.found: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.stream:
            self.found.put(line)

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds until a line containing ``text`` came; fails after ``timeout``."""
        start = time.monotonic()
        seen: list[str] = []
        while (left := timeout - (time.monotonic() - start)) > 0:
            try:
                line = self.found.get(timeout=left)
            except queue.Empty:
                break
            seen.append(line)
            if text in line:
                return time.monotonic() - start
        raise AssertionError(f"no line with {text!r} within {timeout} s: {seen}")

    def rest(self) -> str:
        """What came after, to the end of the stream (the process has exited); closes it."""
        self.thread.join(10)
        self.stream.close()
        out = []
        while not self.found.empty():
            out.append(self.found.get())
        return "".join(out)


def interrupt(proc: subprocess.Popen[str], stderr: Lines) -> str:
    """SIGINT: the exit code is 130; stderr's remaining lines (the one readerctl writes)."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    return stderr.rest()


def test_ctrl_c_at_the_pin_prompt(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
        tap(d, sub)
        proc = subprocess.Popen(
            [str(BIN / "readerctl"), "--control", d.control, "auth", "--reader", READER],
            stdin=subprocess.PIPE,  # left open: readerctl waits for the PIN on it
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        assert proc.stdin is not None
        stderr = Lines(proc.stderr)
        stderr.wait_for("PIN tries left", 20)  # the next thing it does is read the PIN
        rest = interrupt(proc, stderr)
        proc.stdin.close()
        assert proc.stdout is not None
        assert proc.stdout.read() == ""
        proc.stdout.close()
    assert rest == "readerctl: interrupted\n"


def test_ctrl_c_while_waiting_for_a_reply() -> None:
    proc = subprocess.Popen(
        [str(BIN / "readerctl"), "--control", f"tcp://127.0.0.1:{free_tcp_port()}", "help"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    stderr = Lines(proc.stderr)
    time.sleep(1.5)  # started, and waiting for the answer (3 s)
    rest = interrupt(proc, stderr)
    assert rest == "readerctl: interrupted\n"


def test_tail_says_no_daemon_answers_then_ctrl_c_stops_it() -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    proc = subprocess.Popen(
        [str(BIN / "readerctl"), "--publish", endpoint, "tail"], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    stderr = Lines(proc.stderr)
    took = stderr.wait_for(f"no readerd answers at {endpoint}", 8)
    assert took < 5.5  # 3 s of silence, plus readerctl's start-up on a busy machine
    assert proc.poll() is None  # it keeps waiting for a daemon to start
    rest = interrupt(proc, stderr)
    assert "Traceback" not in rest
    assert rest == "readerctl: interrupted\n"


def test_ctrl_c_during_start_up(tmp_path: Path) -> None:
    """A plugin subcommand: readerctl imports the plugins (SQLAlchemy, about a second) before it can
    parse; Ctrl-C then, or while it waits for the (absent) daemon, ends it the same way."""
    config = tmp_path / "readerd.toml"
    config.write_text('[plugins]\nautoload = false\nbuiltins = ["points", "checkin"]\n', "utf-8")
    control = f"tcp://127.0.0.1:{free_tcp_port()}"
    proc = subprocess.Popen(
        [str(BIN / "readerctl"), "--config", str(config), "--control", control, "points", "balance", "M1"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    stderr = Lines(proc.stderr)
    time.sleep(0.4)
    rest = interrupt(proc, stderr)
    assert rest == "readerctl: interrupted\n"


def test_version_loads_neither_zeromq_nor_sqlalchemy() -> None:
    probe = (
        "import sys; from readerd.cli.ctl import main; code = main(['--version']); "
        "print(code, sorted(m for m in ('zmq', 'sqlalchemy', 'pluggy', 'structlog') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("readerctl ")
    assert lines[1] == "0 []"
