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
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from curtaild.core.bounds import at_most
from curtaild.core.timewindow import TimeWindow, check_timezone
from curtaild.drivers.hashprice_config import MAX_AGE_WHY, REFRESH_WHY, HttpSourceConfig, key_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Price = Annotated[float, Field(ge=-10, lt=100)]


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
    def _tz(cls, v: str | None) -> str | None:
        # _Extras._tz's signature: TouTariff inherits both, and this one wins by name.
        return None if v is None else check_timezone(v)


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
