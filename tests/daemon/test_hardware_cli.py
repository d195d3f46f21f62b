"""The daemon from the command line on the real PC/SC stack, with no configuration file at all, and the
deployment key commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from protocols.mykey import key_fingerprint
from readerd.ops.keys import load_pseudonym_key
from simulators.mynumber import CardProfile, build_card
from simulators.pki import PkiStore
from simulators.vicc import ViccBridge
from tests.support.pcscd import PrivatePcscd
from tests.support.ports import free_tcp_port

BIN = Path(sys.executable).parent
DEPLOYMENT_KEY = Path("/etc/readerd/pseudonym.key")


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "readerctl"), *args], capture_output=True, text=True, timeout=20, check=False
    )


@pytest.mark.pcscd
@pytest.mark.timeout(90)
@pytest.mark.skipif(
    DEPLOYMENT_KEY.exists(), reason="this machine has a deployment key: the fallback is not used"
)
def test_run_backend_pcsc_without_a_config_file(private_pcscd: PrivatePcscd, tmp_path: Path) -> None:
    """`readerd run --backend pcsc --publish … --state-dir DIR` with no configuration file, read through
    real pcscd."""
    publish, control = f"tcp://127.0.0.1:{free_tcp_port()}", f"tcp://127.0.0.1:{free_tcp_port()}"
    state = tmp_path / "state"
    daemon = subprocess.Popen(
        [
            str(BIN / "readerd"),
            "run",
            "--backend",
            "pcsc",
            "--publish",
            publish,
            "--control",
            control,
            "--state-dir",
            str(state),
            "--heartbeat",
            "0.1",
        ],
        env=private_pcscd.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    store = PkiStore(tmp_path / "pki")
    try:
        deadline = time.monotonic() + 30
        while _ctl("--control", control, "status").returncode != 0:
            assert daemon.poll() is None, daemon.communicate()[0]
            assert time.monotonic() < deadline, "the daemon never answered status"
        sub.connect(publish)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        assert sub.poll(10_000)  # a heartbeat: the subscription is live
        # Virtual readers are refused without a configuration that allows them: vpcd listens on 0.0.0.0.
        assert json.loads(_ctl("--control", control, "--json", "readers").stdout)["readers"] == []
        bridge = ViccBridge(build_card(CardProfile(name="alice"), store), port=private_pcscd.ports[0])
        bridge.insert()
        # 15 heartbeats (1.5 s) span three presence polls of pcscd: a card event would have come.
        types: list[str] = []
        while types.count("heartbeat") < 15:
            assert sub.poll(5000)
            types.append(json.loads(sub.recv_multipart()[1])["type"])
        bridge.remove()
    finally:
        sub.close()
        daemon.send_signal(signal.SIGTERM)
        log, _ = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, log
    assert set(types) == {"heartbeat"}, types
    assert "no deployment pseudonym key: using this kiosk's own" in log
    key = load_pseudonym_key(state / "pseudonym.key")
    assert key_fingerprint(key) in log
    assert (state / "pseudonym.key").stat().st_mode & 0o777 == 0o600


def test_keys_init_deployment_and_fingerprint(tmp_path: Path) -> None:
    out = tmp_path / "etc" / "pseudonym.key"
    made = _ctl("--json", "keys", "init-deployment", "--out", str(out))
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    key = load_pseudonym_key(out)
    assert result["fingerprint"] == key_fingerprint(key)
    assert out.stat().st_mode & 0o007 == 0  # nothing for others
    again = _ctl("keys", "init-deployment", "--out", str(out))
    assert again.returncode == 78
    assert "never overwritten" in again.stderr
    assert load_pseudonym_key(out) == key
    shown = _ctl("keys", "fingerprint", str(out))
    assert shown.returncode == 0
    assert f"fingerprint: {key_fingerprint(key)}" in shown.stdout
    missing = _ctl("keys", "fingerprint", str(tmp_path / "nope.key"))
    assert missing.returncode == 78
    assert "missing" in missing.stderr
