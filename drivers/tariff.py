"""Energy tariff sources (USD per kWh, now and for the coming hours).

Every tariff is a base energy price (``flat``, ``tou`` or a ``realtime`` feed) plus fixed
adders, overridden inside demand windows. The quote carries the price now and a forecast for
the next 24 hours: one entry at ``now``, one at every local hour boundary and one at every
instant the price changes (period and window edges), computed on real instants through
zoneinfo, so DST days have 23 or 25 local hours and no entry at a wall time that does not
exist.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import io
import logging
import re
import time
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from curtaild.core.timewindow import window_matches
from curtaild.drivers.httpfeed import FeedError, HttpFeed, HttpPolicy, RefreshingSource, url_secrets
from curtaild.drivers.tariff_config import (
    DemandWindow,
    FlatSchedule,
    FlatTariff,
    RealtimeTariff,
    TouSchedule,
    TouTariff,
)

log = logging.getLogger("curtaild.tariff")

HORIZON_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class TariffQuote:
    usd_per_kwh: float  # all-in price now: energy + adders, or the demand-window price
    source: str
    obtained_at: float  # unix seconds: when the value is as of
    forecast: tuple[tuple[float, float], ...] = ()  # (start unix s, usd/kWh), next 24 h
    #: a demand window is in force now (energy treated as prohibitively expensive)
    in_demand_window: bool = False
    demand_window: str | None = None  # its name
    #: demand windows in the next 24 h: (start unix s, end unix s, name)
    demand_windows_ahead: tuple[tuple[float, float, str], ...] = ()
    energy_usd_per_kwh: float | None = None  # the base price now, before adders
    adders_usd_per_kwh: float = 0.0
    #: kind-specific: TOU period, feed url/age/error, fallback in use...
    detail: dict = field(default_factory=dict)


class TariffSource(Protocol):
    name: str

    async def fetch(self, now: float) -> TariffQuote: ...


# --------------------------------------------------------------------------- time windows
def _local_instants(tz: zoneinfo.ZoneInfo, start: float, end: float,
                    minutes_of_day: Iterable[int]) -> set[float]:
    """Unix times in (start, end) at the given local wall-clock minutes, both folds."""
    out: set[float] = set()
    first = dt.datetime.fromtimestamp(start, tz).date() - dt.timedelta(days=1)
    last = dt.datetime.fromtimestamp(end, tz).date() + dt.timedelta(days=1)
    mods = sorted(set(minutes_of_day))
    day = first
    while day <= last:
        for m in mods:
            naive = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=m)
            for fold in (0, 1):
                ts = naive.replace(tzinfo=tz, fold=fold).timestamp()
                if not start < ts < end:
                    continue
                # a wall time skipped by a DST jump maps to some other instant: not an edge
                if dt.datetime.fromtimestamp(ts, tz).replace(tzinfo=None) == naive:
                    out.add(ts)
        day += dt.timedelta(days=1)
    return out


class DemandWindows:
    def __init__(self, windows: list[DemandWindow], default_tz: str | None,
                 default_usd_per_kwh: float):
        self.windows = [(w, zoneinfo.ZoneInfo(w.timezone or default_tz or "UTC"),
                         set(w.dates) if w.dates else None) for w in windows]
        self.default_usd_per_kwh = default_usd_per_kwh

    def active(self, ts: float) -> tuple[str, float] | None:
        """(name, price) of the first window in force at ``ts``."""
        for i, (w, tz, dates) in enumerate(self.windows):
            if window_matches(w, dt.datetime.fromtimestamp(ts, tz), dates):
                price = w.usd_per_kwh if w.usd_per_kwh is not None else self.default_usd_per_kwh
                return (w.name or f"demand window {i + 1}", price)
        return None

    def boundaries(self, start: float, end: float) -> set[float]:
        out: set[float] = set()
        for w, tz, _ in self.windows:
            out |= _local_instants(tz, start, end, (w.start_min, w.end_min % 1440))
        return out

    def __bool__(self) -> bool:
        return bool(self.windows)


# --------------------------------------------------------------------------- schedules
class Schedule(Protocol):
    """A contract price as a pure function of time."""

    kind: str

    def price_at(self, ts: float) -> tuple[float, str | None]: ...

    def boundaries(self, start: float, end: float) -> set[float]: ...


class FlatPrice:
    kind = "flat"

    def __init__(self, usd_per_kwh: float):
        self.usd_per_kwh = usd_per_kwh

    def price_at(self, ts: float) -> tuple[float, str | None]:
        return self.usd_per_kwh, None

    def boundaries(self, start: float, end: float) -> set[float]:
        return set()


class TouPrice:
    kind = "tou"

    def __init__(self, cfg: TouSchedule):
        self.tz = zoneinfo.ZoneInfo(cfg.timezone)
        self.base = cfg.usd_per_kwh
        self.periods = list(cfg.periods)

    def price_at(self, ts: float) -> tuple[float, str | None]:
        local = dt.datetime.fromtimestamp(ts, self.tz)
        for i, p in enumerate(self.periods):
            if window_matches(p, local):
                return p.usd_per_kwh, p.name or f"period {i + 1}"
        return self.base, None

    def boundaries(self, start: float, end: float) -> set[float]:
        mods = {0}
        for p in self.periods:
            mods |= {p.start_min, p.end_min % 1440}
        return _local_instants(self.tz, start, end, mods)


def build_schedule(cfg: FlatSchedule | TouSchedule) -> FlatPrice | TouPrice:
    if isinstance(cfg, TouSchedule):
        return TouPrice(cfg)
    return FlatPrice(cfg.usd_per_kwh)


# --------------------------------------------------------------------------- base prices
@dataclass(frozen=True)
class _Energy:
    """The base energy price now and how it goes on for the next hours."""

    usd_per_kwh: float
    source: str
    as_of: float
    price_at: Callable[[float], float]
    boundaries: set[float]
    detail: dict


class _ScheduleEnergy:
    def __init__(self, schedule: FlatPrice | TouPrice):
        self.schedule = schedule
        self.name = schedule.kind

    async def energy(self, now: float) -> _Energy:
        price, period = self.schedule.price_at(now)
        detail = {"period": period} if isinstance(self.schedule, TouPrice) else {}
        return _Energy(price, self.name, now, lambda t: self.schedule.price_at(t)[0],
                       self.schedule.boundaries(now, now + HORIZON_S), detail)


_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def json_path(doc: Any, path: str) -> Any:
    """``a.b[0].c`` (also ``a.b.0.c``; negative indexes count from the end)."""
    node = doc
    for name, index in _PATH_TOKEN.findall(path):
        key: Any = int(index) if index else name
        if isinstance(node, list):
            try:
                node = node[int(key)]
            except (ValueError, IndexError):
                raise KeyError(path) from None
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            raise KeyError(path)
    return node


def _parse_feed_time(value: Any, tz: zoneinfo.ZoneInfo) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0 if value > 1e12 else float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number / 1000.0 if number > 1e12 else number
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)  # naive: the tariff's local time
    return parsed.timestamp()


@dataclass(frozen=True)
class FeedPrices:
    """What one refresh of a realtime feed gave: (start unix s or None, USD/kWh) rows."""

    rows: tuple[tuple[float | None, float], ...]
    fetched_at: float


class _RealtimeEnergy:
    name = "realtime"

    def __init__(self, cfg: RealtimeTariff, *, clock: Callable[[], float],
                 transport: httpx.AsyncBaseTransport | None = None):
        self.cfg = cfg
        self.clock = clock
        self.tz = zoneinfo.ZoneInfo(cfg.timezone or "UTC")
        self._headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        self.http = HttpFeed(self.name, HttpPolicy(
            timeout_s=cfg.timeout_s, attempts=cfg.attempts, backoff_s=cfg.backoff_s,
            backoff_max_s=cfg.backoff_max_s, deadline_s=cfg.deadline_s),
            secrets=(*self._headers.values(), *url_secrets(cfg.url)), transport=transport)
        self.cache: RefreshingSource[FeedPrices] = RefreshingSource(
            self.name, refresh_s=cfg.refresh_s, max_age_s=cfg.max_age_s, clock=clock)
        self.fallback: FlatPrice | TouPrice | None = None
        if cfg.fallback is not None:
            self.fallback = build_schedule(cfg.fallback)
        elif cfg.fallback_usd_per_kwh is not None:
            self.fallback = FlatPrice(cfg.fallback_usd_per_kwh)

    def __repr__(self) -> str:
        return f"RealtimeTariff({self.cfg.url.split('?', 1)[0]!r})"

    # ---- parsing
    def _to_kwh(self, value: Any, where: str) -> float:
        if isinstance(value, bool):
            raise FeedError(f"{self.name}: {where}: {value!r} is not a price")
        try:
            price = float(str(value).strip().replace(",", "")) if isinstance(value, str) \
                else float(value)
        except (TypeError, ValueError):
            # The value is the server's and may echo a header secret: scrubbed, then cut.
            raise FeedError(f"{self.name}: {where}: {self.http.snippet(str(value), 40)!r} is "
                            "not a price") from None
        if price != price or price in (float("inf"), float("-inf")):
            raise FeedError(f"{self.name}: {where}: price is not finite")
        if self.cfg.unit == "usd_per_mwh":
            price /= 1000.0
        if not -10 <= price < 100:
            raise FeedError(f"{self.name}: {where}: implausible price {price:g} USD/kWh "
                            f"(unit {self.cfg.unit})")
        return price

    def _matches(self, row: Any) -> bool:
        for k, want in self.cfg.match.items():
            try:
                have = json_path(row, k) if self.cfg.format == "json" else row[k]
            except (KeyError, TypeError):
                return False
            if str(have).strip() != str(want):
                return False
        return True

    def _parse(self, payload: Any) -> list[tuple[float | None, float]]:
        cfg = self.cfg
        get: Callable[[Any, str], Any]  # row, field -> value (a CSV dict or a JSON path)
        if cfg.format == "csv":
            reader = csv.DictReader(io.StringIO(payload))
            if reader.fieldnames is None or cfg.field not in reader.fieldnames:
                raise FeedError(f"{self.name}: CSV has no column {cfg.field!r} "
                                f"(columns: "
                                f"{self.http.snippet(', '.join(reader.fieldnames or []), 120)})")
            if cfg.time_field and cfg.time_field not in reader.fieldnames:
                raise FeedError(f"{self.name}: CSV has no column {cfg.time_field!r}")
            rows = list(reader)
            get = dict.__getitem__
        else:
            if cfg.rows is not None:
                try:
                    rows = json_path(payload, cfg.rows)
                except KeyError:
                    raise FeedError(f"{self.name}: JSON has no {cfg.rows!r}") from None
                if not isinstance(rows, list):
                    raise FeedError(f"{self.name}: JSON {cfg.rows!r} is not a list")
            else:
                rows = [payload]
            get = json_path
        out: list[tuple[float | None, float]] = []
        for n, row in enumerate(rows):
            if not self._matches(row):
                continue
            try:
                raw = get(row, cfg.field)
            except (KeyError, TypeError):
                raise FeedError(f"{self.name}: row {n}: no {cfg.field!r}") from None
            stamp = None
            if cfg.time_field:
                try:
                    stamp = _parse_feed_time(get(row, cfg.time_field), self.tz)
                except (KeyError, TypeError):
                    stamp = None
                if stamp is None:
                    raise FeedError(f"{self.name}: row {n}: no usable {cfg.time_field!r}")
            out.append((stamp, self._to_kwh(raw, f"row {n}")))
        if not out:
            raise FeedError(f"{self.name}: no row" + (f" matching {dict(cfg.match)}"
                                                      if cfg.match else ""))
        return out

    async def _refresh(self) -> tuple[FeedPrices, float]:
        fetched = self.clock()
        headers = dict(self._headers)
        if self.cfg.format == "csv":
            payload: Any = await self.http.get_text(self.cfg.url, headers=headers)
        else:
            payload = await self.http.get_json(self.cfg.url, headers=headers)
        rows = self._parse(payload)
        stamps = [t for t, _ in rows if t is not None]
        # A feed whose newest row is in the past ages with that row; a forward curve (rows
        # ahead of now) is as fresh as the fetch.
        as_of = min(fetched, max(stamps)) if stamps else fetched
        return FeedPrices(tuple(rows), fetched), as_of

    # ---- now and ahead
    def _current(self, feed: FeedPrices, now: float) -> tuple[float, list[tuple[float, float]]]:
        """The price in force now, and (start, price) rows ahead of now, sorted."""
        timed = sorted((t, p) for t, p in feed.rows if t is not None)
        if not timed:
            return feed.rows[-1][1], []
        past = [(t, p) for t, p in timed if t <= now]
        if not past:
            raise FeedError(f"{self.name}: no price at or before now (first row starts "
                            f"{timed[0][0] - now:.0f} s ahead)")
        return past[-1][1], [(t, p) for t, p in timed if now < t < now + HORIZON_S]

    def detail(self, now: float) -> dict:
        c = self.cache
        return {"url": self.cfg.url.split("?", 1)[0], "feed_age_s": _r(c.age_s(now), 1),
                "feed_fresh": c.is_fresh(now), "error": c.last_error}

    async def energy(self, now: float) -> _Energy:
        try:
            feed = await self.cache.get(self._refresh)
            price, ahead = self._current(feed, now)
        except FeedError as exc:
            if self.fallback is None:
                raise
            # The feed is stale or broken: the contract's fallback price, which is always
            # fresh, keeps the loop deciding.
            d = {**self.detail(now), "fallback": self.fallback.kind,
                 "error": self.http.scrub(str(exc))}
            price, period = self.fallback.price_at(now)
            if period:
                d["period"] = period
            fb = self.fallback
            return _Energy(price, "realtime-fallback", now, lambda t: fb.price_at(t)[0],
                           fb.boundaries(now, now + HORIZON_S), d)
        # Ahead: the feed's own rows when it has a forward curve, else the price now held
        # (a persistence forecast); the fallback is for a stale feed only.
        times = [t for t, _ in ahead]

        def price_at(t: float) -> float:
            if times and t >= times[0]:
                return ahead[bisect.bisect_right(times, t) - 1][1]
            return price

        bounds = set(times)
        as_of = self.cache.value_at if self.cache.value_at is not None else now
        return _Energy(price, self.name, as_of, price_at, bounds, self.detail(now))


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


# --------------------------------------------------------------------------- the tariff
class Tariff:
    """Base energy + adders, overridden by demand windows; forecast for 24 h."""

    def __init__(self, base: Any, *, adders: dict[str, float], windows: DemandWindows,
                 tz: str | None):
        self.base = base
        self.name = base.name
        self.adders = dict(adders)
        self.adder_total = float(sum(adders.values()))
        self.windows = windows
        self.tz = zoneinfo.ZoneInfo(tz) if tz else None

    def __repr__(self) -> str:
        return f"Tariff({self.base!r})"

    def _hour_marks(self, now: float) -> set[float]:
        if self.tz is None:
            return {now + h * 3600.0 for h in range(1, 24)}
        return _local_instants(self.tz, now, now + HORIZON_S, range(0, 1440, 60))

    def _price(self, energy: float, ts: float) -> tuple[float, tuple[str, float] | None]:
        price = energy + self.adder_total
        win = self.windows.active(ts) if self.windows else None
        if win is not None:
            price = max(price, win[1])
        return price, win

    async def fetch(self, now: float) -> TariffQuote:
        e = await self.base.energy(now)
        marks = {now} | self._hour_marks(now) | e.boundaries
        if self.windows:
            marks |= self.windows.boundaries(now, now + HORIZON_S)
        points = sorted(t for t in marks if now <= t < now + HORIZON_S)
        forecast: list[tuple[float, float]] = []
        ahead: list[list] = []  # [start, end, name]
        current, win_now = self._price(e.usd_per_kwh, now)
        for t in points:
            if t == now:
                price, win = current, win_now
            else:
                price, win = self._price(e.price_at(t), t)
            forecast.append((t, round(price, 6)))
            name = win[0] if win else None
            if ahead and ahead[-1][1] is None:
                if name != ahead[-1][2]:
                    ahead[-1][1] = t
            if name and (not ahead or ahead[-1][1] is not None):
                ahead.append([t, None, name])
        if ahead and ahead[-1][1] is None:
            # runs past the horizon: find its end (at most one more day of boundaries)
            ahead[-1][1] = self._window_end(ahead[-1][0])
        detail = dict(e.detail)
        if self.adders:
            detail["adders"] = dict(self.adders)
        return TariffQuote(
            usd_per_kwh=round(current, 6),
            source=e.source,
            obtained_at=e.as_of,
            forecast=tuple(forecast),
            in_demand_window=win_now is not None,
            demand_window=win_now[0] if win_now else None,
            demand_windows_ahead=tuple((a[0], a[1], a[2]) for a in ahead),
            energy_usd_per_kwh=round(e.usd_per_kwh, 6),
            adders_usd_per_kwh=round(self.adder_total, 6),
            detail=detail,
        )

    def _window_end(self, start: float) -> float:
        for t in sorted(self.windows.boundaries(start, start + 2 * HORIZON_S)):
            if self.windows.active(t) is None:
                return t
        return start + 2 * HORIZON_S


def build_tariff_source(cfg: Any, *, clock: Callable[[], float] = time.time,
                        transport: httpx.AsyncBaseTransport | None = None) -> TariffSource:
    """The source for a validated ``[tariff]`` table (see drivers/tariff_config.py)."""
    if isinstance(cfg, RealtimeTariff):
        base: Any = _RealtimeEnergy(cfg, clock=clock, transport=transport)
    elif isinstance(cfg, TouTariff | FlatTariff):
        base = _ScheduleEnergy(build_schedule(cfg))
    else:
        raise ValueError(f"tariff.kind: unknown kind {getattr(cfg, 'kind', cfg)!r}")
    windows = DemandWindows(list(cfg.demand_windows), cfg.timezone,
                            cfg.demand_window_usd_per_kwh)
    return Tariff(base, adders=cfg.adders_usd_per_kwh, windows=windows, tz=cfg.timezone)

