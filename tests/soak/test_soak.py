"""Soak under faults: random taps on simulated readers while cards are pulled mid-read, a plugin crashes,
the shared PostgreSQL goes away and comes back, and the daemon restarts; then every promise is checked
against the durable event log and the stores (tests/soak/harness.py says what).

The short run (the default suite) is a fixed number of rounds, well under a minute. The long run:
``READERD_SOAK_SECONDS=3600 .venv/bin/python -m pytest tests/soak -m soak``; ``READERD_SOAK_SEED`` picks
the random sequence (the report names the seed of every run, so a failure can be replayed).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.soak.conftest import SOAK_LINES
from tests.soak.harness import Soak, verify
from tests.support.pcscd import PrivatePcscd
from tests.support.postgres import PrivatePostgres

LONG_SECONDS = float(os.environ.get("READERD_SOAK_SECONDS", "0"))
SEED = int(os.environ.get("READERD_SOAK_SEED", "20261123"))
SHORT_ROUNDS = 20
TAPS_PER_ROUND = 12

pytestmark = [
    pytest.mark.soak,
    pytest.mark.postgres,
    pytest.mark.pcscd,
    pytest.mark.timeout(max(240, int(LONG_SECONDS * 1.5) + 120)),
]


def _schedule(round_no: int) -> str:
    return ("taps", "daemon_restart", "database_outage", "pcscd_kill", "reader_unplug")[round_no % 5]


def test_soak_under_faults(
    tmp_path: Path,
    postgres_cluster: PrivatePostgres,
    postgres_url: str,
    private_pcscd: PrivatePcscd,
    request: pytest.FixtureRequest,
) -> None:
    lines: list[str] = []
    soak = Soak(
        tmp_path / "state", postgres_cluster, postgres_url, private_pcscd, seed=SEED, log=lines.append
    )
    began = time.monotonic()
    round_no = 0
    try:
        with soak.running():
            soak.setup_plugins()
            while round_no < SHORT_ROUNDS if LONG_SECONDS <= 0 else time.monotonic() - began < LONG_SECONDS:
                action = _schedule(round_no)
                if action == "daemon_restart":
                    soak.restart_daemon()
                if action == "database_outage":
                    soak.database_outage(TAPS_PER_ROUND // 2)
                if action == "pcscd_kill":
                    soak.pcscd_crash()
                if action == "reader_unplug":  # a sim reader and the vpcd reader, each out and back in
                    soak.sim_unplug()
                    soak.pcsc_unplug()
                for _ in range(TAPS_PER_ROUND):
                    soak.random_tap()
                soak.pcsc_tap(fault=soak.rng.random() < 0.25)  # while the sim taps above run
                soak.quiesce()
                round_no += 1
            soak.finish()
    finally:
        if not postgres_cluster.running:
            postgres_cluster.start()
    report = verify(soak, soak.logged_events())
    report.seconds = time.monotonic() - began
    lines[:0] = [f"seed {SEED}, {round_no} rounds", *report.lines()]
    request.config.stash.setdefault(SOAK_LINES, []).extend(lines)
    out = os.environ.get("READERD_SOAK_REPORT")
    if out:
        Path(out).write_text(json.dumps({"seed": SEED, "rounds": round_no, **vars(report)}, default=str))
    assert report.aborted > 0
    assert report.identified > 0
    assert report.faults["daemon_restart"] > 0
    assert report.faults["database_outage"] > 0
    assert report.faults["pcscd_kill"] > 0
    assert report.faults["pcsc_unplug"] > 0
    assert report.faults["sim_unplug"] == report.refused_unplugged == report.held_at_unplug > 0
