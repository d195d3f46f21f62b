"""The kiosk screen and the operator console (``readerd web``, docs/web.md).

:func:`serve` runs the app in the foreground (the command line); :class:`WebServer` runs it on a thread
and an ephemeral port, for tests and for embedding.
"""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn

from readerd.web.app import FleetKiosk, WebSettings, create_app

__all__ = ["FleetKiosk", "WebServer", "WebSettings", "create_app", "serve"]


def _config(settings: WebSettings, host: str, port: int) -> uvicorn.Config:
    # No access log: nothing secret is in a URL (the PIN goes in a POST body), but the log would still
    # record which kiosk page was used when, which the daemon's own event log already keeps.
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )


def serve(settings: WebSettings, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM (uvicorn handles both)."""
    uvicorn.Server(_config(settings, host, port)).run()


class WebServer:
    """``readerd web`` on a thread: ``with WebServer(settings) as web: web.url``."""

    def __init__(self, settings: WebSettings, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = uvicorn.Server(_config(settings, host, port))
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
