"""``[fleet]``: which addresses are miners and how the miner driver reaches them.

It lives beside the driver it configures (like hashprice_config and tariff_config), so that
the driver needs nothing from the controller: the controller's config composes it.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curtaild.core.bounds import at_most, key_error
from curtaild.drivers.credentials_config import CredentialsConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: The most addresses one curtaild manages (hosts and ranges together, each counted once).
#: The product targets sites of up to 100,000 machines, and that is what the daemon is sized
#: and benchmarked for; 16 ranges of 65,536 addresses took 2.5 GB and never finished a first
#: tick. A larger site runs one curtaild per part of it.
MAX_FLEET_ADDRESSES = 100_000
#: Per machine, W: no mining machine draws this much; a larger figure is a unit mistake.
MAX_MACHINE_W = 100_000.0

MachineWatts = Annotated[float, Field(gt=0), at_most(
    MAX_MACHINE_W, "no mining machine draws that much (kW entered as W?)", unit="W")]


def _range_bounds(text: str) -> tuple[int, int]:
    """First and last address of "A-B" as integers, validated, without expanding it."""
    if "-" not in text:
        raise ValueError(f"{text!r} is not a range: expected 'A-B', e.g. '10.0.0.1-10.0.0.254'")
    first_s, last_s = (p.strip() for p in text.split("-", 1))
    first = ipaddress.IPv4Address(first_s)
    if "." not in last_s:
        last = ipaddress.IPv4Address(first_s.rsplit(".", 1)[0] + "." + last_s)
    else:
        last = ipaddress.IPv4Address(last_s)
    if last < first:
        raise ValueError(f"range {text!r} ends before it starts")
    count = int(last) - int(first) + 1
    if count > 65536:
        raise ValueError(f"range {text!r} has {count} addresses; at most 65536 per range")
    return int(first), int(last)


def _parse_range(text: str) -> list[str]:
    """Expand "A-B" (inclusive IPv4 range, B may be a full address or a last octet)."""
    first, last = _range_bounds(text)
    return [str(ipaddress.IPv4Address(i)) for i in range(first, last + 1)]


def count_addresses(hosts: list[str], ranges: list[str]) -> int:
    """Distinct addresses in hosts and ranges, from the spans alone (sorted and merged):
    a million-address fleet is counted, and refused, without a million strings."""
    spans = sorted([(int(ipaddress.IPv4Address(h)),) * 2 for h in hosts]
                   + [_range_bounds(r) for r in ranges])
    total = 0
    end = -1  # last address counted so far
    for first, last in spans:
        if last > end:
            total += last - max(first, end + 1) + 1
            end = last
    return total


class PowerConfig(_Strict):
    """Where a machine's power figure comes from when its firmware reports none."""

    overrides_w: dict[str, MachineWatts] = Field(
        default_factory=dict, description="per-miner watts, by MAC, serial or IP"
    )
    models_w: dict[str, MachineWatts] = Field(
        default_factory=dict, description="per-model watts at full power, e.g. 'S19j Pro' = 3050"
    )
    idle_w: Annotated[float, at_most(
        5000.0, "a sleeping machine draws tens of watts (board and fans)", unit="W")] = Field(
        40.0, ge=0, description="draw of a sleeping machine (board, fans)")


class FleetConfig(_Strict):
    hosts: list[str] = Field(default_factory=list)
    ranges: list[str] = Field(default_factory=list)
    discovery_concurrency: Annotated[int, at_most(
        5000, "each discovery holds several connections (open files); unbounded discovery "
        "fails silently", unit="")] = Field(100, ge=1)
    poll_concurrency: Annotated[int, at_most(
        20000, "each poll in flight holds a connection (an open file)", unit="")] = Field(
        400, ge=1)
    discovery_timeout_s: Annotated[float, at_most(
        300, "an address that never answers holds a discovery slot this long, and is "
        "probed again on every re-discovery")] = Field(15.0, gt=0)
    poll_timeout_s: Annotated[float, at_most(
        300, "a hung miner holds its poll slot and delays the tick this long, every tick; a "
        "miner that answers at all answers in seconds")] = Field(10.0, gt=0)
    rediscover_after_failures: Annotated[int, at_most(
        1000, "a miner replaced or re-flashed at its address is rebuilt only after this many "
        "failed polls", unit="")] = Field(3, ge=1)
    power: PowerConfig = Field(default_factory=PowerConfig)
    credentials: CredentialsConfig = Field(default_factory=CredentialsConfig)

    @field_validator("hosts")
    @classmethod
    def _hosts_are_ips(cls, hosts: list[str]) -> list[str]:
        for h in hosts:
            try:
                ipaddress.IPv4Address(h)
            except ValueError:
                raise ValueError(f"{h!r} is not an IPv4 address") from None
        return hosts

    @field_validator("ranges")
    @classmethod
    def _ranges_parse(cls, ranges: list[str]) -> list[str]:
        for r in ranges:
            try:
                _range_bounds(r)  # not expanded: the fleet size is checked from the spans
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return ranges

    @model_validator(mode="after")
    def _fleet_size(self) -> FleetConfig:
        n = count_addresses(self.hosts, self.ranges)
        if n > MAX_FLEET_ADDRESSES:
            raise key_error(self, "ranges" if self.ranges else "hosts", (
                f"{n:,} addresses in hosts and ranges (each counted once); at most "
                f"{MAX_FLEET_ADDRESSES:,}: every address is polled each tick and held in "
                "memory, and curtaild is sized for sites up to that; run one curtaild per "
                "part of a larger site"))
        return self

    def addresses(self) -> list[str]:
        """Every configured address once, in a stable order."""
        seen: dict[str, None] = dict.fromkeys(self.hosts)
        for r in self.ranges:
            seen.update(dict.fromkeys(_parse_range(r)))
        return list(seen)
