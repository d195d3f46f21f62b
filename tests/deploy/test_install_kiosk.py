"""scripts/install-kiosk under --prefix: what it installs, that a second run changes nothing, that the
configuration is never overwritten, and that --dry-run writes nothing. System commands (systemctl,
udevadm, modprobe, apt) run only on the real root, so these tests only see them listed as skipped."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from readerd.config import load_config
from tests.deploy.support import INSTALL_KIOSK, SYSTEMD, VENV_BIN, install_kiosk

INSTALLED = {
    "etc/systemd/system/readerd.service": 0o644,
    "etc/systemd/system/readerd-plugins.service": 0o644,
    "etc/udev/rules.d/70-readerd-nfc.rules": 0o644,
    "etc/modprobe.d/readerd-blacklist-port100.conf": 0o644,
    "etc/sysusers.d/readerd.conf": 0o644,
    "etc/tmpfiles.d/readerd.conf": 0o644,
    "etc/readerd/readerd.toml": 0o640,
}


def test_installs_every_file_with_its_mode(tmp_path: Path) -> None:
    out = install_kiosk(tmp_path).stdout
    for path, mode in INSTALLED.items():
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == mode, path
        assert f"installed /{path}" in out
    for command in (
        "systemd-sysusers",
        "systemd-tmpfiles --create",
        "udevadm control --reload",
        "systemctl daemon-reload",
        "systemctl enable readerd.service",
    ):
        assert f"skipped (--prefix): {command}" in out
    assert (tmp_path / "etc/udev/rules.d/70-readerd-nfc.rules").read_bytes() == (
        SYSTEMD / "70-readerd-nfc.rules"
    ).read_bytes()
    unit = (tmp_path / "etc/systemd/system/readerd.service").read_text()
    assert f"ExecStart={VENV_BIN}/readerd run " in unit  # --venv is written into the units


def test_the_new_configuration_is_valid_and_names_the_kiosk(tmp_path: Path) -> None:
    install_kiosk(tmp_path)
    config = load_config(tmp_path / "etc/readerd/readerd.toml").validate()
    assert config.kiosk == "test-kiosk"
    assert config.backends == ("pcsc",)


def test_a_second_run_changes_nothing_and_keeps_the_configuration(tmp_path: Path) -> None:
    install_kiosk(tmp_path)
    config = tmp_path / "etc/readerd/readerd.toml"
    config.write_text('kiosk = "edited-by-the-operator"\nbackends = ["pcsc", "nfc"]\n')
    out = install_kiosk(tmp_path).stdout
    assert "installed" not in out
    for path in INSTALLED:
        assert f"/{path}" in out
    assert "kept /etc/readerd/readerd.toml" in out
    assert "edited-by-the-operator" in config.read_text()


def test_a_changed_file_is_replaced(tmp_path: Path) -> None:
    """An upgrade: a unit edited in place (instead of a drop-in) gets the shipped version back."""
    install_kiosk(tmp_path)
    unit = tmp_path / "etc/systemd/system/readerd.service"
    unit.write_text("[Service]\n")
    out = install_kiosk(tmp_path).stdout
    assert "installed /etc/systemd/system/readerd.service" in out
    assert "Type=notify" in unit.read_text()


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = install_kiosk(tmp_path, "--dry-run").stdout
    assert list(tmp_path.iterdir()) == []
    assert "would install /etc/systemd/system/readerd.service (mode 0644)" in out
    assert "would run: systemctl enable readerd.service" in out


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(INSTALL_KIOSK), "--prefix", str(tmp_path), "--bogus"], capture_output=True, check=False
    )
    assert result.returncode == 64
    assert list(tmp_path.iterdir()) == []
