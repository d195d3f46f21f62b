"""A PostgreSQL link that accepts bytes and never answers (a stalled server, a middlebox that forwards
nothing) ends as ``store_unavailable`` within the statement bound, on a pooled connection and on a new
one; the watcher cuts nothing on a healthy link.

Cost: about 8 s (a proxy in drop mode, each case waits out its bound of about 1-2 s).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from readerd.config import StoreConfig
from readerd.errors import StoreUnavailableError
from readerd.ops.database import postgres_database
from readerd.ops.stall import WATCH, StallWatch
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

#: The bound under test: 0.5 s statements (+ margin), pings after 1 s, connections after 2 s.
CONFIG = StoreConfig(statement_timeout=0.5, connect_timeout=2.0, retries=0, pool_size=1)


def _through(proxy: TcpProxy, url: str) -> str:
    return sa.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def _outcome(fn: Any) -> BaseException | object:
    """fn's result or exception, from a thread joined with a bound: a hang fails the test, not the run."""
    box: list[BaseException | object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as e:
            box.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert box, "the call still waits on the stalled link after 20 s"
    return box[0]


@pytest.mark.parametrize("where", ["statement", "ping"])
def test_a_stalled_link_is_unavailable_not_a_hang(postgres_url: str, where: str) -> None:
    target = sa.make_url(postgres_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        db = postgres_database(_through(proxy, postgres_url), CONFIG)
        try:
            assert db.transaction(lambda c: c.execute(sa.text("SELECT 1")).scalar_one()) == 1
            cut = WATCH.cut

            def stalled(conn: Any) -> object:
                proxy.mode = "drop"  # after the ping: the statement itself meets the stall
                return conn.execute(sa.text("SELECT 2")).scalar_one()

            if where == "ping":
                proxy.mode = "drop"  # before the checkout: the pool's ping meets it, then a new connection
                outcome = _outcome(lambda: db.transaction(lambda c: c.execute(sa.text("SELECT 2")).scalar()))
            else:
                outcome = _outcome(lambda: db.transaction(stalled))
            proxy.mode = "pass"
            after = db.transaction(lambda c: c.execute(sa.text("SELECT 3")).scalar_one())
        finally:
            db.close()
    assert isinstance(outcome, StoreUnavailableError), outcome
    assert WATCH.cut > cut
    assert after == 3, "a new connection works once the link is back"


def test_a_healthy_statement_is_never_cut(postgres_url: str) -> None:
    db = postgres_database(postgres_url, CONFIG)
    cut = WATCH.cut
    try:
        for _ in range(50):
            db.transaction(lambda c: c.execute(sa.text("SELECT pg_sleep(0.01)")).all())
    finally:
        db.close()
    assert WATCH.cut == cut


def test_the_watcher_cuts_late_calls_only() -> None:
    """Unit: deadlines in order, a disarmed call never cut (a socketpair stands for the connection)."""
    import socket  # noqa: PLC0415

    watch = StallWatch()
    late, peer_late = socket.socketpair()
    early, peer_early = socket.socketpair()
    try:
        watch.disarm(watch.arm(early.fileno(), 0.05, "statement"))
        watch.arm(late.fileno(), 0.05, "statement")
        late.settimeout(5)
        assert late.recv(1) == b"", "the late call's socket is shut down: its wait ends"
        early.setblocking(False)
        with pytest.raises(BlockingIOError):
            early.recv(1)  # still open: nothing to read, not end-of-stream
    finally:
        for s in (late, peer_late, early, peer_early):
            s.close()
    assert watch.cut == 1
