"""``readerd``: the daemon's command line.

The flags of ``readerd run`` are a stable interface (kiosk scripts and the systemd unit use them); they
override the configuration file, and the daemon runs with no file at all.

``readerd migrate`` is the operator's schema step (docs/plugins.md, "Rolling upgrades"): it loads the
configured plugins through the same :class:`~readerd.plugin.host.PluginHost` as a daemon start, without
readers or bus, on a store opened with ``contract=True`` when ``--contract`` is given, so the plugins' own
``migrate`` calls apply what they declare; no plugin needs a hook of its own for it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from readerd import __version__
from readerd import logging as rlog
from readerd.config import BACKENDS, DEFAULT_CONFIG, Config, config_path, load_config, with_overrides
from readerd.errors import BusError, ConfigError, StoreBusyError, StoreUnavailableError
from readerd.exitcodes import ExitCode

if TYPE_CHECKING:
    from readerd.plugin.store import MigrationRun, RecordedSchema

SIMULATE_STATE_DIR = ".readerd"
#: How often a thread holding the GIL hands it over (``sys.setswitchinterval``) in ``readerd run``.
SWITCH_INTERVAL_S = 0.001
#: ``readerd migrate``: seconds one plugin's startup (its migrations) may take by default. A contract
#: migration may rewrite a large table; a daemon's 5 s ``hook_timeout`` would quarantine it half-way.
MIGRATE_TIMEOUT_S = 600.0
#: Seconds the hook timeout of ``readerd migrate`` leaves beyond the statement and connect timeouts.
MIGRATE_HOOK_MARGIN_S = 5.0
#: ``readerd migrate``: a plugin's migration failed or the plugin could not be loaded.
MIGRATE_FAILED_EXIT = 1
#: Interrupted by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED_EXIT = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="readerd",
        description="Card reader daemon for municipal kiosks: My Number Card (JPKI) and FeliCa readers, "
        "card events on ZeroMQ, municipal plugins.",
    )
    parser.add_argument("--version", action="version", version=f"readerd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the daemon in the foreground (systemd runs exactly this)",
        description="Run the daemon in the foreground. Flags override the configuration file; "
        f"without --config, {DEFAULT_CONFIG} is read if it exists.",
    )
    run.add_argument(
        "--simulate",
        action="store_true",
        help="simulated readers and cards, state in ./.readerd/, loopback endpoints: needs no services",
    )
    run.add_argument(
        "--config", type=Path, default=None, help=f"TOML configuration (default {DEFAULT_CONFIG})"
    )
    run.add_argument("--backend", action="append", choices=BACKENDS, help="reader backend (repeatable)")
    run.add_argument("--nfc-device", action="append", help="nfcpy device: usb[:BUS:DEV] or udp:HOST:PORT")
    run.add_argument("--publish", help="PUB endpoint for events (default tcp://127.0.0.1:7410)")
    run.add_argument("--control", help="ROUTER endpoint for control requests (default tcp://127.0.0.1:7411)")
    run.add_argument("--state-dir", help="state directory (default /var/lib/readerd)")
    run.add_argument("--kiosk", help="this kiosk's ID, carried by every event")
    run.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 5)")
    run.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ... or TRACE (APDU traces)")
    run.add_argument("--trace-plugins", action="store_true", help="log each plugin hook call, timed")
    run.add_argument("--no-plugins", action="store_true", help="run without the embedded plugin host")
    run.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="auto: JSON under systemd or in a pipe, readable on a terminal",
    )
    plugins = sub.add_parser(
        "plugins",
        help="run the plugin host as its own process (beside `readerd run` with plugins.enabled = false)",
        description="The plugin host apart from the daemon: it follows the daemon's private feed over ipc "
        "under plugins.runtime_dir, catching up on what it missed, and sends results back through it.",
    )
    plugins.add_argument(
        "--config", type=Path, default=None, help=f"TOML configuration (default {DEFAULT_CONFIG})"
    )
    plugins.add_argument("--state-dir", help="the daemon's state directory (default /var/lib/readerd)")
    plugins.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ...")
    plugins.add_argument("--trace-plugins", action="store_true", help="log each plugin hook call, timed")
    plugins.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    web = sub.add_parser(
        "web",
        help="the kiosk screen and operator console, a web page on the bus (docs/web.md)",
        description="A web server (loopback by default, web.listen) showing the daemon's events on "
        "/kiosk?reader=NAME and /console (web.console_token).",
    )
    web.add_argument(
        "--config", type=Path, default=None, help=f"TOML configuration (default {DEFAULT_CONFIG})"
    )
    web.add_argument("--listen", help="host:port (default 127.0.0.1:8470)")
    web.add_argument("--publish", help="the daemon's PUB endpoint (default: bus.publish)")
    web.add_argument("--control", help="the daemon's control endpoint (default: bus.control)")
    web.add_argument("--client-key", type=Path, help="this client's CURVE NAME.key_secret (bus.curve)")
    web.add_argument("--server-key", type=Path, help="the daemon's server.key (default: under curve_dir)")
    web.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ...")
    web.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    migrate = sub.add_parser(
        "migrate",
        help="apply the plugins' pending schema migrations and report the state (operator: needs the "
        "configuration and the database credentials)",
        description="Load the configured plugins as a daemon start does (no readers, no bus) so their "
        "startup applies pending expand migrations, then report every plugin's schema version. With "
        "--contract, also apply contract migrations (drops, renames): run it once every kiosk of the "
        "ward runs the new version, since older kiosks refuse a database that has them. Operator role: "
        "it needs the configuration, write access to the state directory's local store and the "
        "credentials of [store] shared_url. Exit 0 done, 1 a migration failed, 69 a database "
        "unavailable, 78 bad configuration.",
    )
    migrate.add_argument(
        "--contract",
        action="store_true",
        help="also apply contract migrations: only after every kiosk runs the new version",
    )
    migrate.add_argument(
        "--config", type=Path, default=None, help=f"TOML configuration (default {DEFAULT_CONFIG})"
    )
    migrate.add_argument("--state-dir", help="state directory of the local store (default /var/lib/readerd)")
    migrate.add_argument("--json", action="store_true", help="one JSON object on stdout, for scripts")
    migrate.add_argument(
        "--timeout",
        type=float,
        default=MIGRATE_TIMEOUT_S,
        help=f"seconds a plugin's migrations may take (default {MIGRATE_TIMEOUT_S:g})",
    )
    migrate.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ... (default WARNING)")
    migrate.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    return parser


def migrate_config_from_args(args: argparse.Namespace) -> Config:
    """The configuration with PostgreSQL's statement timeout raised to ``--timeout`` and the plugins'
    hook timeout above it and the connect timeout (as the configuration's check wants): migrations are
    the slow part, and a daemon's few seconds would quarantine a plugin in the middle of one."""
    if args.timeout <= 0:
        raise ConfigError("readerd migrate --timeout: a positive number of seconds")
    base = load_config(config_path(args.config))
    connect = max(math.ceil(base.store.connect_timeout), 2)  # PostgreSQL's whole seconds, at least 2
    overrides: dict[str, object] = {
        "state_dir": args.state_dir,
        "log_level": args.log_level,
        "plugins.hook_timeout": args.timeout + connect + MIGRATE_HOOK_MARGIN_S,
        "store.statement_timeout": args.timeout,
    }
    return with_overrides(base, overrides).validate()


def _run_migrate(args: argparse.Namespace) -> int:
    """``readerd migrate [--contract]``: the plugins' startup hooks on a store in the chosen mode, then
    the report. Ctrl-C stops it without a traceback; the migration transaction under way rolls back (its
    connection closes with the process: a migration is all or none)."""
    try:
        return _migrate(args)
    except KeyboardInterrupt:
        sys.stderr.write("readerd migrate: interrupted; a migration under way is rolled back\n")
        return INTERRUPTED_EXIT


def _migrate(args: argparse.Namespace) -> int:
    config = migrate_config_from_args(args)
    rlog.configure(args.log_level or "WARNING", args.log_format)
    from readerd.plugin.host import PluginHost  # noqa: PLC0415 - loads zmq and pluggy
    from readerd.plugin.store import Store  # noqa: PLC0415 - loads SQLAlchemy

    failures: list[dict[str, object]] = []

    def report(plugin: str, hook: str, code: str, message: str, quarantined: bool) -> None:
        failures.append({"plugin": plugin, "hook": hook, "error": code, "message": message})

    try:
        store = Store.open(config.store, Path(config.state_dir), contract=args.contract)
    except StoreUnavailableError as e:  # the local file: the same report as any failure, for scripts
        report("readerd", "migrate", e.code, str(e), False)
        return _migrate_output(args, [], [], failures)
    with store:
        # Results a plugin publishes from its startup have no bus here: dropped.
        host = PluginHost(
            config.plugins, kiosk=config.kiosk, publish=lambda _event: None, report=report, store=store
        )
        try:
            host.load()
        finally:
            host.stop()
        try:
            recorded = store.recorded_schemas()
        except (StoreUnavailableError, StoreBusyError) as e:
            recorded = []
            report("readerd", "migrate", e.code, str(e), False)
        runs = list(store.migration_runs)
    reached = {(run.plugin, run.role) for run in runs}
    not_reached = [schema for schema in recorded if (schema.plugin, schema.role) not in reached]
    return _migrate_output(args, runs, not_reached, failures)


def _migrate_output(
    args: argparse.Namespace,
    runs: Sequence[MigrationRun],
    not_reached: Sequence[RecordedSchema],
    failures: Sequence[dict[str, object]],
) -> int:
    """Print ``readerd migrate``'s report (``--json``: one object) and give its exit code."""
    unavailable = any(f["error"] in (StoreUnavailableError.code, StoreBusyError.code) for f in failures)
    code = ExitCode.UNAVAILABLE if unavailable else MIGRATE_FAILED_EXIT if failures else ExitCode.OK
    if args.json:
        body = {
            "ok": not failures,
            "contract": bool(args.contract),
            "runs": [run.as_json() for run in runs],
            "not_reached": [schema.as_json() for schema in not_reached],
            "failures": failures,
        }
        sys.stdout.write(json.dumps(body, ensure_ascii=False) + "\n")
    else:
        for line in migrate_report(runs, not_reached, failures, contract=args.contract):
            sys.stdout.write(line + "\n")
    return code


def migrate_report(
    runs: Sequence[MigrationRun],
    not_reached: Sequence[RecordedSchema],
    failures: Sequence[dict[str, object]],
    *,
    contract: bool,
) -> list[str]:
    """``readerd migrate``'s lines for people: one per migrate call, per schema no plugin migrated, per
    failure, and what to do next."""
    lines = [f"readerd migrate: {'expand and contract' if contract else 'expand'} migrations"]
    held = False
    for run in runs:
        where = f"{run.plugin} {run.role} ({run.database}): version {run.before}"
        where += f" -> {run.after}" if run.applied else ""
        where += f", this code knows {run.known}"
        if run.ahead:
            lines.append(
                f"{where}: the database is ahead by expand migrations, fine during a rolling upgrade"
            )
        elif run.applied:
            lines.append(f"{where}: applied {', '.join(f'v{v}' for v in run.applied)}")
        else:
            lines.append(f"{where}: up to date" if not run.held_back else f"{where}: nothing applied")
        if run.held_back:
            held = True
            version, name, _kind = run.held_back[0]
            lines.append(
                f"  held back: v{version} ({name}) is a contract migration"
                + (f", and {len(run.held_back) - 1} after it" if len(run.held_back) > 1 else "")
            )
    for schema in not_reached:
        lines.append(
            f"{schema.plugin} {schema.role} ({schema.database}): version {schema.version}, not migrated by "
            "this command (the plugin is not loaded here, or it migrates on first use, not at startup)"
        )
    for failure in failures:
        lines.append(
            f"error: {failure['plugin']} ({failure['hook']}): {failure['error']}: {failure['message']}"
        )
    if held:
        lines.append(
            "next: once every kiosk of the ward runs this version, `readerd migrate --contract` applies "
            "the held-back migrations"
        )
    return lines


def _run_web(args: argparse.Namespace) -> int:
    """``readerd web``: runs until SIGINT/SIGTERM."""
    from readerd.bus.client import CurveKeys  # noqa: PLC0415 - loads zmq
    from readerd.bus.roles import control_endpoint  # noqa: PLC0415
    from readerd.web import FleetKiosk, WebSettings, serve, with_web_config  # noqa: PLC0415 - loads starlette

    path = config_path(args.config)
    config = with_overrides(load_config(path), {"web.listen": args.listen}).validate()
    rlog.configure(args.log_level or config.log_level, args.log_format)
    curve = None
    if args.client_key is not None:
        server = args.server_key or config.bus.curve_path(config.state_dir) / "server.key"
        curve = CurveKeys.from_files(server, args.client_key)
    fleet = []
    for kiosk in config.web.kiosks:
        if kiosk.server_key and args.client_key is None:
            raise ConfigError(f"web.kiosks {kiosk.name}: a server_key needs readerd web --client-key")
        keys = CurveKeys.from_files(Path(kiosk.server_key), args.client_key) if kiosk.server_key else None
        fleet.append(FleetKiosk(kiosk.name, kiosk.control, keys))
    settings = WebSettings(
        publish=args.publish or config.bus.publish,
        control=control_endpoint(args.control, curve=curve is not None, configured=config.bus.control),
        console_token=config.web.console_token,
        curve=curve,
        events_kept=config.web.events_kept,
        fleet=tuple(fleet),
    )
    host, port = config.web.address()
    serve(with_web_config(settings, config.web), host, port)
    return ExitCode.OK


def plugins_config_from_args(args: argparse.Namespace) -> Config:
    path = config_path(args.config)
    overrides: dict[str, object] = {
        "state_dir": args.state_dir,
        "log_level": args.log_level,
        "plugins.trace": True if args.trace_plugins else None,
    }
    return with_overrides(load_config(path), overrides).validate()


def _run_plugins(args: argparse.Namespace) -> int:
    """``readerd plugins``: SIGTERM/SIGINT stop it after the current event."""
    import signal  # noqa: PLC0415

    from readerd.plugin.split_host import SplitHost  # noqa: PLC0415 - loads zmq and pluggy

    config = plugins_config_from_args(args)
    rlog.configure(args.log_level or config.log_level, args.log_format)
    host = SplitHost(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: host.stop_event.set())
    return host.run()


def config_from_args(args: argparse.Namespace) -> Config:
    backends: tuple[str, ...] | None
    if args.simulate:
        base = load_config(args.config) if args.config else Config()
        backends = tuple(args.backend or ["sim"])
        state_dir = args.state_dir or SIMULATE_STATE_DIR
    else:
        path = config_path(args.config)
        base = load_config(path)
        backends = tuple(args.backend) if args.backend else None
        state_dir = args.state_dir
    return with_overrides(
        base,
        {
            "backends": backends,
            "state_dir": state_dir,
            "kiosk": args.kiosk,
            "log_level": args.log_level,
            "bus.publish": args.publish,
            "bus.control": args.control,
            "bus.heartbeat_interval": args.heartbeat,
            "nfc.devices": tuple(args.nfc_device) if args.nfc_device else None,
            "plugins.trace": True if args.trace_plugins else None,
            "plugins.enabled": False if args.no_plugins else None,
        },
    ).validate()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    rlog.configure(args.log_level or "INFO", args.log_format)
    log = rlog.get_logger("readerd")
    try:
        if args.command == "plugins":
            return _run_plugins(args)
        if args.command == "web":
            return _run_web(args)
        if args.command == "migrate":
            return _run_migrate(args)
        config = config_from_args(args)
        rlog.configure(args.log_level or config.log_level, args.log_format)
        from readerd.daemon import Daemon  # noqa: PLC0415 - `readerd --help` must not load zmq

        daemon = Daemon(config)
        daemon.install_signal_handlers()
        # Card sessions and the bus thread wait for the GIL behind any thread that computes (a catch-up
        # read, a plugin): hand it over every millisecond instead of Python's default 5 ms.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        return daemon.run()
    except ConfigError as e:
        log.error("configuration error", error=str(e))
        return ExitCode.CONFIG
    except (BusError, StoreUnavailableError) as e:
        log.error("cannot start", error=str(e))
        return ExitCode.UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
