"""A withdrawn member's My Number Card no longer opens the bath: the link (shared) and this kiosk's
remembered holder (local) are deleted; the senior card, member number and visits stay for the subsidy
settlement; a withdrawal while the ward's store is down is finished by the sync loop. SQLite kiosks on
one ward file, the outage real (support.Ward.outage).

Cost: about 1 s (3 tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from plugins.bathhouse.service import BathhouseService
from tests.plugins.bathhouse.support import Clock, Ward, jst, register, shared_visits

PERSON = "member:7Q2M4K9X"
WITHDRAWN = {"member_id": "7Q2M4K9X", "pseudonym": "P" * 26}


@pytest.fixture
def clock() -> Clock:
    return Clock(jst(2026, 6, 1))


@pytest.fixture
def ward(tmp_path: Path, clock: Clock) -> Iterator[Ward]:
    ward = Ward(tmp_path, clock)
    yield ward
    ward.close()


def _linked(ward: Ward) -> BathhouseService:
    bath = ward.kiosk("matsu")
    register(bath, "S001", "1950-04-01", "CARD1")
    bath.link(PERSON, {"member_number": "S001", "idempotency_key": "link-1"})
    assert bath.visit("matsu", person=PERSON, via="jpki")["status"] == "accepted"
    return bath


def _links(bath: BathhouseService) -> int:
    return int(
        bath.db.transaction(
            lambda c: c.execute(sa.select(sa.func.count()).select_from(bath.t.links)).scalar_one(),
            readonly=True,
        )
    )


def test_a_withdrawal_deletes_the_link_and_keeps_the_visits(ward: Ward, clock: Clock) -> None:
    bath = _linked(ward)
    visits = shared_visits(bath)
    done = bath.withdraw([PERSON])
    again = bath.withdraw([PERSON])
    clock.now = jst(2026, 6, 2)
    by_card = bath.visit("matsu", card="CARD1", via="felica")
    by_person = bath.visit("matsu", person=PERSON, via="jpki")
    assert done == {"links": 1, "holders": 1, "shared_pending": False}
    assert again == {"links": 0, "holders": 0, "shared_pending": False}
    assert set(visits) <= set(shared_visits(bath)), "the settlement's visits stay"
    assert by_card["status"] == "accepted", "the senior card is the programme's own"
    assert by_person["status"] == "unknown_card"


def test_offline_the_kiosk_forgets_at_once_and_the_ward_when_it_is_back(ward: Ward, clock: Clock) -> None:
    bath = _linked(ward)
    with ward.outage():
        done = bath.withdraw([PERSON])
        offline = bath.visit("matsu", person=PERSON, via="jpki")  # the local holder is gone already
        assert bath.withdrawals_pending() == 1
    retried = bath.retry_withdrawals()
    assert done == {"links": 0, "holders": 1, "shared_pending": True}
    assert offline["status"] == "store_unavailable"
    assert retried == 1
    assert bath.withdrawals_pending() == 0
    assert _links(bath) == 0


def test_a_withdrawal_naming_nobody_changes_nothing(ward: Ward) -> None:
    bath = _linked(ward)
    assert bath.withdraw([]) == {"links": 0, "holders": 0, "shared_pending": False}
    assert _links(bath) == 1
