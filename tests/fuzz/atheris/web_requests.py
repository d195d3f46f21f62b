"""What ``readerd web`` parses from a browser or the LAN, through the ASGI app itself, in process.

Each input is one HTTP request, as an HTTP server would hand it to the app (uvicorn's rules: a
visible-ASCII target split at ``?`` and percent-decoded; header values without NUL, CR or LF): the
method, path and query (the routes, ``/static/`` file names, ``?reader=``), the ``Host`` header and the
address the connection came to (:class:`readerd.web.guard.HostCheck`), ``Content-Type`` and the JSON
body (``json_body``, the kiosk secret, ``auth.begin``/``auth.pin`` arguments, ``allow_last_try`` and
its confirmation, the console login), ``Cookie`` (kiosk and console sessions) and ``Authorization``
(the console's bearer token, the login throttle per client address).

Layout: byte 0 picks the client address (``10.0.0.N``), the server address and the scheme; then the
fields method, target, Host, Content-Type, Cookie, Authorization, each a length byte and its bytes,
and the body last (the rest). So that inputs can get past the guards, the harness substitutes
placeholders: ``@K``/``@C`` by a live kiosk/console session id, ``@S``/``@T`` by the kiosk
secret/console token, ``@P`` by the PIN, ``@F`` by the last last-try confirmation the app handed out.

The daemon behind the app is not under test here (the control_requests harness fuzzes its side): its
answers are canned, from a stand-in for ``ControlSession`` that also checks that only the arguments a
kiosk page may pass reach it. What may come out: a response whose status is one the app or Starlette
gives for a bad request (never 500: Starlette re-raises the exception, a finding), whose JSON, when
it is JSON, is an ``{"ok": ...}`` object with a string error code, and which never carries the kiosk
secret, the console token or a PIN."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

from starlette.types import Message

from tests.fuzz.atheris._common import instrument, run, split_answers

with instrument():
    from readerd.web import app as web_app
    from readerd.web.app import KIOSK_ARGS, WebSettings, create_app

#: The modules scripts/fuzz reports coverage of (a replay of the corpus under coverage.py: _replay.py).
TARGETS = ("readerd.web.app", "readerd.web.guard")

SECRET = "S" * 43  # the kiosk page's per-boot secret (43 base64url characters)
TOKEN = "Zk3q-9vT_x1LmB7pQ2wR8sYcD4"  # noqa: S105 - the console token of this app (156 bits)
PIN = "48270613"  # the app passes any string on: eight digits, which no random session id will contain
METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"G\xe9T")
SERVERS = (("127.0.0.1", 8080), ("192.168.10.5", 80), ("::1", 8443), None)
STATUSES = {200, 307, 400, 401, 403, 404, 405, 409, 421, 429}
#: Fresh kiosk and console sessions this often (the console's idle timeout runs on the harness clock).
REFRESH_EVERY = 500


class Clock:
    """The app's clock (console sessions, login throttle, confirmations): a second per request, so that
    lockouts start and end within a run, and the same input does the same thing whenever it runs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CannedDaemon:
    """Stands in for :class:`readerd.bus.control_client.ControlSession`: the daemon's answers, canned."""

    REPLIES: ClassVar[dict[str, dict[str, Any]]] = {
        "readers": {"ok": True, "result": {"readers": [{"name": "R1"}, {"name": "R2"}, "x"]}},
        "auth.begin": {"ok": True, "result": {"auth_id": "A1", "last_try": True, "tries_left": 1}},
        "auth.pin": {"ok": False, "error": {"code": "pin_wrong", "tries_left": 0}},
        "status": {"ok": True, "result": {"readers": [{"name": "R1", "state": "ready"}], "kiosk": "k"}},
        "plugins": {"ok": True, "result": {"plugins": []}},
    }

    def __init__(self, endpoint: str, timeout_ms: int = 0, curve: object = None) -> None:
        self.endpoint = endpoint

    def request(
        self, cmd: str, args: dict[str, Any] | None = None, timeout_ms: int | None = None
    ) -> dict[str, Any]:
        passed = set(args or {}) - {*KIOSK_ARGS, "allow_last_try"}
        if passed:
            raise AssertionError(f"{cmd} passed {sorted(passed)} on to the daemon")
        reply = self.REPLIES.get(cmd, {"ok": False, "error": {"code": "unknown_command"}})
        copy: dict[str, Any] = json.loads(json.dumps(reply))  # a fresh copy, as off the wire
        return copy

    def close(self) -> None:
        pass

    def __enter__(self) -> CannedDaemon:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass


web_app.ControlSession = CannedDaemon  # type: ignore[attr-defined,assignment] # the daemon is canned
CLOCK = Clock()
APP = create_app(
    WebSettings(publish="tcp://127.0.0.1:1", control="tcp://127.0.0.1:1", console_token=TOKEN, clock=CLOCK),
    run_hub=False,
    kiosk_secret=SECRET,
)
LOOP = asyncio.new_event_loop()


async def _forever() -> None:
    await asyncio.Event().wait()


# The app runs on one event loop in a thread of its own, whose root task never ends: Starlette's
# run_in_threadpool (anyio) keeps its worker threads for as long as the root task lives, where a
# run_until_complete per input would start a thread per request (two thirds of the time went there).
threading.Thread(target=LOOP.run_until_complete, args=(_forever(),), daemon=True, name="web-loop").start()
#: The harness's own requests (sessions) come from an address no input uses, so no lockout hits them.
OWN_ADDRESS = "10.9.9.9"


@dataclass
class State:
    """What the harness keeps between inputs: the live sessions and the last confirmation."""

    kiosk: str = ""
    console: str = ""
    confirmation: str = ""
    requests: int = 0


STATE = State()


def _header(value: bytes) -> bytes:
    """A header value as an HTTP server passes it on: no NUL, CR or LF, no surrounding blanks."""
    return bytes(b for b in value if b not in (0, 10, 13)).strip(b" \t")


async def _call(scope: dict[str, Any], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await APP(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start.get("headers", [])), content


def request(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    client: str = OWN_ADDRESS,
    server: tuple[str, int] | None = ("127.0.0.1", 8080),
    scheme: str = "http",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request through the app: status, headers and body of the response."""
    target = bytes(b for b in target if 0x21 <= b <= 0x7E) or b"/"
    raw_path, _, query = target.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.decode("latin-1"),
        "scheme": scheme,
        "path": unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": (client, 50000),
        "server": server,
    }
    return asyncio.run_coroutine_threadsafe(_call(scope, body), LOOP).result()


def _cookie(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"set-cookie":
            return value.split(b";")[0].split(b"=", 1)[1].decode()
    raise AssertionError("no session cookie set")


def _refresh() -> None:
    """A live kiosk session (the page showed the secret) and a console session (logged in)."""
    host = [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json")]
    opening = json.dumps({"secret": SECRET}).encode()
    status, headers, _ = request(b"POST", b"/api/kiosk/session", host, opening)
    if status != 200:
        raise AssertionError(f"the kiosk session did not open: {status}")
    STATE.kiosk = _cookie(headers)
    status, headers, _ = request(b"POST", b"/api/console/login", host, json.dumps({"token": TOKEN}).encode())
    if status != 200:
        raise AssertionError(f"the console login failed: {status}")
    STATE.console = _cookie(headers)


def _fill(value: bytes) -> bytes:
    for mark, live in ((b"@K", STATE.kiosk), (b"@C", STATE.console), (b"@F", STATE.confirmation)):
        value = value.replace(mark, live.encode())
    for mark, fixed in ((b"@S", SECRET), (b"@T", TOKEN), (b"@P", PIN)):
        value = value.replace(mark, fixed.encode())
    return value


def _check(status: int, headers: list[tuple[bytes, bytes]], content: bytes) -> None:
    if status not in STATUSES:
        raise AssertionError(f"status {status}")
    for secret in (SECRET.encode(), TOKEN.encode(), PIN.encode()):
        if status == 421:  # the refused Host is quoted back to whoever sent it, nothing else: no leak
            break
        if secret in content or any(secret in value for _, value in headers):
            raise AssertionError(f"the response carries {secret!r}")
    if (b"content-type", b"application/json") not in headers:
        return
    reply = json.loads(content)
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise AssertionError(f"not an ok/error reply: {content[:200]!r}")
    if not reply["ok"] and not isinstance((reply.get("error") or {}).get("code"), str):
        raise AssertionError(f"an error without a code: {content[:200]!r}")
    result = reply.get("result")
    if isinstance(result, dict) and isinstance(result.get("last_try_confirmation"), str):
        STATE.confirmation = result["last_try_confirmation"]


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    if STATE.requests % REFRESH_EVERY == 0:
        _refresh()
    STATE.requests += 1
    CLOCK.now += 1.0
    mode, fields = data[0], split_answers(data[1:], limit=7)
    fields += [b""] * (7 - len(fields))
    method, target, host, content_type, cookie, authorization, body = fields
    method = method if 0 < len(method) <= 8 and method.isalpha() else METHODS[len(method) % len(METHODS)]
    headers = [
        (name, _header(_fill(value)))
        for name, value in (
            (b"host", host),
            (b"content-type", content_type),
            (b"cookie", cookie),
            (b"authorization", authorization),
        )
        if value
    ]
    status, response_headers, content = request(
        method,
        target,
        headers,
        _fill(body),
        client=f"10.0.0.{mode >> 3}",
        server=SERVERS[mode & 3],
        scheme="https" if mode & 4 else "http",
    )
    _check(status, response_headers, content)


if __name__ == "__main__":
    run(TestOneInput)
