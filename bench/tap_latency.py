"""Tap-to-event latency through pcscd + vpcd, beside the bare round trips of the same APDUs.

What is measured, all in one run on one machine:

- ``bare``: pyscard alone sends the identification APDUs (SELECT AP, READ BINARY by SFI with extended
  Le) to the same virtual card through the same private pcscd: the floor readerd cannot go below.
- ``daemon``: the time from the first APDU the card receives to the ``card.identified`` event arriving
  at a plain ZeroMQ SUB socket: readerd's session, identity, bus and the network hop. Detection (vicc
  connect until pcscd's presence poll notices the card) is reported separately: it is pcscd's polling
  period, not readerd.
- APDUs per identification, as counted by the card.
- ``overhead``: daemon p50 minus bare p50, what readerd adds to the two round trips. ``--runs`` runs of
  ``--taps`` taps each (default 5 x 40: 200 taps), each run measuring its own bare floor then its daemon
  taps, one daemon and one pcscd for all: the figure is over all taps (p50 of the daemon's 200 minus p50
  of the bare 200), with the runs' own overheads as its spread. The card is built before anything is
  timed, and its build time is reported apart.
- ``bare_after_idle``: the bare pairs again, each after :data:`IDLE_BEFORE_PAIR` s of sleep, as every
  daemon tap comes after pcscd's presence poll. The back-to-back floor runs on warm CPUs; after idle the
  same code (pyscard, pcscd, vpcd, the card) takes longer, on this kind of machine about twice as long
  (docs/performance.md, "tap_latency"). ``overhead_over_idle_floor_ms`` is the daemon's p50 over that
  floor: like for like. ``overhead`` stays the figure over the back-to-back floor.

Run: ``python -m bench.tap_latency [--taps 40] [--runs 5] [--quick]`` (needs pcscd and vsmartcard-vpcd;
`make test` installs them). A tap takes about 0.8 s (pcscd polls presence every 0.4 s, for the insertion
and for the removal) and the idle floor 0.4 s a pair: 200 taps take about 5 minutes (``--no-idle-floor``:
about 3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from protocols.jpki import read_binary_sfi, select_jpki_ap
from protocols.jpki_constants import JpkiEf
from simulators.mynumber import CardProfile, VirtualMyNumberCard, build_card
from simulators.pki import PkiStore
from simulators.vicc import ViccBridge

# The very APDUs the daemon's session sends on the extended path (SELECT AP, READ BINARY by SFI).
SELECT_JPKI: Final = select_jpki_ap().encode()
READ_CERT_EXTENDED: Final = read_binary_sfi(JpkiEf.AUTH_CERT).encode()


@dataclass
class TimedCard:
    """Wraps the card to stamp the first APDU of each insertion (monotonic clock, same process)."""

    card: VirtualMyNumberCard
    first_apdu: list[float] = field(default_factory=list)
    apdus: list[int] = field(default_factory=list)
    _fresh: bool = True
    _armed: bool = False

    @property
    def atr(self) -> bytes:
        return self.card.atr

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def arm(self) -> None:
        self._fresh, self._armed = True, True
        self.apdus.append(0)

    def disarm(self) -> None:
        """The bare rounds (and the daemon's read of the card they insert) are not the daemon's taps."""
        self._armed = False

    def process(self, raw: bytes) -> bytes:
        if self._armed:  # counting only while a daemon tap is armed
            if self._fresh:
                self.first_apdu.append(time.monotonic())
                self._fresh = False
            self.apdus[-1] += 1
        return self.card.process(raw)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(percentile(ms, 0.99), 3), "n": len(ms)}


def measure_bare(
    bridge: ViccBridge,
    reader: str,
    taps: int,
    settle: Callable[[], object] = lambda: None,
    idle: float = 0.0,
) -> tuple[list[float], int]:
    """The same two identification APDUs sent with pyscard alone: the floor (seconds per pair).
    ``settle`` runs once the card is in and connected, before anything is timed (the running daemon
    reads the card once: the bare rounds wait until it is done). ``idle``: seconds of sleep before each
    pair, as a tap comes after pcscd's presence poll (:data:`IDLE_BEFORE_PAIR`)."""
    from smartcard import scard

    bridge.insert()
    _, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    try:
        deadline = time.monotonic() + 10
        while True:
            hr, hcard, proto = scard.SCardConnect(ctx, reader, scard.SCARD_SHARE_SHARED, 3)
            if hr == scard.SCARD_S_SUCCESS:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot connect to {reader}: {scard.SCardGetErrorMessage(hr)}")
            time.sleep(0.01)
        settle()
        pci = scard.SCARD_PCI_T1 if proto == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0
        rounds: list[float] = []
        cert: list[int] = []
        for _ in range(taps):
            if idle:
                time.sleep(idle)
            t0 = time.perf_counter()
            scard.SCardTransmit(hcard, pci, list(SELECT_JPKI))
            _, cert = scard.SCardTransmit(hcard, pci, list(READ_CERT_EXTENDED))
            rounds.append(time.perf_counter() - t0)
        scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
        bridge.remove()
        _wait_until_empty(scard, ctx, reader)
    finally:
        scard.SCardReleaseContext(ctx)
    return rounds, len(cert) - 2


def _wait_until_empty(scard: Any, ctx: int, reader: str) -> None:  # noqa: ANN401 - pyscard is untyped
    """Until pcscd's presence poll has seen the card go: the daemon must start with an empty reader."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hr, states = scard.SCardGetStatusChange(ctx, 100, [(reader, scard.SCARD_STATE_UNAWARE)])
        if hr == scard.SCARD_S_SUCCESS and states[0][1] & scard.SCARD_STATE_EMPTY:
            return
        time.sleep(0.05)
    raise RuntimeError(f"pcscd still sees a card in {reader}")


#: Seconds the bare pairs of the idle floor wait before each pair: what precedes a tap's first APDU
#: (pcscd polls presence every 0.4 s; a tap is an insert, that poll, the read, a removal and its poll).
IDLE_BEFORE_PAIR: Final = 0.4


@dataclass
class Run:
    """One run: the bare floors measured just before the daemon's taps (back to back, and each pair
    after :data:`IDLE_BEFORE_PAIR` of idle)."""

    bare: list[float]
    latency: list[float]
    detection: list[float]
    bare_idle: list[float] = field(default_factory=list)

    @property
    def overhead_ms(self) -> float:
        return (statistics.median(self.latency) - statistics.median(self.bare)) * 1000


def daemon_taps(
    sub: Any,  # noqa: ANN401 - tests.support.daemon's subscriber
    timed: TimedCard,
    bridge: ViccBridge,
    taps: int,
) -> tuple[list[float], list[float]]:
    """Insert the card ``taps`` times into the running daemon; (first APDU -> event, insert -> first APDU)."""
    latency: list[float] = []
    detection: list[float] = []
    for _ in range(taps):
        timed.arm()
        inserted = time.monotonic()
        bridge.insert()
        sub.until(lambda env: env["type"] == "card.identified", timeout=10)
        arrived = time.monotonic()
        latency.append(arrived - timed.first_apdu[-1])
        detection.append(timed.first_apdu[-1] - inserted)
        bridge.remove()
        # pcscd's presence poll must see the card gone before the next insertion counts as a tap
        sub.until(lambda env: env["type"] == "card.removed", timeout=10)
    timed.disarm()
    return latency, detection


def measure_runs(
    work: Path,
    timed: TimedCard,
    bridge: ViccBridge,
    reader: str,
    *,
    taps: int,
    runs: int,
    idle_floor: bool = True,
) -> tuple[list[Run], int]:
    """``runs`` times: the bare floor (``taps`` pairs), then ``taps`` daemon taps; one daemon for all.
    For the bare rounds the card goes in once; the daemon reads it (untimed) and leaves it alone, and
    the rounds start when its ``card.identified`` is out, so the two never share the card."""
    from readerd.config import PcscConfig
    from tests.support.daemon import hardware_config, running_daemon

    config = hardware_config(work / "state", ("pcsc",), pcsc=PcscConfig(allow_virtual_readers=True))
    out: list[Run] = []
    cert_bytes = 0
    # Not card.presented: this process would parse it while the daemon reads the certificate, and
    # compete with the daemon for the GIL in the middle of the measured time.
    events = ("card.identified", "card.removed", "card.read_aborted")
    with running_daemon(config) as daemon, daemon.subscriber(*events) as sub:
        for _ in range(runs):
            timed.disarm()

            def daemon_read_it() -> None:
                sub.until(lambda env: env["type"] in ("card.identified", "card.read_aborted"), timeout=10)

            def bare_floor(idle: float = 0.0) -> tuple[list[float], int]:
                measured = measure_bare(bridge, reader, taps, settle=daemon_read_it, idle=idle)
                sub.until(lambda env: env["type"] == "card.removed", timeout=10)  # the bare card, gone
                return measured

            bare, cert_bytes = bare_floor()
            bare_idle = bare_floor(IDLE_BEFORE_PAIR)[0] if idle_floor else []
            latency, detection = daemon_taps(sub, timed, bridge, taps)
            out.append(Run(bare, latency, detection, bare_idle))
    return out, cert_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--taps",
        type=int,
        help="taps per run, each measured bare and through the daemon (default 40; --quick 3)",
    )
    parser.add_argument("--runs", type=int, help="runs (default 5; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="3 taps, 1 run: checks that it runs")
    parser.add_argument(
        "--no-idle-floor",
        action="store_true",
        help=f"skip the bare pairs sent after {IDLE_BEFORE_PAIR} s of idle each (they add that per tap)",
    )
    args = parser.parse_args(argv)
    taps = args.taps or (3 if args.quick else 40)
    runs = args.runs or (1 if args.quick else 5)
    if min(taps, runs) < 1:
        parser.error("--taps and --runs must be positive")
    # libpcsclite reads the socket name once per process: set it before anything loads pyscard.
    work = Path(tempfile.mkdtemp(prefix="readerd-bench-"))
    os.environ["PCSCLITE_CSOCK_NAME"] = str(work / "pcscd" / "pcscd.comm")
    from tests.support.pcscd import PrivatePcscd

    try:
        # The card (its keys and certificates) is made before anything is timed: that is the simulator.
        started = time.perf_counter()
        timed = TimedCard(build_card(CardProfile(name="bench"), PkiStore(work / "pki")))
        card_build_ms = round((time.perf_counter() - started) * 1000, 1)
        with PrivatePcscd(work / "pcscd") as pcscd:
            bridge = ViccBridge(timed, port=pcscd.ports[0])
            measured, cert_bytes = measure_runs(
                work, timed, bridge, pcscd.readers[0], taps=taps, runs=runs, idle_floor=not args.no_idle_floor
            )
    finally:  # the test PKI's keys, the daemon's state and pcscd's log: nothing of a run is kept
        shutil.rmtree(work, ignore_errors=True)
    bare = [t for run in measured for t in run.bare]
    latency = [t for run in measured for t in run.latency]
    detection = [t for run in measured for t in run.detection]
    overheads = [round(run.overhead_ms, 3) for run in measured]
    bare_idle = [t for run in measured for t in run.bare_idle]
    result = {
        "bare_pyscard_identification_apdus": summary(bare),
        "daemon_first_apdu_to_event": summary(latency),
        "ratio_daemon_to_bare_p50": round(statistics.median(latency) / statistics.median(bare), 2),
        # what readerd adds: p50 of every daemon tap less p50 of every bare pair; the runs' own as spread
        "overhead_ms": {
            "p50": round((statistics.median(latency) - statistics.median(bare)) * 1000, 3),
            "runs": overheads,
            "min": min(overheads),
            "max": max(overheads),
        },
        # the same bare pairs, each after the idle a tap comes after: a CPU that slept runs the same
        # code several times slower at first (docs/performance.md), on every side of the hop
        **(
            {
                "bare_after_idle": {**summary(bare_idle), "idle_s": IDLE_BEFORE_PAIR},
                "overhead_over_idle_floor_ms": round(
                    (statistics.median(latency) - statistics.median(bare_idle)) * 1000, 3
                ),
            }
            if bare_idle
            else {}
        ),
        "taps": taps,
        "runs": runs,
        "detection_insert_to_first_apdu": summary(detection),
        "apdus_per_identification": sorted(set(timed.apdus)),
        "certificate_bytes": cert_bytes,
        "card_build_ms": card_build_ms,
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
