"""``readerd web``: the kiosk screen and the operator console, a small Starlette app on the daemon's bus.

Why a separate process and not a part of the daemon: a browser, a web server and their bugs must never
be able to delay card reading, and the app is just another bus client (docs/clients.md): it follows the
public feed with :class:`readerd.bus.client.AsyncBusClient` (gap-free, CURVE on a LAN) and sends commands
through :class:`readerd.bus.control_client.ControlSession`, one per kiosk page, because the daemon binds
an ``auth_id`` to the socket that asked for it.

Browsers get events over Server-Sent Events (plain ``text/event-stream``: one-way is all a screen needs,
and it reconnects by itself). The kiosk feed is reduced to what a screen shows: plugin results as the
plugin published them, card events without pseudonyms or member IDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from readerd import logging as rlog
from readerd.bus.client import AsyncBusClient, CurveKeys
from readerd.bus.control_client import ControlSession, Unreachable
from readerd.errors import BusSilentError, GapUnrecoverableError

log = rlog.get_logger("readerd.web")

STATIC = Path(__file__).parent / "static"
KIOSK_COOKIE = "readerd_kiosk"
CONSOLE_COOKIE = "readerd_console"
SESSION_IDLE_S = 600.0  # a kiosk page's control session is closed after this long unused
SSE_KEEPALIVE_S = 10.0
# What of a card event a kiosk screen may see: the kind of card, why a read failed, tries left. Never
# the pseudonym, member or MyKey ID (the screen is in a public place).
KIOSK_CARD_FIELDS = ("kind", "reason", "error", "tries_left", "repeat", "expires_within_days")

KIOSK_ARGS = ("reader", "auth_id", "pin", "allow_last_try")  # what a kiosk page may pass on

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
    else:
        return None
    return {"type": kind, "reader": env.get("reader"), "seq": env.get("seq"), "data": shown}


def _ts(env: Envelope) -> float | None:
    try:
        return datetime.fromisoformat(str(env["ts"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


@dataclass
class Stats:
    """The console's figures, built from the feed: taps per hour (UTC hour of ``card.presented``) and the
    tap-to-event latency (``card.presented`` to the reader's next ``card.identified`` or
    ``card.read_aborted``, from the daemon's own timestamps)."""

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
    """One kiosk page's conversation with the daemon: its own DEALER socket (its caller identity)."""

    control: ControlSession
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.monotonic)


class Sessions:
    """Kiosk pages' control sessions by cookie; idle ones are closed."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self._by_id: dict[str, KioskSession] = {}
        self._lock = threading.Lock()

    def get(self, sid: str | None) -> tuple[str, KioskSession]:
        with self._lock:
            self._expire()
            if sid and sid in self._by_id:
                session = self._by_id[sid]
            else:
                sid = secrets.token_urlsafe(24)
                s = self.settings
                session = KioskSession(ControlSession(s.control, s.request_timeout_ms, s.curve))
                self._by_id[sid] = session
            session.used = time.monotonic()
            return sid, session

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


def create_app(settings: WebSettings, *, run_hub: bool = True) -> Starlette:  # noqa: PLR0915 - routes
    """The ASGI app. ``run_hub=False`` leaves the bus alone (unit tests feed :class:`Hub` directly)."""
    hub = Hub(settings)
    cookie_key = secrets.token_bytes(32)
    sessions = Sessions(settings)

    def token_ok(given: str) -> bool:
        token = settings.console_token
        # constant time: the comparison must not tell an attacker how much of a guess was right
        return bool(token) and hmac.compare_digest(given.encode(), token.encode())

    def cookie_value() -> str:
        """What the console's cookie holds: a MAC of the token under a key of this process, so the token
        itself is not in the browser and a restart of ``readerd web`` logs everyone out."""
        return hmac.new(cookie_key, settings.console_token.encode(), "sha256").hexdigest()

    def console_allowed(request: Request) -> bool:
        if not settings.console_token:
            return False
        cookie = request.cookies.get(CONSOLE_COOKIE)
        if cookie is not None:
            return hmac.compare_digest(cookie.encode(), cookie_value().encode())
        auth = request.headers.get("authorization", "")
        return auth.startswith("Bearer ") and token_ok(auth.removeprefix("Bearer "))

    async def index(_request: Request) -> Response:
        return RedirectResponse("/kiosk")

    async def kiosk_page(_request: Request) -> Response:
        return FileResponse(STATIC / "kiosk.html", headers={"Cache-Control": "no-store"})

    async def console_page(_request: Request) -> Response:
        return FileResponse(STATIC / "console.html", headers={"Cache-Control": "no-store"})

    async def kiosk_events(request: Request) -> Response:
        reader = request.query_params.get("reader") or None
        return StreamingResponse(
            _stream(request, lambda env: _for_reader(env, reader)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def _for_reader(env: Envelope, reader: str | None) -> Envelope | None:
        if reader is not None and env.get("reader") != reader:
            return None
        return kiosk_view(env)

    async def _stream(request: Request, view: Callable[[Envelope], Envelope | None]) -> AsyncIterator[bytes]:
        with hub.listen() as queue:
            yield _sse("hello", {"connected": hub.connected})
            while not await request.is_disconnected():
                try:
                    env = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                shown = view(env)
                if shown is not None:
                    yield _sse("bus", shown)

    async def kiosk_command(request: Request) -> Response:
        """``auth.begin`` and ``auth.pin`` for the PIN screen, in a POST body (never a URL, so a PIN is in
        no access log), through this page's own control session."""
        cmd = request.path_params["cmd"]
        if cmd not in ("auth.begin", "auth.pin"):
            return JSONResponse({"ok": False, "error": {"code": "unknown_command"}}, status_code=404)
        body = await json_body(request)
        if body is None:
            return JSONResponse({"ok": False, "error": {"code": "bad_request"}}, status_code=400)
        args: dict[str, Any] = {
            k: body[k] for k in ("reader", "auth_id", "pin", "allow_last_try") if k in body
        }
        sid, session = sessions.get(request.cookies.get(KIOSK_COOKIE))
        try:
            reply = await run_in_threadpool(_request, session, cmd, args)
        except Unreachable as e:
            log.warning("daemon unreachable", cmd=cmd, error=str(e))
            reply = {"ok": False, "error": {"code": "unreachable", "message": str(e)}}
        reply.pop("id", None)
        response = JSONResponse(reply)
        response.set_cookie(KIOSK_COOKIE, sid, httponly=True, samesite="strict")
        return response

    async def console_login(request: Request) -> Response:
        body = await json_body(request)
        token = str(body.get("token", "")) if body is not None else ""
        if not token_ok(token):
            log.warning("console login refused", client=request.client.host if request.client else None)
            return JSONResponse({"ok": False}, status_code=401)
        response = JSONResponse({"ok": True})
        response.set_cookie(CONSOLE_COOKIE, cookie_value(), httponly=True, samesite="strict")
        return response

    async def console_state(request: Request) -> Response:
        if not console_allowed(request):
            return JSONResponse({"ok": False}, status_code=401)

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
        errors = [e for e in hub.recent if e.get("type") == "plugin.error"]
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
            Route("/api/kiosk/events", kiosk_events),
            Route("/api/kiosk/{cmd}", kiosk_command, methods=["POST"]),
            Route("/api/console/login", console_login, methods=["POST"]),
            Route("/api/console/state", console_state),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.hub = hub
    return app
