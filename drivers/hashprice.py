"""Hash price sources (USD per TH/s per day), each behind one small interface.

A source returns a quote with the time it was obtained, so the loop can judge staleness
without knowing where the number came from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class HashpriceQuote:
    usd_per_th_day: float
    source: str
    obtained_at: float  # unix seconds
    network: dict = field(default_factory=dict)  # difficulty, btc price, ... when known


class HashpriceSource(Protocol):
    name: str

    async def fetch(self) -> HashpriceQuote: ...


class FixedHashpriceSource:
    """The operator's number: always fresh, because it is a decision, not a measurement."""

    name = "fixed"

    def __init__(self, usd_per_th_day: float):
        self.usd_per_th_day = usd_per_th_day

    async def fetch(self) -> HashpriceQuote:
        return HashpriceQuote(self.usd_per_th_day, self.name, time.time())


def build_hashprice_source(cfg) -> HashpriceSource:  # noqa: ANN001 - config union
    if cfg.source == "fixed":
        return FixedHashpriceSource(cfg.usd_per_th_day)
    raise ValueError(f"hashprice.source: unknown source {cfg.source!r}")
