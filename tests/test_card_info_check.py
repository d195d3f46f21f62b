"""The suite-wide guard in tests/conftest.py catches a card-info SELECT (and the marker exempts one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import card_audit

ROOT = Path(__file__).resolve().parents[1]

INNER = """
import pytest
from simulators.mynumber import CardProfile, build_card, KENHOJO_AID
from simulators.pki import PkiStore

def _select_card_info(tmp_path):
    card = build_card(CardProfile(name="mallory"), PkiStore(tmp_path))
    card.power_on()
    card.process(bytes.fromhex("00A4040C") + bytes([len(KENHOJO_AID)]) + KENHOJO_AID)

def test_unmarked(tmp_path):
    _select_card_info(tmp_path)

@pytest.mark.touches_card_info
def test_marked(tmp_path):
    _select_card_info(tmp_path)

def test_clean(tmp_path):
    build_card(CardProfile(name="mallory"), PkiStore(tmp_path)).power_on()
"""


def test_a_card_info_select_fails_the_test_that_made_it(tmp_path: Path) -> None:
    done = subprocess.run(
        card_audit.inner_session(tmp_path, INNER),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    # Each test's body passes; the unmarked one errors at teardown, the marked and the clean one do not.
    assert "3 passed, 1 error" in out, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 1
    assert "::test_unmarked" in errors[0]
    assert "a card-info AP reached a simulated card" in out
