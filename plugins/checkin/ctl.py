"""``readerctl checkin status|attendance|sync``: the reports, as a readable table or as CSV.

Times are shown as the office reads them, in Asia/Tokyo with ``+09:00`` (the CSV too); the wire and the
daemon's ``--json`` answers keep UTC (``readerctl --json call checkin.attendance event_id=…``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from datetime import datetime

from readerd.plugin import CtlCommand, JsonObject, business_time

Call = Callable[[str, JsonObject], JsonObject]
COLUMNS = ("checked_in_at", "person", "via", "kiosk")
#: The fields of a check-in row and of an event that are instants (stored and sent in UTC).
TIMES = frozenset({"checked_in_at", "starts_at", "ends_at"})


def jst(value: object) -> object:
    """A UTC instant (``2026-08-15T08:00:00Z``) as JST with its offset (``2026-08-15T17:00:00+09:00``);
    anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value
    return moment.astimezone(business_time.TOKYO).isoformat(timespec="seconds")


def in_jst(row: JsonObject) -> JsonObject:
    """The row with its instants in JST."""
    return {key: jst(value) if key in TIMES else value for key, value in row.items()}


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="checkin_action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="an event, its window and how many are in")
    status.add_argument("event_id")
    attendance = actions.add_parser("attendance", help="every check-in of an event (times in JST)")
    attendance.add_argument("event_id")
    attendance.add_argument("--csv", action="store_true", help="CSV with a header row, for the organisers")
    actions.add_parser("sync", help="push this kiosk's offline check-ins now")


def _run(args: argparse.Namespace, call: Call) -> int:
    out = sys.stdout
    if args.checkin_action == "status":
        result = in_jst(call("checkin.status", {"event_id": args.event_id}))
        for key in ("event_id", "name", "place", "starts_at", "ends_at", "open", "capacity", "checked_in"):
            out.write(f"{key:>14}: {result.get(key)}\n")
        out.write(f"{'pending_sync':>14}: {result.get('pending_sync')}\n")
    elif args.checkin_action == "attendance":
        result = call("checkin.attendance", {"event_id": args.event_id})
        rows = [in_jst(row) for row in result["rows"]]
        if args.csv:
            writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        else:
            out.write(f"{args.event_id}: {result['count']} checked in\n")
            for row in rows:
                out.write("  ".join(str(row[c]) for c in COLUMNS) + "\n")
    else:
        result = call("checkin.sync", {})
        out.write(
            f"synced {result['synced']}, duplicates {result['duplicates']}, pending {result['pending']}\n"
        )
    return 0


def ctl_command() -> CtlCommand:
    return CtlCommand("checkin", "event check-in: status, attendance (CSV), sync", _configure, _run)
