"""``readerd``: the daemon's command line.

The flags of ``readerd run`` are a stable interface (kiosk scripts and the systemd unit use them); they
override the configuration file, and the daemon runs with no file at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from readerd import __version__
from readerd import logging as rlog
from readerd.config import BACKENDS, DEFAULT_CONFIG, Config, config_path, load_config, with_overrides
from readerd.errors import BusError, ConfigError, StoreUnavailableError
from readerd.exitcodes import ExitCode

SIMULATE_STATE_DIR = ".readerd"
#: How often a thread holding the GIL hands it over (``sys.setswitchinterval``) in ``readerd run``.
SWITCH_INTERVAL_S = 0.001


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
    return parser


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
