"""Business time (docs/design.md D17): JST days and months, fiscal years April–March, ages in law, and
the store's injectable clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from readerd.plugin import business_time as bt
from readerd.plugin.store import Store
from tests.store.conftest import FAST


def utc(year: int, month: int, day: int, *hms: int) -> datetime:
    hour, minute, second = (*hms, 0, 0, 0)[:3]
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- the first nine hours of a JST day are the previous day in UTC --------------------------------------
@pytest.mark.parametrize(
    ("instant", "day"),
    [
        (utc(2025, 3, 31, 14, 59, 59), date(2025, 3, 31)),
        (utc(2025, 3, 31, 15, 0, 0), date(2025, 4, 1)),  # 00:00 JST
        (utc(2025, 4, 1, 0, 0, 0), date(2025, 4, 1)),  # 09:00 JST, UTC's midnight
        (utc(2025, 4, 1, 14, 59, 59), date(2025, 4, 1)),
        (utc(2025, 12, 31, 15, 0, 0), date(2026, 1, 1)),  # new year in Tokyo, 31 Dec in UTC
        (datetime(2025, 4, 1, 0, 30, tzinfo=timezone(timedelta(hours=-5))), date(2025, 4, 1)),  # 14:30 JST
    ],
)
def test_business_date(instant: datetime, day: date) -> None:
    assert bt.business_date(instant) == day


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        bt.business_date(datetime(2025, 4, 1, 8, 0))  # naive: the point of the test


def test_day_bounds_are_jst_midnights() -> None:
    start, end = bt.day_bounds(date(2025, 4, 1))
    assert (start, end) == (utc(2025, 3, 31, 15), utc(2025, 4, 1, 15))
    assert start.tzinfo is UTC


@pytest.mark.parametrize(
    ("year", "month", "start", "end"),
    [
        (2025, 1, utc(2024, 12, 31, 15), utc(2025, 1, 31, 15)),
        (2024, 2, utc(2024, 1, 31, 15), utc(2024, 2, 29, 15)),  # leap February
        (2025, 11, utc(2025, 10, 31, 15), utc(2025, 11, 30, 15)),
        (2025, 12, utc(2025, 11, 30, 15), utc(2025, 12, 31, 15)),  # into the next year
    ],
)
def test_month_bounds(year: int, month: int, start: datetime, end: datetime) -> None:
    assert bt.month_bounds(year, month) == (start, end)


@pytest.mark.parametrize(
    ("day", "year"),
    [
        (date(2025, 3, 31), 2024),
        (date(2025, 4, 1), 2025),
        (date(2025, 12, 31), 2025),
        (date(2026, 1, 1), 2025),
        (date(2026, 3, 31), 2025),
    ],
)
def test_fiscal_year(day: date, year: int) -> None:
    assert bt.fiscal_year(day) == year


def test_fiscal_year_of_an_instant_near_midnight() -> None:
    """31 March 23:30 UTC is already 1 April 08:30 in Tokyo: the new fiscal year."""
    assert bt.fiscal_year(bt.business_date(utc(2025, 3, 31, 23, 30))) == 2025
    assert bt.fiscal_year(utc(2025, 3, 31, 23, 30).date()) == 2024  # what a UTC date would wrongly say


def test_fiscal_year_dates_and_bounds() -> None:
    assert bt.fiscal_year_dates(2025) == (date(2025, 4, 1), date(2026, 3, 31))
    assert bt.fiscal_year_dates(2023) == (date(2023, 4, 1), date(2024, 3, 31))
    assert bt.fiscal_year_bounds(2025) == (utc(2025, 3, 31, 15), utc(2026, 3, 31, 15))


# --- age in law: reached at the end of the day before the birthday ---------------------------------------
@pytest.mark.parametrize(
    ("birth", "day", "age"),
    [
        (date(1955, 4, 2), date(2025, 3, 31), 69),
        (date(1955, 4, 2), date(2025, 4, 1), 70),  # the day before the birthday: 70 in law
        (date(1955, 4, 2), date(2025, 4, 2), 70),
        (date(1955, 4, 1), date(2025, 3, 30), 69),
        (date(1955, 4, 1), date(2025, 3, 31), 70),
        (date(2000, 12, 31), date(2000, 12, 31), 0),  # the day of birth
        (date(2000, 12, 31), date(2001, 12, 29), 0),
        (date(2000, 12, 31), date(2001, 12, 30), 1),
        (date(2000, 1, 1), date(2000, 12, 31), 1),  # born 1 Jan: one year old on 31 Dec
        # 29 February: the year of life ends with 28 February, in common and in leap years
        (date(2004, 2, 29), date(2023, 2, 27), 18),
        (date(2004, 2, 29), date(2023, 2, 28), 19),
        (date(2004, 2, 29), date(2023, 3, 1), 19),
        (date(2004, 2, 29), date(2024, 2, 27), 19),
        (date(2004, 2, 29), date(2024, 2, 28), 20),
        (date(2004, 2, 29), date(2024, 2, 29), 20),
        (date(2004, 2, 29), date(2004, 2, 29), 0),
    ],
)
def test_age_on(birth: date, day: date, age: int) -> None:
    assert bt.age_on(birth, day) == age


@pytest.mark.parametrize(
    ("birth", "years", "reached"),
    [
        (date(1955, 4, 2), 70, date(2025, 4, 1)),
        (date(1955, 4, 1), 70, date(2025, 3, 31)),
        (date(1955, 3, 1), 70, date(2025, 2, 28)),
        (date(2004, 2, 29), 19, date(2023, 2, 28)),  # common year
        (date(2004, 2, 29), 20, date(2024, 2, 28)),  # leap year
        (date(2000, 1, 1), 1, date(2000, 12, 31)),
    ],
)
def test_reaches_age_on(birth: date, years: int, reached: date) -> None:
    assert bt.reaches_age_on(birth, years) == reached
    assert bt.age_on(birth, reached) == years
    assert bt.age_on(birth, reached - timedelta(days=1)) == years - 1


def test_school_year_split_between_1_and_2_april() -> None:
    """Born 1 April reaches 6 on 31 March and starts school that April; born 2 April a year later."""
    assert bt.fiscal_year(bt.reaches_age_on(date(2019, 4, 1), 6)) == 2024
    assert bt.fiscal_year(bt.reaches_age_on(date(2019, 4, 2), 6)) == 2025


def test_age_before_birth_is_an_error() -> None:
    with pytest.raises(ValueError, match="before the birth date"):
        bt.age_on(date(2000, 1, 2), date(2000, 1, 1))
    with pytest.raises(ValueError, match="negative"):
        bt.reaches_age_on(date(2000, 1, 2), -1)


# --- the store's clock -------------------------------------------------------------------------------------
def test_store_now_uses_the_injected_clock_in_jst(tmp_path: Path) -> None:
    instant = utc(2025, 3, 31, 15, 0, 1)
    with Store.open(FAST, tmp_path, clock=lambda: instant) as store:
        now = store.now()
        plugin_now = store.for_plugin("points").now()
    assert now == instant
    assert now.utcoffset() == timedelta(hours=9)
    assert (now.year, now.month, now.day, now.hour) == (2025, 4, 1, 0)
    assert plugin_now == now


def test_store_now_refuses_a_naive_clock(tmp_path: Path) -> None:
    with (
        Store.open(FAST, tmp_path, clock=lambda: datetime(2025, 4, 1)) as store,
        pytest.raises(ValueError, match="no time zone"),
    ):
        store.now()


def test_store_now_defaults_to_the_real_clock(tmp_path: Path) -> None:
    with Store.open(FAST, tmp_path) as store:
        before = datetime.now(UTC)
        now = store.now()
        after = datetime.now(UTC)
    assert before <= now <= after
    assert now.tzinfo is bt.TOKYO
