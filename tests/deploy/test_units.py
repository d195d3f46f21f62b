"""The systemd units, udev rules, sysusers and tmpfiles snippets: checked by systemd's own tools.

``systemd-analyze verify`` needs the ExecStart binary to exist, so it runs on the units as
``scripts/install-kiosk`` writes them for this test's virtualenv (the shipped files name /opt/readerd).
"""

from __future__ import annotations

import configparser
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from readerd.cli.main import build_parser
from readerd.reading.backends.usb import supported_ids
from tests.deploy.support import SYSTEMD, install_kiosk, require_tool

UNITS = ("readerd.service", "readerd-plugins.service", "readerd-web.service")
#: The highest ``systemd-analyze security`` exposure a unit may have; what the units reach is stated in
#: docs/kiosk.md.
MAX_EXPOSURE = 3.0


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    install_kiosk(tmp_path)
    return tmp_path


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / name)
    return parser


def test_systemd_analyze_verify_passes_without_a_warning(installed: Path) -> None:
    analyze = require_tool("systemd-analyze")
    units = [str(installed / "etc/systemd/system" / unit) for unit in UNITS]
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units], capture_output=True, text=True, check=False
    )
    # verify exits 0 on directives it ignores ("Failed to parse ..., ignoring"): any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_catches_a_bad_directive(installed: Path) -> None:
    """The check above would notice a mistake (verify's exit code alone would not)."""
    analyze = require_tool("systemd-analyze")
    unit = installed / "etc/systemd/system/readerd.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    assert "sometimes" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_is_at_most_the_target(unit: str) -> None:
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(SYSTEMD / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE


def _exposure(analyze: str, unit: Path) -> float:
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


def test_the_loopback_drop_in_of_the_kiosk_guide_tightens_the_unit(tmp_path: Path) -> None:
    """docs/kiosk.md's drop-in for a kiosk that talks only to localhost, applied to the unit."""
    analyze = require_tool("systemd-analyze")
    guide = (SYSTEMD.parent / "docs" / "kiosk.md").read_text(encoding="utf-8")
    drop_in = re.search(r"```ini\n\s*\[Service\]\n((?:\s*IPAddress\w+=\S+\n)+)", guide)
    assert drop_in, "the loopback drop-in is not in docs/kiosk.md"
    lines = [line.strip() for line in drop_in.group(1).splitlines()]
    assert lines == ["IPAddressDeny=any", "IPAddressAllow=localhost"]
    unit = tmp_path / "readerd.service"
    unit.write_text(
        (SYSTEMD / "readerd.service").read_text().replace("[Install]", "\n".join(lines) + "\n\n[Install]")
    )
    assert _exposure(analyze, unit) < _exposure(analyze, SYSTEMD / "readerd.service")


def test_daemon_unit_shape() -> None:
    service = _unit("readerd.service")["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "78"  # bad config: a restart cannot fix it
    assert int(service["WatchdogSec"]) > 0
    assert service["User"] == service["Group"] == "readerd"
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert service[key] == "readerd"
    assert service["DeviceAllow"] == "char-usb_device rw"
    assert service["ExecStart"].split()[:2] == ["/opt/readerd/bin/readerd", "run"]
    unit = _unit("readerd.service")["Unit"]
    assert "pcscd.socket" in unit["After"].split()


@pytest.mark.parametrize("unit", UNITS)
def test_exec_start_is_a_command_line_readerd_accepts(unit: str) -> None:
    """The flags the units pass are readerd's own (a renamed flag would fail at the kiosk's boot)."""
    service = _unit(unit)["Service"]
    argv = service["ExecStart"].split()
    assert argv[0] == "/opt/readerd/bin/readerd"
    args = build_parser().parse_args(argv[1:])
    if str(args.config).startswith("%d/"):  # a credential: systemd's copy of the file for this unit alone
        assert service["LoadCredential"] == f"{args.config.name}:/etc/readerd/readerd.toml"
    else:
        assert args.config == Path("/etc/readerd/readerd.toml")
    assert args.log_format == "json"


def test_web_unit_shape() -> None:
    """readerd web as a user of its own: no daemon group, the config as a credential, the control role's
    group and the kiosk's group (for the per-boot secret), a runtime directory that outlives a restart."""
    service = _unit("readerd-web.service")["Service"]
    assert service["User"] == service["Group"] == "readerd-web"
    assert service["SupplementaryGroups"].split() == ["readerd-control", "readerd-kiosk"]
    assert service["ExecStart"].split()[:2] == ["/opt/readerd/bin/readerd", "web"]
    assert service["RestartPreventExitStatus"] == "78"
    assert (service["RuntimeDirectory"], service["RuntimeDirectoryMode"]) == ("readerd-web", "0711")
    assert service["RuntimeDirectoryPreserve"] == "restart"
    assert "StateDirectory" not in service


def test_udev_rules_cover_exactly_the_readers_nfcpy_drives() -> None:
    rules = (SYSTEMD / "70-readerd-nfc.rules").read_text()
    found = {
        (int(vendor, 16), int(product, 16))
        for vendor, product in re.findall(r'ATTR\{idVendor\}=="(\w{4})", ATTR\{idProduct\}=="(\w{4})"', rules)
    }
    assert found == set(supported_ids())
    for line in rules.splitlines():
        if "idVendor" in line:
            assert line.endswith('MODE="0660", GROUP="readerd"')
    assert (0x054C, 0x06C1) in found  # the RC-S380 the kiosks use


def test_port100_is_blacklisted() -> None:
    lines = (SYSTEMD / "readerd-blacklist-port100.conf").read_text().splitlines()
    assert "blacklist port100" in lines


def _entries(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


@pytest.mark.skipif(
    os.geteuid() != 0, reason="chowns to the new user: root only (the next test runs unprivileged)"
)
def test_sysusers_and_tmpfiles_apply_in_a_private_root(installed: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles themselves, on the installed snippets, under a test root."""
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    (installed / "etc/passwd").touch()
    (installed / "etc/group").touch()
    subprocess.run(
        [sysusers, f"--root={installed}", str(installed / "etc/sysusers.d/readerd.conf")],
        capture_output=True,
        check=True,
    )
    passwd = _entries(installed / "etc/passwd")
    groups = _entries(installed / "etc/group")
    assert passwd["readerd"][6] == "/usr/sbin/nologin"
    assert "readerd" in groups["readerd-operator"][3].split(",")
    assert "readerd" in groups["readerd-control"][3].split(",")
    assert set(groups["readerd-control"][3].split(",")) == {"readerd", "readerd-web"}
    assert groups["readerd-kiosk"][3].split(",") == ["readerd-web"]
    assert passwd["readerd-web"][6] == "/usr/sbin/nologin"
    subprocess.run(
        [tmpfiles, f"--root={installed}", "--create", str(installed / "etc/tmpfiles.d/readerd.conf")],
        capture_output=True,
        check=True,
    )
    state = (installed / "var/lib/readerd").stat()
    assert stat.S_IMODE(state.st_mode) == 0o700
    assert state.st_uid == int(passwd["readerd"][2])
    config = (installed / "etc/readerd/readerd.toml").stat()
    assert stat.S_IMODE(config.st_mode) == 0o640
    assert config.st_gid == int(groups["readerd"][2])


def test_sysusers_and_tmpfiles_unprivileged(installed: Path) -> None:
    """The same snippets as any user can check them (CI may not be root): sysusers --dry-run, and
    tmpfiles with the owners left out, so the modes and paths are still applied for real."""
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    (installed / "etc/passwd").touch()
    (installed / "etc/group").touch()
    plan = subprocess.run(
        [sysusers, "--dry-run", f"--root={installed}", str(installed / "etc/sysusers.d/readerd.conf")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Creating user 'readerd'" in plan.stdout + plan.stderr
    for group in ("readerd-operator", "readerd-control", "readerd-kiosk"):
        assert f"Creating group '{group}'" in plan.stdout + plan.stderr
    snippet = installed / "etc/tmpfiles.d/readerd.conf"
    ownerless = re.sub(
        r" (root|readerd) (root|readerd) -$", " - - -", snippet.read_text(), flags=re.MULTILINE
    )
    assert ownerless.count(" - - -") == 4
    snippet.write_text(ownerless)
    subprocess.run(
        [tmpfiles, f"--root={installed}", "--create", str(snippet)], capture_output=True, check=True
    )
    assert stat.S_IMODE((installed / "var/lib/readerd").stat().st_mode) == 0o700
    assert stat.S_IMODE((installed / "etc/readerd").stat().st_mode) == 0o755
    assert stat.S_IMODE((installed / "etc/readerd/readerd.toml").stat().st_mode) == 0o640
