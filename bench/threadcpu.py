"""CPU time per thread of this process, to tell the daemon's CPU from the bench's own.

The benches run readerd in their own process (the GIL shared, as in ``readerd run``), so the process's
CPU time mixes readerd's threads with the bench's driver. Linux keeps every thread's CPU time in
``/proc/self/task/<tid>/schedstat`` (nanoseconds on the CPU; ``stat``'s utime + stime in clock ticks where
schedstat is missing). A thread that exits takes its counter with it, but its time stays in the
process's total (``time.process_time``); so the bench does not try to find readerd's threads (card
sessions and plugin hooks come and go per tap) but the few threads that are the bench's: it names them,
and everything else in the process is readerd's (:func:`daemon_cpu`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

TASKS: Final = Path("/proc/self/task")
_TICK_S: Final = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def thread_cpu_s(tid: int) -> float | None:
    """CPU seconds of one thread of this process so far; None once it has exited."""
    try:
        return int((TASKS / str(tid) / "schedstat").read_text().split()[0]) / 1e9
    except FileNotFoundError:
        pass
    except (OSError, ValueError, IndexError):  # no schedstat in this kernel: stat's ticks
        try:
            fields = (TASKS / str(tid) / "stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
    return None


def thread_names() -> dict[int, str]:
    """Native thread id -> name: Python's name for Python threads, the kernel's ``comm`` for the others
    (libzmq names its own ``ZMQbg/IO/0``, ``ZMQbg/Reaper``)."""
    names: dict[int, str] = {}
    for entry in TASKS.iterdir():
        try:
            names[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue  # exited meanwhile
    for thread in threading.enumerate():
        if thread.native_id is not None and thread.native_id in names:
            names[thread.native_id] = thread.name
    return names


def zmq_threads() -> set[int]:
    """The libzmq background threads of this process now (every context's)."""
    return {tid for tid, name in thread_names().items() if name.startswith("ZMQbg")}


def new_zmq_threads(before: set[int], expected: int = 2, timeout: float = 2.0) -> set[int]:
    """The libzmq threads started since ``before`` was taken (a new context's I/O thread and reaper).
    A new thread names itself once running, so this waits (up to ``timeout``) for ``expected`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        found = zmq_threads() - before
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.005)


@dataclass(frozen=True)
class Snapshot:
    process_s: float
    threads: dict[int, float]
    names: dict[int, str]


def snapshot() -> Snapshot:
    names = thread_names()
    threads = {tid: cpu for tid in names if (cpu := thread_cpu_s(tid)) is not None}
    return Snapshot(time.process_time(), threads, names)


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds between two snapshots: the whole process, the bench's threads, and the rest, which is
    readerd's; ``by_name`` groups readerd's surviving threads by name (``exited`` is what threads that
    ended within the interval used: per-call session and hook threads)."""

    process_s: float
    bench_s: float
    by_name: dict[str, float]
    exited_s: float

    @property
    def daemon_s(self) -> float:
        return self.process_s - self.bench_s


def _group(name: str) -> str:
    """``session:Sim 00`` and ``session:Sim 01`` are one kind of thread; so are ``Thread-12 (...)``s."""
    head = name.split(":", 1)[0]
    if head.startswith("Thread-"):
        return "Thread-N" + (name[name.find(" ") :] if " " in name else "")
    return head


def daemon_cpu(before: Snapshot, after: Snapshot, bench_threads: Iterable[int]) -> CpuSplit:
    """Split the CPU used between ``before`` and ``after``: the bench's threads (their native ids) apart,
    the rest readerd's."""
    bench = set(bench_threads)

    def used(tid: int) -> float:
        return after.threads[tid] - before.threads.get(tid, 0.0)

    bench_s = sum(used(tid) for tid in bench if tid in after.threads)
    by_name: dict[str, float] = {}
    surviving = 0.0
    for tid in after.threads:
        if tid in bench:
            continue
        cpu = used(tid)
        surviving += cpu
        group = _group(after.names.get(tid, str(tid)))
        by_name[group] = by_name.get(group, 0.0) + cpu
    process_s = after.process_s - before.process_s
    exited_s = max(0.0, process_s - bench_s - surviving)
    return CpuSplit(process_s, bench_s, by_name, exited_s)
