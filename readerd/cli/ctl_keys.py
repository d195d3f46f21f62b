"""``readerctl keys``: the deployment pseudonym key and the LAN bus's CURVE keys.

``init-deployment`` makes the one key every kiosk of a deployment shares (docs/design.md D10): it is
created once, on one machine, and copied; so it never overwrites an existing file, and it prints only the
fingerprint, which operators compare across kiosks (``readerctl keys fingerprint`` on each).

CURVE (docs/clients.md): ``generate`` makes a client's key pair on the client's machine (the secret never
travels); ``allow`` puts its public key in the daemon's allowlist with a role (``subscribe``,
``control`` or ``operator``); ``revoke`` removes it, and the running daemon cuts its connections within
``bus.allowlist_poll``; ``list`` shows the daemon's public key (clients pin it) and the allowed keys.
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
from readerd.bus.curve import (
    ROLES,
    SERVER,
    Allowlist,
    allowlist_dir,
    check_public_key,
    generate,
    read_certificate,
)
from readerd.config import Config, IdentityConfig, config_path, load_config
from readerd.errors import ConfigError
from readerd.exitcodes import ExitCode
from readerd.ops.keys import create_pseudonym_key, load_pseudonym_key

#: The group the daemon runs as (systemd/): the key is 0640 root:readerd where that group exists.
DAEMON_GROUP = "readerd"


def add_keys_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action is private
    keys = sub.add_parser("keys", help="the deployment pseudonym key and the bus's CURVE keys")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    default = IdentityConfig().pseudonym_key_file
    init = actions.add_parser("init-deployment", help="create the key all kiosks of a deployment share")
    init.add_argument(
        "--out", type=Path, default=Path(default), help=f"where to write it (default {default})"
    )
    show = actions.add_parser("fingerprint", help="the fingerprint of a key file (compare across kiosks)")
    show.add_argument("path", nargs="?", type=Path, default=Path(default))
    gen = actions.add_parser("generate", help="a CURVE key pair for a bus client (run it on the client)")
    gen.add_argument("name", help="the key's name (letters, digits, . _ -)")
    gen.add_argument("--dir", type=Path, default=Path(), help="where to write NAME.key(_secret) (default .)")
    allow = actions.add_parser("allow", help="admit a client's CURVE public key to the bus")
    allow.add_argument("name", help="a name for the client (its allowlist file is NAME.key)")
    source = allow.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--key",
        help="the client's public key (40 characters of Z85; write --key=KEY, as a key may start with -)",
    )
    source.add_argument("--key-file", type=Path, help="the client's NAME.key certificate")
    allow.add_argument(
        "--role",
        choices=ROLES,
        default="subscribe",
        help="subscribe (default), control (commands too) or operator (staff commands too)",
    )
    revoke = actions.add_parser("revoke", help="remove a client's key; the daemon cuts its connections")
    revoke.add_argument("name")
    actions.add_parser("list", help="the daemon's CURVE public key and the allowed client keys")
    for action in (allow, revoke, actions.choices["list"]):
        action.add_argument("--curve-dir", type=Path, help="default: bus.curve_dir, or <state_dir>/curve")


def _curve_dir(args: argparse.Namespace) -> Path:
    if args.curve_dir is not None:
        return Path(args.curve_dir)
    path = config_path(args.config)
    config = load_config(path) if path else Config()
    return config.bus.curve_path(config.state_dir)


def _run_curve(args: argparse.Namespace) -> dict[str, Any]:
    command = args.keys_command
    if command == "generate":
        public_path, secret_path = generate(args.dir, args.name)
        keys, _ = read_certificate(public_path)
        return {"public_key": keys.public.decode(), "public": str(public_path), "secret": str(secret_path)}
    directory = _curve_dir(args)
    allowlist = Allowlist(allowlist_dir(directory))
    if command == "allow":
        public = check_public_key(args.key) if args.key else read_certificate(args.key_file)[0].public
        path = allowlist.allow(args.name, public, args.role)
        return {"allowed": args.name, "role": args.role, "public_key": public.decode(), "path": str(path)}
    if command == "revoke":
        return {"revoked": args.name, "path": str(allowlist.revoke(args.name))}
    server = directory / f"{SERVER}.key"
    return {
        "server_key": read_certificate(server)[0].public.decode() if server.exists() else None,
        "allowlist": str(allowlist.directory),
        "clients": [
            {"name": k.name, "role": k.role, "public_key": k.public.decode()}
            for k in sorted(allowlist.keys.values(), key=lambda k: k.name)
        ],
    }


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
            result: dict[str, Any] = {
                "path": str(out),
                "fingerprint": key_fingerprint(key),
                "mode": _restrict(out),
            }
        elif args.keys_command == "fingerprint":
            key = load_pseudonym_key(args.path)
            result = {"path": str(args.path), "fingerprint": key_fingerprint(key)}
        else:
            result = _run_curve(args)
    except (ConfigError, OSError) as e:
        sys.stderr.write(f"readerctl keys: {e}\n")
        return ExitCode.CONFIG
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    elif args.keys_command == "list":
        sys.stdout.write(f"server key: {result['server_key'] or '(not created yet: the daemon makes it)'}\n")
        sys.stdout.write(f"allowlist: {result['allowlist']}\n")
        for client in result["clients"]:
            sys.stdout.write(f"  {client['name']:<24} {client['role']:<10} {client['public_key']}\n")
    else:
        sys.stdout.write("".join(f"{k}: {v}\n" for k, v in result.items()))
    return ExitCode.OK
