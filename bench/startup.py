"""Time to READY and resident memory of ``readerd run`` with 1/8/32 simulated readers, beside a bare Python.

The daemon is started as systemd would (``NOTIFY_SOCKET`` set to a datagram socket of the bench's own):
the time is from spawning the process to its ``READY=1`` (state directory, key, stores, event log, bus,
plugin host, backends: everything ``readerd run --simulate`` does before it serves), the memory its
VmRSS at that moment. The baseline, measured in the same run: a bare ``python`` that imports the
libraries readerd is built on (pyzmq, SQLAlchemy, cryptography's X.509, structlog, pluggy, pyscard) and
says so on stdout: what any daemon on these libraries pays before doing anything.

Run: ``python -m bench.startup [--readers 1 8 32] [--runs 5] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASELINE_IMPORTS = "import zmq, sqlalchemy, structlog, pluggy, smartcard.scard, cryptography.x509"
BASELINE_CODE = (
    f"{BASELINE_IMPORTS}\n"
    "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS:')][0].split()[1]\n"
    "print(rss, flush=True)\n"
)
TIMEOUT = 60.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def daemon_once(work: Path, readers: int) -> tuple[float, int]:
    """Seconds from spawn to READY=1, and VmRSS (KiB) then."""
    work.mkdir(parents=True)
    names = ", ".join(f'"Sim {i:02d}"' for i in range(readers))
    (work / "readerd.toml").write_text(f"[sim]\nreaders = [{names}]\n", encoding="utf-8")
    notify_path = work / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(TIMEOUT)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    command = [
        sys.executable,
        "-m",
        "readerd.cli.main",
        "run",
        "--simulate",
        "--config",
        str(work / "readerd.toml"),
        "--state-dir",
        str(work / "state"),
        "--publish",
        "tcp://127.0.0.1:0",
        "--control",
        "tcp://127.0.0.1:0",
        "--log-level",
        "WARNING",
    ]
    began = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = began + TIMEOUT
        while True:
            message = sock.recv(4096).decode(errors="replace")
            if any(line == "READY=1" for line in message.splitlines()):
                ready = time.perf_counter() - began
                break
            if time.perf_counter() > deadline:
                raise TimeoutError("no READY=1")
        rss = rss_kib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        sock.close()
    return ready, rss


def baseline_once() -> tuple[float, int]:
    began = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-c", BASELINE_CODE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    if process.stdout is None:
        raise RuntimeError("no stdout pipe")
    line = process.stdout.readline()
    elapsed = time.perf_counter() - began
    process.wait(TIMEOUT)
    return elapsed, int(line)


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--readers", type=int, nargs="+", default=[1, 8, 32], help="simulated readers")
    parser.add_argument("--runs", type=int, default=5, help="starts of each kind")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="readerd-bench-startup-") as tmp:
        base = [baseline_once() for _ in range(args.runs)]
        base_s, base_kib = [b[0] for b in base], [float(b[1]) for b in base]
        rows.append(
            {"kind": "baseline", "readers": 0, "ready_ms": spread([s * 1e3 for s in base_s]),
             "rss_mib": spread([k / 1024 for k in base_kib])}
        )  # fmt: skip
        for n in args.readers:
            runs = [daemon_once(Path(tmp) / f"r{n}-{i}", n) for i in range(args.runs)]
            ready, kib = [r[0] for r in runs], [float(r[1]) for r in runs]
            rows.append(
                {
                    "kind": "readerd",
                    "readers": n,
                    "ready_ms": spread([s * 1e3 for s in ready]),
                    "rss_mib": spread([k / 1024 for k in kib]),
                    "ready_ratio": round(statistics.median(ready) / statistics.median(base_s), 2),
                    "rss_ratio": round(statistics.median(kib) / statistics.median(base_kib), 2),
                }
            )
            sys.stderr.write(f"readers={n}: {rows[-1]}\n")
    out = sys.stdout
    out.write(f"\nreaderd run --simulate: spawn to READY=1 and VmRSS at READY, {args.runs} starts each\n\n")
    out.write(
        "| process | sim readers | READY ms median (min-max) | RSS MiB median (min-max) | x baseline |\n"
    )
    out.write("|---|---:|---:|---:|---|\n")
    for row in rows:
        r, m = row["ready_ms"], row["rss_mib"]
        ratio = f"{row['ready_ratio']} time, {row['rss_ratio']} RSS" if row["kind"] == "readerd" else "-"
        label = "readerd" if row["kind"] == "readerd" else "bare python + libraries"
        out.write(
            f"| {label} | {row['readers']} | {r['median']} ({r['min']}-{r['max']}) "
            f"| {m['median']} ({m['min']}-{m['max']}) | {ratio} |\n"
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
