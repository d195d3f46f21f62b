"""What a citizen sees for each ``plugin.library.*`` result (``readerd_result_fields`` returns it).

Levels (docs/plugins.md, "Screen texts"): a tap's patron status is information (loans, overdue, a
registration to renew), except ``blocked``, a refusal; a loan, return or registration done is a
success; a command that failed (its status is the refusal's code) is a refusal.
"""

from __future__ import annotations

from readerd.plugin import Level, ResultSpec, ScreenText

#: What ``readerd_result_fields`` returns: result name -> its fields and texts.
Declaration = dict[str, ResultSpec]

R, S, INFO = Level.REFUSAL, Level.SUCCESS, Level.INFO

LOAN = frozenset({"status", "due"})
FAILED = ScreenText(
    R, "手続きできませんでした（係員をお呼びください）", "Could not be done: please call staff"
)

RESULTS: Declaration = {
    "patron": ResultSpec(
        frozenset({"status", "loans", "overdue", "limit", "valid_until", "reason", "login_refused"}),
        {
            "ok": (
                ScreenText(
                    INFO,
                    "図書館: 貸出中 {loans} 冊（返却期限を過ぎた本が {overdue} 冊あります）",
                    "Library: {loans} on loan ({overdue} overdue)",
                    frozenset({"overdue"}),
                ),
                ScreenText(
                    INFO,
                    "図書館: 貸出中 {loans} 冊 / {limit} 冊まで",
                    "Library: {loans} on loan (limit {limit})",
                ),
                ScreenText(INFO, "図書館カードを確認しました", "Library card confirmed"),
            ),
            "blocked": ScreenText(
                R, "図書館: 貸出できません（カウンターへ）", "Library: borrowing is blocked (see the desk)"
            ),
            "not_registered": ScreenText(INFO, "図書館の登録はありません", "Not registered at this library"),
            "registration_expired": ScreenText(
                INFO, "図書館の登録の更新が必要です", "Your library registration needs renewal"
            ),
            "ils_unavailable": (
                ScreenText(
                    INFO,
                    "図書館システムがこの端末のログインを拒否しました（係員へ）",
                    "The library system refused this kiosk's login: please tell staff",
                    frozenset({"login_refused"}),
                ),
                ScreenText(
                    INFO, "図書館システムに接続できません", "The library system cannot be reached now"
                ),
            ),
        },
    ),
    "register": ResultSpec(
        frozenset({"status", "library_id", "registered", "valid_until"}),
        {
            "ok": ScreenText(
                S,
                "図書館に登録しました（{valid_until} まで）",
                "Registered at the library (until {valid_until})",
            ),
            "*": FAILED,
        },
    ),
    "registration_renewed": ResultSpec(
        frozenset({"status", "library_id", "valid_until"}),
        {
            "*": (
                ScreenText(
                    S,
                    "図書館の登録を更新しました（{valid_until} まで）",
                    "Library registration renewed (until {valid_until})",
                ),
                ScreenText(S, "図書館の登録を更新しました", "Library registration renewed"),
            )
        },
    ),
    "checkout": ResultSpec(
        LOAN,
        {
            "ok": ScreenText(S, "貸出しました（返却期限 {due}）", "Borrowed (due {due})"),
            "*": ScreenText(R, "貸出できませんでした", "Could not borrow"),
        },
    ),
    "renew": ResultSpec(
        LOAN,
        {
            "ok": ScreenText(S, "延長しました（返却期限 {due}）", "Renewed (due {due})"),
            "*": ScreenText(R, "延長できませんでした", "Could not renew"),
        },
    ),
    "return": ResultSpec(
        LOAN,
        {
            "ok": ScreenText(S, "返却しました", "Returned"),
            "*": ScreenText(R, "返却できませんでした", "Could not return"),
        },
    ),
    "receipt": ResultSpec(
        frozenset({"status", "count", "due_dates"}),
        {
            "ok": (
                ScreenText(
                    INFO,
                    "本日の貸出 {count} 冊（返却期限 {due_dates}）",
                    "{count} borrowed today (due {due_dates})",
                    frozenset({"count"}),
                ),
                ScreenText(INFO, "本日の貸出はありません", "Nothing borrowed today"),
            )
        },
    ),
}
