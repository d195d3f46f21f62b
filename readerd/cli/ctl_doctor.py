"""``readerctl doctor``: run :mod:`readerd.cli.doctor`'s checks and print each with its fix.

Exit 0 when nothing is a problem (warnings and skipped checks allowed), 1 otherwise, so a monitoring job
or the installer can act on it; ``--json`` prints one object with every finding for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from readerd.exitcodes import ExitCode

if TYPE_CHECKING:  # the checks load the plugin face and SQLAlchemy: only when the doctor runs
    from readerd.cli.doctor import Finding

#: By :class:`readerd.plugin.api.CheckStatus` value (a StrEnum: its members are these strings).
MARKS = {"ok": "ok  ", "warning": "WARN", "problem": "FAIL", "skipped": "skip"}
#: Exit code when a check found a problem (readerctl's "the answer was no").
PROBLEM_EXIT = 1


def add_doctor_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action is private
    doctor = sub.add_parser(
        "doctor",
        help="check pcscd, readers, permissions, config, store, CRLs, clock; with a fix for each",
        description="Check this kiosk from outside the daemon (it need not run); changes nothing. "
        "Exit 1 when a check finds a problem. docs/kiosk.md explains every check.",
    )
    # SUPPRESS: without the flag here, readerctl's own --json (before the command) still counts.
    doctor.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object")
    doctor.add_argument("--no-plugins", action="store_true", help="skip the checks plugins contribute")
    doctor.add_argument(
        "--card-test",
        action="store_true",
        help="instead: guide one tap on the running daemon and print a report (readerd/cli/card_test.py)",
    )
    doctor.add_argument("--reader", help="--card-test: the reader to watch (default: any)")
    doctor.add_argument("--timeout", type=float, default=60.0, help="--card-test: seconds to wait (60)")


def _print(findings: list[Finding]) -> None:
    from readerd.plugin.api import CheckStatus  # noqa: PLC0415 - see the imports above

    for f in findings:
        sys.stdout.write(f"[{MARKS[f.status]}] {f.name}: {f.message}\n")
        if f.fix and f.status in (CheckStatus.PROBLEM, CheckStatus.WARNING):
            sys.stdout.write(f"       fix: {f.fix}\n")
    problems = sum(f.status is CheckStatus.PROBLEM for f in findings)
    sys.stdout.write(f"{problems} problem(s)\n" if problems else "no problems\n")
    sys.stdout.flush()


def run_doctor_command(args: argparse.Namespace, config_path: Path) -> int:
    if args.card_test:
        from readerd.cli.card_test import run_card_test_command  # noqa: PLC0415 - loads no check

        return run_card_test_command(args)
    from readerd import logging as rlog  # noqa: PLC0415 - see the imports above
    from readerd.cli.doctor import DoctorEnv, healthy, run_doctor  # noqa: PLC0415

    rlog.configure("WARNING", "console")  # library log lines go to stderr, never into the report
    env = DoctorEnv(config_path=config_path, load_plugins=not args.no_plugins)
    findings = run_doctor(env)
    if getattr(args, "json", False):
        body = {"ok": healthy(findings), "checks": [f.as_json() for f in findings]}
        sys.stdout.write(json.dumps(body, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        _print(findings)
    return ExitCode.OK if healthy(findings) else PROBLEM_EXIT
