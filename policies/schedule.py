"""The schedule policy: curtail through time-of-use or demand windows, with a lead time.

From ``lead_s`` before a window starts until it ends, every machine (or, with
``only_worse_than_j_per_th``, every machine less efficient than that; a machine of unknown
efficiency counts as worse) is slept, or with ``action = "limit"`` power-limited to
``power_limit_fraction`` of its full power (firmware without power targets sleeps instead).
The lead time matters for demand charges such as ERCOT 4CP: a fleet must be down *before*
the interval is measured, and the ramp limit spreads the shed over minutes.

Windows come from ``windows`` (local wall-clock time, the tariff's window shape: ``start``,
``end``, ``days``, ``months``, ``timezone``) and, with ``use_tariff_demand_windows``
(default), from the demand windows of ``[tariff]`` as the market snapshot carries them
(``market.extra["tariff"]``: ``in_demand_window``, ``demand_windows_ahead``), so a 4CP window
configured once for pricing is also honoured with its lead time.

Decisions are "normal" priority (the guards' dwell and ramp apply; hysteresis does not, since
the reason is not margin). Without market inputs, or while automation is paused, the schedule
has no opinion (see policies/README.md).
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from curtaild.core.bounds import at_most
from curtaild.core.snapshot import Desired, Directives, FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.core.timewindow import TimeWindow, check_timezone, window_matches
from curtaild.policies import layer
from curtaild.policies.base import PolicyConfig


class ScheduleWindow(TimeWindow):
    """``{ name = "4CP", months = "6-9", days = "weekdays", start = "15:00", end = "18:00" }``"""

    timezone: str | None = Field(None, description="default: the policy's timezone")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else check_timezone(v)


class ScheduleConfig(PolicyConfig):
    """``[policy.schedule]`` keys (or ``[policy]`` with ``name = "schedule"``)."""

    windows: list[ScheduleWindow] = Field(default_factory=list)
    """Windows in which to curtail (local wall-clock time)."""

    timezone: str = "UTC"
    """IANA time zone of the windows (a window may set its own)."""

    lead_s: Annotated[float, at_most(
        7 * 86400.0, "machines would be curtailed more than a week before their window")] \
        = Field(0.0, ge=0.0)
    """Curtail this long, s, before a window starts."""

    action: Literal["sleep", "limit"] = "sleep"
    """What to do in a window: sleep, or limit to power_limit_fraction of full power."""

    power_limit_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    """With action = "limit": the target as a fraction of full power (clamped to firmware)."""

    only_worse_than_j_per_th: float | None = Field(None, gt=0.0)
    """Curtail only machines less efficient than this, J/TH; unset: every machine."""

    use_tariff_demand_windows: bool = True
    """Also curtail in [tariff] demand windows (with lead_s), as the market reports them."""

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

    @model_validator(mode="after")
    def _limit_needs_fraction(self) -> ScheduleConfig:
        if self.action == "limit" and self.power_limit_fraction is None:
            raise ValueError('action = "limit" needs power_limit_fraction (e.g. 0.6)')
        return self


@dataclass(frozen=True, slots=True)
class Active:
    """A window in force (or within lead time) at ``now``: why the fleet is curtailed."""

    name: str
    start: float  # unix s
    end: float  # unix s

    def describe(self, now: float, lead_s: float) -> str:
        if now < self.start:
            return (f"window {self.name!r} starts in {(self.start - now) / 60:.0f} min "
                    f"(lead {lead_s:.0f} s)")
        return f"in window {self.name!r}, ends in {(self.end - now) / 60:.0f} min"


def _instances(w: TimeWindow, tz: zoneinfo.ZoneInfo, now: float,
               lead_s: float) -> list[tuple[float, float]]:
    """Instances (start, end unix s) of ``w`` that overlap [now, now + lead_s]."""
    out = []
    today = dt.datetime.fromtimestamp(now, tz).date()
    last = dt.datetime.fromtimestamp(now + lead_s, tz).date()
    day = today - dt.timedelta(days=1)
    while day <= last:
        start = dt.datetime.combine(day, dt.time(), tz) + dt.timedelta(minutes=w.start_min)
        length = (w.end_min - w.start_min) % 1440 or 1440  # "00:00"-"24:00": a whole day
        end = start + dt.timedelta(minutes=length)
        s, e = start.timestamp(), end.timestamp()
        if s <= now + lead_s and e > now and window_matches(w, start.astimezone(tz)):
            out.append((s, e))
        day += dt.timedelta(days=1)
    return out


class SchedulePolicy:
    """Curtail through configured and tariff demand windows, starting lead_s early."""

    name: ClassVar[str] = "schedule"
    Config: ClassVar[type[ScheduleConfig]] = ScheduleConfig

    def __init__(self, config: ScheduleConfig | None = None):
        self.config = config if config is not None else ScheduleConfig()

    def decide(self, fleet: FleetSnapshot, market: MarketSnapshot | None,
               now: float) -> dict[str, Desired]:
        """On its own: everything runs, except through windows."""
        if market is None:
            return {}
        return self.apply(layer.everything_runs(fleet), fleet, market, Directives(), now)

    def active(self, market: MarketSnapshot | None, now: float) -> Active | None:
        """The window in force or coming within lead_s (the soonest to start), if any."""
        c = self.config
        found: list[Active] = []
        for i, w in enumerate(c.windows):
            tz = zoneinfo.ZoneInfo(w.timezone or c.timezone)
            for s, e in _instances(w, tz, now, c.lead_s):
                found.append(Active(w.name or f"windows[{i}]", s, e))
        tariff = (market.extra.get("tariff") or {}) if market is not None else {}
        if c.use_tariff_demand_windows:
            for item in tariff.get("demand_windows_ahead") or ():
                s, e, name = float(item[0]), float(item[1]), str(item[2])
                if s - c.lead_s <= now < e:
                    found.append(Active(f"tariff {name}", s, e))
            if tariff.get("in_demand_window") and not any(a.start <= now for a in found):
                found.append(Active(f"tariff {tariff.get('demand_window')}", now, now))
        return min(found, key=lambda a: a.start, default=None)

    def apply(self, decisions: Mapping[str, Desired], fleet: FleetSnapshot,
              market: MarketSnapshot | None, directives: Directives,
              now: float) -> dict[str, Desired]:
        out = dict(decisions)
        if market is None:
            return out
        win = self.active(market, now)
        if win is None:
            return out
        why = f"schedule: {win.describe(now, self.config.lead_s)}"
        for r in fleet.miners:
            if r.state == "unreachable" or not self._selected(r):
                continue
            d = out.get(r.key)
            want = self._curtail(r)
            if want is None:
                continue
            action, limit = want
            if d is not None and layer.power_under_w(r, d) <= layer.power_under_w(
                    r, Desired(action=action, reason="", power_limit_w=limit)):  # type: ignore
                continue  # already curtailed at least this far
            what = "sleep" if action == "sleep" else f"limit to {limit:.0f} W"
            out[r.key] = layer.curtailing(f"{why}: {what}", d, action=action,
                                          power_limit_w=limit)
        return out

    def _selected(self, r: MinerReading) -> bool:
        limit = self.config.only_worse_than_j_per_th
        if limit is None:
            return True
        jth = r.efficiency_j_per_th
        return jth is None or jth > limit

    def _curtail(self, r: MinerReading) -> tuple[str, float | None] | None:
        c = self.config
        can_limit = r.supports_power_limit and r.min_power_limit_w is not None
        if c.action == "limit" and can_limit and c.power_limit_fraction is not None:
            assert r.min_power_limit_w is not None
            target = c.power_limit_fraction * layer.full_power_w(r)
            hi = r.max_power_limit_w or layer.full_power_w(r)
            return ("limit", float(math.floor(min(hi, max(r.min_power_limit_w, target)))))
        if r.supports_sleep:
            return ("sleep", None)
        if can_limit:
            assert r.min_power_limit_w is not None
            return ("limit", float(math.ceil(r.min_power_limit_w)))
        return None
