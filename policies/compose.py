"""Composition of policies: the one entry point the loop, `plan` and `backtest` decide through.

``decide_stack(policy, fleet, market, directives, now)`` is the contract: ``policy`` is what
``controller.daemon.build_policy(config)`` returns (a :class:`PolicyStack`); ``market`` may be
None (inputs never obtained); ``directives`` carries the demand-response cap, operator
overrides and the pause flag.

``[policy] name = ...`` is the *base* (any policy: ``margin``, a plug-in, or a layer used on
its own over "everything runs"); sub-tables ``[policy.schedule]``, ``[policy.power_cap]`` and
``[policy.thermal]`` add layers. Precedence, highest first:

1. thermal -- hardware protection ("emergency"); only ever lowers a machine's power;
2. operator overrides (``directives.overrides``) -- "forced";
3. power_cap -- fixed, scheduled or demand-response cap (DR sheds "emergency"); always in the
   stack, so a DR event works with any config; machines pinned by 1-2 count but are not shed;
4. schedule -- time-of-use / demand windows with lead time;
5. the base policy.

While ``directives.automation_paused``, or without market inputs (``market`` None), the base
and schedule have no opinion (machines are held as they are); thermal, overrides and the power
cap still act, because none of them depends on prices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from curtaild.core.snapshot import Desired, Directives, FleetSnapshot, MarketSnapshot
from curtaild.policies import layer
from curtaild.policies.base import PolicyError, _param_problems, load_policy
from curtaild.policies.overrides import override_decisions
from curtaild.policies.power_cap import PowerCapConfig, PowerCapPolicy
from curtaild.policies.schedule import SchedulePolicy
from curtaild.policies.thermal import ThermalPolicy

#: Applied to the base's decisions before the layers (see PolicyStack.decide_stack).
BaseHook = Callable[[dict[str, Desired]], dict[str, Desired]]

#: Sub-tables of ``[policy]`` that add a layer, in the order they are applied (lowest first).
LAYERS: dict[str, Any] = {
    "schedule": SchedulePolicy,
    "power_cap": PowerCapPolicy,
    "thermal": ThermalPolicy,
}


@dataclass(frozen=True)
class EverythingRuns:
    """The base under a layer selected as ``[policy] name``: every machine runs."""

    name: str
    config: Any

    def decide(self, fleet: FleetSnapshot, market: MarketSnapshot,
               now: float) -> dict[str, Desired]:
        return layer.everything_runs(fleet)


class PolicyStack:
    """A base policy with its layers; what the daemon holds and swaps on SIGHUP."""

    kind: ClassVar[str] = "stack"

    def __init__(self, base: Any, *, schedule: SchedulePolicy | None = None,
                 power_cap: PowerCapPolicy | None = None,
                 thermal: ThermalPolicy | None = None):
        self.base = base
        self.schedule = schedule
        self.power_cap = power_cap if power_cap is not None else PowerCapPolicy(
            PowerCapConfig())
        self.thermal = thermal

    @property
    def name(self) -> str:
        return str(self.base.name)

    @property
    def config(self) -> Any:
        """The base's config (``pool_fee`` is read from here)."""
        return self.base.config

    def describe(self) -> str:
        """e.g. ``margin + schedule + power_cap + thermal`` (power_cap: DR-only if unset)."""
        parts = [self.name]
        if self.schedule is not None and self.name != "schedule":
            parts.append("schedule")
        if self.name != "power_cap":
            pc = self.power_cap.config
            parts.append("power_cap" if pc.cap_w is not None or pc.schedule
                         else "power_cap (demand response only)")
        if self.thermal is not None and self.name != "thermal":
            parts.append("thermal")
        return " + ".join(parts)

    def decide(self, fleet: FleetSnapshot, market: MarketSnapshot | None,
               now: float) -> dict[str, Desired]:
        """The plain-policy interface: the market's power_cap_w acts as a DR cap."""
        dr = Directives(power_cap_w=market.power_cap_w if market is not None else None)
        return self.decide_stack(fleet, market, dr, now)

    def decide_stack(self, fleet: FleetSnapshot, market: MarketSnapshot | None,
                     directives: Directives, now: float, *,
                     base_hook: BaseHook | None = None) -> dict[str, Desired]:
        """``base_hook``: the controller's own economic wishes added to the base's (and the
        schedule's) before the layers above it -- the hard power-down tier weighs running
        against *off* for machines that cannot sleep (controller/outlets.py), and the power
        cap must count what that tier will do. Not called while automation is paused or
        without market inputs, like the base."""
        economics = market is not None and not directives.automation_paused
        decisions: dict[str, Desired] = {}
        if economics:
            assert market is not None
            base_market = market if directives.power_cap_w is None else replace(
                market, power_cap_w=directives.power_cap_w)
            decisions = dict(self.base.decide(fleet, base_market, now))
            if self.schedule is not None:
                decisions = self.schedule.apply(decisions, fleet, market, directives, now)
            if base_hook is not None:
                decisions = base_hook(decisions)
        # Higher layers first, so the cap counts what they pin but never sheds it.
        forced = override_decisions(fleet, directives, now)
        top = {**decisions, **{k: layer.overriding(v, decisions.get(k))
                               for k, v in forced.items()}}
        pinned = set(forced)
        if self.thermal is not None:
            hot = self.thermal.apply(top, fleet, market, directives, now)
            pinned |= {r.key for r in fleet.miners if self.thermal.decide_one(r) is not None}
            top = hot
        return self.power_cap.apply(top, fleet, market, directives, now, pinned=pinned)


def decide_stack(policy: Any, fleet: FleetSnapshot, market: MarketSnapshot | None,
                 directives: Directives, now: float, *,
                 base_hook: BaseHook | None = None) -> dict[str, Desired]:
    """Desired state per miner key. A policy object with its own ``decide_stack`` method
    (a composed stack) gets everything; a plain policy is wrapped in a stack of its own.
    ``base_hook``: see :meth:`PolicyStack.decide_stack`."""
    own = getattr(policy, "decide_stack", None)
    if callable(own):
        extra = {} if base_hook is None else {"base_hook": base_hook}
        desired: dict[str, Desired] = own(fleet, market, directives, now, **extra)
        return desired
    return PolicyStack(policy).decide_stack(fleet, market, directives, now, base_hook=base_hook)


def _layer_config(name: str, value: Any, problems: list[str]) -> BaseModel | None:
    if not isinstance(value, Mapping):
        problems.append(f"policy.{name}: expected a table ([policy.{name}])")
        return None
    if "pool_fee" in value:
        problems.append(f"policy.{name}.pool_fee: set pool_fee once, in [policy]")
        return None
    cls: type[BaseModel] = LAYERS[name].Config
    try:
        return cls.model_validate(dict(value))
    except ValidationError as exc:
        problems.extend(_param_problems(exc, cls, prefix=f"policy.{name}"))
        return None


def build_policy_stack(policy_table: Mapping[str, Any]) -> PolicyStack:
    """The ``[policy]`` table (with its sub-tables) as a stack; validates everything.

    Raises PolicyError listing every problem, one ``policy.<key>: <reason>`` per line (a layer's
    keys as ``policy.<layer>.<key>``).
    """
    if not isinstance(policy_table, Mapping):
        raise PolicyError(["policy: expected a table ([policy])"])
    name = policy_table.get("name")
    if not isinstance(name, str):
        raise PolicyError(["policy.name: required, the policy to run (e.g. 'margin')"])
    problems: list[str] = []
    params = {k: v for k, v in policy_table.items() if k != "name" and k not in LAYERS}
    base: Any = None
    try:
        base = load_policy(name, params)
    except PolicyError as exc:
        problems.extend(exc.problems)
    layers: dict[str, Any] = {}
    for lname in LAYERS:
        if lname not in policy_table:
            continue
        if lname == name:
            problems.append(f"policy.{lname}: {lname!r} is already the base policy; put its "
                            "keys in [policy] itself")
            continue
        cfg = _layer_config(lname, policy_table[lname], problems)
        if cfg is not None:
            layers[lname] = LAYERS[lname](cfg)
    if problems:
        raise PolicyError(problems)
    if name in LAYERS and callable(getattr(base, "apply", None)):
        # A layer on its own: it is the layer, over a base where everything runs.
        layers[name] = base
        base = EverythingRuns(name=name, config=base.config)
    return PolicyStack(base, **layers)
