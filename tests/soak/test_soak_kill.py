"""The soak's daemon as a process of its own, killed with SIGKILL mid-stream and started again
(tests/soak/kill.py says what must survive and what is counted as lost); every kill finds a card on the
PC/SC reader (a private pcscd's vpcd reader), which the next start must report exactly once. Short by
default; with ``READERD_SOAK_SECONDS`` it runs about a tenth of that long, beside the in-process soak."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.soak.conftest import SOAK_LINES
from tests.soak.kill import KillSoak, env_seconds, verify_killed
from tests.soak.test_soak import SEED, TAPS_PER_ROUND
from tests.support.pcscd import PrivatePcscd
from tests.support.postgres import PrivatePostgres

SHORT_ROUNDS = 6

pytestmark = [
    pytest.mark.soak,
    pytest.mark.postgres,
    pytest.mark.pcscd,
    pytest.mark.timeout(max(240, int(env_seconds()) + 120)),
]


def test_soak_with_sigkilled_daemon(
    tmp_path: Path,
    postgres_cluster: PrivatePostgres,
    postgres_url: str,
    private_pcscd: PrivatePcscd,
    request: pytest.FixtureRequest,
) -> None:
    soak = KillSoak(tmp_path / "state", postgres_cluster, postgres_url, private_pcscd, seed=SEED + 1)
    began = time.monotonic()
    long_seconds = env_seconds() / 10
    round_no = 0
    with soak.running():
        soak.setup_plugins()
        while round_no < SHORT_ROUNDS if long_seconds <= 0 else time.monotonic() - began < long_seconds:
            kill = round_no % 2 == 1
            held = soak.hold_pcsc_card() if kill else None  # on the PC/SC reader through the kill
            for _ in range(TAPS_PER_ROUND):
                soak.random_tap()
            if kill:
                soak.kill_daemon(after_outcomes=TAPS_PER_ROUND // 2, held=held)
            soak.quiesce()
            round_no += 1
        soak.finish()
    found = verify_killed(soak, soak.logged_events())
    lines = [
        f"SIGKILL soak: seed {SEED + 1}, {round_no} rounds in {time.monotonic() - began:.1f} s",
        "  " + ", ".join(f"{k} {v}" for k, v in found.items()),
    ]
    request.config.stash.setdefault(SOAK_LINES, []).extend(lines)
    assert found["sigkills"] > 0
    assert found["sigkills_with_a_card_on_the_pcsc_reader"] == found["sigkills"]
    assert found["reported_once_at_the_next_start"] == found["sigkills"]
