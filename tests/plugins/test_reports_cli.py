"""``readerctl checkin|points|bathhouse`` reports against a running daemon: CSV for the offices, a table
for people. readerctl finds the subcommands through the kiosk's configuration."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from readerd.bus.control_client import ControlSession
from readerd.cli import ctl
from readerd.config import PluginsConfig
from readerd.plugin.business_time import TOKYO
from tests.support.auth import READER, ok
from tests.support.daemon import RunningDaemon, Subscriber, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)
BUILTINS = ("checkin", "points", "bathhouse")


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[tuple[RunningDaemon, Subscriber, ControlSession, Path]]:
    sections: dict[str, dict[str, object]] = {
        "checkin": {"event": "fest"},
        "bathhouse": {"bath_house": "matsu-no-yu"},
    }
    plugins = PluginsConfig(autoload=False, builtins=BUILTINS, sections=sections)
    config_file = tmp_path / "readerd.toml"
    config_file.write_text(
        '[plugins]\nautoload = false\nbuiltins = ["checkin", "points", "bathhouse"]\n', "utf-8"
    )
    with (
        running_daemon(sim_config(tmp_path / "state", plugins=plugins)) as d,
        d.subscriber("") as sub,
        d.session() as ui,
    ):
        yield d, sub, ui, config_file


def readerctl(
    d: RunningDaemon, config: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    capsys.readouterr()
    code = ctl.main(["--config", str(config), "--control", d.control, *args])
    return code, capsys.readouterr().out


def test_attendance_as_csv_and_as_a_table(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    d, sub, ui, config = kiosk
    now = datetime.now(UTC)
    ok(
        ui.request(
            "checkin.define_event",
            {
                "event_id": "fest",
                "name": "まつり",
                "place": "広場",
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(hours=1)).isoformat(),
                "idempotency_key": "e",
            },
        )
    )
    d.tap("00077", felica="checkin")
    sub.until(lambda e: e["type"] == "plugin.checkin.result")
    ok(ui.request("checkin.register_card", {"reader": READER, "member_id": "M77", "idempotency_key": "c"}))
    d.remove()
    sub.until(lambda e: e["type"] == "card.removed")
    d.tap("00077", felica="checkin")
    sub.until(lambda e: e["type"] == "plugin.checkin.result" and e["data"]["status"] == "accepted")
    code, out = readerctl(d, config, "checkin", "attendance", "fest", "--csv", capsys=capsys)
    table_code, table = readerctl(d, config, "checkin", "attendance", "fest", capsys=capsys)
    status_code, status = readerctl(d, config, "checkin", "status", "fest", capsys=capsys)
    json_code, raw = readerctl(
        d, config, "--json", "call", "checkin.attendance", "event_id=fest", capsys=capsys
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    wire = json.loads(raw)["rows"][0]["checked_in_at"]
    assert code == table_code == status_code == json_code == 0
    assert [(r["person"], r["via"], r["kiosk"]) for r in rows] == [("member:M77", "felica", "test-kiosk")]
    # The office reads JST with its offset; the wire and --json keep UTC: the same instant.
    assert wire.endswith("Z")
    assert rows[0]["checked_in_at"].endswith("+09:00")
    assert datetime.fromisoformat(rows[0]["checked_in_at"]) == datetime.fromisoformat(wire)
    assert rows[0]["checked_in_at"] in table
    assert "fest: 1 checked in" in table
    assert "checked_in: 1" in status
    assert "+09:00" in status


def test_points_settlement_as_csv_and_as_a_table(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    d, _, ui, config = kiosk
    ok(
        ui.request(
            "points.define_programme",
            {
                "programme_id": "ward",
                "name": "区民ポイント",
                "last_earning_day": "2099-12-31",
                "last_ticket_day": "2099-12-31",
                "last_use_day": "2099-12-31",
                "idempotency_key": "p",
            },
        )
    )
    for shop, area in (("tofu-ya", "north"), ("pan-ya", "south")):
        ok(
            ui.request(
                "points.define_shop", {"shop_id": shop, "name": shop, "area": area, "idempotency_key": shop}
            )
        )
    ok(
        ui.request(
            "points.import",
            {
                "programme_id": "ward",
                "member_id": "M1",
                "amount": 100,
                "source_ref": "paper",
                "idempotency_key": "i",
            },
        )
    )
    for n, (shop, amount) in enumerate((("tofu-ya", 10), ("pan-ya", 25), ("tofu-ya", 5))):
        ok(
            ui.request(
                "points.redeem",
                {
                    "programme_id": "ward",
                    "member_id": "M1",
                    "shop_id": shop,
                    "amount": amount,
                    "idempotency_key": f"r{n}",
                },
            )
        )
    first = "2000-01-01"
    code, out = readerctl(
        d, config, "points", "settlement", "--from", first, "--to", "2099-12-31", "--csv", capsys=capsys
    )
    _, table = readerctl(
        d, config, "points", "settlement", "--from", first, "--to", "2099-12-31", capsys=capsys
    )
    _, balance = readerctl(d, config, "points", "balance", "M1", capsys=capsys)
    empty_code, empty = readerctl(d, config, "points", "balance", "M2", capsys=capsys)
    rows = {r["shop_id"]: r for r in csv.DictReader(io.StringIO(out))}
    assert code == 0
    assert (rows["tofu-ya"]["redeemed_points"], rows["tofu-ya"]["redemptions"]) == ("15", "2")
    assert rows["pan-ya"]["area"] == "south"
    assert "area north: 15" in table
    assert "total: 40" in table
    assert [line.split() for line in balance.splitlines()] == [["PROGRAMME", "POINTS"], ["ward", "60"]]
    assert (empty_code, empty) == (0, "M2: no points in any programme\n")


def test_bath_house_month_report(
    kiosk: tuple[RunningDaemon, Subscriber, ControlSession, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    d, sub, ui, config = kiosk
    d.tap("0042", felica="bathhouse")
    refused = sub.until(lambda e: e["type"] == "plugin.bathhouse.visit")[-1]["data"]
    ok(
        ui.request(
            "bathhouse.register",
            {
                "reader": READER,
                "member_number": "0042",
                "birth_date": "1950-04-01",
                "ward": 13101,
                "idempotency_key": "b",
            },
        )
    )
    d.remove()
    sub.until(lambda e: e["type"] == "card.removed")
    d.tap("0042", felica="bathhouse")
    accepted = sub.until(lambda e: e["type"] == "plugin.bathhouse.visit")[-1]["data"]
    month = datetime.now(TOKYO).strftime("%Y-%m")  # the JST month the visit belongs to
    code, out = readerctl(d, config, "bathhouse", "report", "--month", month, "--csv", capsys=capsys)
    _, table = readerctl(d, config, "bathhouse", "report", "--month", month, capsys=capsys)
    assert refused["status"] == "unknown_card"
    assert accepted["status"] == "accepted"
    assert code == 0
    assert list(csv.DictReader(io.StringIO(out))) == [
        {"bath_house": "matsu-no-yu", "visits": "1", "members": "1", "over_cap": "0"}
    ]
    assert f"{month}: 1 visits" in table
