"""Running work that may never return under a deadline, on a thread that can be abandoned.

pyscard cannot time out a stalled ``SCardTransmit`` and a plugin's hook may hang in its own code, so the
caller cannot be interrupted; what it can do is stop waiting. Operations on a card (PIN proofs,
signatures) run through :func:`run_with_deadline`: on timeout the worker is left running as a daemon
thread, its late result discarded, and the caller reports the reader wedged (docs/design.md D9). Card
reads and plugin hooks do the same on long-lived workers (:mod:`readerd.ops.worker`), plugin commands on a
worker of their own that is counted when abandoned (:meth:`readerd.plugin.worker.Workers.run_once`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from protocols.errors import TransportError

_T = TypeVar("_T")


class SessionTimeoutError(TransportError):
    """The card did not finish within the session deadline (a stalled card cannot be cancelled)."""

    code = "timeout"


def run_with_deadline(fn: Callable[[], _T], deadline: float, name: str = "card-session") -> _T:
    """Run ``fn`` on a worker thread and wait at most ``deadline`` seconds; on timeout the worker is
    abandoned and :class:`SessionTimeoutError` raised."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        raise SessionTimeoutError(f"no answer within {deadline} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc] # a BaseException stored above
    return box["result"]  # type: ignore[return-value] # set by fn's return
