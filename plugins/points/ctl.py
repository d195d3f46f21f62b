"""``readerctl points settlement|balance``: the shops' settlement as a table or CSV, an account's balance."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable

from readerd.plugin import CtlCommand, JsonObject

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


def _run(args: argparse.Namespace, call: Call) -> int:
    out = sys.stdout
    if args.points_action == "balance":
        result = call("points.balance", {"member_id": args.member_id})
        for programme, points in result["balances"].items():
            out.write(f"{programme}: {points}\n")
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


def ctl_command() -> CtlCommand:
    return CtlCommand("points", "municipal points: settlement (CSV), balance", _configure, _run)
