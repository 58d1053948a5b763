"""Commands that lie or lag (issue 14), on the reconciler with a scripted fleet and clock.

"Sent, acknowledged, not yet in effect" is its own state (pending) for the family's grace,
counted from the acknowledgement: not judged, not re-sent, and never counted as shed power.
After the grace a machine is re-commanded at most once per grace, flagged ("lying") after
``flag_after_failures``, sent its next tier once where ``[guards] escalate`` allows it, and
then left alone. The driver's part (silence after our own command is "transitioning", not a
fault) is at the end.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from curtaild.controller.config import FleetConfig, parse_config
from curtaild.controller.daemon import build_policy
from curtaild.controller.journal import Journal
from curtaild.controller.loop import Reconciler, TickResult, command_states
from curtaild.core.snapshot import (
    Command,
    Directives,
    FleetSnapshot,
    MarketSnapshot,
    MinerReading,
)
from curtaild.drivers.miners import MinerDriver, _Tracked

T0 = 1_800_000_000.0
GRACE_S = 60.0  # [guards] confirm_grace_s antminer, for these tests


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "time", c)
    return c


def antminer(key: str, model: str, power_w: float, ths: float, n: int) -> MinerReading:
    return MinerReading(key=key, ip=f"127.160.0.{n}", make="AntMiner", model=model,
                        firmware="antminer", state="mining", hashrate_ths=ths, power_w=power_w,
                        power_source="nameplate", power_limit_w=None, temp_c=70.0,
                        nameplate_hashrate_ths=ths, nameplate_power_w=power_w,
                        supports_sleep=True, supports_power_limit=False)


class FakeDriver:
    """Readings as scripted; a command is acknowledged, and applied only by machines in
    ``obey`` (a stock Antminer that stored a sleep and kept hashing acknowledges too)."""

    def __init__(self, *readings: MinerReading, obey: set[str], ack_delay_s: float = 0.0,
                 clock: Clock | None = None):
        self.readings = {r.key: r for r in readings}
        self.obey = obey
        self.sent: list[Command] = []
        self.grace = None
        self.ack_delay_s = ack_delay_s
        self.clock = clock

    def set_transition_grace(self, grace) -> None:
        self.grace = grace

    def reconfigure(self, cfg) -> None:
        pass

    async def observe(self) -> FleetSnapshot:
        now = time.time()
        return FleetSnapshot(tuple(replace(r, observed_at=now) for r in self.readings.values()),
                             now)

    async def execute(self, cmd: Command, *, observed_state: str, timeout_s: float,
                      attempts: int) -> str:
        self.sent.append(cmd)
        if self.clock is not None:
            self.clock.now += self.ack_delay_s  # a slow CGI: acknowledged later than sent
        r = self.readings[cmd.key]
        if cmd.key in self.obey and cmd.action == "sleep":
            self.readings[cmd.key] = replace(r, state="sleeping", hashrate_ths=0.0, power_w=40.0)
        elif cmd.key in self.obey:
            self.readings[cmd.key] = replace(r, state="mining",
                                             hashrate_ths=r.nameplate_hashrate_ths or 0.0,
                                             power_w=r.nameplate_power_w or 0.0)
        return f"{cmd.via or cmd.action}: acknowledged"


class FakeMarket:
    snap = MarketSnapshot(hashprice_usd_per_th_day=0.09, hashprice_source="test",
                          hashprice_age_s=0.0, tariff_usd_per_kwh=0.03, tariff_source="test",
                          tariff_age_s=0.0, pool_fee=0.02)

    async def snapshot(self, now: float | None = None) -> MarketSnapshot:
        return self.snap

    def cached(self, now: float | None = None) -> MarketSnapshot:
        return self.snap


def reconciler(tmp_path: Path, driver: FakeDriver, cap_w: float | None, *,
               escalate: list[str] | None = None) -> Reconciler:
    config = parse_config({
        "fleet": {"ranges": ["127.160.0.1-127.160.0.3"]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.09},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.03},
        "policy": {"name": "margin", "pool_fee": 0.02},
        "guards": {"min_dwell_s": 0.0, "ramp_w_per_min": 1e9,
                   "confirm_grace_s": {"antminer": GRACE_S}, "escalate": escalate or []},
        "controller": {"state_dir": str(tmp_path / "state"), "verify_grace_s": 5.0,
                       "flag_after_failures": 3},
    })
    return Reconciler(config, Journal(None), driver, FakeMarket(), build_policy(config),  # type: ignore[arg-type]
                      directives=lambda now: Directives(power_cap_w=cap_w,
                                                        power_cap_event_id="dr"))


def fleet3() -> tuple[MinerReading, ...]:
    # L, the worst J/TH, is what a cap sheds first; it stores a sleep and keeps hashing.
    return (antminer("L", "S19j Pro", 3068.0, 104.0, 1), antminer("A", "S21", 3500.0, 200.0, 2),
            antminer("B", "S21", 3500.0, 200.0, 3))


def tick(rec: Reconciler, clock: Clock, at: float, *, fast: bool = False) -> TickResult:
    clock.now = T0 + at
    return asyncio.run(rec.tick(fast=fast))


def to(driver: FakeDriver, key: str, since: int = 0) -> list[Command]:
    return [c for c in driver.sent[since:] if c.key == key]


def states(result: TickResult) -> dict[str, str | None]:
    return {m.key: m.command_state for m in result.fleet.miners}


# --------------------------------------------------------------------------- the liar
@pytest.mark.parametrize("escalate", [False, True], ids=["reported", "next-tier"])
def test_a_liar_is_pending_then_re_commanded_once_per_grace_flagged_and_left_alone(
        tmp_path: Path, clock: Clock, escalate: bool) -> None:
    driver = FakeDriver(*fleet3(), obey={"A", "B"})
    rec = reconciler(tmp_path, driver, cap_w=8000.0,
                     escalate=["sleep_to_reboot"] if escalate else None)
    # 10,068 W over an 8,000 W demand-response cap: sleeping L (the worst) would be enough.
    r = tick(rec, clock, 0)
    assert [(c.key, c.action) for c in r.commands] == [("L", "sleep")]
    assert states(r)["L"] == "pending"
    assert rec.journal.expectations()["L"].state == "pending"

    # Acknowledged, still hashing: pending, not re-sent, and its power still counted -- the
    # cap sheds another machine (before issue 14 it counted L as shed and stopped there).
    r = tick(rec, clock, 10)
    assert states(r)["L"] == "pending"
    assert [c.key for c in r.commands if c.key != "L"] in (["A"], ["B"])
    assert to(driver, "L") == to(driver, "L")[:1]
    other = r.commands[0].key
    r = tick(rec, clock, 20)
    assert states(r)[other] == "confirmed" and states(r)["L"] == "pending"
    assert r.commands == ()
    assert sum(m.power_w for m in r.fleet.miners) < 8000.0  # met on what is drawn

    # After the grace: re-commanded, at most once per grace.
    r = tick(rec, clock, GRACE_S + 1)
    assert r.verification["L"] == "mismatch" and [c.key for c in r.commands] == ["L"]
    for at in (GRACE_S + 11, GRACE_S + 31, GRACE_S + 51):
        assert tick(rec, clock, at).commands == ()
    r = tick(rec, clock, 2 * GRACE_S + 2)
    assert r.verification["L"] == "mismatch" and [c.key for c in r.commands] == ["L"]
    r = tick(rec, clock, 3 * GRACE_S + 3)
    assert r.verification["L"] == "flagged"
    assert states(r)["L"] == ("pending" if escalate else "lying")
    sleeps = [c for c in to(driver, "L") if c.via is None]
    assert len(sleeps) == 3  # the first and flag_after_failures - 1 re-commands, no more
    if escalate:
        # The next tier, once: reboot, so the firmware boots into the sleep it stored.
        assert [(c.key, c.action, c.via, c.tier) for c in r.commands] == [
            ("L", "sleep", "reboot", 1)]
        assert "next tier" in r.commands[0].reason
        assert states(r)["L"] == "pending"
        r = tick(rec, clock, 4 * GRACE_S + 4)
        assert r.verification["L"] == "flagged"  # at its first failure
    else:
        assert r.commands == ()
    for at in (5 * GRACE_S, 8 * GRACE_S, 20 * GRACE_S):
        r = tick(rec, clock, at)
        assert r.commands == () and states(r)["L"] == "lying"
    assert len(to(driver, "L")) == 3 + escalate
    assert sum(m.power_w for m in r.fleet.miners) < 8000.0  # still met, on confirmed power
    assert r.held["L"].startswith("flagged")


def test_an_obedient_machine_is_confirmed_and_not_re_sent(tmp_path: Path,
                                                         clock: Clock) -> None:
    driver = FakeDriver(*fleet3(), obey={"L", "A", "B"})
    rec = reconciler(tmp_path, driver, cap_w=8000.0)
    r = tick(rec, clock, 0)
    assert [c.key for c in r.commands] == ["L"] and states(r)["L"] == "pending"
    r = tick(rec, clock, 10)
    assert r.commands == () and states(r)["L"] == "confirmed"
    assert rec.journal.expectations()["L"].state == "confirmed"
    assert tick(rec, clock, 10 * GRACE_S).commands == ()
    assert len(driver.sent) == 1


def test_the_grace_counts_from_the_acknowledgement(tmp_path: Path, clock: Clock) -> None:
    """A stock Antminer's config CGI answers after ~21 s: the restart starts then."""
    driver = FakeDriver(*fleet3(), obey={"A", "B"}, ack_delay_s=25.0, clock=clock)
    rec = reconciler(tmp_path, driver, cap_w=8000.0)
    tick(rec, clock, 0)
    exp = rec.journal.expectations()["L"]
    assert exp.acked_at == pytest.approx(exp.since + 25.0)
    r = tick(rec, clock, GRACE_S + 5)  # a grace after sending, not after acknowledging
    assert "L" not in r.verification and not to(driver, "L", 1)
    r = tick(rec, clock, GRACE_S + 26)
    assert r.verification["L"] == "mismatch"


def test_a_fast_tick_does_not_count_an_unconfirmed_sleep(tmp_path: Path,
                                                         clock: Clock) -> None:
    driver = FakeDriver(*fleet3(), obey={"A", "B"})
    rec = reconciler(tmp_path, driver, cap_w=None)
    tick(rec, clock, 0)  # no cap: nothing to do
    rec.directives = lambda now: Directives(power_cap_w=8000.0, power_cap_event_id="dr")
    r = tick(rec, clock, 1, fast=True)  # a DR event arrives: decided on the last observation
    assert [c.key for c in r.commands] == ["L"]
    # Another inbound command before the next poll: L's sleep is only acknowledged, so the
    # site still draws 10,068 W (counting it asleep, 7,040 W, would look under the cap).
    r = tick(rec, clock, 2, fast=True)
    assert states(r)["L"] == "pending"
    assert [c.key for c in r.commands if c.key != "L"] in (["A"], ["B"])


def test_the_driver_gets_the_family_grace(tmp_path: Path, clock: Clock) -> None:
    driver = FakeDriver(*fleet3(), obey=set())
    rec = reconciler(tmp_path, driver, cap_w=None)
    assert driver.grace is not None
    assert driver.grace("antminer", "sleep") == GRACE_S  # [guards] confirm_grace_s
    # Otherwise [controller] verify_grace_s (5 s here) scaled by the family's factor: with the
    # shipped 240 s, a Whatsminer limit 240 s and its wake 600 s (power_on ramps 6-10 min).
    assert driver.grace("whatsminer", "limit") == 5.0
    assert driver.grace("whatsminer", "run") == 12.5
    assert driver.grace("bitaxe", "sleep") == 5.0
    assert rec.grace_s("antminer", "run") == GRACE_S
    rec.config = rec.config.model_copy(update={"guards": rec.config.guards.model_copy(
        update={"confirm_grace_s": {}})})  # a reload: read at each use
    assert driver.grace("antminer", "sleep") == 5.0 * 1.75


# ---------------------------------------------------------------- states, journal rows
def test_command_states_from_the_journal_and_the_reading() -> None:
    j = Journal(None)
    miners = fleet3()
    by = {m.key: m for m in miners}

    def cmd(key: str, action: str = "sleep", tier: int = 0) -> Command:
        return Command(key=key, ip=by[key].ip, action=action, power_limit_w=None,  # type: ignore[arg-type]
                       reason="t", delta_power_w=-3000.0, tier=tier)

    for key in ("L", "A", "B"):
        j.record_intent(cmd(key), observed_limit_w=None, dry_run=False, now=T0)
    assert {e.state for e in j.expectations().values()} == {"sent"}
    j.record_outcome(cmd("L"), "ok", now=T0 + 21)
    j.record_outcome(cmd("A"), "failed", "no answer", now=T0 + 5)
    j.record_outcome(cmd("B"), "ok", now=T0 + 2)
    e = j.expectations()
    assert (e["L"].state, e["L"].acked_at) == ("pending", T0 + 21)
    assert (e["A"].state, e["A"].acked_at) == ("failed", None)
    j.mark_verified("B", by["B"].ip, "sleep", now=T0 + 30)
    assert j.expectations()["B"].state == "confirmed"
    silent = replace(by["A"], state="unreachable", error="transitioning: sleep sent 3s ago")
    fleet = FleetSnapshot((by["L"], silent, by["B"]), T0)
    assert command_states(fleet, j.expectations(), {}) == {
        "L": "pending", "A": "transitioning", "B": "confirmed"}
    for n in (1, 2, 3):
        j.mark_mismatch("L", by["L"].ip, "sleep", "mining", flag_after=3, now=T0 + 100 * n)
    assert command_states(fleet, j.expectations(), {})["L"] == "lying"
    # The next tier is judged afresh: not flagged, no failures, tier 1, sent again.
    j.record_intent(replace(cmd("L"), via="reboot", tier=1), observed_limit_w=None,
                    dry_run=False, now=T0 + 400)
    e = j.expectations()["L"]
    assert (e.flagged, e.failures, e.tier, e.state) == (False, 0, 1, "sent")
    # A dry run changes no state.
    j.record_outcome(cmd("L"), "dry-run", dry_run=True, now=T0 + 401)
    assert j.expectations()["L"].state == "sent"


def test_a_journal_written_before_command_states_gains_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "journal.sqlite")
    db.executescript("""
        CREATE TABLE expectations (miner TEXT PRIMARY KEY, action TEXT NOT NULL,
            power_limit_w REAL, since REAL NOT NULL, last_change_at REAL NOT NULL,
            failures INTEGER NOT NULL DEFAULT 0, flagged INTEGER NOT NULL DEFAULT 0);
        INSERT INTO expectations VALUES ('L', 'sleep', NULL, 1.0, 1.0, 2, 0);
    """)
    db.commit()
    db.close()
    j = Journal(state)
    e = j.expectations()["L"]
    assert (e.action, e.failures, e.state, e.acked_at, e.tier) == ("sleep", 2, "sent", None, 0)
    j.close()


# ------------------------------------------------------------------------ the driver
def test_silence_after_our_own_command_is_transitioning_not_a_fault() -> None:
    driver = MinerDriver(FleetConfig(ranges=["127.160.0.9-127.160.0.9"]))
    driver.set_transition_grace(lambda family, action: 240.0 if family == "whatsminer" else 0.0)
    t = _Tracked("127.160.0.9", miner=object(), family="whatsminer")
    t.last = MinerReading(key="AA", ip=t.ip, make="WhatsMiner", model="M50",
                          firmware="whatsminer", state="mining", hashrate_ths=114.0,
                          power_w=3306.0, power_source="firmware", power_limit_w=None,
                          temp_c=70.0, supports_power_limit=True)
    driver._begin_transition(t, "limit")  # what execute does once a limit is acknowledged
    for _ in range(5):  # more than rediscover_after_failures (3)
        r = driver._failed(t, "timeout", "no answer within 10s")
        assert r.state == "unreachable" and r.error.startswith("transitioning: limit sent")
    assert t.failures == 0 and t.miner is not None  # not a fault: no re-discovery
    assert driver.error_counts == {"transitioning": 5}
    t.transition_until = 0.0  # the grace is over: silence is a fault again
    for _ in range(3):
        r = driver._failed(t, "timeout", "no answer within 10s")
    assert r.error.startswith("timeout") and t.miner is None  # re-discovered


# ----------------------------------------------------------------- status, metrics, MQTT
def test_every_report_carries_the_command_state() -> None:
    from curtaild.controller.metrics import MetricsState, render_text, snapshot_families
    from curtaild.controller.mqtt_payloads import miner_payload, state_payload
    from curtaild.controller.report import tick_summary

    liar, waking, silent = fleet3()
    fleet = FleetSnapshot((
        replace(liar, command_state="lying", commanded_action="sleep"),
        replace(waking, command_state="pending", commanded_action="run"),
        replace(silent, state="unreachable", power_w=0.0, command_state="transitioning",
                error="transitioning: sleep sent 12s ago, restarting; timeout: no answer"),
    ), T0)
    result = TickResult(started_at=T0, duration_s=0.5, fleet=fleet, market=None, desired={},
                        effective={}, held={}, commands=(), outcomes={}, dry_run=False)
    assert result.command_states() == {"lying": 1, "pending": 1, "transitioning": 1}

    status = tick_summary(result)
    assert status["fleet"]["command_states"] == {"lying": 1, "pending": 1, "transitioning": 1}
    assert status["fleet"]["states"] == {"mining": 2, "transitioning": 1}  # not unreachable
    assert [m["command_state"] for m in status["miners"]] == ["lying", "pending",
                                                              "transitioning"]

    payload = state_payload(result, {}, stale_after_s=None, curtailed=1)
    assert payload["command_states"] == status["fleet"]["command_states"]
    assert payload["states"]["unreachable"] == 0 and payload["states"]["transitioning"] == 1
    assert miner_payload(fleet.miners[0], result)["command_state"] == "lying"
    assert miner_payload(fleet.miners[1], result)["command_state"] == "pending"

    text = render_text(snapshot_families(MetricsState(tick=result))).decode()
    for state, n in (("pending", 1), ("transitioning", 1), ("confirmed", 0), ("failed", 0),
                     ("lying", 1)):
        assert f'curtaild_site_miners_command_state{{state="{state}"}} {n}' in text
    assert 'curtaild_site_miners{state="transitioning"} 1' in text
    assert 'curtaild_site_miners{state="unreachable"} 0' in text
    assert 'curtaild_miner_command_state{miner="L",model="S19j Pro",firmware="antminer",' \
           'state="lying"} 1' in text


# ------------------------------------------------------------------------- next tiers
def test_next_tier_only_where_the_operator_allows_it_and_the_firmware_can() -> None:
    from curtaild.controller.guards import GuardConfig, next_tier

    wm = replace(fleet3()[0], firmware="whatsminer", supports_power_limit=True)
    stock, lux = fleet3()[0], replace(fleet3()[0], firmware="luxos")
    none, both = GuardConfig(), GuardConfig(escalate=["limit_to_sleep", "sleep_to_reboot"])
    assert next_tier("limit", wm, none) is None and next_tier("sleep", stock, none) is None
    assert next_tier("limit", wm, both) == ("sleep", None)  # Whatsminer: power_off
    assert next_tier("sleep", stock, both) == ("sleep", "reboot")  # boots into stored sleep
    assert next_tier("sleep", lux, both) == ("sleep", "reboot")  # curtailment persists
    # A Whatsminer wakes from a reboot (sleep is not stored): no reboot tier for it.
    assert next_tier("sleep", wm, both) is None
    assert next_tier("limit", replace(wm, supports_sleep=False), both) is None
    assert next_tier("run", stock, both) is None  # a machine that will not wake: reported


def test_a_machine_ignoring_its_limit_is_slept_once_flagged(tmp_path: Path,
                                                            clock: Clock) -> None:
    """Whatsminer-like: takes power targets and ignores them; sleeps when told."""
    m = MinerReading(key="W", ip="127.160.0.7", make="WhatsMiner", model="M50",
                     firmware="whatsminer", state="mining", hashrate_ths=114.0, power_w=3306.0,
                     power_source="firmware", power_limit_w=3306.0, temp_c=70.0,
                     nameplate_hashrate_ths=114.0, nameplate_power_w=3306.0,
                     supports_power_limit=True, min_power_limit_w=1500.0,
                     max_power_limit_w=3600.0)
    driver = FakeDriver(m, obey=set())
    rec = reconciler(tmp_path, driver, cap_w=2500.0, escalate=["limit_to_sleep"])
    rec.config = rec.config.model_copy(update={"guards": rec.config.guards.model_copy(
        update={"confirm_grace_s": {"whatsminer": GRACE_S}})})
    r = tick(rec, clock, 0)
    assert [(c.action, c.tier) for c in r.commands] == [("limit", 0)]
    for n in (1, 2, 3):
        r = tick(rec, clock, n * (GRACE_S + 1))
    assert r.verification["W"] == "flagged"
    assert [(c.action, c.via, c.tier) for c in r.commands] == [("sleep", None, 1)]
    driver.obey = {"W"}  # power_off works where the limit did not
    driver.readings["W"] = replace(driver.readings["W"], state="sleeping", hashrate_ths=0.0,
                                   power_w=35.0)
    r = tick(rec, clock, 3 * (GRACE_S + 1) + 10)
    assert r.verification["W"] == "verified"  # the next tier took: the flag is cleared
    assert [e["action"] for e in rec.journal.events(miner="W") if e["kind"] == "verified"] \
        == ["sleep"]
    assert "W" in rec.journal.curtailed()  # still curtaild's: restored when the cap allows
    assert not any(c.action == "sleep" for c in r.commands)  # never re-sent
