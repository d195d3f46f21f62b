"""Business time for plugins (docs/design.md D17): the ward's calendar, not the machine's.

Everything a citizen or the ward office counts is counted in Japan Standard Time: a "month" of bath-house
visits or a settlement period is a JST calendar month, a yearly figure is a fiscal year (April to March,
named by the calendar year it starts in: FY2025 = 2025-04-01 .. 2026-03-31, 令和7年度), and the first nine
hours of every JST day are still the previous day in UTC, which is where off-by-one-day bugs live.

Instants are stored and compared as aware UTC datetimes; this module turns them into business dates and
back. ``Asia/Tokyo`` comes from ``zoneinfo`` with the ``tzdata`` package as its fallback, so a kiosk
image without system zone data gives the same answers.

Ages follow 年齢計算ニ関スル法律 with 民法 143 条: age is counted from the day of birth, and a year of life
ends at the end of the day before the birthday's anniversary (for a 29 February birthday in a common
year: at the end of 28 February). So a person *reaches* N on the day before their N-th birthday and is N
on that day in law (:func:`age_on`), which is one more than the everyday count on that one day. This is
why someone born on 1 April starts school a year before someone born on 2 April.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

TOKYO: Final = ZoneInfo("Asia/Tokyo")
FISCAL_YEAR_FIRST_MONTH: Final = 4

Clock = Callable[[], datetime]
"""Returns the current instant as an aware datetime (tests inject a fixed one)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone: business time needs an aware instant")
    return moment


def to_business(moment: datetime) -> datetime:
    """The same instant on the ward's wall clock (JST)."""
    return _aware(moment).astimezone(TOKYO)


def business_date(moment: datetime) -> date:
    """The JST calendar day an instant falls on (2025-03-31T15:00Z is 2025-04-01)."""
    return to_business(moment).date()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants ``[start, end)`` of a JST day, for queries on stored timestamps."""
    start = datetime(day.year, day.month, day.day, tzinfo=TOKYO)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """The UTC instants ``[start, end)`` of a JST calendar month."""
    start = datetime(year, month, 1, tzinfo=TOKYO)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=TOKYO)
    return start.astimezone(UTC), end.astimezone(UTC)


def fiscal_year(day: date) -> int:
    """The fiscal year a JST date belongs to, named by the year its April falls in."""
    return day.year if day.month >= FISCAL_YEAR_FIRST_MONTH else day.year - 1


def fiscal_year_dates(year: int) -> tuple[date, date]:
    """First and last day of fiscal year ``year`` (``2025`` -> 2025-04-01, 2026-03-31)."""
    return date(year, FISCAL_YEAR_FIRST_MONTH, 1), date(year + 1, FISCAL_YEAR_FIRST_MONTH, 1) - timedelta(1)


def fiscal_year_bounds(year: int) -> tuple[datetime, datetime]:
    """The UTC instants ``[start, end)`` of fiscal year ``year``."""
    first, last = fiscal_year_dates(year)
    return day_bounds(first)[0], day_bounds(last)[1]


def _anniversary(birth: date, year: int) -> date:
    """The birthday in ``year``; a 29 February birthday falls on 1 March in a common year, because the
    year of life ends with 28 February (民法 143 条 2 項: no corresponding day, so the month's last day)."""
    try:
        return birth.replace(year=year)
    except ValueError:
        return date(year, 3, 1)


def reaches_age_on(birth: date, years: int) -> date:
    """The day on which a person born on ``birth`` reaches ``years`` in law (「N歳に達する日」): the day
    before the N-th birthday (28 February for a 29 February birthday in a common year)."""
    if years < 0:
        raise ValueError("years must not be negative")
    return _anniversary(birth, birth.year + years) - timedelta(days=1)


def age_on(birth: date, day: date) -> int:
    """Age in law on ``day``: the years reached by the end of that day (the day before a birthday already
    counts the new year; see the module docstring). ``day`` before ``birth`` is an error."""
    if day < birth:
        raise ValueError(f"{day} is before the birth date {birth}")
    following = day + timedelta(days=1)
    years = following.year - birth.year
    if following < _anniversary(birth, following.year):
        years -= 1
    return years
