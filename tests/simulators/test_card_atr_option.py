"""The ATRs a simulated My Number Card can present (``CardProfile.atr``, ``readerd-sim mynumber --atr``).

Cost: the parser tests take milliseconds; the pcscd test runs ``readerd-sim`` once (~1.5 s).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from smartcard import scard  # noqa: TID251 - the test reads the card as pyscard sees it

from simulators.cli import build_parser
from simulators.mynumber import ATR_CONTACT, ATR_CONTACTLESS, NAMED_ATRS, CardProfile, build_card
from simulators.pki import PkiStore
from tests.simulators.test_readerd_sim_cli import readerd_sim, run_to_end
from tests.simulators.wire import SELECT_JPKI, SW_OK, connected, pcsc_context, reader_state, wait_state
from tests.support.pcscd import PrivatePcscd


def _parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(["mynumber", *args])


def test_the_atr_option_takes_a_name_or_hex() -> None:
    assert _parse("--atr", "contact-03").atr == "contact-03"
    assert _parse("--atr", "3B 88 80 01 00 00 05 E0 B3 81 A1 00 7F").atr == ATR_CONTACTLESS
    assert _parse().atr is None


@pytest.mark.parametrize("value", ["contact-99", "3B", "3B" * 34, "zz"])
def test_the_atr_option_refuses_what_no_reader_could_show(value: str, tmp_path: Path) -> None:
    code, stderr = run_to_end("mynumber", "--atr", value, "--cache", str(tmp_path))
    assert code == 2
    assert "--atr" in stderr
    assert "Traceback" not in stderr


def test_a_profile_presents_the_atr_it_names(pki_store: PkiStore) -> None:
    assert build_card(CardProfile(name="alice"), pki_store).atr == ATR_CONTACTLESS
    assert build_card(CardProfile(name="alice", contactless=False), pki_store).atr == ATR_CONTACT
    for name, atr in NAMED_ATRS.items():
        assert build_card(CardProfile(name="alice", atr=name), pki_store).atr == atr
    assert build_card(CardProfile(name="alice", atr=b"\x3b\x00"), pki_store).atr == b"\x3b\x00"
    pupis = {build_card(CardProfile(name="alice", atr="contactless-pupi"), pki_store).atr for _ in range(5)}
    assert len(pupis) == 5, "a new random PUPI for every card made"
    assert all(atr.startswith(bytes.fromhex("3B888001")) and len(atr) == 13 for atr in pupis)
    with pytest.raises(ValueError, match="unknown ATR name"):
        build_card(CardProfile(name="alice", atr="contact-99"), pki_store)


@pytest.mark.pcscd
@pytest.mark.timeout(60)
def test_readerd_sim_presents_the_chosen_atr_through_pcscd(
    private_pcscd: PrivatePcscd, tmp_path: Path
) -> None:
    reader, vpcd = private_pcscd.readers[0], f"127.0.0.1:{private_pcscd.ports[0]}"
    args = ("mynumber", "--vpcd", vpcd, "--profile", "erin", "--atr", "contact-02", "--cache", str(tmp_path))
    with readerd_sim(*args) as sim:
        sim.wait_event("virtual My Number Card ready")
        with pcsc_context() as ctx:
            wait_state(ctx, reader, scard.SCARD_STATE_PRESENT)
            assert reader_state(ctx, reader)[1] == NAMED_ATRS["contact-02"]
            with connected(ctx, reader) as card:
                assert card.status()[2] == NAMED_ATRS["contact-02"]
                assert card.send(SELECT_JPKI) == SW_OK
        assert sim.quit() == 0
