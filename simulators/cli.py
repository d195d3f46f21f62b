"""``readerd-sim``: simulated cards for development and tests, without hardware."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from readerd import logging as rlog
from simulators.demo import run_demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readerd-sim",
        description="Simulated My Number and FeliCa cards, in-process or behind the real reader stacks.",
    )
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="tap simulated cards on an in-process reader and log the events")
    demo.add_argument("--taps", type=int, default=0, help="stop after this many taps (0: until Ctrl-C)")
    demo.add_argument("--state-dir", type=Path, default=Path(".readerd"))
    demo.add_argument("--interval", type=float, default=1.5, help="seconds between taps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rlog.configure(args.log_level)
    if args.command == "demo":
        return run_demo(taps=args.taps, state_dir=args.state_dir, interval=args.interval)
    parser.print_help()
    return 64


if __name__ == "__main__":
    sys.exit(main())
