"""One member directory for a ward: enrol at one kiosk, be recognised at every other; taps keep working
from the cache when the ward cannot be asked; enrolment says when it cannot be done; a kiosk's own
directory moves in with ``members.import``; a withdrawal reaches every plugin.

Cost: about 25 s (two `readerd run` processes and a few in-process daemons on one PostgreSQL).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy as sa

from protocols.mykey import key_fingerprint
from readerd.bus.control_client import ControlSession
from readerd.config import IdentityConfig, PluginsConfig, StoreConfig
from readerd.errors import StoreUnavailableError
from readerd.ops.database import postgres_database
from readerd.ops.keys import create_pseudonym_key
from readerd.plugin.api import CardsOnReaders, PluginContext, PluginEvent
from readerd.plugin.hookspecs import hookimpl
from readerd.reading.identity import DirectoryEntry
from readerd.reading.ward import WardDirectory, WardDirectorySettings
from tests.support.auth import READER, error, ok
from tests.support.daemon import RunningDaemon, Subscriber, running_daemon, sim_config
from tests.support.fleet import Fleet, KioskSpec
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

BIN = Path(sys.executable).parent


def _authenticate(session: ControlSession, reader: str = READER) -> str:
    begun = ok(session.request("auth.begin", {"reader": reader}))
    auth_id: str = ok(session.request("auth.pin", {"auth_id": begun["auth_id"], "pin": "1234"}))["auth_id"]
    return auth_id


def _identified(sub: Subscriber) -> dict[str, Any]:
    found: dict[str, Any] = sub.until(lambda e: e["type"] in ("card.identified", "card.read_aborted"))[-1]
    assert found["type"] == "card.identified", found
    data: dict[str, Any] = found["data"]
    return data


def _ward_key(tmp_path: Path) -> IdentityConfig:
    key = tmp_path / "ward.key"
    if not key.exists():
        create_pseudonym_key(key)
    return IdentityConfig(str(key), key_fingerprint(key.read_bytes()))


def test_enrolled_at_kiosk_a_is_the_same_member_at_kiosk_b(postgres_url: str, tmp_path: Path) -> None:
    """The issue's first test: two daemon processes, one PostgreSQL, one member."""
    specs = [KioskSpec("library"), KioskSpec("hall", overrides={"identity.directory_cache_ttl": 0.0})]
    with Fleet(tmp_path, postgres_url, specs) as fleet:
        library, hall = fleet["library"], fleet["hall"]
        with library.subscriber("card.") as sub, library.session() as ui:
            library.tap("alice")
            assert _identified(sub)["enrolled"] is False
            enrolled = ok(ui.request("mykey.enroll", {"auth_id": _authenticate(ui)}))
        with hall.subscriber("card.", "member.") as sub, hall.session() as ui:
            hall.tap("alice")
            seen = _identified(sub)
            again = ok(ui.request("mykey.enroll", {"auth_id": _authenticate(ui)}))  # idempotent ward-wide
            gone = ok(ui.request("mykey.unenroll", {"auth_id": _authenticate(ui)}))
            withdrawn = sub.until(lambda e: e["type"] == "member.withdrawn")[-1]
            hall.remove()
            hall.tap("alice")
            after = _identified(sub)
        engine = sa.create_engine(postgres_url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM readerd_members")).scalar_one()
        engine.dispose()
    assert enrolled["created"] is True
    assert seen["enrolled"] is True
    assert seen["member_id"] == enrolled["member_id"]
    assert "directory_offline" not in seen
    assert again == {"member_id": enrolled["member_id"], "created": False}
    assert gone == {"unenrolled": True}
    assert withdrawn["data"] == {"member_id": enrolled["member_id"], "pseudonym": seen["pseudonym"]}
    assert after["enrolled"] is False
    assert rows == 0


def _directory(url: str, tmp_path: Path, **settings: float) -> WardDirectory:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = StoreConfig(shared_url=url, connect_timeout=2.0, statement_timeout=1.0)
    return WardDirectory(
        postgres_database(url, store),
        tmp_path / "cache.db",
        kiosk="test",
        settings=WardDirectorySettings(**settings),
    )


def _through(proxy: TcpProxy, url: str) -> str:
    return sa.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@pytest.mark.parametrize("mode", ["refuse", "drop"])
def test_taps_are_answered_from_the_cache_when_the_ward_cannot_be_asked(
    postgres_url: str, tmp_path: Path, mode: Literal["refuse", "drop"]
) -> None:
    target = sa.make_url(postgres_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        ward = _directory(
            _through(proxy, postgres_url), tmp_path, cache_ttl=0.0, negative_ttl=0.0, retry=60.0
        )
        try:
            member = ward.enroll("p-known")
            assert ward.resolve("p-known").entry == member
            assert ward.resolve("p-stranger").entry is None
            proxy.mode = mode
            known, stranger = ward.resolve("p-known"), ward.resolve("p-stranger")
            never_seen = ward.resolve("p-never-seen")
            with pytest.raises(StoreUnavailableError):
                ward.enroll("p-new")  # enrolment needs the ward, never the cache
        finally:
            ward.close()
    assert known.entry == member
    assert known.offline
    assert stranger.offline
    assert stranger.entry is None
    assert never_seen.offline
    assert never_seen.entry is None
    assert ward.stats["offline"] == 3, "the first failure quiets the directory: no second wait"


def test_answers_are_cached_and_misses_too(postgres_url: str, tmp_path: Path) -> None:
    """Negative caching: an unenrolled card tapped again within the window costs no query."""
    ward = _directory(postgres_url, tmp_path, cache_ttl=300.0, negative_ttl=300.0)
    try:
        ward.enroll("p-member")
        for _ in range(3):
            ward.resolve("p-member")
            ward.resolve("p-nobody")
        # a fresh kiosk cache: the first lookup of each is asked, the rest answered from the cache
        second = _directory(postgres_url, tmp_path / "b", cache_ttl=300.0, negative_ttl=300.0)
        try:
            answers = [second.resolve("p-member").entry for _ in range(3)]
            misses = [second.resolve("p-nobody").entry for _ in range(3)]
        finally:
            second.close()
    finally:
        ward.close()
    assert second.stats == {"asked": 2, "cached": 4, "offline": 0}
    assert all(a is not None and a.pseudonym == "p-member" for a in answers)
    assert misses == [None, None, None]


def test_concurrent_enrolment_of_one_card_at_two_kiosks_makes_one_member(
    postgres_url: str, tmp_path: Path
) -> None:
    wards = [_directory(postgres_url, tmp_path / name) for name in ("a", "b", "c", "d")]
    barrier = threading.Barrier(len(wards))
    results: list[DirectoryEntry] = []

    def enrol(ward: WardDirectory) -> None:
        barrier.wait()
        results.append(ward.enroll("p-same-card"))

    threads = [threading.Thread(target=enrol, args=(w,)) for w in wards]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for w in wards:
        w.close()
    assert len(results) == len(wards)
    assert len({r.member_id for r in results}) == 1


@contextlib.contextmanager
def _kiosk(tmp_path: Path, name: str, url: str, **overrides: Any) -> Iterator[RunningDaemon]:
    store = StoreConfig(shared_url=url, connect_timeout=2.0, statement_timeout=1.0) if url else StoreConfig()
    config = sim_config(tmp_path / name, identity=_ward_key(tmp_path), store=store, **overrides)
    with running_daemon(config) as daemon:
        yield daemon


def test_enrolment_with_the_ward_down_is_refused_and_the_proof_kept(
    postgres_url: str, tmp_path: Path
) -> None:
    target = sa.make_url(postgres_url)
    with (
        TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy,
        _kiosk(tmp_path, "k", _through(proxy, postgres_url)) as d,
        d.subscriber("card.") as sub,
        d.session() as ui,
    ):
        d.tap("bob")
        _identified(sub)
        auth_id = _authenticate(ui)
        proxy.mode = "refuse"
        refused = error(ui.request("mykey.enroll", {"auth_id": auth_id}))
        proxy.mode = "pass"
        enrolled = ok(ui.request("mykey.enroll", {"auth_id": auth_id}))  # the same proof, no new PIN
    assert refused["code"] == "directory_unavailable"
    assert "try again" in refused["message"]
    assert enrolled["created"] is True


def test_members_import_moves_a_kiosk_directory_made_under_the_ward_key(
    postgres_url: str, tmp_path: Path
) -> None:
    members = {}
    with _kiosk(tmp_path, "old", "") as d, d.subscriber("card.") as sub, d.session() as ui:  # on its own
        for card in ("carol", "dave"):
            d.tap(card)
            _identified(sub)
            members[card] = ok(ui.request("mykey.enroll", {"auth_id": _authenticate(ui)}))["member_id"]
            d.remove()
    with _kiosk(tmp_path, "old", postgres_url) as d, d.subscriber("card.") as sub:  # joins the ward
        before = d.request("members.import", {"dry_run": True})
        first = d.request("members.import", {})
        second = d.request("members.import", {})
        d.tap("carol")
        carol = _identified(sub)
    assert ok(before) == {"members": 2, "imported": 2, "present": 0, "conflicts": [], "dry_run": True}
    assert ok(first)["imported"] == 2
    assert ok(second) == {"members": 2, "imported": 0, "present": 2, "conflicts": [], "dry_run": False}
    assert carol["member_id"] == members["carol"]


def test_members_import_reports_conflicts_and_refuses_another_key(postgres_url: str, tmp_path: Path) -> None:
    with _kiosk(tmp_path, "a", "") as d, d.subscriber("card.") as sub, d.session() as ui:
        d.tap("erin")
        _identified(sub)
        local = ok(ui.request("mykey.enroll", {"auth_id": _authenticate(ui)}))["member_id"]
    with _kiosk(tmp_path, "b", postgres_url) as d, d.subscriber("card.") as sub, d.session() as ui:
        d.tap("erin")
        _identified(sub)
        ward = ok(ui.request("mykey.enroll", {"auth_id": _authenticate(ui)}))["member_id"]
    with _kiosk(tmp_path, "a", postgres_url) as d:
        conflicts = ok(d.request("members.import", {}))
    other = tmp_path / "c"
    with running_daemon(sim_config(other)):  # a kiosk on its own key (the sim's own)
        pass
    with _kiosk(tmp_path, "c", postgres_url) as d:
        refused = error(d.request("members.import", {}))
    assert conflicts["conflicts"] == [
        {"member_id": local, "reason": "card_enrolled_as", "ward_member_id": ward}
    ]
    assert conflicts["imported"] == 0
    assert refused["code"] == "other_deployment_key"
    assert "enrol again" in refused["message"]


def test_readerctl_members_import_prints_lines(postgres_url: str, tmp_path: Path) -> None:
    with _kiosk(tmp_path, "k", postgres_url) as d:
        done = subprocess.run(
            [str(BIN / "readerctl"), "--control", d.control, "members", "import", "--dry-run"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        as_json = subprocess.run(
            [str(BIN / "readerctl"), "--json", "--control", d.control, "members", "import"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert "would be imported: 0" in done.stdout
    assert json.loads(as_json.stdout)["imported"] == 0


class _Forgetful:
    """A plugin that declares interest in nothing, yet must hear of a withdrawal."""

    def __init__(self) -> None:
        self.withdrawn: list[dict[str, Any]] = []

    @hookimpl
    def readerd_event_interest(self) -> Any:
        from readerd.plugin.api import EventInterest  # noqa: PLC0415

        return EventInterest(types=frozenset())

    @hookimpl
    def readerd_member_withdrawn(self, event: PluginEvent, context: PluginContext) -> None:
        self.withdrawn.append(dict(event.data))


class _Counter:
    """A counter plugin with the default interest: it holds the card on the reader (CardsOnReaders)."""

    def __init__(self) -> None:
        self.cards = CardsOnReaders()
        self.updated: list[dict[str, Any]] = []

    @hookimpl
    def readerd_card_identified(self, event: PluginEvent) -> None:
        self.cards.identified(event)

    @hookimpl
    def readerd_member_enrolled(self, event: PluginEvent) -> None:
        card = self.cards.enrolled(event)
        if card is not None:
            self.updated.append(dict(card.data))


def test_a_withdrawal_reaches_every_plugin(tmp_path: Path) -> None:
    """Also: ``member.enrolled`` updates the card a plugin holds, as a new tap would."""
    plugin, counter = _Forgetful(), _Counter()
    config = sim_config(tmp_path / "k", plugins=PluginsConfig(autoload=False))
    with (
        running_daemon(config, plugins={"forgetful": plugin, "counter": counter}) as d,
        d.subscriber("card.", "member.") as sub,
        d.session() as ui,
    ):
        d.tap("frank")
        _identified(sub)
        member = ok(ui.request("mykey.enroll", {"auth_id": _authenticate(ui)}))["member_id"]
        ok(ui.request("mykey.unenroll", {"auth_id": _authenticate(ui)}))
        sub.until(lambda e: e["type"] == "member.withdrawn")
        deadline = time.monotonic() + 5
        while not plugin.withdrawn and time.monotonic() < deadline:
            time.sleep(0.02)
    assert [w["member_id"] for w in plugin.withdrawn] == [member]
    assert [(u["enrolled"], u["member_id"]) for u in counter.updated] == [(True, member)]
