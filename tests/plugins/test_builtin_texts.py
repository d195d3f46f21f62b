"""The four built-ins' screen texts: every status each publishes has words in Japanese and English at
a level, the declaration's fields are the plugin's ``RESULT_FIELDS``, and the numbers go in. No daemon.

Cost: well under a second."""

from __future__ import annotations

from types import ModuleType

import pytest

import plugins.bathhouse
import plugins.bathhouse.texts
import plugins.checkin
import plugins.checkin.texts
import plugins.library
import plugins.library.texts
import plugins.points
import plugins.points.texts
from readerd.plugin import ResultSpec
from readerd.plugin.host import _result_specs

#: What each built-in publishes on a tap (or a chained result), by result and status (their services).
STATUSES = {
    "checkin": {
        "result": [
            "accepted",
            "already_checked_in",
            "full",
            "not_open",
            "closed",
            "unknown_event",
            "unknown_card",
            "not_enrolled",
        ]
    },
    "bathhouse": {
        "visit": [
            "accepted",
            "unknown_card",
            "revoked_card",
            "not_eligible",
            "monthly_cap_reached",
            "already_visited_today",
            "store_unavailable",
        ]
    },
    "library": {"patron": ["ok", "blocked", "not_registered", "registration_expired", "ils_unavailable"]},
    "points": {name: ["*"] for name in plugins.points.RESULT_FIELDS},
}
PLUGINS: dict[str, tuple[ModuleType, ModuleType]] = {
    "checkin": (plugins.checkin, plugins.checkin.texts),
    "bathhouse": (plugins.bathhouse, plugins.bathhouse.texts),
    "library": (plugins.library, plugins.library.texts),
    "points": (plugins.points, plugins.points.texts),
}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_every_status_has_words_and_the_declared_fields(name: str) -> None:
    package, texts = PLUGINS[name]
    results: dict[str, ResultSpec] = texts.RESULTS
    assert {event: spec.fields for event, spec in results.items()} == package.RESULT_FIELDS
    specs = _result_specs(results)  # what the host accepts at load (templates against the fields)
    assert isinstance(specs, dict), specs
    for event, statuses in STATUSES[name].items():
        for status in statuses:
            variants = results[event].variants(status)
            assert variants, f"{name}.{event}: no words for {status}"
            last = variants[-1]
            assert last.ja
            assert last.en


def test_the_numbers_go_into_the_words() -> None:
    checkin = plugins.checkin.texts.RESULTS["result"]
    accepted = checkin.render({"status": "accepted", "count": 3, "capacity": 100})
    assert accepted == {"level": "success", "ja": "受付しました 3/100", "en": "Checked in 3/100"}
    assert checkin.render({"status": "not_enrolled"})["ja"] == "カードの登録が必要です"  # type: ignore[index]
    offline = checkin.render({"status": "accepted", "offline": True})
    assert offline is not None
    assert "通信回復後" in offline["ja"]
    earned = plugins.points.texts.RESULTS["earned"].render({"earned": 10, "balance": 60, "event_id": "e"})
    assert earned == {"level": "success", "ja": "ポイント +10（残高 60）", "en": "Points +10 (balance 60)"}
    bath = plugins.bathhouse.texts.RESULTS["visit"]
    cap = bath.render({"status": "monthly_cap_reached", "monthly_cap": 4, "visits_this_month": 4})
    assert cap is not None
    assert cap["level"] == "refusal"
    assert "4" in cap["ja"]
    unknown = bath.render({"status": "unknown_card", "bath_house": "matsu"})
    assert unknown is not None
    assert unknown["level"] == "info"
