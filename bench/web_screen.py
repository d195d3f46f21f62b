"""Tap-to-screen time: from the card's first APDU to the kiosk page in chromium showing the composed result.

What is measured, per tap, on one clock (the page's ``performance.timeOrigin + performance.now()`` and
this process's ``time.time()`` are the same wall clock on one machine):

- ``first APDU``: the simulated card receives the SELECT of the JPKI AP (a wrapper around the card the sim
  backend builds stamps it): where readerd starts to work on the card.
- ``card.identified``: the event arrives on a SUB socket of this process on the daemon's PUB endpoint.
- ``plugin.handled``: the plugin host's "done with this tap" arrives there too; the kiosk page composes the
  tap's results when it gets it (docs/web.md, "The composed screen").
- ``pixels``: the page's result count (``body[data-results]``) changes, and the frame after it has run: a
  ``MutationObserver`` in the page stamps the change, then ``requestAnimationFrame`` and a zero timeout
  (the frame that shows it has been produced).

The parts (first APDU -> ``card.identified`` -> ``plugin.handled`` -> pixels) and the whole, p50 and p90.
Each tap is a new card (a check-in takes one card per person per event): the cards are built before
the run (their keys and certificates made and loaded), so the simulator's RSA key generation is not in
any tap; their build time is reported apart. The sim backend, the daemon, the check-in plugin,
``readerd web`` and this driver share one Python process; chromium is its own. Target (docs/web.md): the
whole under 50 ms p50 from the first APDU.

Run: ``python -m bench.web_screen [--taps 30] [--json FILE]`` (needs chromium; ``make test`` installs it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import zmq

from readerd.config import PluginsConfig
from readerd.testing import running_daemon, sim_config

READER: Final = "Sim 00"
TARGET_MS: Final = 50.0
PARTS: Final = (
    ("first_apdu_to_identified", "first APDU -> card.identified on a SUB"),
    ("identified_to_handled", "card.identified -> plugin.handled on a SUB"),
    ("handled_to_pixels", "plugin.handled -> the page's frame with the result"),
    ("first_apdu_to_pixels", "first APDU -> pixels (the whole)"),
)

# In the page: stamp every change of body[data-results] (wall-clock ms), and the frame after it.
OBSERVER_JS: Final = """() => {
  window.__bench = [];
  const now = () => performance.timeOrigin + performance.now();
  new MutationObserver(() => {
    const entry = { n: Number(document.body.dataset.results || 0), dom: now(), frame: null };
    window.__bench.push(entry);
    requestAnimationFrame(() => setTimeout(() => { entry.frame = now(); }, 0));
  }).observe(document.body, { attributes: true, attributeFilter: ["data-results"] });
}"""


class FirstApdu:
    """Stamps the wall-clock time of the first APDU each card receives (the sim backend's cards)."""

    def __init__(self) -> None:
        self.stamps: dict[str, float] = {}  # card name -> first APDU, time.time()
        self._lock = threading.Lock()

    def install(self) -> None:
        from readerd.reading.backends import sim

        build = getattr(sim, "build_card")  # the name the sim backend calls  # noqa: B009

        def stamped(profile: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401 - simulator types
            return _StampedCard(build(profile, *args, **kwargs), profile.name, self)

        setattr(sim, "build_card", stamped)  # noqa: B010 - the sim backend's own reference

    def first(self, name: str) -> None:
        with self._lock:
            self.stamps.setdefault(name, time.time())


@dataclass
class _StampedCard:
    card: Any
    name: str
    meter: FirstApdu

    @property
    def atr(self) -> bytes:
        return bytes(self.card.atr)

    def power_on(self) -> bytes:
        return bytes(self.card.power_on())

    def power_off(self) -> None:
        self.card.power_off()

    def process(self, raw: bytes) -> bytes:
        self.meter.first(self.name)
        return bytes(self.card.process(raw))

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - the simulator card's other attributes
        return getattr(self.card, name)


@dataclass
class Arrivals:
    """card.identified and plugin.handled as a SUB socket of this process receives them (time.time())."""

    identified: dict[str, float] = field(default_factory=dict)  # event id -> arrival
    reader_of: dict[str, str] = field(default_factory=dict)
    handled: dict[str, float] = field(default_factory=dict)  # cause (the tap's event id) -> arrival
    order: list[str] = field(default_factory=list)  # card.identified ids, in order
    stop: threading.Event = field(default_factory=threading.Event)

    def listen(self, sock: zmq.Socket[bytes]) -> None:
        while not self.stop.is_set():
            if not sock.poll(100):
                continue
            topic, body = sock.recv_multipart()
            now = time.time()
            if topic == b"card.identified":
                env = json.loads(body)
                self.identified[env["id"]] = now
                self.order.append(env["id"])
            elif topic == b"plugin.handled":
                env = json.loads(body)
                if env.get("cause"):
                    self.handled.setdefault(env["cause"], now)


def build_cards(pki: Path, names: list[str]) -> float:
    """Make the cards' keys and certificates before the run (and load them into the simulator's key
    cache of this process, where the daemon's sim backend runs); the time it took, ms per card."""
    from simulators.mynumber import CardProfile, build_card
    from simulators.pki import PkiStore

    store = PkiStore(pki)
    started = time.perf_counter()
    for name in names:
        build_card(CardProfile(name=name), store)
    return (time.perf_counter() - started) * 1000 / max(1, len(names))


def _wait(condition: Any, timeout: float = 10.0) -> None:  # noqa: ANN401 - a callable
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the bench's SUB socket did not see the tap's events within 10 s")
        time.sleep(0.002)


def measure(taps: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from readerd.web import WebServer, WebSettings
    from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS

    sections: dict[str, dict[str, object]] = {"checkin": {"event": "bench", "allow_unenrolled": True}}
    names = [f"b{i}" for i in range(taps + 1)]  # one warm-up tap, then the measured ones
    stamps = FirstApdu()
    stamps.install()
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = sim_config(
            Path(tmp), plugins=PluginsConfig(autoload=False, builtins=("checkin",), sections=sections)
        )
        with running_daemon(config) as daemon:
            card_build_ms = build_cards(Path(tmp) / "sim-pki", names)
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
            context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.connect(daemon.publish)
            for prefix in (b"card.identified", b"plugin.handled"):
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
            arrivals = Arrivals()
            listener = threading.Thread(target=arrivals.listen, args=(sub,), name="bench-sub", daemon=True)
            listener.start()
            settings = WebSettings(publish=daemon.publish, control=daemon.control)
            try:
                with WebServer(settings) as web, sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                    page = browser.new_page()
                    # the kiosk secret in the fragment, as the launcher hands it (docs/web.md)
                    page.goto(
                        f"{web.url}/kiosk?reader={READER.replace(' ', '%20')}#secret={web.kiosk_secret}"
                    )
                    page.wait_for_selector("body[data-connected=yes]", timeout=10_000)
                    page.evaluate(OBSERVER_JS)
                    for i, name in enumerate(names):
                        daemon.tap(name, reader=READER)
                        page.wait_for_selector(f"body[data-results='{i + 1}']", timeout=10_000)
                        page.wait_for_function(
                            f"window.__bench.some(e => e.n === {i + 1} && e.frame !== null)", timeout=10_000
                        )
                        _wait(lambda i=i: len(arrivals.order) > i and arrivals.order[i] in arrivals.handled)
                        daemon.remove(READER)
                        if i == 0:
                            continue  # the warm-up: the plugin's store and the page's first result
                        seen = page.evaluate(f"window.__bench.find(e => e.n === {i + 1})")
                        tap_id = arrivals.order[i]
                        first = stamps.stamps[name]
                        identified, handled = arrivals.identified[tap_id], arrivals.handled[tap_id]
                        pixels = float(seen["frame"]) / 1000
                        rows.append(
                            {
                                "first_apdu_to_identified": identified - first,
                                "identified_to_handled": handled - identified,
                                "handled_to_pixels": pixels - handled,
                                "first_apdu_to_pixels": pixels - first,
                            }
                        )
                    browser.close()
            finally:
                arrivals.stop.set()
                listener.join(2)
                sub.close()
                context.term()
    return {"rows": rows, "card_build_ms": round(card_build_ms, 1)}


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(v * 1000 for v in values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, float]] = measured["rows"]
    parts = {
        key: {
            "what": what,
            "p50_ms": round(statistics.median(r[key] for r in rows) * 1000, 2),
            "p90_ms": _ms([r[key] for r in rows], 0.9),
            "max_ms": _ms([r[key] for r in rows], 1.0),
        }
        for key, what in PARTS
    }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "taps": len(rows),
        "parts": parts,
        "p50_ms": parts["first_apdu_to_pixels"]["p50_ms"],
        "target_ms": TARGET_MS,
        "card_build_ms_per_card": measured["card_build_ms"],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"tap -> kiosk screen (chromium), {result['taps']} taps after one warm-up, each a new card",
        "",
        "| part | p50 ms | p90 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for part in result["parts"].values():
        lines.append(f"| {part['what']} | {part['p50_ms']} | {part['p90_ms']} | {part['max_ms']} |")
    lines += [
        "",
        f"target: the whole under {result['target_ms']:g} ms p50; cards built before the run: "
        f"{result['card_build_ms_per_card']} ms per card (the simulator's keys and certificates, not timed "
        "in any tap)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web_screen", description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=30, help="taps measured (after one warm-up tap)")
    parser.add_argument("--quick", action="store_true", help="3 taps: checks that it runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    taps = 3 if args.quick else args.taps
    if taps < 1:
        parser.error("--taps must be positive")
    result = summarize(measure(taps))
    sys.stdout.write(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
