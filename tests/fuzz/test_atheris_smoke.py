"""Every coverage-guided harness (tests/fuzz/atheris/) runs for 2 s through ``scripts/fuzz``: each must
start, execute inputs (> 0), report the coverage its corpus replay reached, and find nothing.

One ``scripts/fuzz --seconds 2 --jobs 2`` for all of them: 9 harnesses x (2 s of fuzzing + about 1 s of
start-up + a replay of well under 1 s), two at a time, so about 17 s of wall time on 2 cores. New corpus
entries go to a temporary directory, never into the checked-in seeds. Without atheris (a machine without
the [dev] extra) the test skips, and fails under ``CI=true``, like the chromium tests
(tests/support/chromium.py).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from tests.support.chromium import missing

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fuzz"
HARNESSES = sorted(
    p.stem for p in (ROOT / "tests" / "fuzz" / "atheris").glob("*.py") if not p.stem.startswith("_")
)
LINE = re.compile(
    r"^(\S+)\s+executions=(\d+)\s+exec/s=(\d+)\s+coverage=(\d+\.\d)%\s+new=(\d+)\s+findings=(\d+)$",
    re.MULTILINE,
)


def test_there_are_at_least_eight_harnesses() -> None:
    assert len(HARNESSES) >= 8, HARNESSES


def test_every_harness_runs_reports_coverage_and_finds_nothing(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        missing("atheris is not installed (the [dev] extra)")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "2", "--jobs", "2", "--corpus-out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = f"exit {proc.returncode}\n{proc.stdout}{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    lines = {m.group(1): m for m in LINE.finditer(proc.stdout)}
    assert sorted(lines) == HARNESSES, report
    for name, line in lines.items():
        assert int(line.group(2)) > 0, f"{name} executed nothing\n{report}"
        assert 0.0 < float(line.group(4)) <= 100.0, f"{name} reached no coverage\n{report}"
        assert int(line.group(6)) == 0, f"{name} found something\n{report}"
