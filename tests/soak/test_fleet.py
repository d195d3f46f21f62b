"""A ward's fleet under faults: six kiosk daemons as separate processes on the sim backend (two check-in,
two check-in + points, two bath houses), sharing one private PostgreSQL and one pseudonym key, with random
taps of enrolled and unenrolled My Number Cards and of bath-house cards, while PostgreSQL is stopped and
started, two kiosks are cut off from it (a TCP proxy that refuses, one that silently drops) while the
others go on, and kiosks are SIGKILLed and restarted.

Afterwards, exact counts, read from the shared database and the kiosks' durable event logs (not from what
a subscriber happened to see), once every offline decision was synced (check-in outboxes pushed, points
earnings that waited credited): one member per card, one attendance per (event, person), points credited
exactly once per accepted (event, person), no bath-house cap exceeded (but by visits admitted offline
while both bath houses were cut off, which the monthly report must count as over the cap), every tap one
outcome, no plugin quarantined, every kiosk's seq gap-free and a clean exit at SIGTERM.

Cost: about 25 s (20 to 35 s measured: a private PostgreSQL cluster, six daemons, one round of each
fault, seven seconds of a cut link). With
``READERD_SOAK_SECONDS=N`` the rounds go on for N seconds; ``READERD_SOAK_SEED`` replays a run (the seed
is in the soak report and in every assertion message).
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from readerd.bus.control import result_of
from tests.soak.conftest import SOAK_LINES
from tests.soak.harness import OUTCOMES, _earns, unanswered_earnings, unanswered_taps
from tests.support.daemon import Envelope
from tests.support.fleet import Fleet, Kiosk, KioskSpec
from tests.support.postgres import PrivatePostgres, private_postgres_fixture

LONG_SECONDS = float(os.environ.get("READERD_SOAK_SECONDS", "0"))
SEED = int(os.environ.get("READERD_SOAK_SEED") or random.SystemRandom().randrange(1 << 32))

READER = "Sim 00"
FESTIVAL, FAIR = "fleet-festival", "fleet-health-fair"  # no points / participation points
FAIR_POINTS = 10
PROGRAMME = "fleet-ward"
MONTHLY_CAP = 1  # with two bath houses and one visit per house and day, 1 is the cap that can bite
ENROLLED = ("ann", "ben", "cho", "dan")
UNENROLLED = ("eve", "fay")
BATH_CARDS = ("B1001", "B1002", "B1003")  # registered at the start
STRANGER_BATH_CARD = "B9999"  # never registered: unknown_card
STRANGER_CHECKIN_CARD = "C0001"  # a FeliCa check-in card never registered: looked up in the store
TAPS_PER_ROUND = 18
CUT_SECONDS = 7.0  # longer than [plugins] hook_timeout: a dropping link must not outlast a hook
FAULTS = ("postgres_outage", "cut_links", "sigkill", "sigterm_restart")

pytestmark = [
    pytest.mark.soak,
    pytest.mark.postgres,
    pytest.mark.timeout(int(max(240, LONG_SECONDS * 1.5 + 180))),
]

CHECKIN = {"sync_interval": 0.5, "retry_after": 1.0}
COMMON = {"sessions.repeat_window": 0.0, "store.statement_timeout": 2.0}


def kiosk_specs() -> list[KioskSpec]:
    points = {"earn_programme": PROGRAMME, "retry_interval": 0.5}
    bath = {"min_age": 65, "monthly_cap": MONTHLY_CAP, "sync_interval": 0.5, "retry_after": 1.0}
    return [
        KioskSpec("hall-a", ("checkin",), {"checkin": {"event": FESTIVAL, **CHECKIN}}, overrides=COMMON),
        KioskSpec(
            "hall-b",
            ("checkin",),
            {"checkin": {"event": FESTIVAL, **CHECKIN}},
            via_proxy=True,
            overrides=COMMON,
        ),
        KioskSpec(
            "points-a",
            ("checkin", "points"),
            {"checkin": {"event": FAIR, **CHECKIN}, "points": points},
            overrides=COMMON,
        ),
        KioskSpec(
            "points-b",
            ("checkin", "points"),
            {"checkin": {"event": FAIR, **CHECKIN}, "points": points},
            via_proxy=True,
            overrides=COMMON,
        ),
        KioskSpec(
            "bath-a", ("bathhouse",), {"bathhouse": {"bath_house": "matsu-no-yu", **bath}}, overrides=COMMON
        ),
        KioskSpec(
            "bath-b", ("bathhouse",), {"bathhouse": {"bath_house": "take-no-yu", **bath}}, overrides=COMMON
        ),
    ]


@dataclass(frozen=True)
class Tap:
    kiosk: str
    card: str
    kind: str  # "mynumber", or the FeliCa card's kind ("bathhouse", "checkin")
    counter: bool = False  # held for counter work (an enrolment: the card is not enrolled yet)


@dataclass
class Driver:
    """Taps, faults and waits; what it sent is what the logs are checked against."""

    fleet: Fleet
    cluster: PrivatePostgres
    rng: random.Random
    taps: dict[str, list[Tap]] = field(default_factory=lambda: defaultdict(list))
    seen: dict[str, list[Envelope]] = field(default_factory=lambda: defaultdict(list))
    faults: Counter[str] = field(default_factory=Counter)
    kills: Counter[str] = field(default_factory=Counter)
    members: dict[str, str] = field(default_factory=dict)  # enrolled card -> member_id at enrolment
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # bathhouse.report by month
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # time spent, by fault

    def where(self) -> str:
        return f"(seed {SEED}; READERD_SOAK_SEED={SEED} replays it)"

    # -- what the logs say, while the daemons run -----------------------------------------------------
    def follow(self, kiosk: Kiosk) -> list[Envelope]:
        seen = self.seen[kiosk.name]
        seen.extend(kiosk.logged(int(seen[-1]["seq"]) if seen else 0))
        return seen

    def wait(self, what: str, done: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"waited {timeout} s for {what} {self.where()}"
            time.sleep(0.05)

    def outcomes(self, kiosk: Kiosk) -> int:
        return sum(1 for e in self.follow(kiosk) if e["type"] in OUTCOMES)

    def caught_up(self, kiosk: Kiosk) -> bool:
        return self.outcomes(kiosk) >= len(self.taps[kiosk.name])

    def owes_nothing(self, kiosk: Kiosk, owed: Callable[[list[Envelope]], set[str]]) -> bool:
        """Nothing ``owed`` on the kiosk's log; fails at once when a plugin was quarantined (it would owe
        its results until ``quarantine_cooldown``, 300 s)."""
        events = self.follow(kiosk)
        quarantined = [
            e["data"] for e in events if e["type"] == "plugin.error" and e["data"].get("quarantined")
        ]
        assert not quarantined, f"{kiosk.name}: a plugin quarantined: {quarantined} {self.where()}"
        return not owed(events)

    def wait_outcomes(self, kiosks: list[Kiosk] | None = None) -> None:
        """Until every tap sent to these kiosks was read (its outcome is in the log)."""
        for kiosk in kiosks or list(self.fleet):
            self.wait(f"{kiosk.name}'s tap outcomes", functools.partial(self.caught_up, kiosk))

    # -- taps -----------------------------------------------------------------------------------------
    def tap(self, kiosk: Kiosk, card: str, kind: str = "mynumber", *, hold: bool = False) -> Tap:
        tap = Tap(kiosk.name, card, kind, counter=hold)
        self.taps[kiosk.name].append(tap)
        kiosk.tap(card, kind, hold=hold)
        return tap

    def random_tap(self, kiosks: list[Kiosk]) -> Tap:
        kiosk = self.rng.choice(kiosks)
        if "bathhouse" in kiosk.spec.plugins and self.rng.random() < 0.8:
            card = self.rng.choice((*BATH_CARDS, STRANGER_BATH_CARD))
            return self.tap(kiosk, card, "bathhouse")
        if "checkin" in kiosk.spec.plugins and self.rng.random() < 0.1:
            return self.tap(kiosk, STRANGER_CHECKIN_CARD, "checkin")
        return self.tap(kiosk, self.rng.choice((*ENROLLED, *ENROLLED, *UNENROLLED)))

    def random_taps(self, n: int, kiosks: list[Kiosk] | None = None) -> None:
        running = [k for k in kiosks or list(self.fleet) if k.running]
        for _ in range(n):
            self.random_tap(running)

    def held(self, kiosk: Kiosk, card: str, kind: str = "mynumber") -> None:
        """A card put on the reader and left there until :meth:`lift` (counter work)."""
        self.tap(kiosk, card, kind, hold=True)
        self.wait_outcomes([kiosk])

    def lift(self, kiosk: Kiosk) -> None:
        kiosk.remove(READER)

    # -- setup ----------------------------------------------------------------------------------------
    def setup(self) -> None:
        fleet = self.fleet
        now = datetime.now(UTC)
        window = {
            "starts_at": (now - timedelta(hours=1)).isoformat(),
            "ends_at": (now + timedelta(hours=6)).isoformat(),
        }
        for event_id, points in ((FESTIVAL, 0), (FAIR, FAIR_POINTS)):
            fleet["hall-a"].command(
                "checkin.define_event", event_id=event_id, name=event_id, place="区民センター",
                capacity=1000, points=points, idempotency_key=f"define-{event_id}", **window,
            )  # fmt: skip
        fleet["points-a"].command(
            "points.define_programme", programme_id=PROGRAMME, name="区民ポイント",
            last_earning_day="2099-12-31", last_ticket_day="2099-12-31", last_use_day="2099-12-31",
            idempotency_key="programme",
        )  # fmt: skip
        # Enrolment (PIN flow) at one kiosk; the other kiosks must know the members from the ward.
        counter = fleet["points-a"]
        for card in ENROLLED:
            self.held(counter, card)
            with counter.session() as ui:
                begun = result_of(ui.request("auth.begin", {"reader": READER}))
                proven = result_of(ui.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))
                enrolled = result_of(ui.request("mykey.enroll", {"auth_id": proven["auth_id"]}))
            self.members[card] = str(enrolled["member_id"])
            self.lift(counter)
        office = fleet["bath-a"]
        for card in BATH_CARDS:
            self.held(office, card, "bathhouse")
            office.command(
                "bathhouse.register", reader=READER, member_number=card, birth_date="1950-04-01",
                ward=13101, idempotency_key=f"register-{card}",
            )  # fmt: skip
            self.lift(office)

    # -- faults ---------------------------------------------------------------------------------------
    def postgres_outage(self) -> None:
        self.wait_outcomes()
        self.cluster.stop()
        try:
            self.random_taps(TAPS_PER_ROUND)
            self.wait_outcomes()
            time.sleep(1.0)  # the plugins decide offline meanwhile
        finally:
            self.cluster.start()

    def cut_links(self) -> None:
        """hall-b's link refuses, points-b's silently drops, for longer than a plugin hook may take
        (``[plugins] hook_timeout``, 5 s): taps there meanwhile, and at the others, which go on."""
        refused, dropped = self.fleet["hall-b"], self.fleet["points-b"]
        assert refused.proxy is not None
        assert dropped.proxy is not None
        for kiosk in (refused, dropped):  # each has a live pooled connection when its link is cut
            self.tap(kiosk, STRANGER_CHECKIN_CARD, "checkin")
            self.wait_outcomes([kiosk])
            self.wait(f"{kiosk.name}'s results", functools.partial(self.owes_nothing, kiosk, unanswered_taps))
        refused.proxy.mode, dropped.proxy.mode = "refuse", "drop"
        cut_until = time.monotonic() + CUT_SECONDS
        try:
            while time.monotonic() < cut_until:
                self.random_taps(2)
                for kiosk in (refused, dropped):  # a tap that needs the store, whatever the card
                    self.tap(kiosk, STRANGER_CHECKIN_CARD, "checkin")
                self.random_taps(2, [refused, dropped])
                time.sleep(0.5)
            self.wait_outcomes()
        finally:
            refused.proxy.mode, dropped.proxy.mode = "pass", "pass"

    def sigkill(self) -> None:
        """Two kiosks SIGKILLed right after their taps were read (their plugins may still owe results),
        taps at the others meanwhile, then both started again."""
        victims = self.rng.sample(list(self.fleet), 2)
        self.random_taps(TAPS_PER_ROUND // 2)
        self.wait_outcomes(victims)
        for kiosk in victims:
            kiosk.kill()
            self.kills[kiosk.name] += 1
        self.random_taps(TAPS_PER_ROUND // 2)
        self.fleet.start(victims)

    def sigterm_restart(self) -> None:
        kiosk = self.rng.choice(list(self.fleet))
        self.random_taps(TAPS_PER_ROUND // 2, [kiosk])
        self.wait_outcomes([kiosk])  # a stop ends the sim backend's queue: taps not read are not taps
        kiosk.restart()

    def run_fault(self, name: str) -> None:
        began = time.monotonic()
        getattr(self, name)()
        self.faults[name] += 1
        self.random_taps(TAPS_PER_ROUND)
        self.seconds[name] += time.monotonic() - began

    # -- the end --------------------------------------------------------------------------------------
    def drain(self, kiosk: Kiosk, command: str, deadline: float) -> dict[str, Any]:
        """Ask ``command`` (``checkin.sync``, ``points.pending``, ``bathhouse.sync``) until it says nothing
        is pending; a store not yet back (``store_unavailable``) is asked again."""
        while True:
            reply = kiosk.request(command)
            if reply["ok"] and not reply["result"]["pending"]:
                result: dict[str, Any] = reply["result"]
                return result
            assert reply["ok"] or reply["error"]["code"] in ("store_unavailable", "store_busy"), reply
            assert time.monotonic() < deadline, (
                f"{kiosk.name}: {command} still pending {reply} {self.where()}"
            )
            time.sleep(0.2)

    def settle(self, timeout: float = 90.0) -> None:
        """Until every offline decision is synced and every result owed is on the logs."""
        self.wait_outcomes()
        deadline = time.monotonic() + timeout
        for kiosk in self.fleet.with_plugin("checkin"):
            self.wait(
                f"{kiosk.name}'s check-in results",
                functools.partial(self.owes_nothing, kiosk, unanswered_taps),
            )
            self.drain(kiosk, "checkin.sync", deadline)
        for kiosk in self.fleet.with_plugin("points"):
            self.wait(
                f"{kiosk.name}'s points answers",
                functools.partial(self.owes_nothing, kiosk, unanswered_earnings),
            )
            pending = self.drain(kiosk, "points.pending", deadline)
            assert pending["written_off"] == 0, (pending, self.where())
        for kiosk in self.fleet.with_plugin("bathhouse"):
            self.drain(kiosk, "bathhouse.sync", deadline)

    def bath_report(self, month: str) -> dict[str, Any]:
        return self.fleet["bath-a"].command("bathhouse.report", month=month)


@pytest.fixture
def private_cluster() -> Iterator[PrivatePostgres]:
    """A cluster of this test's own: it is stopped and started, which the session's cluster must not be."""
    cluster = private_postgres_fixture()
    yield cluster
    cluster.remove()


def _sql(cluster: PrivatePostgres, database: str, query: str) -> list[tuple[Any, ...]]:
    with cluster.connect(database) as conn:
        return list(conn.execute(query).fetchall())


def _person(data: dict[str, Any]) -> str:
    return f"mykey:{data['mykey_id']}" if data.get("mykey_id") else f"member:{data['member_id']}"


@dataclass
class Found:
    """What the run left behind: every kiosk's event log (read after the stop) and the shared database."""

    fleet: Fleet
    driver: Driver
    cluster: PrivatePostgres
    database: str
    logs: dict[str, list[Envelope]]

    @property
    def where(self) -> str:
        return self.driver.where()

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        return _sql(self.cluster, self.database, query)


def check_logs(found: Found) -> list[tuple[Tap, Envelope]]:
    """Every kiosk's seq gap-free across its restarts and SIGKILLs (one run_id per start); every tap
    exactly one outcome, in the order sent (one backend thread per kiosk), of its kind; no plugin
    quarantined (a store that is down or cut off is ``store_unavailable`` within ``statement_timeout``,
    below ``hook_timeout``). Returns each identified event with its tap (so with its card)."""
    identified: list[tuple[Tap, Envelope]] = []
    for kiosk in found.fleet:
        events = found.logs[kiosk.name]
        seqs = [int(e["seq"]) for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), f"{kiosk.name}: the event log has a gap {found.where}"
        assert len({e["run_id"] for e in events}) == kiosk.starts, kiosk.name
        quarantined = [
            e["data"] for e in events if e["type"] == "plugin.error" and e["data"].get("quarantined")
        ]
        assert not quarantined, f"{kiosk.name}: a plugin quarantined: {quarantined} {found.where}"
        outcomes = [e for e in events if e["type"] in OUTCOMES]
        sent = found.driver.taps[kiosk.name]
        assert len(outcomes) == len(sent), (
            f"{kiosk.name}: {len(outcomes)} outcomes, {len(sent)} taps {found.where}"
        )
        for tap, out in zip(sent, outcomes, strict=True):
            assert out["type"] == "card.identified", (tap, out["data"], found.where)
            assert out["data"]["kind"] == ("jpki" if tap.kind == "mynumber" else "felica"), (tap, found.where)
            identified.append((tap, out))
    return identified


def check_members(found: Found, identified: list[tuple[Tap, Envelope]]) -> str:
    """One member per card: one pseudonym per card on every kiosk (one ward key); each enrolled card one
    row of the ward's directory (``readerd_members``), and every kiosk that names a member for the card
    names that one; an online tap of an enrolled card names it; an unenrolled card is nobody's member."""
    pseudonyms: dict[str, set[str]] = defaultdict(set)
    member_ids: dict[str, set[str]] = defaultdict(set)
    unknown_online: Counter[str] = Counter()  # enrolled card, tapped after its enrolment, not offline
    offline_misses = 0  # enrolled card answered by an offline directory that did not know it yet
    for tap, event in identified:
        data = event["data"]
        pseudonyms[tap.card].add(data["pseudonym"])
        if data.get("member_id"):
            member_ids[tap.card].add(data["member_id"])
        elif tap.card in ENROLLED and not tap.counter:
            if data.get("directory_offline"):
                offline_misses += 1
            else:
                unknown_online[f"{tap.card}@{event['kiosk']}"] += 1
    assert all(len(p) == 1 for p in pseudonyms.values()), f"a card with two pseudonyms {found.where}"
    exists = found.sql("SELECT to_regclass('readerd_members') IS NOT NULL")[0][0]
    directory = dict(found.sql("SELECT pseudonym, member_id FROM readerd_members")) if exists else {}
    members = found.driver.members
    expected = {next(iter(pseudonyms[card])): members[card] for card in ENROLLED}
    assert directory == expected, f"the ward's directory is not one member per card {found.where}"
    assert set(member_ids) <= set(ENROLLED), (
        f"unenrolled cards with a member: {dict(member_ids)} {found.where}"
    )
    assert all(ids == {members[card]} for card, ids in member_ids.items()), (
        f"a card known as another member somewhere: {dict(member_ids)}, enrolled {members} {found.where}"
    )
    assert not unknown_online, f"enrolled cards not recognised online: {dict(unknown_online)} {found.where}"
    return (
        f"members {len(directory)}; enrolled cards tapped where offline and not known yet: {offline_misses}"
    )


def check_checkins_and_points(found: Found) -> str:
    """Every identified tap at a check-in kiosk has a result (a replay answers the same); one attendance
    per (event, person), exactly the pairs some kiosk accepted (online, or offline and synced); exactly
    one credit per (event, person) accepted at a points kiosk, of the event's points; nothing waits."""
    accepted: dict[tuple[str, str], set[str]] = defaultdict(set)  # (event, person) -> checkin ids
    earning: set[tuple[str, str]] = set()  # accepted at a kiosk with the points plugin, with points
    statuses: Counter[str] = Counter()
    for kiosk in found.fleet.with_plugin("checkin"):
        events = found.logs[kiosk.name]
        assert not unanswered_taps(events), f"{kiosk.name}: a tap without a check-in result {found.where}"
        answers: dict[str, set[tuple[str, str | None]]] = defaultdict(set)
        for e in (e for e in events if e["type"] == "plugin.checkin.result"):
            data = e["data"]
            answers[e["cause"]].add((data["status"], data.get("checkin_id")))
            statuses[data["status"] + ("(offline)" if data.get("offline") else "")] += 1
            if data["status"] == "accepted":
                pair = (data["event_id"], _person(data))
                accepted[pair].add(data["checkin_id"])
                if "points" in kiosk.spec.plugins and _earns(data):
                    earning.add(pair)
        assert all(len(a) == 1 for a in answers.values()), f"{kiosk.name}: a replay answered otherwise"
        assert not unanswered_earnings(events), f"{kiosk.name}: an accepted check-in without points answer"
    rows = found.sql("SELECT id, event_id, person FROM checkin__checkins")
    attendance = Counter((str(ev), str(person)) for _id, ev, person in rows)
    assert all(n == 1 for n in attendance.values()), f"a person checked in twice {found.where}"
    assert set(attendance) == set(accepted), f"attendance differs from the accepted check-ins {found.where}"
    assert all(str(i) in accepted[(str(ev), str(p))] for i, ev, p in rows), f"a row of no tap {found.where}"
    pair_of = {checkin: pair for pair, ids in accepted.items() for checkin in ids}
    ledger = found.sql("SELECT reference, amount FROM points__ledger WHERE kind = 'earn'")
    credits = Counter(pair_of.get(str(reference), ("?", str(reference))) for reference, _ in ledger)
    assert credits == Counter(dict.fromkeys(earning, 1)), f"points not credited exactly once {found.where}"
    assert all(int(amount) == FAIR_POINTS for _, amount in ledger), found.where
    return f"check-in results {dict(sorted(statuses.items()))}; attendance {len(rows)}, credits {len(ledger)}"


def check_bath_houses(found: Found) -> str:
    """No member over the monthly cap, all bath houses together, by decisions taken online. Offline
    (PostgreSQL stopped: both bath houses at once) each house admits from what it last knew of the
    member's month, so a month may go over: only by visits admitted offline, and the report counts every
    one of them as ``over_cap`` (plugins/bathhouse/service.py). Every accepted visit on a log is a row; a
    SIGKILL may take a visit's event after its commit, never the other way round."""
    bath = found.fleet.with_plugin("bathhouse")
    months = found.sql("SELECT member_number, month, count(*) FROM bathhouse__visits GROUP BY 1, 2")
    excess = {(str(m), str(month)): int(n) - MONTHLY_CAP for m, month, n in months if n > MONTHLY_CAP}
    visits = [e for k in bath for e in found.logs[k.name] if e["type"] == "plugin.bathhouse.visit"]
    accepted = [e for e in visits if e["data"]["status"] == "accepted"]
    offline_admitted = sum(1 for e in accepted if e["data"].get("offline"))
    assert sum(excess.values()) <= offline_admitted, (
        f"cap exceeded by online decisions: {excess} {found.where}"
    )
    reported = sum(int(r.get("total_over_cap", 0)) for r in found.driver.reports.values())
    assert reported == sum(excess.values()), (
        f"over the cap {excess}, the report says {reported} {found.where}"
    )
    kills = sum(found.driver.kills[k.name] for k in bath)
    total = sum(int(n) for _m, _month, n in months)
    assert len(accepted) <= total <= len(accepted) + kills, (
        f"{len(accepted)} accepted visits on the logs, {total} in the table {found.where}"
    )
    results = Counter(e["data"]["status"] + ("(offline)" if e["data"].get("offline") else "") for e in visits)
    return f"bath visits {total}, over the cap {excess}; results {dict(sorted(results.items()))}"


def test_a_fleet_of_kiosks_under_faults_keeps_exact_counts(
    tmp_path: Path, private_cluster: PrivatePostgres, request: pytest.FixtureRequest
) -> None:
    began = time.monotonic()
    database = "fleet"
    url = private_cluster.create_database(database)
    with Fleet(tmp_path / "fleet", url, kiosk_specs()) as fleet:
        driver = Driver(fleet, private_cluster, random.Random(SEED))  # noqa: S311 - a replayable schedule
        try:
            driver.setup()
            driver.random_taps(TAPS_PER_ROUND)
            round_no = 0
            while round_no < len(FAULTS) or time.monotonic() - began < LONG_SECONDS:
                driver.run_fault(FAULTS[round_no % len(FAULTS)])
                round_no += 1
            driver.settle()
            for (month,) in _sql(private_cluster, database, "SELECT DISTINCT month FROM bathhouse__visits"):
                driver.reports[str(month)] = driver.bath_report(str(month))
            exits = fleet.stop()
        except BaseException:
            if not private_cluster.running:
                private_cluster.start()
            print(fleet.logs())
            raise
    found = Found(fleet, driver, private_cluster, database, {k.name: k.events_from_log() for k in fleet})
    lines = [
        f"fleet soak: seed {SEED}, {round_no} fault rounds in {time.monotonic() - began:.1f} s, "
        f"{sum(len(t) for t in driver.taps.values())} taps, faults {dict(driver.faults)}, "
        f"SIGKILLs {dict(driver.kills)}",
        "  seconds by fault: " + ", ".join(f"{k} {v:.1f}" for k, v in driver.seconds.items()),
    ]
    report = request.config.stash.setdefault(SOAK_LINES, [])
    report.extend(lines)
    assert all(code == 0 for code in exits.values()), f"exit codes at SIGTERM: {exits} {driver.where()}"
    identified = check_logs(found)
    for check in (
        functools.partial(check_members, found, identified),
        functools.partial(check_checkins_and_points, found),
        functools.partial(check_bath_houses, found),
    ):
        report.append("  " + check())
