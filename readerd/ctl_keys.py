"""``readerctl keys``: the deployment pseudonym key (the bus's CURVE keys join it with the LAN bus).

``init-deployment`` makes the one key every kiosk of a deployment shares (DESIGN decision 10): it is
created once, on one machine, and copied; so it never overwrites an existing file, and it prints only the
fingerprint, which operators compare across kiosks (``readerctl keys fingerprint`` on each).
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import sys
from pathlib import Path
from typing import Any

from protocols.mykey import key_fingerprint
from readerd.config import IdentityConfig
from readerd.errors import ConfigError
from readerd.exitcodes import ExitCode
from readerd.keys import create_pseudonym_key, load_pseudonym_key

#: The group the daemon runs as (systemd/): the key is 0640 root:readerd where that group exists.
DAEMON_GROUP = "readerd"


def add_keys_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action is private
    keys = sub.add_parser("keys", help="the deployment pseudonym key")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    default = IdentityConfig().pseudonym_key_file
    init = actions.add_parser("init-deployment", help="create the key all kiosks of a deployment share")
    init.add_argument(
        "--out", type=Path, default=Path(default), help=f"where to write it (default {default})"
    )
    show = actions.add_parser("fingerprint", help="the fingerprint of a key file (compare across kiosks)")
    show.add_argument("path", nargs="?", type=Path, default=Path(default))


def _restrict(path: Path) -> str:
    """0640 with group readerd when that group exists (the daemon reads it), else 0600."""
    try:
        gid = grp.getgrnam(DAEMON_GROUP).gr_gid
    except KeyError:
        os.chmod(path, 0o600)
        return "0600"
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        os.chmod(path, 0o600)
        return "0600"
    os.chmod(path, 0o640)
    return f"0640 group {DAEMON_GROUP}"


def run_keys(args: argparse.Namespace) -> int:
    try:
        if args.keys_command == "init-deployment":
            out: Path = args.out
            if out.exists():
                raise ConfigError(f"{out} exists: a deployment key is never overwritten (remove it first)")
            out.parent.mkdir(parents=True, exist_ok=True)
            key = create_pseudonym_key(out)
            result = {"path": str(out), "fingerprint": key_fingerprint(key), "mode": _restrict(out)}
        else:
            key = load_pseudonym_key(args.path)
            result = {"path": str(args.path), "fingerprint": key_fingerprint(key)}
    except (ConfigError, OSError) as e:
        sys.stderr.write(f"readerctl keys: {e}\n")
        return ExitCode.CONFIG
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write("".join(f"{k}: {v}\n" for k, v in result.items()))
    return ExitCode.OK
