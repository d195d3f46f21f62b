"""A private PostgreSQL cluster owned by the tests (docs/design.md D16), never the system's.

One cluster per test session: ``initdb`` into a fresh directory D under ``/tmp`` (``D/data``), the server
listening on its own socket directory ``D/sock`` and on a free port of 127.0.0.1 only, its log in
``D/postgres.log``; stopped by PID at the end and D removed. Each test gets a database of its own
(:meth:`PrivatePostgres.create_database`), which costs milliseconds where a cluster costs seconds.

Measured on Debian 12 (PostgreSQL 15, util-linux 2.38), and why it is done this way:

* ``initdb`` and ``postgres`` refuse to run as root. As root the directory is made over to the
  ``postgres`` user (the Debian package creates it); ``initdb`` runs through ``runuser -u postgres --``.
  D is under ``/tmp`` rather than pytest's ``tmp_path`` because pytest's base directory is mode 0700
  for root (``postgres`` could not reach it) and because a unix socket path must stay under 108 bytes.
* The server is **not** started through ``runuser``: runuser stays as the parent (a PAM session), so
  the PID we hold would be runuser's, and on SIGTERM runuser waits 2 s and then SIGKILLs its child
  (measured: "Session terminated, killing shell... ...killed." after 2.0 s). A SIGKILLed postmaster
  leaves its backends behind. ``subprocess.Popen(user=, group=, extra_groups=[])`` instead switches to
  ``postgres`` between fork and exec, so the child *is* the postmaster: SIGINT by PID is a fast
  shutdown, and ``wait()`` reaps it (PID 1 in these containers does not reap orphans, so a daemonised
  server through ``pg_ctl`` would leave zombies that look alive to ``kill(pid, 0)``).
* ``fsync=off``, ``synchronous_commit=off``, ``full_page_writes=off``: the cluster is thrown away, and
  it makes ``CREATE DATABASE`` per test cheap. Authentication is ``trust``, reachable only through the
  private socket directory (mode 0700) and loopback.

Without the binaries (``/usr/lib/postgresql/*/bin``, or ``READERD_PG_BINDIR``) tests marked ``postgres``
are skipped, except under CI (``CI`` set), where they fail: ``scripts/bootstrap --test`` installs them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from tests.support.ports import free_tcp_port

if TYPE_CHECKING:
    import pytest

START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
POLL: Final = 0.02
LOG_TAIL: Final = 8000
OWNER: Final = "postgres"  # the system user the cluster runs as when the tests run as root
SUPERUSER: Final = "postgres"  # the cluster's own superuser role


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (or, as root, the ``postgres`` user) are missing."""


class PostgresStartError(RuntimeError):
    """The private cluster did not come up in time."""


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return (0,)


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and postgres (or READERD_PG_BINDIR)."""
    override = os.environ.get("READERD_PG_BINDIR")
    candidates = [Path(override)] if override else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def missing_tools() -> list[str]:
    """What a private cluster needs and this machine lacks (empty when all is there)."""
    missing = []
    if find_bindir() is None:
        missing.append("PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb, postgres)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            missing.append(f"the {OWNER!r} system user (to run the cluster as non-root)")
        if shutil.which("runuser") is None:
            missing.append("runuser")
    return missing


class PrivatePostgres:
    """A throwaway cluster: ``start()`` (initdb the first time), ``stop()``, ``start()`` again keeps the
    data; ``remove()`` stops it and deletes its directory."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise PostgresUnavailable("no PostgreSQL server binaries")
        self.bindir = found
        self.directory = Path(tempfile.mkdtemp(prefix="readerd-pg-"))
        self.data_dir = self.directory / "data"
        self.socket_dir = self.directory / "sock"
        self.log_path = self.directory / "postgres.log"
        self.socket_dir.mkdir(mode=0o700)
        self._as_root = os.geteuid() == 0
        if self._as_root:
            owner = pwd.getpwnam(OWNER)
            for path in (self.directory, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._initialised = False
        self._databases = 0

    # -- what clients need ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL over TCP loopback (as kiosks reach a real server)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg connection through the private socket (admin work, lock holders in tests)."""
        import psycopg  # noqa: PLC0415 - only the postgres tests need it

        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=database, **kwargs
        )

    def create_database(self, name: str | None = None) -> str:
        """A fresh, empty database; returns its URL."""
        self._databases += 1
        name = name or f"test_{self._databases}"
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    # -- lifecycle ------------------------------------------------------------------------------------
    def _owner_kwargs(self) -> dict[str, Any]:
        """Popen arguments that make the child run as ``postgres`` when we are root."""
        if not self._as_root:
            return {}
        return {"user": OWNER, "group": OWNER, "extra_groups": []}

    def _initdb(self) -> None:
        command = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]
        if self._as_root:
            command = ["runuser", "-u", OWNER, "--", *command]
        with self.log_path.open("ab") as log:
            log.write(b"=== readerd tests: initdb ===\n")
            log.flush()
            done = subprocess.run(
                command,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if done.returncode != 0:
            raise PostgresStartError(f"initdb exited with {done.returncode}:\n{self.log_text()}")
        self._initialised = True

    def start(self, timeout: float = START_TIMEOUT) -> PrivatePostgres:
        """Start the server (initdb first if needed) and wait until it accepts connections."""
        if self._process is not None:
            raise RuntimeError("private postgres already started")
        if not self._initialised:
            self._initdb()
        for attempt in range(3):
            self.port = self.port or free_tcp_port()
            self._spawn()
            try:
                self.wait_ready(timeout)
            except PostgresStartError:
                self.stop()
                if attempt == 2 or "could not bind" not in self.log_text():
                    raise
                self.port = 0  # the port was taken meanwhile: pick another
                continue
            return self
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self._log = self.log_path.open("ab")
        self._log.write(f"=== readerd tests: postgres on port {self.port} ===\n".encode())
        self._log.flush()
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
        }
        command = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        self._process = subprocess.Popen(
            command,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._owner_kwargs(),
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until a connection succeeds (bounded; short polls only)."""
        import psycopg  # noqa: PLC0415 - only the postgres tests need it

        deadline = time.monotonic() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise PostgresStartError(
                    f"postgres exited with {self._process.returncode}:\n{self.log_text()}"
                )
            try:
                with self.connect(connect_timeout=2):
                    return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise PostgresStartError(
                        f"postgres not ready in {timeout} s: {e}\n{self.log_text()}"
                    ) from e
            time.sleep(POLL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT) by PID; immediate (SIGQUIT), then SIGKILL, if it takes too long."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
                process.send_signal(sig)
                try:
                    process.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- logs -----------------------------------------------------------------------------------------
    def log_text(self, limit: int = LOG_TAIL) -> str:
        try:
            text = self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return "(no postgres log)"
        return text if len(text) <= limit else "…" + text[-limit:]

    def attach_log(self, report: pytest.TestReport) -> None:
        report.sections.append((f"private postgres log ({self.log_path})", self.log_text()))


def private_postgres_fixture() -> PrivatePostgres:
    """Check the tools (skip, or fail under CI) and start a PrivatePostgres."""
    import pytest  # noqa: PLC0415 - keep pytest out of the import of this module for non-test users

    missing = missing_tools()
    if missing:
        message = f"postgres tests need {', '.join(missing)} (scripts/bootstrap --test installs them)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = PrivatePostgres()
    try:
        return cluster.start()
    except BaseException:
        cluster.remove()
        raise
