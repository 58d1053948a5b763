"""Safety guards between a policy's wishes and the machines (pure: no I/O, no clock).

``apply_guards`` is level-triggered: per miner it compares the *guarded* desired state with
what was observed and emits a command only where they differ. Everything it needs to remember
between ticks comes in as arguments -- the journal's :class:`MinerMemory` per machine and the
ramp :class:`RampBucket` -- so a restart resumes exactly where it stopped.

Rules, in the order they are checked for each machine:

1. Untouchable: excluded in config, unreachable, a reading older than
   ``stale_reading_after_s``, flagged as disobedient, or asleep and not put to sleep by
   curtaild (the operator's: never woken). Held with the reason.
2. Stale market (hash price or tariff older than ``stale_market_after_s``): ``hold`` keeps
   every machine as it is for ``stale_hold_s``, then releases what curtaild curtailed;
   ``run`` releases at once. The policy's wishes are ignored while stale.
3. Capability: no sleep on firmware that cannot sleep, no limit on firmware without limits.
4. Hysteresis around zero margin (``run_margin_usd_per_day``); a release skips it.
5. Ownership of power limits: a limit curtaild did not set is never changed by a "run". A
   "run" for a machine curtaild owns but finds already running unlimited is still sent (no
   power moves): it lets the journal release ownership once the machine is seen running.
   A wake (and a "run" for a machine curtaild slept that is found at another limit) carries
   the power curtaild wants back -- the limit recorded before its first curtailment, else
   nameplate -- because firmware keeps a limit through sleep: a plain resume would bring the
   machine back at curtaild's old limit and release it as the operator's (issue 16).
6. Minimum dwell since curtaild last changed the machine; and a command identical to the last
   one sent (``MinerMemory.expected_action``) is not sent again while the machine catches up
   -- re-commanding a machine that did not obey is the loop's verify step.
6b. A power-limit change made for margin (a new target for a hashing machine, or a "run" that
   restores its limit) must pay for itself, because a new limit costs hashing (a Whatsminer
   restarts for ~2 min, LuxOS ramps: ``limit_restart_s``): not within the band
   (``limit_band_w``/``limit_band_fraction``) of the present limit; not within
   ``limit_dwell_s`` of curtaild's last change to the machine; and only when the margin gained
   over that horizon exceeds what the restart forgoes. Wishes without the policy's
   ``hold_margin_usd_per_day`` (layers' curtailments, overrides) and fail-safe releases skip it.
6c. At most ``max_limit_changes_per_day`` power-limit changes for margin per machine in any
   24 h (0: no cap). From half of it on, each new limit must beat its restart twice, four
   times, ... over (the day's last changes go to the largest gains); at the cap a hashing
   machine keeps its limit until the oldest change leaves the window, and a sleeping one wakes
   at the power curtaild restores, not at a new limit. A return to full power is never held
   by it (curtaild does not keep a machine curtailed to save a change), nor is a wake, nor
   are the wishes 6b does not judge.
7. Ramp: a token bucket of |delta W|, shedding worst-first then restoring most-efficient-first,
   in strict order (a command that does not fit blocks the ones behind it, so a big machine is
   never starved by small ones). One bucket for both directions, unless
   ``shed_ramp_w_per_min`` gives sheds a bucket of their own (restores keep
   ``ramp_w_per_min``: the in-rush of machines booting together is what a restore staggers,
   while a shed follows a price that is already costing money).
8. At most ``max_commands_per_tick`` commands.

Priority (``Desired.priority``) lets some wishes through rules made for economic decisions:

- ``"normal"``: every rule above.
- ``"forced"`` (an operator override): skips hysteresis (4) and dwell (6, 6b), may wake a
  machine found asleep that curtaild did not put to sleep (the override *is* the operator),
  and acts through stale or missing market inputs (2: it does not depend on prices). Still
  ramped (7) and still never for an excluded, unreachable, stale-reading or flagged machine.
- ``"emergency"`` (thermal protection, a demand-response shed): skips hysteresis (4), dwell
  (6, 6b) and the stale-market fail-safe (2); its sheds skip the ramp bucket and go first (7);
  its restores (a wake or a raised limit) are ramped like any other. Otherwise as rule 1.

Neither skips capability (3) or the no-resend rule of 6. Emergency sheds also take no slot of
the command cap (8): a demand-response event on a thousand machines is sent in one tick
(``controller.command_concurrency`` bounds how many are in flight at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curtaild.core import switching
from curtaild.core.bounds import at_most
from curtaild.core.snapshot import (
    Action,
    Command,
    Desired,
    FleetSnapshot,
    MarketSnapshot,
    MinerReading,
)

#: Power limits within max(LIMIT_TOLERANCE_W, LIMIT_TOLERANCE_FRACTION x target) are equal.
LIMIT_TOLERANCE_W = 25.0
LIMIT_TOLERANCE_FRACTION = 0.02
#: Draw of a sleeping machine assumed for ramp accounting when the reading does not say.
IDLE_ESTIMATE_W = 40.0
#: Full-power draw assumed for ramp accounting of a wake when nothing is known (conservative).
UNKNOWN_FULL_POWER_W = 3500.0
#: Default hashing lost per power-limit change, s, by firmware family (``limit_restart_s``):
#: the switching-cost table's (core/switching.py), which the policy and the backtest use.
LIMIT_RESTART_S = switching.LIMIT_RESTART_S
#: The time a machine gets after acknowledging a command to be *seen* in the commanded state:
#: until then its command is "pending" (or "transitioning" while it is silent), neither
#: re-commanded nor counted as done; after it, re-commanded (at most once per grace) and
#: flagged after ``flag_after_failures``. By default ``[controller] verify_grace_s`` scaled by
#: the family's factor here (by family, pyasic backend name, or ``family.action``), so the
#: shipped 240 s gives: stock Antminer 420 s (the ~21 s config CGI, bmminer's restart, then the
#: hash boards' boot: drivers/antminer_writes.GRACE_S); Whatsminer 240 s (btminer restarts for
#: ~2 min on a new limit), 600 s for a wake (``power_on`` ramps over 6-10 min); LuxOS and the
#: other tuning firmware 300 s (a wake ramps like a boot). A test fleet booting in seconds
#: with a 5 s ``verify_grace_s`` keeps proportionate graces. ``[guards] confirm_grace_s``
#: sets absolute seconds per family instead.
CONFIRM_GRACE_FACTORS: dict[str, float] = {"antminer": 1.75, "whatsminer": 1.0,
                                           "whatsminer.run": 2.5, "luxos": 1.25,
                                           "braiins": 1.25, "vnish": 1.25, "epic": 1.25}
#: Next tiers an operator may allow (``escalate``), for a machine flagged for ignoring a
#: command: "limit_to_sleep" sleeps a machine that ignored a power limit (Whatsminer
#: ``power_off``, LuxOS curtail); "sleep_to_reboot" reboots a machine that ignored a sleep on
#: firmware that stores sleep in its config and applies it at boot (stock Antminer: "some only
#: apply it after a reboot"; LuxOS: curtailment persists across a reboot). A machine whose
#: tier fails too is left alone and reported. Hard power-down (a PDU) would be the tier after.
ESCALATIONS = ("limit_to_sleep", "sleep_to_reboot")
REBOOT_APPLIES_SLEEP = frozenset({"antminer", "luxos"})
_GRACE_ACTIONS = ("run", "sleep", "limit")


def memory_window_s(cfg: GuardConfig) -> float:
    """How far back the guards must remember curtaild's changes to a machine (the journal's
    ``memory(dwell_s=...)``): minimum dwell, and the limit dwell of rule 6b."""
    return max(cfg.min_dwell_s, cfg.limit_dwell_s)


#: How long the journal keeps power-limit change times (rule 6c looks back one day).
LIMIT_CHANGES_KEPT_S = 2 * 86400.0
LIMIT_CHANGE_WINDOW_S = 86400.0


def limit_window_s(cfg: GuardConfig) -> float:
    """How far back the journal's ``memory(limit_window_s=...)`` must count power-limit
    changes: a day with a cap (rule 6c), else not at all (no query)."""
    return LIMIT_CHANGE_WINDOW_S if cfg.max_limit_changes_per_day > 0 else 0.0


def is_limit_change(cmd: Command, observed_limit_w: float | None,
                    expected: tuple[str, float | None] | None) -> bool:
    """Whether sending ``cmd`` changes the machine's power limit (what rule 6c counts): it sets
    a limit other than the one the firmware reports, and it is not a re-send of the command
    still awaited (``expected``: the last command's action and limit)."""
    if cmd.power_limit_w is None or cmd.action == "sleep":
        return False
    if expected is not None and expected == (cmd.action, cmd.power_limit_w):
        return False
    return observed_limit_w is None or \
        abs(cmd.power_limit_w - observed_limit_w) > limit_tolerance_w(cmd.power_limit_w)


def attach_limit_changes(memory: dict[str, MinerMemory],
                         changes: dict[str, tuple[float, ...]]) -> None:
    """Add each machine's recent power-limit changes to its memory (a machine curtaild no
    longer tracks gets a memory of its own: the count outlives a release)."""
    for key, times in changes.items():
        mem = memory.get(key)
        memory[key] = (replace(mem, limit_changes_at=times) if mem is not None else MinerMemory(
            key=key, curtailed_by_us=False, curtailed_action=None, restore_power_limit_w=None,
            last_change_at=None, flagged=False, limit_changes_at=times))


def limit_tolerance_w(target_w: float) -> float:
    """How far an observed power limit may be from a target and still count as reached."""
    return max(LIMIT_TOLERANCE_W, LIMIT_TOLERANCE_FRACTION * abs(target_w))


class GuardConfig(BaseModel):
    """The ``[guards]`` section: safety between the policy and the machines, all on by default.

    Stale market inputs: curtaild exists to *stop* machines when mining loses money; it must
    never be the reason a site stays curtailed. With ``on_stale_market = "hold"`` (default)
    nothing changes while inputs are stale -- no new curtailment, no wake -- for at most
    ``stale_hold_s`` (a short outage of a price feed should not cycle the fleet); after that
    curtaild releases every machine *it* curtailed, within the ramp and minimum dwell, and
    leaves machines an operator put to sleep alone. ``"run"`` releases at once.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)

    hysteresis_usd_per_day: Annotated[float, at_most(
        1000.0, "no machine earns or loses that much a day: a band this wide would never let "
        "one change state", unit="USD/day")] = Field(0.10, ge=0.0)
    """Band around zero margin, USD/day: a running machine is slept only if its full-power
    margin is below -band; a machine curtaild slept is woken only if the margin of running (or
    of the policy's power limit) is above +band."""

    min_dwell_s: Annotated[float, at_most(
        86400.0, "a machine curtaild changed could not be changed back (woken when prices "
        "recover) for longer than a day")] = Field(600.0, ge=0.0)
    """Minimum time, s, a machine stays in a state after curtaild changed it (protects PSUs
    and hashboards from cycling; also stops re-sending a command while the machine boots)."""

    ramp_w_per_min: float = Field(50_000.0, gt=0.0)
    """Largest change of site power per minute, W: restoring, and shedding too unless
    shed_ramp_w_per_min is set. A token bucket refilled at ramp/60 W per second, holding at
    most max(ramp, the largest single step)."""

    shed_ramp_w_per_min: float | None = Field(None, gt=0.0)
    """Largest economic shed per minute, W, from a bucket of its own; unset: sheds share
    ramp_w_per_min's bucket with restores. Restores are what a site staggers (PSU in-rush,
    breakers, a utility's load pick-up limit); a shed follows a price that is already costing
    money, so a site whose utility does not limit load drops can shed faster than it restores.
    Demand-response and thermal sheds are never ramped (rule 7)."""

    max_commands_per_tick: Annotated[int, at_most(
        100_000, "more than the largest fleet curtaild manages (fleet addresses are capped "
        "at 100,000)", unit="")] = Field(50, ge=1)
    """Commands sent per tick at most; the rest wait for the next tick."""

    exclude: list[str] = Field(default_factory=list)
    """Miner keys (MAC/serial) or IPs curtaild never commands (maintenance, test benches);
    case-insensitive."""

    stale_market_after_s: Annotated[float, at_most(
        86400.0, "a price a day old says nothing about the market now; the stale-market "
        "fail-safe would never act")] = Field(1800.0, gt=0.0)
    """Hash price or tariff older than this, s, is stale: see on_stale_market."""

    stale_reading_after_s: Annotated[float, at_most(
        86400.0, "a miner reading a day old says nothing about the machine now, and would "
        "still be acted on")] = Field(300.0, gt=0.0)
    """A miner reading older than this, s, is never acted on."""

    on_stale_market: Literal["hold", "run"] = "hold"
    """Fail-safe with stale market inputs: "hold" everything as it is for stale_hold_s, then
    release what curtaild curtailed; "run" releases at once."""

    stale_hold_s: Annotated[float, at_most(
        86400.0, "curtaild's curtailment would be held through stale prices for over a day "
        "(it exists to stop losses, never to keep a site curtailed)")] = Field(900.0, ge=0.0)
    """How long, s, "hold" lasts once the market is stale, before curtaild's curtailment is
    released."""

    limit_band_w: float = Field(100.0, ge=0.0, le=10_000.0)
    """Band, W, for power-limit changes: a policy's new limit within max(limit_band_w,
    limit_band_fraction x new limit) of the machine's present one is not sent (rule 6b)."""

    limit_band_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """Relative part of the power-limit band (see limit_band_w)."""

    limit_dwell_s: Annotated[float, at_most(
        7 * 86400.0, "a limit held longer than a week cannot follow a market that moves "
        "daily")] = Field(3600.0, ge=0.0)
    """Minimum time, s, after curtaild last changed a machine before it changes that machine's
    power limit for margin again, and the horizon over which such a change must earn back the
    hashing its restart costs (rule 6b)."""

    max_limit_changes_per_day: Annotated[int, at_most(
        1440, "one a minute is no cap", unit="")] = Field(0, ge=0)
    """Power-limit changes for margin per machine in any 24 h, at most (rule 6c); 0: no cap.
    Each costs hashing and cycles the hash boards; the policy prices each one, this bounds
    how many a day of prices hovering at a machine's breakeven can buy. From half of it on,
    each further change must beat its restart twice, then four times, ... over; at it, a
    machine keeps its limit (a return to full power and a wake excepted)."""

    limit_restart_s: dict[str, float] = Field(default_factory=lambda: dict(LIMIT_RESTART_S))
    """Hashing lost, s, each time a firmware family applies a new power limit, by family
    (pyasic backend name): a Whatsminer restarts btminer (~2 min; less with fast boot), LuxOS
    ramps to the new profile. Families not given keep these defaults; 0 = free."""

    confirm_grace_s: dict[str, Annotated[float, Field(gt=0.0), at_most(
        86400.0, "a machine that has not reached its commanded state within a day is not "
        "restarting; it would never be re-commanded or flagged")]] = Field(default_factory=dict)
    """Time, s, a machine gets after acknowledging a command to be seen in the commanded state,
    by family (pyasic backend name) or ``"family.action"`` (run, sleep, limit): its command is
    "pending" until then (never counted as done, never re-sent), then re-commanded at most once
    per grace and flagged after ``[controller] flag_after_failures``. Families not given get
    ``[controller] verify_grace_s`` scaled by their factor (CONFIRM_GRACE_FACTORS: 420 s for a
    stock Antminer, 600 s for a Whatsminer wake, with the shipped 240 s)."""

    escalate: list[Literal["limit_to_sleep", "sleep_to_reboot"]] = Field(default_factory=list)
    """Next tiers allowed for a machine flagged for ignoring a command, each sent once:
    "limit_to_sleep" (sleep a machine that ignored a power limit), "sleep_to_reboot" (reboot a
    stock Antminer or LuxOS machine that ignored a sleep, so it boots into the sleep its
    firmware stored). Empty (default): a flagged machine is only reported."""

    @field_validator("confirm_grace_s", mode="before")
    @classmethod
    def _grace_defaults(cls, value: object) -> object:
        """Keys "family" or "family.action", case-insensitive."""
        if not isinstance(value, dict):
            return value  # the field's own type rejects it
        out: dict[str, object] = {}
        for key, seconds in value.items():
            name = key.strip().casefold() if isinstance(key, str) else ""
            family, _, action = name.partition(".")
            if not family or (action and action not in _GRACE_ACTIONS):
                raise ValueError(f"confirm_grace_s: {key!r} is not a family name or "
                                 f"'family.action' (action one of {', '.join(_GRACE_ACTIONS)})")
            out[name] = seconds
        return out

    @field_validator("limit_restart_s", mode="before")
    @classmethod
    def _restart_defaults(cls, value: object) -> object:
        """Merge the operator's families over the defaults, each a finite 0..3600 s."""
        if not isinstance(value, dict):
            return value  # the field's own type rejects it
        out = dict(LIMIT_RESTART_S)
        for family, seconds in value.items():
            if not isinstance(family, str) or not family.strip():
                raise ValueError(f"limit_restart_s: family name {family!r} is not a name")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                    or not math.isfinite(seconds) or not 0.0 <= seconds <= 3600.0:
                raise ValueError(f"{family}: {seconds!r} is not a number of seconds from 0 "
                                 "to 3600 (the hashing a limit change costs)")
            out[family.strip().casefold()] = float(seconds)
        return out


def confirm_grace_s(cfg: GuardConfig, family: str, action: str, fallback_s: float) -> float:
    """The grace a machine of ``family`` gets to be seen in the state ``action`` asked for:
    the operator's ``confirm_grace_s``, else ``fallback_s`` (``verify_grace_s``) scaled by the
    family's factor (CONFIRM_GRACE_FACTORS)."""
    fam = (family or "").casefold()
    for key in (f"{fam}.{action}", fam):
        if key in cfg.confirm_grace_s:
            return cfg.confirm_grace_s[key]
    for key in (f"{fam}.{action}", fam):
        if key in CONFIRM_GRACE_FACTORS:
            return fallback_s * CONFIRM_GRACE_FACTORS[key]
    return fallback_s


def next_tier(action: str, r: MinerReading,
              cfg: GuardConfig) -> tuple[Action, Literal["reboot"] | None] | None:
    """The stronger command for a machine flagged for ignoring ``action``, where the operator
    allows it (``escalate``): (action, via) or None (left alone and reported)."""
    if action == "limit" and "limit_to_sleep" in cfg.escalate and r.supports_sleep:
        return "sleep", None
    if (action == "sleep" and "sleep_to_reboot" in cfg.escalate
            and r.firmware.casefold() in REBOOT_APPLIES_SLEEP):
        return "sleep", "reboot"
    return None


@dataclass(frozen=True, slots=True)
class MinerMemory:
    """What the journal knows about one machine (curtaild's own actions only).

    ``expected_action``/``expected_power_limit_w`` (optional) are the last command sent: while
    the observed state has not caught up with it, the guards do not send it again (the loop's
    verify step re-commands after its grace, then flags).
    """

    key: str
    curtailed_by_us: bool
    curtailed_action: Literal["sleep", "limit"] | None
    restore_power_limit_w: float | None
    last_change_at: float | None
    flagged: bool
    expected_action: Action | None = None
    expected_power_limit_w: float | None = None
    #: flagged, and its last try is ``[controller] flag_retry_s`` old: commanded once more if
    #: the policy still wants it (shown unflagged, and the last command is not "awaited")
    retry_due: bool = False
    #: when curtaild changed this machine's power limit within the last day (rule 6c)
    limit_changes_at: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class RampBucket:
    """Ramp tokens (W) left, and when they were counted; carried between ticks.
    ``shed_budget_w``: the sheds' own bucket (``shed_ramp_w_per_min``), None without one."""

    budget_w: float
    updated_at: float
    shed_budget_w: float | None = None

    def to_meta(self) -> dict[str, float]:
        """The journal's ``ramp_bucket`` meta value (and etcd's, through the state mirror)."""
        out = {"budget_w": self.budget_w, "updated_at": self.updated_at}
        if self.shed_budget_w is not None:
            out["shed_budget_w"] = self.shed_budget_w
        return out

    @classmethod
    def from_meta(cls, saved: object, now: float) -> RampBucket:
        """The bucket a restart (or a successor) resumes: never more than was left, so a
        restart does not reset the ramp; an empty one when nothing was saved."""
        if not isinstance(saved, dict):
            return cls(budget_w=0.0, updated_at=now)
        shed = saved.get("shed_budget_w")
        return cls(budget_w=float(saved.get("budget_w", 0.0)),
                   updated_at=float(saved.get("updated_at", now)),
                   shed_budget_w=None if shed is None else float(shed))


@dataclass(frozen=True, slots=True)
class GuardResult:
    commands: list[Command]
    held: dict[str, str]  # key -> why nothing was sent
    bucket: RampBucket
    effective: dict[str, Desired] = field(default_factory=dict)  # what curtaild steers toward


# ----------------------------------------------------------------------- internals
@dataclass(frozen=True, slots=True)
class _Step:
    """One command candidate, before the ramp and the command cap."""

    command: Command
    target: Desired
    shedding: bool
    order: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class _Hold:
    reason: str
    effective: Desired | None = None


_Plan = _Step | _Hold | Desired  # Desired: already there, nothing to send


def _excluded(r: MinerReading, cfg: GuardConfig) -> bool:
    names = {x.strip().casefold() for x in cfg.exclude}
    ids = (r.key, r.ip, r.mac, r.serial)
    return any(i is not None and i.casefold() in names for i in ids)


def _asleep_by_us(mem: MinerMemory | None) -> bool:
    """Only a machine curtaild itself slept may be woken; one curtaild merely limited and that
    is now asleep was slept by someone else."""
    return mem is not None and mem.curtailed_by_us and mem.curtailed_action in ("sleep", None)


def _observed(r: MinerReading, mem: MinerMemory | None, why: str) -> Desired:
    """The observed state as a Desired: what 'keep it as it is' means."""
    if r.state == "sleeping":
        return Desired(action="sleep", reason=why)
    ours = mem is not None and mem.curtailed_by_us and mem.curtailed_action == "limit"
    plate = r.nameplate_power_w
    limited = r.power_limit_w is not None and (
        ours or (plate is not None and r.power_limit_w < plate - limit_tolerance_w(plate)))
    if limited:
        return Desired(action="limit", reason=why, power_limit_w=r.power_limit_w)
    return Desired(action="run", reason=why)


def _untouchable(r: MinerReading, mem: MinerMemory | None, cfg: GuardConfig,
                 now: float, *, operator: bool = False) -> str | None:
    """Why nothing may be sent to ``r``; ``operator`` (a forced wish) may wake what an
    operator slept."""
    if _excluded(r, cfg):
        return "excluded by config (guards.exclude)"
    if r.state == "unreachable":
        return f"unreachable: {r.error or 'no answer'}"
    if r.error is not None and r.error.startswith("auth:"):
        # The firmware refuses our credentials: a command would be refused too, or worse
        # (stock Antminer) "succeed" without effect. Fix [fleet.credentials] (or the machine).
        return f"credentials refused ({r.error}); not commanded until they are accepted"
    age = now - r.observed_at
    if age > cfg.stale_reading_after_s:
        return f"reading stale: {age:.0f} s old (> {cfg.stale_reading_after_s:.0f} s)"
    if mem is not None and mem.flagged:
        return "flagged: did not obey repeated commands; not commanded until cleared"
    if r.state == "sleeping" and not _asleep_by_us(mem) and not operator:
        return "asleep by operator: curtaild never wakes a machine it did not put to sleep"
    return None


def market_staleness_s(market: MarketSnapshot | None, cfg: GuardConfig) -> float | None:
    """Seconds the market has been stale (past stale_market_after_s); None when fresh.

    ``None`` market (no inputs ever obtained) counts as stale for ever.
    """
    if market is None:
        return math.inf
    age = max(market.hashprice_age_s, market.tariff_age_s)
    return age - cfg.stale_market_after_s if age > cfg.stale_market_after_s else None


def _market_note(market: MarketSnapshot | None) -> str:
    if market is None:
        return "no market inputs"
    return (f"market inputs stale (hash price {market.hashprice_age_s:.0f} s old, "
            f"tariff {market.tariff_age_s:.0f} s old)")


def _stale_mode(market: MarketSnapshot | None, cfg: GuardConfig) -> Literal["fresh", "hold",
                                                                             "release"]:
    stale_for = market_staleness_s(market, cfg)
    if stale_for is None:
        return "fresh"
    if cfg.on_stale_market == "hold" and stale_for <= cfg.stale_hold_s:
        return "hold"
    return "release"


def _release_target(mem: MinerMemory | None, market: MarketSnapshot | None,
                    cfg: GuardConfig) -> Desired | None:
    if mem is None or not mem.curtailed_by_us:
        return None
    why = "hold" if cfg.on_stale_market == "hold" else "run"
    return Desired(action="run", reason=f"fail-safe ({why}): {_market_note(market)}; releasing "
                                        "what curtaild curtailed")


def _hysteresis(r: MinerReading, target: Desired, cfg: GuardConfig) -> str | None:
    band = cfg.hysteresis_usd_per_day
    if r.state == "mining" and target.action == "sleep":
        m = target.run_margin_usd_per_day
        if m is not None and m >= -band:
            return f"hysteresis: run margin {m:+.2f} USD/day not below -{band:.2f}; kept running"
    if r.state == "sleeping" and target.action in ("run", "limit"):
        m = target.run_margin_usd_per_day if target.action == "run" else target.margin_usd_per_day
        if m is None:
            m = target.margin_usd_per_day
        if m is not None and m <= band:
            return f"hysteresis: margin {m:+.2f} USD/day not above +{band:.2f}; kept asleep"
    return None


def _capability(r: MinerReading, target: Desired) -> str | None:
    if target.action == "sleep" and not r.supports_sleep:
        return f"cannot sleep: {r.firmware or 'this'} firmware has no sleep"
    if target.action == "limit" and (not r.supports_power_limit or target.power_limit_w is None):
        return f"cannot power-limit: {r.firmware or 'this'} firmware takes no power target"
    return None


def _full_power_w(r: MinerReading) -> float:
    return r.nameplate_power_w or r.max_power_limit_w or UNKNOWN_FULL_POWER_W


def _idle_w(r: MinerReading) -> float:
    return r.power_w if r.state == "sleeping" and r.power_w > 0 else IDLE_ESTIMATE_W


def _draw_w(r: MinerReading) -> float:
    """What a mining machine draws now (its full-power estimate when the reading has none)."""
    return r.power_w if r.power_w > 0 else _full_power_w(r)


def _restore_limit_w(r: MinerReading, mem: MinerMemory | None) -> float | None:
    if mem is None:
        return None
    return mem.restore_power_limit_w if mem.restore_power_limit_w is not None \
        else r.nameplate_power_w


def _wanted_limit_w(r: MinerReading, mem: MinerMemory | None) -> float | None:
    """The power limit a machine curtaild releases must get back, or None when there is none
    to send: the firmware takes no limit, or the reading shows the machine already at it.

    The limit recorded before curtaild's first curtailment, else nameplate (the power the
    policy's "run" means): never whatever limit the firmware kept from curtaild's own
    curtailments. A reading without a limit (firmware that reports none) gets nameplate sent,
    because the firmware may still hold curtaild's old limit."""
    if not r.supports_power_limit:
        return None
    want = mem.restore_power_limit_w if mem is not None else None
    if want is None:
        want = r.nameplate_power_w or r.max_power_limit_w
    if want is None:
        return None
    if r.power_limit_w is not None and abs(r.power_limit_w - want) <= limit_tolerance_w(want):
        return None
    return want


def _command(r: MinerReading, target: Desired, mem: MinerMemory | None) -> Command | None:
    """The command that takes r to target, or None when it is already there (level-trigger)."""
    def cmd(action: Action, limit: float | None, delta: float) -> Command:
        return Command(key=r.key, ip=r.ip, action=action, power_limit_w=limit,
                       reason=target.reason, delta_power_w=delta,
                       priority="emergency" if target.priority == "emergency" and delta < 0
                       else "normal")

    ours = mem is not None and mem.curtailed_by_us
    if target.action == "sleep":
        if r.state == "sleeping":
            return None
        return cmd("sleep", None, -max(0.0, _draw_w(r) - IDLE_ESTIMATE_W))
    if target.action == "limit":
        p = float(target.power_limit_w or 0.0)
        if r.state == "sleeping":
            return cmd("limit", p, p - _idle_w(r))
        current = r.power_limit_w if r.power_limit_w is not None else _draw_w(r)
        if abs(current - p) <= limit_tolerance_w(p):
            return None
        return cmd("limit", p, p - _draw_w(r))
    # run
    if r.state == "sleeping":  # only reached when asleep by us
        # Firmware keeps a power limit through sleep, and curtaild may have limited the machine
        # before it slept it: a plain resume would wake it at that stale limit, the wake would
        # release ownership, and the limit would pass for the operator's for good (issue 16).
        # So a wake carries the power curtaild wants back (the limit recorded before its first
        # curtailment, else nameplate) unless the machine reports being at it already.
        want = _wanted_limit_w(r, mem)
        return cmd("run", want, (want or _full_power_w(r)) - _idle_w(r))
    if not ours:
        return None  # running, and any limit on it is not curtaild's to change
    assert mem is not None
    if mem.curtailed_action == "limit":
        restore = _restore_limit_w(r, mem)
        return cmd("run", restore, 0.0 if restore is None else restore - _draw_w(r))
    # Ours (slept) yet observed running: if it runs at a limit other than the one curtaild
    # wants back (a wake that resumed at an older limit), it stays curtaild's until restored.
    want = _wanted_limit_w(r, mem)
    if want is not None and r.power_limit_w is not None:
        return cmd("run", want, want - _draw_w(r))
    # Nothing physical to do: release ownership.
    return cmd("run", None, 0.0)


def _day_cap_factor(n: int, cfg: GuardConfig) -> float:
    """What a new limit's restart is multiplied by after ``n`` changes in the last 24 h
    (rule 6c): 1 for the first half of max_limit_changes_per_day, then doubling with each
    change, so the last changes of a day go to the largest gains and not to the first small
    one of a morning (no cap: 1)."""
    cap = cfg.max_limit_changes_per_day
    free = cap // 2
    return 1.0 if cap <= 0 or n < free else 2.0 ** (n - free + 1)


def _limit_changes_today(mem: MinerMemory | None, now: float) -> list[float]:
    if mem is None:
        return []
    return [t for t in mem.limit_changes_at if t > now - LIMIT_CHANGE_WINDOW_S]


def _wake_within_day_cap(r: MinerReading, target: Desired, mem: MinerMemory | None,
                         cfg: GuardConfig, now: float) -> Desired:
    """Rule 6c for a sleeping machine: a wake is never held, but once the day's power-limit
    changes are spent, it wakes at the power curtaild restores (its limit from before
    curtaild, else nameplate) rather than at a new limit the policy priced for a price that
    is passing."""
    cap = cfg.max_limit_changes_per_day
    if (cap <= 0 or r.state != "sleeping" or target.action != "limit"
            or target.hold_margin_usd_per_day is None or target.power_limit_w is None):
        return target
    if r.power_limit_w is not None and abs(r.power_limit_w - target.power_limit_w) \
            <= limit_tolerance_w(target.power_limit_w):
        return target  # it wakes at that limit anyway: no change
    n = len(_limit_changes_today(mem, now))
    if n < cap:
        return target
    return replace(target, action="run", power_limit_w=None,
                   reason=f"{target.reason}; woken at full power instead: {n} limit changes in "
                          f"the last 24 h (max_limit_changes_per_day = {cap})")


def _is_change(r: MinerReading, c: Command) -> bool:
    """False for a pure ownership release of a machine already running unlimited."""
    return not (c.action == "run" and c.power_limit_w is None and r.state == "mining")


def _awaiting(c: Command, mem: MinerMemory | None) -> bool:
    """The same command was already sent and the machine has not caught up yet."""
    if mem is None or mem.expected_action != c.action or mem.retry_due:
        return False
    if c.power_limit_w is None or mem.expected_power_limit_w is None:
        return c.power_limit_w is None and mem.expected_power_limit_w is None
    return abs(c.power_limit_w - mem.expected_power_limit_w) <= limit_tolerance_w(c.power_limit_w)


def _dwell(mem: MinerMemory | None, cfg: GuardConfig, now: float) -> str | None:
    if mem is None or mem.last_change_at is None:
        return None
    since = now - mem.last_change_at
    if since < cfg.min_dwell_s:
        return f"min dwell: changed {since:.0f} s ago (< {cfg.min_dwell_s:.0f} s)"
    return None


def _limit_change(r: MinerReading, c: Command, target: Desired, mem: MinerMemory | None,
                  cfg: GuardConfig, now: float) -> str | None:
    """Rule 6b: why an economic power-limit change is not worth sending now (None: send).

    A new power target costs hashing (a Whatsminer restarts for ~2 min), so the change must pay
    for it: the band ignores limits close to the present one, ``limit_dwell_s`` spaces changes,
    and the gain over that horizon must exceed the margin the restart forgoes. Applies to a
    hashing machine given a new target for margin (``hold_margin_usd_per_day`` set); a wake,
    a layer's curtailment, an override, an emergency or a fail-safe release is not judged here.
    """
    hold, new_m = target.hold_margin_usd_per_day, target.margin_usd_per_day
    if r.state != "mining" or c.power_limit_w is None or hold is None or new_m is None:
        return None
    new_w = c.power_limit_w
    present_w = r.power_limit_w if r.power_limit_w is not None else _full_power_w(r)
    band_w = max(cfg.limit_band_w, cfg.limit_band_fraction * new_w)
    if c.action == "limit" and abs(new_w - present_w) <= band_w:
        return (f"limit band: {new_w:.0f} W is within {band_w:.0f} W of the present "
                f"{present_w:.0f} W; not worth a restart")
    if mem is not None and mem.last_change_at is not None:
        since = now - mem.last_change_at
        if since < cfg.limit_dwell_s:
            return (f"limit dwell: changed {since:.0f} s ago (< {cfg.limit_dwell_s:.0f} s "
                    f"between power-limit changes)")
    cap = cfg.max_limit_changes_per_day
    if cap > 0 and c.action == "limit":
        recent = _limit_changes_today(mem, now)
        if len(recent) >= cap:
            free_in = recent[-cap] + LIMIT_CHANGE_WINDOW_S - now
            return (f"limit changes: {len(recent)} in the last 24 h (max_limit_changes_per_day "
                    f"= {cap}); kept at {present_w:.0f} W for {free_in / 60:.0f} min more")
    restart_s = (r.switching.limit_restart_s if r.switching is not None
                 else cfg.limit_restart_s.get(r.firmware.casefold(), 0.0))
    horizon_s = max(cfg.limit_dwell_s, cfg.min_dwell_s)
    gain = new_m - hold
    gain_usd = gain * horizon_s / 86400.0
    cost_usd = max(0.0, new_m - (target.sleep_margin_usd_per_day or 0.0)) * restart_s / 86400.0
    scarce = _day_cap_factor(len(_limit_changes_today(mem, now)), cfg) \
        if c.action == "limit" else 1.0
    cost_usd *= scarce
    if gain_usd <= cost_usd:
        times = f" x {scarce:.0f} (the day's limit changes run short)" if scarce > 1 else ""
        return (f"limit change does not pay for its restart: {gain:+.3f} USD/day over "
                f"{horizon_s:.0f} s = {gain_usd:.4f} USD <= {restart_s:.0f} s of "
                f"{r.firmware} restart{times} = {cost_usd:.4f} USD; kept at {present_w:.0f} W")
    return None


def _order(r: MinerReading, target: Desired, shedding: bool) -> tuple[float, ...]:
    """Sort key: emergency sheds, then shedding worst margin per watt (worst J/TH) first, then
    restoring best J/TH first."""
    jth = r.efficiency_j_per_th
    if shedding and target.priority == "emergency":
        return (-1.0, -(jth if jth is not None else -math.inf), 0.0)
    if shedding:
        m = target.run_margin_usd_per_day
        per_w = m / r.power_w if m is not None and r.power_w > 0 else math.inf
        return (0.0, per_w, -(jth if jth is not None else -math.inf))
    return (1.0, jth if jth is not None else math.inf, 0.0)


def _plan(r: MinerReading, want: Desired | None, mem: MinerMemory | None,
          market: MarketSnapshot | None, mode: str, cfg: GuardConfig, now: float) -> _Plan:
    """Every per-machine rule; the ramp and the command cap come after, fleet-wide."""
    priority = want.priority if want is not None else "normal"
    urgent = priority in ("forced", "emergency")
    why = _untouchable(r, mem, cfg, now, operator=priority == "forced")
    if why is not None:
        keep = r.state != "unreachable" and why.startswith("asleep by operator")
        return _Hold(why, _observed(r, mem, why) if keep else None)
    if urgent:
        mode = "fresh"  # price-independent: neither held nor released by the fail-safe
    if mode == "hold":
        why = f"{_market_note(market)}: holding every machine as it is"
        return _Hold(why, _observed(r, mem, why))
    release = mode == "release"
    target = _release_target(mem, market, cfg) if release else want
    if target is None:
        why = (f"{_market_note(market)}: no new curtailment" if release
               else "policy has no opinion")
        return _Hold(why, _observed(r, mem, why))
    why = _capability(r, target) or (
        None if release or urgent else _hysteresis(r, target, cfg))
    if why is not None:
        return _Hold(why, _observed(r, mem, why))
    if not (release or urgent):
        target = _wake_within_day_cap(r, target, mem, cfg, now)
    c = _command(r, target, mem)
    if c is None:
        kept = _observed(r, mem, "")
        if target.action == "run" and kept.action == "limit":
            why = (f"running under a power limit curtaild did not set "
                   f"({kept.power_limit_w:.0f} W): left as is")
            return _Hold(why, replace(kept, reason=why))
        return target
    if not _is_change(r, c) and r.command_state == "pending" and r.commanded_action == "sleep":
        # Ours, observed running, and our sleep acknowledged but not in effect yet:
        # a stock Antminer writes it for ~20 s and then reboots into it. Releasing ownership
        # now sends nothing, the release verifies at once, and when the sleep lands the machine
        # is asleep and nobody's: "asleep by operator", never woken (a failover as the margin
        # returned stranded 26 of 100, bench/failover.py). Held until the verify step sees it
        # in effect (then woken like any machine of ours) or its grace ends (then a mismatch).
        why = ("awaiting verification: commanded to sleep, acknowledged, not in effect yet "
               "(released once it is)")
        return _Hold(why, _observed(r, mem, why))
    if _is_change(r, c):
        if _awaiting(c, mem):
            why = f"awaiting verification: already commanded to {c.action}"
        else:
            why = None if urgent else _dwell(mem, cfg, now)
            if why is None and not (urgent or release):
                why = _limit_change(r, c, target, mem, cfg, now)
        if why is not None:
            return _Hold(why, _observed(r, mem, why))
    shedding = c.delta_power_w < 0
    return _Step(c, target, shedding, _order(r, target, shedding))


def refill(bucket: RampBucket, cfg: GuardConfig, capacity_w: float, now: float,
           shed_capacity_w: float | None = None) -> RampBucket:
    """Add ramp/60 W per elapsed second, up to capacity (a clock going back adds nothing); the
    sheds' bucket likewise at shed_ramp/60, when there is one."""
    elapsed = max(0.0, now - bucket.updated_at)
    budget = min(capacity_w, bucket.budget_w + cfg.ramp_w_per_min / 60.0 * elapsed)
    shed: float | None = None
    if cfg.shed_ramp_w_per_min is not None:
        cap = shed_capacity_w if shed_capacity_w is not None else cfg.shed_ramp_w_per_min
        held = bucket.shed_budget_w if bucket.shed_budget_w is not None else 0.0
        shed = max(0.0, min(cap, held + cfg.shed_ramp_w_per_min / 60.0 * elapsed))
    return RampBucket(budget_w=max(0.0, budget), updated_at=now, shed_budget_w=shed)


def _admit(steps: list[_Step], bucket: RampBucket, cfg: GuardConfig,
           now: float) -> tuple[list[_Step], dict[str, str], RampBucket]:
    """Spend the bucket(s) in order; stop at the first that does not fit; cap the count."""
    own_shed = cfg.shed_ramp_w_per_min is not None
    restores = [abs(s.command.delta_power_w) for s in steps if not (own_shed and s.shedding)]
    sheds = [abs(s.command.delta_power_w) for s in steps if s.shedding]
    capacity = max([cfg.ramp_w_per_min, *restores])
    shed_capacity = (max([cfg.shed_ramp_w_per_min, *sheds])
                     if cfg.shed_ramp_w_per_min is not None else None)
    bucket = refill(bucket, cfg, capacity, now, shed_capacity)
    budget = bucket.budget_w
    shed_budget = bucket.shed_budget_w
    sent: list[_Step] = []
    held: dict[str, str] = {}
    blocked = False
    counted = 0
    for s in sorted(steps, key=lambda s: s.order):
        need = abs(s.command.delta_power_w)
        if s.shedding and s.target.priority == "emergency":
            # Not rate-limited, spends no ramp tokens and takes no slot of the command cap:
            # a demand-response event or an overheating fleet must be shed in one tick.
            sent.append(s)
            continue
        from_shed = own_shed and s.shedding
        have = shed_budget if from_shed and shed_budget is not None else budget
        rate = cfg.shed_ramp_w_per_min if from_shed else cfg.ramp_w_per_min
        if need > 0 and (blocked or need > have):
            blocked = True
            held[s.command.key] = (f"ramp limit: needs {need:.0f} W, {have:.0f} W available "
                                   f"({rate:.0f} W/min{' for sheds' if from_shed else ''})")
        elif counted >= cfg.max_commands_per_tick:
            held[s.command.key] = f"command cap: {cfg.max_commands_per_tick} per tick"
        else:
            if from_shed and shed_budget is not None:
                shed_budget -= need
            else:
                budget -= need
            counted += 1
            sent.append(s)
    return sent, held, replace(bucket, budget_w=budget, shed_budget_w=shed_budget)


def apply_guards(
    fleet: FleetSnapshot,
    market: MarketSnapshot | None,
    desired: dict[str, Desired],
    memory: dict[str, MinerMemory],
    bucket: RampBucket,
    cfg: GuardConfig,
    now: float,
) -> GuardResult:
    """Turn the policy's wishes into the commands that are safe to send this tick.

    ``market`` None means no market inputs were ever obtained: stale for ever, so curtaild's
    own curtailment is released (within the ramp) and nothing new is curtailed.
    """
    mode = _stale_mode(market, cfg)
    held: dict[str, str] = {}
    effective: dict[str, Desired] = {}
    steps: list[_Step] = []
    by_key = fleet.by_key()
    for key, r in by_key.items():
        mem = memory.get(key)
        plan = _plan(r, desired.get(key), mem, market, mode, cfg, now)
        if isinstance(plan, _Hold):
            held[key] = plan.reason
            if plan.effective is not None:
                effective[key] = plan.effective
        elif isinstance(plan, _Step):
            steps.append(plan)
        else:
            effective[key] = plan
    sent, waiting, bucket = _admit(steps, bucket, cfg, now)
    for s in steps:
        key = s.command.key
        if key in waiting:
            held[key] = waiting[key]
            effective[key] = _observed(by_key[key], memory.get(key), waiting[key])
        else:
            effective[key] = s.target
    return GuardResult(commands=[s.command for s in sent], held=held, bucket=bucket,
                       effective=effective)
