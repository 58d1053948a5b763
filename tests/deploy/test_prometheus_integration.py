"""The shipped dashboard and alert rules against a REAL Prometheus scraping a REAL curtaild.

Processes: the miner emulator (127.30.0.0/16), two loopback servers speaking mempool.space's
API (so the network, BTC price and cost-per-BTC series exist and the two hash price sources
can be cross-checked), `curtaild run` with `[metrics] listen`, and Debian's `prometheus`
scraping it every second with the shipped rule file. Then, through Prometheus's HTTP API:

* every query of every dashboard panel (template variables substituted as Grafana would) is
  valid and returns data, except the panels listed in ALLOWED_EMPTY with a reason;
* every alert expression is valid, every rule evaluates without error, every series an alert
  reads exists, and only the alert this setup provokes (site over its power cap) is active;
* `promtool check metrics` accepts a live scrape.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.drivers.fakeapi import FakeApi, mempool_routes
from tests.support.daemon import DaemonProcess, wait_for, write_config
from tests.support.emulator import EmulatorProcess, free_port
from tests.support.mosquitto import MosquittoProcess
from tests.support.prometheus import DASHBOARD, RULES, PrometheusProcess, promtool, tool

pytestmark = pytest.mark.integration

# One of each family and model (S19, S19j Pro, S21: stock Antminer; M30S, M50: Whatsminer;
# S19 XP: LuxOS). At ~0.045 USD/TH/day and 0.07 USD/kWh the fleet splits three ways: the
# S21 and S19 XP run, the M50 is power-limited, the rest are put to sleep.
COUNT = 6
FIRST = "127.30.0.1"
RANGE = "127.30.0.1-127.30.0.6"
# mempool_routes' hand calculation gives 0.0633672 USD/TH/day at 100,000 USD; scale the price
PRICE_A, PRICE_B = 71_000.0, 72_000.0  # median ~0.0453 USD/TH/day, 1.4 % apart
POWER_CAP_W = 5_000.0  # below what the fleet draws even curtailed: provokes the over-cap alert

#: Panel title -> why it may legitimately have no data in this test (none at the moment:
#: the test provides a power cap, fixed costs, two live hash price sources, a limited miner).
ALLOWED_EMPTY: dict[str, str] = {}

#: Alerts this setup provokes (pending, or firing once their `for` has passed).
PROVOKED = {"CurtaildSiteOverPowerCap"}
#: Alerts on series this one-instance stack cannot have, and where their series are checked
#: against a real scrape instead.
ELSEWHERE = {"CurtaildShardedSiteOverTarget": "a sharded site's allocator: "
             "tests/controller/test_site_demand_integration.py"}

WINDOW_S = 60.0
STEP_S = 2.0


def _hashprice_table(a: FakeApi, b: FakeApi) -> str:
    return (
        "[hashprice]\n"
        'source = "mempool"\n'
        f'base_url = "{a.url}/api"\n'
        'combine = "median"\n'
        "max_disagreement = 0.10\n"
        f'fallbacks = [{{ source = "mempool", base_url = "{b.url}/api" }}]\n'
    )


def _site_tables(tmp_path: Path) -> str:
    """The --count fleet's emulated APC PDU and meter (emulator/pdu/plan.py: at the first
    miner's address), so the PDU and meter panels and alerts have series (issue 18)."""
    (tmp_path / "pdu-community").write_text("public\n")
    placed = "".join(f'[[inventory.miner]]\nid = "127.30.0.{i}"\nphase = "L{1 + i % 3}"\n'
                     for i in range(1, COUNT + 1))  # phases: the phase balance series
    return (f'[[pdu]]\naddress = "{FIRST}"\nmib = "apc"\nversion = "v2c"\n'
            f'community_file = "{tmp_path / "pdu-community"}"\n'
            f'[meter]\naddress = "{FIRST}"\n' + placed)


def _config(tmp_path: Path, api_a: FakeApi, api_b: FakeApi, metrics_port: int,
            mqtt: str) -> Path:
    cfg = write_config(
        tmp_path / "config.toml", ranges=[RANGE], hashprice=0.045, tariff=0.07,
        state_dir=tmp_path / "state", poll_interval_s=1.0,
        guards={"ramp_w_per_min": 100_000.0},
        policy={"use_power_limits": True},
        extra=(f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
               f"[site]\nfixed_costs_usd_per_day = 40.0\npower_cap_w = {POWER_CAP_W}\n"
               + mqtt + _site_tables(tmp_path)))
    text = cfg.read_text()
    # write_config writes a fixed hash price; swap in the two live (loopback) sources
    text = re.sub(r"\[hashprice\]\n(?:[^\[\n][^\n]*\n)*", _hashprice_table(api_a, api_b), text)
    cfg.write_text(text)
    return cfg


def _substitute(expr: str, *, instance: str, miner: str) -> str:
    """Template variables as Grafana substitutes them for this test's Prometheus (1 s scrape:
    $__rate_interval = max(4 x scrape interval, $__interval + scrape interval))."""
    return (expr.replace("${instance}", instance).replace("$instance", instance)
            .replace("${miner}", miner).replace("$miner", miner)
            .replace("$__rate_interval", "10s").replace("$__interval", f"{STEP_S:g}s")
            .replace("$__range", f"{WINDOW_S:g}s"))


def _selectors(expr: str) -> list[str]:
    """The series an expression reads: each metric name with its {matchers}."""
    return [m.group(0) for m in re.finditer(r"\b(?:up|curtaild_[a-z0-9_]+)\b(?:\{[^}]*\})?",
                                            expr)]


def _label_values(prom: PrometheusProcess, label: str, match: str) -> list[str]:
    answer = prom.api(f"label/{label}/values", **{"match[]": match})
    assert answer.get("status") == "success", answer
    return answer["data"]


@pytest.fixture
def stack(tmp_path: Path):
    tool("prometheus")
    api_a, api_b = FakeApi().start(), FakeApi().start()
    mempool_routes(api_a, price=PRICE_A)
    mempool_routes(api_b, price=PRICE_B)
    port = free_port()
    broker = MosquittoProcess().start()  # the MQTT series (and their alert) exist too
    cfg = _config(tmp_path, api_a, api_b, port, broker.mqtt_toml(tmp_path / "state"))
    try:
        with EmulatorProcess(count=COUNT, first_ip=FIRST, time_scale=0.01) as emu, \
                DaemonProcess(cfg, tmp_path / "curtaild.log") as daemon, \
                PrometheusProcess([f"127.0.0.1:{port}"], rule_files=[RULES]) as prom:
            yield emu, daemon, prom, f"127.0.0.1:{port}"
    finally:
        api_a.stop()
        api_b.stop()
        broker.stop()
        broker._tmp.cleanup()


def test_dashboard_and_alerts_against_real_prometheus(stack) -> None:
    emu, daemon, prom, target = stack
    try:
        _run(emu, daemon, prom, target)
    except BaseException:
        print("---- curtaild log (tail) ----\n" + daemon.log()[-4000:])
        print("---- prometheus log ----\n" + prom.log())
        raise


def _run(emu: EmulatorProcess, daemon: DaemonProcess, prom: PrometheusProcess,
         target: str) -> None:
    # -------------------------------------------------------------- converge, accumulate
    def converged():
        if not daemon.alive():
            raise AssertionError("curtaild exited")
        states = {m["state"] for m in emu.miners()}
        curtailed = prom.vector("curtaild_site_miners_curtailed")
        limited = prom.vector('curtaild_miner_desired{action="limit"}')
        network = prom.vector("curtaild_market_btc_price_usd")
        return ("sleeping" in states and curtailed and float(curtailed[0]["value"][1]) >= 1
                and limited and network)

    wait_for(converged, timeout=120, interval=1.0,
             what="fleet split (some asleep, one power-limited) seen through Prometheus")
    time.sleep(15)  # enough samples for rate()/increase() over $__rate_interval (10 s)

    # ------------------------------------------------------------ live scrape, promtool
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as r:
        live = r.read()
    checked = promtool("check", "metrics", stdin=live)
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()

    # ------------------------------------------------------------------- variables
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    instances = _label_values(prom, "instance", "curtaild_build_info")
    assert instances == [target], instances
    assert variables["instance"]["definition"] == "label_values(curtaild_build_info, instance)"
    miners = _label_values(prom, "miner", f'curtaild_miner_info{{instance=~"{target}"}}')
    assert len(miners) == COUNT, miners
    # drill into the power-limited miner: every per-miner panel has data for it
    limited = prom.vector(f'curtaild_miner_desired{{instance="{target}", action="limit"}}')
    miner = limited[0]["metric"]["miner"]
    assert miner in miners

    # ------------------------------------------------------------ every panel query
    end = time.time()
    start = end - WINDOW_S
    problems: list[str] = []
    evaluated = 0
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        title = panel["title"]
        for t in panel["targets"]:
            expr = _substitute(t["expr"], instance=target, miner=miner)
            assert "$" not in expr, f"{title}: unsubstituted variable in {expr}"
            if t.get("instant"):
                answer = prom.query(expr, at=end)
            else:
                answer = prom.query_range(expr, start, end, STEP_S)
            evaluated += 1
            if answer.get("status") != "success":
                problems.append(f"{title} [{t['refId']}] invalid: {answer.get('error')}: {expr}")
            elif not answer["data"]["result"] and title not in ALLOWED_EMPTY:
                problems.append(f"{title} [{t['refId']}] returned no data: {expr}")
    assert not problems, "\n".join(problems)
    assert evaluated >= 60

    # ------------------------------------------------------------ every alert rule
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 10
    for rule in alerts:
        answer = prom.query(rule["expr"])
        assert answer.get("status") == "success", f"{rule['alert']}: {answer}"
        for selector in _selectors(rule["expr"]) if rule["alert"] not in ELSEWHERE else ():
            assert prom.vector(selector), f"{rule['alert']} reads {selector}: no such series"

    def evaluated_rules():
        answer = prom.api("rules")
        assert answer.get("status") == "success", answer
        found = {r["name"]: r for g in answer["data"]["groups"] for r in g["rules"]}
        return found if all(r.get("lastEvaluation", "").startswith("2") and
                            not r["lastEvaluation"].startswith("0001")
                            for r in found.values()) else None

    found = wait_for(evaluated_rules, timeout=30, interval=1.0, what="rules evaluated")
    assert set(found) == {r["alert"] for r in alerts}
    for name, r in found.items():
        assert r["health"] == "ok" and not r.get("lastError"), f"{name}: {r}"
    active = {name for name, r in found.items() if r["state"] != "inactive"}
    assert active == PROVOKED, {n: found[n]["state"] for n in found}
    over_cap = prom.vector('ALERTS{alertname="CurtaildSiteOverPowerCap"}')
    assert over_cap and over_cap[0]["metric"]["severity"] == "critical"
    assert daemon.alive()


# ------------------------------------------------------------------ rule files, promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, out
    assert "SUCCESS" in out


def test_promtool_test_rules() -> None:
    rule_tests = RULES.with_name("curtaild.rules.test.yml")
    result = promtool("test", "rules", rule_tests.name, cwd=rule_tests.parent)
    out = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, out
    assert "SUCCESS" in out


def test_every_alert_has_a_firing_and_a_quiet_rule_test() -> None:
    rules = yaml.safe_load(RULES.read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULES.with_name("curtaild.rules.test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert names <= firing, names - firing
    assert names <= quiet, names - quiet


def test_promtool_check_shipped_scrape_config() -> None:
    cfg = RULES.parents[1] / "prometheus.yml"
    result = promtool("check", "config", cfg.name, cwd=cfg.parent)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
