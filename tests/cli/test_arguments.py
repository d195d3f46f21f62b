"""How ``readerctl call`` types ``key=value`` from a command's spec, and how readerctl shows values to
people (JST times, no Python reprs), without a daemon.

Cost: about 0.1 s (pure functions).
"""

from __future__ import annotations

from typing import Any

import pytest

from readerd.cli.ctl_call import CallUsageError, build_args, command_block
from readerd.cli.human import error_lines, jst, render

SPEC: dict[str, Any] = {
    "name": "points.grant_campaign",
    "help": "grant points",
    "role": "operator",
    "possession": False,
    "args": {
        "amount": {"type": "integer", "required": True, "help": ""},
        "ratio": {"type": "number", "required": False, "help": ""},
        "members": {"type": "array", "required": False, "help": ""},
        "dry_run": {"type": "boolean", "required": False, "help": ""},
        "first_day": {"type": "string", "required": False, "help": "YYYY-MM-DD (JST)"},
        "month": {"type": "string", "required": False, "help": "YYYY-MM (JST)"},
        "code": {"type": "string", "required": False, "help": "", "pattern": "[A-Z]{3}"},
        "extra": {"type": "object", "required": False, "help": ""},
    },
}


def test_values_are_typed_by_the_spec() -> None:
    args = build_args(
        SPEC,
        [
            "amount=500",
            "ratio=0.5",
            "members=M1,M2",
            "members=M3",
            "dry_run=yes",
            "first_day=2026-04-01",
            "month=2026-04",
            "code=ABC",
            'extra:={"a": [1, 2]}',
        ],
    )
    assert args == {
        "amount": 500,
        "ratio": 0.5,
        "members": ["M1", "M2", "M3"],
        "dry_run": True,
        "first_day": "2026-04-01",
        "month": "2026-04",
        "code": "ABC",
        "extra": {"a": [1, 2]},
    }
    assert build_args(SPEC, ["amount:=7", "ratio=2"]) == {"amount": 7, "ratio": 2}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["amount=5", "first_day=1 April"], "first_day: '1 April' does not match YYYY-MM-DD"),
        (["amount=5", "month=2026-4"], "month: '2026-4' does not match YYYY-MM"),
        (["amount=5", "code=abc"], "code: 'abc' does not match"),
        (["amount=five"], "amount: 'five' is not an integer"),
        (["amount:=true"], "amount: must be an integer"),
        (["amount=5", "dry_run=maybe"], "dry_run: 'maybe' is not true or false"),
        (["amount=5", "amount=6"], "amount is given twice"),
        (["amount=5", "colour=red"], "unknown argument(s) colour"),
        (["ratio=1"], "missing required argument(s) amount"),
        (["amount"], "arguments are key=value or key:=<json>"),
        (["amount:={"], "amount:= takes a JSON value"),
    ],
)
def test_bad_arguments_are_refused(pairs: list[str], message: str) -> None:
    with pytest.raises(CallUsageError) as refused:
        build_args(SPEC, pairs)
    assert message in str(refused.value)


def test_an_undescribed_command_takes_any_key_as_text() -> None:
    spec = {"name": "x.y", "args": None}
    assert build_args(spec, ["a=1", "b:=2"]) == {"a": "1", "b": 2}


def test_the_help_block_marks_dates_and_required_arguments() -> None:
    lines = command_block(SPEC)
    amount = next(line for line in lines if line.strip().startswith("amount"))
    assert amount.split()[1:3] == ["integer", "required"]
    first_day = next(line for line in lines if line.strip().startswith("first_day"))
    assert "string (date)" in first_day
    assert lines[-1] == "  e.g. readerctl call points.grant_campaign amount=..."


def test_times_for_people_are_jst_and_nothing_is_a_repr() -> None:
    assert jst("2026-03-31T15:00:00Z") == "2026-04-01T00:00:00+09:00"
    assert jst("2026-03-31T15:00:00.250Z") == "2026-04-01T00:00:00.250+09:00"
    assert jst("2026-03-31T15:00:00+00:00") == "2026-04-01T00:00:00+09:00"
    assert jst("2026-04-01T09:00:00+09:00") == "2026-04-01T09:00:00+09:00"  # already local: kept
    assert jst("2026-04-01") == "2026-04-01"
    lines = render({"visit": {"at": "2026-01-01T00:00:00Z", "paid": True}, "tags": ["a", "b"], "none": None})
    assert lines == ["visit:", "  at: 2026-01-01T09:00:00+09:00", "  paid: yes", "tags: a, b", "none: -"]
    table = render({"rows": [{"id": 1, "at": "2026-01-01T00:00:00Z"}, {"id": 22, "extra": {"k": 1}}]})
    assert table[0] == "rows: 2"
    assert table[2].split() == ["1", "2026-01-01T09:00:00+09:00", "-"]
    assert table[3].split() == ["22", "-", "k=1"]


def test_an_error_is_one_line_with_its_facts_and_the_next_step() -> None:
    error = {"code": "wrong_pin", "message": "the PIN is wrong", "details": {"tries_left": 2, "hint": "ask"}}
    assert error_lines(error) == ["error (wrong_pin): the PIN is wrong (tries_left: 2)", "next: ask"]
    assert error_lines({"code": "unknown_command", "message": "no command 'x'"})[1].startswith(
        "next: readerctl help"
    )
