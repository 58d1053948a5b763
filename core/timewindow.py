"""Local wall-clock windows (hours on some days of some months): what a time-of-use tariff
period, a demand window and a policy schedule have in common. Pure: the tariff driver and the
policies both use it, neither through the other."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator

from curtaild.core.bounds import key_error

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SETS = {"all": tuple(range(7)), "weekdays": (0, 1, 2, 3, 4), "weekends": (5, 6)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _days(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _DAY_SETS:
            return _DAY_SETS[key]
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise ValueError('expected "all", "weekdays", "weekends" or a list like ["mon", "fri"]')
    out = set()
    for item in value:
        name = str(item).strip().lower()[:3]
        if name not in _DAY_NAMES:
            raise ValueError(f"{item!r} is not a day: use mon, tue, wed, thu, fri, sat, sun")
        out.add(_DAY_NAMES.index(name))
    return tuple(sorted(out))


def _months(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    if not items:
        raise ValueError('expected months 1-12: a list like [6, 7, 8] or a range like "6-9"')
    out: set[int] = set()
    for item in items:
        if isinstance(item, str) and "-" in item:
            a, b = (p.strip() for p in item.split("-", 1))
            try:
                first, last = int(a), int(b)
            except ValueError:
                raise ValueError(f"{item!r} is not a month range like \"6-9\"") from None
            for m in (first, last):
                if not 1 <= m <= 12:
                    raise ValueError(f"month {m} in {item!r} is not 1-12")
            m = first
            while True:  # "11-2" wraps over the new year
                out.add(m)
                if m == last:
                    break
                m = m % 12 + 1
            continue
        try:
            m = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"{item!r} is not a month 1-12") from None
        if isinstance(item, bool) or not 1 <= m <= 12:
            raise ValueError(f"{item!r} is not a month 1-12")
        out.add(m)
    return tuple(sorted(out))


def _hhmm(value: Any) -> str:
    if not isinstance(value, str):
        # TOML local times (start = 14:00:00) arrive as datetime.time
        if isinstance(value, dt.time):
            return f"{value.hour:02d}:{value.minute:02d}"
        raise ValueError('expected a local time "HH:MM", e.g. "14:00"')
    parts = value.strip().split(":")
    try:
        h, m = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(f'{value!r} is not a local time "HH:MM"') from None
    if len(parts) > 2 or not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
        raise ValueError(f'{value!r} is not a local time "HH:MM" between 00:00 and 24:00')
    return f"{h:02d}:{m:02d}"


def minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def check_timezone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as "
                         "'America/Chicago' or 'Europe/Berlin')") from None
    return name


Days = Annotated[tuple[int, ...], BeforeValidator(_days)]
Months = Annotated[tuple[int, ...], BeforeValidator(_months)]
LocalTime = Annotated[str, BeforeValidator(_hhmm)]


class TimeWindow(_Strict):
    """Local wall-clock hours on some days of some months."""

    name: str | None = None
    start: LocalTime = "00:00"
    end: LocalTime = "24:00"
    days: Days = _DAY_SETS["all"]
    months: Months = tuple(range(1, 13))

    @field_validator("start")
    @classmethod
    def _start_not_24(cls, v: str) -> str:
        if v == "24:00":
            raise ValueError('a window cannot start at "24:00"; use "00:00"')
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if minutes(self.start) == minutes(self.end) % 1440 and self.end != "24:00":
            raise key_error(self, "end", f"start and end are both {self.start}: use "
                            'start = "00:00", end = "24:00" for whole days')
        return self

    @property
    def start_min(self) -> int:
        return minutes(self.start)

    @property
    def end_min(self) -> int:
        return minutes(self.end)


def _window_day(w: TimeWindow, local: dt.datetime) -> dt.date | None:
    """The local date whose instance of ``w`` contains ``local``, or None."""
    tod = local.hour * 60 + local.minute + local.second / 60.0
    s, e = w.start_min, w.end_min
    if s < e:
        return local.date() if s <= tod < e else None
    # crosses midnight: the part after midnight belongs to the day it started
    if tod >= s:
        return local.date()
    if tod < e:
        return local.date() - dt.timedelta(days=1)
    return None


def window_matches(w: TimeWindow, local: dt.datetime,
                   dates: Iterable[dt.date] | None = None) -> bool:
    day = _window_day(w, local)
    if day is None or day.month not in w.months or day.weekday() not in w.days:
        return False
    return dates is None or day in dates
