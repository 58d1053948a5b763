"""Market inputs for one tick: the latest hash price and tariff quotes, with their ages.

A source that fails keeps its last good quote (and that quote keeps ageing), so staleness is
visible to the guards instead of the loop crashing or inventing a number.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from curtaild.core.snapshot import MarketSnapshot
from curtaild.drivers.hashprice import HashpriceQuote, HashpriceSource
from curtaild.drivers.tariff import TariffQuote, TariffSource

log = logging.getLogger("curtaild.market")
Q = TypeVar("Q")


class MarketInputs:
    def __init__(self, hashprice: HashpriceSource, tariff: TariffSource, *, pool_fee: float,
                 fetch_timeout_s: float = 30.0):
        self.hashprice = hashprice
        self.tariff = tariff
        self.pool_fee = pool_fee
        self.fetch_timeout_s = fetch_timeout_s
        self.last_hashprice: HashpriceQuote | None = None
        self.last_tariff: TariffQuote | None = None
        self.errors: dict[str, str] = {}

    async def snapshot(self, now: float | None = None) -> MarketSnapshot | None:
        """Refresh both inputs; None only if one of them has never been obtained."""
        now = time.time() if now is None else now
        hp, tr = await asyncio.gather(self._hashprice(), self._tariff(now))
        return self._build(hp, tr, now)

    def _build(self, hp: HashpriceQuote | None, tr: TariffQuote | None,
               now: float) -> MarketSnapshot | None:
        if hp is None or tr is None:
            return None
        return MarketSnapshot(
            hashprice_usd_per_th_day=hp.usd_per_th_day,
            hashprice_source=hp.source,
            hashprice_age_s=max(0.0, now - hp.obtained_at),
            tariff_usd_per_kwh=tr.usd_per_kwh,
            tariff_source=tr.source,
            tariff_age_s=max(0.0, now - tr.obtained_at),
            pool_fee=self.pool_fee,
            tariff_forecast=tr.forecast,
            extra={"network": dict(hp.network), **_detail(hp, tr, self.errors)},
        )

    def cached(self, now: float | None = None) -> MarketSnapshot | None:
        """The last quotes as a snapshot, without asking any source (a fast tick)."""
        now = time.time() if now is None else now
        return self._build(self.last_hashprice, self.last_tariff, now)

    async def _hashprice(self) -> HashpriceQuote | None:
        quote = await self._fetch("hashprice", self.hashprice.name, self.hashprice.fetch())
        if quote is not None:
            self.last_hashprice = quote
        return quote or self.last_hashprice

    async def _tariff(self, now: float) -> TariffQuote | None:
        quote = await self._fetch("tariff", self.tariff.name, self.tariff.fetch(now))
        if quote is not None:
            self.last_tariff = quote
        return quote or self.last_tariff

    async def _fetch(self, kind: str, name: str, call: Awaitable[Q]) -> Q | None:
        """One source under the fetch deadline; a failure is recorded, never raised."""
        try:
            quote = await asyncio.wait_for(call, self.fetch_timeout_s)
        except Exception as exc:
            self.errors[kind] = f"{type(exc).__name__}: {exc}"
            log.warning("%s source %s failed: %s", kind, name, exc)
            return None
        self.errors.pop(kind, None)
        return quote


def _detail(hp: HashpriceQuote, tr: TariffQuote, errors: dict[str, str]) -> dict:
    """Per-source detail, cross-check and demand-window state for reports and metrics."""
    return {
        "hashprice": {
            "sources": [dict(d) for d in getattr(hp, "sources", ())],
            "combine": getattr(hp, "combine", None),
            "disagreement": getattr(hp, "disagreement", None),
            "disagreement_exceeded": getattr(hp, "disagreement_exceeded", False),
            "error": errors.get("hashprice"),
        },
        "tariff": {
            "energy_usd_per_kwh": getattr(tr, "energy_usd_per_kwh", None),
            "adders_usd_per_kwh": getattr(tr, "adders_usd_per_kwh", 0.0),
            "in_demand_window": getattr(tr, "in_demand_window", False),
            "demand_window": getattr(tr, "demand_window", None),
            "demand_windows_ahead": [list(w) for w in getattr(tr, "demand_windows_ahead", ())],
            "detail": dict(getattr(tr, "detail", {}) or {}),
            "error": errors.get("tariff"),
        },
    }
