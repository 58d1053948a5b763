"""Hash price sources (USD per TH/s per day), each behind one small interface.

A source returns a quote with the time its value is as of (``obtained_at``), so the loop can
judge staleness without knowing where the number came from. Sources:

- ``fixed``: the operator's number, always fresh.
- ``mempool``: computed from first principles from a mempool.space-compatible API::

      hash price = 144 x (subsidy + mean fees per block) x BTC price x 1e12 / (D x 2^32 / 600)

  with the difficulty D (``/v1/mining/hashrate/3d`` ``currentDifficulty``), the fees of the
  last ``fee_blocks`` blocks (``/v1/mining/reward-stats/{n}`` ``totalFee`` in sats over
  ``endBlock - startBlock + 1`` blocks), the price (``/v1/prices`` ``USD``) and the subsidy of
  the next block from the tip height (``/blocks/tip/height``), halving every 210,000 blocks.
  The difficulty, not the observed hashrate, sets what a hash earns in expectation.
- ``hashrateindex``: Luxor's Hashrate Index REST API (``/hashprice/current?hashunit=THS``
  ``data.priceUSD``, or the newest point of ``/hashprice?span=1D&bucket=5m&currency=USD&
  hashunit=THS``), key in the ``X-Hi-Api-Key`` header.
- several at once (:class:`CompositeHashpriceSource`): the first fresh one in order, or the
  median of the fresh live ones; live sources further apart than ``max_disagreement`` are
  reported on the quote and logged, never silently averaged.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from curtaild.core import economics
from curtaild.drivers.hashprice_config import (
    FixedSource,
    HashrateIndexSource,
    MempoolSource,
    resolve_hashrateindex_key,
)
from curtaild.drivers.httpfeed import (
    FeedError,
    HttpFeed,
    HttpPolicy,
    RefreshingSource,
    redact_cut,
    scrub,
)

log = logging.getLogger("curtaild.hashprice")

SATS_PER_BTC = 100_000_000
#: USD/TH/day above this is a unit or field mistake (PH/s figures are 1000 x larger): hash
#: prices have been a few cents to a few tenths of a dollar since ASICs took over (2015 on).
PLAUSIBLE_MAX = 10.0


@dataclass(frozen=True, slots=True)
class HashpriceQuote:
    usd_per_th_day: float
    source: str
    obtained_at: float  # unix seconds: when the value is as of
    #: difficulty, network_hashrate_hs, fees_share, btc_price_usd, subsidy_btc, tip_height...
    network: dict = field(default_factory=dict)
    #: one entry per configured source: value, age, freshness, last error, used or not
    sources: tuple[dict, ...] = ()
    #: (max - min) / median of the fresh live sources; None with fewer than two
    disagreement: float | None = None
    #: disagreement is beyond the configured max_disagreement
    disagreement_exceeded: bool = False
    combine: str | None = None  # "first" | "median" for several sources


class HashpriceSource(Protocol):
    name: str

    async def fetch(self) -> HashpriceQuote: ...


def _round(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


class FixedHashpriceSource:
    """The operator's number: always fresh, because it is a decision, not a measurement."""

    name = "fixed"
    live = False

    def __init__(self, usd_per_th_day: float, *, clock: Callable[[], float] = time.time):
        self.usd_per_th_day = usd_per_th_day
        self.clock = clock

    def detail(self) -> dict:
        return {"source": self.name, "usd_per_th_day": self.usd_per_th_day, "age_s": 0.0,
                "fresh": True, "error": None}

    async def fetch(self) -> HashpriceQuote:
        return HashpriceQuote(self.usd_per_th_day, self.name, self.clock(),
                              sources=(self.detail(),))


class _HttpHashpriceSource(abc.ABC):
    """Cache, staleness and the per-source detail around one HTTP refresh."""

    name = "http"
    live = True

    def __init__(self, cfg: Any, *, clock: Callable[[], float] = time.time,
                 secrets: tuple[str, ...] = (),
                 transport: httpx.AsyncBaseTransport | None = None):
        self.cfg = cfg
        self.clock = clock
        self.http = HttpFeed(self.name, HttpPolicy(
            timeout_s=cfg.timeout_s, attempts=cfg.attempts, backoff_s=cfg.backoff_s,
            backoff_max_s=cfg.backoff_max_s, deadline_s=cfg.deadline_s),
            secrets=secrets, transport=transport)
        self.cache: RefreshingSource[HashpriceQuote] = RefreshingSource(
            self.name, refresh_s=cfg.refresh_s, max_age_s=cfg.max_age_s, clock=clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.base_url!r})"

    @abc.abstractmethod
    async def _refresh(self) -> tuple[HashpriceQuote, float]:
        """Fetch a fresh quote from the API (each source implements its own endpoints)."""

    def detail(self) -> dict:
        c = self.cache
        now = self.clock()
        return {
            "source": self.name,
            "url": self.cfg.base_url,
            "usd_per_th_day": _round(c.value.usd_per_th_day) if c.value else None,
            "age_s": _round(c.age_s(now), 1),
            "fresh": c.is_fresh(now),
            "error": c.last_error,
            "next_refresh_in_s": round(max(
                0.0, (c.fetched_at or 0.0) + c.refresh_s - now, c.next_attempt_at - now), 1),
        }

    async def fetch(self) -> HashpriceQuote:
        quote = await self.cache.get(self._refresh)
        return dataclasses.replace(quote, sources=(self.detail(),))


async def _all(*coros: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest and raise that failure."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except* Exception as group:
        raise group.exceptions[0] from None
    return [t.result() for t in tasks]


def _number(doc: Any, key: str, where: str, source: str) -> float:
    """A numeric field (numbers or numeric strings: mempool sums come back as strings)."""
    if not isinstance(doc, dict) or key not in doc:
        raise FeedError(f"{source}: {where}: field {key!r} missing")
    value = doc[key]
    if isinstance(value, bool):
        raise FeedError(f"{source}: {where}: field {key!r} is not a number: {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        # The value is the server's: it may echo the key (scrubbed before it is cut).
        raise FeedError(f"{source}: {where}: field {key!r} is not a number: "
                        f"{redact_cut(str(value), 40)!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise FeedError(f"{source}: {where}: field {key!r} is not finite")
    return out


class MempoolHashpriceSource(_HttpHashpriceSource):
    name = "mempool"

    def __init__(self, cfg: MempoolSource, **kw: Any):
        super().__init__(cfg, **kw)

    async def _refresh(self) -> tuple[HashpriceQuote, float]:
        base = self.cfg.base_url
        n = self.cfg.fee_blocks
        fetched = self.clock()
        tip_text, hr, rs, prices = await _all(
            self.http.get_text(f"{base}/blocks/tip/height"),
            self.http.get_json(f"{base}/v1/mining/hashrate/3d"),
            self.http.get_json(f"{base}/v1/mining/reward-stats/{n}"),
            self.http.get_json(f"{base}/v1/prices"),
        )
        src = self.name
        try:
            tip = int(tip_text.strip())
        except ValueError:
            raise FeedError(f"{src}: /blocks/tip/height: not a height: "
                            f"{self.http.snippet(tip_text.strip(), 40)!r}") from None
        if tip < 0:
            raise FeedError(f"{src}: /blocks/tip/height: negative height {tip}")

        # Difficulty: currentDifficulty (0 when the backend's node is unreachable), else the
        # newest adjustment in the series.
        where = "/v1/mining/hashrate/3d"
        difficulty = _number(hr, "currentDifficulty", where, src) \
            if isinstance(hr, dict) and "currentDifficulty" in hr else 0.0
        if difficulty <= 0 and isinstance(hr, dict) and isinstance(hr.get("difficulty"), list) \
                and hr["difficulty"]:
            difficulty = _number(hr["difficulty"][-1], "difficulty", where, src)
        if difficulty <= 0:
            raise FeedError(f"{src}: {where}: no positive difficulty (currentDifficulty "
                            f"{hr.get('currentDifficulty') if isinstance(hr, dict) else None!r})")
        observed_hs = None
        if isinstance(hr, dict) and hr.get("currentHashrate"):
            observed_hs = _number(hr, "currentHashrate", where, src)

        where = f"/v1/mining/reward-stats/{n}"
        total_fee_sat = _number(rs, "totalFee", where, src)
        total_reward_sat = _number(rs, "totalReward", where, src)
        blocks = n
        if isinstance(rs, dict) and "startBlock" in rs and "endBlock" in rs:
            span = int(_number(rs, "endBlock", where, src) - _number(rs, "startBlock", where, src))
            if span >= 0:
                blocks = span + 1
        if total_fee_sat < 0 or total_reward_sat < total_fee_sat:
            raise FeedError(f"{src}: {where}: inconsistent totals (totalFee {total_fee_sat:.0f}, "
                            f"totalReward {total_reward_sat:.0f})")
        fees_btc = total_fee_sat / blocks / SATS_PER_BTC

        price = _number(prices, "USD", "/v1/prices", src)
        if price <= 0:
            raise FeedError(f"{src}: /v1/prices: USD price {price} is not positive")
        as_of = fetched
        if isinstance(prices, dict) and isinstance(prices.get("time"), int | float) \
                and prices["time"] > 0:
            as_of = min(as_of, float(prices["time"]))  # the price is the input that ages

        subsidy = economics.block_subsidy_btc(tip + 1)  # the block being mined now
        per_block = subsidy + fees_btc
        network_hs = economics.network_hashrate_hs(difficulty)
        usd = economics.hashprice_usd_per_th_day(
            btc_per_block=per_block, btc_price_usd=price, network_hashrate_hs=network_hs)
        network = {
            "difficulty": difficulty,
            "network_hashrate_hs": network_hs,
            "observed_hashrate_hs": observed_hs,
            "btc_price_usd": price,
            "tip_height": tip,
            "subsidy_btc": subsidy,
            "fees_per_block_btc": round(fees_btc, 8),
            "fees_blocks": blocks,
            "fees_share": round(fees_btc / per_block, 6) if per_block > 0 else None,
            "btc_per_block": round(per_block, 8),
        }
        if not 0 < usd < PLAUSIBLE_MAX:
            raise FeedError(f"{src}: implausible hash price {usd:g} USD/TH/day from these "
                            "figures")
        return HashpriceQuote(usd, self.name, as_of, network=network), as_of


def _parse_time(value: Any) -> float | None:
    """ISO 8601 (Z or offset; naive = UTC) or unix seconds/milliseconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) / 1000.0 if value > 1e12 else float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    return None


class HashrateIndexHashpriceSource(_HttpHashpriceSource):
    name = "hashrateindex"

    def __init__(self, cfg: HashrateIndexSource, *, api_key: str, **kw: Any):
        super().__init__(cfg, secrets=(api_key,), **kw)
        self.__key = api_key  # only ever put in a request header

    async def _refresh(self) -> tuple[HashpriceQuote, float]:
        base = self.cfg.base_url
        headers = {"X-Hi-Api-Key": self.__key, "Accept": "application/json"}
        fetched = self.clock()
        src = self.name
        network: dict = {}
        if self.cfg.endpoint == "current":
            where = "/hashprice/current"
            doc = await self.http.get_json(f"{base}/hashprice/current",
                                           params={"hashunit": "THS"}, headers=headers)
            data = doc.get("data") if isinstance(doc, dict) else None
            usd = _number(data, "priceUSD", where, src)
            if isinstance(data, dict) and data.get("priceBTC") is not None:
                btc = _number(data, "priceBTC", where, src)
                network["hashprice_btc_per_th_day"] = btc
                if btc > 0:
                    network["btc_price_usd"] = round(usd / btc, 2)
            stamp = _parse_time(data.get("timestamp")) if isinstance(data, dict) else None
        else:
            where = "/hashprice"
            doc = await self.http.get_json(
                f"{base}/hashprice", headers=headers,
                params={"span": "1D", "bucket": "5m", "currency": "USD", "hashunit": "THS"})
            rows = doc.get("data") if isinstance(doc, dict) else None
            if not isinstance(rows, list) or not rows:
                raise FeedError(f"{src}: {where}: no data points")
            points = [(_parse_time(r.get("timestamp")), r) for r in rows if isinstance(r, dict)]
            stamped = [(t, r) for t, r in points if t is not None]
            if not stamped:
                raise FeedError(f"{src}: {where}: no data point has a timestamp")
            stamp, newest = max(stamped, key=lambda p: p[0])
            usd = _number(newest, "price", where, src)
        if not 0 < usd < PLAUSIBLE_MAX:
            raise FeedError(f"{src}: {where}: implausible hash price {usd!r} USD/TH/day "
                            "(hashunit THS expected)")
        as_of = min(fetched, stamp) if stamp is not None else fetched
        return HashpriceQuote(usd, src, as_of, network=network), as_of


class CompositeHashpriceSource:
    """Several sources: the first fresh one in order, or the median of the fresh live ones.

    Every member is asked each tick (each caches for its own refresh_s), so a fallback is
    already warm when the primary fails, and live sources can be cross-checked. A ``fixed``
    member is a last resort: it never enters the median or the cross-check.
    """

    live = True

    def __init__(self, members: list[Any], *, combine: str = "first",
                 max_disagreement: float = 0.10, clock: Callable[[], float] = time.time):
        if not members:
            raise ValueError("no hash price sources")
        self.members = members
        self.combine = combine
        self.max_disagreement = max_disagreement
        self.clock = clock
        self.name = f"{combine}({','.join(m.name for m in members)})"
        self._warned: tuple | None = None

    async def fetch(self) -> HashpriceQuote:
        results = await asyncio.gather(*(m.fetch() for m in self.members),
                                       return_exceptions=True)
        fresh: list[tuple[int, HashpriceQuote]] = []
        details: list[dict] = []
        for i, (m, r) in enumerate(zip(self.members, results, strict=True)):
            d = dict(m.detail())
            d["role"] = "primary" if i == 0 else f"fallback {i}"
            if isinstance(r, HashpriceQuote):
                fresh.append((i, r))
            elif isinstance(r, BaseException):
                if not isinstance(r, Exception):
                    raise r  # cancellation and friends are not a source failure
                d["fresh"] = False
                d["error"] = d.get("error") or scrub(str(r)) or type(r).__name__
            details.append(d)
        live = [(i, q) for i, q in fresh if getattr(self.members[i], "live", True)]

        disagreement = None
        exceeded = False
        if len(live) >= 2:
            values = [q.usd_per_th_day for _, q in live]
            mid = statistics.median(values)
            disagreement = (max(values) - min(values)) / mid if mid > 0 else None
            exceeded = disagreement is not None and disagreement > self.max_disagreement
            self._report(live, disagreement, exceeded)

        if not fresh:
            errors = "; ".join(f"{d['source']}: {d.get('error') or 'stale'}" for d in details)
            raise FeedError(f"no fresh hash price from any source ({errors})")
        if self.combine == "median" and live:
            used = [i for i, _ in live]
            value = statistics.median(q.usd_per_th_day for _, q in live)
            as_of = min(q.obtained_at for _, q in live)
            network = next((q.network for _, q in live if q.network), {})
            source = ("median(" + ",".join(q.source for _, q in live) + ")"
                      if len(live) > 1 else live[0][1].source)
        else:
            i, q = fresh[0]
            used, value, as_of, network, source = [i], q.usd_per_th_day, q.obtained_at, \
                q.network, q.source
        for i, d in enumerate(details):
            d["used"] = i in used
        return HashpriceQuote(value, source, as_of, network=dict(network),
                              sources=tuple(details), disagreement=_round(disagreement),
                              disagreement_exceeded=exceeded, combine=self.combine)

    def _report(self, live: list[tuple[int, HashpriceQuote]], disagreement: float | None,
                exceeded: bool) -> None:
        key = tuple(round(q.usd_per_th_day, 8) for _, q in live)
        if not exceeded:
            self._warned = None
            return
        if key == self._warned:
            return  # already said for these values; they change only on a refresh
        self._warned = key
        log.warning(
            "hash price sources disagree by %.1f%% (max_disagreement %.1f%%): %s",
            100 * (disagreement or 0.0), 100 * self.max_disagreement,
            ", ".join(f"{q.source} {q.usd_per_th_day:.5f}" for _, q in live))


def _build_single(cfg: Any, *, clock: Callable[[], float],
                  transport: httpx.AsyncBaseTransport | None) -> Any:
    if isinstance(cfg, FixedSource):
        return FixedHashpriceSource(cfg.usd_per_th_day, clock=clock)
    if isinstance(cfg, MempoolSource):
        return MempoolHashpriceSource(cfg, clock=clock, transport=transport)
    if isinstance(cfg, HashrateIndexSource):
        key = resolve_hashrateindex_key(cfg)
        if key is None:
            raise ValueError("hashprice.api_key: no Hashrate Index API key available")
        return HashrateIndexHashpriceSource(cfg, api_key=key, clock=clock, transport=transport)
    raise ValueError(f"hashprice.source: unknown source {getattr(cfg, 'source', cfg)!r}")


def build_hashprice_source(cfg: Any, *, clock: Callable[[], float] = time.time,
                           transport: httpx.AsyncBaseTransport | None = None) -> HashpriceSource:
    """The source for a validated ``[hashprice]`` table (see drivers/hashprice_config.py)."""
    members = [_build_single(cfg, clock=clock, transport=transport)]
    members += [_build_single(f, clock=clock, transport=transport)
                for f in getattr(cfg, "fallbacks", ())]
    if len(members) == 1:
        return members[0]
    return CompositeHashpriceSource(members, combine=getattr(cfg, "combine", "first"),
                                    max_disagreement=getattr(cfg, "max_disagreement", 0.10),
                                    clock=clock)
