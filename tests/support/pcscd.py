"""A private pcscd with vsmartcard's vpcd driver, owned by the tests (docs/design.md D7).

Never the system's pcscd, never ``/etc/reader.conf.d``, never ``pkill``: the instance lives in a
directory D of its own (``D/reader.conf.d``, ``D/pcscd.comm``, ``D/pcscd.log``) and is stopped by PID.

How it is started, and why (all measured on Debian 12: pcscd 1.9.9, vsmartcard-vpcd 3.3, pyscard 2.3.1):

* ``systemd-socket-activate -l D/pcscd.comm -- pcscd --foreground --info --config D/reader.conf.d``.
  pcscd 1.9.9 does **not** read ``PCSCLITE_CSOCK_NAME`` (only the client library does): started with it
  set, pcscd still creates ``/run/pcscd/pcscd.comm``, i.e. it would take the system daemon's socket. Under
  socket activation pcscd uses the listening socket it inherits and leaves ``/run/pcscd/pcscd.comm`` alone.
  ``systemd-socket-activate`` execs pcscd on the first connection, so the PID we hold is pcscd's.
* Even socket-activated, pcscd 1.9.9 writes ``/run/pcscd/pcscd.pid`` and deletes it on exit (it clobbered
  another instance's pid file when tried). Where ``unshare`` can make a private mount namespace (root,
  or unprivileged user namespaces), pcscd runs in one with a tmpfs over ``/run``, so nothing under the
  real ``/run`` is touched (and USB readers, whose udev data lives in ``/run/udev``, are not claimed).
  Otherwise it runs without, and :attr:`PrivatePcscd.isolated` is false.
* ``--auto-exit`` is not used: a daemon that quits after 60 s idle would vanish under a slow test.

Clients select the instance with ``PCSCLITE_CSOCK_NAME=D/pcscd.comm``. libpcsclite reads that variable
**once per process** (the first ``SCardEstablishContext``; the name is cached in a static buffer):
measured, a context established after changing ``os.environ`` still reaches the first daemon. So one test
process uses one socket path, and tests restart the daemon behind it instead of moving it; a second
instance at another path is reached from subprocesses (:meth:`PrivatePcscd.env`). :meth:`wait_ready`
uses pyscard in-process only when this process is bound to this instance's path, a subprocess otherwise.

Readers: vpcd has two slots per ``reader.conf.d`` entry (``VPCDSLOTS``, compiled in), on TCP ports P and
P+1 of ``0.0.0.0`` (every interface, verified with ``ss``), so readers come in pairs: 3 readers cannot be
had. Entry 0 is called ``Virtual PCD`` (readers ``Virtual PCD 00 00`` and ``Virtual PCD 00 01``), entry i
``Virtual PCD <i>``: two entries with the same friendly name would both give ``Virtual PCD 00 00``
(measured: pcscd does not renumber them). libifdvpcd keeps its connections in a static array indexed by
slot only (``ctx[Lun & 0xffff]`` in ifd-vpcd.c), so a second entry loaded from the same LIBPATH silently
takes over the first entry's slots (measured: a card on entry 1's slot 1 also showed in ``Virtual PCD 00
01``). Entry i > 0 therefore loads its own copy of the driver (``D/drivers/libifdvpcd-<i>.so``: another
path and inode, so dlopen gives it its own statics). A vpcd port that is taken makes pcscd drop that
entry; :meth:`start` then picks new ports.

A context does not survive a restart: after pcscd restarts behind the same socket, calls on a context
established before fail with ``SCARD_E_NO_SERVICE`` (ListReaders and GetStatusChange, and they keep
failing), while ``SCardIsValidContext`` still answers success (a client-side check, no liveness test):
release the context and establish a new one.

APDUs: under a test session's card-info audit (tests/support/card_audit.py, ``READERD_CARD_AUDIT`` set),
pcscd runs with ``--apdu``, so its log holds every APDU it forwards and the audit can check them (the
benches, without an audit, run pcscd as a kiosk does); each start announces its log in the audit file
and names the test that started it in the log's header. pcscd's output goes through ``sed -u`` on its
way to the log, which cuts the data of VERIFY, CHANGE REFERENCE DATA and RESET RETRY COUNTER (the PIN)
before it is written. Measured: 200 SELECTs through pyscard took 28-31 ms without ``--apdu``, 30-60 ms with.

Card insert/remove is seen at pcscd's next presence poll (every 0.4 s): measured 1-390 ms for an insert,
35-395 ms for a removal; the vicc's first GET ATR and the status change arrive within a millisecond.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Final

if TYPE_CHECKING:
    import pytest

VPCD_DRIVER: Final = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
SLOTS_PER_ENTRY: Final = 2
START_TIMEOUT: Final = 15.0
STOP_TIMEOUT: Final = 5.0
POLL: Final = 0.02
LOG_TAIL: Final = 8000
_PORT_TAKEN_MARK: Final = "Could not initialize connection to virtual ICC"
_ISOLATION_PREFIXES: Final = (
    ["unshare", "--mount", "--propagation", "private"],
    ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"],
)
_MOUNT_RUN: Final = 'mount -t tmpfs -o mode=0755 readerd-test-run /run && exec "$@"'
#: ``APDU: CLA INS P1 P2 Lc data...`` of a PIN-bearing command (INS 20, 24, 2C) keeps its header and Lc only.
_REDACT_PINS: Final = (
    r"s/(APDU: [0-9A-Fa-f]{2} (20|24|2[Cc]) [0-9A-Fa-f]{2} [0-9A-Fa-f]{2} [0-9A-Fa-f]{2}) [0-9A-Fa-f]{2}.*/"
    r"\1 <PIN redacted>/"
)

# The socket path libpcsclite in this process is bound to, once pyscard was used here (see the docstring).
_process_socket: str | None = None


class PcscdUnavailable(RuntimeError):
    """pcscd, systemd-socket-activate or the vpcd driver is not installed."""


class PcscdStartError(RuntimeError):
    """The private pcscd did not come up with the expected readers in time."""


class _PortTaken(PcscdStartError):
    pass


def missing_tools() -> list[str]:
    """What a private pcscd needs and this machine lacks (empty when all is there)."""
    missing = [tool for tool in ("pcscd", "systemd-socket-activate", "sed") if shutil.which(tool) is None]
    if not VPCD_DRIVER.exists():
        missing.append(str(VPCD_DRIVER))
    return missing


def entry_name(entry: int) -> str:
    return "Virtual PCD" if entry == 0 else f"Virtual PCD {entry}"


def reader_names(entries: int) -> list[str]:
    """The readers pcscd lists for ``entries`` vpcd entries, slot i at index i."""
    return [f"{entry_name(e)} 00 {slot:02X}" for e in range(entries) for slot in range(SLOTS_PER_ENTRY)]


def entries_for(n_readers: int) -> int:
    if n_readers < 0 or n_readers % SLOTS_PER_ENTRY:
        raise ValueError(
            f"vpcd gives {SLOTS_PER_ENTRY} readers per reader.conf.d entry: {n_readers} readers is impossible"
        )
    return n_readers // SLOTS_PER_ENTRY


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 - vpcd binds every interface: probe the same
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port P with P and P+1 free right now (vpcd listens on both, for slots 0 and 1)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < 65535 and _port_is_free(port) and _port_is_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free TCP ports")


_isolation_cache: list[list[str]] = []


def isolation_prefix() -> list[str]:
    """The command prefix that gives pcscd a private ``/run`` (empty when unshare cannot)."""
    if not _isolation_cache:
        found: list[str] = []
        if shutil.which("unshare") is not None:
            for prefix in _ISOLATION_PREFIXES:
                probe = [*prefix, "--", "sh", "-c", _MOUNT_RUN, "sh", "true"]
                try:
                    ok = subprocess.run(probe, capture_output=True, timeout=10, check=False).returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    ok = False
                if ok:
                    found = [*prefix, "--", "sh", "-c", _MOUNT_RUN, "sh"]
                    break
        _isolation_cache.append(found)
    return list(_isolation_cache[0])


_LIST_READERS_SCRIPT: Final = """
import json
from smartcard import scard
hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
if hr != scard.SCARD_S_SUCCESS:
    print(json.dumps({"error": scard.SCardGetErrorMessage(hr)}))
else:
    hr, readers = scard.SCardListReaders(ctx, [])
    scard.SCardReleaseContext(ctx)
    if hr == scard.SCARD_E_NO_READERS_AVAILABLE:
        readers = []
    print(json.dumps({"readers": list(readers)} if hr in (0, scard.SCARD_E_NO_READERS_AVAILABLE)
                     else {"error": scard.SCardGetErrorMessage(hr)}))
"""


def list_readers_in_process() -> list[str] | None:
    """Readers through a fresh context of this process, or None when pcscd does not answer."""
    global _process_socket  # noqa: PLW0603 - mirrors libpcsclite's own per-process static
    from smartcard import scard  # noqa: PLC0415, TID251 - the test harness checks the real stack

    if _process_socket is None:
        _process_socket = os.environ.get("PCSCLITE_CSOCK_NAME", "/run/pcscd/pcscd.comm")
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr != scard.SCARD_S_SUCCESS:
        return None
    try:
        hr, readers = scard.SCardListReaders(ctx, [])
    finally:
        scard.SCardReleaseContext(ctx)
    if hr == scard.SCARD_E_NO_READERS_AVAILABLE:
        return []
    if hr != scard.SCARD_S_SUCCESS:
        return None
    return [str(r) for r in readers]


class PrivatePcscd:
    """One pcscd with ``entries`` vpcd entries (``2 * entries`` readers) in ``directory``.

    ``with PrivatePcscd(d) as pcscd: ...`` starts and stops it; ``pcscd.ports[i]`` is the TCP port a
    virtual card connects to for reader ``pcscd.readers[i]``.
    """

    def __init__(
        self,
        directory: Path,
        entries: int = 1,
        *,
        n_readers: int | None = None,
        isolate: bool = True,
        debug: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path = self.directory / "pcscd.comm"
        self.log_path = self.directory / "pcscd.log"
        self.config_dir = self.directory / "reader.conf.d"
        self.entries = entries if n_readers is None else entries_for(n_readers)
        self.debug = debug
        self._isolate = isolate
        self._base_ports: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._filter: subprocess.Popen[bytes] | None = None  # sed between pcscd and its log (PINs)
        self._log: BinaryIO | None = None
        self._log_offset = 0
        self._first_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.starts = 0

    # -- what clients need ----------------------------------------------------------------------------
    @property
    def ports(self) -> list[int]:
        """Reader i's vpcd port (the order of :attr:`readers`)."""
        bases = self._base_ports[: self.entries]
        return [base + slot for base in bases for slot in range(SLOTS_PER_ENTRY)]

    @property
    def readers(self) -> list[str]:
        return reader_names(self.entries)

    @property
    def n_readers(self) -> int:
        return self.entries * SLOTS_PER_ENTRY

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def isolated(self) -> bool:
        """Whether pcscd runs with a private ``/run`` (its pid file cannot clobber the system's)."""
        return self._isolate and bool(isolation_prefix())

    def env(self) -> dict[str, str]:
        """The environment for a subprocess that should talk to this pcscd."""
        return {**os.environ, "PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    # -- configuration --------------------------------------------------------------------------------
    def _write_config(self) -> None:
        if self.config_dir.exists():
            shutil.rmtree(self.config_dir)
        self.config_dir.mkdir()
        while len(self._base_ports) < self.entries:
            self._base_ports.append(free_port_pair())
        for i in range(self.entries):
            port = self._base_ports[i]
            text = (
                f'FRIENDLYNAME "{entry_name(i)}"\n'
                f"DEVICENAME /dev/null:{port}\n"
                f"LIBPATH {self._driver_for(i)}\n"
                f"CHANNELID {port}\n"
            )
            (self.config_dir / f"vpcd{i}").write_text(text)

    def _driver_for(self, entry: int) -> Path:
        """Entry 0 uses the installed driver, entry i a copy of it (see the module docstring)."""
        if entry == 0:
            return VPCD_DRIVER
        copy = self.directory / "drivers" / f"libifdvpcd-{entry}.so"
        if not copy.exists():
            copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(VPCD_DRIVER, copy)
        return copy

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> PrivatePcscd:
        """Start pcscd and wait until it lists exactly :attr:`readers` (new ports if one was taken)."""
        missing = missing_tools()
        if missing:
            raise PcscdUnavailable(f"missing: {', '.join(missing)}")
        if self._process is not None:
            raise RuntimeError("private pcscd already started")
        for attempt in range(3):
            self._spawn()
            try:
                self.wait_ready(timeout)
            except _PortTaken:
                self.stop()
                if attempt == 2:
                    raise
                self._base_ports.clear()
                continue
            except BaseException:
                self.stop()
                raise
            return self
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self._write_config()
        self.socket_path.unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        self.starts += 1
        test = os.environ.get("PYTEST_CURRENT_TEST") or "-"
        header = (
            f"=== readerd tests: start {self.starts}, readers {self.readers}, ports {self.ports}, "
            f"test: {test} ===\n"
        )
        self._log.write(header.encode())
        self._log.flush()
        audited = _announce_log(self.log_path)
        self._log_offset = self.log_path.stat().st_size
        prefix = isolation_prefix() if self._isolate else []
        command = [
            *prefix,
            "systemd-socket-activate",
            "--listen",
            str(self.socket_path),
            "--",
            "pcscd",
            "--foreground",
            "--debug" if self.debug else "--info",
            *(["--apdu"] if audited else []),
            "--config",
            str(self.config_dir),
        ]
        if not audited:  # a bench: pcscd as a kiosk runs it, no APDU log (nor its cost per APDU)
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            return
        self._filter = subprocess.Popen(
            ["sed", "-u", "-E", _REDACT_PINS],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self._filter.stdin is not None  # stdin=PIPE
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._filter.stdin,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            self._filter.stdin.close()  # pcscd holds the only write end: sed ends when pcscd does

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until a fresh context lists exactly :attr:`readers` (bounded; short polls only)."""
        deadline = time.monotonic() + timeout
        seen: list[str] | None = None
        while True:
            self._check_alive()
            if self.socket_path.exists():
                seen = self._list_readers(deadline)
                if seen == self.readers:
                    return
                if _PORT_TAKEN_MARK in self._log_since_start():
                    raise _PortTaken(f"a vpcd port was taken:\n{self.log_text()}")
            if time.monotonic() > deadline:
                want = f"want {self.readers}, saw {seen}"
                raise PcscdStartError(f"private pcscd not ready in {timeout} s: {want}\n{self.log_text()}")
            time.sleep(POLL)

    def _list_readers(self, deadline: float) -> list[str] | None:
        if _process_socket in (None, str(self.socket_path)) and os.environ.get("PCSCLITE_CSOCK_NAME") == str(
            self.socket_path
        ):
            return list_readers_in_process()
        # This process is bound to another pcscd: ask from a subprocess with our socket.
        try:
            done = subprocess.run(
                [sys.executable, "-c", _LIST_READERS_SCRIPT],
                env=self.env(),
                capture_output=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            return None
        readers = answer.get("readers") if isinstance(answer, dict) else None
        return [str(r) for r in readers] if isinstance(readers, list) else None

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise PcscdStartError(f"private pcscd exited with {self._process.returncode}:\n{self.log_text()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``; the socket file is removed."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._close_log()
        self.socket_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL by PID, as a crash would: no goodbye to the clients."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)
        self._close_log()
        self.socket_path.unlink(missing_ok=True)

    def restart(
        self, entries: int | None = None, *, n_readers: int | None = None, timeout: float = START_TIMEOUT
    ) -> PrivatePcscd:
        """Stop and start again, optionally with another number of vpcd entries (or readers, even)."""
        if n_readers is not None:
            entries = entries_for(n_readers)
        self.stop()
        if entries is not None:
            self.entries = entries
        return self.start(timeout)

    def _close_log(self) -> None:
        filter_, self._filter = self._filter, None
        if filter_ is not None:  # pcscd is gone, so sed reads EOF, writes its last lines and exits
            try:
                filter_.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                filter_.kill()
                filter_.wait(STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- logs -----------------------------------------------------------------------------------------
    def log_text(self, limit: int = LOG_TAIL) -> str:
        """The end of what this instance wrote to ``D/pcscd.log`` (all its starts)."""
        text = self._log_from(self._first_offset)
        if not text:
            return "(empty pcscd log)"
        return text if len(text) <= limit else "…" + text[-limit:]

    def _log_since_start(self) -> str:
        return self._log_from(self._log_offset)

    def _log_from(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def attach_log(self, report: pytest.TestReport) -> None:
        """Add the pcscd log as a section of a (failed) test report."""
        report.sections.append((f"private pcscd log ({self.log_path})", self.log_text()))

    # -- context manager ------------------------------------------------------------------------------
    def __enter__(self) -> PrivatePcscd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _announce_log(log_path: Path) -> bool:
    """Name this pcscd's log in the session's card-info audit file (tests/support/card_audit.py), if any:
    one line, one ``O_APPEND`` write, so a pcscd started by a subprocess is found as well. False when no
    audit runs (the benches): then pcscd logs no APDUs."""
    from simulators.mynumber import CARD_AUDIT_ENV  # noqa: PLC0415 - only pcscd tests pay for the import

    audit = os.environ.get(CARD_AUDIT_ENV)
    if not audit:
        return False
    line = json.dumps({"pid": os.getpid(), "pcscd_log": str(log_path.resolve())}) + "\n"
    fd = os.open(audit, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return True


def attach_logs_on_failure(item: pytest.Item, report: pytest.TestReport) -> None:
    """From ``pytest_runtest_makereport``: a failed phase gets the log of every PrivatePcscd it used."""
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    for value in funcargs.values():
        if isinstance(value, PrivatePcscd):
            value.attach_log(report)


def private_pcscd_fixture(socket_dir: Path, entries: int = 1) -> PrivatePcscd:
    """Check the tools (skip, or fail under CI) and start a PrivatePcscd in ``socket_dir``."""
    import pytest  # noqa: PLC0415 - keep pytest out of the import of this module for non-test users

    missing = missing_tools()
    if missing:
        message = f"pcscd tests need {', '.join(missing)} (scripts/bootstrap --test installs them)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ["PCSCLITE_CSOCK_NAME"] = str(socket_dir / "pcscd.comm")
    return PrivatePcscd(socket_dir, entries).start()
