"""A reader's session thread is kept between taps and replaced when a card stalls it (reading.worker)."""

from __future__ import annotations

import threading

import pytest

from readerd.ops.deadline import SessionTimeoutError
from readerd.reading.worker import SessionWorker


def test_sessions_run_on_one_kept_thread_named_for_the_reader() -> None:
    worker = SessionWorker("session:Sim 00")
    seen = [worker.run(lambda: (threading.get_native_id(), threading.current_thread().name), 5.0)]
    seen += [worker.run(lambda: (threading.get_native_id(), threading.current_thread().name), 5.0)]
    assert seen[0] == seen[1]  # the same thread both times: no thread started per session
    assert seen[0][1] == "session:Sim 00"
    assert seen[0][0] != threading.get_native_id()  # and not the caller's


def test_a_session_error_is_raised_in_the_caller_and_the_thread_goes_on() -> None:
    worker = SessionWorker("session:r")
    first = worker.run(threading.get_native_id, 5.0)

    def fails() -> None:
        raise ValueError("garbage from the card")

    with pytest.raises(ValueError, match="garbage from the card"):
        worker.run(fails, 5.0)
    assert worker.run(threading.get_native_id, 5.0) == first


def test_a_stalled_session_is_abandoned_with_its_thread_and_the_next_gets_a_fresh_one() -> None:
    worker = SessionWorker("session:r")
    stalled_on = worker.run(threading.get_native_id, 5.0)
    release = threading.Event()
    late: list[int] = []

    def stalls() -> int:
        release.wait(10)
        late.append(threading.get_native_id())
        return 1

    with pytest.raises(SessionTimeoutError):
        worker.run(stalls, 0.05)
    fresh = worker.run(threading.get_native_id, 5.0)  # while the stalled one still hangs
    assert fresh != stalled_on
    release.set()
    abandoned = [t for t in threading.enumerate() if t.native_id == stalled_on]
    for thread in abandoned:
        thread.join(5)  # it returns late, then ends: nothing is handed to it any more
        assert not thread.is_alive()
    assert late == [stalled_on]  # the late result went nowhere: the caller had its timeout
    assert worker.run(threading.get_native_id, 5.0) == fresh


def test_an_idle_session_thread_ends_and_the_next_session_starts_another() -> None:
    worker = SessionWorker("session:r", idle_exit=0.02)
    first = worker.run(threading.get_native_id, 5.0)
    thread = next(t for t in threading.enumerate() if t.native_id == first)
    thread.join(5)
    assert not thread.is_alive()  # no idle thread left behind (a daemon restarted in-process)
    assert worker.run(lambda: 42, 5.0) == 42
