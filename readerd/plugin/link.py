"""The daemon's end of the link to a plugin host in its own process (``readerd plugins``).

Production may run the plugins apart from the card reader (docs/design.md D1, D15), so that a plugin that
hangs, leaks or crashes costs only its own process. The daemon stays the single publisher:

- it binds the private feed (``ipc://<runtime_dir>/private.sock``, full fields) and a private control
  socket (``ipc://<runtime_dir>/plugins.sock``), both 0600, when it runs without the embedded host;
- plugin results and errors come back as ``plugin.publish`` / ``plugin.error`` requests, and the host's
  ``plugin.handled`` (a tap's results have all come back) as ``plugin.handled``, which the daemon
  publishes with their own seq;
- the host announces its commands with ``plugins.register`` (each one's role, ``CommandSpec.schema()``
  and whether it moves value); the daemon registers them on its public control socket, described as
  the embedded host's are (``commands``, ``readerctl help``), and forwards each request to the host
  (and ``plugins`` for ``readerctl plugins``, ``plugins.reinstate`` for ``readerctl plugins reinstate
  NAME``, operator role).

The host's side is :mod:`readerd.plugin.split_host`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import structlog

from readerd import events as ev
from readerd.bus.control import ArgDoc, CommandDoc, CommandHandler, ControlRequest, JsonObject
from readerd.bus.curve import ROLES
from readerd.bus.server import Bus
from readerd.config import Config
from readerd.errors import Refusal
from readerd.events import Event
from readerd.plugin.host import HANDLED

log = structlog.get_logger("readerd.plugin_link")

#: The daemon's possession gate: wraps the forwarding of a command that moves value.
Guard = Callable[[Callable[[ControlRequest, JsonObject], Future[JsonObject]]], CommandHandler]

FEED_SOCKET = "private.sock"
CONTROL_SOCKET = "plugins.sock"
CURSOR_FILE = "plugins.cursor"
#: How long the daemon waits for the split host to answer a forwarded command.
FORWARD_TIMEOUT = 10.0
#: ``commands``' entries of the two commands the link forwards for ``readerctl plugins`` (as embedded).
PLUGINS_DOC = CommandDoc("the loaded plugins: versions, hooks, quarantine, what they receive")
REINSTATE_DOC = CommandDoc(
    "bring a quarantined plugin back now (a new store handle)",
    {"name": ArgDoc("string", True, "the plugin's name")},
)


def runtime_dir(config: Config) -> Path:
    return Path(config.plugins.runtime_dir) if config.plugins.runtime_dir else Path(config.state_dir) / "run"


def endpoints(config: Config) -> tuple[str, str]:
    """The private feed and the private control socket of a daemon without the embedded host."""
    directory = runtime_dir(config)
    return f"ipc://{directory / FEED_SOCKET}", f"ipc://{directory / CONTROL_SOCKET}"


def prepare_runtime_dir(config: Config) -> None:
    directory = runtime_dir(config)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in (FEED_SOCKET, CONTROL_SOCKET):  # a socket file left by a killed daemon
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


# -- the daemon's end -----------------------------------------------------------------------------------
class SplitHostLink:
    """Registered on the daemon's bus: results in, commands out to whichever host registered last."""

    def __init__(self, bus: Bus, *, guard: Guard | None = None) -> None:
        """``guard(forward)``: the handler of a command that moves value (the daemon's possession gate,
        readerd.auth.possession), in front of the forwarding; without one such commands are refused."""
        self.bus = bus
        self.guard = guard
        self.peer: bytes | None = None
        self.commands: list[str] = []
        bus.register_private_command("plugins.register", self._register)
        bus.register_private_command("plugins.unregister", self._unregister)
        bus.register_private_command("plugin.publish", self._publish)
        bus.register_private_command("plugin.error", self._error)
        bus.register_private_command(HANDLED, self._handled)
        bus.register_command("plugins", self._forward, spec=PLUGINS_DOC)
        bus.register_command("plugins.reinstate", self._forward, role="operator", spec=REINSTATE_DOC)
        bus.add_status(lambda: {"plugin_host": "split" if self.peer is not None else "split, not connected"})

    def _register(self, request: ControlRequest) -> JsonObject:
        commands = request.args.get("commands", {})
        if isinstance(commands, list):  # names only: each needs the control role
            commands = dict.fromkeys(commands, "control")
        if not isinstance(commands, dict) or not all(
            isinstance(n, str) and "." in n and r in ROLES for n, r in commands.items()
        ):
            raise Refusal("bad_request", "commands: {<plugin>.<verb>: role}")
        possession = request.args.get("possession", [])
        if not isinstance(possession, list) or not all(isinstance(n, str) for n in possession):
            raise Refusal("bad_request", "possession: [<plugin>.<verb>, ...]")
        specs = request.args.get("specs", {})  # a host before specs sends none: its commands undescribed
        if not isinstance(specs, dict) or not all(isinstance(s, dict) for s in specs.values()):
            raise Refusal("bad_request", "specs: {<plugin>.<verb>: CommandSpec.schema()}")
        self.peer = request.peer
        for name, role in commands.items():
            handler: CommandHandler = self._forward
            if name in possession:
                if self.guard is None:
                    raise Refusal("bad_request", f"{name} moves value and this daemon cannot check proofs")
                handler = self.guard(self._forward_with)
            schema = specs.get(name)
            doc = CommandDoc.from_schema(schema, possession=name in possession) if schema else None
            self.bus.register_command(name, handler, role=role, spec=doc)
        names = sorted(commands)
        self.commands = names
        log.info("split plugin host connected", commands=names)
        return {"run_id": self.bus.run_id, "last_seq": self.bus.last_seq}

    def _unregister(self, request: ControlRequest) -> JsonObject:
        if request.peer == self.peer:
            self.peer = None
            log.info("split plugin host stopped")
        return {}

    def _publish(self, request: ControlRequest) -> JsonObject:
        a = request.args
        if not all(isinstance(a.get(k), str) for k in ("plugin", "event")) or not isinstance(
            a.get("data"), dict
        ):
            raise Refusal("bad_request", "plugin.publish {plugin, event, data, reader?}")
        reader = a.get("reader") if isinstance(a.get("reader"), str) else None
        cause = a.get("cause") if isinstance(a.get("cause"), str) else None
        result = ev.plugin_result(
            a["plugin"], a["event"], a["data"], reader, cause=cause, replayed=a.get("replayed") is True
        )
        self.bus.publish(result)
        return {}

    def _handled(self, request: ControlRequest) -> JsonObject:
        """``plugin.handled {cause, reader?, data}``: the split host is done with a tap (docs/events.md)."""
        a = request.args
        if not isinstance(a.get("cause"), str) or not isinstance(a.get("data"), dict):
            raise Refusal("bad_request", "plugin.handled {cause, reader?, data}")
        reader = a.get("reader") if isinstance(a.get("reader"), str) else None
        self.bus.publish(Event(HANDLED, reader, a["data"], cause=a["cause"]))
        return {}

    def _error(self, request: ControlRequest) -> JsonObject:
        a = request.args
        self.bus.publish(
            ev.plugin_error(
                str(a.get("plugin")),
                str(a.get("hook")),
                str(a.get("error")),
                str(a.get("message")),
                quarantined=bool(a.get("quarantined")),
            )
        )
        return {}

    def _forward_with(self, request: ControlRequest, args: JsonObject) -> Future[JsonObject]:
        if self.peer is None:
            raise Refusal("plugin_host_unavailable", "no plugin host is connected (readerd plugins)")
        return self.bus.forward(self.peer, request.cmd, args, FORWARD_TIMEOUT)

    def _forward(self, request: ControlRequest) -> Future[JsonObject]:
        if self.peer is None:
            raise Refusal("plugin_host_unavailable", "no plugin host is connected (readerd plugins)")
        return self.bus.forward(self.peer, request.cmd, request.args, FORWARD_TIMEOUT)
