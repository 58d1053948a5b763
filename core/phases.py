"""Phase balance: keep the spread between a site's most and least loaded phase within a limit.

A three-phase feed carries its machines on L1, L2 and L3 (the site map says which). Load one
phase far more than the others and the neutral carries the difference, one winding of the
transformer heats before its rating is reached, and a utility contract may bound the
imbalance. So every shed and restore curtaild chooses -- power-cap sheds
(policies/power_cap.py), outlet switch-offs and switch-ons (controller/outlets.py), firmware
sleeps and wakes (controller/site.py) -- is checked here when the site sets
``[inventory] max_phase_imbalance_w``.

The rule (:func:`balance_hold`): a change to one phase's load is admitted when the spread
after it (max - min over the phases the site map uses) is within the limit, or no wider than
before it. A change that keeps or improves the balance is never held, so a site already out of
balance can always move back towards balance, and holding never strands it there.

Pure functions of loads in watts; callers choose what a machine's load is (the power cap
counts a machine under the decision, the controller what it draws now).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from curtaild.core.snapshot import MinerReading

#: Below this many watts of difference two spreads are the same (float noise, not a change).
_EPS_W = 1e-6


def phase_loads(miners: Iterable[MinerReading],
                power_w: Callable[[MinerReading], float]) -> dict[str, float]:
    """Load per phase, W, over the phases at least one machine is placed on (a phase the site
    map never names is not part of the balance: it may feed something curtaild does not see)."""
    loads: dict[str, float] = {}
    for r in miners:
        if r.phase:
            loads[r.phase] = loads.get(r.phase, 0.0) + max(0.0, power_w(r))
    return loads


def spread_w(loads: dict[str, float]) -> float:
    """Most loaded phase minus least loaded phase, W (0 with fewer than two phases)."""
    if len(loads) < 2:
        return 0.0
    return max(loads.values()) - min(loads.values())


def balance_hold(loads: dict[str, float], phase: str | None, delta_w: float,
                 limit_w: float | None) -> str | None:
    """Why adding ``delta_w`` (negative: a shed) to ``phase`` must wait; None: admitted."""
    if limit_w is None or phase is None or phase not in loads or len(loads) < 2:
        return None
    after = dict(loads)
    after[phase] += delta_w
    before_s, after_s = spread_w(loads), spread_w(after)
    if after_s <= limit_w + _EPS_W or after_s <= before_s + _EPS_W:
        return None
    heavy = max(after, key=lambda k: after[k])
    light = min(after, key=lambda k: after[k])
    return (f"phase balance: {heavy} would carry {after[heavy]:.0f} W and {light} "
            f"{after[light]:.0f} W, {after_s:.0f} W apart (max_phase_imbalance_w "
            f"{limit_w:g})")


def admit(loads: dict[str, float], phase: str | None, delta_w: float) -> None:
    """Record an admitted change in ``loads`` (in place)."""
    if phase is not None and phase in loads:
        loads[phase] += delta_w
