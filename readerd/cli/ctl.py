"""``readerctl``: talk to a running daemon over its control and event endpoints.

Output is for people on a terminal (lines and tables, times in JST with ``+09:00``) and, with ``--json``
anywhere on the line, for scripts (one JSON object per line, times in UTC as on the wire). ``call`` and
``help`` reach every command the daemon answers, plugin commands included (readerd/cli/ctl_call.py).
Exit codes: 0 ok, 1 the daemon refused the request, 64 usage, 69 the daemon cannot be reached, 78 bad
configuration, 130 interrupted (Ctrl-C). docs/readerctl.md describes them.

Start-up stays light (``readerctl --version`` imports neither ZeroMQ nor the plugins): the modules a
subcommand needs are imported when it runs, and the plugins' subcommands are looked for only when the
subcommand is not one of readerctl's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from readerd import __version__
from readerd.cli.human import cell, duration, error_lines, jst, render
from readerd.exitcodes import ExitCode

if TYPE_CHECKING:
    import zmq

    from readerd.bus.client import CurveKeys
    from readerd.bus.control_client import ControlSession
    from readerd.plugin.api import CtlCommand

#: Interrupted by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED_EXIT = 130
#: Seconds ``tail`` waits for the event endpoint to accept its connection before it says none does.
TAIL_SILENCE_S = 3.0
#: readerctl's own subcommands: with one of them, the plugins' are not looked for.
BUILTIN_COMMANDS = frozenset(
    {"status", "readers", "tail", "tap", "plugins", "members", "remove"}
    | {"keys", "auth", "doctor", "call", "help"}
)
#: readerctl's options that take a value (to find the subcommand before parsing).
VALUE_OPTIONS = frozenset({"--config", "--control", "--publish", "--client-key", "--server-key"})


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _format_event(env: dict[str, Any]) -> str:
    data = env.get("data", {})
    details = " ".join(f"{k}={cell(v)}" for k, v in data.items())
    if env.get("type") == "plugin.error":  # plugin, hook, code, one line (an older daemon's: cut here)
        message = str(data.get("message") or "").split("[SQL:")[0].strip()
        message = message.splitlines()[0] if message else "-"
        quarantined = " (quarantined)" if data.get("quarantined") else ""
        details = f"{data.get('plugin')} {data.get('hook')}: {data.get('error')}: {message}{quarantined}"
    reader = env.get("reader") or "-"
    return f"{jst(str(env.get('ts', '')))} #{env.get('seq')} {env.get('type'):<18} {reader}  {details}"


def tail(
    endpoint: str,
    *,
    as_json: bool,
    count: int,
    heartbeats: bool,
    timeout: float,
    topics: list[str],
    curve: CurveKeys | None = None,
    silence: float = TAIL_SILENCE_S,
) -> int:
    """Print live events. When nothing accepts the connection within ``silence`` seconds it says so on
    stderr and keeps waiting (a daemon that is starting is picked up when it binds), and says when it
    connects; Ctrl-C ends it (exit 130)."""
    import zmq  # noqa: PLC0415 - readerctl's start-up stays light (module docstring)

    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
    sock.connect(endpoint)
    for prefix in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    started = time.monotonic()
    deadline = started + timeout if timeout > 0 else None
    connected = warned = False
    seen = 0
    try:
        while count <= 0 or seen < count:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return ExitCode.UNAVAILABLE if seen == 0 else ExitCode.OK
            if not connected and not warned and now - started >= silence:
                sys.stderr.write(
                    f"readerctl tail: no readerd answers at {endpoint} (nothing accepts the connection); "
                    "still waiting for it to start (Ctrl-C stops)\n"
                )
                sys.stderr.flush()
                warned = True
            wake = [1.0] if deadline is None else [max(0.0, deadline - now)]
            if not connected and not warned:
                wake.append(max(0.0, started + silence - now))
            ready = dict(poller.poll(int(min(wake) * 1000)))
            if monitor in ready and _connected(monitor) and not connected:
                connected = True
                if warned:
                    sys.stderr.write(f"readerctl tail: connected to {endpoint}\n")
                    sys.stderr.flush()
            if sock not in ready:
                continue
            topic, body = sock.recv_multipart()
            if topic == b"heartbeat" and not heartbeats:
                continue
            seen += 1
            _out(body.decode() if as_json else _format_event(json.loads(body)))
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()
    return ExitCode.OK


def _connected(monitor: zmq.Socket[bytes]) -> bool:
    """Whether the monitor's queued events include a connection (reads them all)."""
    import zmq  # noqa: PLC0415 - readerctl's start-up stays light
    from zmq.utils.monitor import recv_monitor_message  # noqa: PLC0415

    seen = False
    while monitor.poll(0, zmq.POLLIN):
        seen = recv_monitor_message(monitor)["event"] == zmq.EVENT_CONNECTED or seen
    return seen


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
    from readerd.bus.client import BusClient  # noqa: PLC0415 - readerctl's start-up stays light
    from readerd.bus.control_client import Unreachable, request  # noqa: PLC0415
    from readerd.errors import BusSilentError, GapUnrecoverableError  # noqa: PLC0415

    try:  # as plain tail does: say within TAIL_SILENCE_S when no daemon answers, then keep waiting
        request(control, "status", timeout_ms=int(TAIL_SILENCE_S * 1000), curve=curve)
    except Unreachable:
        sys.stderr.write(
            f"readerctl tail: no readerd answers at {control} within {TAIL_SILENCE_S:g} s; still waiting "
            "for it to start (Ctrl-C stops)\n"
        )
        sys.stderr.flush()
    deadline = time.monotonic() + timeout if timeout > 0 else None
    seen = 0
    with BusClient(publish, control, since=since, topics=topics, curve=curve) as client:
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
    return ExitCode.OK


def build_parser(plugin_commands: dict[str, CtlCommand] | None = None) -> argparse.ArgumentParser:
    """readerctl's parser; ``plugin_commands`` are the subcommands installed plugins contribute."""
    from readerd.cli.ctl_auth import add_auth_parser  # noqa: PLC0415 - readerctl's start-up stays light
    from readerd.cli.ctl_call import add_call_parsers  # noqa: PLC0415
    from readerd.cli.ctl_doctor import add_doctor_parser  # noqa: PLC0415
    from readerd.cli.ctl_keys import add_keys_parser  # noqa: PLC0415
    from readerd.config import DEFAULT_CONFIG  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="readerctl",
        description="Control a running readerd. `readerctl help` lists every command it answers.",
        epilog="--json may come anywhere on the line. Exit codes: 0 ok, 1 refused, 64 usage, 69 no daemon, "
        "78 bad configuration, 130 interrupted (Ctrl-C).",
    )
    parser.add_argument("--version", action="version", version=f"readerctl {__version__}")
    parser.add_argument(
        "--config", type=Path, help=f"read the endpoints from this file (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--control", help="control endpoint (default from the config, tcp://127.0.0.1:7411)")
    parser.add_argument("--publish", help="event endpoint (default from the config, tcp://127.0.0.1:7410)")
    parser.add_argument(
        "--json", action="store_true", help="machine-readable output (anywhere on the line; times in UTC)"
    )
    parser.add_argument(
        "--client-key", type=Path, help="this client's CURVE NAME.key_secret, for a daemon with bus.curve"
    )
    parser.add_argument(
        "--server-key", type=Path, help="the daemon's CURVE server.key (default <curve_dir>/server.key)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("status", help="the daemon's state: readers, bus counters, uptime")
    sub.add_parser("readers", help="the readers and what is on them")
    t = sub.add_parser(
        "tail",
        help="print live events (Ctrl-C stops)",
        description="Print live events. If no daemon accepts the connection within 3 s, say so on stderr "
        "and keep waiting (it may be starting); Ctrl-C stops (exit 130).",
    )
    t.add_argument("--count", type=int, default=0, help="exit after this many events")
    t.add_argument("--timeout", type=float, default=0, help="exit after this many seconds")
    t.add_argument("--heartbeats", action="store_true", help="show heartbeats too")
    t.add_argument(
        "--since", type=int, help="first every event after this seq (from the event log), then live, gap-free"
    )
    t.add_argument("topics", nargs="*", help="topic prefixes, e.g. card. reader.added")
    _add_tap_parser(sub)
    plugins = sub.add_parser(
        "plugins", help="the loaded plugins: versions, hooks, quarantine, what they receive"
    )
    plugins_sub = plugins.add_subparsers(dest="plugins_action", metavar="ACTION")
    reinstate = plugins_sub.add_parser(
        "reinstate", help="bring a quarantined plugin back now (operator role; a new store handle)"
    )
    reinstate.add_argument("name", help="the plugin's name")
    members = sub.add_parser("members", help="the ward's member directory")
    members_sub = members.add_subparsers(dest="members_action", metavar="ACTION", required=True)
    import_members = members_sub.add_parser(
        "import",
        help="move this kiosk's own member directory into the ward's (operator role; only one made under "
        "the ward's deployment key)",
    )
    import_members.add_argument(
        "--dry-run", action="store_true", help="report what would be imported and the conflicts only"
    )
    rm = sub.add_parser("remove", help="take the simulated card off a reader")
    rm.add_argument("--reader", help="reader name (default: the first simulated reader)")
    add_keys_parser(sub)
    add_auth_parser(sub)
    add_doctor_parser(sub)
    add_call_parsers(sub)
    for name, command in (plugin_commands or {}).items():
        plugin_parser = sub.add_parser(name, help=command.help)
        command.configure(plugin_parser)
        plugin_parser.set_defaults(plugin_command=command)
    return parser


def _add_tap_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action is private
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


def _endpoints(args: argparse.Namespace) -> tuple[str, str]:
    """(control, publish): the control endpoint as :func:`readerd.bus.roles.control_endpoint` finds it."""
    from readerd.bus.roles import control_endpoint  # noqa: PLC0415 - readerctl's start-up stays light
    from readerd.config import Config, config_path, load_config  # noqa: PLC0415

    path = config_path(args.config)
    config = load_config(path) if path else Config()
    control = control_endpoint(args.control, curve=args.client_key is not None, configured=config.bus.control)
    return control, args.publish or config.bus.publish


def _curve_keys(args: argparse.Namespace) -> CurveKeys | None:
    """CURVE for readerctl's own sockets when ``--client-key`` is given (docs/clients.md)."""
    if args.client_key is None:
        return None
    from readerd.bus.client import CurveKeys  # noqa: PLC0415 - loads zmq
    from readerd.config import Config, config_path, load_config  # noqa: PLC0415

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
    from readerd.config import PluginsConfig, config_path, load_config  # noqa: PLC0415 - start-up
    from readerd.errors import ConfigError  # noqa: PLC0415
    from readerd.plugin.discovery import discover  # noqa: PLC0415 - loads the plugins and SQLAlchemy

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


def _refused(error: object, *, as_json: bool) -> int:
    """A refusal: ``error (code): message`` and the next step on stderr (``--json``: the error object
    on stdout); never the request id or the whole reply."""
    body = error if isinstance(error, dict) else {}
    if as_json:
        _out(json.dumps({"ok": False, "error": body}, ensure_ascii=False))
    else:
        for line in error_lines(body):
            sys.stderr.write(line + "\n")
    return 1


def _run_plugin_command(args: argparse.Namespace, command: CtlCommand) -> int:
    from readerd.bus.control import result_of  # noqa: PLC0415 - readerctl's start-up stays light
    from readerd.bus.control_client import request  # noqa: PLC0415
    from readerd.errors import Refusal  # noqa: PLC0415

    control, _ = _endpoints(args)

    def call(cmd: str, cmd_args: dict[str, Any]) -> dict[str, Any]:
        reply = request(control, cmd, cmd_args, curve=_curve_keys(args))
        return result_of(reply)

    try:
        return command.run(args, call)
    except Refusal as e:
        return _refused({"code": e.code, "message": str(e), "details": e.details()}, as_json=args.json)


def _request_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The control command a subcommand sends, and its arguments."""
    if args.command == "tap":
        return "tap", _tap_args(args)
    if args.command == "plugins" and args.plugins_action == "reinstate":
        return "plugins.reinstate", {"name": args.name}
    if args.command == "members":
        return "members.import", {"dry_run": args.dry_run}
    return args.command, {}


def _local_command(args: argparse.Namespace) -> int | None:
    """Subcommands that need no daemon (their exit code), or None for those that talk to it."""
    if args.command == "help" and args.name == "config":  # the configuration's keys: no daemon asked
        from readerd.cli.ctl_config_help import run_config_help  # noqa: PLC0415

        return run_config_help(args.config, as_json=args.json)
    if args.command == "keys":
        from readerd.cli.ctl_keys import run_keys  # noqa: PLC0415 - readerctl's start-up stays light

        return run_keys(args)
    if args.command == "doctor":
        from readerd.cli.ctl_doctor import run_doctor_command  # noqa: PLC0415
        from readerd.config import DEFAULT_CONFIG  # noqa: PLC0415

        return run_doctor_command(args, args.config or DEFAULT_CONFIG)
    return None


def _subcommand_of(argv: Sequence[str]) -> str | None:
    """The first word that is not an option of readerctl's own (or its value): the subcommand."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word == "--":
            return None
        elif word in VALUE_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def _strip_json(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``--json`` anywhere on the line (before ``--``): taken out, and readerctl's flag set."""
    out: list[str] = []
    found = False
    for i, word in enumerate(argv):
        if word == "--":
            return [*out, *argv[i:]], found
        if word == "--json" and (not out or out[-1] not in VALUE_OPTIONS):
            found = True
        else:
            out.append(word)
    return out, found


def _version_asked(argv: Sequence[str]) -> bool:
    sub = _subcommand_of(argv)
    before = argv if sub is None else argv[: list(argv).index(sub)]
    return "--version" in before


def _interrupted() -> int:
    """Ctrl-C anywhere: one line, no traceback, 130 (a PIN prompt leaves its line open: end it first)."""
    lead = "\n" if sys.stderr.isatty() else ""
    sys.stderr.write(f"{lead}readerctl: interrupted\n")
    sys.stderr.flush()
    return INTERRUPTED_EXIT


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return _interrupted()


def _main(argv: list[str]) -> int:
    if _version_asked(argv):  # before any import a subcommand needs (measured: docs/readerctl.md)
        _out(f"readerctl {__version__}")
        return ExitCode.OK
    argv, as_json = _strip_json(argv)
    subcommand = _subcommand_of(argv)
    plugin_commands = {} if subcommand in BUILTIN_COMMANDS else _plugin_commands(argv)
    parser = build_parser(plugin_commands)
    args = parser.parse_args(argv)
    args.json = as_json or bool(getattr(args, "json", False))
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    local = _local_command(args)
    if local is not None:
        return local
    from readerd.bus.control_client import ControlSession, Unreachable  # noqa: PLC0415 - loads zmq
    from readerd.errors import ConfigError  # noqa: PLC0415

    try:
        return _talk(args, ControlSession)
    except (ConfigError, OSError, ValueError) as e:
        sys.stderr.write(f"readerctl: {e}\n")
        return ExitCode.CONFIG
    except Unreachable as e:
        sys.stderr.write(f"readerctl: {e}\n")
        return ExitCode.UNAVAILABLE


def _talk(args: argparse.Namespace, session_type: type[ControlSession]) -> int:
    """The subcommands that talk to the daemon."""
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
    with session_type(control, curve=curve) as session:
        if args.command == "auth":
            from readerd.cli.ctl_auth import run_auth  # noqa: PLC0415 - readerctl's start-up stays light

            return run_auth(args, session)
        if args.command in ("call", "help"):
            from readerd.cli.ctl_call import run_call, run_help  # noqa: PLC0415

            return run_call(args, session) if args.command == "call" else run_help(args, session)
        if args.command == "remove":
            return _remove(args, session)
        command, cmd_args = _request_of(args)
        reply = session.request(command, cmd_args)
    if not reply.get("ok"):
        return _refused(reply.get("error"), as_json=args.json)
    if args.json:
        _out(json.dumps(reply.get("result"), ensure_ascii=False))
    else:
        _print_result(command, reply["result"])
    return ExitCode.OK


def _remove(args: argparse.Namespace, session: ControlSession) -> int:
    """``remove``: the simulator answers once the card is off, with whether one was there."""
    reply = session.request("remove", {"reader": args.reader} if args.reader else {})
    if not reply.get("ok"):
        return _refused(reply.get("error"), as_json=args.json)
    result: dict[str, Any] = reply["result"]
    if args.json:
        _out(json.dumps(result, ensure_ascii=False))
    elif not result.get("had_card"):
        _out(f"no card on {result.get('reader')}: nothing to remove")
    else:
        _out(
            f"{result.get('reader')}: {result.get('card')} card taken off (readerctl tail shows card.removed)"
        )
    return ExitCode.OK


#: What `readerctl status` shows of the daemon's status (--json shows all of it).
STATUS_KEYS = ("kiosk", "run_id", "last_seq", "uptime_s", "published", "dropped", "subscribers", "healthy")


def _print_import(result: dict[str, Any]) -> None:
    """``readerctl members import``: the counts, then one line per conflict with what the ward has."""
    would = "would be imported" if result.get("dry_run") else "imported"
    _out(
        f"members in this kiosk's directory: {result.get('members', 0)}; {would}: "
        f"{result.get('imported', 0)}; already in the ward's: {result.get('present', 0)}; "
        f"conflicts: {len(result.get('conflicts', []))}"
    )
    for conflict in result.get("conflicts", []):
        why = {
            "card_enrolled_as": f"the ward knows this card as {conflict.get('ward_member_id')}",
            "member_id_taken": "the ward gave this member ID to another card",
            "mykey_id_taken": "the ward has this MyKey ID under another member",
        }.get(str(conflict.get("reason")), str(conflict.get("reason")))
        _out(f"  {conflict.get('member_id')}: {why} (left as the ward has it)")
    if result.get("note"):
        _out(str(result["note"]))


def _print_status(result: dict[str, Any]) -> None:
    for key in STATUS_KEYS:
        value = result.get(key)
        if key == "dropped":
            if value:  # only when some were
                _out(f"{key:>11}: " + ", ".join(f"{n} {why}" for why, n in sorted(dict(value).items())))
            continue
        if key == "uptime_s":
            _out(f"{'uptime':>11}: {duration(float(value or 0))}")
            continue
        _out(f"{key:>11}: {render({key: value})[0].split(': ', 1)[1]}")
    directory = result.get("directory")
    if isinstance(directory, dict):
        state = "OFFLINE (taps answered from the cache)" if directory.get("offline") else "reachable"
        counts = ", ".join(f"{k} {directory.get(k, 0)}" for k in ("asked", "cached", "offline"))
        _out(f"{'directory':>11}: the ward's, {state}; lookups: {counts}")
    quarantined = result.get("plugins_quarantined")
    if quarantined:
        names = ", ".join(quarantined) if isinstance(quarantined, list) else cell(quarantined)
        _out(f"{'quarantined':>11}: {names} (readerctl plugins)")


def _print_tap(result: dict[str, Any]) -> None:
    _out(f"{result.get('card')} on {result.get('reader')}: tapped (readerctl tail shows the read)")


def _print_readers(result: dict[str, Any]) -> None:
    for reader in result.get("readers", []):
        _out(f"  {reader.get('name')} [{reader.get('backend')}] card={reader.get('card') or '-'}")


def _print_reinstate(result: dict[str, Any]) -> None:
    done = "reinstated" if result.get("reinstated") else "not reinstated"
    state = f"quarantined ({result['quarantined']})" if result.get("quarantined") else "ok"
    _out(f"{result.get('plugin')}: {done}, {state}")


def _print_plugins(result: dict[str, Any]) -> None:
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


def _print_status_and_readers(result: dict[str, Any]) -> None:
    _print_status(result)
    _print_readers(result)


_PRINTERS = {
    "readers": _print_readers,
    "status": _print_status_and_readers,
    "members.import": _print_import,
    "tap": _print_tap,
    "plugins.reinstate": _print_reinstate,
    "plugins": _print_plugins,
}


def _print_result(command: str, result: dict[str, Any]) -> None:
    printer = _PRINTERS.get(command)
    if printer is not None:
        printer(result)
        return
    for line in render(result):
        _out(line)


if __name__ == "__main__":
    sys.exit(main())
