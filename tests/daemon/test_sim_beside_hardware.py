"""The sim backend beside a real one (pcsc, nfc): refused at start unless ``[sim] allow_simulated_cards``;
with it, every simulated card's events and authentications say ``"simulated": true``, ``tap`` reaches the
simulated readers only, the deployment's pseudonym key stays in force, and the simulator's CA never
vouches for a card on a real reader."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from protocols.jpki import UserAuthCertificate
from protocols.mykey import jpki_pseudonym
from readerd.config import Config, IdentityConfig, PcscConfig, SimConfig
from readerd.errors import ConfigError
from readerd.ops.keys import create_pseudonym_key
from simulators.mynumber import CardProfile, build_card
from simulators.pki import PkiStore
from simulators.vicc import ViccBridge
from tests.support.auth import error, ok, pin_verifies
from tests.support.daemon import running_daemon, sim_config
from tests.support.pcscd import PrivatePcscd

BIN = Path(sys.executable).parent
SIM_READER = "Sim 00"


def test_sim_beside_pcsc_is_refused_at_start_with_exit_78(tmp_path: Path) -> None:
    """`readerd run --config` with backends sim and pcsc: exit 78 and a message that says what to do,
    before the state directory is made. Cost: one `readerd` process that stops at the check (~0.5 s)."""
    state = tmp_path / "state"
    config = tmp_path / "readerd.toml"
    config.write_text(f'state_dir = "{state}"\nbackends = ["sim", "pcsc"]\n')
    result = subprocess.run(
        [str(BIN / "readerd"), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 78, output
    assert "allow_simulated_cards = true in [sim]" in output  # what to do, and where
    assert "from backends" in output
    assert not state.exists()


def test_sim_beside_nfc_needs_the_setting_and_sim_alone_does_not() -> None:
    """The same check for nfc; sim alone and an allowed pair pass. Cost: milliseconds (no daemon)."""
    with pytest.raises(ConfigError, match=r"sim beside nfc .* allow_simulated_cards = true"):
        Config(backends=("nfc", "sim")).validate()
    allowed = Config(backends=("sim", "pcsc", "nfc"), sim=SimConfig(allow_simulated_cards=True))
    assert allowed.validate() is allowed
    alone = Config(backends=("sim",))
    assert alone.validate() is alone


def _wait_for_reader(readers: Callable[[], dict[str, Any]], name: str) -> None:
    deadline = time.monotonic() + 15
    while name not in [r["name"] for r in readers()["result"]["readers"]]:
        assert time.monotonic() < deadline, f"{name} never showed up"
        time.sleep(0.05)


@pytest.mark.pcscd
@pytest.mark.timeout(90)
def test_simulated_cards_beside_pcsc_are_marked_and_the_sim_ca_vouches_for_no_real_card(
    private_pcscd: PrivatePcscd, tmp_path: Path
) -> None:
    """sim + pcsc with allow_simulated_cards and no [auth] anchors. A simulated card: every event and
    both authentication events say simulated, its pseudonym is made with the configured deployment key
    (no key of the simulator's own in the state dir). The same card (the daemon's own simulator PKI) on
    the real reader: not marked, and auth.begin is auth_not_configured with no VERIFY sent: the
    simulator's CA is no trust anchor there. tap names only simulated readers.
    Cost: a private pcscd, an in-process daemon, one simulated authentication, one vicc insertion (~1 s).
    """
    state = tmp_path / "state"
    deployment_key = tmp_path / "deployment.key"
    key = create_pseudonym_key(deployment_key)
    config = replace(
        sim_config(state),
        backends=("sim", "pcsc"),
        identity=IdentityConfig(str(deployment_key)),
        pcsc=PcscConfig(allow_virtual_readers=True),
        sim=SimConfig(readers=(SIM_READER,), allow_simulated_cards=True),
    )
    real_reader = private_pcscd.readers[0]
    with running_daemon(config) as d, d.subscriber("card.") as sub, d.session() as ui:
        _wait_for_reader(lambda: d.request("readers"), real_reader)
        tap_on_real = error(d.request("tap", {"card": "alice", "reader": real_reader}))
        d.tap("alice", reader=SIM_READER, pin="4711")
        simulated = sub.until(lambda e: e["type"] == "card.identified")
        begun = ok(ui.request("auth.begin", {"reader": SIM_READER}))
        error(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "0000"}))
        simulated += sub.until(lambda e: e["type"] == "card.auth_failed")
        begun = ok(ui.request("auth.begin", {"reader": SIM_READER}))
        verified = ok(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "4711"}))
        simulated += sub.until(lambda e: e["type"] == "card.authenticated")
        d.remove(SIM_READER)
        simulated += sub.until(lambda e: e["type"] == "card.removed")

        card = build_card(CardProfile(name="alice", auth_pin="4711"), PkiStore(state / "sim-pki"))
        bridge = ViccBridge(card, port=private_pcscd.ports[0])
        bridge.insert()
        try:
            real = sub.until(lambda e: e["type"] == "card.identified" and e["reader"] == real_reader, 10)
            refused = error(ui.request("auth.begin", {"reader": real_reader}, timeout_ms=20000))
        finally:
            bridge.remove()

    assert tap_on_real["code"] == "unknown_reader"
    types = [e["type"] for e in simulated]
    for wanted in (
        "card.presented",
        "card.identified",
        "card.auth_failed",
        "card.authenticated",
        "card.removed",
    ):
        assert wanted in types
    assert all(e["data"]["simulated"] is True for e in simulated), simulated
    assert verified["verified"] is True

    identified = real[-1]
    assert "simulated" not in identified["data"]
    assert not [e for e in real if e["reader"] == real_reader and "simulated" in e["data"]]
    assert refused["code"] == "auth_not_configured"
    assert pin_verifies(card) == 0

    certificate = UserAuthCertificate.from_der(
        PkiStore(state / "sim-pki").user_auth_certificate("alice").public_bytes(serialization.Encoding.DER)
    )
    expected = jpki_pseudonym(key, certificate.issuer_der, certificate.serial_number)
    sim_identified = next(e for e in simulated if e["type"] == "card.identified")
    assert sim_identified["data"]["pseudonym"] == expected == identified["data"]["pseudonym"]
    assert not (state / "pseudonym.key").exists()
