"""The guards, rule by rule, on hand-made snapshots (pure: every clock value is explicit)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from curtaild.controller.guards import (
    GuardConfig,
    GuardResult,
    MinerMemory,
    RampBucket,
    apply_guards,
    limit_tolerance_w,
    market_staleness_s,
)
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MarketSnapshot, MinerReading
from curtaild.policies.margin import MarginConfig, MarginPolicy

NOW = 100_000.0
BIG = 1e9  # W: a ramp that never binds


def miner(key: str = "A", *, state: str = "mining", j_per_th: float = 29.5,
          power_w: float = 3068.0, **kw: object) -> MinerReading:
    """A machine drawing power_w at the given efficiency (nameplate = the same point)."""
    asleep = state == "sleeping"
    base = {
        "key": key, "ip": f"127.0.0.{abs(hash(key)) % 250 + 1}", "make": "AntMiner",
        "model": "test", "firmware": "luxos", "state": state,
        "hashrate_ths": 0.0 if asleep else power_w / j_per_th,
        "power_w": 40.0 if asleep else power_w,
        "power_source": "idle_estimate" if asleep else "firmware", "power_limit_w": None,
        "temp_c": 70.0, "nameplate_hashrate_ths": power_w / j_per_th,
        "nameplate_power_w": power_w, "observed_at": NOW - 5,
    }
    return MinerReading(**{**base, **kw})  # type: ignore[arg-type]


def market(age_s: float = 0.0, tariff_age_s: float | None = None) -> MarketSnapshot:
    return MarketSnapshot(hashprice_usd_per_th_day=0.05, hashprice_source="test",
                          hashprice_age_s=age_s, tariff_usd_per_kwh=0.06, tariff_source="test",
                          tariff_age_s=age_s if tariff_age_s is None else tariff_age_s,
                          pool_fee=0.02)


def want(action: str, run_margin: float | None, *, margin: float | None = None,
         limit: float | None = None) -> Desired:
    return Desired(action=action, reason=f"policy says {action}",  # type: ignore[arg-type]
                   power_limit_w=limit,
                   margin_usd_per_day=run_margin if margin is None else margin,
                   run_margin_usd_per_day=run_margin)


def ours(key: str = "A", action: str | None = "sleep", *, restore: float | None = None,
         changed: float | None = NOW - 10_000, flagged: bool = False,
         expected: str | None = None, expected_limit: float | None = None) -> MinerMemory:
    return MinerMemory(key=key, curtailed_by_us=action is not None,
                       curtailed_action=action,  # type: ignore[arg-type]
                       restore_power_limit_w=restore, last_change_at=changed, flagged=flagged,
                       expected_action=expected,  # type: ignore[arg-type]
                       expected_power_limit_w=expected_limit)


def cfg(**kw: object) -> GuardConfig:
    base = {"min_dwell_s": 0.0, "hysteresis_usd_per_day": 0.1, "ramp_w_per_min": BIG}
    return GuardConfig(**{**base, **kw})  # type: ignore[arg-type]


def run(miners: list[MinerReading], desired: dict[str, Desired],
        memory: dict[str, MinerMemory] | None = None, *, config: GuardConfig | None = None,
        bucket: RampBucket | None = None, mk: MarketSnapshot | str | None = "fresh",
        now: float = NOW) -> GuardResult:
    return apply_guards(
        FleetSnapshot(miners=tuple(miners), taken_at=now),
        market() if mk == "fresh" else mk,  # type: ignore[arg-type]
        desired, memory or {}, bucket or RampBucket(budget_w=BIG, updated_at=now),
        config or cfg(), now)


def one(result: GuardResult) -> Command:
    assert len(result.commands) == 1, (result.commands, result.held)
    return result.commands[0]


# ----------------------------------------------------------------------- config
def test_defaults_are_on_and_documented() -> None:
    c = GuardConfig()
    assert c.hysteresis_usd_per_day > 0 and c.min_dwell_s == 600
    assert c.ramp_w_per_min == 50_000 and c.max_commands_per_tick == 50
    assert c.stale_market_after_s == 1800 and c.stale_reading_after_s == 300
    assert c.on_stale_market == "hold" and c.stale_hold_s > 0 and c.exclude == []
    for name, f in GuardConfig.model_fields.items():
        assert f.description, f"{name} has no docstring"


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="ramp_w_per_mn"):
        GuardConfig(ramp_w_per_mn=5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        GuardConfig(on_stale_market="wake")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        GuardConfig(ramp_w_per_min=0)


def test_limit_tolerance() -> None:
    assert limit_tolerance_w(1000) == 25.0
    assert limit_tolerance_w(3000) == 60.0


# ------------------------------------------------------------------ level-trigger
def test_losing_machine_is_slept_with_estimated_delta() -> None:
    c = one(run([miner()], {"A": want("sleep", -1.0)}))
    assert (c.key, c.action, c.power_limit_w) == ("A", "sleep", None)
    assert c.delta_power_w == pytest.approx(-(3068 - 40))
    assert c.reason == "policy says sleep"


def test_nothing_sent_when_observed_matches() -> None:
    r = run([miner(state="sleeping")], {"A": want("sleep", -1.0)}, {"A": ours()})
    assert r.commands == [] and "A" not in r.held
    assert r.effective["A"].action == "sleep"
    r = run([miner()], {"A": want("run", 1.0)})
    assert r.commands == [] and r.held == {} and r.effective["A"].action == "run"


def test_policy_without_opinion_is_held() -> None:
    r = run([miner()], {})
    assert r.commands == [] and r.held["A"] == "policy has no opinion"


# ------------------------------------------------------------------ untouchables
@pytest.mark.parametrize("entry", ["A", "a", "127.9.9.9", "aa:bb:cc:dd:ee:ff"])
def test_excluded_by_key_ip_or_mac(entry: str) -> None:
    m = miner(ip="127.9.9.9", mac="AA:BB:CC:DD:EE:FF")
    r = run([m], {"A": want("sleep", -5.0)}, config=cfg(exclude=[entry]))
    assert r.commands == [] and "excluded" in r.held["A"]


def test_unreachable_stale_and_flagged_are_held() -> None:
    miners = [miner("U", state="unreachable", error="timeout"),
              miner("S", observed_at=NOW - 301), miner("F")]
    desired = {k: want("sleep", -5.0) for k in "USF"}
    r = run(miners, desired, {"F": ours("F", None, flagged=True)})
    assert r.commands == []
    assert r.held["U"] == "unreachable: timeout"
    assert r.held["S"].startswith("reading stale: 301 s old")
    assert r.held["F"].startswith("flagged")
    # a reading just inside the limit is acted on
    assert one(run([miner("S", observed_at=NOW - 299)], desired)).key == "S"


def test_operator_slept_machine_is_never_woken() -> None:
    asleep = miner(state="sleeping")
    for memory in ({}, {"A": ours(action=None)}, {"A": ours(action="limit", restore=3068)}):
        r = run([asleep], {"A": want("run", 5.0)}, memory)
        assert r.commands == []
        assert r.held["A"].startswith("asleep by operator")
        assert r.effective["A"].action == "sleep"
    # ...not even by the stale-market fail-safe
    r = run([asleep], {}, {}, mk=None)
    assert r.commands == [] and r.held["A"].startswith("asleep by operator")


def test_machine_we_slept_is_woken() -> None:
    c = one(run([miner(state="sleeping")], {"A": want("run", 1.0)}, {"A": ours()}))
    assert c.action == "run"
    assert c.delta_power_w == pytest.approx(3068 - 40)


# -------------------------------------------------------------------- hysteresis
def test_hysteresis_keeps_running_inside_the_band() -> None:
    r = run([miner()], {"A": want("sleep", -0.05)})
    assert r.commands == [] and r.held["A"].startswith("hysteresis")
    assert r.effective["A"].action == "run"
    assert run([miner()], {"A": want("sleep", -0.1)}).commands == []  # strictly below
    assert one(run([miner()], {"A": want("sleep", -0.11)})).action == "sleep"


def test_hysteresis_keeps_asleep_inside_the_band() -> None:
    asleep, mem = miner(state="sleeping"), {"A": ours()}
    r = run([asleep], {"A": want("run", 0.05)}, mem)
    assert r.commands == [] and r.held["A"].startswith("hysteresis")
    assert r.effective["A"].action == "sleep"
    assert run([asleep], {"A": want("run", 0.1)}, mem).commands == []
    assert one(run([asleep], {"A": want("run", 0.11)}, mem)).action == "run"


def test_wake_into_limit_uses_the_limit_margin() -> None:
    asleep, mem = miner(state="sleeping", supports_power_limit=True), {"A": ours()}
    c = one(run([asleep], {"A": want("limit", -0.3, margin=0.5, limit=2000)}, mem))
    assert (c.action, c.power_limit_w) == ("limit", 2000)
    assert c.delta_power_w == pytest.approx(2000 - 40)
    r = run([asleep], {"A": want("limit", -0.3, margin=0.05, limit=2000)}, mem)
    assert r.commands == [] and r.held["A"].startswith("hysteresis")


# -------------------------------------------------------------------------- dwell
def test_min_dwell_since_curtailds_last_change() -> None:
    config = cfg(min_dwell_s=600)
    mem = {"A": ours(action=None, changed=NOW - 100)}
    r = run([miner()], {"A": want("sleep", -1.0)}, mem, config=config)
    assert r.commands == [] and r.held["A"].startswith("min dwell: changed 100 s ago")
    assert r.effective["A"].action == "run"
    mem = {"A": ours(action=None, changed=NOW - 601)}
    assert one(run([miner()], {"A": want("sleep", -1.0)}, mem, config=config)).action == "sleep"
    # a machine curtaild never touched has no dwell
    assert one(run([miner()], {"A": want("sleep", -1.0)}, config=config)).action == "sleep"


def test_same_command_not_resent_while_awaiting_verification() -> None:
    mem = {"A": ours(expected="sleep", changed=NOW - 5)}
    r = run([miner()], {"A": want("sleep", -1.0)}, mem)
    assert r.commands == [] and r.held["A"].startswith("awaiting verification")
    mem = {"A": ours("A", "limit", expected="limit", expected_limit=2000)}
    r = run([miner(supports_power_limit=True, power_limit_w=2500)],
            {"A": want("limit", 1.0, limit=2000)}, mem)
    assert r.commands == [] and r.held["A"].startswith("awaiting verification")
    c = one(run([miner(supports_power_limit=True, power_limit_w=2500)],
                {"A": want("limit", 1.0, limit=1500)}, mem))
    assert c.power_limit_w == 1500  # a new target is a new command


# ------------------------------------------------------------------- power limits
def test_limit_sent_only_beyond_tolerance() -> None:
    m = miner(supports_power_limit=True, power_limit_w=2035.0, power_w=2035.0)
    assert run([m], {"A": want("limit", 1.0, limit=2000)}).commands == []  # 35 <= 40 W
    m = replace(m, power_limit_w=2045.0, power_w=2045.0)
    c = one(run([m], {"A": want("limit", 1.0, limit=2000)}))
    assert (c.action, c.power_limit_w) == ("limit", 2000)
    assert c.delta_power_w == pytest.approx(-45)


def test_limit_on_unlimited_machine_and_capabilities() -> None:
    c = one(run([miner(supports_power_limit=True)], {"A": want("limit", -0.2, limit=2000)}))
    assert c.delta_power_w == pytest.approx(2000 - 3068)
    r = run([miner()], {"A": want("limit", -0.2, limit=2000)})
    assert r.commands == [] and r.held["A"].startswith("cannot power-limit")
    r = run([miner(supports_sleep=False)], {"A": want("sleep", -5.0)})
    assert r.commands == [] and r.held["A"].startswith("cannot sleep")


def _limited(key: str = "A") -> MinerReading:
    """Nameplate 104 TH/s at 3068 W, running under a 2000 W limit."""
    return miner(key, supports_power_limit=True, power_limit_w=2000.0, power_w=2000.0,
                 hashrate_ths=75.0, nameplate_power_w=3068.0, nameplate_hashrate_ths=104.0)


def test_run_restores_the_limit_curtaild_set() -> None:
    limited = _limited()
    c = one(run([limited], {"A": want("run", 1.0)}, {"A": ours(action="limit", restore=3250)}))
    assert (c.action, c.power_limit_w) == ("run", 3250)
    assert c.delta_power_w == pytest.approx(1250)
    c = one(run([limited], {"A": want("run", 1.0)}, {"A": ours(action="limit")}))
    assert c.power_limit_w == 3068  # nothing recorded: nameplate


def test_run_never_touches_a_limit_curtaild_did_not_set() -> None:
    limited = _limited()
    r = run([limited], {"A": want("run", 1.0)})
    assert r.commands == [] and r.held["A"].startswith("running under a power limit curtaild")
    assert r.effective["A"].action == "limit" and r.effective["A"].power_limit_w == 2000


def test_wake_restores_the_pre_curtailment_limit_only_where_supported() -> None:
    mem = {"A": ours(restore=2800)}
    c = one(run([miner(state="sleeping", supports_power_limit=True)],
                {"A": want("run", 1.0)}, mem))
    assert c.power_limit_w == 2800 and c.delta_power_w == pytest.approx(2800 - 40)
    c = one(run([miner(state="sleeping")], {"A": want("run", 1.0)}, mem))
    assert c.power_limit_w is None  # stock firmware: a power-limit call would fail the wake
    c = one(run([miner(state="sleeping", supports_power_limit=True)],
                {"A": want("run", 1.0)}, {"A": ours()}))
    # nothing recorded: nameplate, never a limit the firmware kept from curtaild (issue 16)
    assert c.power_limit_w == 3068
    c = one(run([miner(state="sleeping", supports_power_limit=True, power_limit_w=3060.0)],
                {"A": want("run", 1.0)}, {"A": ours()}))
    assert c.power_limit_w is None  # it reports being at nameplate: a plain resume


def test_ours_found_running_is_released_without_dwell_or_ramp() -> None:
    mem = {"A": ours(changed=NOW - 1)}
    r = run([miner()], {"A": want("run", 1.0)}, mem, config=cfg(min_dwell_s=600),
            bucket=RampBucket(budget_w=0.0, updated_at=NOW))
    c = one(r)
    assert (c.action, c.power_limit_w, c.delta_power_w) == ("run", None, 0.0)



def test_ours_running_with_its_sleep_pending_is_not_released() -> None:
    """Acknowledged, not in effect yet (a stock Antminer writes a sleep for ~20 s, then
    reboots into it): a release now would send nothing and leave the machine, once asleep,
    to the operator for good. Held while pending; released as before once it is not."""
    mem = {"A": ours(expected="sleep")}
    pending = miner(command_state="pending", commanded_action="sleep")
    r = run([pending], {"A": want("run", 1.0)}, mem)
    assert r.commands == [], r.commands
    assert r.held["A"].startswith("awaiting verification: commanded to sleep")
    for later in ("confirmed", "failed", None):  # seen in effect, or its grace is over
        c = one(run([replace(pending, command_state=later)], {"A": want("run", 1.0)}, mem))
        assert (c.action, c.power_limit_w) == ("run", None)


# --------------------------------------------------------------------- ordering
def _shed_fleet() -> tuple[list[MinerReading], dict[str, Desired]]:
    """Three running losers; margins consistent with their efficiency at one market."""
    miners = [miner("GOOD", j_per_th=21.3, power_w=3010), miner("BAD", j_per_th=38.0,
              power_w=3344), miner("MID", j_per_th=29.5, power_w=3068)]
    policy = MarginPolicy(MarginConfig(use_power_limits=False))
    mk = replace(market(), hashprice_usd_per_th_day=0.02)
    desired = policy.decide(FleetSnapshot(tuple(miners), NOW), mk, NOW)
    assert all(d.action == "sleep" for d in desired.values())
    return miners, desired


def test_shedding_worst_first_restoring_best_first() -> None:
    miners, desired = _shed_fleet()
    assert [c.key for c in run(miners, desired).commands] == ["BAD", "MID", "GOOD"]
    asleep = [replace(m, state="sleeping", hashrate_ths=0.0, power_w=40.0) for m in miners]
    wake = {m.key: want("run", 1.0) for m in miners}
    mem = {m.key: ours(m.key) for m in miners}
    assert [c.key for c in run(asleep, wake, mem).commands] == ["GOOD", "MID", "BAD"]


def test_ramp_spends_the_bucket_in_order_and_refills() -> None:
    miners, desired = _shed_fleet()
    config = cfg(ramp_w_per_min=6000)  # 100 W/s
    # 31 s of refill = 3100 W: BAD (3304 W step) does not fit and blocks the others
    r = run(miners, desired, config=config, bucket=RampBucket(0.0, NOW - 31))
    assert r.commands == []
    assert all(v.startswith("ramp limit") for v in r.held.values())
    assert r.effective["BAD"].action == "run"  # not sent: still running
    assert r.bucket == RampBucket(budget_w=pytest.approx(3100), updated_at=NOW)
    # 3 s later: 3400 W -> BAD goes, 96 W left
    r = run(miners, desired, config=config, bucket=r.bucket, now=NOW + 3)
    assert [c.key for c in r.commands] == ["BAD"]
    assert r.bucket.budget_w == pytest.approx(3400 - 3304)
    assert r.held["MID"].startswith("ramp limit: needs 3028 W, 96 W available")


def test_bucket_capacity_is_a_minute_or_the_largest_step() -> None:
    miners, desired = _shed_fleet()
    long_ago = RampBucket(0.0, NOW - 1e6)
    r = run(miners, desired, config=cfg(ramp_w_per_min=6000), bucket=long_ago)
    assert [c.key for c in r.commands] == ["BAD"]  # 6000 W cap: 3304 + 3028 does not fit
    assert r.bucket.budget_w == pytest.approx(6000 - 3304)
    # ramp smaller than one machine: the bucket still fills to that machine's step
    r = run(miners, desired, config=cfg(ramp_w_per_min=1000), bucket=long_ago)
    assert [c.key for c in r.commands] == ["BAD"]
    assert r.bucket.budget_w == pytest.approx(0.0)


def test_clock_going_back_adds_no_tokens() -> None:
    miners, desired = _shed_fleet()
    r = run(miners, desired, config=cfg(ramp_w_per_min=6000),
            bucket=RampBucket(100.0, NOW + 500))
    assert r.commands == [] and r.bucket == RampBucket(100.0, NOW)


def test_shedding_and_restoring_share_one_bucket() -> None:
    miners = [miner("LOSER"), miner("WINNER", state="sleeping")]
    desired = {"LOSER": want("sleep", -1.0), "WINNER": want("run", 1.0)}
    r = run(miners, desired, {"WINNER": ours("WINNER")}, config=cfg(ramp_w_per_min=6000),
            bucket=RampBucket(3100.0, NOW))
    assert [c.key for c in r.commands] == ["LOSER"]
    assert r.held["WINNER"].startswith("ramp limit")
    r = run(miners, desired, {"WINNER": ours("WINNER")}, config=cfg(ramp_w_per_min=7000),
            bucket=RampBucket(6100.0, NOW))
    assert [c.key for c in r.commands] == ["LOSER", "WINNER"]
    assert r.bucket.budget_w == pytest.approx(6100 - 2 * 3028)


def test_command_cap_does_not_spend_the_ramp() -> None:
    miners = [miner(f"M{i}") for i in range(5)]
    desired = {m.key: want("sleep", -1.0) for m in miners}
    r = run(miners, desired, config=cfg(max_commands_per_tick=2, ramp_w_per_min=60_000),
            bucket=RampBucket(60_000.0, NOW))
    assert len(r.commands) == 2
    assert sorted(k for k, v in r.held.items() if v.startswith("command cap")) == \
        sorted(m.key for m in miners if m.key not in {c.key for c in r.commands})
    assert r.bucket.budget_w == pytest.approx(60_000 - 2 * 3028)


# ------------------------------------------------------------------- stale market
def test_staleness_measure() -> None:
    c = GuardConfig()
    assert market_staleness_s(market(1800), c) is None
    assert market_staleness_s(market(0, tariff_age_s=2000), c) == pytest.approx(200)
    assert market_staleness_s(None, c) == float("inf")


def _mixed_fleet() -> tuple[list[MinerReading], dict[str, Desired], dict[str, MinerMemory]]:
    miners = [
        miner("LOSER"),  # running, policy wants it asleep
        miner("OURS", state="sleeping"),  # curtaild slept it; policy (stale) says keep asleep
        _limited("LIM"),
        miner("OP", state="sleeping"),  # the operator's
    ]
    desired = {"LOSER": want("sleep", -1.0), "OURS": want("sleep", -1.0),
               "LIM": want("limit", -1.0, margin=0.3, limit=2000), "OP": want("run", 1.0)}
    memory = {"OURS": ours("OURS"), "LIM": ours("LIM", "limit", restore=3068)}
    return miners, desired, memory


def test_stale_hold_keeps_everything_as_it_is() -> None:
    miners, desired, memory = _mixed_fleet()
    desired = {**desired, "OURS": want("run", 5.0)}  # even a wake is held
    r = run(miners, desired, memory, mk=market(age_s=1800 + 900))
    assert r.commands == []
    for key in ("LOSER", "OURS", "LIM"):
        assert "stale" in r.held[key] and "holding" in r.held[key]
    assert r.held["OP"].startswith("asleep by operator")
    assert {k: d.action for k, d in r.effective.items()} == {
        "LOSER": "run", "OURS": "sleep", "LIM": "limit", "OP": "sleep"}


def test_stale_hold_times_out_and_releases_only_ours() -> None:
    miners, desired, memory = _mixed_fleet()
    r = run(miners, desired, memory, mk=market(age_s=1800 + 901))
    sent = {c.key: c for c in r.commands}
    assert set(sent) == {"OURS", "LIM"}
    assert sent["OURS"].action == "run" and "fail-safe" in sent["OURS"].reason
    assert (sent["LIM"].action, sent["LIM"].power_limit_w) == ("run", 3068)
    assert "no new curtailment" in r.held["LOSER"]
    assert r.held["OP"].startswith("asleep by operator")
    # restoring goes most efficient first and within the ramp, like any restore
    assert [c.key for c in r.commands] == ["LIM", "OURS"]


def test_stale_run_mode_releases_at_once() -> None:
    miners, desired, memory = _mixed_fleet()
    config = cfg(on_stale_market="run")
    fresh = run(miners, desired, memory, config=config, mk=market(age_s=1800))
    assert [c.key for c in fresh.commands] == ["LOSER"]  # not stale yet: the policy rules
    r = run(miners, desired, memory, config=config, mk=market(age_s=1801))
    assert {c.key for c in r.commands} == {"OURS", "LIM"}


def test_release_skips_hysteresis_but_keeps_dwell_and_ramp() -> None:
    miners, desired, memory = _mixed_fleet()
    memory = {**memory, "OURS": ours("OURS", changed=NOW - 60)}
    config = cfg(on_stale_market="run", min_dwell_s=600, ramp_w_per_min=6000)
    r = run(miners, desired, memory, config=config, mk=market(age_s=5000),
            bucket=RampBucket(1000.0, NOW))
    assert r.commands == []
    assert r.held["OURS"].startswith("min dwell")
    assert r.held["LIM"].startswith("ramp limit: needs 1068 W")


def test_no_market_at_all_releases() -> None:
    miners, _, memory = _mixed_fleet()
    r = run(miners, {}, memory, mk=None)
    assert {c.key for c in r.commands} == {"OURS", "LIM"}
    assert "no market inputs" in r.commands[0].reason


# ------------------------------------------------------------ a few ticks together
def _apply(miners: list[MinerReading], commands: list[Command], memory: dict[str, MinerMemory],
           now: float) -> tuple[list[MinerReading], dict[str, MinerMemory]]:
    """A toy fleet that obeys, and a toy journal: the loop's act + verify in miniature."""
    by_cmd = {c.key: c for c in commands}
    out = []
    for m in miners:
        c = by_cmd.get(m.key)
        if c is None:
            out.append(replace(m, observed_at=now))
            continue
        if c.action == "sleep":
            out.append(replace(m, state="sleeping", hashrate_ths=0.0, power_w=40.0,
                               observed_at=now))
            memory[m.key] = ours(m.key, changed=now)
        else:
            out.append(replace(m, state="mining", hashrate_ths=m.nameplate_hashrate_ths,
                               power_w=m.nameplate_power_w, observed_at=now))
            memory.pop(m.key, None)
    return out, memory


def test_ticks_converge_and_stay_quiet() -> None:
    miners, _ = _shed_fleet()
    policy = MarginPolicy(MarginConfig(use_power_limits=False))
    config = cfg(ramp_w_per_min=6000, min_dwell_s=60)
    memory: dict[str, MinerMemory] = {}
    bucket = RampBucket(0.0, NOW)
    # 0.045 USD/TH/day at 0.06 USD/kWh: break-even 30.6 J/TH -> only BAD (38) loses
    mk = replace(market(), hashprice_usd_per_th_day=0.045)
    sent: list[tuple[float, str, str]] = []
    for tick in range(1, 12):
        now = NOW + 30 * tick
        if tick == 6:  # the hash price halves: MID and BAD lose
            mk = replace(mk, hashprice_usd_per_th_day=0.0225 * 1.5)
        desired = policy.decide(FleetSnapshot(tuple(miners), now), mk, now)
        r = apply_guards(FleetSnapshot(tuple(miners), now), mk, desired, memory, bucket,
                         config, now)
        bucket = r.bucket
        sent += [(now, c.key, c.action) for c in r.commands]
        miners, memory = _apply(miners, r.commands, memory, now)
    assert [(k, a) for _, k, a in sent] == [("BAD", "sleep"), ("MID", "sleep")]
    assert {m.key: m.state for m in miners} == {"GOOD": "mining", "BAD": "sleeping",
                                                "MID": "sleeping"}


# ----------------------------------------------------------------------- priority
def urgent(action: str, priority: str, *, limit: float | None = None,
           run_margin: float | None = None) -> Desired:
    return Desired(action=action, reason=f"{priority} {action}",  # type: ignore[arg-type]
                   power_limit_w=limit, run_margin_usd_per_day=run_margin,
                   priority=priority)  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", ["forced", "emergency"])
def test_urgent_skips_hysteresis_and_dwell(priority: str) -> None:
    m = miner("A", firmware="antminer")
    recent = {"A": ours("A", None, changed=NOW - 5)}
    c = cfg(min_dwell_s=600.0)
    normal = run([m], {"A": want("sleep", 0.05)}, recent, config=c)
    assert normal.commands == [] and "hysteresis" in normal.held["A"]
    got = one(run([m], {"A": urgent("sleep", priority, run_margin=0.05)}, recent, config=c))
    assert got.action == "sleep"


def test_forced_may_wake_a_machine_the_operator_slept() -> None:
    m = miner("A", state="sleeping")
    normal = run([m], {"A": want("run", 5.0)})
    assert normal.commands == [] and "asleep by operator" in normal.held["A"]
    assert one(run([m], {"A": urgent("run", "forced")})).action == "run"
    held = run([m], {"A": urgent("run", "emergency")})
    assert held.commands == [] and "asleep by operator" in held.held["A"]


@pytest.mark.parametrize("priority", ["forced", "emergency"])
def test_urgent_never_for_excluded_unreachable_or_flagged(priority: str) -> None:
    d = {"A": urgent("sleep", priority)}
    assert run([miner("A")], d, config=cfg(exclude=["A"])).commands == []
    assert run([miner("A", state="unreachable")], d).commands == []
    assert run([miner("A")], d, {"A": ours("A", None, flagged=True)}).commands == []


def test_forced_is_ramped_emergency_shed_is_not_and_goes_first() -> None:
    a, b = miner("A"), miner("B", j_per_th=20.0)
    empty = RampBucket(budget_w=0.0, updated_at=NOW)
    forced = run([a], {"A": urgent("sleep", "forced")}, bucket=empty, config=cfg(
        ramp_w_per_min=60.0))
    assert forced.commands == [] and "ramp limit" in forced.held["A"]
    got = run([a, b], {"A": want("sleep", -5.0), "B": urgent("sleep", "emergency")},
              bucket=empty, config=cfg(ramp_w_per_min=60.0, max_commands_per_tick=1))
    assert [c.key for c in got.commands] == ["B"]
    assert got.bucket.budget_w == 0.0  # it spent no ramp tokens


def test_emergency_restore_is_ramped() -> None:
    m = miner("A", state="sleeping")
    got = run([m], {"A": urgent("run", "emergency")}, {"A": ours("A", "sleep")},
              bucket=RampBucket(budget_w=0.0, updated_at=NOW), config=cfg(ramp_w_per_min=60.0))
    assert got.commands == [] and "ramp limit" in got.held["A"]


@pytest.mark.parametrize("priority", ["forced", "emergency"])
def test_urgent_acts_on_stale_or_missing_market(priority: str) -> None:
    stale = market(age_s=10_000.0)
    for mk in (stale, None):
        normal = run([miner("A")], {"A": want("sleep", -5.0)}, mk=mk)
        assert normal.commands == []
        got = one(run([miner("A")], {"A": urgent("sleep", priority)}, mk=mk))
        assert got.action == "sleep"


def test_emergency_sheds_take_no_slot_of_the_command_cap() -> None:
    """A demand-response event on many machines goes out in one tick; normal ones are capped."""
    fleet = [miner(f"E{i:03d}") for i in range(120)] + [miner(f"N{i}") for i in range(5)]
    wants = {m.key: urgent("sleep", "emergency") for m in fleet if m.key.startswith("E")}
    wants |= {m.key: want("sleep", -5.0) for m in fleet if m.key.startswith("N")}
    got = run(fleet, wants, bucket=RampBucket(budget_w=1e9, updated_at=NOW),
              config=cfg(max_commands_per_tick=3, ramp_w_per_min=1e9))
    sent = {c.key for c in got.commands}
    assert {k for k in sent if k.startswith("E")} == {k for k in wants if k.startswith("E")}
    assert len([k for k in sent if k.startswith("N")]) == 3
    assert all(c.priority == "emergency" for c in got.commands if c.key.startswith("E"))
    assert sum(1 for r in got.held.values() if r.startswith("command cap")) == 2


def test_loop_cap_exempts_emergency_commands() -> None:
    from curtaild.controller.loop import _capped

    def c(key: str, priority: str) -> Command:
        return Command(key=key, ip="127.0.0.1", action="sleep", power_limit_w=None, reason="",
                       delta_power_w=-3000.0, priority=priority)  # type: ignore[arg-type]

    cmds = [c("E1", "emergency"), c("N1", "normal"), c("N2", "normal"), c("E2", "emergency"),
            c("N3", "normal")]
    assert [x.key for x in _capped(cmds, 2)] == ["E1", "N1", "N2", "E2"]
