"""The policy plug-in surface: what a policy is, and how one is found and configured.

A policy is pure decision code an operator can read: a strict pydantic config model plus a
class whose ``decide(fleet, market, now)`` returns one :class:`~controller.snapshot.Desired`
per miner it has an opinion on (keyed by ``MinerReading.key``). No I/O, no clock, no state
beyond the config: the guards and the loop own everything else.

Built-in policies and third-party ones both register under the entry-point group
``curtaild.policies``; a third-party package adds, in its own ``pyproject.toml``::

    [project.entry-points."curtaild.policies"]
    my_policy = "my_package.module:MyPolicy"

and ``[policy] name = "my_policy"`` selects it. Its ``Config`` must accept ``pool_fee`` (every
policy does: the market snapshot carries the same fee, and ``[policy] pool_fee`` is a
contract). Subclassing :class:`PolicyConfig` gives that field and the strictness for free.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import metadata
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curtaild.core.bounds import finite_message
from curtaild.core.snapshot import Desired, FleetSnapshot, MarketSnapshot

log = logging.getLogger("curtaild.policies")

#: The entry-point group third-party policies register under.
ENTRY_POINT_GROUP = "curtaild.policies"


class PolicyError(Exception):
    """A policy that cannot be loaded; one ``policy.<key>: <reason>`` per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class PolicyConfig(BaseModel):
    """Base of every policy's config: strict (a typo names the key) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)

    pool_fee: float = Field(0.02, ge=0.0, lt=1.0)
    """Fraction of revenue the pool keeps (0.02 = 2 %); revenue is multiplied by 1 - pool_fee."""


@runtime_checkable
class Policy(Protocol):
    """What the loop needs from a policy (structural: no base class required)."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    config: Any  # an instance of Config; ``config.pool_fee`` is always present

    def __init__(self, config: Any) -> None: ...

    def decide(
        self, fleet: FleetSnapshot, market: MarketSnapshot, now: float
    ) -> dict[str, Desired]: ...


def _builtin_policies() -> dict[str, str]:
    """Built-ins as entry-point values, used when the package metadata is not installed."""
    return {
        "margin": "curtaild.policies.margin:MarginPolicy",
        "power_cap": "curtaild.policies.power_cap:PowerCapPolicy",
        "schedule": "curtaild.policies.schedule:SchedulePolicy",
        "thermal": "curtaild.policies.thermal:ThermalPolicy",
    }


def _load_target(value: str) -> Any:
    """Import ``module:attr`` the way importlib.metadata resolves an entry point (a class
    whose shape :func:`_check_class` checks before it is used)."""
    return metadata.EntryPoint(name="_", value=value, group=ENTRY_POINT_GROUP).load()


def available_policies() -> dict[str, str]:
    """Every policy name to its ``module:Class`` target: built-ins, then registered plug-ins.

    A plug-in registered under a built-in's name replaces it (the site chose to install it).
    """
    found = dict(_builtin_policies())
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:
        log.warning("cannot read entry points %s: %s", ENTRY_POINT_GROUP, exc)
        return found
    for ep in eps:
        found[ep.name] = ep.value
    return found


def _param_problems(exc: ValidationError, config_cls: type[BaseModel],
                    prefix: str = "policy") -> list[str]:
    known = ", ".join(sorted(config_cls.model_fields))
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            msg = f"unknown key (valid keys: {known})"
        else:
            msg = finite_message(err["type"], err["msg"].removeprefix("Value error, "))
        lines.append(f"{prefix}.{path}: {msg}" if path else f"{prefix}: {msg}")
    return lines


def _check_class(name: str, cls: Any) -> None:
    config_cls = getattr(cls, "Config", None)
    problems = []
    if not (isinstance(config_cls, type) and issubclass(config_cls, BaseModel)):
        problems.append(f"policy.name: policy {name!r} has no pydantic Config model")
    elif "pool_fee" not in config_cls.model_fields:
        problems.append(f"policy.name: policy {name!r} has a Config without pool_fee")
    if not callable(getattr(cls, "decide", None)):
        problems.append(f"policy.name: policy {name!r} has no decide(fleet, market, now)")
    if problems:
        raise PolicyError(problems)


def load_policy(name: str, params: Mapping[str, Any]) -> Policy:
    """Find the policy called ``name`` and build it from ``params`` (the ``[policy]`` table
    without ``name``).

    Raises PolicyError: an unknown name lists the available ones; invalid params give one
    ``policy.<key>: <reason>`` line per problem.
    """
    targets = available_policies()
    if name not in targets:
        names = ", ".join(sorted(targets)) or "none"
        raise PolicyError([f"policy.name: unknown policy {name!r}; available: {names}"])
    try:
        cls = _load_target(targets[name])
    except Exception as exc:
        raise PolicyError(
            [f"policy.name: policy {name!r} ({targets[name]}) failed to load: {exc}"]
        ) from exc
    _check_class(name, cls)
    try:
        config = cls.Config.model_validate(dict(params))
    except ValidationError as exc:
        raise PolicyError(_param_problems(exc, cls.Config)) from None
    policy: Policy = cls(config)
    return policy
