"""A long-lived thread that runs the calls handed to it, one at a time, each under a deadline.

Card sessions and plugin hooks both run code that may never return (a stalled ``SCardTransmit``, a plugin
hung in its own code) and that nothing can interrupt; what readerd can do is stop waiting (docs/design.md
D9). :func:`readerd.ops.deadline.run_with_deadline` does that with a new thread per call, which is a thread
start, a join and a teardown each time: on the tap path, with a session and four plugin hooks per tap, a
good part of a tap's CPU (docs/performance.md). A :class:`DeadlineWorker` keeps its thread between calls
instead; the guarantee is the same:

- the caller waits at most ``timeout`` and then gets :class:`SessionTimeoutError`;
- the worker is then **abandoned**: its thread goes on running the hung call as a daemon thread, its late
  answer is dropped and it ends without taking another call; its owner makes a fresh worker for the next
  call (:attr:`usable` is False);
- with ``idle_exit``, a worker that waited that long for a call ends (:attr:`usable` is False again), so
  a daemon restarted in-process leaves no idle threads behind.

Both queues are ``SimpleQueue`` (C code: no condition object per call). The thread is named ``name`` while
it runs a call and ``idle_name`` while it waits, so a thread dump shows who is inside a call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

from readerd.ops.deadline import SessionTimeoutError

log = structlog.get_logger("readerd.worker")

_T = TypeVar("_T")

#: What a worker's inbox carries: a call and whom to tell once its answer is out, or None for "end now".
_Job = tuple[Callable[[], object], "Countdown | None"] | None
#: ``(after seconds, callback)``: what a waiting caller does once a call runs that long (see ``call``).
Nudge = tuple[float, Callable[[], object]]


class WorkerRetiredError(Exception):
    """The worker ended while idle before this call reached it: the owner makes a new one (internal)."""


class DeadlineWorker:
    """One thread; :meth:`call` runs a callable on it and waits for the answer. One caller at a time:
    the owner serialises its calls."""

    def __init__(self, name: str, *, idle_name: str | None = None, idle_exit: float | None = None) -> None:
        self.name = name
        self.idle_exit = idle_exit
        self.abandoned = False  # its caller stopped waiting: it ends once the hung call returns
        self.retired = False  # it ended after ``idle_exit`` without a call
        self._idle_name = idle_name or name
        self._inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
        self._state = threading.Lock()  # a call handed over, or the worker retired: never both
        self.thread = threading.Thread(target=self._loop, name=self._idle_name, daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    @property
    def usable(self) -> bool:
        """Whether the next call may go to this worker (neither abandoned nor retired)."""
        return not (self.abandoned or self.retired)

    def call(self, fn: Callable[[], _T], timeout: float, nudge: Nudge | None = None) -> _T:
        """``fn()`` on the worker; its exception is raised here. :class:`SessionTimeoutError` after
        ``timeout`` seconds (the worker is then abandoned); :class:`WorkerRetiredError` when the worker
        ended idle before the call reached it. ``nudge``: ``(after, callback)``, the callback is called
        once on the caller's thread if the call is still running ``after`` seconds in."""
        self.submit(fn)
        return self.collect(timeout, nudge)  # type: ignore[return-value] # what fn returned

    def submit(self, fn: Callable[[], object], countdown: Countdown | None = None) -> None:
        """Hand ``fn`` over and return at once; :meth:`collect` waits for its answer (the caller may hand
        calls to other workers in between). ``countdown``: counted down once the answer is ready to
        collect (never for a call abandoned meanwhile); counted up here, once the call is handed over.
        :class:`WorkerRetiredError` as in :meth:`call`."""
        with self._state:
            if self.retired:
                raise WorkerRetiredError(self.name)
            if countdown is not None:
                countdown.add()  # before the worker can count it down
            self._inbox.put((fn, countdown))

    def collect(self, timeout: float, nudge: Nudge | None = None) -> object:
        """The answer of the call :meth:`submit` handed over, as :meth:`call` gives it, waiting at most
        ``timeout`` seconds from now."""
        try:
            if nudge is not None and nudge[0] < timeout:
                try:
                    ok, value = self._outbox.get(timeout=nudge[0])
                except queue.Empty:
                    nudge[1]()
                    ok, value = self._outbox.get(timeout=timeout - nudge[0])
            else:
                ok, value = self._outbox.get(timeout=timeout)
        except queue.Empty:
            self.abandoned = True
            self._inbox.put(None)  # it ends after the hung call, should that call ever return
            raise SessionTimeoutError(f"no answer within {timeout} s") from None
        if ok:
            return value
        raise value  # type: ignore[misc] # a BaseException caught on the worker

    def stop(self) -> None:
        """End the thread once it is idle (a call it is running goes on until it returns)."""
        self._inbox.put(None)

    def _next(self) -> _Job:
        while True:
            try:
                return self._inbox.get(timeout=self.idle_exit)
            except queue.Empty:
                with self._state:  # nothing is handed over while it retires
                    if self._inbox.empty():
                        self.retired = True
                        return None

    def _given_up(self) -> bool:
        """Whether the caller stopped waiting (set on its thread while this one ran the call)."""
        return self.abandoned

    def _loop(self) -> None:
        thread = threading.current_thread()
        while True:
            job = self._next()
            if job is None or self.abandoned:
                return
            fn, countdown = job
            thread.name = self.name
            try:
                answer: tuple[bool, object] = (True, fn())
            except BaseException as e:  # handed to the caller's thread
                answer = (False, e)
            thread.name = self._idle_name
            if self._given_up():  # the caller stopped waiting: the late answer is dropped, the thread ends
                log.info("an abandoned call returned; its result is discarded", worker=self.name)
                return
            self._outbox.put(answer)
            if countdown is not None:
                countdown.done()


class WorkerSlot:
    """The current worker of one owner (a reader, a plugin): made at the first call, replaced when
    abandoned or retired. Calls through one slot wait for each other: one call at a time per owner."""

    def __init__(
        self,
        make: Callable[[], DeadlineWorker],
        on_abandon: Callable[[DeadlineWorker], None] | None = None,
    ) -> None:
        """``on_abandon(worker)``: told of each worker abandoned to a timeout (the plugin host counts
        them), before the :class:`SessionTimeoutError` reaches the caller."""
        self.lock = threading.Lock()
        self.worker: DeadlineWorker | None = None
        self._make = make
        self._on_abandon = on_abandon

    def run(self, fn: Callable[[], _T], timeout: float, nudge: Nudge | None = None) -> _T:
        """``fn()`` on the slot's worker (:meth:`DeadlineWorker.call`), a fresh one when needed."""
        return self.begin(fn).wait(timeout, nudge)

    def begin(self, fn: Callable[[], _T], countdown: Countdown | None = None) -> Pending[_T]:
        """Hand ``fn`` to the slot's worker and return without waiting: the caller hands other calls to
        other slots, then :meth:`Pending.wait` for each. The slot is the caller's until then (a second
        call to it waits, as with :meth:`run`). ``countdown``: as :meth:`DeadlineWorker.submit`."""
        self.lock.acquire()
        try:
            worker = self.worker
            if worker is None or not worker.usable:
                worker = self.worker = self._make()
            try:
                worker.submit(fn, countdown)
            except WorkerRetiredError:  # it ended idle just now: a fresh one takes the call
                worker = self.worker = self._make()
                worker.submit(fn, countdown)
        except BaseException:
            self.lock.release()
            raise
        return Pending(self, worker)

    def _abandoned(self, worker: DeadlineWorker) -> None:
        self.worker = None
        if self._on_abandon is not None:
            self._on_abandon(worker)

    def on_own_thread(self) -> bool:
        """Whether the caller is this slot's worker thread (a call leading to another of the same owner)."""
        worker = self.worker
        return worker is not None and worker.thread is threading.current_thread()

    def stop(self) -> None:
        """End the worker once idle (an abandoned one ends when its hung call returns)."""
        worker, self.worker = self.worker, None
        if worker is not None and worker.usable:
            worker.stop()


class Pending(Generic[_T]):
    """A call handed to a slot's worker (:meth:`WorkerSlot.begin`), its answer not yet taken."""

    def __init__(self, slot: WorkerSlot, worker: DeadlineWorker) -> None:
        self._slot = slot
        self._worker = worker

    def wait(self, timeout: float, nudge: Nudge | None = None) -> _T:
        """The call's answer (:meth:`DeadlineWorker.collect`), waiting at most ``timeout`` s from now;
        :class:`SessionTimeoutError` abandons the worker (``on_abandon`` is told first). Gives the slot
        back: call it exactly once."""
        try:
            return self._worker.collect(timeout, nudge)  # type: ignore[return-value] # what fn returned
        except SessionTimeoutError:
            self._slot._abandoned(self._worker)
            raise
        finally:
            self._slot.lock.release()


class Countdown:
    """Calls handed to several workers at once, waited for together: the waiter wakes once, when the
    last answer is ready, instead of once per call it would otherwise block on in turn (each wake-up is
    a futex and a GIL hand-over: the plugin host hands every event to every plugin). Counted up at each
    hand-over and down once its answer is out (:meth:`DeadlineWorker.submit`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._left = 0

    def add(self) -> None:
        with self._cond:
            self._left += 1

    def done(self) -> None:
        with self._cond:
            self._left -= 1
            if self._left <= 0:
                self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """True once every call counted has its answer ready; False after ``timeout`` s (one is slow,
        or was abandoned: the caller then waits for each as before)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._left <= 0, timeout)
