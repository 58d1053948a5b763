"""Pure parts of the loop: what a fast tick decides on."""

from __future__ import annotations

from curtaild.controller.loop import TickResult, predicted
from curtaild.core.snapshot import Command, FleetSnapshot, MinerReading


def _r(key: str, state: str = "mining", power_w: float = 3250.0,
       limit: float | None = None) -> MinerReading:
    return MinerReading(key=key, ip=f"127.0.0.{len(key)}", make="WhatsMiner", model="M50",
                        firmware="whatsminer", state=state,  # type: ignore[arg-type]
                        hashrate_ths=114.0 if state == "mining" else 0.0, power_w=power_w,
                        power_source="firmware", power_limit_w=limit, temp_c=70.0,
                        nameplate_hashrate_ths=114.0, nameplate_power_w=3306.0,
                        supports_power_limit=True, observed_at=100.0)


def _c(key: str, action: str, limit: float | None = None) -> Command:
    return Command(key=key, ip="127.0.0.1", action=action, power_limit_w=limit,  # type: ignore[arg-type]
                   reason="t", delta_power_w=0.0)


def _tick(miners, commands, outcomes, dry_run=False) -> TickResult:
    return TickResult(started_at=100.0, duration_s=1.0, fleet=FleetSnapshot(tuple(miners), 100.0),
                      market=None, desired={}, effective={}, held={}, commands=tuple(commands),
                      outcomes=outcomes, dry_run=dry_run)


def test_a_fast_tick_sees_its_own_last_commands_applied() -> None:
    last = _tick([_r("A"), _r("B"), _r("C", "sleeping", 35.0), _r("D"), _r("E")],
                 [_c("A", "sleep"), _c("B", "limit", 1500.0), _c("C", "run", 3306.0),
                  _c("D", "sleep")],
                 {"A": "ok: stop_mining", "B": "ok: set_power_limit", "C": "ok: resume_mining",
                  "D": "failed: no answer within 5s"})
    got = {m.key: m for m in predicted(last).miners}
    assert (got["A"].state, got["A"].hashrate_ths) == ("sleeping", 0.0)
    # Acknowledged is not confirmed (issue 14): a shed keeps its observed draw, "pending",
    # until a regular tick sees it in effect; a wake counts its full draw at once.
    assert (got["A"].power_w, got["A"].command_state) == (3250.0, "pending")
    assert (got["B"].state, got["B"].power_w, got["B"].power_limit_w) == ("mining", 3250.0, 1500.0)
    assert got["B"].command_state == "pending"
    assert 40 < got["B"].hashrate_ths < 114.0  # along the efficiency curve, not nameplate
    assert (got["C"].state, got["C"].power_w, got["C"].hashrate_ths) == ("mining", 3306.0, 114.0)
    assert got["C"].command_state == "pending"
    assert got["D"] == last.fleet.by_key()["D"]  # failed: unknown, left as observed
    assert got["E"] == last.fleet.by_key()["E"]
    # A dry run changed nothing.
    dry = _tick(last.fleet.miners, last.commands, dict.fromkeys("ABC", "dry-run"), dry_run=True)
    assert predicted(dry) == dry.fleet


class _Lease:
    """A leader's fence whose lease the cluster task renews (or not) meanwhile: what
    ``_within_lease`` reads while a command waits on a miner."""

    def __init__(self, ttl_s: float, renewed: bool) -> None:
        import time

        self.ttl_s, self.renewed = ttl_s, renewed
        self.deadline = time.monotonic() + ttl_s

    def remaining_s(self) -> float:
        import time

        if self.renewed:  # a keep-alive every third of the TTL
            self.deadline = max(self.deadline, time.monotonic() + self.ttl_s * 2 / 3)
        return self.deadline - time.monotonic()


async def test_a_slow_command_of_a_leader_whose_lease_is_renewed_completes() -> None:
    """A stock Antminer's write takes ~21 s, more than a lease's TTL: the command was cancelled
    at the deadline read when it started although the lease had been renewed since (368 of a
    10,000-miner leader's commands abandoned at TTL 10, machines left asleep until the verify
    grace: bench/failover.py). Cancelled only when the lease has really run out."""
    import asyncio

    import pytest

    from curtaild.controller.loop import _within_lease
    from curtaild.drivers.miners import CommandFailed

    async def command(s: float) -> str:
        await asyncio.sleep(s)
        return "done"

    assert await _within_lease(command(0.5), _Lease(0.15, renewed=True)) == "done"  # type: ignore[arg-type]
    with pytest.raises(CommandFailed, match="lease ran out"):
        await _within_lease(command(0.5), _Lease(0.15, renewed=False))  # type: ignore[arg-type]
