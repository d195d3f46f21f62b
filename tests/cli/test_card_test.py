"""``readerctl doctor --card-test`` against an in-process sim daemon: the technician's prompt, then one tap
and its report (reader, kind, read path, APDUs or FeliCa frames, times, repeat, kiosk, version, JST, the
privacy statement, a cut pseudonym); exit 1 with the reason and the next step for a card pulled mid-read;
69 with no daemon; 130 on Ctrl-C without a traceback. No VERIFY reaches the card.

Cost: about 5 s (an in-process sim daemon per test, one readerctl subprocess for Ctrl-C, 2 s waiting
for an absent daemon).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from readerd.cli.card_test import CardTestUsageError, Outcome, cut_pseudonym, pick_reader, report_facts
from readerd.cli.ctl import main
from simulators.mynumber import VirtualMyNumberCard, observe_cards
from tests.support.daemon import RunningDaemon, running_daemon, sim_config
from tests.support.ports import free_tcp_port

pytestmark = pytest.mark.timeout(60)

BIN = Path(sys.executable).parent
PROMPT = "カードをリーダーにかざしてください / hold a My Number Card on"
VERIFY_INS = 0x20


class CardTest:
    """``readerctl doctor --card-test`` on a thread of this process; its output through ``capsys``."""

    def __init__(self, capsys: pytest.CaptureFixture[str], d: RunningDaemon, *extra: str) -> None:
        self.capsys = capsys
        self.out = self.err = ""
        self.rc: int | None = None
        argv = ["--control", d.control, "--publish", d.publish, "doctor", "--card-test", "--timeout", "10"]
        self.thread = threading.Thread(target=self._run, args=([*argv, *extra],), daemon=True)
        self.thread.start()

    def _run(self, argv: list[str]) -> None:
        self.rc = main(argv)

    def _read(self) -> None:
        captured = self.capsys.readouterr()
        self.out, self.err = self.out + captured.out, self.err + captured.err

    def wait_for_prompt(self) -> None:
        deadline = time.monotonic() + 10
        while PROMPT not in self.err:
            assert time.monotonic() < deadline, self.err
            time.sleep(0.01)
            self._read()

    def json(self) -> dict[str, Any]:
        """The report of ``--json`` (the in-process daemon logs to the same stdout: the last JSON line)."""
        lines = [line for line in self.out.splitlines() if line.startswith("{")]
        body: dict[str, Any] = json.loads(lines[-1])
        return body

    def finish(self) -> int:
        self.thread.join(15)
        assert not self.thread.is_alive()
        self._read()
        assert self.rc is not None
        return self.rc


def _verifies(cards: list[VirtualMyNumberCard]) -> list[bytes]:
    return [r.raw for card in cards for r in card.log if len(r.raw) > 1 and r.raw[1] == VERIFY_INS]


def test_a_tap_is_identified_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cards: list[VirtualMyNumberCard] = []
    stop = observe_cards(cards.append)
    try:
        with running_daemon(sim_config(tmp_path)) as d, d.subscriber("card.") as sub:
            test = CardTest(capsys, d, "--reader", "Sim 01")
            test.wait_for_prompt()
            d.tap("alice", reader="Sim 00")  # another reader: not the one watched
            d.tap("alice", reader="Sim 01")
            assert test.finish() == 0
            identified = sub.until(lambda e: e["type"] == "card.identified" and e["reader"] == "Sim 01")[-1]
    finally:
        stop()
    assert "hold a My Number Card on Sim 01" in test.err
    report = test.out
    pseudonym = identified["data"]["pseudonym"]
    assert pseudonym not in report
    assert f"pseudonym:      {pseudonym[:6]}… (cut)" in report
    for line in (
        "result:         PASSED: the card was identified",
        "kiosk:          test-kiosk",
        "reader:         Sim 01",
        "card kind:      jpki",
        f"read path:      {identified['data']['read_path']}",
        f"APDUs:          {identified['data']['apdus']}",
        "repeat:         no",
        "No PIN was asked and no VERIFY was sent",
        "暗証番号は求めず",
        "no certificate field is shown",
    ):
        assert line in report, report
    for text in ("+09:00", "ms from card.presented", "ms per APDU", "daemon version: "):
        assert text in report, report
    assert cards
    assert _verifies(cards) == []


def test_a_card_pulled_mid_read_exits_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_daemon(sim_config(tmp_path)) as d:
        test = CardTest(capsys, d, "--json")
        test.wait_for_prompt()
        d.tap("alice", faults=[{"action": "remove", "after_apdus": 1}])
        assert test.finish() == 1
    report = test.json()
    assert report["ok"] is False
    assert (report["reason"], report["kind"], report["reader"]) == ("removed", "jpki", "Sim 00")
    assert report["next_step"] == "hold the card still until the beep: the card was pulled mid-read"
    assert report["time_jst"].endswith("+09:00")
    assert report["pin_asked"] is False
    assert report["certificate_fields_shown"] is False
    assert "pseudonym" not in report


def test_a_felica_card_reports_its_frames_and_nothing_tapped_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_daemon(sim_config(tmp_path)) as d:
        test = CardTest(capsys, d, "--json", "--reader", "Sim 0")  # a prefix of two readers: refused
        assert test.finish() == 64
        assert "no single reader" in test.err
        test = CardTest(capsys, d, "--json", "--timeout", "0.3")  # nobody taps: exit 1, no_tap
        assert test.finish() == 1
        nothing = test.json()
        assert (nothing["reason"], nothing["ok"]) == ("no_tap", False)
        assert nothing["next_step"].startswith("no card within 0.3 s: ")
        test = CardTest(capsys, d, "--json", "--reader", "Sim 00")
        test.wait_for_prompt()
        d.tap("A123", felica="bathhouse")
        assert test.finish() == 0
    report = test.json()
    assert (report["kind"], report["command_unit"]) == ("felica", "FeliCa frames")
    assert isinstance(report["commands"], int)
    assert report["pseudonym"].endswith("…")
    assert len(report["pseudonym"]) == 7


def test_no_daemon_exits_69(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_tcp_port()
    argv = ["--control", f"tcp://127.0.0.1:{port}", "--publish", f"tcp://127.0.0.1:{port}"]
    assert main([*argv, "doctor", "--card-test"]) == 69
    captured = capsys.readouterr()
    assert "no readerd answers" in captured.err
    assert captured.out == ""


def test_ctrl_c_exits_130_without_a_traceback(tmp_path: Path) -> None:
    with running_daemon(sim_config(tmp_path)) as d:
        proc = subprocess.Popen(
            [str(BIN / "readerctl"), "--control", d.control, "--publish", d.publish, "doctor", "--card-test"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 20
        while PROMPT not in seen and time.monotonic() < deadline:
            seen += proc.stderr.readline()
        assert PROMPT in seen
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "Traceback" not in stderr + seen
    assert "interrupted" in stderr
    assert stdout == ""


def test_report_facts_alone() -> None:
    """No tap in time, and the pieces the report is made of."""
    facts = report_facts(Outcome("R", None, reason="no_tap"))
    assert (facts["reason"], facts["reader"]) == ("no_tap", "R")
    assert cut_pseudonym("abcdefghij") == "abcdef…"
    assert cut_pseudonym(None) is None
    assert pick_reader(None, ["A"]) == "A"
    assert pick_reader(None, ["A", "B"]) is None
    assert pick_reader("SONY", ["SONY FeliCa RC-S300/P 00 00", "ACS"]) == "SONY FeliCa RC-S300/P 00 00"
    with pytest.raises(CardTestUsageError):
        pick_reader("X", ["A"])
