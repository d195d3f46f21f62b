"""``readerctl auth``: staff test the JPKI authentication of the card on a reader, as a kiosk UI would.

The PIN is asked for with a prompt that does not echo it (or read as one line from a pipe, for scripts);
it is never an argument, which ``ps`` and shell histories would show. On the last try the command asks
before it sends ``allow_last_try`` (``--allow-last-try`` answers yes in advance): a wrong PIN then blocks
the card, and only the ward office can unblock it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any, Protocol, TextIO

from readerd.cli.human import error_lines, render
from readerd.exitcodes import ExitCode

#: A card operation waits for the card; allow for a slow reader and the session deadline.
AUTH_TIMEOUT_MS = 30000


class Requester(Protocol):
    def request(
        self, cmd: str, args: dict[str, Any] | None = None, timeout_ms: int | None = None
    ) -> dict[str, Any]: ...


def add_auth_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action is private
    auth = sub.add_parser("auth", help="authenticate the card on a reader with its PIN (staff test)")
    auth.add_argument("--reader", required=True, help="the reader the card is on")
    auth.add_argument("--allow-last-try", action="store_true", help="do not ask before using the last try")
    auth.add_argument("--enroll", action="store_true", help="after success, enrol the card (mykey.enroll)")


def _read_pin(stdin: TextIO) -> str:
    if stdin.isatty():
        return getpass.getpass("PIN (4 digits, not shown): ")
    return stdin.readline().rstrip("\r\n")


def _confirm_last_try(stdin: TextIO, stderr: TextIO) -> bool:
    stderr.write("Only ONE try is left: a wrong PIN blocks this card until the ward office resets it.\n")
    if not stdin.isatty():
        return False
    stderr.write("Send the PIN anyway? [y/N] ")
    stderr.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def _fail(reply: dict[str, Any], stderr: TextIO) -> int:
    error = reply.get("error")
    for line in error_lines(error if isinstance(error, dict) else {}):
        stderr.write(line + "\n")
    return 1


def prove(
    session: Requester,
    reader: str,
    *,
    allow_last_try: bool = False,
    stdin: TextIO | None = None,
    stderr: TextIO | None = None,
) -> tuple[dict[str, Any] | None, int]:
    """``auth.begin`` and ``auth.pin`` on ``reader`` in this session, the PIN asked for unseen: the
    ``auth.pin`` result (with its ``auth_id``, good in this session only), or None and the exit code."""
    stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
    begun = session.request("auth.begin", {"reader": reader}, AUTH_TIMEOUT_MS)
    if not begun.get("ok"):
        return None, _fail(begun, stderr)
    state = begun["result"]
    stderr.write(f"card on {reader}: {state['tries_left']} PIN tries left\n")
    if state["last_try"] and not allow_last_try:
        if not _confirm_last_try(stdin, stderr):
            stderr.write("readerctl: the PIN was not sent (last try)\n")
            return None, 1
        allow_last_try = True
    pin = _read_pin(stdin)
    reply = session.request(
        "auth.pin",
        {"auth_id": state["auth_id"], "pin": pin, "allow_last_try": allow_last_try},
        AUTH_TIMEOUT_MS,
    )
    del pin
    if not reply.get("ok"):
        return None, _fail(reply, stderr)
    result: dict[str, Any] = reply["result"]
    return result, ExitCode.OK


def run_auth(
    args: argparse.Namespace,
    session: Requester,
    out: TextIO | None = None,
    stdin: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out, stderr = out or sys.stdout, stderr or sys.stderr
    proven, code = prove(
        session, args.reader, allow_last_try=bool(args.allow_last_try), stdin=stdin, stderr=stderr
    )
    if proven is None:
        return code
    result = dict(proven)
    if args.enroll:
        enrolled = session.request("mykey.enroll", {"auth_id": result["auth_id"]})
        if not enrolled.get("ok"):
            return _fail(enrolled, stderr)
        result = {**result, "enrolment": enrolled["result"]}
    result.pop("auth_id", None)
    if args.json:
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
        return ExitCode.OK
    enrolment = result.pop("enrolment", None)
    for line in render(result):
        out.write(line + "\n")
    if isinstance(enrolment, dict):
        done = "enrolled" if enrolment.get("created") else "already enrolled"
        mykey = f", MyKey ID {enrolment['mykey_id']}" if enrolment.get("mykey_id") else ""
        out.write(f"{done}: member ID {enrolment.get('member_id')}{mykey}\n")
    return ExitCode.OK
