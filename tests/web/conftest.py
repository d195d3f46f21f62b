"""Fixtures for the web screens: a daemon on the sim backend with the check-in plugin, ``readerd web`` on
a thread, and Debian's chromium driven headless by Playwright (tests/support/chromium.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from readerd.config import PluginsConfig
from readerd.testing import RunningDaemon, running_daemon, sim_config
from readerd.web import FleetKiosk, WebServer, WebSettings
from tests.support.chromium import chromium

TOKEN = "console-token-for-tests-0123456789"  # noqa: S105 - a test token (>= 128 bits)
EVENT = "fest"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    sections: dict[str, dict[str, object]] = {"checkin": {"event": EVENT, "allow_unenrolled": True}}
    config = sim_config(
        tmp_path_factory.mktemp("daemon"),
        plugins=PluginsConfig(autoload=False, builtins=("checkin",), sections=sections),
    )
    with running_daemon(config) as d:
        now = datetime.now(UTC)
        reply = d.request(
            "checkin.define_event",
            {
                "event_id": EVENT,
                "name": "区民まつり",
                "place": "区役所前広場",
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(hours=2)).isoformat(),
                "capacity": 100,
                "idempotency_key": "web-e1",
            },
        )
        assert reply["ok"], reply
        yield d


@pytest.fixture(scope="module")
def web(daemon: RunningDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    # The fleet: the same daemon again under another name, and a kiosk that never answers.
    fleet = (FleetKiosk("hall-2", daemon.control), FleetKiosk("gone-3", "tcp://127.0.0.1:9"))
    settings = WebSettings(
        publish=daemon.publish,
        control=daemon.control,
        console_token=TOKEN,
        fleet=fleet,
        fleet_timeout_ms=300,
        # the per-boot secret where the launcher reads it (a test's own runtime directory)
        kiosk_secret_file=str(tmp_path_factory.mktemp("run") / "readerd-web" / "kiosk-secret"),
    )
    with WebServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="ja-JP")
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each screen's state is saved (``READERD_WEB_SCREENSHOTS`` to keep them somewhere known)."""
    wanted = os.environ.get("READERD_WEB_SCREENSHOTS")
    path = Path(wanted) if wanted else tmp_path_factory.mktemp("web-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
