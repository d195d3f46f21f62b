"""A long-lived thread per plugin that runs its hook calls, one at a time, under ``hook_timeout``.

A hook may hang in the plugin's own code and nothing can interrupt it; what the host can do is stop
waiting (docs/design.md D9, D15). It used to start a new thread for every hook call for that, which cost
more than a no-op hook by three orders of magnitude and, with four plugins, a good part of a tap's CPU.
Here each plugin has one :class:`~readerd.ops.worker.DeadlineWorker`: the calling thread hands the call
over and waits for the answer at most ``timeout`` seconds.

A call that overruns is **abandoned with its worker** (:mod:`readerd.ops.worker`): the plugin's next call
starts a fresh worker, and what the abandoned thread does later is only what the hung call itself does
(the host contains that: a quarantine revokes the plugin's store handle). Abandoned workers still running
are counted: past :data:`ABANDONED_LIMIT` of them the host asks to be restarted, since only a new process
frees threads that never return (docs/plugins.md, "Timeouts").

A worker's thread is named ``plugin:<name>`` while it runs a call and ``plugin-idle:<name>`` while it
waits for one, so a thread dump (py-spy, ``threading.enumerate``) shows which plugins are inside a hook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from readerd.ops.deadline import SessionTimeoutError
from readerd.ops.worker import Countdown, DeadlineWorker, Nudge, Pending, WorkerSlot

_T = TypeVar("_T")

#: Abandoned workers still running (hung in a plugin's code) at which the host asks to be restarted:
#: each is a thread, its stack and whatever the hung call holds, none of which can be taken back.
ABANDONED_LIMIT: Final = 8


def _plugin_worker(plugin: str) -> DeadlineWorker:
    return DeadlineWorker(f"plugin:{plugin}", idle_name=f"plugin-idle:{plugin}")


class Workers:
    """The workers of one plugin host, one per plugin, made at the plugin's first call; counts the
    abandoned ones. Calls to one plugin from several threads (the feed thread, a reinstatement on a
    command thread, the host's stop) wait for each other: one hook at a time per plugin."""

    def __init__(self, limit: int = ABANDONED_LIMIT) -> None:
        self.limit = limit
        self.abandoned_total = 0
        self._slots: dict[str, WorkerSlot] = {}
        self._abandoned: list[DeadlineWorker] = []
        self._guard = threading.Lock()  # making slots, the abandoned list

    def run(self, plugin: str, fn: Callable[[], _T], timeout: float, nudge: Nudge | None = None) -> _T:
        """``fn()`` on ``plugin``'s worker under ``timeout`` (:meth:`WorkerSlot.run`; ``nudge`` as
        there). Called from that plugin's own worker (a hook that leads to another hook of its plugin)
        it runs inline: waiting on itself would only time out."""
        return self.begin(plugin, fn).wait(timeout, nudge)

    def begin(
        self, plugin: str, fn: Callable[[], _T], countdown: Countdown | None = None
    ) -> Pending[_T] | Inline[_T]:
        """Hand ``fn`` to ``plugin``'s worker without waiting (:meth:`WorkerSlot.begin`): the host hands an
        event to every plugin first, then waits for each. From the plugin's own worker, ``fn`` runs at
        ``wait`` on the caller's thread, as in :meth:`run` (and is not counted on ``countdown``: it has
        not started)."""
        slot = self._slots.get(plugin)
        if slot is None:
            with self._guard:
                made = WorkerSlot(lambda: _plugin_worker(plugin), self._abandon)
                slot = self._slots.setdefault(plugin, made)
        if slot.on_own_thread():
            return Inline(fn)
        return slot.begin(fn, countdown)

    def run_once(self, name: str, fn: Callable[[], _T], timeout: float) -> _T:
        """``fn()`` on a thread of its own under ``timeout``: a plugin command, which runs beside the
        plugin's hooks and other commands. Abandoned at its timeout like a hook's worker, and counted
        with them: a command hung in a plugin's code holds a thread just the same."""
        worker = DeadlineWorker(name)
        try:
            return worker.call(fn, timeout)
        except SessionTimeoutError:
            self._abandon(worker)
            raise
        finally:
            if worker.usable:  # answered (or raised): its thread ends now
                worker.stop()

    def _abandon(self, worker: DeadlineWorker) -> None:
        with self._guard:
            self._abandoned.append(worker)
            self.abandoned_total += 1

    @property
    def abandoned_running(self) -> int:
        """Abandoned workers whose hung call has not returned yet."""
        with self._guard:
            self._abandoned = [w for w in self._abandoned if w.running]
            return len(self._abandoned)

    @property
    def exhausted(self) -> bool:
        """Whether the abandoned workers still running reached the limit: time for a new process."""
        return self.abandoned_running >= self.limit

    def status(self) -> dict[str, int]:
        return {"running": self.abandoned_running, "total": self.abandoned_total, "limit": self.limit}

    def stop(self) -> None:
        """End every idle worker (the host stops); abandoned ones end when their call returns."""
        with self._guard:
            slots = list(self._slots.values())
        for slot in slots:
            slot.stop()


class Inline(Generic[_T]):
    """A call that runs on the caller's thread when it is waited for (:meth:`Workers.begin`)."""

    def __init__(self, fn: Callable[[], _T]) -> None:
        self._fn = fn

    def wait(self, _timeout: float, _nudge: Nudge | None = None) -> _T:
        return self._fn()
