"""``readerctl call`` and ``readerctl help``: every command the running daemon answers, from the prompt.

Both ask the daemon for ``commands`` (its own commands and every loaded plugin's, with their arguments),
so a plugin's commands are reachable without naming the plugin in this machine's configuration and
without a ZeroMQ client of one's own. ``call`` types each ``key=value`` from the command's spec:

- ``integer``, ``number``: ``amount=500``, ``ratio=0.5``;
- ``boolean``: ``true``/``false`` (also ``yes``/``no``, ``1``/``0``, ``on``/``off``);
- ``string``: as written; a date argument (a ``pattern`` in the spec, or a help starting ``YYYY-MM-DD``
  or ``YYYY-MM``) is checked against it here;
- ``array``: ``members=M1,M2`` or ``members=M1 members=M2`` (strings);
- ``key:=<json>`` for any JSON value (``faults:={"steps": []}``, ``note:="1,2"``).

An unknown key, a key given twice (but for a list), a value of the wrong type and a missing required
argument are refused here, with the command's argument list, before anything is sent (exit 64). A
``possession`` command sent with ``reader=`` and no ``auth_id`` first runs the PIN proof on that reader
in the same session (the PIN asked for unseen, as ``readerctl auth`` does); ``--no-pin`` sends it as is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from readerd.cli.ctl_auth import Requester, prove
from readerd.cli.human import error_lines, render
from readerd.exitcodes import ExitCode

#: A plugin command may take up to its host's hook timeout, a card operation longer.
CALL_TIMEOUT_S = 30.0
TRUE = frozenset({"true", "yes", "1", "on"})
FALSE = frozenset({"false", "no", "0", "off"})
#: Date formats a spec's help may start with, and the pattern each value must then match.
HELP_PATTERNS = (
    ("YYYY-MM-DD", r"\d{4}-\d{2}-\d{2}"),
    ("YYYY-MM", r"\d{4}-\d{2}"),
)
#: Exit code when ``call`` refuses the arguments itself (sysexits' EX_USAGE).
USAGE_EXIT = ExitCode.USAGE

Schema = Mapping[str, Any]


class CallUsageError(Exception):
    """The arguments of ``readerctl call`` do not fit the command's spec (nothing was sent)."""


def add_call_parsers(sub: Any) -> None:  # noqa: ANN401 - argparse's subparsers action is private
    call = sub.add_parser(
        "call",
        help="send any command the daemon answers, plugin commands too: COMMAND key=value ...",
        description="Send COMMAND with typed arguments (readerctl help COMMAND lists them): key=value, "
        "key:=<json>, lists as a,b or repeated keys. Exit 0 done, 1 refused by the daemon, 64 bad "
        "arguments (nothing sent), 69 no daemon, 130 Ctrl-C.",
    )
    call.add_argument("name", metavar="COMMAND", help="e.g. points.redeem (readerctl help lists them)")
    call.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="the command's arguments")
    call.add_argument(
        "--timeout", type=float, default=CALL_TIMEOUT_S, help=f"seconds to wait (default {CALL_TIMEOUT_S:g})"
    )
    call.add_argument(
        "--no-pin",
        action="store_true",
        help="with a possession command and reader=, do not run the PIN proof first",
    )
    call.add_argument("--allow-last-try", action="store_true", help="do not ask before the PIN's last try")
    helper = sub.add_parser(
        "help",
        help="the commands the running daemon answers, or one command's arguments",
        description="Without COMMAND: every command the daemon answers, with its role. With one: its "
        "arguments (type, required, help), its role and whether it needs a PIN proof.",
    )
    helper.add_argument("name", nargs="?", metavar="COMMAND", help="one command, e.g. checkin.define_event")


# -- typing the arguments ---------------------------------------------------------------------------------
def pattern_of(arg: Schema) -> str | None:
    """The pattern a string argument must match: the spec's, or the date format its help starts with."""
    if arg.get("pattern"):
        return str(arg["pattern"])
    text = str(arg.get("help") or "")
    for prefix, pattern in HELP_PATTERNS:
        if text.startswith(prefix) and not text[len(prefix) : len(prefix) + 1].isalnum():
            return pattern
    return None


def _convert(name: str, arg: Schema, text: str) -> object:
    kind = str(arg.get("type", "string"))
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise CallUsageError(f"{name}: {text!r} is not a{'n' if kind == 'integer' else ''} {kind}") from None
    if kind == "boolean":
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise CallUsageError(f"{name}: {text!r} is not true or false")
    if kind in ("object", "array"):
        try:
            return json.loads(text)
        except ValueError:
            raise CallUsageError(f"{name}: a JSON {kind}, given as {name}:=<json>") from None
    return text


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _check(name: str, arg: Schema, value: object) -> None:
    kind = str(arg.get("type", "string"))
    wanted = _JSON_TYPES.get(kind, (object,))
    if (isinstance(value, bool) and kind != "boolean") or not isinstance(value, wanted):
        raise CallUsageError(f"{name}: must be a{'n' if kind[0] in 'aeiou' else ''} {kind}")
    pattern = pattern_of(arg)
    if isinstance(value, str) and pattern is not None and not re.fullmatch(pattern, value):
        shown = str(arg.get("help") or pattern).split()[0]
        raise CallUsageError(f"{name}: {value!r} does not match {shown}")


def build_args(schema: Schema, pairs: Sequence[str]) -> dict[str, Any]:
    """The request's arguments from ``key=value`` and ``key:=<json>``, typed and checked by ``schema``
    (a ``commands`` entry). A command the daemon did not describe takes every key, values as strings
    (``:=`` for other types)."""
    spec = schema.get("args")
    described = isinstance(spec, Mapping)
    specs: Mapping[str, Schema] = spec if isinstance(spec, Mapping) else {}
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for pair in pairs:
        key, json_value, text = _split(pair)
        if described and key not in specs:
            unknown.append(key)
            continue
        arg = specs.get(key, {"type": "string"})
        value = _value(key, arg, text, json_value=json_value, described=described)
        if key in out:
            if arg.get("type") != "array" or not isinstance(value, list) or not isinstance(out[key], list):
                raise CallUsageError(f"{key} is given twice (only a list argument may repeat)")
            out[key] = [*out[key], *value]
        else:
            out[key] = value
    if unknown:
        raise CallUsageError(f"unknown argument(s) {', '.join(sorted(unknown))}")
    missing = [key for key, arg in specs.items() if arg.get("required") and key not in out]
    if missing:
        raise CallUsageError(f"missing required argument(s) {', '.join(missing)}")
    for key, value in out.items():
        if described:
            _check(key, specs[key], value)
    return out


def _value(key: str, arg: Schema, text: str, *, json_value: bool, described: bool) -> object:
    """One argument's value: JSON after ``:=``, a list split at commas, else typed by the spec."""
    if json_value:
        try:
            return json.loads(text)
        except ValueError:
            raise CallUsageError(f"{key}:= takes a JSON value, not {text!r}") from None
    if arg.get("type") == "array":
        return [item for item in text.split(",") if item]
    return _convert(key, arg, text) if described else text


def _split(pair: str) -> tuple[str, bool, str]:
    """``key=value`` -> (key, False, value); ``key:=json`` -> (key, True, json)."""
    key, sep, value = pair.partition("=")
    if not sep or not key or key == ":":
        raise CallUsageError(f"{pair!r}: arguments are key=value or key:=<json>")
    if key.endswith(":"):
        return key[:-1], True, value
    return key, False, value


# -- describing commands ----------------------------------------------------------------------------------
def one_line(text: str) -> str:
    """The first line of a help text."""
    return text.strip().splitlines()[0] if text.strip() else ""


def commands_table(commands: Sequence[Schema]) -> list[str]:
    """``readerctl help``: one line a command, its name, role and help; ``*`` marks a PIN proof."""
    width = max([len("COMMAND"), *(len(str(c.get("name"))) for c in commands)])
    lines = [f"{'COMMAND'.ljust(width)}  {'ROLE':<9}  HELP"]
    for command in commands:
        mark = " *" if command.get("possession") else ""
        help_text = one_line(str(command.get("help") or "")) or "(not described by the daemon)"
        name, role = str(command.get("name")).ljust(width), str(command.get("role"))
        lines.append(f"{name}  {role:<9}  {help_text}{mark}")
    lines.append("")
    lines.append("* moves value: with reader=, a PIN proof on that reader first (readerctl call asks for it)")
    lines.append("readerctl help COMMAND: its arguments; readerctl call COMMAND key=value ...: send it")
    return lines


def command_block(command: Schema) -> list[str]:
    """``readerctl help COMMAND``: help, role, PIN proof, then each argument with its type."""
    name = command.get("name")
    lines = [f"{name}: {command.get('help') or '(not described by the daemon)'}"]
    lines.append(f"  role: {command.get('role')}")
    if command.get("possession"):
        lines.append(
            "  needs a PIN proof: yes (moves value): with reader=, readerctl call asks for the card's PIN "
            "on that reader first; by member ID, operators only"
        )
    else:
        lines.append("  needs a PIN proof: no")
    args = command.get("args")
    if not isinstance(args, Mapping):
        lines.append("  arguments: not described by the daemon (send key=value; key:=<json> for non-strings)")
        return lines
    if not args:
        lines.append("  arguments: none")
        return lines
    lines.append("  arguments:")
    width = max(len(str(key)) for key in args)
    for key, arg in args.items():
        kind = str(arg.get("type", "string"))
        pattern = pattern_of(arg)
        if pattern is not None and not arg.get("pattern"):
            kind += " (date)"
        elif pattern is not None:
            kind += f" /{pattern}/"
        need = "required" if arg.get("required") else "optional"
        lines.append(f"    {str(key).ljust(width)}  {kind:<13}  {need:<8}  {arg.get('help') or ''}".rstrip())
    example = " ".join(f"{key}=..." for key, arg in args.items() if arg.get("required"))
    lines.append(f"  e.g. readerctl call {name} {example}".rstrip())
    return lines


# -- running ----------------------------------------------------------------------------------------------
def _listing(session: Requester, stderr: TextIO) -> list[Schema] | None:
    reply = session.request("commands")
    if not reply.get("ok"):
        error = reply.get("error")
        for line in error_lines(error if isinstance(error, dict) else {}):
            stderr.write(line + "\n")
        return None
    commands = reply.get("result", {}).get("commands", [])
    return [c for c in commands if isinstance(c, Mapping)]


def _unknown(name: str, stderr: TextIO) -> int:
    stderr.write(f"error (unknown_command): readerd answers no command {name!r}\n")
    stderr.write("next: readerctl help (the commands this daemon answers)\n")
    return 1


def run_help(
    args: argparse.Namespace, session: Requester, out: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out, stderr = out or sys.stdout, stderr or sys.stderr
    commands = _listing(session, stderr)
    if commands is None:
        return 1
    if args.name is None:
        if args.json:
            out.write(json.dumps({"commands": commands}, ensure_ascii=False) + "\n")
        else:
            out.write("\n".join(commands_table(commands)) + "\n")
        return ExitCode.OK
    found = next((c for c in commands if c.get("name") == args.name), None)
    if found is None:
        return _unknown(args.name, stderr)
    text = json.dumps(found, ensure_ascii=False) if args.json else "\n".join(command_block(found))
    out.write(text + "\n")
    return ExitCode.OK


def run_call(
    args: argparse.Namespace,
    session: Requester,
    out: TextIO | None = None,
    stdin: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    out, stderr = out or sys.stdout, stderr or sys.stderr
    commands = _listing(session, stderr)
    if commands is None:
        return 1
    found = next((c for c in commands if c.get("name") == args.name), None)
    if found is None:
        return _unknown(args.name, stderr)
    try:
        cmd_args = build_args(found, args.pairs)
    except CallUsageError as e:
        stderr.write(f"readerctl call {args.name}: {e}; nothing was sent\n")
        stderr.write("\n".join(command_block(found)) + "\n")
        return USAGE_EXIT
    reader = cmd_args.get("reader")
    if found.get("possession") and isinstance(reader, str) and "auth_id" not in cmd_args and not args.no_pin:
        proven, code = prove(
            session, reader, allow_last_try=bool(args.allow_last_try), stdin=stdin, stderr=stderr
        )
        if proven is None:
            return code
        cmd_args["auth_id"] = proven["auth_id"]
    reply = session.request(args.name, cmd_args, int(args.timeout * 1000))
    if not reply.get("ok"):
        error = reply.get("error")
        for line in error_lines(error if isinstance(error, dict) else {}):
            stderr.write(line + "\n")
        return 1
    result = reply.get("result")
    if args.json:
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        out.write("\n".join(render(result if isinstance(result, dict) else {"result": result})) + "\n")
    return ExitCode.OK
