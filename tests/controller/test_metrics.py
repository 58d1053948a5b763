"""The Prometheus exporter on hand-made TickResults: values, labels and units; the served
text against prometheus_client's own rendering; promtool; the HTTP server; daemon wiring."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from curtaild.controller.config import ConfigError, parse_config
from curtaild.controller.loop import TickResult
from curtaild.controller.metrics import (
    ClusterMetrics,
    LoopStats,
    MetricsExporter,
    MetricsState,
    MqttCounters,
    SiteMetrics,
    live_families,
    parse_listen,
    render_text,
    snapshot_families,
)
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MarketSnapshot, MinerReading
from tests.support.prometheus import DASHBOARD, RULES, promtool

NOW = 1_750_000_000.0
NETWORK = {  # the design's example: difficulty 1e14, 3.15 BTC per block, 100,000 USD
    "difficulty": 1e14, "btc_price_usd": 100_000.0, "subsidy_btc": 3.125,
    "fees_per_block_btc": 0.025,
}


def reading(key: str, **kw) -> MinerReading:
    base = dict(key=key, ip="127.0.0.1", make="AntMiner", model="S19j Pro", firmware="antminer",
                state="mining", hashrate_ths=100.0, power_w=3000.0, power_source="nameplate",
                power_limit_w=None, temp_c=71.5, fan_rpm=(5400, 5500), observed_at=NOW - 1,
                mac=key, serial="SN1")
    base.update(kw)
    return MinerReading(**base)  # type: ignore[arg-type]


def market(**kw) -> MarketSnapshot:
    base = dict(hashprice_usd_per_th_day=0.05, hashprice_source="mempool", hashprice_age_s=60.0,
                tariff_usd_per_kwh=0.06, tariff_source="flat", tariff_age_s=0.0, pool_fee=0.02,
                extra={"network": dict(NETWORK),
                       "hashprice": {"sources": [
                           {"source": "mempool", "usd_per_th_day": 0.05, "age_s": 60.0,
                            "fresh": True, "error": None, "role": "primary"},
                           {"source": "fixed", "usd_per_th_day": 0.045, "age_s": 0.0,
                            "fresh": True, "error": None, "role": "fallback 1"}],
                           "disagreement": None},
                       "tariff": {"in_demand_window": False}})
    base.update(kw)
    return MarketSnapshot(**base)  # type: ignore[arg-type]


def tick(miners: tuple[MinerReading, ...] | None = None, mk: MarketSnapshot | None = None,
         **kw) -> TickResult:
    miners = miners if miners is not None else (
        reading("AA:01"),  # S19j Pro mining at 30 J/TH
        reading("AA:02", ip="127.0.0.2", make="WhatsMiner", model="M50", firmware="whatsminer",
                hashrate_ths=100.0, power_w=2500.0, power_source="firmware",
                power_limit_w=2500.0, temp_c=65.0, fan_rpm=(4000,)),
        reading("AA:03", ip="127.0.0.3", state="sleeping", hashrate_ths=0.0, power_w=40.0,
                power_source="idle_estimate", temp_c=None, fan_rpm=()),
        reading("127.0.0.4", ip="127.0.0.4", make="", model="", firmware="", state="unreachable",
                hashrate_ths=0.0, power_w=0.0, power_source="none", temp_c=None, fan_rpm=(),
                mac=None, serial=None, error="timeout: no answer"),
    )
    base = dict(
        started_at=NOW - 2.0, duration_s=1.5, fleet=FleetSnapshot(miners, NOW - 0.5),
        market=mk if mk is not None else market(),
        desired={"AA:01": Desired("run", "earns", run_margin_usd_per_day=0.5),
                 "AA:02": Desired("limit", "limit earns more", power_limit_w=2200.0,
                                  run_margin_usd_per_day=1.25),
                 "AA:03": Desired("sleep", "loses", run_margin_usd_per_day=-0.75)},
        effective={}, held={"AA:01": "min dwell"},
        commands=(Command("AA:02", "127.0.0.2", "limit", 2200.0, "limit", -300.0),),
        outcomes={"AA:02": "ok: limited"}, dry_run=False)
    base.update(kw)
    return TickResult(**base)  # type: ignore[arg-type]


def state(t: TickResult | None = None, **kw) -> MetricsState:
    base = dict(tick=t if t is not None else tick(), curtailed=frozenset({"AA:03"}),
                flagged=frozenset({"AA:01"}), poll_errors=(("timeout", 4),), journal_writes=17,
                reloads=(("ok", 2), ("failed", 1)), poll_interval_s=30.0,
                stale_market_after_s=1800.0, stale_reading_after_s=300.0, ramp_budget_w=12000.0,
                fixed_costs_usd_per_day=10.0, power_cap_w=None, published_at=NOW)
    base.update(kw)
    return MetricsState(**base)  # type: ignore[arg-type]


def samples(text: str | bytes) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a text exposition."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str | bytes, name: str, **labels: str) -> float:
    found = [(k, v) for k, v in samples(text).items()
             if k[0] == name and all(dict(k[1]).get(lk) == lv for lk, lv in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0][1]


def has(text: str | bytes, name: str) -> bool:
    return any(k[0] == name for k in samples(text))


def exposition(s: MetricsState, now: float = NOW) -> bytes:
    return render_text(live_families(s, now)) + render_text(snapshot_families(s))


# ------------------------------------------------------------------------- listen / config
@pytest.mark.parametrize(("text", "expect"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:65535", ("localhost", 65535)),
    ("metrics.site-a.example:9464", ("metrics.site-a.example", 9464)),
])
def test_parse_listen_accepts(text: str, expect: tuple[str, int]) -> None:
    assert parse_listen(text) == expect


@pytest.mark.parametrize(("text", "why"), [
    ("9464", "expected HOST:PORT"),
    (":9464", "expected HOST:PORT"),
    ("127.0.0.1:", "expected HOST:PORT"),
    ("127.0.0.1:0", "from 1 to 65535"),
    ("127.0.0.1:70000", "from 1 to 65535"),
    ("127.0.0.1:http", "from 1 to 65535"),
    ("::1:9464", "in brackets"),
    ("[127.0.0.1]:9464", "not an IPv6 address"),
    ("[::1:9464", "unbalanced"),
    ("300.1.1.1:9464", "neither an IP address nor a host name"),
    ("bad_host!:9464", "neither an IP address nor a host name"),
])
def test_parse_listen_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_listen(text)


BASE = {"fleet": {"hosts": ["127.0.0.1"]}, "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.06}, "policy": {"name": "margin"}}


def test_config_metrics_off_by_default_and_site_optional() -> None:
    cfg = parse_config(BASE)
    assert cfg.metrics.listen is None
    assert cfg.site.fixed_costs_usd_per_day is None and cfg.site.power_cap_w is None
    cfg = parse_config({**BASE, "metrics": {"listen": "127.0.0.1:9464"},
                        "site": {"fixed_costs_usd_per_day": 1200.0, "power_cap_w": 2.5e6}})
    assert cfg.metrics.listen == "127.0.0.1:9464"
    assert cfg.site.fixed_costs_usd_per_day == 1200.0 and cfg.site.power_cap_w == 2.5e6


@pytest.mark.parametrize(("extra", "problem"), [
    ({"metrics": {"listen": "9464"}}, "metrics.listen: '9464': expected HOST:PORT"),
    ({"metrics": {"listen": "127.0.0.1:99999"}}, "metrics.listen: '127.0.0.1:99999': port"),
    ({"metrics": {"port": 9464}}, "metrics.port: Extra inputs are not permitted"),
    ({"site": {"fixed_costs_usd_per_day": -1}}, "site.fixed_costs_usd_per_day:"),
    ({"site": {"power_cap_w": 0}}, "site.power_cap_w:"),
    ({"site": {"fixed_cost": 1}}, "site.fixed_cost: Extra inputs are not permitted"),
])
def test_config_errors_name_the_key(extra: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, **extra})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


# ----------------------------------------------------------------------- values and labels
def test_per_miner_series_labels_and_units() -> None:
    text = exposition(state())
    ml = {"miner": "AA:02", "model": "M50", "firmware": "whatsminer"}
    assert value(text, "curtaild_miner_up", **ml) == 1.0
    assert value(text, "curtaild_miner_state", **ml, state="mining") == 1.0
    assert value(text, "curtaild_miner_hashrate_hashes_per_second", **ml) == 100e12  # H/s
    assert value(text, "curtaild_miner_power_watts", **ml, source="firmware") == 2500.0
    assert value(text, "curtaild_miner_power_limit_watts", **ml) == 2500.0
    assert value(text, "curtaild_miner_temperature_celsius", **ml) == 65.0
    assert value(text, "curtaild_miner_fan_speed_rpm", **ml, fan="0") == 4000.0
    assert value(text, "curtaild_miner_desired", **ml, action="limit") == 1.0
    assert value(text, "curtaild_miner_desired_power_limit_watts", **ml) == 2200.0
    assert value(text, "curtaild_miner_margin_usd_per_day", **ml) == 1.25
    assert value(text, "curtaild_miner_curtailed", **ml) == 0.0
    # identity details only on the info series
    assert value(text, "curtaild_miner_info", miner="AA:02", ip="127.0.0.2", make="WhatsMiner",
                 mac="AA:02", serial="SN1") == 1.0
    assert not any("ip" in dict(k[1]) for k in samples(text) if k[0] != "curtaild_miner_info")
    # curtailed (journal ownership) and flagged
    assert value(text, "curtaild_miner_curtailed", miner="AA:03") == 1.0
    assert value(text, "curtaild_miner_flagged", miner="AA:01") == 1.0
    assert value(text, "curtaild_miner_state", miner="AA:03", state="sleeping") == 1.0
    assert value(text, "curtaild_miner_power_watts", miner="AA:03",
                 source="idle_estimate") == 40.0
    # the unreachable one: up 0, no desired, no temperature; key falls back to the ip
    assert value(text, "curtaild_miner_up", miner="127.0.0.4") == 0.0
    assert value(text, "curtaild_miner_state", miner="127.0.0.4", state="unreachable") == 1.0
    names = {k[0] for k in samples(text) if dict(k[1]).get("miner") == "127.0.0.4"}
    assert "curtaild_miner_desired" not in names
    assert "curtaild_miner_temperature_celsius" not in names
    # one series per miner for state and desired (value 1, the label carries the state)
    assert sum(1 for k in samples(text) if k[0] == "curtaild_miner_state") == 4


def test_site_economics_by_hand() -> None:
    text = exposition(state())
    # power 3000 + 2500 + 40 + 0 W; hashrate 200 TH/s
    assert value(text, "curtaild_site_power_watts") == 5540.0
    assert value(text, "curtaild_site_hashrate_hashes_per_second") == 200e12
    # revenue 200 x 0.05 x 0.98 = 9.8; energy 5.54 kW x 24 h x 0.06 = 7.9776
    assert value(text, "curtaild_site_revenue_usd_per_day") == pytest.approx(9.8)
    assert value(text, "curtaild_site_energy_cost_usd_per_day") == pytest.approx(7.9776)
    assert value(text, "curtaild_site_margin_usd_per_day") == pytest.approx(9.8 - 7.9776)
    # running fleet: 5500 W / 200 TH/s = 27.5 J/TH
    assert value(text, "curtaild_site_efficiency_joules_per_terahash") == pytest.approx(27.5)
    # breakeven tariff = 0.05 x 0.98 / (24 x 27.5 / 1000) = 0.0742424
    assert value(text, "curtaild_site_breakeven_tariff_usd_per_kilowatt_hour") == \
        pytest.approx(0.05 * 0.98 / (24 * 0.0275))
    # breakeven hash price = 0.06 x 24 x 0.0275 / 0.98
    assert value(text, "curtaild_site_breakeven_hashprice_usd_per_terahash_per_second_per_day"
                 ) == pytest.approx(0.06 * 24 * 0.0275 / 0.98)
    # BTC/day from the network share: 144 x 3.15 x 200e12 / (1e14 x 2^32 / 600) x 0.98
    btc_day = 144 * 3.15 * 200e12 / (1e14 * 2**32 / 600) * 0.98
    assert value(text, "curtaild_site_production_btc_per_day") == pytest.approx(btc_day)
    assert value(text, "curtaild_site_cash_cost_usd_per_btc") == pytest.approx(7.9776 / btc_day)
    assert value(text, "curtaild_site_all_in_cost_usd_per_btc") == \
        pytest.approx((7.9776 + 10.0) / btc_day)
    assert value(text, "curtaild_site_fixed_costs_usd_per_day") == 10.0
    assert value(text, "curtaild_market_btc_price_usd") == 100_000.0
    # machines by state / desired action, including zeros
    assert value(text, "curtaild_site_miners", state="mining") == 2
    assert value(text, "curtaild_site_miners", state="sleeping") == 1
    assert value(text, "curtaild_site_miners", state="unreachable") == 1
    assert value(text, "curtaild_site_miners_desired", action="limit") == 1
    assert value(text, "curtaild_site_miners_curtailed") == 1
    assert value(text, "curtaild_site_miners_flagged") == 1
    assert value(text, "curtaild_site_miners_held") == 1
    assert value(text, "curtaild_last_sweep_commands") == 1


def test_btc_per_day_falls_back_to_revenue_over_price_then_is_omitted() -> None:
    only_price = market(extra={"network": {"btc_price_usd": 50_000.0}})
    text = exposition(state(tick(mk=only_price)))
    assert value(text, "curtaild_site_production_btc_per_day") == pytest.approx(9.8 / 50_000)
    assert value(text, "curtaild_site_cash_cost_usd_per_btc") == pytest.approx(
        7.9776 / (9.8 / 50_000))
    assert not has(text, "curtaild_market_network_difficulty")
    # Hash price in BTC (Hashrate Index) gives BTC/day directly
    hp_btc = market(extra={"network": {"hashprice_btc_per_th_day": 5e-7}})
    text = exposition(state(tick(mk=hp_btc)))
    assert value(text, "curtaild_site_production_btc_per_day") == pytest.approx(200 * 5e-7 * 0.98)
    # A fixed hash price and no BTC price: no production, no cost per BTC (never invented)
    text = exposition(state(tick(mk=market(extra={"network": {}}))))
    for name in ("curtaild_site_production_btc_per_day", "curtaild_site_cash_cost_usd_per_btc",
                 "curtaild_site_all_in_cost_usd_per_btc", "curtaild_market_btc_price_usd"):
        assert not has(text, name), name
    assert has(text, "curtaild_site_revenue_usd_per_day")


def test_all_in_cost_only_with_fixed_costs() -> None:
    text = exposition(state(fixed_costs_usd_per_day=None))
    assert has(text, "curtaild_site_cash_cost_usd_per_btc")
    assert not has(text, "curtaild_site_all_in_cost_usd_per_btc")
    assert not has(text, "curtaild_site_fixed_costs_usd_per_day")


def test_power_cap_is_the_lower_of_configured_and_demand_response() -> None:
    assert not has(exposition(state()), "curtaild_site_power_cap_watts")
    text = exposition(state(power_cap_w=8000.0))
    assert value(text, "curtaild_site_power_cap_watts") == 8000.0
    text = exposition(state(tick(mk=market(power_cap_w=5000.0)), power_cap_w=8000.0))
    assert value(text, "curtaild_site_power_cap_watts") == 5000.0
    text = exposition(state(tick(mk=market(power_cap_w=5000.0))))
    assert value(text, "curtaild_site_power_cap_watts") == 5000.0


def test_market_series() -> None:
    text = exposition(state())
    assert value(text, "curtaild_market_hashprice_usd_per_terahash_per_second_per_day") == 0.05
    assert value(text, "curtaild_market_tariff_usd_per_kilowatt_hour") == 0.06
    assert value(text, "curtaild_market_pool_fee_ratio") == 0.02
    assert value(text, "curtaild_market_info", hashprice_source="mempool",
                 tariff_source="flat") == 1.0
    assert value(text, "curtaild_market_network_difficulty") == 1e14
    assert value(text, "curtaild_market_network_hashrate_hashes_per_second") == \
        pytest.approx(1e14 * 2**32 / 600)
    assert value(text, "curtaild_market_block_reward_btc") == pytest.approx(3.15)
    assert value(text, "curtaild_market_demand_window_active") == 0.0
    src = "curtaild_market_hashprice_source_usd_per_terahash_per_second_per_day"
    assert value(text, src, source="mempool", role="primary") == 0.05
    assert value(text, src, source="fixed", role="fallback 1") == 0.045
    assert value(text, "curtaild_market_hashprice_source_fresh", source="mempool") == 1.0
    assert not has(text, "curtaild_market_hashprice_disagreement_ratio")  # None: omitted


def test_ages_grow_between_ticks_at_scrape_time() -> None:
    s = state()
    # tick started at NOW-2 with a 60 s old hash price; fleet polled at NOW-0.5
    text = render_text(live_families(s, NOW))
    assert value(text, "curtaild_input_age_seconds", input="hashprice") == pytest.approx(62.0)
    assert value(text, "curtaild_input_age_seconds", input="tariff") == pytest.approx(2.0)
    assert value(text, "curtaild_input_age_seconds", input="fleet") == pytest.approx(0.5)
    assert value(text, "curtaild_market_hashprice_source_age_seconds", source="mempool") == \
        pytest.approx(62.0)
    later = render_text(live_families(s, NOW + 600))  # the loop is stuck: ages keep growing
    assert value(later, "curtaild_input_age_seconds", input="hashprice") == pytest.approx(662.0)
    assert value(later, "curtaild_input_age_seconds", input="fleet") == pytest.approx(600.5)
    snap = render_text(snapshot_families(s))
    assert value(snap, "curtaild_input_max_age_seconds", input="hashprice") == 1800.0
    assert value(snap, "curtaild_input_max_age_seconds", input="fleet") == 300.0


def test_controller_counters() -> None:
    text = exposition(state())
    assert value(text, "curtaild_poll_errors_total", kind="timeout") == 4
    assert value(text, "curtaild_poll_errors_total", kind="refused") == 0  # always present
    assert value(text, "curtaild_journal_writes_total") == 17
    assert value(text, "curtaild_config_reloads_total", result="ok") == 2
    assert value(text, "curtaild_config_reloads_total", result="failed") == 1
    assert value(text, "curtaild_poll_interval_seconds") == 30.0
    assert value(text, "curtaild_ramp_budget_watts") == 12000.0
    assert value(text, "curtaild_dry_run") == 0.0
    assert value(text, "curtaild_last_sweep_duration_seconds") == 1.5
    assert value(text, "curtaild_last_sweep_timestamp_seconds") == NOW - 0.5
    info = [k for k in samples(text) if k[0] == "curtaild_build_info"]
    assert len(info) == 1 and dict(info[0][1])["version"]


def test_loop_stats_count_commands_verifications_and_sweeps() -> None:
    stats = LoopStats()
    cmds = (Command("A", "ip", "sleep", None, "r", -1.0),
            Command("B", "ip", "sleep", None, "r", -1.0),
            Command("C", "ip", "run", None, "r", 1.0),
            Command("D", "ip", "limit", 100.0, "r", -1.0))
    stats.tick_done(tick(commands=cmds, duration_s=0.3,
                         outcomes={"A": "ok: slept", "B": "failed: refused", "C": "dry-run"},
                         verification={"X": "mismatch", "Y": "flagged", "Z": "verified"}))
    stats.tick_done(tick(commands=(), outcomes={}, duration_s=12.0,
                         verification={"X": "mismatch"}))
    stats.tick_failed(700.0)
    text = exposition(state(counters=stats.snapshot()))
    assert value(text, "curtaild_commands_total", action="sleep", result="ok") == 1
    assert value(text, "curtaild_commands_total", action="sleep", result="failed") == 1
    assert value(text, "curtaild_commands_total", action="run", result="dry_run") == 1
    assert value(text, "curtaild_commands_total", action="limit", result="ok") == 0  # not sent
    assert value(text, "curtaild_verification_failures_total", verdict="mismatch") == 2
    assert value(text, "curtaild_verification_failures_total", verdict="flagged") == 1
    assert value(text, "curtaild_ticks_total", result="ok") == 2
    assert value(text, "curtaild_ticks_total", result="failed") == 1
    h = "curtaild_sweep_duration_seconds"
    assert value(text, f"{h}_bucket", le="0.25") == 0
    assert value(text, f"{h}_bucket", le="0.5") == 1
    assert value(text, f"{h}_bucket", le="15.0") == 2
    assert value(text, f"{h}_bucket", le="600.0") == 2
    assert value(text, f"{h}_bucket", le="+Inf") == 3
    assert value(text, f"{h}_count") == 3
    assert value(text, f"{h}_sum") == pytest.approx(712.3)


def test_before_the_first_tick_only_controller_series() -> None:
    text = exposition(MetricsState(tick=None))
    assert has(text, "curtaild_build_info") and has(text, "curtaild_ticks_total")
    assert value(text, "curtaild_ticks_total", result="ok") == 0
    assert not any(k[0].startswith(("curtaild_miner_", "curtaild_site_power_watts"))
                   for k in samples(text))


def test_no_market_yet_keeps_fleet_series() -> None:
    t = tick(market=None, desired={})
    text = exposition(state(t))
    assert value(text, "curtaild_site_power_watts") == 5540.0
    assert not has(text, "curtaild_site_revenue_usd_per_day")
    assert not has(text, "curtaild_market_tariff_usd_per_kilowatt_hour")
    assert not has(text, "curtaild_miner_margin_usd_per_day")


def test_fast_rendering_matches_prometheus_client() -> None:
    """The served text equals prometheus_client's rendering of the custom collector, also for
    label values that need escaping."""
    odd = reading("AA:09", model='S19 "pro"\\x\nnew', firmware="antminer")
    exporter = MetricsExporter()
    exporter.publish(state(tick(miners=(*tick().fleet.miners, odd)),
                           power_cap_w=9000.0))
    ours = samples(exporter.exposition())
    theirs = samples(generate_latest(exporter.registry))
    live = ("curtaild_input_age_seconds", "curtaild_market_hashprice_source_age_seconds")
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if not k[0].startswith(("process_", *live))}
    assert strip(ours) == strip(theirs)
    assert len(strip(ours)) > 80
    assert value(exporter.exposition(), "curtaild_miner_up", miner="AA:09",
                 model='S19 "pro"\\x\nnew') == 1.0


def _full_state() -> MetricsState:
    s = state(tick(mk=market(power_cap_w=7000.0, extra={
        **market().extra, "hashprice": {**market().extra["hashprice"], "disagreement": 0.02}})))
    stats = LoopStats()
    stats.tick_done(s.tick)  # type: ignore[arg-type]
    mqtt = MqttCounters(connected=True, reconnects=1, published=(("state", 3),), dropped=0,
                        commands=(("curtail", "accepted", 1),))
    from dataclasses import replace

    from tests.support.site_view import full_site_view  # PDUs, meter (issue 18)

    first, *rest = s.tick.fleet.miners  # placed on a phase of the site map (issue 18)
    fleet = replace(s.tick.fleet, miners=(replace(first, phase="L1"), *rest))
    # a sharded site's allocator (issue 19): its cluster and site families too
    cluster = ClusterMetrics(instance="b1", shard="B", leader=True, term=7, lease_deadline=NOW,
                             etcd_up=True, takeovers=1, losses=0, budget_w=3100.0,
                             allocator=True, site=SiteMetrics(
                                 power_w=15000.0, target_w=6300.0, event=True,
                                 shards=(("A", 9000.0, 3200.0), ("B", 6000.0, 3100.0))))
    return state(replace(s.tick, site=full_site_view(), fleet=fleet), counters=stats.snapshot(),
                 mqtt=mqtt, cluster=cluster)


def test_promtool_check_metrics_on_generated_exposition() -> None:
    exporter = MetricsExporter()
    exporter.publish(_full_state())
    result = promtool("check", "metrics", stdin=exporter.exposition())
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_every_metric_in_dashboard_and_rules_is_exported() -> None:
    """A renamed metric must not leave a panel or an alert silently empty."""
    exporter = MetricsExporter()
    exporter.publish(_full_state())
    exported = {k[0] for k in samples(exporter.exposition())}
    exported |= {n.removesuffix("_bucket") for n in exported}
    referenced = set(re.findall(r"\bcurtaild_[a-z0-9_]+", DASHBOARD.read_text()))
    referenced |= set(re.findall(r"\bcurtaild_[a-z0-9_]+", RULES.read_text()))
    referenced = {r for r in referenced if not r.startswith("curtaild_fleet")}
    missing = sorted(r for r in referenced if r not in exported
                     and r + "_bucket" not in exported)
    assert not missing, missing


def test_every_exported_metric_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    exporter = MetricsExporter()
    exporter.publish(_full_state())
    families = {f.name for f in text_string_to_metric_families(exporter.exposition().decode())}
    undocumented = sorted(f for f in families if f.startswith("curtaild_")
                          and f not in doc and f + "_total" not in doc
                          and f + "_info" not in doc)
    assert not undocumented, undocumented


# ------------------------------------------------------------------------------- serving
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_server_serves_text_and_gzip_off_the_loop() -> None:
    port = _free_port()
    exporter = MetricsExporter(f"127.0.0.1:{port}")
    exporter.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        # before the first tick: counters and build info, already scrapeable
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert value(r.read(), "curtaild_ticks_total", result="ok") == 0
        exporter.publish(_full_state())
        with urllib.request.urlopen(url, timeout=5) as r:
            plain = r.read()
        req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            unzipped = gzip.decompress(r.read())  # two gzip members: one stream
        assert value(unzipped, "curtaild_site_power_watts") == 5540.0
        strip = {k for k in samples(plain) if not k[0].startswith(("process_", "curtaild_input_age",
                                                                   "curtaild_market_hashprice_source_age"))}
        assert strip == {k for k in samples(unzipped) if k in strip}
        assert has(plain, "process_resident_memory_bytes")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
        assert err.value.code == 404
    finally:
        exporter.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_concurrent_scrapes_during_publication_see_whole_snapshots() -> None:
    port = _free_port()
    exporter = MetricsExporter(f"127.0.0.1:{port}")
    exporter.start()
    states = [state(tick(duration_s=float(i)), journal_writes=i) for i in range(1, 30)]
    errors: list[str] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read()
            s = samples(text)
            writes = s.get(("curtaild_journal_writes_total", ()))
            dur = s.get(("curtaild_last_sweep_duration_seconds", ()))
            if writes is not None and dur is not None and writes != dur:
                errors.append(f"torn snapshot: writes {writes} duration {dur}")

    threads = [threading.Thread(target=scraper) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for s in states:
            exporter.publish(s)
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        exporter.stop()
    assert not errors, errors[:3]


def test_listen_off_starts_nothing() -> None:
    exporter = MetricsExporter(None)
    exporter.start()
    assert exporter.address is None
    exporter.stop()


async def test_daemon_exits_2_when_the_metrics_address_is_taken(tmp_path: Path,
                                                               caplog) -> None:
    from curtaild.controller.daemon import Daemon

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = parse_config({**BASE, "metrics": {"listen": f"127.0.0.1:{port}"},
                            "controller": {"state_dir": str(tmp_path / "state")}})
        daemon = Daemon(str(tmp_path / "config.toml"), cfg)
        rc = await asyncio.wait_for(daemon.run(), 10)
    assert rc == 2
    assert f"metrics.listen 127.0.0.1:{port}: cannot listen" in caplog.text


def test_state_from_daemon_reads_counters_and_journal(tmp_path: Path) -> None:
    """What the daemon publishes after a tick (journal ownership, flags, driver errors)."""
    from curtaild.controller.daemon import Daemon

    cfg = parse_config({**BASE, "controller": {"state_dir": str(tmp_path / "state"),
                                               "poll_interval_s": 5},
                        "site": {"fixed_costs_usd_per_day": 3.0, "power_cap_w": 1e4}})
    daemon = Daemon(str(tmp_path / "config.toml"), cfg)
    try:
        t = tick()
        daemon.reconciler.last = t
        daemon.reconciler.driver.error_counts["refused"] = 3
        daemon.reloads["failed"] += 1
        j = daemon.journal
        sleep = Command("AA:03", "127.0.0.3", "sleep", None, "loses", -3000.0)
        j.record_intent(sleep, observed_limit_w=None, dry_run=False)
        j.record_outcome(sleep, "ok", "slept")
        daemon.metrics.stats.tick_done(t)
        daemon.metrics.publish_from(daemon)
        s = daemon.metrics.state
        assert s.tick is t
        assert "AA:03" in s.curtailed
        assert dict(s.poll_errors)["refused"] == 3
        assert dict(s.reloads) == {"ok": 0, "failed": 1}
        assert s.journal_writes == j.writes > 0
        assert s.poll_interval_s == 5 and s.fixed_costs_usd_per_day == 3.0
        assert s.power_cap_w == 1e4
        text = daemon.metrics.exposition()
        assert value(text, "curtaild_commands_total", action="limit", result="ok") == 1
        assert value(text, "curtaild_site_power_cap_watts") == 1e4
    finally:
        daemon.journal.close()


def test_dashboard_is_grafana_json_with_stable_uid_and_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "curtaild-fleet"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "miner" in variables
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Site overview", "Market", "Miner: $miner", "Controller health",
                    "Decisions", "PDUs and site meter"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception),
                                             ("", pytest.skip.Exception)])
def test_missing_promtool_skips_locally_and_fails_under_ci(monkeypatch, ci: str,
                                                           outcome: type) -> None:
    import os
    import shutil

    from tests.support import prometheus

    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(outcome):
        prometheus.tool("promtool")
