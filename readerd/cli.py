"""``readerd``: the daemon's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from readerd import __version__
from readerd import logging as rlog
from readerd.exitcodes import ExitCode

DEFAULT_CONFIG = Path("/etc/readerd/readerd.toml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readerd",
        description="Card reader daemon for municipal kiosks: My Number Card (JPKI) and FeliCa readers, "
        "card events on ZeroMQ, municipal plugins.",
    )
    parser.add_argument("--version", action="version", version=f"readerd {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING, ... or TRACE (APDU traces)"
    )
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground (systemd runs exactly this)")
    run.add_argument(
        "--simulate",
        action="store_true",
        help="simulated readers and cards, state in ./.readerd/, loopback endpoints: needs no services",
    )
    run.add_argument(
        "--config", type=Path, default=None, help=f"TOML configuration (default {DEFAULT_CONFIG})"
    )
    run.add_argument(
        "--taps",
        type=int,
        default=0,
        help="with --simulate: stop after this many simulated taps (0 = run until interrupted)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rlog.configure(args.log_level, args.log_format)
    log = rlog.get_logger("readerd")
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    if args.command == "run":
        if not args.simulate:
            log.error(
                "no reader backend configured",
                hint="use `readerd run --simulate` for simulated readers and cards",
            )
            return ExitCode.CONFIG
        # Imported late: production installs never load the simulator.
        from simulators.demo import run_demo  # noqa: PLC0415

        return run_demo(taps=args.taps, state_dir=Path(".readerd"))
    return ExitCode.USAGE  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
