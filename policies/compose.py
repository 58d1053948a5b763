"""Composition of policies: the one entry point the loop, `plan` and `backtest` decide through.

``decide_stack(policy, fleet, market, directives, now)`` is the contract: ``policy`` is what
``controller.daemon.build_policy(config)`` returns; ``market`` may be None (inputs never
obtained); ``directives`` carries the demand-response cap, operator overrides and the pause
flag. The full layering (thermal > overrides > power_cap > schedule > base) is documented in
``policies/README.md``.
"""

from __future__ import annotations

from dataclasses import replace

from controller.snapshot import Desired, Directives, FleetSnapshot, MarketSnapshot


def decide_stack(policy, fleet: FleetSnapshot, market: MarketSnapshot | None,
                 directives: Directives, now: float) -> dict[str, Desired]:
    """Desired state per miner key. A policy object with its own ``decide_stack`` method
    (a composed stack) gets everything; a plain policy decides on a market snapshot that
    carries the directive's power cap, and has no opinion without market inputs."""
    own = getattr(policy, "decide_stack", None)
    if callable(own):
        return own(fleet, market, directives, now)
    if market is None:
        return {}
    if directives.power_cap_w is not None:
        market = replace(market, power_cap_w=directives.power_cap_w)
    return policy.decide(fleet, market, now)
