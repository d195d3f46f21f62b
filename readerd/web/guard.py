"""Who may use ``readerd web`` (docs/web.md, "Who may use it"): the kiosk page's per-boot secret, the
``Host`` check against DNS rebinding, the console's login throttle and its expiring sessions.

The Host check is plain ASGI middleware; the clocks are injectable
(``clock()`` returns seconds, monotonic), so tests move time instead of sleeping.
"""

from __future__ import annotations

import contextlib
import grp
import hmac
import ipaddress
import json
import math
import os
import re
import secrets
import stat
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from readerd.errors import ConfigError

Clock = Callable[[], float]

MIN_TOKEN_BITS = 128
SECRET_BYTES = 32  # the kiosk secret: 256 bits, 43 base64url characters
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
SECRET_FILE_NAME = "kiosk-secret"  # noqa: S105 - a file name
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "[::1]")


# --- the console token ---------------------------------------------------------------------------------
def token_bits(token: str) -> float:
    """A generous estimate of a token's strength: its length times the bits of the smallest usual alphabet
    its characters fit (digits 3.3, hex 4, base64 6, anything wider 6.5), and nothing for a token of fewer
    than 8 different characters (``aaaa...``, ``abab...``). ``secrets.token_urlsafe(16)`` is 128."""
    if len(set(token)) < 8:
        return 0.0
    if token.isdigit():
        per_char = math.log2(10)
    elif re.fullmatch(r"[0-9a-fA-F]+", token):
        per_char = 4.0
    elif re.fullmatch(r"[A-Za-z0-9_+/=-]+", token):
        per_char = 6.0
    else:
        per_char = 6.5
    return len(token) * per_char


def check_console_token(token: str) -> None:
    """ConfigError (exit 78) for a console token that is set but weaker than 128 bits."""
    if token and token_bits(token) < MIN_TOKEN_BITS:
        raise ConfigError(
            f"web.console_token is about {token_bits(token):.0f} bits; at least {MIN_TOKEN_BITS} are needed "
            "(32 hex digits or 22 base64url characters), e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


# --- the kiosk page's per-boot secret ------------------------------------------------------------------
def default_secret_file() -> Path:
    """Where the secret goes when ``web.kiosk_secret_file`` is empty: the unit's RuntimeDirectory
    (``$RUNTIME_DIRECTORY``, /run/readerd-web), else the user's own runtime directory (a run by hand)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / SECRET_FILE_NAME
    user = os.environ.get("XDG_RUNTIME_DIR", "")
    if user:
        return Path(user) / "readerd-web" / SECRET_FILE_NAME
    raise ConfigError(
        "no runtime directory for the kiosk secret: set web.kiosk_secret_file (the unit sets "
        "RuntimeDirectory=readerd-web; a session has XDG_RUNTIME_DIR)"
    )


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"web.kiosk_secret_group = {group!r}: no such group") from None


def _reusable(path: Path, mode: int, gid: int) -> str | None:
    """The secret already in ``path`` if this user wrote it with these rights (a restart within the
    boot keeps the page that is open working), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != mode:
            return None
        if gid >= 0 and st.st_gid != gid:
            return None
        text = f.read(100).strip()
    return text if _SECRET_RE.fullmatch(text) else None


def ensure_kiosk_secret(path: Path, group: str = "") -> str:
    """The per-boot secret in ``path``: reused if this user's file with the right mode holds one, else a
    new one, written atomically 0600, or 0640 with ``group`` (the kiosk session's group, so its launcher
    can read it; readerd web's user must be a member to hand the file to it)."""
    gid = _group_id(group) if group else -1
    mode = 0o640 if group else 0o600
    if not path.parent.is_dir():
        try:  # a directory of our own; the kiosk's group needs to pass through it, nothing more
            path.parent.mkdir(mode=0o711 if group else 0o700, parents=True)
        except OSError as e:
            raise ConfigError(f"web.kiosk_secret_file {path}: {e.strerror}") from e
    found = _reusable(path, mode, gid)
    if found is not None:
        return found
    secret = token_urlsafe()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            if gid >= 0:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, mode)
            os.write(fd, (secret + "\n").encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except PermissionError as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        why = f"this user is not in group {group!r}" if group else e.strerror
        raise ConfigError(f"web.kiosk_secret_file {path}: cannot write it ({why})") from e
    except OSError as e:
        raise ConfigError(f"web.kiosk_secret_file {path}: {e.strerror}") from e
    return secret


def token_urlsafe() -> str:
    """A new kiosk secret (256 bits)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def secret_matches(given: object, secret: str) -> bool:
    """Constant time: a refusal must not tell how much of a guess was right."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), secret.encode())


# --- Host ---------------------------------------------------------------------------------------------
def _host_literal(address: str) -> str:
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address


class HostCheck:
    """ASGI middleware: a request whose ``Host`` is not one of the names this server answers to gets 421.

    A page of another site that points its own name at 127.0.0.1 (DNS rebinding) reaches this server
    with that name in ``Host``: refused. Allowed: ``name:port`` for each of :data:`DEFAULT_HOSTS` and
    ``web.hosts`` (entries with a port must match it exactly), and the IP address the connection was
    made to (a LAN console opened by address), always with the port the server listens on."""

    def __init__(self, app: ASGIApp, hosts: tuple[str, ...] = ()) -> None:
        self.app = app
        self.names = {h.lower() for h in (*DEFAULT_HOSTS, *hosts)}

    def allowed(self, host: str, server: tuple[str, int] | None) -> bool:
        host = host.strip().lower()
        if host in self.names and ":" in host.removeprefix("[").split("]")[-1]:
            return True  # an entry of web.hosts with its port
        if server is None:
            return False
        local, port = server
        names = {*self.names, _host_literal(local).lower()}
        wanted = {f"{name}:{port}" for name in names}
        if port in (80, 443):
            wanted |= names  # the browser leaves a default port out
        return host in wanted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        server = scope.get("server")
        if self.allowed(host, tuple(server) if server else None):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "ok": False,
                "error": {
                    "code": "host_not_allowed",
                    "message": f"Host {host[:100]!r} is not a name of this server; open it as "
                    "http://127.0.0.1:PORT/ or add the name to web.hosts",
                },
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 421,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --- the console's login throttle ----------------------------------------------------------------------
@dataclass
class _Tries:
    failures: deque[float] = field(default_factory=deque)
    strikes: int = 0
    locked_until: float = 0.0
    seen: float = 0.0


class LoginThrottle:
    """Failed logins per client address: ``attempts`` in ``window`` seconds lock that address out for
    ``window``, doubling at each further lockout up to ``max_lockout``; a success forgets the address.
    While locked out even the right token waits (429 with Retry-After). At most ``max_addresses`` are
    kept (the least recently seen go first), so a flood of addresses cannot grow the table."""

    def __init__(
        self,
        clock: Clock,
        attempts: int = 5,
        window: float = 60.0,
        max_lockout: float = 3600.0,
        max_addresses: int = 4096,
    ) -> None:
        self.clock, self.attempts, self.window = clock, attempts, window
        self.max_lockout, self.max_addresses = max_lockout, max_addresses
        self._by_address: OrderedDict[str, _Tries] = OrderedDict()

    def wait(self, address: str) -> float:
        """Seconds this address must wait before its next try (0: it may try now)."""
        tries = self._by_address.get(address)
        return max(0.0, tries.locked_until - self.clock()) if tries else 0.0

    def failed(self, address: str) -> float:
        """Count a failure; the lockout it starts, in seconds (0 for none)."""
        now = self.clock()
        tries = self._by_address.pop(address, None) or _Tries()
        if now - tries.seen > self.max_lockout and tries.locked_until <= now:
            tries = _Tries()  # an hour of quiet: a clean slate
        tries.seen = now
        self._by_address[address] = tries
        while len(self._by_address) > self.max_addresses:
            self._by_address.popitem(last=False)
        while tries.failures and now - tries.failures[0] >= self.window:
            tries.failures.popleft()
        tries.failures.append(now)
        if len(tries.failures) < self.attempts:
            return 0.0
        tries.failures.clear()
        lockout = float(min(self.window * 2.0**tries.strikes, self.max_lockout))
        tries.strikes += 1
        tries.locked_until = now + lockout
        return lockout

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)


# --- the console's sessions ----------------------------------------------------------------------------
@dataclass
class _ConsoleSession:
    created: float
    used: float


class ConsoleSessions:
    """Logged-in consoles: a random 256-bit id in an HttpOnly cookie, ended after ``idle`` seconds unused
    or ``max_age`` after the login, or at logout; a restart of ``readerd web`` ends them all."""

    def __init__(self, clock: Clock, idle: float, max_age: float, max_sessions: int = 256) -> None:
        self.clock, self.idle, self.max_age, self.max_sessions = clock, idle, max_age, max_sessions
        self._by_id: OrderedDict[str, _ConsoleSession] = OrderedDict()

    def open(self) -> str:
        now = self.clock()
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = _ConsoleSession(now, now)
        while len(self._by_id) > self.max_sessions:
            self._by_id.popitem(last=False)
        return sid

    def check(self, sid: str | None) -> str | None:
        """None if ``sid`` is a live session (and marks it used), else why not: ``no_session``,
        ``session_expired``."""
        session = self._by_id.get(sid) if sid else None
        if session is None:
            return "no_session"
        now = self.clock()
        if now - session.used > self.idle or now - session.created > self.max_age:
            del self._by_id[sid]  # type: ignore[arg-type] # found just above
            return "session_expired"
        session.used = now
        return None

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)
