"""The zero-service demo: simulated citizens tap simulated cards on a simulated reader.

It runs readerd's real card session (``protocols.jpki.JpkiSession`` behind the allow-list guard) against
the virtual My Number Card, and logs what the daemon will publish: a keyed pseudonym, never the
certificate. ``readerd run --simulate`` starts it until the daemon's own loop replaces it.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import threading
from pathlib import Path
from types import FrameType

import structlog

from protocols.errors import ReaderdError
from protocols.jpki import JpkiSession
from protocols.mykey import PSEUDONYM_KEY_LENGTH, jpki_pseudonym, key_fingerprint
from simulators.inprocess import InProcessReader
from simulators.mynumber import CardBehavior, CardProfile, build_card
from simulators.pki import PkiStore

log = structlog.get_logger("readerd.sim")

DEMO_PROFILES = (
    CardProfile(name="demo-alice"),
    CardProfile(name="demo-bob"),
    CardProfile(name="demo-chiyo", behavior=CardBehavior(extended_length=False)),  # an older card
)
TAP_INTERVAL = 1.5  # seconds between simulated taps


def load_or_create_key(path: Path) -> bytes:
    """The deployment pseudonym key for the demo (production keys come from ``readerctl keys``)."""
    if path.exists():
        key = path.read_bytes()
        if len(key) != PSEUDONYM_KEY_LENGTH:
            raise ReaderdError(f"{path} does not hold a {PSEUDONYM_KEY_LENGTH}-byte key")
        return key
    key = secrets.token_bytes(PSEUDONYM_KEY_LENGTH)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def tap_once(reader: InProcessReader, profile: CardProfile, store: PkiStore, key: bytes) -> dict[str, object]:
    """Insert a card, identify it, remove it; returns the redacted event data."""
    reader.insert(build_card(profile, store))
    try:
        identity = JpkiSession(reader).identify()
    finally:
        reader.remove()
    cert = identity.certificate
    return {
        "pseudonym": jpki_pseudonym(key, cert.issuer_der, cert.serial_number),
        "apdus": identity.apdus,
        "read_path": identity.read_path.value,
    }


def run_demo(*, taps: int, state_dir: Path, interval: float = TAP_INTERVAL) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = PkiStore(state_dir / "sim-pki")
    key = load_or_create_key(state_dir / "pseudonym.key")
    reader = InProcessReader("Simulated Reader 00")
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    log.info(
        "readerd demo started",
        mode="simulated",
        reader=reader.name,
        state_dir=str(state_dir),
        key_fingerprint=key_fingerprint(key),
        hint="Ctrl-C stops",
    )
    rng = random.Random()  # noqa: S311 - which demo card taps next is not a secret
    count = 0
    while not stop.is_set() and (taps == 0 or count < taps):
        profile = rng.choice(DEMO_PROFILES)
        try:
            data = tap_once(reader, profile, store, key)
        except ReaderdError as e:
            log.warning("card.read_aborted", reader=reader.name, reason=e.code, error=str(e), simulated=True)
        else:
            log.info("card.identified", reader=reader.name, simulated=True, **data)
            log.info("card.removed", reader=reader.name, simulated=True)
        count += 1
        if taps == 0 or count < taps:
            stop.wait(interval)
    log.info("readerd demo stopped", taps=count)
    return 0
