"""A reader's session thread, kept between taps, and replaced only when a card stalls it.

A card session runs under a deadline on a thread of its own, because a stalled ``SCardTransmit`` cannot
be cancelled (docs/design.md D9). A new thread per card was a fixed cost the profile of the tap path
showed (docs/performance.md); a :class:`SessionWorker` keeps one thread per reader waiting for the next
session instead (:mod:`readerd.ops.worker`): the caller waits at most the deadline, a thread whose session
passed it is abandoned, and the next session gets a fresh thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from readerd.ops.worker import DeadlineWorker, Nudge, WorkerSlot

_T = TypeVar("_T")

#: Seconds a session thread waits for the next session before it ends (the next tap starts a new one): a
#: daemon restarted in-process (the tests, the soak) leaves no idle threads behind for long.
IDLE_EXIT = 60.0


class SessionWorker:
    """Runs one reader's sessions, one at a time, each under a deadline, on a thread kept between them."""

    def __init__(self, name: str, idle_exit: float = IDLE_EXIT) -> None:
        self.name = name
        self._slot = WorkerSlot(lambda: DeadlineWorker(name, idle_exit=idle_exit))

    def run(self, fn: Callable[[], _T], deadline: float, nudge: Nudge | None = None) -> _T:
        """``fn()`` on the reader's session thread; its result, or its exception re-raised here.
        :class:`~readerd.ops.deadline.SessionTimeoutError` when it has not returned within ``deadline``
        seconds: the thread is then abandoned with it, and the next call starts a new one. ``nudge``: see
        :meth:`readerd.ops.worker.DeadlineWorker.call`."""
        return self._slot.run(fn, deadline, nudge)
