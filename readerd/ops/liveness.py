"""Is a loop still advancing? The watchdog's second question after "is the thread alive".

A thread can be alive and useless: stuck in a pcscd call that never returns, or in a bug's endless wait.
systemd's watchdog restarts the daemon only if the main loop stops pinging, and the main loop pings only
while :meth:`readerd.daemon.Daemon.healthy`; so each backend loop marks the step it is in with
:meth:`StepWatch.step`, and a step running longer than its budget makes the backend report itself not
alive. Waiting for work (an idle queue, the backoff before reconnecting to pcscd) is not a step: an idle
kiosk is healthy. A card read is bounded by the session deadline, and a stalled card is abandoned
without wedging the loop (docs/design.md D9), so the budgets sit well above the deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Added to a loop's longest legitimate step before it counts as wedged: scheduling hiccups on a slow
#: kiosk must not restart the daemon.
STEP_MARGIN = 1.0


class StepWatch:
    """The start time of the step a loop is in now (None when it waits for work)."""

    def __init__(self, budget: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        self._since: float | None = None
        self._lock = threading.Lock()

    @contextmanager
    def step(self) -> Iterator[None]:
        with self._lock:
            self._since = self._clock()
        try:
            yield
        finally:
            with self._lock:
                self._since = None

    def wedged(self) -> bool:
        """True while the current step has run longer than the budget."""
        with self._lock:
            since = self._since
        return since is not None and self._clock() - since > self.budget
