"""CURVE keys and the allowlist of the LAN bus, and the ZAP handler that applies it.

ZeroMQ's CURVE encrypts and authenticates each connection; who may connect is decided by a ZAP handler
(RFC 27) that libzmq asks at every handshake. Ours admits only client public keys found in the allowlist
directory, each with a role: ``subscribe`` (events, ``events.since`` and ``status``), ``control``
(commands: a shop terminal redeeming points, a kiosk screen) or ``operator`` (also the staff commands
that change who is who or what the ward defines: ``mykey.relink``, registrations, programmes, grants,
reports with personal data; each command names the role it needs). The role rides on the connection
as its ZAP User-Id (``<role>:<name>``), so the bus checks it per request without a lookup that a
concurrent revocation could race.

Keys are ZeroMQ certificate files (the ZPL text czmq's ``zcert`` and pyzmq's ``zmq.auth`` read), so a
client in another language can use its own tooling: ``<name>.key`` holds the public key (and for
allowlist entries ``metadata / role``), ``<name>.key_secret`` the secret one too (0600). The directory
is re-read while the daemon runs; ZAP runs only at the handshake, so when a key is revoked the bus
re-binds its CURVE publish endpoint, which drops every subscription and lets only the still-allowed keys
back in, and every control request is checked against the allowlist as it is then (:func:`authorize`),
so a revoked key or a lost role takes effect at the next request (docs/design.md D14).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
import zmq
from zmq.utils import z85

from readerd.errors import ConfigError, ForbiddenError

log = structlog.get_logger("readerd.curve")

#: The roles of an allowlisted key, each allowing what the ones before it do.
SUBSCRIBE, CONTROL, OPERATOR = "subscribe", "control", "operator"
ROLES = (SUBSCRIBE, CONTROL, OPERATOR)
#: Commands a subscribe-only key may send: what a subscriber needs to catch up and to see the daemon.
SUBSCRIBE_COMMANDS = frozenset({"events.since", "status", "readers"})


def role_allows(role: str, needed: str) -> bool:
    """Whether a key of ``role`` may send a command that needs ``needed`` (an unknown role: nothing)."""
    return role in ROLES and needed in ROLES and ROLES.index(role) >= ROLES.index(needed)


ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "readerd"
SERVER = "server"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LINE = re.compile(r'^(\s*)([A-Za-z0-9_-]+)\s*=\s*"([^"]*)"\s*$')


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85, 40 characters
    secret: bytes | None


@dataclass(frozen=True)
class AllowedKey:
    name: str
    public: bytes
    role: str

    @property
    def user_id(self) -> str:
        return f"{self.role}:{self.name}"


def check_name(name: str) -> str:
    if not _NAME.match(name) or name.endswith((".key", ".key_secret")):
        raise ConfigError(f"{name!r}: a key name is 1..64 letters, digits, '.', '_' or '-'")
    return name


def check_public_key(text: str) -> bytes:
    key = text.strip().encode()
    if len(key) != 40:
        raise ConfigError("a CURVE public key is 40 characters of Z85")
    try:
        z85.decode(key)
    except (ValueError, KeyError) as e:
        raise ConfigError("a CURVE public key is 40 characters of Z85") from e
    return key


def read_certificate(path: Path) -> tuple[KeyPair, dict[str, str]]:
    """A ZPL certificate: its keys and its ``metadata`` section."""
    section = ""
    values: dict[str, dict[str, str]] = {"metadata": {}, "curve": {}}
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw[0].isspace():
            section = raw.strip()
            continue
        match = _LINE.match(raw)
        if match and section in values:
            values[section][match.group(2)] = match.group(3)
    public = values["curve"].get("public-key")
    if public is None:
        raise ConfigError(f"{path}: no public-key")
    secret = values["curve"].get("secret-key")
    keys = KeyPair(check_public_key(public), secret.encode() if secret else None)
    return keys, values["metadata"]


def write_certificate(
    path: Path, keys: KeyPair, metadata: dict[str, str] | None = None, *, secret: bool = False
) -> None:
    """Write ``path`` (``.key``) or with ``secret`` its ``.key_secret`` sibling, 0600 for a secret."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        f"#   ****  Generated on {now} by readerctl keys  ****",
        f"#   ZeroMQ CURVE {'**Secret**' if secret else 'Public'} Certificate",
        "#   " + ("DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions." if secret else ""),
        "",
        "metadata",
        *(f'    {k} = "{v}"' for k, v in (metadata or {}).items()),
        "curve",
        f'    public-key = "{keys.public.decode()}"',
    ]
    if secret:
        if keys.secret is None:
            raise ValueError("no secret key to write")
        lines.append(f'    secret-key = "{keys.secret.decode()}"')
    target = path.with_suffix(".key_secret") if secret else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(target, flags, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    if secret:
        os.chmod(target, 0o600)


def generate(directory: Path, name: str, metadata: dict[str, str] | None = None) -> tuple[Path, Path]:
    """A new key pair as ``<name>.key`` and ``<name>.key_secret``; never overwrites."""
    check_name(name)
    directory.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise ConfigError(f"{path} exists: keys are never overwritten (remove it first)")
    public, secret = zmq.curve_keypair()
    keys = KeyPair(public, secret)
    write_certificate(public_path, keys, metadata)
    write_certificate(public_path, keys, metadata, secret=True)
    return public_path, secret_path


def load_or_create_server_keys(directory: Path) -> tuple[KeyPair, bool]:
    """The daemon's CURVE key pair in ``directory`` (created, 0700/0600, on first use): clients pin its
    public key. Returns the keys and whether they were just created."""
    secret_path = directory / f"{SERVER}.key_secret"
    created = False
    if not secret_path.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        generate(directory, SERVER)
        created = True
    keys, _ = read_certificate(secret_path)
    if keys.secret is None:
        raise ConfigError(f"{secret_path}: no secret-key")
    return keys, created


def allowlist_dir(curve_dir: Path) -> Path:
    return curve_dir / "clients"


class Allowlist:
    """The client keys in a directory (``*.key``), re-read when its listing or a file changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.keys: dict[bytes, AllowedKey] = {}
        self.by_name: dict[str, AllowedKey] = {}
        #: Keys cut by a refresh the ZAP handler made: the bus re-binds for them at its next round.
        self.pending_cut: set[bytes] = set()
        self.refused: set[bytes] = set()  # keys refused (and logged) since the last change
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self.refresh()

    def _stat(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.directory.glob("*.key")):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    out.append((path.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def changed(self) -> bool:
        return self._stat() != self._signature

    def refresh(self) -> set[bytes]:
        """Re-read the directory if it changed. Returns the public keys that were removed or lost a
        role: their connections must be cut (a re-bind), since ZAP will not be asked again."""
        signature = self._stat()
        if signature == self._signature:
            return set()
        self._signature = signature
        self.refused = set()
        keys: dict[bytes, AllowedKey] = {}
        for name, _mtime, _size in signature:
            path = self.directory / name
            try:
                pair, metadata = read_certificate(path)
            except (ConfigError, OSError, UnicodeDecodeError) as e:
                log.error("allowlist entry ignored", path=str(path), error=str(e))
                continue
            role = metadata.get("role", "subscribe")
            if role not in ROLES:
                log.error("allowlist entry ignored: unknown role", path=str(path), role=role)
                continue
            keys[pair.public] = AllowedKey(path.name.removesuffix(".key"), pair.public, role)
        cut = {
            k
            for k, old in self.keys.items()
            if k not in keys or (old.role, old.name) != (keys[k].role, keys[k].name)
        }
        self.keys = keys
        self.by_name = {k.name: k for k in keys.values()}
        return cut

    def allow(self, name: str, public: bytes, role: str) -> Path:
        check_name(name)
        if role not in ROLES:
            raise ConfigError(f"role: one of {', '.join(ROLES)}")
        self.refresh()
        other = self.keys.get(public)
        if other is not None and other.name != name:
            raise ConfigError(f"this key is already allowed as {other.name!r} (revoke that first)")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.key"
        write_certificate(path, KeyPair(public, None), {"role": role})
        return path

    def revoke(self, name: str) -> Path:
        path = self.directory / f"{check_name(name)}.key"
        if not path.exists():
            raise ConfigError(f"no allowed key named {name!r} in {self.directory}")
        path.unlink()
        return path


def zap_reply(allowlist: Allowlist, frames: list[bytes]) -> list[bytes]:
    """Answer one ZAP request (RFC 27): 200 with User-Id ``<role>:<name>`` for an allowed CURVE key,
    400 for anything else. NULL connections (inproc, loopback sockets without CURVE) are not ours to
    judge here: they carry no key, and the sockets that need one never accept NULL."""
    version, request_id = frames[0], frames[1]
    mechanism = frames[5] if len(frames) > 5 else b""
    if mechanism == b"NULL":
        return [version, request_id, b"200", b"OK", b"local", b""]
    if mechanism != b"CURVE" or len(frames) < 7:
        return [version, request_id, b"400", b"unsupported mechanism", b"", b""]
    public = z85.encode(frames[6])
    allowed = allowlist.keys.get(public)
    if allowed is None and allowlist.changed():
        # A key allowed a moment ago is admitted at once, not after the next poll of the directory.
        allowlist.pending_cut |= allowlist.refresh()
        allowed = allowlist.keys.get(public)
    if allowed is None:
        if public not in allowlist.refused:  # a refused client retries: log each key once per allowlist
            allowlist.refused.add(public)
            address = frames[3].decode()
            log.warning("CURVE key refused: not in the allowlist", key=public.decode(), address=address)
        return [version, request_id, b"400", b"key not allowed", b"", b""]
    return [version, request_id, b"200", b"OK", allowed.user_id.encode(), b""]


def serve_zap(zap: zmq.Socket[bytes], allowlist: Allowlist) -> None:
    """Answer every ZAP request waiting on the handler's socket (the bus thread, which owns it)."""
    while True:
        try:
            frames = zap.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        zap.send_multipart(zap_reply(allowlist, frames))


def make_curve_server(sock: zmq.Socket[bytes], keys: KeyPair) -> None:
    """Make ``sock`` a CURVE server of the daemon's key pair, its handshakes judged by our ZAP domain."""
    sock.curve_server = True
    sock.curve_secretkey = keys.secret or b""
    sock.curve_publickey = keys.public
    sock.zap_domain = ZAP_DOMAIN.encode()


def authorize(allowlist: Allowlist, user: str, cmd: str, needed: str) -> None:
    """A CURVE caller's request against the allowlist as it is now: revoked keys and lost roles take
    effect on the next request, not at the next handshake. ``user`` is the ZAP User-Id
    (``<role>:<name>``); ``needed`` the role the command needs. Raises :class:`ForbiddenError`."""
    role, _, name = user.partition(":")
    current = allowlist.by_name.get(name)
    if current is None or current.role != role:
        raise ForbiddenError("this key is no longer allowed (revoked or its role changed)")
    if not role_allows(role, needed):
        raise ForbiddenError(f"this key has the {role} role; {cmd!r} needs the {needed} role")
