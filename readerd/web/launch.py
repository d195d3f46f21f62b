"""The local kiosk launcher: ``python -m readerd.web.launch --reader NAME``, run in the kiosk session.

It reads the per-boot kiosk secret (a file only the kiosk session's group can read, written by
``readerd web``), writes a launch page of its own (0600 in ``$XDG_RUNTIME_DIR/readerd-kiosk/``) that sends
the browser on to ``/kiosk?reader=NAME#secret=...``, and runs chromium full screen on that file.

Why a file and not the URL on chromium's command line: every local account can read a process's command
line (``/proc/PID/cmdline``). The secret travels in the URL's fragment, which a browser sends to no server
(so it is in no access log and no ``Referer``); the page takes it out of the address at once and shows it
to ``readerd web`` once, in a POST body, for an HttpOnly session cookie (docs/web.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from readerd.exitcodes import ExitCode

DEFAULT_URL = "http://127.0.0.1:8470"
UNIT_SECRET_FILE = Path("/run/readerd-web/kiosk-secret")  # the unit's RuntimeDirectory= (0711)
CHROMIUM_FLAGS = (
    "--kiosk",
    "--noerrdialogs",
    "--disable-translate",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
)


def default_secret_files() -> list[Path]:
    """Where ``readerd web`` writes the secret by default: its unit's runtime directory, or (run by hand
    in this session) the session's own."""
    files = [UNIT_SECRET_FILE]
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "readerd-web" / "kiosk-secret")
    return files


def read_secret(candidates: Sequence[Path], wait: float = 0.0) -> str:
    """The secret from the first of ``candidates`` that exists, waiting up to ``wait`` seconds for
    ``readerd web`` to write it. PermissionError: this user is not in ``web.kiosk_secret_group``."""
    deadline = time.monotonic() + wait
    while True:
        for path in candidates:
            if path.exists():
                secret = path.read_text(encoding="ascii").strip()
                if secret:
                    return secret
        if time.monotonic() >= deadline:
            raise FileNotFoundError(", ".join(str(p) for p in candidates))
        time.sleep(0.2)


def kiosk_url(base: str, reader: str, secret: str, **params: str) -> str:
    """The kiosk page of ``reader`` with the secret in the fragment (``params``: ``lang``, ``hold``)."""
    query = urllib.parse.urlencode({"reader": reader, **params}, quote_via=urllib.parse.quote)
    return f"{base.rstrip('/')}/kiosk?{query}#secret={urllib.parse.quote(secret, safe='')}"


def write_launch_page(url: str, directory: Path, reader: str) -> Path:
    """A page that replaces itself by ``url``, 0600 in a 0700 directory of this user."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    name = "kiosk-" + hashlib.sha256(reader.encode()).hexdigest()[:12] + ".html"
    target = json.dumps(url).replace("<", "\\u003c")
    page = (
        '<!doctype html>\n<meta charset="utf-8">\n<meta name="referrer" content="no-referrer">\n'
        f"<title>readerd kiosk</title>\n<script>location.replace({target});</script>\n"
    )
    path = directory / name
    tmp = directory / f".{name}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m readerd.web.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--reader", required=True, help="the reader's name, as `readerctl readers` lists it")
    parser.add_argument("--lang", choices=["ja", "en"], help="the page's language (default ja)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"readerd web's address (default {DEFAULT_URL})")
    parser.add_argument("--secret-file", type=Path, help="web.kiosk_secret_file (default: readerd web's)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the secret (60)")
    parser.add_argument("--browser", default="chromium", help="the browser to run (default chromium)")
    parser.add_argument("--no-exec", action="store_true", help="write the launch page, print its path")
    parser.add_argument("browser_args", nargs="*", help="after --: more flags for the browser")
    args = parser.parse_args(argv)
    candidates = [args.secret_file] if args.secret_file else default_secret_files()
    try:
        secret = read_secret(candidates, args.wait)
    except FileNotFoundError as e:
        print(f"no kiosk secret in {e}: is readerd web running? (docs/web.md)", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except PermissionError as e:
        print(f"{e.filename}: not readable; add this user to web.kiosk_secret_group", file=sys.stderr)
        return ExitCode.CONFIG
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        print("XDG_RUNTIME_DIR is not set: run this in the kiosk's session", file=sys.stderr)
        return ExitCode.CONFIG
    params = {"lang": args.lang} if args.lang else {}
    page = write_launch_page(
        kiosk_url(args.url, args.reader, secret, **params), Path(runtime) / "readerd-kiosk", args.reader
    )
    if not args.no_exec:
        argv_browser = [args.browser, *CHROMIUM_FLAGS, *args.browser_args, page.as_uri()]
        os.execvp(args.browser, argv_browser)  # noqa: S606 - the kiosk session's own browser
    print(page)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
