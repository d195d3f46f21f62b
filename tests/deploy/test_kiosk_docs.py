"""docs/kiosk.md keeps up with the code: a section for every doctor check, a row for every metric, and
the installer's options and files as they are."""

from __future__ import annotations

import re

from readerd.cli import doctor
from readerd.ops.metrics import DaemonView, Metrics
from tests.deploy.support import INSTALL_KIOSK, ROOT

KIOSK = (ROOT / "docs" / "kiosk.md").read_text(encoding="utf-8")


def test_a_section_for_every_doctor_check() -> None:
    sections = set(re.findall(r"^### (\w+)$", KIOSK, flags=re.MULTILINE))
    assert {name for name, _check in doctor.CHECKS} <= sections


def test_a_row_for_every_metric() -> None:
    view = DaemonView(published=lambda: 0, dropped=dict, queue_depth=lambda: 0, healthy=lambda: True)
    families = {family.name for family in Metrics(view).registry.collect()}
    assert "readerd_bus_subscribers" in families  # the daemon's own figures are included
    for name in families:
        assert f"`{name}" in KIOSK, name


def test_the_installer_options_it_documents_exist() -> None:
    script = INSTALL_KIOSK.read_text(encoding="utf-8")
    for option in re.findall(r"install-kiosk (--[a-z-]+)", KIOSK):
        assert f"    {option})" in script, option
