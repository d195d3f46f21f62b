"""What a citizen sees for each ``plugin.bathhouse.visit``: the declaration ``readerd_result_fields`` returns.

Levels (docs/plugins.md, "Screen texts"): ``accepted`` is a success; a status that keeps a member out
of the subsidised bath is a refusal; ``unknown_card`` is information: the card is no bath-house card,
which says nothing against the citizen at a kiosk that also does other things (alone at a bath-house
gate it is still the only, so the first, line). Decided offline (``offline: true``) the words say so.
"""

from __future__ import annotations

from readerd.plugin import Level, ResultSpec, ScreenText

#: What ``readerd_result_fields`` returns: result name -> its fields and texts.
Declaration = dict[str, ResultSpec]

R, S, INFO = Level.REFUSAL, Level.SUCCESS, Level.INFO
OFFLINE = frozenset({"offline"})

FIELDS = frozenset({"bath_house", "status", "monthly_cap", "visits_this_month", "offline", "message"})

TEXTS: dict[str, ScreenText | tuple[ScreenText, ...]] = {
    "accepted": (
        ScreenText(
            S,
            "入浴を受け付けました（今月 {visits_this_month} 回目・月 {monthly_cap} 回まで）"
            "。通信回復後に記録します",
            "Visit accepted ({visits_this_month} of {monthly_cap} this month; recorded once online)",
            OFFLINE,
        ),
        ScreenText(
            S,
            "入浴を受け付けました（今月 {visits_this_month} 回目・月 {monthly_cap} 回まで）",
            "Visit accepted ({visits_this_month} of {monthly_cap} this month)",
        ),
        ScreenText(S, "入浴を受け付けました", "Visit accepted"),
    ),
    "monthly_cap_reached": (
        ScreenText(
            R,
            "今月の利用回数の上限（{monthly_cap} 回）に達しました",
            "This month's visits are used up ({monthly_cap})",
        ),
        ScreenText(R, "今月の利用回数の上限に達しました", "This month's visits are used up"),
    ),
    "already_visited_today": ScreenText(R, "本日は利用済みです", "Already visited today"),
    "not_eligible": ScreenText(R, "対象年齢に達していません", "Not yet eligible by age"),
    "revoked_card": ScreenText(
        R, "このカードは使えません（再発行済み）", "This card was replaced and no longer works"
    ),
    "unknown_card": ScreenText(
        INFO, "おたっしゃカードの登録がありません", "Not registered for the bath-house subsidy"
    ),
    "store_unavailable": ScreenText(
        R,
        "ただいま確認できません（係員をお呼びください）",
        "Cannot check this card now: please call staff",
    ),
}

RESULTS: Declaration = {"visit": ResultSpec(FIELDS, TEXTS)}
