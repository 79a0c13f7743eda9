"""Times of FHIR resources: aware datetimes only, hours from an origin, ages."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ._errors import FhirError


def check_aware(value: Any, what: str) -> dt.datetime:
    """An aware `datetime` argument (not from a resource), or `TypeError`/`ValueError`."""
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{what}: expected an aware datetime.datetime, got {value!r}.")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what}: expected a datetime with a time zone (an aware datetime), got {value!r}; "
            "a time without a zone is read differently at each site."
        )
    return value


def instant(value: Any, where: tuple[str, str, str]) -> dt.datetime:
    """A FHIR dateTime that must be a point in time: a datetime with a zone.

    A date alone (`2026-01-01`), a month or a year is refused: a dose or a level needs its
    time of day. (fhir.resources already refuses a dateTime with a time but no zone.)
    """
    rtype, rid, field = where
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise FhirError(
                rtype, rid, field, "expected a dateTime with a time zone, got one without."
            )
        return value
    if value is None:
        raise FhirError(rtype, rid, field, "expected a dateTime with a time and zone, got none.")
    raise FhirError(
        rtype,
        rid,
        field,
        f"expected a dateTime with a time and a time zone, got the partial date {value!s}: "
        "doses and levels need their time of day.",
    )


def moment(value: Any, where: tuple[str, str, str]) -> dt.datetime:
    """A FHIR dateTime for a lab or a vital sign: a datetime with a zone, or a full date
    (read as its start, 00:00 UTC, for ordering against the reference time)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    return instant(value, where)


def hours(t: dt.datetime, origin: dt.datetime) -> float:
    """Hours from `origin` to `t` (both aware), exact to the microsecond."""
    return (t - origin) / dt.timedelta(hours=1)


def age_years(birth: dt.date, at: dt.datetime) -> float:
    """Age in years at `at` (its own local date): completed years plus the elapsed fraction
    of the current year of life (days since the last birthday over that year's days)."""
    today = at.date()
    years = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    last = _birthday(birth, birth.year + years)
    following = _birthday(birth, birth.year + years + 1)
    return years + (today - last).days / (following - last).days


def _birthday(birth: dt.date, year: int) -> dt.date:
    try:
        return birth.replace(year=year)
    except ValueError:  # 29 February in a common year: 1 March
        return dt.date(year, 3, 1)
