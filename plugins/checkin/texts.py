"""What a citizen sees for each ``plugin.checkin.result``: the declaration ``readerd_result_fields`` returns.

Levels (docs/plugins.md, "Screen texts"): ``accepted`` is a success; ``already_checked_in`` is
information (the person is in); every other status keeps the person out or asks them to do something,
a refusal.
"""

from __future__ import annotations

from readerd.plugin import Level, ResultSpec, ScreenText

#: What ``readerd_result_fields`` returns: result name -> its fields and texts.
Declaration = dict[str, ResultSpec]

R, S, INFO = Level.REFUSAL, Level.SUCCESS, Level.INFO

FIELDS = frozenset(
    {"event_id", "status", "count", "capacity", "checkin_id", "points", "member_id", "mykey_id"}
    | {"offline", "starts_at"}
)

TEXTS: dict[str, ScreenText | tuple[ScreenText, ...]] = {
    "accepted": (
        ScreenText(
            S,
            "受付しました（通信回復後に記録します）",
            "Checked in (recorded once online)",
            frozenset({"offline"}),
        ),
        ScreenText(S, "受付しました {count}/{capacity}", "Checked in {count}/{capacity}"),
        ScreenText(S, "受付しました（{count} 人目）", "Checked in (no. {count})"),
        ScreenText(S, "受付しました", "Checked in"),
    ),
    "already_checked_in": ScreenText(INFO, "受付済みです", "Already checked in"),
    "full": ScreenText(R, "定員に達しました", "The event is full"),
    "not_open": ScreenText(R, "受付はまだ始まっていません", "Check-in has not started yet"),
    "closed": ScreenText(R, "受付は終了しました", "Check-in has closed"),
    "unknown_event": ScreenText(
        R, "このイベントは受付できません（係員をお呼びください）", "No check-in here: please call staff"
    ),
    "unknown_card": ScreenText(R, "登録されていないカードです", "This card is not registered"),
    "not_enrolled": ScreenText(R, "カードの登録が必要です", "This card needs to be registered"),
}

RESULTS: Declaration = {"result": ResultSpec(FIELDS, TEXTS)}
