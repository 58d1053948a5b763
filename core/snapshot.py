"""Immutable snapshots that flow through one tick: observe -> decide -> guard -> act -> export.

Everything downstream of observation (policies, guards, metrics, MQTT) reads these frozen
values and nothing else, so a decision can be replayed and a scrape never touches a miner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from curtaild.core.switching import SwitchingCosts

#: What the controller believes a machine is doing, from the last observation.
ObservedState = Literal["mining", "sleeping", "unreachable"]
#: What a policy wants: hash at full power, hash under a power limit, or sleep.
Action = Literal["run", "limit", "sleep"]
#: How hard a wish pushes through the guards (see controller/guards.py):
#: "normal" -- every guard applies; "forced" -- an operator override (no hysteresis, no dwell,
#: may wake a machine an operator slept, still ramped); "emergency" -- safety or a
#: demand-response shed (no hysteresis, no dwell, no ramp for shedding, acts on stale markets).
Priority = Literal["normal", "forced", "emergency"]
#: Where a power figure came from; stock Antminers report none, so a fallback chain exists.
#: "pdu": measured at its PDU outlet (controller/site.py), ahead of the firmware's own figure.
PowerSource = Literal["pdu", "firmware", "override", "model_table", "nameplate",
                      "idle_estimate", "none"]
#: Where curtaild's last command to a machine stands (controller/loop.py, issue 14): "pending"
#: -- sent and acknowledged, not yet seen in effect, within its family's grace; "transitioning"
#: -- pending and silent (the miner process restarts after our own command: expected, not a
#: fault); "confirmed" -- seen in effect; "failed" -- not acknowledged (refused, no answer, or
#: read back otherwise); "lying" -- flagged: acknowledged again and again and never in effect.
CommandState = Literal["pending", "transitioning", "confirmed", "failed", "lying"]
COMMAND_STATES: tuple[str, ...] = ("pending", "transitioning", "confirmed", "failed", "lying")


@dataclass(frozen=True, slots=True)
class MinerReading:
    """One observation of one machine, with its age and errors."""

    key: str  # stable identity: MAC, else serial, else ip (never changes with DHCP in practice)
    ip: str
    make: str
    model: str
    firmware: str  # pyasic backend family, e.g. "antminer", "whatsminer", "luxos", "bitaxe"
    state: ObservedState
    hashrate_ths: float  # 0.0 when unknown or unreachable
    power_w: float  # best estimate, see power_source
    power_source: PowerSource
    power_limit_w: float | None  # firmware-reported limit, if any
    temp_c: float | None  # hottest chip/board temperature
    fan_rpm: tuple[int, ...] = ()
    nameplate_hashrate_ths: float | None = None
    nameplate_power_w: float | None = None
    supports_sleep: bool = True
    supports_power_limit: bool = False
    min_power_limit_w: float | None = None
    max_power_limit_w: float | None = None
    observed_at: float = 0.0  # unix seconds
    error: str | None = None
    mac: str | None = None
    serial: str | None = None
    #: where curtaild's last command to it stands; None: nothing outstanding. Set by the loop
    #: from the journal before deciding: a policy never counts an unconfirmed shed as done.
    command_state: CommandState | None = None
    #: what that command asked for (the journal's expectation), with its power limit
    commanded_action: Action | None = None
    commanded_power_limit_w: float | None = None
    #: what changing this machine costs (boot and ramp after a wake, restart on a new power
    #: limit: core/switching.py), set by the loop from [guards] limit_restart_s and by
    #: the backtest's machines; None: the table's figures for its family and model
    switching: SwitchingCosts | None = None
    #: the electrical phase feeding it ("L1" | "L2" | "L3"; site map), None when not placed:
    #: sheds and restores keep the phases within ``FleetSnapshot.max_phase_imbalance_w``
    phase: str | None = None
    #: the PDU outlet ("<pdu>/<n>") the hard power-down tier would switch off (or keep off) if
    #: every machine on it were shed, set by the controller only where every rule of the tier
    #: allows it now (opted in, outlet state known, cycles left, nothing unseen on it, firmware
    #: sleep tried first: controller/outlets.py); None: its outlet is not a way to shed it.
    #: Machines sharing the outlet carry the same value and are shed together.
    outlet: str | None = None

    @property
    def efficiency_j_per_th(self) -> float | None:
        """J/TH now, or at nameplate when not hashing (what a restore would cost)."""
        if self.hashrate_ths > 0 and self.power_w > 0 and self.state == "mining":
            return self.power_w / self.hashrate_ths
        if self.nameplate_hashrate_ths and self.nameplate_power_w:
            return self.nameplate_power_w / self.nameplate_hashrate_ths
        return None


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    miners: tuple[MinerReading, ...]
    taken_at: float  # unix seconds
    #: measured site power when the site has a meter or PDUs (controller/site.py), W; None:
    #: only the machines' own figures are known. The power cap judges compliance on it.
    site_power_w: float | None = None
    site_power_source: str = "estimate"  # "meter" | "pdu" | "estimate"
    #: the site's limit on the spread between its most and least loaded phase, W
    #: ([inventory] max_phase_imbalance_w); None: phases are not balanced
    max_phase_imbalance_w: float | None = None

    def by_key(self) -> dict[str, MinerReading]:
        return {m.key: m for m in self.miners}


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """The prices behind a decision, each with its source and age."""

    hashprice_usd_per_th_day: float
    hashprice_source: str
    hashprice_age_s: float
    tariff_usd_per_kwh: float
    tariff_source: str
    tariff_age_s: float
    pool_fee: float = 0.0
    #: tariff for the coming hours (start unix s, usd/kWh), for scheduled policies
    tariff_forecast: tuple[tuple[float, float], ...] = ()
    #: a site power cap in force now (demand response), if any
    power_cap_w: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # per source: its JSON-like details


@dataclass(frozen=True, slots=True)
class Desired:
    """A policy's wish for one machine, with the numbers and words behind it."""

    action: Action
    reason: str
    power_limit_w: float | None = None  # for "limit"
    margin_usd_per_day: float | None = None  # margin of the chosen action
    run_margin_usd_per_day: float | None = None  # margin if it ran at full power
    priority: Priority = "normal"
    #: Margin if the machine is left as it is (its present power limit, or full power), on the
    #: same model as ``margin_usd_per_day``: what a power-limit change gains is the difference.
    #: Set by an economic policy only; None (a layer's curtailment, an override) exempts the
    #: wish from the guards' limit-change economics (controller/guards.py, rule 6b).
    hold_margin_usd_per_day: float | None = None
    #: Margin asleep (idle draw): a restart forgoes ``margin_usd_per_day`` down to this.
    sleep_margin_usd_per_day: float | None = None


@dataclass(frozen=True, slots=True)
class Override:
    """An operator's forced state for one miner (from MQTT or the CLI), until it expires."""

    key: str  # miner id: MAC or serial (IP only for firmware that reports neither)
    action: Literal["run", "sleep"]
    until: float | None  # unix seconds; None = until cleared
    source: str  # who asked, e.g. "mqtt:<command id>"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Directives:
    """Inbound instructions in force at one tick: a demand-response cap, operator overrides,
    and whether automation is paused. Price-independent, so they apply even when the market
    inputs are stale or missing."""

    power_cap_w: float | None = None  # demand-response event target for site power, W
    power_cap_event_id: str | None = None
    power_cap_until: float | None = None  # unix seconds
    overrides: tuple[Override, ...] = ()
    automation_paused: bool = False


@dataclass(frozen=True, slots=True)
class Command:
    """What the act stage sends: one idempotent command to one machine."""

    key: str
    ip: str
    action: Action  # "sleep" -> stop_mining, "run" -> resume_mining (+ restore limit), "limit"
    power_limit_w: float | None
    reason: str
    delta_power_w: float  # expected change in site power, negative when shedding
    #: "emergency" sheds (thermal, demand response) are exempt from the ramp and the per-tick
    #: command cap; see controller/guards.py
    priority: Priority = "normal"
    #: 0: the command as decided; 1: the next tier, sent once to a machine flagged for ignoring
    #: tier 0 ([guards] escalate; controller/guards.py next_tier)
    tier: int = 0
    #: how the driver reaches ``action``: None, the family's usual command; "reboot": reboot the
    #: control board, which boots into the state its firmware stored (a stock Antminer that
    #: stored sleep and kept hashing)
    via: Literal["reboot"] | None = None
