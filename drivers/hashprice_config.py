"""``[hashprice]``: where the hash price (USD per TH/s per day) comes from.

One primary source (``source = ...`` and its keys at the top of the table), optional
``fallbacks`` (single sources, in order) and how to combine them::

    [hashprice]
    source = "mempool"                      # computed from network data
    combine = "first"                       # first fresh source in order, or "median"
    max_disagreement = 0.10                 # report sources further apart than 10 %
    fallbacks = [
      { source = "hashrateindex" },         # key from HASHRATEINDEX_API_KEY
      { source = "fixed", usd_per_th_day = 0.045 },
    ]

``[hashprice] source = "fixed"`` with ``usd_per_th_day`` (the original form) stays valid.
Strict like the rest of the config: an unknown key is an error naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from curtaild.core.bounds import at_most, key_error

HASHRATEINDEX_ENV = "HASHRATEINDEX_API_KEY"
HASHRATEINDEX_CREDENTIAL = "hashrateindex-api-key"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    if "?" in url or "#" in url:
        raise ValueError("no query string or fragment, just the API root")
    return url.rstrip("/")


TICK_WAITS_WHY = "the tick that refreshes a market input waits for it"
REFRESH_WHY = "a market price refreshed less than once a day is not a market input"
MAX_AGE_WHY = "a price a week old is stale by any market's measure: the fail-safe would never act"


class HttpSourceConfig(_Strict):
    """What every HTTP source shares: timeouts, retries, cache and staleness."""

    timeout_s: Annotated[float, at_most(120, TICK_WAITS_WHY)] = Field(
        10.0, gt=0, description="per request")
    attempts: Annotated[int, at_most(10, TICK_WAITS_WHY, unit="")] = Field(
        3, ge=1, description="tries per request (tenacity)")
    backoff_s: Annotated[float, at_most(60, TICK_WAITS_WHY)] = Field(
        1.0, ge=0, description="first retry wait, doubling, jittered")
    backoff_max_s: Annotated[float, at_most(300, TICK_WAITS_WHY)] = Field(8.0, ge=0)
    deadline_s: Annotated[float, at_most(120, TICK_WAITS_WHY)] = Field(
        20.0, gt=0, description="one refresh, retries included")
    refresh_s: Annotated[float, at_most(86400, REFRESH_WHY)] = Field(
        300.0, ge=10, description="cache a value this long")
    max_age_s: Annotated[float, at_most(7 * 86400, MAX_AGE_WHY)] = Field(
        1200.0, gt=0, description="a value older than this is stale")

    @model_validator(mode="after")
    def _ages(self):
        if self.max_age_s < self.refresh_s:
            raise key_error(self, "max_age_s",
                            f"must be at least refresh_s ({self.refresh_s:g}): every value "
                            "would be stale before the next refresh")
        return self


class FixedSource(_Strict):
    """A hash price the operator sets by hand (overrides, tests, demos, last resort)."""

    source: Literal["fixed"] = "fixed"
    usd_per_th_day: float = Field(gt=0, lt=100)


class MempoolSource(HttpSourceConfig):
    """Computed from a mempool.space-compatible API: difficulty, fees, BTC price, tip height."""

    source: Literal["mempool"] = "mempool"
    base_url: str = "https://mempool.space/api"
    fee_blocks: Annotated[int, at_most(
        2016, "one difficulty period: older fees say little about the next block", unit="")] \
        = Field(144, ge=1, description="blocks the mean fee is taken over")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_base_url(v)


class HashrateIndexSource(HttpSourceConfig):
    """Luxor's Hashrate Index REST API (key in header X-Hi-Api-Key)."""

    source: Literal["hashrateindex"] = "hashrateindex"
    base_url: str = "https://api.hashrateindex.com/v1/hashrateindex"
    api_key: SecretStr | None = Field(
        None, description=f"else ${HASHRATEINDEX_ENV}, else the systemd credential "
                          f"{HASHRATEINDEX_CREDENTIAL!r}")
    endpoint: Literal["current", "series"] = Field(
        "current", description="/hashprice/current, or the last point of /hashprice?span=1D")
    # the API allows a burst of 20 requests, then one per 15 s
    refresh_s: Annotated[float, at_most(86400, REFRESH_WHY)] = Field(300.0, ge=15)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_base_url(v)

    @model_validator(mode="after")
    def _key_available(self):
        if resolve_hashrateindex_key(self) is None:
            raise key_error(self, "api_key", (
                f"no API key: set api_key, the environment variable {HASHRATEINDEX_ENV}, or "
                f"a systemd credential named {HASHRATEINDEX_CREDENTIAL!r} (LoadCredential=)"))
        return self


def resolve_hashrateindex_key(cfg: HashrateIndexSource) -> str | None:
    """Config, then environment, then ``$CREDENTIALS_DIRECTORY/hashrateindex-api-key``."""
    if cfg.api_key is not None and cfg.api_key.get_secret_value().strip():
        return cfg.api_key.get_secret_value().strip()
    env = os.environ.get(HASHRATEINDEX_ENV, "").strip()
    if env:
        return env
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        try:
            text = (Path(creds) / HASHRATEINDEX_CREDENTIAL).read_text().strip()
        except OSError:
            return None
        return text or None
    return None


HashpriceSourceConfig = Annotated[
    MempoolSource | HashrateIndexSource | FixedSource, Field(discriminator="source")
]


class _Chain(_Strict):
    """The keys that only the top-level [hashprice] table has."""

    fallbacks: list[HashpriceSourceConfig] = Field(
        default_factory=list, description="single sources tried after the primary, in order")
    combine: Literal["first", "median"] = Field(
        "first", description="first fresh source in order, or the median of all fresh ones")
    max_disagreement: float = Field(
        0.10, gt=0, le=10,
        description="fresh live sources further apart than this fraction of their median "
                    "are reported (log warning + quote.disagreement)")

    @model_validator(mode="after")
    def _fixed_last(self):
        chain = [self, *self.fallbacks]
        for i, member in enumerate(chain[:-1]):
            if member.source == "fixed":
                raise key_error(self, ("fallbacks",) if i == 0 else ("fallbacks", i - 1),
                                "a fixed hash price never fails, so the sources after it "
                                "would never be used: put it last")
        return self


class FixedHashprice(FixedSource, _Chain):
    pass


class MempoolHashprice(MempoolSource, _Chain):
    pass


class HashrateIndexHashprice(HashrateIndexSource, _Chain):
    pass


HashpriceConfig = Annotated[
    MempoolHashprice | HashrateIndexHashprice | FixedHashprice, Field(discriminator="source")
]
