"""What a citizen sees for each ``plugin.points.*`` result: the declaration ``readerd_result_fields`` returns.

Levels (docs/plugins.md, "Screen texts"): points credited, spent or ticketed are a success; an earning
that waits, is refused or written off is information: the citizen need do nothing, and it must not
hide the check-in that earned it.
"""

from __future__ import annotations

from readerd.plugin import Level, ResultSpec, ScreenText

#: What ``readerd_result_fields`` returns: result name -> its fields and texts.
Declaration = dict[str, ResultSpec]

S, INFO = Level.SUCCESS, Level.INFO

RESULTS: Declaration = {
    "redeemed": ResultSpec(
        frozenset({"redeemed", "balance", "shop_id"}),
        {
            "*": ScreenText(
                S,
                "{redeemed} ポイント使いました（残高 {balance}）",
                "{redeemed} points used (balance {balance})",
            )
        },
    ),
    "ticket_issued": ResultSpec(
        frozenset({"amount", "expires_on", "balance"}),
        {
            "*": ScreenText(
                S,
                "{amount} ポイントの券を発行しました（{expires_on} まで・残高 {balance}）",
                "Ticket for {amount} points issued (until {expires_on}, balance {balance})",
            )
        },
    ),
    "ticket_used": ResultSpec(
        frozenset({"amount", "shop_id"}),
        {"*": ScreenText(S, "{amount} ポイントの券を使いました", "Ticket for {amount} points used")},
    ),
    "earned": ResultSpec(
        frozenset({"balance", "earned", "event_id", "deferred"}),
        {
            "*": (
                ScreenText(S, "ポイント +{earned}（残高 {balance}）", "Points +{earned} (balance {balance})"),
                ScreenText(S, "ポイント +{earned}", "Points +{earned}"),
            )
        },
    ),
    "earn_deferred": ResultSpec(
        frozenset({"event_id", "reason"}),
        {"*": ScreenText(INFO, "ポイントは後で付与されます", "Your points will be added later")},
    ),
    "earn_refused": ResultSpec(
        frozenset({"reason", "event_id"}),
        {"*": ScreenText(INFO, "このイベントのポイントは付与されません", "No points for this event")},
    ),
    "earn_written_off": ResultSpec(
        frozenset({"reason", "event_id"}),
        {
            "*": ScreenText(
                INFO, "保留中のポイントは付与されませんでした", "Pending points could not be added"
            )
        },
    ),
}
