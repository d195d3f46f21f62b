"""The soak with a daemon in a process of its own, killed with SIGKILL in the middle of the taps.

A killed daemon loses what it had not made durable: taps still queued in the sim backend (never read),
events not yet handed to the plugin host, plugin results not yet published. What must survive: the event
log (``seq`` gap-free across the kill, docs/design.md D2), every effect at most once (no tap read twice, no
check-in or ledger entry twice), the ledger's balances. What is lost is counted, not hidden: the report
says how many identified cards never got a check-in result, and how many accepted check-ins never got a
points answer, because the daemon died in between.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq

from plugins.points.service import PointsService
from readerd.bus.control_client import request
from readerd.plugin.store import Store
from simulators.mynumber import CardProfile, build_card
from simulators.vicc import ViccBridge
from tests.soak.harness import (
    OUTCOMES,
    PCSC_READER,
    Soak,
    Tap,
    _earns,
    unanswered_earnings,
    unanswered_taps,
)
from tests.support.daemon import Envelope, Subscriber
from tests.support.ports import free_tcp_port

START_TIMEOUT = 30.0


#: What a plugin command gets while its plugins are not (yet, or no longer) there to answer it.
NOT_THERE = ("unknown_command", "not_ready", "plugin_host_unavailable")


class SubprocessDaemon:
    """``readerd run --simulate`` in its own process, on fixed loopback ports (the same after a restart).

    ``split``: the configuration has ``plugins.enabled = false`` and the plugins run in ``readerd plugins``,
    a process of its own beside it (:meth:`start_host`, :meth:`kill_host`)."""

    def __init__(
        self,
        workdir: Path,
        config_toml: str,
        state_dir: Path,
        *,
        backends: tuple[str, ...] = ("sim",),
        split: bool = False,
    ) -> None:
        self.workdir = workdir
        self.state_dir = state_dir
        self.config_path = workdir / "readerd.toml"
        self.config_path.write_text(config_toml, encoding="utf-8")
        self.publish = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.tcp_control = f"tcp://127.0.0.1:{free_tcp_port()}"
        self.control = f"ipc://{state_dir / 'run' / 'operator.sock'}"  # the local operator socket
        self.backends = backends
        self.split = split
        self.process: subprocess.Popen[bytes] | None = None
        self.host: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "daemon.log"
        self.host_log_path = workdir / "plugins.log"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "readerd.cli.main", "run", "--simulate", "--config", str(self.config_path),
            "--state-dir", str(self.state_dir), "--publish", self.publish, "--control", self.tcp_control,
            "--heartbeat", "0.05", "--log-level", "WARNING", "--log-format", "json",
        ]  # fmt: skip
        for backend in self.backends:
            command += ["--backend", backend]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if self.split:
            self.start_host()
            return
        # The control endpoint answers before the plugin host has registered its commands (they get
        # unknown_command meanwhile): wait for one command of each plugin to be known.
        deadline = time.monotonic() + START_TIMEOUT
        probes = {"checkin.status": {"event_id": "-"}, "points.balance": {"member_id": "-"}}
        while probes:
            assert self.process.poll() is None, f"readerd exited:\n{self.log_path.read_text()[-3000:]}"
            for cmd, args in list(probes.items()):
                with contextlib.suppress(Exception):
                    reply = request(self.control, cmd, args, timeout_ms=500)
                    if reply["ok"] or reply["error"]["code"] not in NOT_THERE:
                        del probes[cmd]
            assert time.monotonic() < deadline, f"readerd's plugin commands never appeared: {list(probes)}"
            time.sleep(0.02)

    def start_host(self) -> None:
        """``readerd plugins`` on the daemon's state directory and configuration; back once the daemon
        forwards ``plugins`` to this host (a killed host's registration lingers until the new one's)."""
        assert self.split
        assert self.host is None
        command = [
            sys.executable, "-m", "readerd.cli.main", "plugins", "--config", str(self.config_path),
            "--state-dir", str(self.state_dir), "--log-level", "WARNING", "--log-format", "json",
        ]  # fmt: skip
        with self.host_log_path.open("ab") as log:
            self.host = subprocess.Popen(
                command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            assert self.host.poll() is None, f"plugins exited:\n{self.host_log_path.read_text()[-3000:]}"
            with contextlib.suppress(Exception):  # the dead host's peer never answers: a short timeout
                reply = request(self.control, "plugins", {}, timeout_ms=150)
                if reply["ok"] and reply["result"]["plugins"]:
                    return
            assert time.monotonic() < deadline, "readerd plugins never registered with the daemon"
            time.sleep(0.02)

    def kill_host(self) -> None:
        assert self.host is not None
        self.host.send_signal(signal.SIGKILL)
        self.host.wait(10)
        self.host = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.host is not None:  # the plugins first: their last results still reach the daemon
            self.host.send_signal(signal.SIGTERM)
            try:
                assert self.host.wait(30) == 0, self.host_log_path.read_text()[-3000:]
            finally:
                if self.host.poll() is None:
                    self.host.kill()
                self.host = None
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            assert self.process.wait(30) == 0, self.log_path.read_text()[-3000:]
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process = None

    # -- what the driver calls (as on RunningDaemon) ---------------------------------------------------
    def request(self, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return request(self.control, cmd, args, timeout_ms=10_000)

    def tap(self, card: str = "alice", **args: object) -> dict[str, Any]:
        reply = self.request("tap", {"card": card, **args})
        assert reply["ok"], reply
        return reply

    def remove(self, reader: str | None = None) -> None:
        assert self.request("remove", {"reader": reader} if reader else {})["ok"]

    def subscriber(self) -> Subscriber:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.publish)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sub = Subscriber(sock)
        sub.sync(10)
        return sub


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


class KillSoak(Soak):
    """:class:`Soak` on a subprocess daemon (no in-process test plugin: it cannot be loaded there).

    With ``pcscd``, the daemon also reads the private pcscd's vpcd reader (a card can be on it at a
    kill: :meth:`kill_daemon`); with ``split``, its plugins run in ``readerd plugins`` (:meth:`kill_host`).
    """

    def __init__(self, state_dir: Path, *args: Any, split: bool = False, **kwargs: Any) -> None:
        super().__init__(state_dir, *args, **kwargs)
        self.flaky = None
        c = self.config
        sections: dict[str, dict[str, object]] = {
            "sim": {"readers": list(c.sim.readers), "allow_simulated_cards": c.sim.allow_simulated_cards},
            "sessions": {"deadline": c.sessions.deadline, "repeat_window": c.sessions.repeat_window},
            "bus": {"log_max_events": c.bus.log_max_events},
            "identity": {"pseudonym_key_file": c.identity.pseudonym_key_file},  # the ward's key
            "store": {"shared_url": c.store.shared_url, "connect_timeout": c.store.connect_timeout,
                      "retries": c.store.retries},
            "plugins": {"autoload": False, "builtins": list(c.plugins.builtins), "enabled": not split},
        }  # fmt: skip
        if self.pcscd is not None:
            sections["pcsc"] = {"readers": list(c.pcsc.readers), "allow_virtual_readers": True}
        lines = [f"kiosk = {_toml('soak-kiosk')}"]
        for table, values in sections.items():
            lines += [f"\n[{table}]", *(f"{k} = {_toml(v)}" for k, v in values.items())]
        for plugin, values in c.plugins.sections.items():
            lines += [f"\n[plugins.{plugin}]", *(f"{k} = {_toml(v)}" for k, v in values.items())]
        self.process = SubprocessDaemon(
            state_dir.parent, "\n".join(lines) + "\n", state_dir, backends=c.backends, split=split
        )
        self.kills = 0
        self.lost_taps = 0
        self.owed_at_kill = 0  # check-in and points results a kill left owing (the replay must bring them)
        self.held_kills = 0  # SIGKILLs with a card on the PC/SC reader
        self.held_reported = 0  # ... after which the next start reported that card (exactly once each)
        self.host_kills = 0  # SIGKILLs of the split plugin host
        self.owed_at_host_kill = 0  # identified taps without a check-in result when the host died
        self._store: Store | None = None

    def start(self) -> None:
        self.process.start()
        self.daemon = self.process
        self.sub = self.process.subscriber()
        self.report.runs += 1
        self._catch_up()
        if self.pcscd is not None:  # the monitor lists pcscd's readers on its own thread after start
            deadline = time.monotonic() + START_TIMEOUT
            while PCSC_READER not in [r["name"] for r in self.command("readers")["readers"]]:
                assert time.monotonic() < deadline, "the PC/SC reader never showed up"
                time.sleep(0.05)

    def _catch_up(self) -> None:
        """What the restarted daemon published before the subscriber was live (the plugin host replays
        what a kill left owing as it starts), from ``events.since``: the driver misses nothing."""
        while True:
            result = self.process.request("events.since", {"seq": self._last_seq()})["result"]
            self.seen.extend(result["events"])
            if not result["more"]:
                return

    def _last_seq(self) -> int:
        return int(self.seen[-1]["seq"]) if self.seen else 0

    def _drain(self, timeout: float = 0.0) -> bool:
        """As the in-process soak's, less what :meth:`_catch_up` already took."""
        assert self.sub is not None
        got = False
        with contextlib.suppress(TimeoutError):
            while True:
                event = self.sub.next(timeout)
                timeout = 0.0
                if int(event["seq"]) > self._last_seq():
                    self.seen.append(event)
                    got = True
        return got

    def stop(self) -> None:
        if self.sub is not None:
            self._drain()
            self.sub.sock.close()
        self.process.stop()
        self.daemon, self.sub = None, None
        if self._store is not None:
            self._store.close()
            self._store = None

    def hold_pcsc_card(self) -> ViccBridge:
        """A card put on the vpcd reader and left there (read once): the kill that follows finds it on."""
        assert self.pcscd is not None
        self.quiesce()
        name = self.rng.choice(("dora", "eve"))
        card = build_card(CardProfile(name=f"pcsc-{name}"), self.pki)
        self.taps.append(Tap(len(self.taps), PCSC_READER, f"pcsc-{name}", False, None, True))
        done = sum(1 for t in self.taps if t.pcsc)
        bridge = ViccBridge(card, port=self.pcscd.ports[0])
        bridge.insert()
        self._wait_seen("the PC/SC outcome", self._on_pcsc(*OUTCOMES), done, 20)
        return bridge

    def kill_daemon(self, after_outcomes: int, held: ViccBridge | None = None) -> None:
        """SIGKILL once ``after_outcomes`` more taps were read (others still queued), then start again.

        Then the driver's view is rebuilt from the durable log: taps never read are dropped (they never
        happened on the card side). Results the daemon died owing are not forgiven: the restarted
        plugin host replays what its plugins were not given, and the driver waits for them.

        ``held``: a card on the PC/SC reader through the kill (:meth:`hold_pcsc_card`). The next start
        must report it exactly once (pcscd still has it: one read, one outcome, the same pseudonym as
        before the kill), and when it is taken off, one ``card.removed``.
        """
        seen_before = sum(1 for e in self.seen if e["type"] in OUTCOMES)
        self._wait_seen(
            "outcomes before the kill", lambda e: e["type"] in OUTCOMES, seen_before + after_outcomes, 30
        )
        assert self.sub is not None
        self.sub.sock.close()
        self.process.kill()
        self.kills += 1
        self.report.faults["daemon_sigkill"] += 1
        self.daemon, self.sub = None, None
        logged = self.logged_events()
        outcomes = sum(1 for e in logged if e["type"] in OUTCOMES and e["reader"] != PCSC_READER)
        sim_read = [t for t in self.taps if not t.pcsc][:outcomes]
        kept = {id(t) for t in sim_read}
        read = [t for t in self.taps if t.pcsc or id(t) in kept]  # PC/SC taps are read synchronously
        self.lost_taps += len(self.taps) - len(read)
        self.taps = read
        self.seen = logged
        self.removals = sum(1 for e in logged if e["type"] == "card.removed")
        self.owed_at_kill += len(unanswered_taps(logged)) + len(unanswered_earnings(logged))
        boundary = self._last_seq()
        before = [e for e in logged if self._on_pcsc(*OUTCOMES)(e)]
        self.start()
        if held is not None:
            self._reported_once(held, before[-1], boundary)

    def _reported_once(self, held: ViccBridge, before: Envelope, boundary: int) -> None:
        """The card left on the PC/SC reader through a kill (``before``: its outcome then): one outcome
        of the new run (events after ``boundary``), then its removal."""
        self.held_kills += 1
        self.report.faults["daemon_sigkill_card_on_reader"] += 1
        tap = next(t for t in reversed(self.taps) if t.pcsc)
        self.taps.append(replace(tap, index=len(self.taps)))

        def after(*types: str) -> Callable[[Envelope], bool]:
            return lambda e: int(e["seq"]) > boundary and self._on_pcsc(*types)(e)

        try:
            self._wait_seen("the held card reported after the restart", after(*OUTCOMES), 1, 20)
        finally:
            held.remove()
        self.removals += 1
        self._wait_seen("the held card's removal", after("card.removed"), 1, 20)
        assert held.errors == [], held.errors
        # The reader's worker handles one change at a time: a second read would precede the removal.
        again = [e for e in self.seen if after(*OUTCOMES)(e)]
        assert len(again) == 1, [(e["type"], e["seq"]) for e in again]
        assert again[0]["type"] == before["type"] == "card.identified", (before, again)
        assert again[0]["data"]["pseudonym"] == before["data"]["pseudonym"]
        assert again[0]["run_id"] != before["run_id"]
        self.held_reported += 1

    def kill_host(self, after_outcomes: int) -> None:
        """SIGKILL ``readerd plugins`` once ``after_outcomes`` more taps were read (the rest are read while
        it is down), then start it again: it resumes from its cursor and replays what it had not done."""
        seen_before = sum(1 for e in self.seen if e["type"] in OUTCOMES)
        self._wait_seen(
            "outcomes before the kill", lambda e: e["type"] in OUTCOMES, seen_before + after_outcomes, 30
        )
        self.process.kill_host()
        self.host_kills += 1
        self.report.faults["plugin_host_sigkill"] += 1
        self._drain()
        self.owed_at_host_kill += len(unanswered_taps(self.seen))
        self.process.start_host()

    def points_service(self) -> PointsService:
        """The shared store opened here (the daemon is another process); closed at :meth:`stop`."""
        self._store = Store.open(self.config.store, self.state_dir)
        return PointsService(self._store.for_plugin("points"))


def verify_killed(soak: KillSoak, events: list[dict[str, Any]]) -> dict[str, Any]:
    """What must hold across SIGKILLs (docs/design.md D2: delivery at least once, effects exactly once).

    Every identified tap has a check-in result (a ``cause`` names the tap), however many kills came
    between the tap and the plugin; a tap has at most one live result, and every result of one tap says
    the same (a replay answers as the first handling did); an accepted check-in is one tap's, once per
    person and event, in the attendance; every earning result has a points answer, and the ledger
    credits each check-in once.
    """
    seqs = [int(e["seq"]) for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the event log has a gap across a SIGKILL"
    outcomes = [e for e in events if e["type"] in OUTCOMES]
    assert len(outcomes) == len(soak.taps), "every tap read has exactly one outcome"
    # In order per backend (the sim backend's one thread; the PC/SC reader's taps one at a time; a card
    # on it through a kill is one tap per run: the next start reads it again).
    on_pcsc = [e["reader"] == PCSC_READER for e in outcomes]
    for pcsc in (False, True):
        taps = [t for t in soak.taps if t.pcsc == pcsc]
        outs = [e for e, p in zip(outcomes, on_pcsc, strict=True) if p == pcsc]
        for tap, out in zip(taps, outs, strict=True):
            assert out["type"] == tap.expected, (tap, out)
            assert out["reader"] == tap.reader, (tap, out)
    identified = sum(1 for e in outcomes if e["type"] == "card.identified")
    assert not unanswered_taps(events), "an identified tap without a check-in result"
    results = [e for e in events if e["type"] == "plugin.checkin.result"]
    live = Counter(e["cause"] for e in results if not e.get("replayed"))
    assert all(n == 1 for n in live.values()), "a tap with two live check-in results"
    answers: dict[str, set[tuple[str, str | None]]] = {}
    for e in results:
        answers.setdefault(e["cause"], set()).add((e["data"]["status"], e["data"].get("checkin_id")))
    assert all(len(a) == 1 for a in answers.values()), f"a replay answered differently: {answers}"
    accepted: dict[tuple[str, str], set[str]] = {}
    for e in results:
        if e["data"]["status"] == "accepted":
            key = (e["data"]["event_id"], f"member:{e['data']['member_id']}")
            accepted.setdefault(key, set()).add(e["cause"])
    assert all(len(taps) == 1 for taps in accepted.values()), f"accepted for two taps: {accepted}"
    recorded = 0
    for event_id, persons in soak.attendance.items():
        assert len(persons) == len(set(persons)), f"{event_id}: a person recorded twice"
        assert {p for (ev, p) in accepted if ev == event_id} <= set(persons), event_id
        recorded += len(persons)
    assert not unanswered_earnings(events), "an earning check-in result without a points answer"
    checkin_of = {e["id"]: e["data"]["checkin_id"] for e in results if _earns(e["data"])}
    earned = {
        checkin_of[e["cause"]]: int(e["data"]["earned"])
        for e in events
        if e["type"] == "plugin.points.earned" and e.get("cause") in checkin_of
    }
    assert soak.ledger_references == [], "a check-in credited twice"
    assert soak.report.outstanding_points >= sum(earned.values()), "earned on the bus, not in the ledger"
    found: dict[str, Any] = {
        "taps_read": len(soak.taps),
        "taps_lost_queued": soak.lost_taps,
        "sigkills": soak.kills,
        "identified": identified,
        "results_owed_at_kills": soak.owed_at_kill,
        "checkin_results": len(results),
        "replayed_checkin_results": sum(1 for e in results if e.get("replayed")),
        "accepted_checkins_recorded": recorded,
        "accepted_taps": len(accepted),
        "ledger_points": soak.report.outstanding_points,
        "earned_on_bus": sum(earned.values()),
        "events_logged": len(events),
        "plugin_errors": dict(Counter(f"{e['data']['plugin']}/{e['data']['error']}" for e in events
                                      if e["type"] == "plugin.error")),
    }  # fmt: skip
    if soak.pcscd is not None:
        found["pcsc_taps"] = sum(1 for t in soak.taps if t.pcsc)
        found["sigkills_with_a_card_on_the_pcsc_reader"] = soak.held_kills
        found["reported_once_at_the_next_start"] = soak.held_reported
    if soak.process.split:
        found.update(verify_split(soak, events, results, accepted))
    return found


def verify_split(
    soak: KillSoak,
    events: list[dict[str, Any]],
    results: list[dict[str, Any]],
    accepted: dict[tuple[str, str], set[str]],
) -> dict[str, Any]:
    """With the plugins in ``readerd plugins``, SIGKILLed mid-stream: the daemon never died, so nothing
    is forgiven. Every effect in the stores is exactly one tap's: the attendance is exactly the accepted
    check-ins on the bus, the ledger has one row per check-in credited on the bus and holds its points."""
    for event_id, persons in soak.attendance.items():
        assert set(persons) == {p for (ev, p) in accepted if ev == event_id}, event_id
    checkin_of = {e["id"]: e["data"]["checkin_id"] for e in results if _earns(e["data"])}
    credited: dict[str, int] = {}
    for e in events:
        if e["type"] == "plugin.points.earned" and e.get("cause") in checkin_of:
            credited.setdefault(checkin_of[e["cause"]], int(e["data"]["earned"]))
    assert soak.ledger_rows == len(credited), (soak.ledger_rows, len(credited))
    assert soak.report.outstanding_points == sum(credited.values())
    return {
        "plugin_host_sigkills": soak.host_kills,
        "identified_without_result_when_killed": soak.owed_at_host_kill,
        "attendance_rows": sum(len(p) for p in soak.attendance.values()),
        "ledger_rows": soak.ledger_rows,
        "checkins_credited_on_bus": len(credited),
    }


def env_seconds() -> float:
    return float(os.environ.get("READERD_SOAK_SECONDS", "0"))
