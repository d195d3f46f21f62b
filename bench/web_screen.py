"""Tap-to-screen time: a simulated tap until the kiosk page in chromium shows the check-in result.

What is measured: from the ``tap`` command (sent from this process) to the moment the kiosk page, in
Debian's chromium driven headless by Playwright, has shown the plugin's result: the sim backend's
read, the session, the bus, the check-in plugin, the result back on the bus, ``readerd web``'s bus
client, Server-Sent Events and the page's rendering. Target: under 1 s (docs/web.md). Playwright's
polling of the page adds a few milliseconds to each figure.

Run: ``python -m bench.web_screen [--taps 30] [--json FILE]`` (needs chromium; ``make test`` installs it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import sync_playwright

from readerd.config import PluginsConfig
from readerd.testing import running_daemon, sim_config
from readerd.web import WebServer, WebSettings
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS

READER = "Sim 00"


def measure(taps: int) -> list[float]:
    sections: dict[str, dict[str, object]] = {"checkin": {"event": "bench", "allow_unenrolled": True}}
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = sim_config(
            Path(tmp), plugins=PluginsConfig(autoload=False, builtins=("checkin",), sections=sections)
        )
        with running_daemon(config) as daemon:
            now = datetime.now(UTC)
            daemon.request(
                "checkin.define_event",
                {
                    "event_id": "bench",
                    "name": "bench",
                    "place": "bench",
                    "starts_at": (now - timedelta(hours=1)).isoformat(),
                    "ends_at": (now + timedelta(hours=2)).isoformat(),
                    "idempotency_key": "bench",
                },
            )
            settings = WebSettings(publish=daemon.publish, control=daemon.control)
            with WebServer(settings) as web, sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page()
                # the kiosk secret in the fragment, as the launcher hands it (docs/web.md)
                page.goto(f"{web.url}/kiosk?reader={READER.replace(' ', '%20')}#secret={web.kiosk_secret}")
                page.wait_for_selector("body[data-connected=yes]", timeout=10_000)
                for i in range(taps):
                    started = time.monotonic()
                    daemon.tap(f"b{i}", reader=READER)
                    page.wait_for_selector(f"body[data-results='{i + 1}']", timeout=10_000)
                    times.append(time.monotonic() - started)
                    daemon.remove(READER)
                browser.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web_screen", description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=30, help="taps measured (after one warm-up tap)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    times = measure(args.taps + 1)
    # The first tap of a fresh daemon builds the simulator's PKI and warms the plugin's store: apart.
    first, ms = round(times[0] * 1000, 1), sorted(t * 1000 for t in times[1:])
    result = {
        "first_ms": first,
        "taps": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 1),
        "max_ms": round(ms[-1], 1),
        "target_ms": 1000,
    }
    sys.stdout.write(
        "| tap -> kiosk screen (chromium) | p50 | p90 | max |\n|---|---|---|---|\n"
        f"| {result['taps']} taps | {result['p50_ms']} ms | {result['p90_ms']} ms | {result['max_ms']} ms |\n"
        f"\nfirst tap of a fresh daemon (warm-up, not counted above): {first} ms\n"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
