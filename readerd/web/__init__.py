"""The kiosk screen and the operator console (``readerd web``, docs/web.md).

:func:`serve` runs the app in the foreground (the command line); :class:`WebServer` runs it on a thread
and an ephemeral port, for tests and for embedding.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import uvicorn

from readerd import logging as rlog
from readerd.web.app import FleetKiosk, WebSettings, create_app, with_web_config
from readerd.web.guard import check_console_token, default_secret_file, ensure_kiosk_secret, token_urlsafe

__all__ = ["FleetKiosk", "WebServer", "WebSettings", "create_app", "serve", "with_web_config"]

log = rlog.get_logger("readerd.web")


def _config(settings: WebSettings, host: str, port: int, kiosk_secret: str) -> uvicorn.Config:
    # No access log: nothing secret is in a URL (the PIN goes in a POST body, the kiosk secret in a
    # fragment), but the log would still record which kiosk page was used when, which the daemon's own
    # event log already keeps.
    return uvicorn.Config(
        create_app(settings, kiosk_secret=kiosk_secret),
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )


def kiosk_secret_path(settings: WebSettings) -> Path:
    """``web.kiosk_secret_file``, or the runtime directory's ``kiosk-secret``."""
    return Path(settings.kiosk_secret_file) if settings.kiosk_secret_file else default_secret_file()


def serve(settings: WebSettings, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM (uvicorn handles both). ConfigError (exit 78) for a weak console token or
    a kiosk secret file that cannot be written, before anything listens."""
    check_console_token(settings.console_token)  # first: the token is what an operator must fix
    path = kiosk_secret_path(settings)
    config = _config(settings, host, port, ensure_kiosk_secret(path, settings.kiosk_secret_group))
    log.info("kiosk secret ready", file=str(path), group=settings.kiosk_secret_group or None)
    uvicorn.Server(config).run()


class WebServer:
    """``readerd web`` on a thread: ``with WebServer(settings) as web: web.url``. The kiosk secret is
    written to ``settings.kiosk_secret_file`` when that is set, else kept in memory only
    (``web.kiosk_secret``): a test or an embedding application hands it to its page itself."""

    def __init__(self, settings: WebSettings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        if settings.kiosk_secret_file:
            self.kiosk_secret = ensure_kiosk_secret(
                Path(settings.kiosk_secret_file), settings.kiosk_secret_group
            )
        else:
            self.kiosk_secret = token_urlsafe()
        self._server = uvicorn.Server(_config(settings, host, port, self.kiosk_secret))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)
        self.url = ""

    def start(self, timeout: float = 10.0) -> WebServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("readerd web did not start")
            time.sleep(0.01)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
