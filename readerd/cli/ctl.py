"""``readerctl``: talk to a running daemon over its control and event endpoints.

Output is for people on a terminal and, with ``--json``, for scripts (one JSON object per line).
Exit codes: 0 ok, 1 the daemon refused the request, 69 the daemon cannot be reached, 64 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from readerd import __version__
from readerd.bus.client import BusClient, CurveKeys
from readerd.bus.control import result_of
from readerd.bus.control_client import ControlSession, Unreachable, request
from readerd.bus.roles import control_endpoint
from readerd.cli.ctl_auth import add_auth_parser, run_auth
from readerd.cli.ctl_doctor import add_doctor_parser, run_doctor_command
from readerd.cli.ctl_keys import add_keys_parser, run_keys
from readerd.config import DEFAULT_CONFIG, Config, PluginsConfig, config_path, load_config
from readerd.errors import BusSilentError, ConfigError, GapUnrecoverableError, Refusal
from readerd.exitcodes import ExitCode
from readerd.plugin.api import CtlCommand
from readerd.plugin.discovery import discover


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _format_event(env: dict[str, Any]) -> str:
    data = env.get("data", {})
    details = " ".join(f"{k}={v}" for k, v in data.items())
    reader = env.get("reader") or "-"
    return f"{env.get('ts', '')} #{env.get('seq')} {env.get('type'):<18} {reader}  {details}"


def tail(
    endpoint: str,
    *,
    as_json: bool,
    count: int,
    heartbeats: bool,
    timeout: float,
    topics: list[str],
    curve: CurveKeys | None = None,
) -> int:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    sock.connect(endpoint)
    for prefix in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    deadline = time.monotonic() + timeout if timeout > 0 else None
    seen = 0
    try:
        while count <= 0 or seen < count:
            wait_ms = 1000 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if deadline is not None and wait_ms == 0:
                return ExitCode.UNAVAILABLE if seen == 0 else ExitCode.OK
            if not sock.poll(wait_ms, zmq.POLLIN):
                continue
            topic, body = sock.recv_multipart()
            if topic == b"heartbeat" and not heartbeats:
                continue
            seen += 1
            _out(body.decode() if as_json else _format_event(json.loads(body)))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return ExitCode.OK


def tail_since(
    publish: str,
    control: str,
    since: int,
    *,
    as_json: bool,
    count: int,
    timeout: float,
    topics: list[str],
    curve: CurveKeys | None = None,
) -> int:
    """``tail --since N``: every event after seq N (the daemon's event log), then the live ones, with no
    gap and no duplicate (readerd.bus.client): what an operator wants after a screen missed something."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    seen = 0
    with BusClient(publish, control, since=since, topics=topics, curve=curve) as client:
        try:
            while count <= 0 or seen < count:
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return ExitCode.UNAVAILABLE if seen == 0 else ExitCode.OK
                try:
                    env = client.next(timeout=min(1.0, remaining))
                except TimeoutError:
                    continue
                except (GapUnrecoverableError, BusSilentError) as e:
                    sys.stderr.write(f"readerctl tail: {e}\n")
                    continue
                seen += 1
                _out(json.dumps(env, ensure_ascii=False) if as_json else _format_event(env))
        except KeyboardInterrupt:
            pass
    return ExitCode.OK


def build_parser(plugin_commands: dict[str, CtlCommand] | None = None) -> argparse.ArgumentParser:
    """readerctl's parser; ``plugin_commands`` are the subcommands installed plugins contribute."""
    parser = argparse.ArgumentParser(prog="readerctl", description="Control a running readerd.")
    parser.add_argument("--version", action="version", version=f"readerctl {__version__}")
    parser.add_argument(
        "--config", type=Path, help=f"read the endpoints from this file (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--control", help="control endpoint (default from the config, tcp://127.0.0.1:7411)")
    parser.add_argument("--publish", help="event endpoint (default from the config, tcp://127.0.0.1:7410)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--client-key", type=Path, help="this client's CURVE NAME.key_secret, for a daemon with bus.curve"
    )
    parser.add_argument(
        "--server-key", type=Path, help="the daemon's CURVE server.key (default <curve_dir>/server.key)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("status", help="the daemon's state: readers, bus counters, uptime")
    sub.add_parser("readers", help="the readers and what is on them")
    t = sub.add_parser("tail", help="print live events (Ctrl-C stops)")
    t.add_argument("--count", type=int, default=0, help="exit after this many events")
    t.add_argument("--timeout", type=float, default=0, help="exit after this many seconds")
    t.add_argument("--heartbeats", action="store_true", help="show heartbeats too")
    t.add_argument(
        "--since", type=int, help="first every event after this seq (from the event log), then live, gap-free"
    )
    t.add_argument("topics", nargs="*", help="topic prefixes, e.g. card. reader.added")
    tap = sub.add_parser("tap", help="put a simulated card on a reader (daemon started with --simulate)")
    tap.add_argument("card", nargs="?", default="alice", help="card profile name (default alice)")
    tap.add_argument("--reader", help="reader name (default: the first simulated reader)")
    tap.add_argument("--tries", type=int, help="user-auth PIN tries left on this card")
    tap.add_argument("--no-extended", action="store_true", help="the card refuses extended length")
    tap.add_argument("--expired", action="store_true", help="the card's certificate has expired")
    tap.add_argument(
        "--revoked", action="store_true", help="the simulator's CRL lists the card's certificate"
    )
    tap.add_argument("--pin", help="the simulated card's user-auth PIN (default 1234)")
    tap.add_argument(
        "--cloned-from",
        metavar="OTHER",
        help="the card carries OTHER's certificate with its own key (a copied certificate)",
    )
    tap.add_argument("--blank", action="store_true", help="a card without the JPKI application")
    tap.add_argument(
        "--felica",
        choices=("bathhouse", "checkin", "transport"),
        help="a FeliCa card of this kind instead; CARD is then its member/unique number (0-9, A-Z)",
    )
    tap.add_argument("--faults", type=Path, help="a fault script (JSON) for this card")
    tap.add_argument("--release", action="store_true", help="take the card away right after the read")
    plugins = sub.add_parser(
        "plugins", help="the loaded plugins: versions, hooks, quarantine, what they receive"
    )
    plugins_sub = plugins.add_subparsers(dest="plugins_action", metavar="ACTION")
    reinstate = plugins_sub.add_parser(
        "reinstate", help="bring a quarantined plugin back now (operator role; a new store handle)"
    )
    reinstate.add_argument("name", help="the plugin's name")
    rm = sub.add_parser("remove", help="take the simulated card off a reader")
    rm.add_argument("--reader", help="reader name (default: the first simulated reader)")
    add_keys_parser(sub)
    add_auth_parser(sub)
    add_doctor_parser(sub)
    for name, command in (plugin_commands or {}).items():
        plugin_parser = sub.add_parser(name, help=command.help)
        command.configure(plugin_parser)
        plugin_parser.set_defaults(plugin_command=command)
    return parser


def _endpoints(args: argparse.Namespace) -> tuple[str, str]:
    """(control, publish): the control endpoint as :func:`readerd.bus.roles.control_endpoint` finds it."""
    path = config_path(args.config)
    config = load_config(path) if path else Config()
    control = control_endpoint(args.control, curve=args.client_key is not None, configured=config.bus.control)
    return control, args.publish or config.bus.publish


def _curve_keys(args: argparse.Namespace) -> CurveKeys | None:
    """CURVE for readerctl's own sockets when ``--client-key`` is given (docs/clients.md)."""
    if args.client_key is None:
        return None
    server = args.server_key
    if server is None:
        path = config_path(args.config)
        config = load_config(path) if path else Config()
        server = config.bus.curve_path(config.state_dir) / "server.key"
    return CurveKeys.from_files(server, args.client_key)


def _tap_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"card": args.card}
    if args.reader:
        out["reader"] = args.reader
    if args.tries is not None:
        out["tries"] = args.tries
    if args.no_extended:
        out["no_extended"] = True
    if args.expired:
        out["expired"] = True
    if args.revoked:
        out["revoked"] = True
    if args.pin:
        out["pin"] = args.pin
    if args.blank:
        out["blank"] = True
    if args.cloned_from:
        out["cloned_from"] = args.cloned_from
    if args.felica:
        out["felica"] = args.felica
    if args.release:
        out["hold"] = False
    if args.faults:
        out["faults"] = json.loads(args.faults.read_text(encoding="utf-8"))
    return out


def _plugin_commands(argv: Sequence[str] | None) -> dict[str, CtlCommand]:
    """Subcommands of the plugins the configuration (``--config`` or the default file) enables."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    path = config_path(known.config)
    try:
        plugins = load_config(path).plugins if path else PluginsConfig()
    except (ConfigError, OSError):
        plugins = PluginsConfig()  # the bad file is reported when the command reads it
    found = discover(plugins)
    reserved = set(_subcommands(build_parser()))
    commands = found.ctl_commands(reserved)
    for plugin, why in found.problems.items():
        sys.stderr.write(f"readerctl: plugin {plugin} left out: {why}\n")
    return commands


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _run_plugin_command(args: argparse.Namespace, command: CtlCommand) -> int:
    control, _ = _endpoints(args)

    def call(cmd: str, cmd_args: dict[str, Any]) -> dict[str, Any]:
        reply = request(control, cmd, cmd_args, curve=_curve_keys(args))
        return result_of(reply)

    try:
        return command.run(args, call)
    except Refusal as e:
        extra = f" {json.dumps(e.details(), ensure_ascii=False)}" if e.details() else ""
        sys.stderr.write(f"readerctl {command.name}: {e.code}: {e}{extra}\n")
        return 1


def _request_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The control command a subcommand sends, and its arguments."""
    if args.command == "tap":
        return "tap", _tap_args(args)
    if args.command == "remove" and args.reader:
        return "remove", {"reader": args.reader}
    if args.command == "plugins" and args.plugins_action == "reinstate":
        return "plugins.reinstate", {"name": args.name}
    return args.command, {}


def _local_command(args: argparse.Namespace) -> int | None:
    """Subcommands that need no daemon (their exit code), or None for those that talk to it."""
    if args.command == "keys":
        return run_keys(args)
    if args.command == "doctor":
        return run_doctor_command(args, args.config or DEFAULT_CONFIG)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_plugin_commands(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    local = _local_command(args)
    if local is not None:
        return local
    try:
        if getattr(args, "plugin_command", None) is not None:
            return _run_plugin_command(args, args.plugin_command)
        control, publish = _endpoints(args)
        curve = _curve_keys(args)
        if args.command == "tail" and args.since is not None:
            return tail_since(
                publish,
                control,
                args.since,
                as_json=args.json,
                count=args.count,
                timeout=args.timeout,
                topics=args.topics,
                curve=curve,
            )
        if args.command == "tail":
            return tail(
                publish,
                as_json=args.json,
                count=args.count,
                heartbeats=args.heartbeats,
                timeout=args.timeout,
                topics=args.topics,
                curve=curve,
            )
        if args.command == "auth":
            with ControlSession(control, curve=curve) as session:
                return run_auth(args, session)
        command, cmd_args = _request_of(args)
        reply = request(control, command, cmd_args, curve=curve)
    except (ConfigError, OSError, ValueError) as e:
        sys.stderr.write(f"readerctl: {e}\n")
        return ExitCode.CONFIG
    except Unreachable as e:
        sys.stderr.write(f"readerctl: {e}\n")
        return ExitCode.UNAVAILABLE
    if args.json or not reply.get("ok"):
        _out(json.dumps(reply.get("result") if reply.get("ok") else reply, ensure_ascii=False))
    else:
        _print_result(command, reply["result"])
    return ExitCode.OK if reply.get("ok") else 1


#: What `readerctl status` shows of the daemon's status (--json shows all of it).
STATUS_KEYS = ("kiosk", "run_id", "last_seq", "uptime_s", "published", "dropped", "subscribers", "healthy")


def _print_result(command: str, result: dict[str, Any]) -> None:
    if command == "readers" or (command == "status" and "readers" in result):
        if command == "status":
            for key in STATUS_KEYS:
                _out(f"{key:>11}: {result.get(key)}")
        for reader in result.get("readers", []):
            _out(f"  {reader.get('name')} [{reader.get('backend')}] card={reader.get('card') or '-'}")
        return
    if command == "plugins.reinstate":
        done = "reinstated" if result.get("reinstated") else "not reinstated"
        state = f"quarantined ({result['quarantined']})" if result.get("quarantined") else "ok"
        _out(f"{result.get('plugin')}: {done}, {state}")
        return
    if command == "plugins":
        for plugin in result.get("plugins", []):
            state = f"QUARANTINED ({plugin['quarantined']})" if plugin.get("quarantined") else "ok"
            _out(f"{plugin['name']} {plugin.get('version') or '-'} [{plugin['source']}] {state}")
            _out(f"    hooks: {', '.join(plugin.get('hooks', []))}")
            if plugin.get("private_fields"):
                _out(f"    private fields: {', '.join(plugin['private_fields'])}")
            if plugin.get("private_not_granted"):
                _out(f"    asked, not granted: {', '.join(plugin['private_not_granted'])}")
            if plugin.get("result_fields_dropped") or plugin.get("result_values_redacted"):
                dropped, redacted = plugin.get("result_fields_dropped"), plugin.get("result_values_redacted")
                _out(f"    results screened: {dropped} field(s) dropped, {redacted} value(s) redacted")
        for name, why in result.get("rejected", {}).items():
            _out(f"{name} NOT LOADED: {why}")
        return
    _out(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
