"""bench/bus.py still runs and prints its table (no timing is asserted: the figures depend on the
machine; this only keeps the bench from rotting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bus_bench_prints_rates_and_latencies(tmp_path: Path) -> None:
    out = tmp_path / "bus.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.bus", "--quick", "--subscribers", "1", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| readerd | 1 | on |" in done.stdout
    assert "| raw | 1 | off |" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert {(r["kind"], r["curve"]) for r in rows} == {
        ("readerd", False),
        ("readerd", True),
        ("raw", False),
        ("raw", True),
    }
    assert all(r["events_per_s"] > 0 and r["lost"] == 0 for r in rows)
