"""readerctl doctor on trust anchors and revocation: a J-LIS CA (by SHA-256 fingerprint) told from a test
one, the expired 2015 CA alone warned about, 2015 + 2023 accepted; the revocation source reported (none,
a fresh local CRL, a stale one).

The J-LIS CA certificates in tests/deploy/data are J-LIS's public ones (readerd/auth/jlis.py names the
source). Cost: about 1 s, most of it the simulator's CA (one RSA-2048 key, generated once per module).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from readerd.auth import jlis
from readerd.cli import doctor
from readerd.cli.doctor import DoctorEnv
from readerd.config import AuthConfig, Config
from readerd.plugin.api import CheckStatus
from simulators.pki import SimulatedCa, write_pem

OK, WARNING, PROBLEM, SKIPPED = CheckStatus.OK, CheckStatus.WARNING, CheckStatus.PROBLEM, CheckStatus.SKIPPED
DATA = Path(__file__).resolve().parent / "data"
CA_2015, CA_2023 = DATA / "jlis_auth_ca_2015.pem", DATA / "jlis_auth_ca_2023.pem"
NOW = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)  # after the 2015 CA expired, before the 2023 one does


@pytest.fixture(scope="module")
def sim_ca() -> SimulatedCa:
    return SimulatedCa()  # the simulator's user-authentication CA: J-LIS's name, its own key


def _env(tmp_path: Path, *anchors: Path, crls: tuple[Path, ...] = (), stale_crl: str = "refuse") -> DoctorEnv:
    env = DoctorEnv(config_path=tmp_path / "readerd.toml", now=lambda: NOW)
    auth = AuthConfig(
        trust_anchors=tuple(map(str, anchors)), crl_files=tuple(map(str, crls)), stale_crl=stale_crl
    )
    env.config, env.config_ok = Config(backends=("pcsc",), auth=auth), True
    return env


def test_the_table_matches_the_published_certificates() -> None:
    for path, name in ((CA_2015, "2015"), (CA_2023, "2023")):
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        known = jlis.lookup(certificate.fingerprint(hashes.SHA256()).hex())  # lower case, no colons
        assert known is not None, path
        assert known.name.endswith(name)
        assert known.not_after == certificate.not_valid_after_utc
        assert known.serial == f"{certificate.serial_number:X}".rjust(len(known.serial), "0")


def test_a_jlis_anchor_is_told_from_the_simulators(tmp_path: Path, sim_ca: SimulatedCa) -> None:
    real = doctor.check_trust_anchors(_env(tmp_path, CA_2023))
    assert real.status is OK, real
    assert "J-LIS user-authentication CA 2023 (serial 06D18006), valid to 2033-07-15 23:59:59+09:00" in (
        real.message
    )

    test_ca = write_pem(tmp_path / "sim-ca.pem", sim_ca.certificate)
    test = doctor.check_trust_anchors(_env(tmp_path, test_ca))
    assert test.status is WARNING, test
    assert f"{test_ca}: SHA-256 " in test.message
    assert doctor.NOT_JLIS in test.message
    assert "real My Number Cards will not validate against it" in test.message
    assert "simulator's CA" in test.fix

    both = doctor.check_trust_anchors(_env(tmp_path, CA_2023, test_ca))
    assert both.status is WARNING  # a test CA next to the real one is still reported
    assert "CA 2023" in both.message
    assert doctor.NOT_JLIS in both.message


def test_the_expired_2015_ca_alone_is_a_warning(tmp_path: Path) -> None:
    result = doctor.check_trust_anchors(_env(tmp_path, CA_2015))
    assert result.status is WARNING, result
    assert "CA 2015 (serial 01), expired 2025-10-19 23:59:59+09:00" in result.message
    assert "the only J-LIS CA configured has expired" in result.message
    assert "2023" in result.fix


def test_2015_and_2023_in_a_directory_are_ok(tmp_path: Path) -> None:
    anchors = tmp_path / "anchors"
    anchors.mkdir()
    for pem in (CA_2015, CA_2023):
        (anchors / pem.name).write_bytes(pem.read_bytes())
    result = doctor.check_trust_anchors(_env(tmp_path, anchors))
    assert result.status is OK, result
    assert "CA 2015 (serial 01), expired 2025-10-19" in result.message
    assert "CA 2023 (serial 06D18006), valid to 2033-07-15" in result.message


def test_an_unreadable_anchor_is_a_problem_and_none_is_skipped(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    result = doctor.check_trust_anchors(_env(tmp_path, bad))
    assert result.status is PROBLEM
    assert str(bad) in result.message
    assert doctor.check_trust_anchors(_env(tmp_path)).status is SKIPPED


def test_the_revocation_source(tmp_path: Path, sim_ca: SimulatedCa) -> None:
    none = doctor.check_crl(_env(tmp_path, CA_2023))
    assert none.status is PROBLEM
    assert "revocation source: none" in none.message
    assert "without revocation information a revoked card's certificate is accepted" in none.message
    assert "platform operator" in none.fix

    fresh_crl = sim_ca.crl([], this_update=NOW - timedelta(hours=3), next_update=NOW + timedelta(days=2))
    fresh = write_pem(tmp_path / "fresh.crl", fresh_crl)
    ok = doctor.check_crl(_env(tmp_path, CA_2023, crls=(fresh,)))
    assert ok.status is OK, ok
    assert (
        ok.message
        == "revocation source: local CRL file(s): 1 CRL(s) current, next update 2026-06-03 03:00 UTC"
    )

    stale_crl = sim_ca.crl([], this_update=NOW - timedelta(days=3), next_update=NOW - timedelta(hours=1))
    stale = write_pem(tmp_path / "stale.crl", stale_crl)
    refused = doctor.check_crl(_env(tmp_path, CA_2023, crls=(stale,)))
    assert refused.status is PROBLEM
    assert refused.message.startswith("revocation source: local CRL file(s): ")
    assert f"{stale}: stale since 2026-06-01 02:00 UTC" in refused.message
    assert "a card revoked since it is accepted" not in refused.message  # refused, not accepted

    allowed = doctor.check_crl(_env(tmp_path, CA_2023, crls=(stale,), stale_crl="allow_with_warning"))
    assert allowed.status is PROBLEM
    assert "allow_with_warning: a card revoked since it is accepted" in allowed.message


def test_without_authentication_both_checks_are_skipped(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert doctor.check_crl(env).status is SKIPPED
    assert doctor.check_trust_anchors(env).status is SKIPPED
    names = [name for name, _check in doctor.CHECKS]
    assert names.index("trust_anchors") + 1 == names.index("crl")
