"""A PostgreSQL server that stops answering, cut off on our side.

``statement_timeout`` is the server's own bound, ``tcp_user_timeout`` and keepalives the kernel's for a
link that loses packets. Neither ends a wait on a peer that takes our bytes and never answers: a stalled
server, a middlebox that keeps the TCP connection up and forwards nothing, a VPN whose tunnel died
behind a local endpoint. The driver then waits forever, a plugin's hook outlives ``hook_timeout`` and the
plugin is quarantined, which is what bounding the store was for. So every call that waits on the server
(a statement, COMMIT, ROLLBACK, the pool's ping) is armed with a deadline; when it passes, one watcher
thread shuts the connection's socket down, the driver's wait ends with "server closed the connection",
and the transaction fails as :class:`~readerd.errors.StoreUnavailableError` like any lost connection.

The deadline is the server's ``statement_timeout`` plus a small margin (so a slow statement is still ended
by the server, with its own message), and for the ping, which a healthy server answers at once, half of
that and at least one second: a stale pooled connection costs little before a new one is made.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

log = structlog.get_logger("readerd.store")

#: Seconds past ``statement_timeout`` before a waiting call's connection is cut.
MARGIN: Final = 0.25


class StallWatch:
    """Deadlines for calls that wait on a server, and one daemon thread that cuts the late ones."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int, str]] = {}  # token -> (deadline, fd, what)
        self._heap: list[tuple[float, int]] = []
        self._tokens = itertools.count(1)
        self._thread: threading.Thread | None = None
        self.cut = 0

    def arm(self, fd: int, seconds: float, what: str) -> int:
        with self._cond:
            token = next(self._tokens)
            deadline = self.clock() + seconds
            self._armed[token] = (deadline, fd, what)
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="readerd-store-watch", daemon=True)
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)  # its heap entry is skipped when it comes up

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - self.clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                _deadline, fd, what = self._armed.pop(token)
                self._cut(fd, what)

    def _cut(self, fd: int, what: str) -> None:
        self.cut += 1
        try:
            dup = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            return  # closed meanwhile: nothing waits on it any more
        try:
            dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            dup.close()
        log.warning("the shared store stopped answering: connection cut", waiting_for=what)


WATCH = StallWatch()


def _fd(dbapi_connection: Any) -> int | None:  # noqa: ANN401 - a driver's connection
    try:
        fd = dbapi_connection.fileno()
    except Exception:  # closed, or a driver without fileno: not watched
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _watched(
    method: Callable[..., Any], seconds: float, what: str, connection_of: Callable[[tuple[Any, ...]], Any]
) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - the dialect method's own
        fd = _fd(connection_of(args))
        token = WATCH.arm(fd, seconds, what) if fd is not None else None
        try:
            return method(*args, **kwargs)
        finally:
            if token is not None:
                WATCH.disarm(token)

    return call


def watch_dialect(dialect: Any, statement_timeout: float) -> None:  # noqa: ANN401 - an engine's dialect
    """Arm every call of this engine's ``dialect`` that waits on the server (see the module docstring).
    The dialect object belongs to one engine, so this changes that engine only."""
    statement = statement_timeout + MARGIN
    ping = max(1.0, statement_timeout / 2)
    cursor_conn = lambda args: args[0].connection  # noqa: E731 - do_execute*(cursor, ...)
    own_conn = lambda args: args[0]  # noqa: E731 - do_ping/do_commit/do_rollback(dbapi_connection)
    dialect.do_ping = _watched(dialect.do_ping, ping, "ping", own_conn)
    dialect.do_commit = _watched(dialect.do_commit, statement, "commit", own_conn)
    dialect.do_rollback = _watched(dialect.do_rollback, statement, "rollback", own_conn)
    for name in ("do_execute", "do_executemany", "do_execute_no_params"):
        setattr(dialect, name, _watched(getattr(dialect, name), statement, "statement", cursor_conn))
