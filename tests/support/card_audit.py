"""The session-wide card-info audit: what the test session does with ``READERD_CARD_AUDIT``.

Every simulated card, in whatever process, appends a JSON line to the file the variable names for each
SELECT by DF name of an application other than the JPKI AP (``simulators.mynumber.audit_apdu``); each
private pcscd started by ``tests/support/pcscd.py`` appends a line naming its log, where pcscd ``--apdu``
writes every APDU it forwards. At the end of the session :func:`findings` reads both and returns every
card-info SELECT that no test marked ``touches_card_info`` explains; tests/conftest.py fails the session
on any.

Which test a line belongs to: a card line carries ``PYTEST_CURRENT_TEST`` as the card's process saw it,
so an in-process card names the running test and a subprocess names the test (or fixture) that spawned
it, having inherited the variable. A pcscd log is cut at the header each start writes, which names the
test that started that pcscd. A line with no test (a process started with a cleaned environment) is
never excused.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from protocols.jpki_constants import JPKI_AID
from simulators.mynumber import CARD_AUDIT_ENV, names_card_info, selected_name

log = structlog.get_logger("readerd.tests.card_audit")

#: ``00000082 APDU: 00 A4 04 0C 0A D3 92 ...`` (pcscd --apdu; the first field is a time delta).
_APDU_LINE = re.compile(r"APDU: ((?:[0-9A-Fa-f]{2} ?)+)\s*$")
#: The header tests/support/pcscd.py writes before each start.
_HEADER = re.compile(r"^=== readerd tests: start (?:.*, test: (?P<test>.*) ===$)?")


class CardAuditError(RuntimeError):
    """The audit file could not be read back: the session cannot prove no card-info AP was selected."""


@dataclass(frozen=True)
class Finding:
    """One card-info SELECT (or an audit line that could not be read) that no marked test explains."""

    where: str  # "card" line of the audit file, or the pcscd log's path
    pid: int | None
    card: str
    aid: str
    via: str
    test: str | None

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else self.where
        test = self.test or "(none)"
        return f"{who}: SELECT of AID {self.aid} on card {self.card!r} via {self.via}, test {test}"


def inner_session(directory: Path, source: str, *options: str) -> list[str]:
    """The command of a pytest session of its own over ``source`` (written to ``directory``), with
    readerd's session hooks (tests/conftest.py, the audit among them) and the ``touches_card_info``
    marker: how the audit's own tests prove it fails a session. Run it with the checkout as cwd.

    An ini file of its own: with ``-c /dev/null`` pytest scans every entry of /tmp (thousands on a shared
    machine) while collecting. Plain asserts and no readerd fixture plugin: with PYTHONDONTWRITEBYTECODE
    set, rewriting the modules of the whole readerd distribution on every run cost seconds."""
    (directory / "test_inner.py").write_text(source)
    ini = directory / "pytest.ini"
    ini.write_text("[pytest]\nmarkers =\n    touches_card_info: on purpose\n")
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q", *options, "--assert=plain"]
    command += ["-p", "no:readerd", "-p", "no:cacheprovider", "-c", str(ini)]
    return [*command, "--rootdir", str(directory), str(directory)]


def start(directory: Path | None = None) -> Path:
    """Point :data:`CARD_AUDIT_ENV` at a fresh file (subprocesses started from now on inherit it)."""
    base = Path(tempfile.mkdtemp(prefix="readerd-card-audit-", dir=directory))
    path = base / "selects.jsonl"
    path.touch(mode=0o600)
    os.environ[CARD_AUDIT_ENV] = str(path)
    return path


def node_of(current_test: str | None) -> str | None:
    """``tests/x.py::test_a[1] (call)`` (the form of ``PYTEST_CURRENT_TEST``) -> the node id."""
    if not current_test:
        return None
    return current_test.rsplit(" (", 1)[0]


def _excused(test: str | None, excused: set[str]) -> bool:
    node = node_of(test)
    return node is not None and node in excused


def read_lines(path: Path) -> tuple[list[Finding], list[Path]]:
    """Card-info SELECT lines of the audit file (all, excused or not) and the pcscd logs it names."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise CardAuditError(f"card audit file {path} unreadable: {e}") from e
    selects: list[Finding] = []
    logs: list[Path] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            if "pcscd_log" in line:
                logs.append(Path(line["pcscd_log"]))
            elif line["card_info"]:
                selects.append(
                    Finding(
                        "card",
                        int(line["pid"]),
                        str(line["card"]),
                        str(line["aid"]),
                        str(line["via"]),
                        line.get("test"),
                    )
                )
        except (ValueError, KeyError, TypeError):
            log.error("card audit line unreadable", path=str(path), line=number)
            selects.append(Finding(f"{path}:{number}", None, "?", "?", "unreadable audit line", None))
    return selects, logs


def pcscd_selects(log_path: Path) -> list[Finding]:
    """Card-info SELECTs in a private pcscd's APDU log, each with the test that started that pcscd."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []  # its directory went with the test's tmp_path: nothing left to read, nothing to prove
    found: list[Finding] = []
    test: str | None = None
    for raw in text.splitlines():
        header = _HEADER.match(raw)
        if header is not None:
            test = header["test"] if header["test"] not in (None, "-") else None
            continue
        apdu = _APDU_LINE.search(raw)
        if apdu is None:
            continue
        name = selected_name(bytes.fromhex(apdu.group(1).replace(" ", "")))
        if name is not None and name != JPKI_AID and names_card_info(name):
            found.append(Finding(str(log_path), None, "(behind pcscd)", name.hex().upper(), "pcscd", test))
    return found


def findings(path: Path, excused: set[str]) -> list[Finding]:
    """Every card-info SELECT of the session that no test in ``excused`` (node ids) explains."""
    selects, logs = read_lines(path)
    for log_path in dict.fromkeys(logs):
        selects.extend(pcscd_selects(log_path))
    return [f for f in selects if not _excused(f.test, excused)]


def report(found: list[Finding]) -> str:
    """The message that fails the session."""
    lines = [
        f"card-info audit: {len(found)} SELECT(s) of a card-info AP that no touches_card_info test explains"
    ]
    lines += [f"  {f.describe()}" for f in found]
    return "\n".join(lines)
