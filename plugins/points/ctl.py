"""``readerctl points settlement|balance|pending``: the shops' settlement as a table or CSV, an account's
balance, the earnings waiting on this kiosk (and written off) with their reasons.

The settlement's rows carry JST dates only (no instants); the times of ``pending`` are shown in JST with
``+09:00``, as the office reads them (the wire and ``--json`` keep UTC).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Mapping
from datetime import datetime

from readerd.plugin import CtlCommand, JsonObject, business_time

Call = Callable[[str, JsonObject], JsonObject]
COLUMNS = (
    "area",
    "shop_id",
    "name",
    "redemptions",
    "redeemed_points",
    "tickets",
    "ticket_points",
    "total_points",
)


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="points_action", metavar="ACTION", required=True)
    settlement = actions.add_parser(
        "settlement", help="points taken per shop and area in a period (JST dates)"
    )
    settlement.add_argument("--from", dest="first", required=True, help="first day, YYYY-MM-DD")
    settlement.add_argument("--to", dest="last", required=True, help="last day, YYYY-MM-DD (inclusive)")
    settlement.add_argument(
        "--csv", action="store_true", help="CSV with a header row, for the accounts office"
    )
    balance = actions.add_parser("balance", help="an account's balance per programme")
    balance.add_argument("member_id")
    actions.add_parser("pending", help="earnings waiting on this kiosk, and written off, with reasons")


def _run(args: argparse.Namespace, call: Call) -> int:
    out = sys.stdout
    if args.points_action == "pending":
        return _pending(call("points.pending", {}))
    if args.points_action == "balance":
        result = call("points.balance", {"member_id": args.member_id})
        out.write("\n".join(balance_lines(args.member_id, result["balances"])) + "\n")
        return 0
    result = call("points.settlement", {"from": args.first, "to": args.last})
    if args.csv:
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(result["shops"])
        return 0
    out.write(f"settlement {result['from']} .. {result['to']}\n")
    for row in result["shops"]:
        out.write(
            f"  {row['area']:<12} {row['shop_id']:<16} {row['redeemed_points']:>8} redeemed"
            f" {row['ticket_points']:>8} tickets {row['total_points']:>9} total\n"
        )
    for area, total in result["areas"].items():
        out.write(f"  area {area}: {total}\n")
    out.write(f"  total: {result['total_points']}\n")
    return 0


def balance_lines(member_id: str, balances: Mapping[str, int]) -> list[str]:
    """``readerctl points balance``: one row per programme, or a line saying there is none."""
    if not balances:
        return [f"{member_id}: no points in any programme"]
    width = max(len("PROGRAMME"), *(len(p) for p in balances))
    lines = [f"{'PROGRAMME'.ljust(width)}  {'POINTS':>8}"]
    lines += [f"{programme.ljust(width)}  {points:>8}" for programme, points in balances.items()]
    return lines


def jst(value: object) -> object:
    """A UTC instant as JST with its offset (``…+09:00``); anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.astimezone(business_time.TOKYO).isoformat(timespec="seconds") if moment.tzinfo else value


def _pending(result: JsonObject) -> int:
    out = sys.stdout
    out.write(
        f"pending {result['pending']} ({result['pending_points']} points),"
        f" written off {result['written_off']} ({result['written_off_points']} points)\n"
    )
    for state in ("pending", "written_off"):
        for reason, count in sorted(result["reasons"][state].items()):
            out.write(f"  {state:<11} {reason:<20} {count:>6}\n")
    for row in result["rows"]:
        who = row["member_id"] or "(MyKey ID)"
        out.write(
            f"  {row['state']:<11} {row['event_id']:<24} {row['programme_id']:<20} {who:<16}"
            f" {row['amount']:>6} {row['reason']} {jst(row['queued_at'])}\n"
        )
    return 0


def ctl_command() -> CtlCommand:
    return CtlCommand("points", "municipal points: settlement (CSV), balance, pending", _configure, _run)
