"""Shared by the deployment tests: the repository's paths and "skip, or fail under CI" for system tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
INSTALL_KIOSK = ROOT / "scripts" / "install-kiosk"
VENV_BIN = Path(sys.executable).parent


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_tool(name: str) -> str:
    """The tool's path; a missing tool skips the test, except under CI (scripts/bootstrap installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package systemd; scripts/bootstrap --test installs it)"
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def install_kiosk(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """scripts/install-kiosk into ``prefix`` (never the real root), files only, naming this venv."""
    return subprocess.run(
        [
            str(INSTALL_KIOSK),
            "--prefix",
            str(prefix),
            "--venv",
            str(VENV_BIN.parent),
            "--no-venv",
            "--no-apt",
            "--kiosk",
            "test-kiosk",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
