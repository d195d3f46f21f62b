"""readerctl doctor: every check finds its problem in a constructed bad environment and passes in a good
one. Paths, the clock, USB enumeration and the daemon's user are injected through DoctorEnv; the pcscd
checks run against the suite's private pcscd (never the system's), the shared store against the private
PostgreSQL cluster."""

from __future__ import annotations

import grp
import json
import os
import pwd
import sqlite3
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from readerd.cli import doctor
from readerd.cli.doctor import DoctorEnv, run_doctor
from readerd.config import BUILTIN_PLUGINS as BUILTIN
from readerd.config import AuthConfig, BusConfig, Config, NfcConfig, PcscConfig, PluginsConfig, StoreConfig
from readerd.plugin import MigrationContext, Schema, contract, hookimpl
from readerd.plugin.api import CheckStatus
from readerd.plugin.store import Migration
from readerd.reading.backends.usb import UsbReader
from tests.deploy.support import VENV_BIN
from tests.support.daemon import running_daemon, sim_config
from tests.support.pcscd import PrivatePcscd
from tests.support.ports import free_tcp_port

OK, WARNING, PROBLEM, SKIPPED = CheckStatus.OK, CheckStatus.WARNING, CheckStatus.PROBLEM, CheckStatus.SKIPPED
NOW = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def _env(tmp_path: Path, config: Config | None = None, **kw: object) -> DoctorEnv:
    env = DoctorEnv(
        config_path=tmp_path / "readerd.toml", daemon_user=ME, daemon_group=MY_GROUP, now=lambda: NOW
    )
    env.config = config or Config(backends=("pcsc",), state_dir=str(tmp_path / "state"))
    env.config_ok = True
    for key, value in kw.items():
        setattr(env, key, value)
    return env


# --- config ----------------------------------------------------------------------------------------
def test_config_good(tmp_path: Path) -> None:
    env = _env(tmp_path)
    env.config_path.write_text('kiosk = "lib-1"\nbackends = ["pcsc"]\n')
    result = doctor.check_config(env)
    assert result.status is OK
    assert env.config.kiosk == "lib-1"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (None, "no configuration file"),
        ('backends = ["pcsc"]\n[pcsc]\nalow_virtual_readers = true\n', "alow_virtual_readers"),
        ('kiosk = "lib-1"\n', "no reader backend"),
        ('backends = ["sim"]\n', "sim backend"),
        ("backends = [\n", "readerd.toml"),
    ],
)
def test_config_bad(tmp_path: Path, text: str | None, said: str) -> None:
    env = _env(tmp_path)
    if text is not None:
        env.config_path.write_text(text)
    result = doctor.check_config(env)
    assert result.status is PROBLEM
    assert said in result.message
    assert result.fix


def test_virtual_readers(tmp_path: Path) -> None:
    assert doctor.check_virtual_readers(_env(tmp_path)).status is OK
    vpcd = Config(backends=("pcsc",), pcsc=PcscConfig(allow_virtual_readers=True))
    assert doctor.check_virtual_readers(_env(tmp_path, vpcd)).status is PROBLEM


# --- the daemon ------------------------------------------------------------------------------------
def test_daemon_running_and_healthy(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path / "d")) as d:
        env = _env(tmp_path, Config(backends=("pcsc",), bus=BusConfig(control=d.control)))
        result = doctor.check_daemon(env)
    assert result.status is OK
    assert "2 reader(s)" in result.message


def test_daemon_not_running(tmp_path: Path) -> None:
    env = _env(
        tmp_path, Config(backends=("pcsc",), bus=BusConfig(control=f"tcp://127.0.0.1:{free_tcp_port()}"))
    )
    result = doctor.check_daemon(env)
    assert result.status is PROBLEM
    assert "journalctl -u readerd" in result.fix


def test_daemon_unhealthy(tmp_path: Path) -> None:
    """What ``status`` says while the watchdog pings are withheld (tests/deploy/test_watchdog.py)."""
    env = _env(tmp_path, control_request=lambda _e, _c: {"ok": True, "result": {"healthy": False}})
    result = doctor.check_daemon(env)
    assert result.status is PROBLEM
    assert "wedged" in result.message


# --- pcscd (the private instance) ------------------------------------------------------------------
@pytest.mark.pcscd
def test_pcscd_checks_against_a_private_pcscd(tmp_path: Path, private_pcscd: PrivatePcscd) -> None:
    virtual = Config(backends=("pcsc",), pcsc=PcscConfig(allow_virtual_readers=True))
    env = _env(tmp_path, virtual)
    assert doctor.check_pcscd(env).status is OK
    seen = doctor.check_readers_seen(env)
    assert (seen.status, seen.message) == (OK, "readers: Virtual PCD 00 00, Virtual PCD 00 01")

    env.config = replace(virtual, pcsc=PcscConfig(allow_virtual_readers=True, readers=("Virtual PCD 00 01",)))
    assert doctor.check_configured_readers(env).status is OK
    env.config = replace(virtual, pcsc=PcscConfig(allow_virtual_readers=True, readers=("ACS ACR1252",)))
    missing = doctor.check_configured_readers(env)
    assert missing.status is PROBLEM
    assert "ACS ACR1252" in missing.message

    # The same pcscd seen by a kiosk configuration: vpcd's readers do not count.
    env.config = Config(backends=("pcsc",))
    nothing = doctor.check_readers_seen(env)
    assert nothing.status is PROBLEM
    assert "ignored: Virtual PCD 00 00" in nothing.message

    private_pcscd.stop()
    down = doctor.check_pcscd(env)
    assert down.status is PROBLEM
    assert "pcscd.socket" in down.fix
    assert doctor.check_readers_seen(env).status is SKIPPED


def test_pcsc_checks_skip_without_the_pcsc_backend(tmp_path: Path) -> None:
    env = _env(tmp_path, Config(backends=("nfc",)))
    for check in (doctor.check_pcscd, doctor.check_readers_seen, doctor.check_configured_readers):
        assert check(env).status is SKIPPED


# --- USB NFC ---------------------------------------------------------------------------------------
RCS380 = UsbReader(bus=1, address=7, vendor=0x054C, product=0x06C1, driver="rcs380")
NFC = Config(backends=("nfc",), nfc=NfcConfig(devices=("usb",)))


def _device_node(root: Path, mode: int) -> Path:
    node = root / "001" / "007"
    node.parent.mkdir(parents=True, exist_ok=True)
    node.touch()
    node.chmod(mode)
    return node


def test_usb_access_good(tmp_path: Path) -> None:
    _device_node(tmp_path / "usb", 0o660)
    env = _env(tmp_path, NFC, usb_dev_root=tmp_path / "usb", usb_readers=lambda: [RCS380])
    assert doctor.check_usb_access(env).status is OK


@pytest.mark.parametrize("case", ["no_reader", "no_node", "mode_0600", "no_group"])
def test_usb_access_bad(tmp_path: Path, case: str) -> None:
    if case == "mode_0600":
        _device_node(tmp_path / "usb", 0o600)
    elif case != "no_node":
        _device_node(tmp_path / "usb", 0o660)
    readers = [] if case == "no_reader" else [RCS380]
    env = _env(tmp_path, NFC, usb_dev_root=tmp_path / "usb", usb_readers=lambda: readers)
    if case == "no_group":
        env.daemon_group = "readerd-no-such-group"
    result = doctor.check_usb_access(env)
    assert result.status is PROBLEM, result
    assert result.fix


def test_port100(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    modules.write_text("nfc 151552 1 port100, Live 0x0\nusbhid 69632 0 - Live 0x0\n")
    env = _env(tmp_path, NFC, proc_modules=modules, sys_module=tmp_path / "sys")
    assert doctor.check_port100(env).status is OK  # "port100," as a user of nfc is not the module
    modules.write_text("port100 24576 0 - Live 0x0\nnfc 151552 1 port100, Live 0x0\n")
    loaded = doctor.check_port100(env)
    assert loaded.status is PROBLEM
    assert "modprobe -r port100" in loaded.fix
    modules.write_text("")
    (tmp_path / "sys/port100").mkdir(parents=True)  # built in, or /proc/modules unreadable
    assert doctor.check_port100(env).status is PROBLEM
    assert doctor.check_port100(_env(tmp_path)).status is SKIPPED  # pcsc only


# --- state and store -------------------------------------------------------------------------------
def test_state_dir_good(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    assert doctor.check_state_dir(_env(tmp_path)).status is OK


def test_state_dir_bad(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert doctor.check_state_dir(env).status is WARNING  # not created yet: systemd will
    state = tmp_path / "state"
    state.write_text("")
    assert doctor.check_state_dir(env).status is PROBLEM
    state.unlink()
    state.mkdir(mode=0o755)
    assert doctor.check_state_dir(env).status is WARNING  # personal data readable by others
    state.chmod(0o700)
    env.daemon_user = "nobody"  # the daemon runs as someone else than the directory's owner
    wrong_owner = doctor.check_state_dir(env)
    assert wrong_owner.status is PROBLEM
    assert wrong_owner.fix.startswith("chown -R nobody:")


def test_store_good_sqlite(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    for name in ("members.db", "store.db"):
        sqlite3.connect(state / name).close()
    result = doctor.check_store(_env(tmp_path))
    assert result.status is OK
    assert "members.db" in result.message


def test_store_is_never_created(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    assert doctor.check_store(_env(tmp_path)).status is WARNING
    assert list((tmp_path / "state").iterdir()) == []  # a root-owned file would lock the daemon out


def test_store_bad_sqlite(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "members.db").write_bytes(b"this is not a database" * 100)
    result = doctor.check_store(_env(tmp_path))
    assert result.status is PROBLEM
    assert "members.db" in result.message


def test_store_bad_postgres(tmp_path: Path) -> None:
    config = Config(
        backends=("pcsc",),
        state_dir=str(tmp_path),
        store=StoreConfig(shared_url="postgresql+psycopg://readerd:secret@127.0.0.1:1/none"),
    )
    result = doctor.check_store(_env(tmp_path, config))
    assert result.status is PROBLEM
    assert "secret" not in result.message  # the password is redacted


@pytest.mark.postgres
def test_store_good_postgres(tmp_path: Path, postgres_url: str) -> None:
    config = Config(backends=("pcsc",), state_dir=str(tmp_path), store=StoreConfig(shared_url=postgres_url))
    result = doctor.check_store(_env(tmp_path, config))
    assert (result.status, result.message) == (OK, "store reachable: PostgreSQL")


# --- CRLs, bus keys, clock -------------------------------------------------------------------------
def _crl(path: Path, issued: datetime, next_update: datetime) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name)
        .last_update(issued)
        .next_update(next_update)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def _auth(tmp_path: Path, *crls: Path, max_age: float = 0) -> Config:
    anchors = (str(tmp_path),)
    auth = AuthConfig(trust_anchors=anchors, crl_files=tuple(map(str, crls)), crl_max_age_hours=max_age)
    return Config(backends=("pcsc",), auth=auth)


def test_crl_good(tmp_path: Path) -> None:
    crl = _crl(tmp_path / "auth.crl", NOW - timedelta(days=1), NOW + timedelta(days=6))
    result = doctor.check_crl(_env(tmp_path, _auth(tmp_path, crl)))
    assert result.status is OK
    assert "next update 2026-06-07" in result.message


def test_crl_not_configured(tmp_path: Path) -> None:
    result = doctor.check_crl(_env(tmp_path))
    assert (result.status, result.message.startswith("not configured")) == (SKIPPED, True)


@pytest.mark.parametrize("case", ["stale", "missing", "corrupt", "too_old", "due_soon"])
def test_crl_bad(tmp_path: Path, case: str) -> None:
    path = tmp_path / "auth.crl"
    max_age = 0.0
    if case == "stale":
        _crl(path, NOW - timedelta(days=8), NOW - timedelta(hours=1))
    elif case == "corrupt":
        path.write_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    elif case == "too_old":
        _crl(path, NOW - timedelta(days=3), NOW + timedelta(days=4))
        max_age = 48
    elif case == "due_soon":
        _crl(path, NOW - timedelta(days=7), NOW + timedelta(hours=2))
    result = doctor.check_crl(_env(tmp_path, _auth(tmp_path, path, max_age=max_age)))
    assert result.status is (WARNING if case == "due_soon" else PROBLEM), result
    assert str(path) in result.message
    assert "CRL" in result.fix


@dataclass(frozen=True)
class CurveBus:
    """The LAN bus's [bus] keys (bus.curve, bus.curve_dir), whether or not this tree's BusConfig has them."""

    curve_dir: str
    curve: bool = True
    publish: str = "tcp://0.0.0.0:7410"
    control: str = "tcp://0.0.0.0:7411"
    insecure_lan: bool = False


def _curve_env(tmp_path: Path) -> DoctorEnv:
    config = replace(Config(backends=("pcsc",)), bus=cast(BusConfig, CurveBus(str(tmp_path / "curve"))))
    return _env(tmp_path, config)


def test_bus_keys_good(tmp_path: Path) -> None:
    curve = tmp_path / "curve"
    (curve / "clients").mkdir(parents=True)
    (curve / "server.key").write_text("public")
    (curve / "server.key_secret").write_text("secret")
    (curve / "server.key_secret").chmod(0o600)
    (curve / "clients" / "screen-1.key").write_text("public")
    assert doctor.check_bus_keys(_curve_env(tmp_path)).status is OK
    assert doctor.check_bus_keys(_env(tmp_path)).status is SKIPPED  # loopback only: no keys needed


def test_bus_keys_bad(tmp_path: Path) -> None:
    lan = BusConfig(publish="tcp://192.0.2.10:7410", insecure_lan=True)
    result = doctor.check_bus_keys(_env(tmp_path, Config(backends=("pcsc",), bus=lan)))
    assert result.status is PROBLEM
    assert "without CURVE" in result.message
    env = _curve_env(tmp_path)
    curve = tmp_path / "curve"
    fresh = doctor.check_bus_keys(env)  # no keys at all: the daemon creates them at its first start
    assert fresh.status is WARNING
    assert "first start" in fresh.message
    curve.mkdir()
    (curve / "server.key").write_text("public")
    lost = doctor.check_bus_keys(env)
    assert lost.status is PROBLEM  # the secret is gone: a new pair would lock every client out
    assert "restore" in lost.fix
    (curve / "server.key").write_text("public")
    (curve / "server.key_secret").write_text("secret")
    (curve / "server.key_secret").chmod(0o644)
    assert "readable by others" in doctor.check_bus_keys(env).message
    (curve / "server.key_secret").chmod(0o600)
    assert doctor.check_bus_keys(env).status is WARNING  # nobody may connect yet


def test_clock(tmp_path: Path) -> None:
    assert doctor.check_clock(_env(tmp_path)).status is OK
    dead_battery = doctor.check_clock(_env(tmp_path, now=lambda: datetime(2001, 1, 1, tzinfo=UTC)))
    assert dead_battery.status is PROBLEM
    assert "timedatectl" in dead_battery.fix
    crl = _crl(tmp_path / "auth.crl", NOW + timedelta(days=2), NOW + timedelta(days=9))
    behind = doctor.check_clock(_env(tmp_path, _auth(tmp_path, crl)))
    assert behind.status is PROBLEM
    assert "behind a CRL" in behind.message


# --- plugins and the whole run ---------------------------------------------------------------------
def test_plugin_checks_are_run_and_a_broken_one_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BUILTIN, "probe", "tests.deploy.doctor_plugin")
    plugins = PluginsConfig(autoload=False, builtins=("probe",))
    env = _env(tmp_path, Config(backends=("pcsc",), plugins=plugins))
    findings = {f.name: f for f in doctor.plugin_findings(env)}
    assert findings["probe.ils"].status is OK
    assert findings["probe.printer"].status is PROBLEM
    assert findings["probe.printer"].fix == "load a paper roll"
    assert findings["probe.broken"].status is PROBLEM
    assert "the plugin's own bug" in findings["probe.broken"].message
    assert {f.source for f in findings.values()} == {"probe"}


def test_a_plugin_that_does_not_load_is_a_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN, "ghost", "tests.deploy.no_such_module")
    plugins = PluginsConfig(autoload=False, builtins=("ghost",))
    env = _env(tmp_path, Config(backends=("pcsc",), plugins=plugins))
    (finding,) = doctor.plugin_findings(env)
    assert (finding.name, finding.status) == ("ghost.load", PROBLEM)


def test_run_doctor_orders_every_check(tmp_path: Path) -> None:
    env = DoctorEnv(config_path=tmp_path / "missing.toml", load_plugins=False, now=lambda: NOW)
    names = [f.name for f in run_doctor(env)]
    assert names == [name for name, _check in doctor.CHECKS]


def _readerctl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A socket path with no pcscd behind it: the test must never reach the system's pcscd.
    env = dict(
        os.environ, PCSCLITE_CSOCK_NAME=str(tmp_path / "no-pcscd.comm"), READERD_DISABLE_PLUGIN_AUTOLOAD="1"
    )
    return subprocess.run(
        [str(VENV_BIN / "readerctl"), *args], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def test_readerctl_doctor_json_exit_codes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    good = tmp_path / "good.toml"
    with running_daemon(sim_config(tmp_path / "d")) as d:
        good.write_text(
            f'kiosk = "k1"\nstate_dir = "{state}"\nbackends = ["nfc"]\n[nfc]\ndevices = ["udp:127.0.0.1:9"]\n'
            f'[bus]\ncontrol = "{d.control}"\n'
        )
        ok = _readerctl(tmp_path, "--config", str(good), "doctor", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    body = json.loads(ok.stdout)
    assert body["ok"] is True
    assert {c["name"]: c["status"] for c in body["checks"]}["config"] == "ok"

    bad = tmp_path / "bad.toml"
    bad.write_text('backends = ["pcsc"]\n')
    failed = _readerctl(tmp_path, "--json", "--config", str(bad), "doctor")
    assert failed.returncode == 1
    checks = {c["name"]: c for c in json.loads(failed.stdout)["checks"]}
    assert checks["pcscd"]["status"] == "problem"
    assert checks["pcscd"]["fix"]


def test_readerctl_doctor_text(tmp_path: Path) -> None:
    result = _readerctl(tmp_path, "--config", str(tmp_path / "none.toml"), "doctor", "--no-plugins")
    # (nothing listens on the default control port here: the suite's daemons take free ports)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith("[FAIL] config: no configuration file at ")
    assert "       fix: run scripts/install-kiosk" in result.stdout
    assert "[FAIL] daemon: readerd does not answer at tcp://127.0.0.1:7411" in result.stdout  # the default
    assert result.stdout.splitlines()[-1] == "2 problem(s)"


# --- plugin configuration keys and migrations ------------------------------------------------------------
def _checkin_env(tmp_path: Path, section: dict[str, object]) -> DoctorEnv:
    plugins = PluginsConfig(autoload=False, builtins=("checkin",), sections={"checkin": section})
    return _env(tmp_path, Config(backends=("pcsc",), state_dir=str(tmp_path / "state"), plugins=plugins))


def test_a_misspelt_or_mistyped_plugin_key_is_a_problem_each(tmp_path: Path) -> None:
    env = _checkin_env(tmp_path, {"evnt": "bon-odori", "sync_interval": "ten", "grants": []})
    findings = {f.name: f for f in doctor.plugin_findings(env)}
    assert findings["checkin.config.evnt"].status is PROBLEM
    assert "did you mean `event`?" in findings["checkin.config.evnt"].message
    assert findings["checkin.config.sync_interval"].status is PROBLEM
    assert "expected a number" in findings["checkin.config.sync_interval"].message
    assert "checkin.config" not in findings  # no "all declared" beside the problems

    misnamed = _checkin_env(tmp_path, {})
    sections: dict[str, dict[str, object]] = {"checkin": {}, "chekin": {"event": "bon-odori"}}
    misnamed.config = replace(misnamed.config, plugins=replace(misnamed.config.plugins, sections=sections))
    table = {f.name: f for f in doctor.plugin_findings(misnamed)}["config.plugins.chekin"]
    assert table.status is WARNING
    assert "belongs to no plugin this configuration loads; did you mean [plugins.checkin]?" in table.message

    good = {f.name: f for f in doctor.plugin_findings(_checkin_env(tmp_path, {"event": "bon-odori"}))}
    assert good["checkin.config"].status is OK
    assert not [name for name in good if name.startswith("checkin.config.")]


def test_a_plugin_declaring_no_keys_is_not_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN, "probe", "tests.deploy.doctor_plugin")
    plugins = PluginsConfig(autoload=False, builtins=("probe",), sections={"probe": {"anything": 1}})
    env = _env(tmp_path, Config(backends=("pcsc",), plugins=plugins))
    findings = {f.name: f for f in doctor.plugin_findings(env)}
    assert findings["probe.config"].status is SKIPPED
    assert "not checked" in findings["probe.config"].message


def _library_env(tmp_path: Path) -> DoctorEnv:
    plugins = PluginsConfig(autoload=False, builtins=("library",), sections={"library": {"ils": "local"}})
    return _env(tmp_path, Config(backends=("pcsc",), state_dir=str(tmp_path / "state"), plugins=plugins))


def test_applied_migrations_that_differ_from_the_code_are_a_problem(tmp_path: Path) -> None:
    from plugins.library.ils import local_ils_v1  # noqa: PLC0415 - the built-in's own migration
    from readerd.plugin.store import Store  # noqa: PLC0415

    env = _library_env(tmp_path)
    before = {f.name: f for f in doctor.plugin_findings(env)}["library.migrations"]
    assert (before.status, before.message) == (SKIPPED, "no store yet: nothing recorded")
    (tmp_path / "state").mkdir(mode=0o700)
    with Store.open(StoreConfig(), tmp_path / "state") as store:
        # What the release before schema names recorded when a loan came first: the local ILS's
        # migration as version 1 of the library's one shared schema (its patron tables never made).
        store.for_plugin("library").shared.migrate([local_ils_v1])
    findings = {f.name: f for f in doctor.plugin_findings(env)}
    found = findings["library.migrations"]
    assert found.status is PROBLEM
    assert (
        "shared schema (default) version 1: recorded 'local_ils_v1', the code has 'shared_v1'"
        in found.message
    )
    assert not doctor.healthy(findings.values())


def test_migrations_as_the_code_has_them_pass(tmp_path: Path) -> None:
    from plugins.library import settings  # noqa: PLC0415 - the built-in's declared lists
    from readerd.plugin.store import Store  # noqa: PLC0415

    env = _library_env(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    with Store.open(StoreConfig(), tmp_path / "state") as store:
        library = store.for_plugin("library")
        for schema in settings.SCHEMAS:
            getattr(library, schema.role).migrate(schema.migrations, schema=schema.name)
    found = {f.name: f for f in doctor.plugin_findings(env)}["library.migrations"]
    assert found.status is OK, found
    assert found.message == "applied migrations match the code (shared/default, local/default, shared/loans)"


def ledger_v1(m: MigrationContext) -> None:
    m.create_table("entries", sa.Column("id", sa.Integer, primary_key=True))


def ledger_v2(m: MigrationContext) -> None:
    m.add_column("entries", sa.Column("amount", sa.Integer, nullable=True))


def entries_v1(m: MigrationContext) -> None:
    ledger_v1(m)


@contract
def ledger_v3(m: MigrationContext) -> None:
    m.drop_table("entries")


class LedgerPlugin:
    """A third-party plugin declaring its one list: doctor compares it as it does the built-ins'."""

    @hookimpl
    def readerd_schemas(self) -> list[Schema]:
        return [Schema("shared", [ledger_v1, ledger_v2])]


@pytest.mark.parametrize(
    ("applied", "status", "said"),
    [
        ([ledger_v1], OK, "applied migrations match the code (shared/default)"),  # v2 pending: fine
        ([entries_v1], PROBLEM, "recorded 'entries_v1', the code has 'ledger_v1'"),  # renamed after release
        ([ledger_v1, ledger_v2, ledger_v3], PROBLEM, "version 3 (ledger_v3) is a contract migration beyond"),
    ],
)
def test_a_third_party_plugins_migrations_are_compared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, applied: list[Migration], status: CheckStatus, said: str
) -> None:
    from readerd.plugin.store import Store  # noqa: PLC0415

    monkeypatch.setitem(BUILTIN, "ledger", f"{__name__}:LedgerPlugin")
    plugins = PluginsConfig(autoload=False, builtins=("ledger",))
    env = _env(tmp_path, Config(backends=("pcsc",), state_dir=str(tmp_path / "state"), plugins=plugins))
    (tmp_path / "state").mkdir(mode=0o700)
    with Store.open(StoreConfig(), tmp_path / "state", contract=True) as store:
        store.for_plugin("ledger").shared.migrate(applied)
    found = {f.name: f for f in doctor.plugin_findings(env)}["ledger.migrations"]
    assert found.status is status, found
    assert said in found.message
