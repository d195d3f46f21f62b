"""Replay a harness's corpus under coverage.py and print how much of its target modules it reaches.

    python -m tests.fuzz.atheris._replay NAME DIR [DIR ...]

libFuzzer's own feedback counts edges of everything instrumented, which says nothing a reader can
check; this says "the corpus runs 71.3 % of the lines and branches of ``protocols/sip2.py``". It runs in
a process of its own, without atheris instrumentation (``_common.instrument`` is swapped for a no-op
before the harness is imported), measuring from before the harness imports the code under test, so
that module-level lines count too. Each file of each directory goes once through the harness's
``TestOneInput``; the percentage is coverage.py's total over the modules named in the harness's
``TARGETS`` (statements and branches together, as ``coverage report`` with ``branch = true`` gives).

Output, one line: ``coverage=71.3% files=N``; an input the harness rejects is printed after it and the
exit status is 1 (scripts/fuzz then counts a finding).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import traceback
from pathlib import Path

import coverage

from tests.fuzz.atheris import _common

#: Measured from the start; the report is narrowed to the harness's TARGETS.
MEASURED = ["protocols", "readerd"]


def main(argv: list[str]) -> int:
    name, dirs = argv[0], [Path(d) for d in argv[1:]]
    _common.instrument = contextlib.nullcontext  # plain imports, for coverage.py to measure
    cov = coverage.Coverage(branch=True, data_file=None, source_pkgs=MEASURED)
    cov.set_option("run:disable_warnings", ["module-not-imported", "no-data-collected"])
    cov.start()
    try:
        harness = importlib.import_module(f"tests.fuzz.atheris.{name}")
        files = sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())
        failures: list[str] = []
        for path in files:
            try:
                harness.TestOneInput(path.read_bytes())
            except Exception:  # any exception out of a harness is a finding
                failures.append(f"{path}:\n{traceback.format_exc()}")
    finally:
        cov.stop()
    targets = [str(importlib.import_module(t).__file__) for t in harness.TARGETS]
    percent = cov.report(morfs=targets, file=io.StringIO())
    print(f"coverage={percent:.1f}% files={len(files)}")
    for failure in failures:
        print(f"replay finding: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
