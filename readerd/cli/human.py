"""readerctl's output for people: lines and tables, times in Japan Standard Time, one line per refusal.

The wire and ``--json`` keep UTC (``2026-12-07T06:30:00.000Z``); staff at a kiosk read the ward's clock,
so every instant shown to a person is ISO 8601 in ``Asia/Tokyo`` with its ``+09:00`` offset
(docs/design.md D17; :mod:`readerd.plugin.business_time` keeps the same zone for plugins, but importing
it would load the plugin face and SQLAlchemy, which readerctl must not pay for at start-up). Nothing
here prints a Python ``repr`` or raw JSON: nested objects become indented lines, lists of objects a table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

#: Japan Standard Time has no daylight saving time (since 1951): a fixed offset needs no zone database.
JST = timezone(timedelta(hours=9), "JST")
#: An instant on the wire: a date, a time, and a UTC designator (``Z`` or ``+00:00``).
_UTC_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]00:?00)")
#: Keys of an error's ``details`` that name what to do next.
NEXT_STEP_KEYS = ("next_step", "next", "hint", "fix")


def jst(value: str) -> str:
    """A UTC instant as ISO 8601 in JST (``…+09:00``), the same precision; anything else unchanged."""
    match = _UTC_INSTANT.fullmatch(value)
    if match is None:
        return value
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return value
    fraction = match.group(2)
    if fraction:
        spec = "milliseconds" if len(fraction) <= len(".123") else "microseconds"
    else:
        spec = "seconds" if match.group(1) else "minutes"
    return moment.astimezone(JST).isoformat(timespec=spec)


def scalar(value: object) -> str:
    """One value for a person: ``yes``/``no``, ``-`` for nothing, JST for an instant, lists joined."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return jst(value)
    if isinstance(value, Sequence) and all(not isinstance(v, (Mapping, list)) for v in value):
        return ", ".join(scalar(v) for v in value) or "-"
    return str(value)


def _is_table(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, Mapping) for row in value)


def table(rows: Sequence[Mapping[str, Any]], indent: str = "") -> list[str]:
    """Rows of objects as aligned columns, the union of their keys as the header."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    header = "  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))
    lines = [indent + header.rstrip()]
    for line in cells:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return lines


def cell(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        return "; ".join(cell(v) for v in value) or "-"
    return scalar(value)


def render(result: Mapping[str, Any], indent: str = "") -> list[str]:
    """A result object as lines: ``key: value``; an object nested below its key; a list of objects as a
    table below its key. An empty object says so."""
    if not result:
        return [f"{indent}(nothing)"]
    lines: list[str] = []
    for key, value in result.items():
        label = f"{indent}{key}"
        if isinstance(value, Mapping):
            lines.append(f"{label}:" if value else f"{label}: -")
            if value:
                lines += render(value, indent + "  ")
        elif _is_table(value):
            lines.append(f"{label}: {len(value)}")
            lines += table(value, indent + "  ")
        else:
            lines.append(f"{label}: {scalar(value)}")
    return lines


def error_lines(error: Mapping[str, Any]) -> list[str]:
    """A refusal for people: ``error (code): message (its details)`` and, where the daemon gives one,
    the next step; never the request id or the whole reply."""
    code = error.get("code") or "error"
    message = str(error.get("message") or "").strip()
    raw = error.get("details")
    details: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    facts = ", ".join(f"{key}: {cell(value)}" for key, value in details.items() if key not in NEXT_STEP_KEYS)
    line = f"error ({code}): {message}" if message else f"error ({code})"
    lines = [f"{line} ({facts})" if facts else line]
    for key in NEXT_STEP_KEYS:
        if details.get(key):
            lines.append(f"next: {scalar(details[key])}")
            break
    else:
        if code == "unknown_command":
            lines.append("next: readerctl help (the commands this daemon answers)")
    return lines


def duration(seconds: float) -> str:
    """``3725.4`` -> ``1 h 2 min 5 s``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h"] if hours else []
    if hours or minutes:
        parts.append(f"{minutes} min")
    parts.append(f"{secs} s")
    return " ".join(parts)
