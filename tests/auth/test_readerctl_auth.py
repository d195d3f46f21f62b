"""``readerctl auth`` as staff run it: the PIN comes from a prompt or a pipe, never from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.mynumber import VirtualMyNumberCard
from tests.support.auth import READER, pin_verifies, tap
from tests.support.daemon import RunningDaemon, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)

BIN = Path(sys.executable).parent


def readerctl(d: RunningDaemon, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "readerctl"), "--control", d.control, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )


def test_readerctl_auth_and_enroll(tmp_path: Path, cards: list[VirtualMyNumberCard]) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
        tap(d, sub, pin="3141")
        done = readerctl(d, "--json", "auth", "--reader", READER, "--enroll", stdin="3141\n")
        wrong = readerctl(d, "auth", "--reader", READER, stdin="0000\n")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verified"] is True
    assert result["enrolment"]["created"] is True
    assert "3 PIN tries left" in done.stderr
    assert wrong.returncode == 1
    assert "wrong_pin" in wrong.stderr
    assert "tries_left: 2" in wrong.stderr
    assert "3141" not in done.stdout + done.stderr
    assert pin_verifies(cards[-1]) == 2


def test_readerctl_auth_asks_before_the_last_try(tmp_path: Path, cards: list[VirtualMyNumberCard]) -> None:
    with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
        tap(d, sub, tries=1)
        refused = readerctl(d, "auth", "--reader", READER, stdin="1234\n")  # a pipe cannot answer "y"
        before = pin_verifies(cards[-1])
        allowed = readerctl(d, "auth", "--reader", READER, "--allow-last-try", stdin="1234\n")
    assert refused.returncode == 1
    assert "ONE try is left" in refused.stderr
    assert before == 0
    assert allowed.returncode == 0, allowed.stderr
    assert pin_verifies(cards[-1]) == 1
