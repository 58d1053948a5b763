"""The reconcile loop: observe -> decide -> guard -> act -> (next tick) verify.

Level-triggered like a Kubernetes controller: each tick compares what the policy wants with
what was observed and sends only what differs, so a missed tick, a lost reply or a restart
heals itself on the next one. The journal is written before every command and after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from curtaild.controller.config import Config
from curtaild.controller.guards import (
    IDLE_ESTIMATE_W,
    GuardResult,
    RampBucket,
    apply_guards,
    confirm_grace_s,
    limit_tolerance_w,
    limit_window_s,
    memory_window_s,
    next_tier,
)
from curtaild.controller.inventory import parse_group
from curtaild.controller.journal import Expectation, Journal, JournalError
from curtaild.controller.market import MarketInputs
from curtaild.controller.site import Site, SiteView
from curtaild.core import economics, switching
from curtaild.core.snapshot import (
    Command,
    CommandState,
    Desired,
    Directives,
    FleetSnapshot,
    MarketSnapshot,
    MinerReading,
)
from curtaild.drivers.miners import CommandFailed, MinerDriver
from curtaild.policies.compose import decide_stack

log = logging.getLogger("curtaild.loop")

@dataclass(frozen=True)
class TickResult:
    """Everything one tick saw and did: the immutable snapshot metrics and MQTT export."""

    started_at: float
    duration_s: float
    fleet: FleetSnapshot
    market: MarketSnapshot | None
    desired: dict[str, Desired]
    effective: dict[str, Desired]
    held: dict[str, str]
    commands: tuple[Command, ...]
    outcomes: dict[str, str]  # key -> "ok: ..." | "failed: ..." | "dry-run"
    dry_run: bool
    verification: dict[str, str] = field(default_factory=dict)  # key -> verified|mismatch|flagged
    directives: Directives = field(default_factory=Directives)
    fast: bool = False  # decided on the previous observation (an inbound command)
    #: PDUs, meter, placements and outlet actions (controller/site.py); None: no site config
    site: SiteView | None = None

    def command_states(self) -> dict[str, int]:
        """Machines by where curtaild's last command to them stands (pending, transitioning,
        confirmed, failed, lying); machines with nothing outstanding are not counted."""
        out: dict[str, int] = {}
        for m in self.fleet.miners:
            if m.command_state is not None:
                out[m.command_state] = out.get(m.command_state, 0) + 1
        return out


def matches_expectation(expect_action: str, expect_limit: float | None,
                        r: MinerReading) -> bool:
    """Is the machine in the state the last command asked for? (Limits within the guards'
    tolerance count as reached.)"""
    if expect_action == "sleep":
        return r.state == "sleeping"
    if r.state != "mining":
        return False
    if expect_limit is not None and r.power_limit_w is not None:
        return abs(r.power_limit_w - expect_limit) <= limit_tolerance_w(expect_limit)
    return True


def with_switching_costs(fleet: FleetSnapshot,
                         limit_restart_s: dict[str, float]) -> FleetSnapshot:
    """``fleet`` with what changing each machine costs (core/switching.py, the restart
    per family from ``[guards] limit_restart_s``): the policy weighs it before a change, the
    same figure the guards' payback rule uses."""
    miners = tuple(m if m.switching is not None else replace(
        m, switching=switching.costs_for(m.firmware, m.model, limit_restart_s=limit_restart_s))
        for m in fleet.miners)
    return replace(fleet, miners=miners)


def predicted(last: TickResult) -> FleetSnapshot:
    """``last``'s fleet as its successful commands should have left it: what a fast tick
    decides on. A slept machine asleep, a woken or limited one mining at its target (hashrate
    from the nameplate along the efficiency curve), so the guards neither undo nor repeat
    them. Acknowledged is not confirmed (issue 14: a stock Antminer may store a sleep and keep
    hashing): each is "pending", and its power stays what was last *observed* until the next
    regular tick sees it in effect -- a shed is never counted as done on the firmware's word,
    and a wake counts its full draw at once. The next regular tick observes the truth and
    verifies; a command that did not take is re-sent from there."""
    if last.dry_run:
        return last.fleet
    sent = {c.key: c for c in last.commands
            if last.outcomes.get(c.key, "").startswith("ok")}
    if not sent:
        return last.fleet
    miners = []
    for r in last.fleet.miners:
        c = sent.get(r.key)
        if c is not None and c.action == "sleep":
            # power_w kept: a sleeping reading's draw is what the power cap counts for it
            # (policies/layer.idle_w), so an unconfirmed sleep still draws what it drew
            r = replace(r, state="sleeping", hashrate_ths=0.0, command_state="pending",
                        commanded_action="sleep", commanded_power_limit_w=None,
                        power_w=r.power_w if r.power_w > 0 else IDLE_ESTIMATE_W)
        elif c is not None:
            plate_w = r.nameplate_power_w or r.power_w
            target_w = c.power_limit_w or plate_w
            hashrate = r.nameplate_hashrate_ths or r.hashrate_ths
            if plate_w and target_w < plate_w and r.nameplate_hashrate_ths:
                hashrate = economics.hashrate_at_power_ths(
                    power_w=target_w, ref_power_w=plate_w,
                    ref_hashrate_ths=r.nameplate_hashrate_ths, idle_power_w=IDLE_ESTIMATE_W,
                    exponent=0.75)
            drawn_w = r.power_w if r.state == "mining" else 0.0  # a lower target: unconfirmed
            r = replace(r, state="mining", power_w=max(target_w, drawn_w), hashrate_ths=hashrate,
                        power_limit_w=c.power_limit_w if c.power_limit_w else r.power_limit_w,
                        command_state="pending", commanded_action=c.action,
                        commanded_power_limit_w=c.power_limit_w)
        miners.append(r)
    return replace(last.fleet, miners=tuple(miners))


def command_states(fleet: FleetSnapshot, expectations: dict[str, Expectation],
                   verification: dict[str, str]) -> dict[str, CommandState]:
    """Where curtaild's last command to each machine stands (controller/snapshot.CommandState).

    "transitioning": silent right after our own command (the driver's reading says so);
    "lying": flagged; otherwise the journal's state: "confirmed" (seen in effect, or verified
    this tick), "pending" (acknowledged, not yet seen in effect) or "failed" (refused, no
    answer, or no outcome journaled). Machines with nothing outstanding are absent."""
    out: dict[str, CommandState] = {}
    for m in fleet.miners:
        if m.state == "unreachable" and (m.error or "").startswith("transitioning"):
            out[m.key] = "transitioning"
            continue
        exp = expectations.get(m.key)
        if exp is not None:
            if exp.flagged:
                out[m.key] = "lying"
            elif exp.state in ("confirmed", "pending"):
                out[m.key] = exp.state  # type: ignore[assignment]
            else:
                out[m.key] = "failed"
        elif verification.get(m.key) == "verified":
            out[m.key] = "confirmed"  # a verified wake: its expectation is done
    return out


class Fence:
    """What a leader of a cluster checks before it commands (controller/cluster.py); alone,
    the Reconciler has none and commands as before."""

    async def confirm(self) -> str | None:
        """Before a batch, once its intents are journaled: None to send it, else why not
        (this instance does not hold a confirmed lease, or the state a successor needs could not
        be shared first)."""
        return None

    def remaining_s(self) -> float:
        """How long the lease is known to hold: no command starts after, none runs past it."""
        return float("inf")


def _capped(commands: list[Command], cap: int) -> list[Command]:
    """At most ``cap`` commands per tick, emergency sheds exempt (the guards' rule)."""
    out: list[Command] = []
    counted = 0
    for c in commands:
        if c.priority == "emergency":
            out.append(c)
        elif counted < cap:
            out.append(c)
            counted += 1
    return out


class Reconciler:
    """One site's controller state: config, policy, journal, drivers and the ramp bucket."""

    def __init__(self, config: Config, journal: Journal, driver: MinerDriver,
                 market: MarketInputs, policy,
                 directives: Callable[[float], Directives] | None = None,
                 site: Site | None = None):
        self.config = config
        #: PDUs, meter and the hard power-down tier (controller/site.py); None: none configured
        self.site = site
        #: inbound instructions in force at a time (MQTT bridge); none by default
        self.directives: Callable[[float], Directives] = directives or (lambda _now: Directives())
        self.journal = journal
        self.driver = driver
        # the operator's LuxOS ATM settings curtaild turned off survive a restart (journal)
        if hasattr(driver, "attach_journal"):
            driver.attach_journal(journal)
        self.market = market
        self.policy = policy
        self.bucket = RampBucket.from_meta(journal.get_meta("ramp_bucket"), time.time())
        self.last: TickResult | None = None
        #: [cluster]: the leader's lease, checked before each batch and each command
        self.fence: Fence | None = None
        # The driver treats silence after our own command as "transitioning" for as long as
        # the family's grace (guards.confirm_grace_s; read at each use, so a reload applies).
        setter = getattr(driver, "set_transition_grace", None)
        if setter is not None:
            setter(self.grace_s)

    def grace_s(self, family: str, action: str) -> float:
        """How long a machine of ``family`` gets to be seen in the state ``action`` asked for."""
        return confirm_grace_s(self.config.guards, family, action,
                               self.config.controller.verify_grace_s)

    def swap(self, config: Config, policy) -> None:
        """Atomically replace config and policy (SIGHUP); called between ticks."""
        self.config = config
        self.policy = policy
        self.driver.reconfigure(config.fleet)

    # ------------------------------------------------------------------- tick
    async def tick(self, *, send: bool = True, fast: bool = False) -> TickResult:
        """One reconcile pass. ``fast`` (an inbound directive: a demand-response event, an
        override) decides on the last observation and the cached market quotes instead of
        polling every miner and source first, so the commands go out in well under a second;
        the next regular tick observes and verifies them as usual."""
        started = time.time()
        fast = fast and self.last is not None
        if fast:
            assert self.last is not None
            # The last observation with our own last commands applied: deciding on readings
            # that predate them would undo them (a release right after a shed would see every
            # machine still running and restore nothing).
            fleet = predicted(self.last)
            market = self.market.cached(started)
            site_view = self.last.site
        else:
            site_view = None
            if self.site is not None:  # PDUs and meter alongside the miners' sweep
                fleet, (pdus, meter) = await asyncio.gather(self.driver.observe(),
                                                            self.site.observe())
                site_view = self.site.view(pdus, meter, time.time())
                fleet = self.site.apply(fleet, site_view)
            else:
                fleet = await self.driver.observe()
            market = await self.market.snapshot(started)
        now = time.time()
        verification = self._verify(fleet, now) if send and not fast else {}
        # Where each machine's last command stands, before deciding: a policy must not count
        # an unconfirmed shed as done (policies/power_cap.py), nor pick its machine again.
        fleet = self._with_command_states(fleet, verification)
        fleet = with_switching_costs(fleet, self.config.guards.limit_restart_s)
        directives = self.directives(now)
        guard_cfg = self.config.guards
        if self.site is not None:  # "rack:R01" / "container:C1" in exclusions and overrides
            directives = self.site.expand_overrides(directives, fleet)
            if any(parse_group(x) for x in guard_cfg.exclude):
                guard_cfg = guard_cfg.model_copy(update={"exclude": self.site.expand_groups(
                    list(guard_cfg.exclude), fleet)})
        # a demand-response event is the cap in force (not merely active above a lower
        # fixed cap): only then may hard_power.emergency_skips_sleep cut a hashing machine
        cap = getattr(self.policy, "power_cap", None)
        if cap is not None:
            in_force = cap.cap_in_force(now, directives)
            dr_active = in_force is not None and in_force.demand_response
        else:
            dr_active = directives.power_cap_w is not None
        excluded = frozenset(k.strip().casefold() for k in guard_cfg.exclude)
        if self.site is not None and site_view is not None:
            # which machines that cannot sleep the power cap may shed at their outlet
            fleet = self.site.mark_outlets(fleet, site_view, now, dr_active=dr_active,
                                           excluded=excluded)
        site, marked = self.site, fleet
        hook = None if site is None else (lambda d: site.wishes(marked, market, d))
        desired = decide_stack(self.policy, fleet, market, directives, now, base_hook=hook)
        if market is None and not desired:
            guarded = GuardResult(commands=[], held={m.key: "no market inputs yet"
                                                     for m in fleet.miners},
                                  bucket=self.bucket, effective={})
        else:
            memory = self.journal.memory(dwell_s=memory_window_s(self.config.guards),
                                         now=now,
                                         flag_retry_s=self.config.controller.flag_retry_s,
                                         limit_window_s=limit_window_s(self.config.guards))
            guarded = apply_guards(fleet, market, desired, memory, self.bucket,
                                   guard_cfg, now)
        commands = self._with_recommands(guarded.commands, fleet, verification, guarded.held)
        commands = _capped(commands, self.config.guards.max_commands_per_tick)
        held = guarded.held
        outlet_plan = None
        if self.site is not None and site_view is not None:
            # the hard power-down tier: no firmware command to a machine behind an outlet
            # curtaild switches or keeps off (controller/outlets.py)
            outlet_plan = self.site.plan(
                fleet, desired, site_view, now, dr_active=dr_active, excluded=excluded,
                fast=fast)
            commands = [c for c in commands if c.key not in outlet_plan.suppressed]
            # phase balance ([inventory] max_phase_imbalance_w): firmware sleeps and wakes too
            commands, waiting = self.site.balance_commands(commands, fleet, outlet_plan)
            held = {**guarded.held, **outlet_plan.held, **waiting}
        dry_run = self.config.controller.dry_run or not send
        outcomes: dict[str, str] = {}
        if send:
            self.bucket = guarded.bucket
            journal_error: str | None = None
            try:
                self.journal.set_meta("ramp_bucket", self.bucket.to_meta())
            except JournalError as exc:
                journal_error = str(exc)  # then no intent can be written either: send nothing
            outcomes = await self._act(commands, fleet, dry_run=dry_run,
                                       journal_error=journal_error)
            if self.site is not None and outlet_plan is not None and site_view is not None:
                # A leader's outlet switches are fenced like its firmware commands: none
                # after its lease may have lapsed (a successor may be switching already).
                refused = (await self.fence.confirm() if self.fence is not None
                           and not dry_run and outlet_plan.actions else None)
                if refused is None and self.fence is not None and not dry_run \
                        and outlet_plan.actions and self.fence.remaining_s() <= 0:
                    refused = "the leadership lease is not confirmed"
                if refused is None:
                    site_view = replace(site_view, plan=outlet_plan,
                                        outcomes=await self.site.act(outlet_plan,
                                                                     dry_run=dry_run))
                else:
                    log.warning("%d outlet actions not sent: %s", len(outlet_plan.actions),
                                refused)
            if commands and not dry_run:
                fleet = self._with_command_states(fleet, verification)  # sent -> pending/failed
        result = TickResult(
            started_at=started,
            duration_s=time.time() - started,
            fleet=fleet,
            market=market,
            desired=desired,
            effective=guarded.effective,
            held=held,
            commands=tuple(commands),
            outcomes=outcomes,
            dry_run=dry_run,
            verification=verification,
            directives=directives,
            fast=fast,
            site=self.site.finish(site_view, fleet, outlet_plan) if self.site is not None
            and site_view is not None else None,
        )
        if send:
            self.last = result
        return result

    # ----------------------------------------------------------------- verify
    def _verify(self, fleet: FleetSnapshot, now: float) -> dict[str, str]:
        """Compare each outstanding expectation with what was just observed.

        A command is "pending" from its acknowledgement (``acked_at``; its sending when it was
        not acknowledged) for its family's grace (guards.confirm_grace_s): not judged, not
        re-sent, whatever it looks like meanwhile -- a stock Antminer restarts bmminer and
        boots, a Whatsminer restarts btminer for a limit. After the grace it is a mismatch
        (re-commanded: at most once per grace, since each mismatch restarts the clock) and,
        after ``flag_after_failures``, flagged. A next tier ([guards] escalate) gets one grace:
        flagged at its first failure. A silent machine is never judged (its reading is
        "unreachable"; "transitioning" right after our own command)."""
        by_key = fleet.by_key()
        cfg = self.config.controller
        out: dict[str, str] = {}
        curtailed = self.journal.curtailed()
        expectations = self.journal.expectations()
        for key, exp in expectations.items():
            r = by_key.get(key)
            if r is None or r.state == "unreachable":
                continue
            if matches_expectation(exp.action, exp.power_limit_w, r):
                row = curtailed.get(key)
                if exp.state != "confirmed" or exp.failures or exp.flagged or (
                    exp.action == "run" and (row is None or row.releasing)
                ):
                    self.journal.mark_verified(key, r.ip, exp.action, now)
                    out[key] = "verified"
                continue
            if exp.flagged:
                continue
            since = max(exp.since, exp.acked_at or 0.0)
            if now - since < self.grace_s(r.firmware, exp.action):
                continue  # pending: acknowledged (or sent), not yet in effect
            flag_after = 1 if exp.tier else cfg.flag_after_failures
            n = self.journal.mark_mismatch(key, r.ip, exp.action, r.state,
                                           flag_after=flag_after, now=now)
            out[key] = "flagged" if n >= flag_after else "mismatch"
            log.warning("%s (%s) did not reach %s (observed %s): failure %d of %d%s",
                        key, r.ip, exp.action, r.state, n, flag_after,
                        " (next tier)" if exp.tier else "")
        # A released machine seen running with no expectation left (crash in between).
        for key, row in curtailed.items():
            r = by_key.get(key)
            if row.releasing and r is not None and r.state == "mining" and key not in out:
                if key not in expectations:
                    self.journal.release_ownership(key, "observed running after release", now)
        return out

    def _with_command_states(self, fleet: FleetSnapshot,
                             verification: dict[str, str]) -> FleetSnapshot:
        """``fleet`` with each reading's ``command_state`` from the journal (see
        controller/snapshot.CommandState); readings that already say it are kept as they are."""
        expectations = self.journal.expectations()
        states = command_states(fleet, expectations, verification)
        if not states and not any(m.command_state for m in fleet.miners):
            return fleet
        miners = []
        for m in fleet.miners:
            state, exp = states.get(m.key), expectations.get(m.key)
            action = exp.action if exp is not None and state is not None else None
            limit = exp.power_limit_w if exp is not None and state is not None else None
            if (m.command_state, m.commanded_action, m.commanded_power_limit_w) != (
                    state, action, limit):
                m = replace(m, command_state=state, commanded_action=action,
                            commanded_power_limit_w=limit)
            miners.append(m)
        return replace(fleet, miners=tuple(miners))

    def _with_recommands(self, commands: list[Command], fleet: FleetSnapshot,
                         verification: dict[str, str],
                         held: dict[str, str] | None = None) -> list[Command]:
        """Re-send the expected state to machines that did not obey (dwell does not apply:
        this is the same decision, not a new one); send a machine just flagged its next tier
        once, where ``[guards] escalate`` allows it (guards.next_tier)."""
        planned = {c.key for c in commands}
        expect = self.journal.expectations()
        by_key = fleet.by_key()
        held = held or {}
        extra = []
        for key, verdict in verification.items():
            if verdict not in ("mismatch", "flagged") or key in planned:
                continue
            exp, r = expect.get(key), by_key.get(key)
            if exp is None or r is None:
                continue
            if held.get(key, "").startswith(("excluded", "credentials refused")):
                continue  # never commanded: an operator's exclusion, refused credentials
            if verdict == "mismatch":
                extra.append(Command(key=key, ip=r.ip, action=exp.action,  # type: ignore[arg-type]
                                     power_limit_w=exp.power_limit_w,
                                     reason=f"re-command: not in {exp.action} after grace",
                                     delta_power_w=0.0, tier=exp.tier))
                continue
            tier = next_tier(exp.action, r, self.config.guards) if exp.tier == 0 else None
            if tier is None:
                log.warning("%s (%s) flagged: it ignored %s %d times; left alone and reported "
                            "(%s)", key, r.ip, exp.action, exp.failures,
                            "its next tier did not take either" if exp.tier
                            else "no next tier allowed by [guards] escalate")
                continue
            action, via = tier
            extra.append(Command(
                key=key, ip=r.ip, action=action, power_limit_w=None,
                reason=(f"next tier: ignored {exp.action} {exp.failures} times; "
                        + ("reboot into the sleep its firmware stored" if via == "reboot"
                           else f"{action} instead")),
                delta_power_w=-max(0.0, r.power_w - IDLE_ESTIMATE_W), tier=1, via=via))
            log.warning("%s (%s) flagged for ignoring %s: sending the next tier (%s%s)", key,
                        r.ip, exp.action, action, f" via {via}" if via else "")
        return list(commands) + extra

    # -------------------------------------------------------------------- act
    async def _act(self, commands: list[Command], fleet: FleetSnapshot, *,
                   dry_run: bool, journal_error: str | None = None) -> dict[str, str]:
        """Journal each intent, then send it. A command whose intent cannot be written is not
        sent; after the first such failure (or ``journal_error``: the tick's first write
        failed) the rest of the tick's commands are not tried either, so a locked journal
        costs one busy timeout per tick instead of one per command."""
        by_key = fleet.by_key()
        cfg = self.config.controller
        sem = asyncio.Semaphore(cfg.command_concurrency)
        outcomes: dict[str, str] = {}
        unavailable = journal_error

        def outcome(cmd: Command, result: str, detail: str | None, *,
                    dry_run: bool = False) -> None:
            """After the command: a journal that fails now loses only the outcome (the
            intent says the command may have happened), never the tick."""
            try:
                self.journal.record_outcome(cmd, result, detail, dry_run=dry_run)
            except JournalError as exc:
                log.error("%s %s (%s): outcome %s not journaled: %s", cmd.action, cmd.ip,
                          cmd.key, result, exc)

        fence = self.fence if not dry_run else None
        intents_ok: set[str] = set()

        def journal_intent(cmd: Command) -> bool:
            nonlocal unavailable
            r = by_key.get(cmd.key)
            if unavailable is None:
                try:
                    self.journal.record_intent(
                        cmd, observed_limit_w=r.power_limit_w if r else None, dry_run=dry_run)
                    intents_ok.add(cmd.key)
                except JournalError as exc:
                    unavailable = str(exc)
            if unavailable is not None:
                outcomes[cmd.key] = f"failed: not sent, intent not journaled: {unavailable}"
                log.error("%s %s (%s) not sent: its intent could not be journaled: %s",
                          cmd.action, cmd.ip, cmd.key, unavailable)
                return False
            return True

        if fence is not None and commands:
            # A leader journals every intent of the batch first, then confirms its lease and
            # shares the new ownership (controller/cluster.py) before the first command: a
            # successor then knows of every machine this batch may sleep, and a deposed leader
            # sends nothing.
            for cmd in commands:
                if not journal_intent(cmd):
                    break
            refused = await fence.confirm()
            if refused is not None:
                for cmd in commands:
                    outcomes[cmd.key] = f"failed: not sent: {refused}"
                    if cmd.key in intents_ok:
                        outcome(cmd, "failed", f"not sent: {refused}")
                log.warning("%d commands not sent: %s", len(commands), refused)
                return outcomes

        async def one(cmd: Command) -> None:
            r = by_key.get(cmd.key)
            if fence is None and not journal_intent(cmd):
                return
            if fence is not None and cmd.key not in intents_ok:
                return  # its intent could not be journaled: said above
            if dry_run:
                outcomes[cmd.key] = "dry-run"
                outcome(cmd, "dry-run", None, dry_run=True)
                log.info("dry-run %s %s (%s): %s", cmd.action, cmd.ip, cmd.key, cmd.reason)
                return
            async with sem:
                try:
                    sending = self.driver.execute(
                        cmd, observed_state=r.state if r else "unknown",
                        timeout_s=cfg.command_timeout_s, attempts=cfg.command_attempts)
                    if fence is None:
                        detail = await sending
                    else:
                        detail = await _within_lease(sending, fence)
                except CommandFailed as exc:
                    outcomes[cmd.key] = f"failed: {exc}"
                    outcome(cmd, "failed", str(exc))
                    log.warning("command %s %s (%s) failed: %s", cmd.action, cmd.ip, cmd.key,
                                exc)
                    return
            outcomes[cmd.key] = f"ok: {detail}"
            outcome(cmd, "ok", detail)
            log.info("%s %s (%s)%s: %s", cmd.action, cmd.ip, cmd.key,
                     f" to {cmd.power_limit_w:.0f} W" if cmd.power_limit_w else "", cmd.reason)

        await asyncio.gather(*(one(c) for c in commands))
        return outcomes


async def _within_lease(sending, fence: Fence) -> str:  # type: ignore[no-untyped-def]
    """A command of a leader: not started once its lease may have lapsed, and cancelled (its
    sockets closed) when the lease runs out while it waits, so no byte of it leaves after a
    successor may have started commanding."""
    left = fence.remaining_s()
    if left <= 0:
        sending.close()
        raise CommandFailed("not sent: the leadership lease is not confirmed")
    # The lease is renewed meanwhile (controller/cluster.py, every third of the TTL): the
    # deadline is read again each time the last one is reached, not fixed at the start. A
    # stock Antminer's write (~21 s) outlasts a TTL: at 10,000 miners, 368 commands of a
    # leader that never lost its lease were cancelled that way (bench/failover.py).
    task = asyncio.ensure_future(sending)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=left)
            if done:
                return task.result()
            left = fence.remaining_s()
            if left <= 0:
                task.cancel()
                await asyncio.wait({task})
                raise CommandFailed("abandoned: the leadership lease ran out while sending")
    except asyncio.CancelledError:
        task.cancel()
        raise
