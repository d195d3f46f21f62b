"""The local role sockets: on a kiosk, which socket a caller can open decides what it may do.

Any account on a kiosk can reach a TCP port on loopback, so loopback TCP without CURVE gets the subscribe
role only (``status``, ``events.since``; the events). Local callers that need more connect to one of
three ``ipc://`` sockets in the runtime directory (``/run/readerd`` under systemd), and the kernel checks
the socket file's mode and group at ``connect``, supplementary groups included:

========================  ==========================  ============================================
socket                    who may connect              role of every request on it
========================  ==========================  ============================================
``operator.sock``         group ``readerd-operator``   operator (staff: grants, relinks, definitions)
``control.sock``          group ``readerd-control``    control (a kiosk screen: tap, auth.begin/pin)
``status.sock``           everyone (0666)              subscribe (status, events.since)
========================  ==========================  ============================================

The daemon's own user may open every socket (its owner); ``root`` always may. A group that does not
exist (a developer's machine) leaves the socket to the daemon's own user and group. Clients find the
sockets at these fixed names without reading ``readerd.toml`` (readable by the daemon's group only) and
take the highest they may open (:func:`pick`).
"""

from __future__ import annotations

import contextlib
import grp
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from readerd.bus.curve import CONTROL, OPERATOR, SUBSCRIBE

log = structlog.get_logger("readerd.bus")

#: Socket file name -> the role of every request on it, highest first.
SOCKETS: dict[str, str] = {"operator.sock": OPERATOR, "control.sock": CONTROL, "status.sock": SUBSCRIBE}
#: Where clients look first: systemd's RuntimeDirectory of readerd.service.
SYSTEM_DIR = Path("/run/readerd")
#: The longest path of an ipc socket (sun_path holds 108 bytes with its NUL).
MAX_SOCKET_PATH = 107

#: The next step a refusal names, by the role the command needed.
ROLE_HINTS: dict[str, str] = {
    CONTROL: "use the kiosk's control socket (group readerd-control) or a CURVE key with the control role",
    OPERATOR: "run it as a member of the readerd-operator group (or root), or with a CURVE operator key",
}


@dataclass(frozen=True)
class RoleSockets:
    """The three sockets of one daemon: their directory and the groups of the two restricted ones."""

    directory: Path
    operator_group: str = "readerd-operator"
    control_group: str = "readerd-control"

    def path(self, role: str) -> Path:
        name = next(name for name, each in SOCKETS.items() if each == role)
        return self.directory / name

    def endpoints(self) -> dict[str, str]:
        """role -> ``ipc://`` endpoint; the directory is made 0755 (the sockets carry the modes)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        endpoints = {}
        for role in SOCKETS.values():
            path = self.path(role)
            if len(str(path)) > MAX_SOCKET_PATH:
                raise ValueError(f"{path}: longer than {MAX_SOCKET_PATH} bytes, too long for a socket")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # left by a killed daemon
            endpoints[role] = f"ipc://{path}"
        return endpoints

    def secure(self, role: str) -> None:
        """Give a freshly bound socket its mode and group (bus thread, right after bind)."""
        path = self.path(role)
        if role == SUBSCRIBE:
            os.chmod(path, 0o666)  # noqa: S103 - the status socket is for every local account
            return
        group = self.operator_group if role == OPERATOR else self.control_group
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            gid = -1
            log.info(
                "role socket group missing: only readerd's own user may connect",
                socket=path.name,
                group=group,
            )
        if gid >= 0:
            try:
                os.chown(path, -1, gid)
            except PermissionError:
                log.warning("cannot give the role socket its group", socket=path.name, group=group)
        os.chmod(path, 0o660)


#: An explicit directory of role sockets for clients (a daemon with ``bus.sockets_dir`` set elsewhere).
SOCKETS_ENV = "READERD_SOCKETS"


def socket_dirs() -> list[Path]:
    """Where clients look for the role sockets, in order: ``$READERD_SOCKETS``, /run/readerd, and the
    state directory of ``readerd run --simulate`` started here (``.readerd/run``)."""
    explicit = os.environ.get(SOCKETS_ENV, "")
    return [*([Path(explicit)] if explicit else []), SYSTEM_DIR, Path(".readerd") / "run"]


def pick(directories: list[Path]) -> tuple[str, str] | None:
    """The highest-role socket this process may open: ``(role, endpoint)``, or None if there is none.

    ``directories`` are looked at in order; the first that holds the sockets is used."""
    for directory in directories:
        found = [(role, directory / name) for name, role in SOCKETS.items() if (directory / name).exists()]
        if not found:
            continue
        for role, path in found:
            if os.access(path, os.R_OK | os.W_OK):
                return role, f"ipc://{path}"
        return None
    return None


def control_endpoint(given: str | None, *, curve: bool, configured: str) -> str:
    """Where a local client sends commands: ``given`` (``--control``); with a CURVE key, the configured
    TCP endpoint; else the highest role socket this account may open; failing those the configured
    endpoint, where a caller without a key has the subscribe role only."""
    if given:
        return given
    if not curve:
        picked = pick(socket_dirs())
        if picked is not None:
            return picked[1]
    return configured
