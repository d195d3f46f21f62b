"""Tap-to-event latency through pcscd + vpcd, beside the bare round trips of the same APDUs.

What is measured, all in one run on one machine:

- ``bare``: pyscard alone sends the identification APDUs (SELECT AP, READ BINARY by SFI with extended
  Le) to the same virtual card through the same private pcscd: the floor readerd cannot go below.
- ``daemon``: the time from the first APDU the card receives to the ``card.identified`` event arriving
  at a plain ZeroMQ SUB socket: readerd's session, identity, bus and the network hop. Detection (vicc
  connect until pcscd's presence poll notices the card) is reported separately: it is pcscd's polling
  period, not readerd.
- APDUs per identification, as counted by the card.

Run: ``python -m bench.tap_latency [--taps 50]`` (needs pcscd and vsmartcard-vpcd; `make test` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
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

    @property
    def atr(self) -> bytes:
        return self.card.atr

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def arm(self) -> None:
        self._fresh = True
        self.apdus.append(0)

    def process(self, raw: bytes) -> bytes:
        if self.apdus:  # counting only while a daemon tap is armed
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


def measure_bare(bridge: ViccBridge, reader: str, taps: int) -> tuple[list[float], int]:
    """The same two identification APDUs sent with pyscard alone: the floor (seconds per pair)."""
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
        pci = scard.SCARD_PCI_T1 if proto == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0
        rounds: list[float] = []
        cert: list[int] = []
        for _ in range(taps):
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


def measure_daemon(
    work: Path, timed: TimedCard, bridge: ViccBridge, taps: int
) -> tuple[list[float], list[float]]:
    """Insert the card ``taps`` times into a running daemon; (first APDU -> event, insert -> first APDU)."""
    from readerd.config import PcscConfig
    from tests.support.daemon import hardware_config, running_daemon

    config = hardware_config(work / "state", ("pcsc",), pcsc=PcscConfig(allow_virtual_readers=True))
    latency: list[float] = []
    detection: list[float] = []
    with running_daemon(config) as daemon, daemon.subscriber("card.") as sub:
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
    return latency, detection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--taps", type=int, default=50)
    args = parser.parse_args(argv)
    # libpcsclite reads the socket name once per process: set it before anything loads pyscard.
    work = Path(tempfile.mkdtemp(prefix="readerd-bench-"))
    os.environ["PCSCLITE_CSOCK_NAME"] = str(work / "pcscd" / "pcscd.comm")
    from tests.support.pcscd import PrivatePcscd

    timed = TimedCard(build_card(CardProfile(name="bench"), PkiStore(work / "pki")))
    with PrivatePcscd(work / "pcscd") as pcscd:
        bridge = ViccBridge(timed, port=pcscd.ports[0])
        bare, cert_bytes = measure_bare(bridge, pcscd.readers[0], args.taps)
        latency, detection = measure_daemon(work, timed, bridge, args.taps)
    result = {
        "bare_pyscard_identification_apdus": summary(bare),
        "daemon_first_apdu_to_event": summary(latency),
        "ratio_daemon_to_bare_p50": round(statistics.median(latency) / statistics.median(bare), 2),
        "detection_insert_to_first_apdu": summary(detection),
        "apdus_per_identification": sorted(set(timed.apdus)),
        "certificate_bytes": cert_bytes,
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
