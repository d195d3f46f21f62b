"""One deployment key for a ward, pinned by its fingerprint: a kiosk with another key, or none, does not
start (exit 78, both fingerprints named), and the ward's shared store remembers the first key it saw.
Cost: about 3 s (two `readerd run` processes, one PostgreSQL database).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from protocols.mykey import key_fingerprint
from readerd.cli.doctor import DoctorEnv, check_deployment_key
from readerd.config import Config, IdentityConfig, StoreConfig
from readerd.errors import ConfigError
from readerd.exitcodes import ExitCode
from readerd.ops.keys import create_pseudonym_key
from readerd.plugin.store import Store
from tests.support.daemon import running_daemon, sim_config

BIN = Path(sys.executable).parent


def _run(tmp_path: Path, toml: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "readerd.toml"
    config.write_text(toml, encoding="utf-8")
    return subprocess.run(
        [
            str(BIN / "readerd"),
            "run",
            "--simulate",
            "--config",
            str(config),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_key_with_another_fingerprint_than_the_pin_exits_78_naming_both(tmp_path: Path) -> None:
    key = tmp_path / "pseudonym.key"
    create_pseudonym_key(key)
    found = key_fingerprint(key.read_bytes())
    pin = "0123456789abcdef"
    done = _run(tmp_path, f'[identity]\npseudonym_key_file = "{key}"\npseudonym_key_fingerprint = "{pin}"\n')
    assert done.returncode == ExitCode.CONFIG, done.stdout + done.stderr
    assert found in done.stdout + done.stderr
    assert pin in done.stdout + done.stderr


def test_a_pinned_key_that_is_missing_or_a_ward_without_a_key_exits_78(tmp_path: Path) -> None:
    missing = _run(tmp_path, f'[identity]\npseudonym_key_file = "{tmp_path}/none.key"\n'
                             'pseudonym_key_fingerprint = "0123456789abcdef"\n')  # fmt: skip
    assert missing.returncode == ExitCode.CONFIG
    assert "0123456789abcdef" in missing.stdout + missing.stderr
    ward = _run(tmp_path, '[store]\nshared_url = "postgresql+psycopg://kiosk@127.0.0.1:1/ward"\n')
    assert ward.returncode == ExitCode.CONFIG, "a ward always has one key: no kiosk makes its own"
    assert "ward" in ward.stdout + ward.stderr


def test_the_sim_backend_honours_a_named_key_and_its_pin(tmp_path: Path) -> None:
    """So a ward of simulated kiosks shares one key in tests."""
    key = tmp_path / "ward.key"
    create_pseudonym_key(key)
    identity = IdentityConfig(str(key), key_fingerprint(key.read_bytes()))
    pseudonyms = []
    for kiosk in ("a", "b"):
        with running_daemon(sim_config(tmp_path / kiosk, identity=identity)) as d, d.subscriber("") as sub:
            d.tap("alice")
            pseudonyms.append(sub.until(lambda e: e["type"] == "card.identified")[-1]["data"]["pseudonym"])
    assert pseudonyms[0] == pseudonyms[1]


@pytest.mark.postgres
def test_the_ward_store_remembers_the_first_key(postgres_url: str, tmp_path: Path) -> None:
    config = StoreConfig(shared_url=postgres_url)
    for kiosk in ("a", "b"):
        (tmp_path / kiosk).mkdir()
    with Store.open(config, tmp_path / "a") as first:
        assert first.pin_deployment_key("aaaaaaaaaaaaaaaa") == "aaaaaaaaaaaaaaaa"
    with Store.open(config, tmp_path / "b") as second:
        assert second.pin_deployment_key("bbbbbbbbbbbbbbbb") == "aaaaaaaaaaaaaaaa"


@pytest.mark.postgres
def test_a_kiosk_with_another_key_than_the_wards_does_not_start(postgres_url: str, tmp_path: Path) -> None:
    from readerd.daemon import Daemon  # noqa: PLC0415

    keys = []
    for name in ("ward.key", "other.key"):
        create_pseudonym_key(tmp_path / name)
        keys.append(tmp_path / name)
    store = StoreConfig(shared_url=postgres_url)
    with running_daemon(sim_config(tmp_path / "a", identity=IdentityConfig(str(keys[0])), store=store)):
        pass  # the first kiosk: the ward's store records its key
    other = sim_config(tmp_path / "b", identity=IdentityConfig(str(keys[1])), store=store)
    with pytest.raises(ConfigError, match="ward's shared store was first used with"):
        Daemon(other).run()


def test_doctor_checks_the_pin(tmp_path: Path) -> None:
    key = tmp_path / "pseudonym.key"
    create_pseudonym_key(key)
    right = IdentityConfig(str(key), key_fingerprint(key.read_bytes()))
    env = DoctorEnv()
    assert check_deployment_key(replace(env, config=replace(Config(), identity=right))).status == "ok"
    wrong = replace(right, pseudonym_key_fingerprint="0123456789abcdef")
    assert check_deployment_key(replace(env, config=replace(Config(), identity=wrong))).status == "problem"
    ward = replace(Config(), store=StoreConfig(shared_url="postgresql+psycopg://k@h/w"))
    assert check_deployment_key(replace(env, config=ward)).status == "warning"
