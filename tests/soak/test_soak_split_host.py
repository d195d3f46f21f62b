"""The soak with the plugins in ``readerd plugins`` (the split plugin host, a process of its own beside
``readerd run``), the host killed with SIGKILL while taps flow and started again: it resumes from its
cursor and replays what it had not done (docs/design.md D2). Nothing is forgiven, since the daemon never
died: every identified tap gets its check-in result, every effect in the stores is exactly one tap's
(tests/soak/kill.py, ``verify_split``). Short by default; with ``READERD_SOAK_SECONDS`` it runs about a
tenth of that long."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.soak.conftest import SOAK_LINES
from tests.soak.kill import KillSoak, env_seconds, verify_killed
from tests.soak.test_soak import SEED, TAPS_PER_ROUND
from tests.support.postgres import PrivatePostgres

SHORT_ROUNDS = 2

pytestmark = [pytest.mark.soak, pytest.mark.postgres, pytest.mark.timeout(max(240, int(env_seconds()) + 120))]


def test_soak_with_sigkilled_plugin_host(
    tmp_path: Path, postgres_cluster: PrivatePostgres, postgres_url: str, request: pytest.FixtureRequest
) -> None:
    soak = KillSoak(tmp_path / "state", postgres_cluster, postgres_url, seed=SEED + 2, split=True)
    began = time.monotonic()
    long_seconds = env_seconds() / 10
    round_no = 0
    with soak.running():
        soak.setup_plugins()
        while round_no < SHORT_ROUNDS if long_seconds <= 0 else time.monotonic() - began < long_seconds:
            for _ in range(TAPS_PER_ROUND):
                soak.random_tap()
            soak.kill_host(after_outcomes=TAPS_PER_ROUND // 3)  # the rest are read while it is down
            soak.quiesce()
            round_no += 1
        soak.finish()
    found = verify_killed(soak, soak.logged_events())
    lines = [
        f"plugin host SIGKILL soak: seed {SEED + 2}, {round_no} rounds in {time.monotonic() - began:.1f} s",
        "  " + ", ".join(f"{k} {v}" for k, v in found.items()),
    ]
    request.config.stash.setdefault(SOAK_LINES, []).extend(lines)
    assert found["plugin_host_sigkills"] > 0
    assert found["attendance_rows"] == found["accepted_taps"]
