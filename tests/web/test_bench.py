"""``python -m bench.web_screen`` still runs and prints its figures (no timing asserted: the numbers
depend on the machine; docs/web.md gives the ones measured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.web, pytest.mark.timeout(60)]


def test_the_tap_to_screen_bench_runs(browser, tmp_path: Path) -> None:  # browser: chromium is there
    out = tmp_path / "web.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.web_screen", "--taps", "2", "--json", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "tap -> kiosk screen" in done.stdout
    result = json.loads(out.read_text())
    assert result["taps"] == 2
    assert result["p50_ms"] > 0
