"""``readerctl``: talk to a running daemon (status, simulated taps, plugins, keys, doctor)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from readerd import __version__
from readerd.exitcodes import ExitCode

# Subcommands arrive with the issues that build them; each is listed so --help shows the plan honestly.
PLANNED = {
    "status": "readers, cards and bus state of a running daemon (daemon issue)",
    "tap": "insert or remove a simulated card in a daemon run with --simulate (daemon issue)",
    "plugins": "list plugins with versions and hooks (plugin framework issue)",
    "keys": "bus CURVE keys and the deployment pseudonym key (LAN bus issue)",
    "doctor": "check pcscd, readers, permissions, config and store, with a fix for each (deployment issue)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="readerctl", description="Control a running readerd.")
    parser.add_argument("--version", action="version", version=f"readerctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in PLANNED.items():
        sub.add_parser(name, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    sys.stderr.write(f"readerctl {args.command}: not available in this version yet\n")
    return ExitCode.UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
