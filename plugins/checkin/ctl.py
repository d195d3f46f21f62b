"""``readerctl checkin status|attendance|sync``: the reports, as a readable table or as CSV."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable

from readerd.plugin import CtlCommand, JsonObject

Call = Callable[[str, JsonObject], JsonObject]
COLUMNS = ("checked_in_at", "person", "via", "kiosk")


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="checkin_action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="an event, its window and how many are in")
    status.add_argument("event_id")
    attendance = actions.add_parser("attendance", help="every check-in of an event")
    attendance.add_argument("event_id")
    attendance.add_argument("--csv", action="store_true", help="CSV with a header row, for the organisers")
    actions.add_parser("sync", help="push this kiosk's offline check-ins now")


def _run(args: argparse.Namespace, call: Call) -> int:
    out = sys.stdout
    if args.checkin_action == "status":
        result = call("checkin.status", {"event_id": args.event_id})
        for key in ("event_id", "name", "place", "starts_at", "ends_at", "open", "capacity", "checked_in"):
            out.write(f"{key:>14}: {result.get(key)}\n")
        out.write(f"{'pending_sync':>14}: {result.get('pending_sync')}\n")
    elif args.checkin_action == "attendance":
        result = call("checkin.attendance", {"event_id": args.event_id})
        if args.csv:
            writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(result["rows"])
        else:
            out.write(f"{args.event_id}: {result['count']} checked in\n")
            for row in result["rows"]:
                out.write("  ".join(str(row[c]) for c in COLUMNS) + "\n")
    else:
        result = call("checkin.sync", {})
        out.write(
            f"synced {result['synced']}, duplicates {result['duplicates']}, pending {result['pending']}\n"
        )
    return 0


def ctl_command() -> CtlCommand:
    return CtlCommand("checkin", "event check-in: status, attendance (CSV), sync", _configure, _run)
