"""``readerctl doctor --card-test``: a technician's one-tap test of a kiosk whose daemon runs.

It asks the daemon for its ``status`` (kiosk, readers, last event seq), subscribes to its events from that
seq on (gap-free: :class:`readerd.bus.client.BusClient`, so a tap made before the subscription is live is
not missed), tells the technician to hold a card on the reader, and waits for that reader's next
``card.identified`` or ``card.read_aborted`` (or a ``card.presented`` of an unknown card). Then it prints
a report to attach to the installation record: reader, card kind, read path, APDUs (or FeliCa frames),
the time from ``card.presented`` to the end of the read and per APDU (from the events' timestamps),
whether it was a repeat, the kiosk, the daemon's version, and the time in JST.

It only listens: it sends the daemon ``status`` and ``events.since`` and nothing else, so no PIN is asked
and no VERIFY reaches the card, nothing is stored beyond the daemon's usual event log, and no
certificate field is shown (the bus never carries one); a pseudonym is cut to its first 6 characters.

Exit codes: 0 identified, 1 the read was aborted, the card was not recognised or none was tapped in time
(the reason and the next step are printed), 64 an unknown ``--reader``, 69 no daemon answers, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from readerd import __version__
from readerd.cli.human import JST
from readerd.exitcodes import ExitCode

if TYPE_CHECKING:
    from readerd.bus.client import CurveKeys

#: The read did not give an identity (an abort, an unknown card, no tap in time).
FAILED_EXIT = 1
#: Interrupted by Ctrl-C (128 + SIGINT), as readerctl reports it.
INTERRUPTED_EXIT = 130
#: Seconds the daemon has to answer ``status`` before the test says none runs.
STATUS_TIMEOUT_MS = 2000
#: Seconds the technician has to tap, by default.
DEFAULT_TIMEOUT_S = 60.0
#: A pseudonym is shown cut to this many characters, then an ellipsis.
PSEUDONYM_SHOWN = 6

#: ``card.read_aborted`` reasons (docs/events.md) and the unknown-card and no-tap outcomes: what it
#: means, and the next step, in words a technician can act on.
NEXT_STEPS: Mapping[str, str] = {
    "removed": "hold the card still until the beep: the card was pulled mid-read",
    "timeout": "the card stopped answering and the reader is reported wedged: take the card off, wait "
    "5 s and try again; if it repeats, re-plug the reader and run `readerctl doctor`",
    "malformed": "the card's answer was garbled: hold it flat on the middle of the reader, away from metal "
    "and other cards, and try again; if only this card fails, it may be damaged",
    "transport": "the reader or pcscd failed: run `readerctl doctor` (pcscd, readers_seen), re-plug the "
    "reader (a USB port of its own, not a hub) and try again",
    "auth_required": "a smartphone's JPKI needs the PIN for its certificate: test with a physical My "
    "Number Card",
    "card_error": "the card refused a command: try another card; if every card fails, the reader or its "
    "driver is at fault (`readerctl doctor`)",
    "denied": "readerd's guard refused a command (a bug): report it with `journalctl -u readerd -b`",
    "internal_error": "a bug in readerd: report it with `journalctl -u readerd -b` (it has the traceback)",
    "unknown_card": "the card is not a My Number Card nor a FeliCa card this kiosk reads: use a My Number "
    "Card (or the ward's FeliCa card) and try again",
    "no_tap": "no card was read: hold the card on the reader until the beep; if the reader never reacts, "
    "run `readerctl doctor` (readers_seen, usb_access, port100)",
}
#: What every report states, in both languages.
PRIVACY_LINES = (
    "No PIN was asked and no VERIFY was sent; nothing was stored beyond the daemon's usual event log; "
    "no certificate field is shown.",
    "暗証番号は求めず、照合コマンドも送っていません。デーモンの通常のイベントログ以外には何も保存せず、"
    "証明書の項目は表示していません。",
)


class CardTestUsageError(Exception):
    """The command line names something the daemon does not have (exit 64)."""


@dataclass
class Outcome:
    """How the tap ended: the event that ended it (None: no tap in time) and the ``card.presented``
    before it on the same reader, if one came."""

    reader: str | None
    end: dict[str, Any] | None
    presented: dict[str, Any] | None = None
    reason: str = ""

    @property
    def identified(self) -> bool:
        return self.end is not None and self.end.get("type") == "card.identified"


@dataclass
class Report:
    """The installation record's facts, for people (:meth:`lines`) and scripts (:meth:`as_json`)."""

    kiosk: str
    daemon_version: str
    outcome: Outcome
    timeout_s: float
    facts: dict[str, Any] = field(init=False)  # report_facts(outcome)

    def __post_init__(self) -> None:
        self.facts = report_facts(self.outcome)

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if self.outcome.identified else FAILED_EXIT

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.outcome.identified,
            "kiosk": self.kiosk,
            "daemon_version": self.daemon_version,
            **self.facts,
            "next_step": self.next_step(),
            "pin_asked": False,
            "stored_beyond_event_log": False,
            "certificate_fields_shown": False,
        }

    def next_step(self) -> str | None:
        if self.outcome.identified:
            return None
        reason = str(self.facts.get("reason") or "")
        step = NEXT_STEPS.get(reason, "try again; `journalctl -u readerd -b` says more")
        if reason == "no_tap":
            step = f"no card within {self.timeout_s:g} s: " + step
        return step

    def lines(self) -> list[str]:
        f = self.facts
        verdict = "PASSED: the card was identified" if self.outcome.identified else "FAILED"
        out = [
            "readerd card test / カードテスト",
            f"  result:         {verdict}",
            f"  kiosk:          {self.kiosk}",
            f"  daemon version: {self.daemon_version}",
            f"  reader:         {f.get('reader') or '-'}",
            f"  time (JST):     {f.get('time_jst') or '-'}",
        ]
        if f.get("reason"):
            out.append(f"  reason:         {f['reason']}" + (f" ({f['error']})" if f.get("error") else ""))
        if f.get("kind"):
            out.append(f"  card kind:      {f['kind']}")
        if f.get("read_path"):
            out.append(f"  read path:      {f['read_path']}")
        if f.get("system_code") is not None or f.get("services"):
            services = ", ".join(f"{k} {v}" for k, v in (f.get("services") or {}).items()) or "-"
            out.append(f"  FeliCa:         system {f.get('system_code') or '-'}; services: {services}")
        if f.get("commands") is not None:
            out.append(f"  {f['command_unit'] + ':':<16}{f['commands']}")
        if f.get("read_ms") is not None:
            per = (
                f" ({f['per_command_ms']:.1f} ms per {f['command_unit'][:-1]})"
                if f.get("per_command_ms") is not None
                else ""
            )
            out.append(f"  read time:      {f['read_ms']:.0f} ms from card.presented{per}; event timestamps")
        if f.get("repeat") is not None:
            out.append(f"  repeat:         {'yes' if f['repeat'] else 'no'}")
        if f.get("pseudonym"):
            out.append(f"  pseudonym:      {f['pseudonym']} (cut)")
        if f.get("enrolled") is not None:
            out.append(f"  enrolled:       {'yes' if f['enrolled'] else 'no'}")
        if f.get("simulated"):
            out.append("  simulated:      yes (the sim backend: not a real card)")
        step = self.next_step()
        if step:
            out.append(f"  next step:      {step}")
        out.extend(f"  {line}" for line in PRIVACY_LINES)
        return out


def cut_pseudonym(value: object) -> str | None:
    """The first :data:`PSEUDONYM_SHOWN` characters and an ellipsis: never the whole pseudonym."""
    if not isinstance(value, str) or not value:
        return None
    return value[:PSEUDONYM_SHOWN] + "…"


def _instant(env: Mapping[str, Any] | None) -> datetime | None:
    ts = str((env or {}).get("ts") or "")
    try:
        return datetime.fromisoformat(ts[:-1] + "+00:00" if ts.endswith("Z") else ts)
    except ValueError:
        return None


def report_facts(outcome: Outcome) -> dict[str, Any]:
    """What the report says about the tap, from its events only (the public fields of the bus)."""
    end = outcome.end
    facts: dict[str, Any] = {"reader": outcome.reader, "time_utc": None, "time_jst": None}
    moment = _instant(end or outcome.presented)
    if moment is not None:
        facts["time_utc"] = str((end or outcome.presented or {}).get("ts"))
        facts["time_jst"] = moment.astimezone(JST).isoformat(timespec="milliseconds")
    if end is None:
        facts["reason"] = outcome.reason or "no_tap"
        if outcome.presented is not None:
            facts["kind"] = outcome.presented.get("data", {}).get("kind")
        return facts
    data: dict[str, Any] = dict(end.get("data") or {})
    facts["reader"] = end.get("reader") or outcome.reader
    facts["kind"] = data.get("kind")
    if end.get("type") == "card.presented":  # an unknown card: nothing follows it but card.removed
        facts["reason"] = "unknown_card"
        facts["repeat"] = data.get("repeat")
        return facts
    felica = data.get("kind") == "felica"
    facts["command_unit"] = "FeliCa frames" if felica else "APDUs"
    commands = data.get("frames") if felica and "frames" in data else data.get("apdus")
    facts["commands"] = commands if isinstance(commands, int) else None
    if end.get("type") == "card.read_aborted":
        facts["reason"], facts["error"] = data.get("reason"), data.get("error")
    else:
        facts["read_path"] = data.get("read_path")
        facts["repeat"] = data.get("repeat")
        facts["pseudonym"] = cut_pseudonym(data.get("pseudonym"))
        facts["enrolled"] = data.get("enrolled")
        if felica:
            facts["system_code"], facts["services"] = data.get("system_code"), data.get("services")
    if outcome.presented is not None and facts.get("repeat") is None:
        facts["repeat"] = outcome.presented.get("data", {}).get("repeat")
    start, stop = _instant(outcome.presented), _instant(end)
    if start is not None and stop is not None:
        facts["read_ms"] = round((stop - start).total_seconds() * 1000, 1)
        if facts.get("commands"):
            facts["per_command_ms"] = round(facts["read_ms"] / facts["commands"], 2)
    facts["simulated"] = bool(data.get("simulated") or end.get("simulated"))
    return facts


def pick_reader(wanted: str | None, readers: list[str]) -> str | None:
    """The reader to watch: ``wanted`` by its full name or a unique prefix; None (any reader) when not
    given. :class:`CardTestUsageError` when it names none of the daemon's readers."""
    if wanted is None:
        return readers[0] if len(readers) == 1 else None
    if wanted in readers:
        return wanted
    matches = [r for r in readers if r.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(readers) or "none"
    raise CardTestUsageError(f"no single reader of the daemon is named {wanted!r} (readers: {listed})")


def wait_for_tap(
    next_event: Callable[[float], dict[str, Any]],
    reader: str | None,
    timeout: float,
    clock: Callable[[], float],
) -> Outcome:
    """Events from ``next_event(seconds)`` (``TimeoutError`` when none came) until the watched reader's
    read ends, or ``timeout`` seconds pass."""
    deadline = clock() + timeout
    presented: dict[str, dict[str, Any]] = {}
    while (left := deadline - clock()) > 0:
        try:
            env = next_event(min(left, 1.0))
        except TimeoutError:
            continue
        where = env.get("reader")
        if reader is not None and where != reader:
            continue
        kind = env.get("type")
        if kind == "card.presented":
            presented[str(where)] = env
            if (env.get("data") or {}).get("kind") == "unknown":
                return Outcome(where, env, presented=env)
        elif kind in ("card.identified", "card.read_aborted"):
            return Outcome(where, env, presented=presented.get(str(where)))
    return Outcome(reader, None, reason="no_tap")


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_card_test(
    control: str,
    publish: str,
    *,
    reader: str | None,
    timeout: float = DEFAULT_TIMEOUT_S,
    as_json: bool = False,
    curve: CurveKeys | None = None,
) -> int:
    """The whole test: the instructions on stderr, the report on stdout (``> report.txt`` keeps only the
    report); the exit code in the module docstring."""
    import time  # noqa: PLC0415 - with zmq below: readerctl's start-up stays light

    from readerd.bus.client import BusClient  # noqa: PLC0415
    from readerd.bus.control_client import Unreachable, request  # noqa: PLC0415
    from readerd.errors import BusSilentError  # noqa: PLC0415

    try:
        try:
            reply = request(control, "status", timeout_ms=STATUS_TIMEOUT_MS, curve=curve)
        except Unreachable:
            _say(
                f"readerctl doctor --card-test: no readerd answers at {control}: start it "
                "(systemctl start readerd; `readerctl doctor` says why it is down), then run the card test"
            )
            return ExitCode.UNAVAILABLE
        status: dict[str, Any] = reply.get("result") or {}
        if not reply.get("ok"):
            _say(f"readerctl doctor --card-test: readerd refused status: {reply.get('error')}")
            return ExitCode.UNAVAILABLE
        names = [str(r.get("name")) for r in status.get("readers") or [] if isinstance(r, dict)]
        try:
            watched = pick_reader(reader, names)
        except CardTestUsageError as e:
            _say(f"readerctl doctor --card-test: {e}")
            return ExitCode.USAGE
        if not names:
            _say(
                "readerctl doctor --card-test: readerd has no reader: plug one in and run `readerctl doctor`"
            )
            return ExitCode.UNAVAILABLE
        busy = [
            str(r.get("name"))
            for r in status.get("readers") or []
            if isinstance(r, dict) and r.get("card") and (watched is None or r.get("name") == watched)
        ]
        where = watched or "any reader (" + ", ".join(names) + ")"
        with BusClient(
            publish, control, since=int(status.get("last_seq") or 0), topics=("card.",), curve=curve
        ) as client:
            if busy:
                _say(f"A card is on {', '.join(busy)}: take it off first. / カードをいったん離してください。")
            _say(f"カードをリーダーにかざしてください / hold a My Number Card on {where}")
            _say(f"(waiting {timeout:g} s; Ctrl-C stops)")

            def next_event(seconds: float) -> dict[str, Any]:
                try:
                    return client.next(timeout=seconds)
                except BusSilentError as e:  # the daemon went away mid-test
                    raise Unreachable(str(e)) from e

            try:
                outcome = wait_for_tap(next_event, watched, timeout, time.monotonic)
            except Unreachable as e:
                _say(f"readerctl doctor --card-test: readerd stopped answering: {e}")
                return ExitCode.UNAVAILABLE
        version = str(status.get("version") or f"{__version__} (installed; the daemon does not report one)")
        report = Report(str(status.get("kiosk") or "-"), version, outcome, timeout)
        if as_json:
            sys.stdout.write(json.dumps(report.as_json(), ensure_ascii=False) + "\n")
        else:
            sys.stdout.write("\n".join(report.lines()) + "\n")
        sys.stdout.flush()
        return report.exit_code
    except KeyboardInterrupt:
        _say("\nreaderctl doctor --card-test: interrupted, no report")
        return INTERRUPTED_EXIT


def endpoints_of(args: argparse.Namespace) -> tuple[str, str, CurveKeys | None]:
    """(control, publish, CURVE keys) from readerctl's options, as its other subcommands find them."""
    from readerd.bus.roles import control_endpoint  # noqa: PLC0415 - readerctl's start-up stays light
    from readerd.config import Config, config_path, load_config  # noqa: PLC0415

    path = config_path(getattr(args, "config", None))
    config = load_config(path) if path else Config()
    client_key = getattr(args, "client_key", None)
    control = control_endpoint(
        getattr(args, "control", None), curve=client_key is not None, configured=config.bus.control
    )
    publish = getattr(args, "publish", None) or config.bus.publish
    curve = None
    if client_key is not None:
        from readerd.bus.client import CurveKeys  # noqa: PLC0415 - loads zmq

        server = getattr(args, "server_key", None) or config.bus.curve_path(config.state_dir) / "server.key"
        curve = CurveKeys.from_files(server, client_key)
    return control, publish, curve


def run_card_test_command(args: argparse.Namespace) -> int:
    """``readerctl doctor --card-test``, from readerctl's parsed arguments."""
    from readerd.errors import ConfigError  # noqa: PLC0415

    try:
        control, publish, curve = endpoints_of(args)
    except (ConfigError, OSError, ValueError) as e:
        _say(f"readerctl: {e}")
        return ExitCode.CONFIG
    return run_card_test(
        control,
        publish,
        reader=args.reader,
        timeout=args.timeout,
        as_json=bool(getattr(args, "json", False)),
        curve=curve,
    )
