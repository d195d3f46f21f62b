"""Every coverage-guided harness (tests/fuzz/atheris/) runs for 2 s through ``scripts/fuzz``: each must
start, execute inputs (> 0) and find nothing.

Cost: 8 harnesses x (2 s of fuzzing + about 1 s of start-up), two subprocesses at a time, so about 14 s
of wall time on 2 cores (at most 30 s). New corpus entries go to a temporary directory, never into the
checked-in seeds. Without atheris (a machine without the [dev] extra) the test skips, and fails under
``CI=true``, like the chromium tests (tests/support/chromium.py).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.chromium import missing

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fuzz"
HARNESSES = sorted(
    p.stem for p in (ROOT / "tests" / "fuzz" / "atheris").glob("*.py") if not p.stem.startswith("_")
)
LINE = re.compile(r"^(\S+)\s+executions=(\d+)\s+exec/s=(\d+)\s+new=(\d+)\s+findings=(\d+)$", re.MULTILINE)


def _fuzz(name: str, corpus_out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "2", "--harness", name, "--corpus-out", str(corpus_out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_there_are_at_least_eight_harnesses() -> None:
    assert len(HARNESSES) >= 8, HARNESSES


def test_every_harness_runs_and_finds_nothing(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        missing("atheris is not installed (the [dev] extra)")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(HARNESSES, pool.map(lambda n: _fuzz(n, tmp_path), HARNESSES), strict=True))
    problems = []
    for name, proc in runs.items():
        found = {m.group(1): m for m in LINE.finditer(proc.stdout)}
        line = found.get(name)
        if proc.returncode != 0 or line is None or int(line.group(2)) == 0 or int(line.group(5)) != 0:
            problems.append(f"{name}: exit {proc.returncode}\n{proc.stdout}{proc.stderr[-3000:]}")
    assert not problems, "\n\n".join(problems)
