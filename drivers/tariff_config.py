"""``[tariff]``: what energy costs (USD per kWh), now and for the next hours.

Three kinds, each with optional fixed adders and demand windows on top::

    [tariff]
    kind = "flat" | "tou" | "realtime"
    timezone = "America/Chicago"          # IANA name; required for "tou"
    adders_usd_per_kwh = { transmission = 0.011, retail = 0.004 }
    demand_window_usd_per_kwh = 10.0      # price inside a demand window: sleep everything

    [[tariff.demand_windows]]             # e.g. ERCOT 4CP: summer weekday afternoons
    name = "4CP"
    months = "6-9"
    days = "weekdays"
    start = "15:00"
    end = "18:00"

Time windows (TOU periods and demand windows) share one shape: ``start``/``end`` local
wall-clock times (``"HH:MM"``, end exclusive, ``"24:00"`` allowed; end before start crosses
midnight and belongs to the day it started), ``days`` (``"all"``, ``"weekdays"``,
``"weekends"`` or a list of ``"mon"``..``"sun"``), ``months`` (a list of 1-12 or a range
string such as ``"6-9"`` or ``"11-2"``).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Any, Literal

from curtaild.core.bounds import at_most
from curtaild.drivers.hashprice_config import MAX_AGE_WHY, REFRESH_WHY, HttpSourceConfig, key_error
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

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
Price = Annotated[float, Field(ge=-10, lt=100)]


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
    def _not_empty(self):
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


class TouPeriod(TimeWindow):
    usd_per_kwh: Price


class DemandWindow(TimeWindow):
    """Hours in which energy is treated as prohibitively expensive (e.g. ERCOT 4CP)."""

    timezone: str | None = Field(None, description="default: the tariff's timezone")
    dates: list[dt.date] | None = Field(None, description="only on these local dates")
    usd_per_kwh: Price | None = Field(None, description="default: demand_window_usd_per_kwh")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else check_timezone(v)


class FlatSchedule(_Strict):
    """One energy price around the clock."""

    kind: Literal["flat"] = "flat"
    usd_per_kwh: Price


class TouSchedule(_Strict):
    """Time of use: the first matching period's price, else usd_per_kwh."""

    kind: Literal["tou"] = "tou"
    timezone: str = Field(description="IANA time zone of the periods' wall-clock times")
    usd_per_kwh: Price = Field(description="price when no period matches (off-peak)")
    periods: list[TouPeriod] = Field(default_factory=list,
                                     description="first match wins, in this order")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)


ScheduleConfig = Annotated[FlatSchedule | TouSchedule, Field(discriminator="kind")]


class _Extras(_Strict):
    """What every top-level [tariff] may add to its kind."""

    timezone: str | None = Field(None, description="for demand windows and naive feed times")
    adders_usd_per_kwh: dict[str, Annotated[float, Field(ge=-10, lt=100)]] = Field(
        default_factory=dict, description="fixed per-kWh charges on top (transmission, retail)")
    demand_windows: list[DemandWindow] = Field(default_factory=list)
    demand_window_usd_per_kwh: Price = Field(
        10.0, description="energy price inside a demand window (high enough to sleep all)")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else check_timezone(v)

    @model_validator(mode="after")
    def _windows_have_tz(self):
        for i, w in enumerate(self.demand_windows):
            if w.timezone is None and self.timezone is None:
                raise key_error(self, ("demand_windows", i, "timezone"),
                                "required: set timezone in the window or in [tariff]")
        return self


class FlatTariff(FlatSchedule, _Extras):
    pass


class TouTariff(TouSchedule, _Extras):
    timezone: str = Field(description="IANA time zone of the periods' wall-clock times")


class RealtimeTariff(HttpSourceConfig, _Extras):
    """A price feed polled over HTTP (e.g. an ISO settlement-point price), JSON or CSV."""

    kind: Literal["realtime"] = "realtime"
    url: str
    format: Literal["json", "csv"] = "json"
    field: str = Field(description="JSON path (a.b[0].c) or CSV column of the price")
    rows: str | None = Field(None, description="JSON path to a list of rows (field and "
                                               "time_field are then relative to each row)")
    time_field: str | None = Field(None, description="JSON path / CSV column of each row's "
                                                     "start time (ISO 8601 or unix seconds)")
    match: dict[str, str | int | float] = Field(
        default_factory=dict, description="keep only rows whose fields equal these values")
    unit: Literal["usd_per_mwh", "usd_per_kwh"] = "usd_per_mwh"
    headers: dict[str, SecretStr] = Field(default_factory=dict,
                                          description="request headers (kept secret)")
    fallback_usd_per_kwh: Price | None = Field(
        None, description="energy price used while the feed is stale")
    fallback: ScheduleConfig | None = Field(
        None, description="a flat or tou tariff used while the feed is stale")
    refresh_s: Annotated[float, at_most(86400, REFRESH_WHY)] = Field(60.0, ge=5)
    max_age_s: Annotated[float, at_most(7 * 86400, MAX_AGE_WHY)] = Field(900.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @model_validator(mode="after")
    def _one_fallback(self):
        if self.fallback is not None and self.fallback_usd_per_kwh is not None:
            raise key_error(self, "fallback", "set fallback_usd_per_kwh or fallback, not both")
        if self.rows is not None and self.format == "csv":
            raise key_error(self, "rows", "only for JSON feeds (every CSV line is a row)")
        return self


TariffConfig = Annotated[FlatTariff | TouTariff | RealtimeTariff, Field(discriminator="kind")]
