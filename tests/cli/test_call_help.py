"""``readerctl call`` and ``readerctl help`` against an in-process daemon whose plugins (the check-in and
points built-ins) are named in the daemon's configuration only: readerctl runs with no configuration file,
so everything it knows of them comes from the daemon's ``commands`` answer. Also ``--json`` after the
subcommand, the one-line refusal and JST times.

Cost: about 3 s (one daemon with two plugins, shared by the module; readerctl runs in-process).
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from readerd import config as readerd_config
from readerd.cli import ctl
from readerd.config import PluginsConfig
from tests.support.auth import READER, tap
from tests.support.daemon import RunningDaemon, running_daemon, sim_config

pytestmark = pytest.mark.timeout(60)

DEFINE = [
    "event_id=fest",
    "name=Summer festival",
    "place=Hall 2",
    "starts_at=2026-08-15T08:00:00Z",
    "ends_at=2026-08-15T12:00:00+00:00",
    "capacity=120",
    "idempotency_key=k-fest-1",
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    plugins = PluginsConfig(autoload=False, builtins=("checkin", "points"), sections={"checkin": {}})
    state = tmp_path_factory.mktemp("call") / "state"
    with running_daemon(sim_config(state, plugins=plugins)) as d:
        yield d


@pytest.fixture(autouse=True)
def no_local_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """readerctl finds no readerd.toml: it cannot know the plugins but from the daemon."""
    monkeypatch.setattr(readerd_config, "DEFAULT_CONFIG", tmp_path / "absent.toml")


#: The in-process daemon's own log lines share stdout with readerctl's: left out of what is compared.
DAEMON_LOG = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \[")


def readerctl(d: RunningDaemon, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = ctl.main(["--control", d.control, *args])
    out, err = capsys.readouterr()
    keep = "".join(line for line in out.splitlines(keepends=True) if not DAEMON_LOG.match(line))
    return code, keep, err


def commands(d: RunningDaemon) -> dict[str, dict[str, Any]]:
    reply = d.request("commands")
    assert reply["ok"], reply
    return {c["name"]: c for c in reply["result"]["commands"]}


def test_commands_describes_plugin_and_daemon_commands(daemon: RunningDaemon) -> None:
    listed = commands(daemon)
    define = listed["checkin.define_event"]
    assert define["role"] == "operator"
    assert define["args"]["capacity"] == {"type": "integer", "required": False, "help": ""}
    assert define["args"]["event_id"]["required"] is True
    redeem = listed["points.redeem"]
    assert redeem["possession"] is True
    assert redeem["args"]["auth_id"]["type"] == "string"  # the PIN proof a possession command takes
    assert listed["tap"]["args"]["tries"]["type"] == "integer"
    assert listed["auth.pin"]["args"]["pin"]["required"] is True
    assert listed["mykey.relink"]["role"] == "operator"
    assert listed["status"]["role"] == "subscribe"
    assert listed["commands"]["role"] == "control"
    assert listed["events.since"]["args"]["seq"]["type"] == "integer"
    assert all(c["described"] for c in listed.values()), [n for n, c in listed.items() if not c["described"]]


def test_help_lists_every_command_and_one_command_block(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = readerctl(daemon, capsys, "help")
    assert code == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line and line[0] != " "}
    assert rows["checkin.define_event"] == "operator"
    assert rows["points.redeem"] == "control"
    assert "tap" in rows
    code, block, _ = readerctl(daemon, capsys, "help", "points.redeem")
    assert code == 0
    assert "needs a PIN proof: yes" in block
    assert any(line.split()[:3] == ["amount", "integer", "required"] for line in block.splitlines())
    code, block, _ = readerctl(daemon, capsys, "help", "checkin.define_event")
    assert "role: operator" in block
    assert "needs a PIN proof: no" in block
    code, _, err = readerctl(daemon, capsys, "help", "no.such")
    assert code == 1
    assert err.startswith("error (unknown_command): ")


def test_call_types_the_arguments_and_shows_times_in_jst(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = readerctl(daemon, capsys, "call", "checkin.define_event", *DEFINE)
    assert code == 0, err
    assert "  capacity: 120" in out.splitlines()
    code, out, err = readerctl(daemon, capsys, "call", "checkin.status", "event_id=fest")
    assert code == 0, err
    lines = out.splitlines()
    assert "starts_at: 2026-08-15T17:00:00+09:00" in lines  # 08:00 UTC, as staff in Japan read it
    assert "ends_at: 2026-08-15T21:00:00+09:00" in lines
    assert "open: no" in lines
    assert not any(line.lstrip().startswith(("{", "[")) for line in lines)


def test_json_after_the_subcommand_keeps_utc(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    readerctl(daemon, capsys, "call", "checkin.define_event", *DEFINE)
    code, out, _ = readerctl(daemon, capsys, "call", "checkin.status", "event_id=fest", "--json")
    assert code == 0
    assert json.loads(out)["starts_at"] == "2026-08-15T08:00:00Z"
    code, out, _ = readerctl(daemon, capsys, "status", "--json")
    assert code == 0
    assert json.loads(out)["kiosk"] == "test-kiosk"
    code, out, _ = readerctl(daemon, capsys, "help", "tap", "--json")
    assert json.loads(out)["name"] == "tap"


def test_call_refuses_bad_arguments_before_sending(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [a for a in DEFINE if not a.startswith(("event_id=", "idempotency_key="))]
    cases = {
        "unknown argument(s) colour": [*base, "event_id=e1", "idempotency_key=a", "colour=red"],
        "missing required argument(s) event_id": [*base, "idempotency_key=b"],
        "capacity: 'many' is not an integer": [
            *[a for a in base if not a.startswith("capacity")],
            "event_id=e1",
            "idempotency_key=c",
            "capacity=many",
        ],
        "event_id is given twice": [*base, "event_id=e1", "event_id=e2", "idempotency_key=d"],
    }
    for message, args in cases.items():
        code, _, err = readerctl(daemon, capsys, "call", "checkin.define_event", *args)
        assert code == 64, (message, err)
        assert message in err
        assert "capacity" in err
        assert "integer" in err
    code, _, err = readerctl(daemon, capsys, "call", "checkin.status", "event_id=e1")
    assert code == 1  # none of the above reached the plugin
    assert err.splitlines()[0].startswith("error (unknown_event): ")


def test_a_refusal_is_one_line_without_the_request_id(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = readerctl(daemon, capsys, "call", "checkin.status", "event_id=nothing-here")
    assert code == 1
    assert out == ""
    assert err == "error (unknown_event): no event 'nothing-here'\n"
    code, out, err = readerctl(daemon, capsys, "plugins", "reinstate", "nobody")
    assert code == 1
    assert err.startswith("error (unknown_plugin): ")
    assert '"id"' not in err
    assert "{" not in err


def test_tap_remove_and_status_for_people(daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    readerctl(daemon, capsys, "remove", "--reader", "Sim 01")  # whatever an earlier test left
    code, out, _ = readerctl(daemon, capsys, "remove", "--reader", "Sim 01")
    assert (code, out) == (0, "no card on Sim 01: nothing to remove\n")
    code, out, _ = readerctl(daemon, capsys, "tap", "alice", "--reader", "Sim 01")
    assert code == 0
    assert out == "alice on Sim 01: tapped (readerctl tail shows the read)\n"
    code, out, _ = readerctl(daemon, capsys, "status")
    assert code == 0
    assert "dropped" not in out  # none were
    assert "healthy: yes" in [line.strip() for line in out.splitlines()]


def test_call_runs_the_pin_proof_for_a_command_that_moves_value(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    redeem = ["programme_id=p1", "shop_id=s1", "amount=5", "idempotency_key=r1", f"reader={READER}"]
    with daemon.subscriber("card.") as sub:
        tap(daemon, sub)
        code, _, err = readerctl(daemon, capsys, "call", "points.redeem", *redeem, "--no-pin")
        assert code == 1
        assert err.startswith("error (authentication_required): ")
        monkeypatch.setattr(sys, "stdin", io.StringIO("1234\n"))  # the PIN, as from a pipe
        code, _, err = readerctl(daemon, capsys, "call", "points.redeem", *redeem)
    lines = err.splitlines()
    assert lines[0] == f"card on {READER}: 3 PIN tries left"
    assert code == 1  # the PIN proof was made and spent in this session; the card is not a member
    assert lines[1].startswith("error (not_enrolled): ")
    assert "1234" not in err


def test_auth_enroll_prints_lines_not_a_dict(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with daemon.subscriber("card.") as sub:
        tap(daemon, sub, card="bob", reader="Sim 01")
        monkeypatch.setattr(sys, "stdin", io.StringIO("1234\n"))
        code, out, err = readerctl(daemon, capsys, "auth", "--reader", "Sim 01", "--enroll")
    assert code == 0, err
    lines = out.splitlines()
    assert "verified: yes" in lines
    assert any(re.fullmatch(r"enrolled: member ID \S+", line) for line in lines), lines
    assert "{" not in out
