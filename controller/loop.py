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

from controller import economics
from controller.config import Config
from controller.guards import (
    IDLE_ESTIMATE_W,
    GuardResult,
    RampBucket,
    apply_guards,
    limit_tolerance_w,
    memory_window_s,
)
from controller.journal import Journal, JournalError
from controller.market import MarketInputs
from controller.snapshot import (
    Command,
    Desired,
    Directives,
    FleetSnapshot,
    MarketSnapshot,
    MinerReading,
)
from drivers.miners import CommandFailed, MinerDriver
from policies.compose import decide_stack

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


def predicted(last: TickResult) -> FleetSnapshot:
    """``last``'s fleet as its successful commands should have left it: what a fast tick
    decides on. A slept machine at idle draw, a woken or limited one mining at its target
    (hashrate from the nameplate along the efficiency curve). The next regular tick observes
    the truth and verifies; a command that did not take is re-sent from there."""
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
            r = replace(r, state="sleeping", hashrate_ths=0.0, power_w=IDLE_ESTIMATE_W,
                        power_source="idle_estimate")
        elif c is not None:
            plate_w = r.nameplate_power_w or r.power_w
            target_w = c.power_limit_w or plate_w
            hashrate = r.nameplate_hashrate_ths or r.hashrate_ths
            if plate_w and target_w < plate_w and r.nameplate_hashrate_ths:
                hashrate = economics.hashrate_at_power_ths(
                    power_w=target_w, ref_power_w=plate_w,
                    ref_hashrate_ths=r.nameplate_hashrate_ths, idle_power_w=IDLE_ESTIMATE_W,
                    exponent=0.75)
            r = replace(r, state="mining", power_w=target_w, hashrate_ths=hashrate,
                        power_limit_w=c.power_limit_w if c.power_limit_w else r.power_limit_w)
        miners.append(r)
    return FleetSnapshot(tuple(miners), last.fleet.taken_at)


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
                 directives: Callable[[float], Directives] | None = None):
        self.config = config
        #: inbound instructions in force at a time (MQTT bridge); none by default
        self.directives: Callable[[float], Directives] = directives or (lambda _now: Directives())
        self.journal = journal
        self.driver = driver
        self.market = market
        self.policy = policy
        saved = journal.get_meta("ramp_bucket")
        self.bucket = RampBucket(budget_w=0.0, updated_at=time.time())
        if isinstance(saved, dict):
            # Never start with more than was left: a restart must not reset the ramp.
            self.bucket = RampBucket(budget_w=float(saved.get("budget_w", 0.0)),
                                     updated_at=float(saved.get("updated_at", time.time())))
        self.last: TickResult | None = None

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
        else:
            fleet = await self.driver.observe()
            market = await self.market.snapshot(started)
        now = time.time()
        verification = self._verify(fleet, now) if send and not fast else {}
        directives = self.directives(now)
        desired = decide_stack(self.policy, fleet, market, directives, now)
        if market is None and not desired:
            guarded = GuardResult(commands=[], held={m.key: "no market inputs yet"
                                                     for m in fleet.miners},
                                  bucket=self.bucket, effective={})
        else:
            memory = self.journal.memory(dwell_s=memory_window_s(self.config.guards),
                                         now=now)
            guarded = apply_guards(fleet, market, desired, memory, self.bucket,
                                   self.config.guards, now)
        commands = self._with_recommands(guarded.commands, fleet, verification)
        commands = _capped(commands, self.config.guards.max_commands_per_tick)
        dry_run = self.config.controller.dry_run or not send
        outcomes: dict[str, str] = {}
        if send:
            self.bucket = guarded.bucket
            journal_error: str | None = None
            try:
                self.journal.set_meta("ramp_bucket", {"budget_w": self.bucket.budget_w,
                                                      "updated_at": self.bucket.updated_at})
            except JournalError as exc:
                journal_error = str(exc)  # then no intent can be written either: send nothing
            outcomes = await self._act(commands, fleet, dry_run=dry_run,
                                       journal_error=journal_error)
        result = TickResult(
            started_at=started,
            duration_s=time.time() - started,
            fleet=fleet,
            market=market,
            desired=desired,
            effective=guarded.effective,
            held=guarded.held,
            commands=tuple(commands),
            outcomes=outcomes,
            dry_run=dry_run,
            verification=verification,
            directives=directives,
            fast=fast,
        )
        if send:
            self.last = result
        return result

    # ----------------------------------------------------------------- verify
    def _verify(self, fleet: FleetSnapshot, now: float) -> dict[str, str]:
        """Compare each outstanding expectation with what was just observed."""
        by_key = fleet.by_key()
        cfg = self.config.controller
        out: dict[str, str] = {}
        curtailed = self.journal.curtailed()
        for key, exp in self.journal.expectations().items():
            r = by_key.get(key)
            if r is None or r.state == "unreachable":
                continue
            if matches_expectation(exp.action, exp.power_limit_w, r):
                row = curtailed.get(key)
                if exp.failures or exp.flagged or (
                    exp.action == "run" and (row is None or row.releasing)
                ):
                    self.journal.mark_verified(key, r.ip, exp.action, now)
                    out[key] = "verified"
            elif not exp.flagged and now - exp.since >= cfg.verify_grace_s:
                n = self.journal.mark_mismatch(key, r.ip, exp.action, r.state,
                                               flag_after=cfg.flag_after_failures, now=now)
                out[key] = "flagged" if n >= cfg.flag_after_failures else "mismatch"
                log.warning("%s (%s) did not reach %s (observed %s): failure %d of %d",
                            key, r.ip, exp.action, r.state, n, cfg.flag_after_failures)
        # A released machine seen running with no expectation left (crash in between).
        for key, row in curtailed.items():
            r = by_key.get(key)
            if row.releasing and r is not None and r.state == "mining" and key not in out:
                if key not in self.journal.expectations():
                    self.journal.release_ownership(key, "observed running after release", now)
        return out

    def _with_recommands(self, commands: list[Command], fleet: FleetSnapshot,
                         verification: dict[str, str]) -> list[Command]:
        """Re-send the expected state to machines that did not obey (dwell does not apply:
        this is the same decision, not a new one)."""
        planned = {c.key for c in commands}
        expect = self.journal.expectations()
        by_key = fleet.by_key()
        extra = []
        for key, verdict in verification.items():
            if verdict != "mismatch" or key in planned:
                continue
            exp, r = expect.get(key), by_key.get(key)
            if exp is None or r is None:
                continue
            extra.append(Command(key=key, ip=r.ip, action=exp.action,  # type: ignore[arg-type]
                                 power_limit_w=exp.power_limit_w,
                                 reason=f"re-command: not in {exp.action} after grace",
                                 delta_power_w=0.0))
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

        async def one(cmd: Command) -> None:
            nonlocal unavailable
            r = by_key.get(cmd.key)
            if unavailable is None:
                try:
                    self.journal.record_intent(
                        cmd, observed_limit_w=r.power_limit_w if r else None, dry_run=dry_run)
                except JournalError as exc:
                    unavailable = str(exc)
            if unavailable is not None:
                outcomes[cmd.key] = f"failed: not sent, intent not journaled: {unavailable}"
                log.error("%s %s (%s) not sent: its intent could not be journaled: %s",
                          cmd.action, cmd.ip, cmd.key, unavailable)
                return
            if dry_run:
                outcomes[cmd.key] = "dry-run"
                outcome(cmd, "dry-run", None, dry_run=True)
                log.info("dry-run %s %s (%s): %s", cmd.action, cmd.ip, cmd.key, cmd.reason)
                return
            async with sem:
                try:
                    detail = await self.driver.execute(
                        cmd, observed_state=r.state if r else "unknown",
                        timeout_s=cfg.command_timeout_s, attempts=cfg.command_attempts)
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
