"""A private pcscd with vsmartcard's vpcd driver, owned by the tests (DESIGN decision 7).

Never the system's pcscd, never ``/etc/reader.conf.d``, never ``pkill``: the instance lives in a
directory of its own, is started through ``systemd-socket-activate`` on a socket in that directory
(pcscd 1.9.9 does not read ``PCSCLITE_CSOCK_NAME`` itself, the client library does) and is stopped by
PID.

libpcsclite reads ``PCSCLITE_CSOCK_NAME`` once per process (measured: a second value in the same process
still reaches the first daemon), so every private pcscd of one test process uses the same socket path;
tests restart the daemon behind it, never move it.

Each vpcd entry gives two readers, ``<name> 00 00`` and ``<name> 00 01``, on two consecutive TCP ports
(the virtual card connects to them). Entries need distinct friendly names: two "Virtual PCD" entries
would both be called ``Virtual PCD 00 00``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import BinaryIO

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
SLOTS_PER_ENTRY = 2
START_TIMEOUT = 15.0


class PcscdUnavailable(RuntimeError):
    """pcscd, systemd-socket-activate or the vpcd driver is not installed."""


def missing_tools() -> list[str]:
    missing = [tool for tool in ("pcscd", "systemd-socket-activate") if shutil.which(tool) is None]
    if not VPCD_DRIVER.exists():
        missing.append(str(VPCD_DRIVER))
    return missing


def _free_port_pair() -> int:
    """A port P with P and P+1 free on all interfaces (vpcd binds 0.0.0.0)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))  # noqa: S104 - vpcd itself binds every interface; probe the same
            port = int(probe.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("0.0.0.0", port))  # noqa: S104
                b.bind(("0.0.0.0", port + 1))  # noqa: S104
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free TCP ports")


def reader_names(entries: int) -> list[str]:
    names = []
    for i in range(entries):
        base = "Virtual PCD" if i == 0 else f"Virtual PCD {i}"
        names += [f"{base} 00 00", f"{base} 00 01"]
    return names


class PrivatePcscd:
    """One pcscd with ``entries`` vpcd entries (2 readers each) in ``directory``."""

    def __init__(self, directory: Path, entries: int = 1) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path = self.directory / "pcscd.comm"
        self.log_path = self.directory / "pcscd.log"
        self.entries = entries
        self._base_ports: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    # -- configuration --------------------------------------------------------------------------------
    @property
    def ports(self) -> list[int]:
        """Slot i's vpcd port (readers in the order of :func:`reader_names`)."""
        bases = self._base_ports[: self.entries]
        return [base + slot for base in bases for slot in range(SLOTS_PER_ENTRY)]

    @property
    def readers(self) -> list[str]:
        return reader_names(self.entries)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    def _write_config(self) -> Path:
        conf = self.directory / "reader.conf.d"
        if conf.exists():
            shutil.rmtree(conf)
        conf.mkdir()
        while len(self._base_ports) < self.entries:
            self._base_ports.append(_free_port_pair())
        for i in range(self.entries):
            name = "Virtual PCD" if i == 0 else f"Virtual PCD {i}"
            port = self._base_ports[i]
            lines = [f'FRIENDLYNAME "{name}"', f"DEVICENAME /dev/null:{port}", f"LIBPATH {VPCD_DRIVER}"]
            (conf / f"vpcd{i}").write_text("\n".join([*lines, f"CHANNELID {port}", ""]))
        return conf

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> PrivatePcscd:
        if missing_tools():
            raise PcscdUnavailable(f"missing: {', '.join(missing_tools())}")
        if self._process is not None:
            raise RuntimeError("already running")
        conf = self._write_config()
        self.socket_path.unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                "systemd-socket-activate",
                "-l",
                str(self.socket_path),
                "--",
                "pcscd",
                "--foreground",
                "--info",
                "--config",
                str(conf),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until pcscd answers on the socket and every vpcd port is listening (bounded)."""
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            self._check_alive(deadline)
        # The first client connection makes systemd-socket-activate exec pcscd.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(self.socket_path))
        for port in self.ports:
            while True:
                with socket.socket() as s:
                    s.settimeout(0.2)
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                self._check_alive(deadline)

    def _check_alive(self, deadline: float) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"pcscd exited with {self._process.returncode}:\n{self.log_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"pcscd not ready:\n{self.log_text()}")
        time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.socket_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to the clients."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(5)
            self._process = None
        self.socket_path.unlink(missing_ok=True)

    def restart(self, entries: int | None = None) -> None:
        self.stop()
        if entries is not None:
            self.entries = entries
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> PrivatePcscd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
