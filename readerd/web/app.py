"""``readerd web``: the kiosk screen and the operator console, a small Starlette app on the daemon's bus.

Why a separate process and not a part of the daemon: a browser, a web server and their bugs must never
be able to delay card reading, and the app is just another bus client (docs/clients.md): it follows the
public feed with :class:`readerd.bus.client.AsyncBusClient` (gap-free, CURVE on a LAN) and sends commands
through :class:`readerd.bus.control_client.ControlSession`, one per kiosk page, because the daemon binds
an ``auth_id`` to the socket that asked for it.

Browsers get events over Server-Sent Events (plain ``text/event-stream``: one-way is all a screen needs,
and it reconnects by itself). The kiosk feed is reduced to what a screen shows: plugin results as the
plugin published them, card events without pseudonyms or member IDs.

Who may use it (:mod:`readerd.web.guard`, docs/web.md "Who may use it"): every request's ``Host`` must be
one of this server's names; the kiosk API needs a session opened with the per-boot secret that only the
kiosk session's user can read; ``allow_last_try`` goes to the daemon only with the one-time confirmation
that this app handed out with ``auth.begin``'s ``last_try``; the console needs a token of at least 128
bits, throttles failed logins per address and ends its sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from readerd import logging as rlog
from readerd.bus.client import AsyncBusClient, CurveKeys
from readerd.bus.control_client import ControlSession, Unreachable
from readerd.config import WebConfig
from readerd.errors import BusSilentError, ConfigError, GapUnrecoverableError
from readerd.web.guard import ConsoleSessions, HostCheck, LoginThrottle, check_console_token, secret_matches

log = rlog.get_logger("readerd.web")

STATIC = Path(__file__).parent / "static"
KIOSK_COOKIE = "readerd_kiosk"
CONSOLE_COOKIE = "readerd_console"
SESSION_IDLE_S = 600.0  # a kiosk page's control session is closed after this long unused
MAX_KIOSK_SESSIONS = 64  # only holders of the kiosk secret open one; the oldest goes first
LAST_TRY_CONFIRMATION_S = 120.0  # a last-try confirmation outlives the daemon's auth_id (60 s) a little
SSE_KEEPALIVE_S = 10.0
# What of a card event a kiosk screen may see: the kind of card, why a read failed, tries left. Never
# the pseudonym, member or MyKey ID (the screen is in a public place).
KIOSK_CARD_FIELDS = ("kind", "reason", "error", "tries_left", "repeat", "expires_within_days")

KIOSK_ARGS = ("reader", "auth_id", "pin")  # what a kiosk page may pass on (allow_last_try: see below)
NO_KIOSK_SESSION = {
    "code": "kiosk_secret_required",
    "message": "this page has no kiosk session: open it through the kiosk launcher "
    "(python -m readerd.web.launch), which gives it the per-boot secret; POST /api/kiosk/session "
    '{"secret": ...} opens one (docs/web.md)',
}

Envelope = dict[str, Any]


@dataclass(frozen=True)
class FleetKiosk:
    """Another kiosk's daemon in the console's fleet table: asked ``status`` only."""

    name: str
    control: str
    curve: CurveKeys | None = None


@dataclass(frozen=True)
class WebSettings:
    """What the app needs: the daemon's endpoints (and CURVE keys), the console token."""

    publish: str
    control: str
    console_token: str = ""
    curve: CurveKeys | None = None
    events_kept: int = 200
    request_timeout_ms: int = 5000
    fleet: tuple[FleetKiosk, ...] = ()
    fleet_timeout_ms: int = 1000  # a kiosk that does not answer within this is shown unreachable
    kiosk_secret_file: str = ""  # "": the runtime directory's kiosk-secret (readerd.web.guard)
    kiosk_secret_group: str = ""  # the kiosk session's group: the file is 0640 to it, else 0600
    hosts: tuple[str, ...] = ()  # Host names besides 127.0.0.1, localhost, [::1] and the local address
    console_idle: float = 1800.0  # a console session unused this long ends (seconds)
    console_max_age: float = 28800.0  # and this long after its login
    console_login_attempts: int = 5  # failed logins a minute per client address before a lockout
    clock: Callable[[], float] = time.monotonic  # console sessions, throttle, confirmations (tests move it)


def with_web_config(settings: WebSettings, web: WebConfig) -> WebSettings:
    """``settings`` with the ``[web]`` keys on who may use the app; ConfigError (exit 78) for bad ones."""
    if web.console_idle <= 0 or web.console_max_age <= 0 or web.console_login_attempts < 1:
        raise ConfigError("web.console_idle, console_max_age and console_login_attempts must be positive")
    check_console_token(web.console_token)
    return replace(
        settings,
        kiosk_secret_file=web.kiosk_secret_file,
        kiosk_secret_group=web.kiosk_secret_group,
        hosts=tuple(web.hosts),
        console_idle=web.console_idle,
        console_max_age=web.console_max_age,
        console_login_attempts=web.console_login_attempts,
    )


def fleet_row(name: str, reply: dict[str, Any]) -> dict[str, Any]:
    """One line of the fleet table from a ``status`` reply (or the failure to get one)."""
    if not reply.get("ok"):
        error = reply.get("error") or {}
        return {"name": name, "reachable": False, "error": error.get("code"), "healthy": False}
    status = reply.get("result") or {}
    return {
        "name": name,
        "reachable": True,
        "kiosk": status.get("kiosk"),
        "healthy": bool(status.get("healthy")),
        "readers": len(status.get("readers") or []),
        "cards": sum(1 for r in status.get("readers") or [] if r.get("card")),
        "quarantined": status.get("plugins_quarantined") or [],
        "last_seq": status.get("last_seq"),
        "uptime_s": status.get("uptime_s"),
    }


def kiosk_view(env: Envelope) -> Envelope | None:
    """The part of an event a kiosk screen gets, or None for events a screen has no use for."""
    kind = str(env.get("type", ""))
    data = env.get("data") or {}
    if kind.startswith("plugin.") and kind != "plugin.error":
        if env.get("replayed"):
            return None  # a result for a tap from before a restart: that citizen has gone
        shown = data  # a plugin result carries only what the plugin chose to publish for the screen
    elif kind.startswith("card."):
        shown = {k: data[k] for k in KIOSK_CARD_FIELDS if k in data}
    elif kind in ("reader.added", "reader.removed"):
        shown = {}  # the page says when its reader is not there (docs/web.md, "The kiosk screen")
    else:
        return None
    view = {"type": kind, "reader": env.get("reader"), "seq": env.get("seq"), "data": shown}
    # a tap's id and a result's cause: the page composes a tap's results at its plugin.handled
    view |= {key: env[key] for key in ("id", "cause") if key in env}
    return view


def reaches_screen(env: Envelope, reader: str | None) -> bool:
    """Whether a kiosk page for ``reader`` gets this event: its reader's, and a ``card.events_lost`` of
    no reader in particular (the daemon lost a card event it cannot place: every screen asks again)."""
    if reader is None or env.get("reader") == reader:
        return True
    return env.get("type") == "card.events_lost" and env.get("reader") is None


def _reader_names(session: KioskSession) -> list[str] | None:
    """The daemon's readers now (``readers``), for the page's hint; None when it does not answer."""
    try:
        reply = _request(session, "readers", {})
    except Unreachable:
        return None
    readers = (reply.get("result") or {}).get("readers") if reply.get("ok") else None
    return [str(r.get("name")) for r in readers if isinstance(r, dict)] if isinstance(readers, list) else None


def _ts(env: Envelope) -> float | None:
    try:
        return datetime.fromisoformat(str(env["ts"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


# --- the console in words, on the ward's clock ---------------------------------------------------------
#: The console's clock: Japan Standard Time, which has had no daylight saving time since 1951, so a fixed
#: offset needs no zone database (readerd/cli/human.py does the same for readerctl).
JST = timezone(timedelta(hours=9), "JST")
JST_OFFSET = "+09:00"
TIME_ZONE = {"name": "Asia/Tokyo", "offset": JST_OFFSET, "label": f"時刻は日本時間 ({JST_OFFSET})"}
CARD_KINDS = {"jpki": "マイナンバーカード", "felica": "FeliCa カード", "unknown": "不明なカード"}
ABORT_REASONS = {
    "removed": "途中でカードが離れました",
    "malformed": "読み取れないデータです",
    "timeout": "カードが応答しません",
    "transport": "読み取り機の障害です",
    "auth_required": "暗証番号が必要なカードです",
    "card_error": "カードがエラーを返しました",
    "denied": "許可されていない命令を止めました",
    "internal_error": "readerd の内部エラーです",
}
#: A plugin result's ``data.screen.level`` (readerd.plugin.api.Level) as the console marks its line.
SCREEN_LEVELS = {"refusal": "warn", "success": "ok", "info": "info"}
#: Where SQLAlchemy's message turns to the statement, parameters and help link (an older daemon's events).
_SQL_TAIL = ("[SQL: ", "[parameters: ", "(Background on this error at")


def local_time(ts: object) -> datetime | None:
    """A wire timestamp (UTC) as an aware datetime in JST, or None."""
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).astimezone(JST)
    except ValueError:
        return None


def first_line(message: object) -> str:
    """One line of an error message for the console: never a traceback, an SQL statement or a link."""
    text = str(message or "")
    for marker in _SQL_TAIL:
        text = text.split(marker, 1)[0]
    text = text.strip()
    return text.splitlines()[0].strip() if text else ""


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 4 else text[:4] + "…"  # enough to tell two people apart


def _who(data: dict[str, Any]) -> str:
    """Whose card, shortened: the member ID, else the MyKey ID, else the pseudonym (not enrolled)."""
    if data.get("member_id"):
        return f"会員 {_short(data['member_id'])}"
    if data.get("mykey_id"):
        return f"MyKey {_short(data['mykey_id'])}"
    if data.get("pseudonym"):
        return f"未登録 {_short(data['pseudonym'])}"
    return ""


def _plugin_words(plugin: str, event: str, data: dict[str, Any]) -> tuple[str, str]:
    """A plugin result in words: its own ``data.screen`` (from the plugin's declaration) if it has one,
    else the result's name and a few known fields."""
    screen = data.get("screen")
    if isinstance(screen, dict) and isinstance(screen.get("ja"), str) and screen["ja"].strip():
        return f"{plugin}: {first_line(screen['ja'])}", SCREEN_LEVELS.get(str(screen.get("level")), "info")
    parts = [f"{plugin}: {event}"]
    if data.get("status") is not None:
        parts.append(str(data["status"]))
    if data.get("count") is not None:
        parts.append(
            f"{data['count']}/{data['capacity']}" if data.get("capacity") else f"{data['count']} 人目"
        )
    for key, label in (("points", "ポイント"), ("balance", "残高"), ("reason", "理由")):
        if data.get(key) is not None:
            parts.append(f"{label} {data[key]}")
    return " ".join(parts), "info"


def _card_words(kind: str, data: dict[str, Any]) -> tuple[str, str]:
    card = CARD_KINDS.get(str(data.get("kind")), str(data.get("kind") or "カード"))
    who = _who(data)
    if kind == "card.presented":
        return f"カードがかざされました ({card})", "info"
    if kind == "card.identified":
        return f"カード読み取り ({', '.join(x for x in (card, who) if x)})", "ok"
    if kind == "card.removed":
        return f"カードが離されました ({card})", "info"
    if kind == "card.read_aborted":
        reason = str(data.get("reason"))
        return f"読み取り中断: {ABORT_REASONS.get(reason, reason)} ({card})", "warn"
    if kind == "card.authenticated":
        return f"本人確認ができました ({who})" if who else "本人確認ができました", "ok"
    if kind == "card.auth_failed":
        left = f" 残り {data['tries_left']} 回" if data.get("tries_left") is not None else ""
        return f"本人確認できませんでした: {data.get('reason')}{left}", "warn"
    if kind == "card.events_lost":  # the daemon's bus was wedged: the screen asked for another tap
        return f"カードのイベントを {data.get('lost')} 件失いました (もう一度タッチを案内)", "bad"
    return kind, "info"


def event_words(env: Envelope) -> tuple[str, str]:
    """An event as a line a member of staff reads, and its level (info, ok, warn, bad)."""
    kind = str(env.get("type", ""))
    data = env.get("data") or {}
    if kind == "plugin.error":
        quarantined = " 隔離しました" if data.get("quarantined") else ""
        message = first_line(data.get("message"))
        where = f"{data.get('plugin')} ({data.get('hook')})"
        return f"プラグインエラー {where}: {data.get('error')} {message}{quarantined}".rstrip(), "bad"
    if kind == "plugin.handled":  # the host: the plugins are done with a tap
        results = data.get("results")
        count = len(results) if isinstance(results, list) else 0
        if data.get("settled") is False:
            return f"プラグインの処理を打ち切りました (結果 {count} 件、届かない結果あり)", "warn"
        return f"プラグインの処理が終わりました (結果 {count} 件)", "info"
    if kind.startswith("plugin.") and kind.count(".") >= 2:  # plugin.<name>.<event>
        _, plugin, event = kind.split(".", 2)
        return _plugin_words(plugin, event, data)
    if kind.startswith("card."):
        return _card_words(kind, data)
    if kind == "reader.added":
        return f"読み取り機を接続しました ({data.get('backend')})", "ok"
    if kind == "reader.removed":
        return "読み取り機が外れました", "warn"
    if kind == "reader.error":
        return f"読み取り機エラー: {data.get('reason')} {first_line(data.get('message'))}".rstrip(), "bad"
    if kind == "member.withdrawn":
        return f"退会しました ({_who(data)})", "info"
    return kind, "info"


def console_line(env: Envelope) -> dict[str, Any]:
    """One line of the console's event list: the JST time, the reader, the event in words."""
    moment = local_time(env.get("ts"))
    text, level = event_words(env)
    return {
        "seq": env.get("seq"),
        "time": moment.strftime("%H:%M:%S") if moment else "",
        "at": moment.isoformat(timespec="seconds") if moment else "",
        "reader": env.get("reader") or "",
        "type": env.get("type"),
        "text": text,
        "level": level,
    }


def plugin_error_row(env: Envelope) -> dict[str, Any]:
    """A ``plugin.error`` for the console's table: its JST time and a one-line message."""
    data = env.get("data") or {}
    moment = local_time(env.get("ts"))
    return {
        "at": moment.isoformat(timespec="seconds") if moment else "",
        "plugin": data.get("plugin"),
        "hook": data.get("hook"),
        "error": data.get("error"),
        "message": first_line(data.get("message")),
        "quarantined": bool(data.get("quarantined")),
    }


@dataclass
class Stats:
    """The console's figures, built from the feed: taps per hour (UTC hour of ``card.presented``; the
    chart's JST hours in :meth:`taps_chart`) and the tap-to-event latency (``card.presented`` to the
    reader's next ``card.identified`` or ``card.read_aborted``, from the daemon's own timestamps)."""

    taps_per_hour: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    presented_at: dict[str, float] = field(default_factory=dict)

    def add(self, env: Envelope) -> None:
        kind, reader, ts = env.get("type"), str(env.get("reader")), _ts(env)
        if ts is None:
            return
        if kind == "card.presented":
            self.taps_per_hour[str(env["ts"])[:13]] += 1
            self.presented_at[reader] = ts
        elif kind in ("card.identified", "card.read_aborted") and reader in self.presented_at:
            self.latencies_ms.append(round((ts - self.presented_at.pop(reader)) * 1000, 1))

    def as_json(self) -> dict[str, Any]:
        hours = sorted(self.taps_per_hour)[-24:]
        return {
            "taps_per_hour": [{"hour": h, "taps": self.taps_per_hour[h]} for h in hours],
            "latency_ms": list(self.latencies_ms)[-50:],
        }

    def taps_chart(self) -> list[dict[str, Any]]:
        """Taps per JST hour for the chart, the hours without taps included (up to 24, to the last tap's
        hour): ``hour`` (ISO 8601 with ``+09:00``), ``label`` (``19時``) and ``taps``."""
        if not self.taps_per_hour:
            return []
        counts: Counter[datetime] = Counter()
        for key, taps in self.taps_per_hour.items():
            with contextlib.suppress(ValueError):
                counts[datetime.fromisoformat(f"{key}:00+00:00").astimezone(JST)] += taps
        if not counts:
            return []
        last = max(counts)
        first = max(min(counts), last - timedelta(hours=23))
        hours = [first + timedelta(hours=i) for i in range(int((last - first) / timedelta(hours=1)) + 1)]
        return [
            {"hour": h.isoformat(timespec="minutes"), "label": f"{h.hour}時", "taps": counts[h]}
            for h in hours
        ]


def reader_health(readers: list[dict[str, Any]], events: dict[str, Envelope]) -> list[dict[str, Any]]:
    """The console's reader table: the daemon's readers now (``status``), each with its last
    ``reader.error`` if that is the newest news of it, plus readers the bus saw go away
    (``reader.removed``) that the daemon no longer lists, so a reader pulled out stays visible."""
    out: list[dict[str, Any]] = []
    for reader in readers:
        last = events.get(str(reader.get("name")))
        state, since = "ok", None
        if last is not None and last.get("type") == "reader.error":
            state = f"error: {(last.get('data') or {}).get('reason', '?')}"
            since = last.get("ts")
        out.append({**reader, "state": state, "since": since})
    listed = {str(r.get("name")) for r in readers}
    for name, last in sorted(events.items()):
        if name not in listed and last.get("type") == "reader.removed":
            backend = (last.get("data") or {}).get("backend")
            out.append(
                {"name": name, "backend": backend, "card": None, "state": "removed", "since": last.get("ts")}
            )
    return out


class Hub:
    """Follows the bus and fans events out to the browsers' streams; keeps the console's recent events."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.recent: deque[Envelope] = deque(maxlen=settings.events_kept)
        self.stats = Stats()
        self.listeners: set[asyncio.Queue[Envelope]] = set()
        self.connected = False
        self.last_error: str | None = None
        self.reader_events: dict[str, Envelope] = {}  # the last reader.* event of each reader

    async def run(self) -> None:
        """Forever: the client reconnects and catches up by itself; a silent bus is shown, not fatal."""
        s = self.settings
        client = AsyncBusClient(s.publish, s.control, since=None, curve=s.curve)
        try:
            while True:
                try:
                    env = await client.next()
                except BusSilentError as e:
                    self.connected, self.last_error = False, str(e)
                    log.warning("bus silent", error=str(e))
                    continue
                except GapUnrecoverableError as e:
                    self.last_error = str(e)
                    log.warning("events lost for good", oldest_seq=e.oldest_seq)
                    continue
                except Exception as e:  # a screen that stops updating for good is worse than a retry
                    self.connected, self.last_error = False, str(e)
                    log.exception("bus client failed; retrying")
                    await asyncio.sleep(1)
                    continue
                self.connected, self.last_error = True, None
                self.publish(env)
        finally:
            client.close()

    def publish(self, env: Envelope) -> None:
        self.recent.append(env)
        self.stats.add(env)
        kind, reader = str(env.get("type", "")), str(env.get("reader"))
        if kind.startswith("reader.") and env.get("reader"):
            self.reader_events[reader] = env
        elif kind == "card.identified" and self.reader_events.get(reader, {}).get("type") == "reader.error":
            del self.reader_events[reader]  # a card read since: the reader works again
        for queue in list(self.listeners):
            with contextlib.suppress(asyncio.QueueFull):  # a stuck browser loses events, nobody else
                queue.put_nowait(env)

    @contextlib.contextmanager
    def listen(self) -> Iterator[asyncio.Queue[Envelope]]:
        """A queue of every event from now on, for one browser stream, removed when it closes."""
        queue: asyncio.Queue[Envelope] = asyncio.Queue(maxsize=1000)
        self.listeners.add(queue)
        try:
            yield queue
        finally:
            self.listeners.discard(queue)


@dataclass
class KioskSession:
    """One kiosk page's conversation with the daemon: its own DEALER socket (its caller identity), and
    the last-try confirmations handed out with ``auth.begin`` (auth_id -> (confirmation, when))."""

    control: ControlSession
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.monotonic)
    last_try: dict[str, tuple[str, float]] = field(default_factory=dict)


class Sessions:
    """Kiosk pages' control sessions by cookie, opened only with the kiosk secret; idle ones are closed
    (an open event stream keeps its page's session in use)."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self._by_id: OrderedDict[str, KioskSession] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, sid: str | None) -> tuple[str, KioskSession]:
        """The live session of ``sid``, or a new one (the caller has shown the secret)."""
        with self._lock:
            self._expire()
            if sid and sid in self._by_id:
                session = self._by_id[sid]
            else:
                sid = secrets.token_urlsafe(32)
                s = self.settings
                session = KioskSession(ControlSession(s.control, s.request_timeout_ms, s.curve))
                self._by_id[sid] = session
                while len(self._by_id) > MAX_KIOSK_SESSIONS:
                    evicted = self._by_id.popitem(last=False)[1]
                    if evicted.lock.acquire(blocking=False):  # a request in flight: the GC closes it
                        evicted.control.close()
                        evicted.lock.release()
            session.used = time.monotonic()
            return sid, session

    def find(self, sid: str | None) -> KioskSession | None:
        """The live session of ``sid`` (marked used), or None: no session without the secret."""
        with self._lock:
            self._expire()
            session = self._by_id.get(sid) if sid else None
            if session is not None:
                session.used = time.monotonic()
            return session

    def _expire(self) -> None:
        now = time.monotonic()
        for sid, session in list(self._by_id.items()):
            if now - session.used > SESSION_IDLE_S:
                session.control.close()
                del self._by_id[sid]

    def close(self) -> None:
        with self._lock:
            for session in self._by_id.values():
                session.control.close()
            self._by_id.clear()


def _request(session: KioskSession, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    with session.lock:  # a DEALER socket is not thread-safe; one request at a time per page
        return session.control.request(cmd, args)


async def json_body(request: Request) -> dict[str, Any] | None:
    """A POST's JSON object, or None. Only ``application/json`` is taken: a page of another site cannot
    send that type without a CORS preflight, which this app never answers, so a cross-site form cannot
    start a PIN entry or log in to the console."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return None
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _error(status: int, code: str, message: str | None = None, **extra: object) -> JSONResponse:
    error: dict[str, object] = {"code": code, **extra}
    if message:
        error["message"] = message
    return JSONResponse({"ok": False, "error": error}, status_code=status)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _on_loopback(request: Request) -> bool:
    server = request.scope.get("server")
    if not server:
        return False
    try:
        return ipaddress.ip_address(server[0]).is_loopback
    except ValueError:
        return False


def create_app(  # noqa: PLR0915 - the routes share the app's state
    settings: WebSettings, *, run_hub: bool = True, kiosk_secret: str | None = None
) -> Starlette:
    """The ASGI app. ``run_hub=False`` leaves the bus alone (unit tests feed :class:`Hub` directly).
    ``kiosk_secret``: the per-boot secret a kiosk page must show (:func:`readerd.web.serve` writes it for
    the launcher); without one the app makes its own, which nobody knows, so no page gets in."""
    check_console_token(settings.console_token)
    secret = kiosk_secret or secrets.token_urlsafe(32)
    hub = Hub(settings)
    sessions = Sessions(settings)
    # the console's state lives on the event loop's thread only: no locks
    consoles = ConsoleSessions(settings.clock, settings.console_idle, settings.console_max_age)
    throttle = LoginThrottle(settings.clock, settings.console_login_attempts)

    def token_ok(given: str) -> bool:
        token = settings.console_token
        # constant time: the comparison must not tell an attacker how much of a guess was right
        return bool(token) and hmac.compare_digest(given.encode(), token.encode())

    def secure(request: Request) -> bool:
        """Cookies are ``Secure`` unless the page came over loopback (plain http to 127.0.0.1)."""
        return request.url.scheme == "https" or not _on_loopback(request)

    def too_many(wait: float) -> JSONResponse:
        seconds = max(1, math.ceil(wait))
        reply = _error(
            429,
            "too_many_attempts",
            f"too many wrong tokens from this address: try again in {seconds} s",
            retry_after=seconds,
        )
        reply.headers["Retry-After"] = str(seconds)
        return reply

    def console_refusal(request: Request) -> Response | None:
        """None if the request may see the console, else the reply saying why not."""
        if not settings.console_token:
            return _error(401, "console_closed", "web.console_token is not set: the console is closed")
        cookie = request.cookies.get(CONSOLE_COOKIE)
        auth = request.headers.get("authorization", "")
        if cookie is None and auth.startswith("Bearer "):
            address = _client(request)
            wait = throttle.wait(address)
            if wait > 0:
                return too_many(wait)
            if token_ok(auth.removeprefix("Bearer ")):
                throttle.succeeded(address)
                return None
            lockout = throttle.failed(address)
            log.warning("console token refused", client=address, via="bearer", lockout_s=lockout or None)
            return _error(401, "wrong_token")
        why = consoles.check(cookie)
        return None if why is None else _error(401, why, "log in with the console token")

    async def index(_request: Request) -> Response:
        return RedirectResponse("/kiosk")

    async def kiosk_page(_request: Request) -> Response:
        return FileResponse(STATIC / "kiosk.html", headers={"Cache-Control": "no-store"})

    async def console_page(_request: Request) -> Response:
        return FileResponse(STATIC / "console.html", headers={"Cache-Control": "no-store"})

    def no_kiosk_session() -> Response:
        return JSONResponse({"ok": False, "error": NO_KIOSK_SESSION}, status_code=403)

    async def kiosk_open(request: Request) -> Response:
        """The page shows the per-boot secret once (from the launcher, in the URL's fragment, which is
        sent to no server) and gets an HttpOnly cookie for its session."""
        body = await json_body(request)
        if body is None or not secret_matches(body.get("secret"), secret):
            log.warning("kiosk session refused: no or wrong secret", client=_client(request))
            return no_kiosk_session()
        sid, _session = sessions.open(request.cookies.get(KIOSK_COOKIE))
        response = JSONResponse({"ok": True})
        response.set_cookie(
            KIOSK_COOKIE, sid, path="/api/kiosk", httponly=True, samesite="strict", secure=secure(request)
        )
        return response

    async def kiosk_events(request: Request) -> Response:
        session = sessions.find(request.cookies.get(KIOSK_COOKIE))
        if session is None:
            return no_kiosk_session()
        reader = request.query_params.get("reader") or None
        readers = await run_in_threadpool(_reader_names, session)
        return StreamingResponse(
            _stream(request, lambda env: _for_reader(env, reader), session, {"readers": readers}),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def _for_reader(env: Envelope, reader: str | None) -> Envelope | None:
        return kiosk_view(env) if reaches_screen(env, reader) else None

    async def _stream(
        request: Request,
        view: Callable[[Envelope], Envelope | None],
        session: KioskSession,
        hello: dict[str, Any] | None = None,
    ) -> AsyncIterator[bytes]:
        with hub.listen() as queue:
            yield _sse("hello", {"connected": hub.connected, **(hello or {})})
            while not await request.is_disconnected():
                session.used = time.monotonic()  # a page on screen keeps its session
                try:
                    env = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                shown = view(env)
                if shown is not None:
                    yield _sse("bus", shown)

    def last_try_refusal(
        session: KioskSession, body: dict[str, Any], args: dict[str, Any]
    ) -> Response | None:
        """``allow_last_try: true`` goes to the daemon only with the confirmation this app gave with the
        same ``auth_id``'s ``auth.begin`` (one use, this page's session only): the page sends it when the
        citizen presses the confirm key under the last-try warning. Anything else is refused here, before
        the daemon (and the card) see the PIN."""
        auth_id = body.get("auth_id")
        pending = session.last_try.pop(auth_id, None) if isinstance(auth_id, str) else None
        allow = body.get("allow_last_try", False)
        if allow is False:
            return None
        if allow is not True:
            return _error(400, "bad_request", "allow_last_try is true or false")
        fresh = pending is not None and settings.clock() - pending[1] <= LAST_TRY_CONFIRMATION_S
        if pending is None or not fresh or not secret_matches(body.get("confirmation"), pending[0]):
            log.warning("allow_last_try without the on-screen confirmation refused")
            return _error(
                409,
                "last_try_confirmation_required",
                "one try is left: show the last-try warning and send the confirmation of this auth_id's "
                "auth.begin (result.last_try_confirmation) when the citizen presses the confirm key",
            )
        args["allow_last_try"] = True
        return None

    def offer_confirmation(session: KioskSession, reply: dict[str, Any]) -> None:
        """``auth.begin`` said ``last_try``: a one-time confirmation bound to this session and auth_id."""
        now = settings.clock()
        for auth_id, (_c, at) in list(session.last_try.items()):
            if now - at > LAST_TRY_CONFIRMATION_S:
                del session.last_try[auth_id]
        result = reply.get("result") if reply.get("ok") else None
        if (
            isinstance(result, dict)
            and result.get("last_try") is True
            and isinstance(result.get("auth_id"), str)
        ):
            confirmation = secrets.token_urlsafe(16)
            session.last_try[result["auth_id"]] = (confirmation, now)
            result["last_try_confirmation"] = confirmation

    async def kiosk_command(request: Request) -> Response:
        """``auth.begin`` and ``auth.pin`` for the PIN screen, in a POST body (never a URL, so a PIN is in
        no access log), through this page's own control session. The PIN is never logged or kept."""
        session = sessions.find(request.cookies.get(KIOSK_COOKIE))
        if session is None:
            return no_kiosk_session()
        cmd = request.path_params["cmd"]
        if cmd not in ("auth.begin", "auth.pin"):
            return _error(404, "unknown_command")
        body = await json_body(request)
        if body is None:
            return _error(400, "bad_request")
        args: dict[str, Any] = {k: body[k] for k in KIOSK_ARGS if k in body}
        if cmd == "auth.pin":
            refusal = last_try_refusal(session, body, args)
            if refusal is not None:
                return refusal
        try:
            reply = await run_in_threadpool(_request, session, cmd, args)
        except Unreachable as e:
            log.warning("daemon unreachable", cmd=cmd, error=str(e))
            reply = {"ok": False, "error": {"code": "unreachable", "message": str(e)}}
        reply.pop("id", None)
        if cmd == "auth.begin":
            offer_confirmation(session, reply)
        return JSONResponse(reply)

    async def console_login(request: Request) -> Response:
        address = _client(request)
        wait = throttle.wait(address)
        if wait > 0:
            return too_many(wait)
        body = await json_body(request)
        token = str(body.get("token", "")) if body is not None else ""
        if not token_ok(token):
            lockout = throttle.failed(address)
            log.warning("console login refused", client=address, lockout_s=lockout or None)
            return _error(401, "wrong_token")
        throttle.succeeded(address)
        response = JSONResponse({"ok": True})
        response.set_cookie(
            CONSOLE_COOKIE,
            consoles.open(),
            max_age=int(settings.console_max_age),
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        return response

    async def console_logout(request: Request) -> Response:
        consoles.close(request.cookies.get(CONSOLE_COOKIE))
        response = JSONResponse({"ok": True})
        response.delete_cookie(
            CONSOLE_COOKIE, path="/", httponly=True, samesite="strict", secure=secure(request)
        )
        return response

    async def console_state(request: Request) -> Response:
        refusal = console_refusal(request)
        if refusal is not None:
            return refusal

        def ask(cmd: str) -> dict[str, Any]:
            s = settings
            try:
                with ControlSession(s.control, s.request_timeout_ms, s.curve) as session:
                    return session.request(cmd)
            except Unreachable as e:
                return {"ok": False, "error": {"code": "unreachable", "message": str(e)}}

        def ask_fleet(kiosk: FleetKiosk) -> dict[str, Any]:
            try:
                with ControlSession(kiosk.control, settings.fleet_timeout_ms, kiosk.curve) as session:
                    return fleet_row(kiosk.name, session.request("status"))
            except Unreachable:
                return fleet_row(kiosk.name, {"ok": False, "error": {"code": "unreachable"}})

        fleet = asyncio.gather(*(run_in_threadpool(ask_fleet, kiosk) for kiosk in settings.fleet))
        status, plugins = await run_in_threadpool(lambda: (ask("status"), ask("plugins")))
        others = await fleet
        errors = [plugin_error_row(e) for e in hub.recent if e.get("type") == "plugin.error"]
        readers = ((status.get("result") or {}).get("readers") or []) if status.get("ok") else []
        return JSONResponse(
            {
                "ok": True,
                "bus": {"connected": hub.connected, "error": hub.last_error},
                "status": status.get("result") if status.get("ok") else None,
                "status_error": None if status.get("ok") else status.get("error"),
                "plugins": plugins.get("result") if plugins.get("ok") else None,
                "plugin_errors": errors[-20:],
                "recent": list(hub.recent)[-50:][::-1],
                "lines": [console_line(e) for e in list(hub.recent)[-50:][::-1]],
                "time_zone": TIME_ZONE,
                "taps_chart": hub.stats.taps_chart(),
                "readers": reader_health(readers, hub.reader_events),
                "fleet": [fleet_row("(this kiosk)", status), *others] if settings.fleet else [],
                **hub.stats.as_json(),
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run()) if run_hub else None
        log.info("web app started", publish=settings.publish, control=settings.control)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            sessions.close()

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/kiosk", kiosk_page),
            Route("/console", console_page),
            Route("/api/kiosk/session", kiosk_open, methods=["POST"]),
            Route("/api/kiosk/events", kiosk_events),
            Route("/api/kiosk/{cmd}", kiosk_command, methods=["POST"]),
            Route("/api/console/login", console_login, methods=["POST"]),
            Route("/api/console/logout", console_logout, methods=["POST"]),
            Route("/api/console/state", console_state),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(HostCheck, hosts=settings.hosts)],
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app
