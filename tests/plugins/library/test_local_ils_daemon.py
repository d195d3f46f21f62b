"""The library plugin with ``ils = "local"`` lends through the daemon: its loans are a schema of their own
(``loans``) beside the patron tables, so both lists are applied (before schema names, both were "shared
version 1" and the loans table was never made: ``no such table: library__loans``); then
``readerctl doctor`` finds the plugin's migrations as the code has them.

Cost: about 1 s (one daemon on the sim backend, a JPKI registration, three checkouts).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from readerd.bus.control_client import ControlSession
from readerd.cli import doctor
from readerd.cli.doctor import DoctorEnv
from readerd.config import PluginsConfig
from readerd.plugin.api import CheckStatus
from readerd.plugin.discovery import discover
from readerd.plugin.store import recorded_migrations
from tests.plugins.library.test_library_e2e import authenticate, data
from tests.support.auth import READER, error, ok, tap
from tests.support.daemon import RunningDaemon, Subscriber, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)
SECTION = {"library_id": "chuo", "ils": "local", "loan_limit": 2, "loan_days": 14}


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[tuple[RunningDaemon, Subscriber, ControlSession]]:
    plugins = PluginsConfig(autoload=False, builtins=("library",), sections={"library": SECTION})
    with (
        running_daemon(sim_config(tmp_path, plugins=plugins)) as d,
        d.subscriber("") as sub,
        d.session() as ui,
    ):
        yield d, sub, ui


def test_the_local_ils_lends_and_doctor_finds_its_schemas(
    tmp_path: Path, kiosk: tuple[RunningDaemon, Subscriber, ControlSession]
) -> None:
    d, sub, ui = kiosk
    tap(d, sub, "hana")
    ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))
    d.remove()
    tap(d, sub, "hana")
    authenticate(ui)
    key = {"reader": READER, "library_card": "L7001", "idempotency_key": "r1"}
    assert ok(ui.request("library.register", key))["registered"] is True
    first = ok(ui.request("library.checkout", {"reader": READER, "item": "B1", "idempotency_key": "c1"}))
    second = ok(ui.request("library.checkout", {"reader": READER, "item": "B2", "idempotency_key": "c2"}))
    over = error(ui.request("library.checkout", {"reader": READER, "item": "B3", "idempotency_key": "c3"}))
    returned = ok(ui.request("library.return", {"item": "B2", "idempotency_key": "t1"}))
    assert first["item"] == "B1"
    assert first["due"] == second["due"]
    assert over["code"] == "limit_reached"  # loan_limit = 2, counted from the loans table
    assert returned == {"item": "B2", "due": None}
    published = data(sub, "plugin.library.checkout")
    assert (published["status"], published["due"]) == ("ok", first["due"])

    engine = sa.create_engine(f"sqlite:///{d.daemon.config.state_dir}/store.db")
    with engine.connect() as conn:
        rows = {
            (r.role, r.schema, r.version, r.name) for r in recorded_migrations(conn) if r.plugin == "library"
        }
    engine.dispose()
    assert ("shared", "", 1, "shared_v1") in rows
    assert ("shared", "loans", 1, "local_ils_v1") in rows

    env = DoctorEnv(config_path=tmp_path / "none.toml")
    env.config = d.daemon.config
    env.config_ok = True
    findings = {f.name: f for f in doctor.migration_findings(env, discover(env.config.plugins).pm)}
    assert findings["library.migrations"].status is CheckStatus.OK, findings["library.migrations"]
    assert "shared/loans" in findings["library.migrations"].message


def test_register_right_after_enrolment_needs_no_second_tap(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession],
) -> None:
    """The tap said ``enrolled: false``; ``mykey.enroll`` publishes ``member.enrolled``, the plugin updates
    the card it holds, and ``library.register`` works with the card still on the reader. Cost: < 1 s."""
    d, sub, ui = kiosk
    assert tap(d, sub, "kenji")["data"]["enrolled"] is False
    member = ok(ui.request("mykey.enroll", {"auth_id": authenticate(ui)}))["member_id"]
    enrolled = sub.until(lambda e: e["type"] == "member.enrolled")[-1]
    authenticate(ui)
    key = {"reader": READER, "library_card": "L7002", "idempotency_key": "r-kenji"}
    registered = ok(ui.request("library.register", key))
    assert enrolled["data"]["member_id"] == member
    assert enrolled["data"]["created"] is True
    assert registered["registered"] is True
