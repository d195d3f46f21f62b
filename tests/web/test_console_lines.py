"""The console's words without a browser: each event as one line on the ward's clock (JST), a plugin
result in its own declared words (``data.screen``) or a generic line, ``plugin.error`` in one line, the
taps chart by JST hour. Cost: under 0.1 s (no daemon, no browser)."""

from __future__ import annotations

from typing import Any

from readerd.web.app import Stats, console_line, plugin_error_row

SQL_ERROR = (
    "OperationalError: (sqlite3.OperationalError) no such table: visits\n"
    "[SQL: SELECT * FROM visits WHERE member_id = ?]\n[parameters: ('7Q2M9X',)]\n"
    "(Background on this error at: https://sqlalche.me/e/20/e3q8)"
)


def env(
    kind: str, data: dict[str, Any], reader: str | None = "Sim 00", ts: str = "2026-12-07T01:32:05.120Z"
) -> dict[str, Any]:
    return {"seq": 7, "type": kind, "reader": reader, "ts": ts, "data": data}


def test_a_tap_is_a_line_in_words_at_jst() -> None:
    line = console_line(
        env("card.identified", {"kind": "jpki", "member_id": "7Q2M9X", "pseudonym": "p" * 40})
    )
    assert line["time"] == "10:32:05"  # 01:32 UTC
    assert line["at"] == "2026-12-07T10:32:05+09:00"
    assert line["reader"] == "Sim 00"
    assert line["text"] == "カード読み取り (マイナンバーカード, 会員 7Q2M…)"
    assert line["level"] == "ok"
    unenrolled = console_line(env("card.identified", {"kind": "felica", "pseudonym": "ab12cd34"}))
    assert unenrolled["text"] == "カード読み取り (FeliCa カード, 未登録 ab12…)"
    handled = console_line(env("plugin.handled", {"plugins": ["checkin"], "results": [{}], "settled": True}))
    assert handled["text"] == "プラグインの処理が終わりました (結果 1 件)"
    aborted = console_line(env("card.read_aborted", {"kind": "jpki", "reason": "removed", "apdus": 1}))
    assert (aborted["text"], aborted["level"]) == (
        "読み取り中断: 途中でカードが離れました (マイナンバーカード)",
        "warn",
    )


def test_a_plugin_result_uses_its_declared_words_else_a_generic_line() -> None:
    screen = {"level": "success", "ja": "受付しました 3/100", "en": "Checked in 3/100"}
    declared = console_line(
        env("plugin.checkin.result", {"status": "accepted", "count": 3, "screen": screen})
    )
    assert (declared["text"], declared["level"]) == ("checkin: 受付しました 3/100", "ok")
    refused = {"level": "refusal", "ja": "定員に達しました", "en": "The event is full"}
    assert console_line(env("plugin.checkin.result", {"screen": refused}))["level"] == "warn"
    generic = console_line(env("plugin.checkin.result", {"status": "accepted", "count": 3, "capacity": 100}))
    assert generic["text"] == "checkin: result accepted 3/100"
    points = console_line(env("plugin.points.earned", {"points": 5, "balance": 25}))
    assert points["text"] == "points: earned ポイント 5 残高 25"


def test_a_plugin_error_is_one_line_without_sql_or_traceback() -> None:
    data = {
        "plugin": "bathhouse",
        "hook": "readerd_card_identified",
        "error": "exception",
        "quarantined": True,
    }
    error = env("plugin.error", {**data, "message": SQL_ERROR}, reader=None)
    line = console_line(error)
    assert line["text"] == (
        "プラグインエラー bathhouse (readerd_card_identified): exception "
        "OperationalError: (sqlite3.OperationalError) no such table: visits 隔離しました"
    )
    assert line["level"] == "bad"
    row = plugin_error_row(error)
    assert row["at"] == "2026-12-07T10:32:05+09:00"
    assert row["message"] == "OperationalError: (sqlite3.OperationalError) no such table: visits"
    assert row["quarantined"] is True


def test_the_taps_chart_counts_by_jst_hour_with_the_empty_hours() -> None:
    stats = Stats()
    for ts in ("2026-12-07T14:10:00.000Z", "2026-12-07T14:50:00.000Z", "2026-12-07T17:05:00.000Z"):
        stats.add({"type": "card.presented", "reader": "R", "ts": ts})
    assert stats.taps_chart() == [
        {"hour": "2026-12-07T23:00+09:00", "label": "23時", "taps": 2},
        {"hour": "2026-12-08T00:00+09:00", "label": "0時", "taps": 0},  # the JST day changes here
        {"hour": "2026-12-08T01:00+09:00", "label": "1時", "taps": 0},
        {"hour": "2026-12-08T02:00+09:00", "label": "2時", "taps": 1},
    ]
    assert Stats().taps_chart() == []
