"""The web_requests harness's seeds get where they are named for, and its checks catch what they must.

A harness whose inputs all stop at the Host check or at a missing session would still run and find
nothing: these tests pin that the placeholders (``@S``, ``@K``, ``@T``, ``@P``, ``@F``) open the guarded
routes and that ``_check`` refuses a 500, a leaked secret and an error without a code. They run in a
subprocess of their own, because importing the harness swaps ``ControlSession`` in ``readerd.web.app``
for its canned daemon (about 1 s).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tests.support.chromium import missing

ROOT = Path(__file__).resolve().parents[2]

#: Seed -> the status the app must answer it with (in this order: the console seeds log out last).
EXPECTED = {
    "index": 307,
    "kiosk-page": 200,
    "static": 200,
    "static-traversal": 404,
    "host-refused": 421,
    "host-lan-port80": 200,
    "kiosk-open": 200,
    "kiosk-open-wrong": 403,
    "kiosk-events": 200,
    "auth-begin": 200,
    "auth-pin-last-try": 200,
    "auth-pin": 200,
    "kiosk-unknown-cmd": 404,
    "console-login": 200,
    "console-login-wrong": 401,
    "console-state-bearer": 200,
    "console-state-bearer-wrong": 401,
    "console-state-cookie": 200,
    "console-logout": 200,
}

SCRIPT = """
import contextlib, json, sys
from pathlib import Path
from tests.fuzz.atheris import _common
_common.instrument = contextlib.nullcontext
from tests.fuzz.atheris import web_requests as w

seen = {}
check = w._check
def recording(status, headers, content):
    seen[current] = status
    check(status, headers, content)
w._check = recording
for current in json.loads(sys.argv[1]):
    w.TestOneInput(Path("tests/fuzz/corpus/web_requests", current).read_bytes())

refused = {}
for name, response in {
    "500": (500, [], b""),
    "secret": (200, [(b"content-type", b"text/plain")], w.SECRET.encode()),
    "pin": (200, [(b"set-cookie", w.PIN.encode())], b""),
    "no code": (400, [(b"content-type", b"application/json")], b'{"ok": false, "error": {}}'),
}.items():
    try:
        check(*response)
    except AssertionError as e:
        refused[name] = str(e)
print(json.dumps({"seen": seen, "refused": refused}))
"""


def _run() -> dict[str, dict[str, object]]:
    if importlib.util.find_spec("atheris") is None:
        missing("atheris is not installed (the [dev] extra)")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(list(EXPECTED))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, dict[str, object]] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_the_seeds_reach_their_routes_and_the_checks_refuse_what_they_must() -> None:
    result = _run()
    assert result["seen"] == EXPECTED
    assert sorted(result["refused"]) == ["500", "no code", "pin", "secret"]
