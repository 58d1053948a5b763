"""Prometheus exporter: a custom collector over the latest immutable snapshot.

The daemon publishes one frozen :class:`MetricsState` after every tick (the tick's
:class:`~controller.loop.TickResult`, which machines curtaild curtailed or flagged, and copies
of its cumulative counters); a scrape, served in its own thread (off the event loop) by a
server with a fixed number of sockets and deadlines (controller/scrape_server.py: whoever can
reach the port cannot take the fleet's descriptors), only reads the latest published state.
A scrape never contacts a miner, never touches the journal and never waits for the loop. The
per-state part of the exposition is rendered and gzipped once per state, then reused by every
scrape until the next tick.

Units are base units in the names (``_watts``, ``_seconds``, ``_celsius``, ``_usd``), hashrate
in ``_hashes_per_second`` everywhere (miner, site and network alike). Money flows keep the unit
mining economics is quoted in: ``_usd_per_day``, the tariff ``_usd_per_kilowatt_hour`` and the
hash price ``_usd_per_terahash_per_second_per_day`` (USD per TH/s per day, as every hash price
index quotes it). Every metric is listed in docs/metrics.md.
"""

from __future__ import annotations

import gzip
import logging
import platform
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from curtaild.controller import __version__
from curtaild.controller.listen import parse_listen
from curtaild.controller.metric_family import Family
from curtaild.controller.scrape_server import DROP_REASONS, BoundedHTTPServer
from curtaild.core import economics
from curtaild.core.snapshot import COMMAND_STATES

if TYPE_CHECKING:  # controller.loop imports controller.config, which validates with us
    from curtaild.controller.loop import TickResult

log = logging.getLogger("curtaild.metrics")

#: Tick ("sweep": observe -> decide -> guard -> act) duration buckets, seconds.
SWEEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
                 120.0, 300.0, 600.0)
STATES = ("mining", "sleeping", "unreachable")
#: curtaild_site_miners also counts "transitioning": silent right after our own command (the
#: miner process restarts), expected for its family's grace -- not an unreachable fault.
SITE_STATES = (*STATES, "transitioning")
ACTIONS = ("run", "limit", "sleep")
COMMAND_RESULTS = ("ok", "failed", "dry_run")
VERDICTS = ("mismatch", "flagged")
#: MinerDriver.error_counts kinds, always exported (0 until seen) so rate() has a series.
POLL_ERROR_KINDS = ("timeout", "refused", "error", "garbage", "discovery", "auth",
                    "transitioning")
#: MinerDriver.config_writes outcomes (stock Antminer sleep/wake by config write).
CONFIG_WRITE_OUTCOMES = ("applied", "already", "not_applied", "refused_read_failed",
                         "refused_no_pool")
TICK_RESULTS = ("ok", "failed")
RELOAD_RESULTS = ("ok", "failed")

MINER_LABELS = ("miner", "model", "firmware")
HASHPRICE_UNIT = "usd_per_terahash_per_second_per_day"
#: What render_text writes (classic names only), whatever prometheus_client calls "latest".
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TARIFF_UNIT = "usd_per_kilowatt_hour"


# ------------------------------------------------------------------------ listen address


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    """Cumulative counters since start, frozen at publication (all plain tuples)."""

    ticks: tuple[tuple[str, int], ...] = ()
    sweep_bucket_counts: tuple[int, ...] = (0,) * len(SWEEP_BUCKETS)  # per bucket, not cumul.
    sweep_count: int = 0
    sweep_sum_s: float = 0.0
    commands: tuple[tuple[str, str, int], ...] = ()  # (action, result, n)
    verification_failures: tuple[tuple[str, int], ...] = ()  # (verdict, n)


class LoopStats:
    """Counters the collector needs, derived from each tick's TickResult (event loop only).

    The loop itself stays free of metrics calls: the daemon hands each finished tick here.
    """

    def __init__(self) -> None:
        self.ticks = dict.fromkeys(TICK_RESULTS, 0)
        self.buckets = [0] * len(SWEEP_BUCKETS)
        self.sweep_count = 0
        self.sweep_sum_s = 0.0
        self.commands = {(a, r): 0 for a in ACTIONS for r in COMMAND_RESULTS}
        self.verification_failures = dict.fromkeys(VERDICTS, 0)

    def _sweep(self, duration_s: float) -> None:
        self.sweep_count += 1
        self.sweep_sum_s += duration_s
        for i, le in enumerate(SWEEP_BUCKETS):
            if duration_s <= le:
                self.buckets[i] += 1
                break

    def tick_done(self, result: TickResult) -> None:
        self.ticks["ok"] += 1
        self._sweep(result.duration_s)
        for cmd in result.commands:
            outcome = result.outcomes.get(cmd.key)
            if outcome is None:
                continue  # not sent (plan): nothing to count
            if outcome == "dry-run":
                res = "dry_run"
            elif outcome.startswith("ok"):
                res = "ok"
            else:
                res = "failed"
            k = (cmd.action, res)
            self.commands[k] = self.commands.get(k, 0) + 1
        for verdict in result.verification.values():
            if verdict in self.verification_failures:
                self.verification_failures[verdict] += 1

    def tick_failed(self, duration_s: float) -> None:
        self.ticks["failed"] += 1
        self._sweep(duration_s)

    def snapshot(self) -> CounterSnapshot:
        return CounterSnapshot(
            ticks=tuple(self.ticks.items()),
            sweep_bucket_counts=tuple(self.buckets),
            sweep_count=self.sweep_count,
            sweep_sum_s=self.sweep_sum_s,
            commands=tuple((a, r, n) for (a, r), n in sorted(self.commands.items())),
            verification_failures=tuple(self.verification_failures.items()),
        )


@dataclass(frozen=True, slots=True)
class MqttCounters:
    """The MQTT bridge's counters (controller/mqtt.py), frozen at publication."""

    connected: bool = False
    reconnects: int = 0
    published: tuple[tuple[str, int], ...] = ()  # (topic kind, n)
    dropped: int = 0
    commands: tuple[tuple[str, str, int], ...] = ()  # (command topic, result, n)


@dataclass(frozen=True)
class MetricsState:
    """Everything a scrape may read, frozen at publication (after each tick)."""

    tick: TickResult | None
    counters: CounterSnapshot = field(default_factory=CounterSnapshot)
    curtailed: frozenset[str] = frozenset()  # miners curtaild curtailed (journal.curtailed())
    flagged: frozenset[str] = frozenset()  # miners flagged for ignoring commands
    poll_errors: tuple[tuple[str, int], ...] = ()  # MinerDriver.error_counts
    config_writes: tuple[tuple[str, int], ...] = ()  # MinerDriver.config_writes
    journal_writes: int = 0
    status_write_failures: int = 0  # Daemon.status_write_failures (status.json not written)
    unknown_owner_miners: int = 0  # a new or lost journal's machines of unknown owner
    reloads: tuple[tuple[str, int], ...] = ()  # Daemon.reloads
    poll_interval_s: float = 30.0
    dry_run: bool = False
    stale_market_after_s: float | None = None
    stale_reading_after_s: float | None = None
    ramp_budget_w: float | None = None
    shed_ramp_budget_w: float | None = None  # [guards] shed_ramp_w_per_min's own bucket
    fixed_costs_usd_per_day: float | None = None
    power_cap_w: float | None = None  # configured site cap ([site] power_cap_w)
    published_at: float = 0.0
    mqtt: MqttCounters | None = None  # None: no [mqtt] section
    cluster: ClusterMetrics | None = None  # None: no [cluster] section


@dataclass(frozen=True, slots=True)
class ClusterMetrics:
    """[cluster] (controller/cluster.py): this instance's role and lease, at publication."""

    instance: str
    shard: str
    leader: bool
    term: int
    lease_deadline: float  # unix time the lease is known to hold until (0: no lease)
    etcd_up: bool
    takeovers: int
    losses: int
    budget_w: float | None = None  # site allocation: this shard's power cap in force
    allocator: bool = False
    site: SiteMetrics | None = None  # the allocator's last division of the site target


@dataclass(frozen=True, slots=True)
class SiteMetrics:
    """The site as its allocator last divided it (controller/site_demand.py site_state)."""

    power_w: float  # sum of the shards' summaries (their observed power)
    target_w: float  # the tighter of the site cap and the site demand-response event
    event: bool  # a site demand-response event sets the target
    shards: tuple[tuple[str, float, float], ...]  # (shard, power_w, budget_w)


def site_metrics(record: Any) -> SiteMetrics | None:
    if not isinstance(record, dict):
        return None
    shards = record.get("shards") or {}
    return SiteMetrics(
        power_w=float(record["power_w"]), target_w=float(record["target_w"]),
        event=str(record.get("target", "")).startswith("site event"),
        shards=tuple((name, float(v["power_w"]), float(v["budget_w"]))
                     for name, v in sorted(shards.items())))


def cluster_metrics(member: Any) -> ClusterMetrics | None:
    if member is None:
        return None
    cfg = member.config
    left = member.lease_remaining_s()
    return ClusterMetrics(instance=cfg.instance_id, shard=cfg.shard or "", leader=(
        member.role == "leader"), term=member.term,
        lease_deadline=time.time() + left if left > 0 else 0.0, etcd_up=member.etcd_up,
        takeovers=member.takeovers, losses=member.losses,
        budget_w=member.budget_in_force()[0], allocator=member.allocator,
        site=site_metrics(member.site.state) if member.allocator else None)


def state_from_daemon(daemon: Any, stats: LoopStats) -> MetricsState:
    """Freeze what the collector needs from a running Daemon (call on the event loop)."""
    rec = daemon.reconciler
    cfg = daemon.config
    journal = daemon.journal
    expectations = journal.expectations()
    site = getattr(cfg, "site", None)
    return MetricsState(
        tick=rec.last,
        counters=stats.snapshot(),
        curtailed=frozenset(journal.curtailed()),
        flagged=frozenset(k for k, e in expectations.items() if e.flagged),
        poll_errors=tuple(sorted(rec.driver.error_counts.items())),
        config_writes=tuple(sorted(getattr(rec.driver, "config_writes", {}).items())),
        journal_writes=journal.writes,
        status_write_failures=getattr(daemon, "status_write_failures", 0),
        unknown_owner_miners=len(journal.unknown_owner()),
        reloads=tuple(sorted(daemon.reloads.items())),
        poll_interval_s=cfg.controller.poll_interval_s,
        dry_run=cfg.controller.dry_run,
        stale_market_after_s=cfg.guards.stale_market_after_s,
        stale_reading_after_s=cfg.guards.stale_reading_after_s,
        ramp_budget_w=rec.bucket.budget_w,
        shed_ramp_budget_w=rec.bucket.shed_budget_w,
        fixed_costs_usd_per_day=getattr(site, "fixed_costs_usd_per_day", None),
        power_cap_w=getattr(site, "power_cap_w", None),
        published_at=time.time(),
        mqtt=daemon.mqtt.counters() if getattr(daemon, "mqtt", None) is not None else None,
        cluster=cluster_metrics(getattr(daemon, "cluster", None)),
    )


# ------------------------------------------------------------------------------ economics
@dataclass(frozen=True, slots=True)
class SiteEconomics:
    power_w: float
    hashrate_hs: float
    mining_power_w: float
    mining_hashrate_ths: float
    revenue_usd_per_day: float | None
    energy_cost_usd_per_day: float | None
    efficiency_j_per_th: float | None
    breakeven_tariff: float | None
    breakeven_hashprice: float | None
    btc_price_usd: float | None
    btc_per_day: float | None
    cash_cost_usd_per_btc: float | None
    all_in_cost_usd_per_btc: float | None


def _num(d: dict, key: str) -> float | None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    v = float(v)
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def network_hashrate_hs(network: dict) -> float | None:
    hs = _num(network, "network_hashrate_hs")
    if hs is None and (d := _num(network, "difficulty")) is not None and d > 0:
        hs = economics.network_hashrate_hs(d)
    return hs if hs and hs > 0 else None


def btc_per_block(network: dict) -> float | None:
    per_block = _num(network, "btc_per_block")
    if per_block is None and (sub := _num(network, "subsidy_btc")) is not None:
        per_block = sub + (_num(network, "fees_per_block_btc") or 0.0)
    return per_block if per_block and per_block > 0 else None


def site_economics(result: TickResult, fixed_costs_usd_per_day: float | None) -> SiteEconomics:
    power = hashrate_ths = mining_power = mining_ths = 0.0
    for m in result.fleet.miners:
        power += m.power_w
        hashrate_ths += m.hashrate_ths
        if m.state == "mining" and m.hashrate_ths > 0:
            mining_power += m.power_w
            mining_ths += m.hashrate_ths
    mk = result.market
    revenue = energy = eff = be_tariff = be_hp = price = btc_day = cash = all_in = None
    if mining_ths > 0 and mining_power > 0:
        eff = mining_power / mining_ths
    if mk is not None:
        fee = mk.pool_fee
        revenue = economics.revenue_usd_per_day(
            hashrate_ths=hashrate_ths, hashprice_usd_per_th_day=mk.hashprice_usd_per_th_day,
            pool_fee=fee)
        energy = economics.energy_cost_usd_per_day(
            power_w=power, tariff_usd_per_kwh=mk.tariff_usd_per_kwh)
        if eff is not None:
            be_tariff = economics.breakeven_tariff_usd_per_kwh(
                efficiency_j_per_th=eff, hashprice_usd_per_th_day=mk.hashprice_usd_per_th_day,
                pool_fee=fee)
            if fee < 1.0:
                be_hp = economics.breakeven_hashprice_usd_per_th_day(
                    efficiency_j_per_th=eff, tariff_usd_per_kwh=mk.tariff_usd_per_kwh,
                    pool_fee=fee)
        network = mk.extra.get("network") or {}
        price = _num(network, "btc_price_usd")
        price = price if price and price > 0 else None
        net_hs, per_block = network_hashrate_hs(network), btc_per_block(network)
        hp_btc = _num(network, "hashprice_btc_per_th_day")
        if net_hs is not None and per_block is not None:
            # expected share of the network's blocks, after the pool fee
            btc_day = (economics.BLOCKS_PER_DAY * per_block * hashrate_ths * 1e12 / net_hs
                       * (1.0 - fee))
        elif hp_btc is not None and hp_btc > 0:
            btc_day = hashrate_ths * hp_btc * (1.0 - fee)
        elif price is not None:
            btc_day = revenue / price
        if btc_day is not None and btc_day > 0:
            cash = energy / btc_day
            if fixed_costs_usd_per_day is not None:
                all_in = (energy + fixed_costs_usd_per_day) / btc_day
    return SiteEconomics(
        power_w=power, hashrate_hs=hashrate_ths * 1e12, mining_power_w=mining_power,
        mining_hashrate_ths=mining_ths, revenue_usd_per_day=revenue,
        energy_cost_usd_per_day=energy, efficiency_j_per_th=eff, breakeven_tariff=be_tariff,
        breakeven_hashprice=be_hp, btc_price_usd=price, btc_per_day=btc_day,
        cash_cost_usd_per_btc=cash, all_in_cost_usd_per_btc=all_in)


# ------------------------------------------------------------------------------- families
def _gauge(name: str, help: str, value: float | None) -> Iterator[Family]:
    if value is not None:
        yield Family(name, "gauge", help, (), [((), float(value))])


def _lf(name: str, help: str, labels: Iterable[str], kind: str = "gauge") -> Family:
    return Family(name, kind, help, tuple(labels))


def _counts(name: str, help: str, label: str, known: Iterable[str],
            seen: Iterable[tuple[str, int]]) -> Family:
    """A counter by one label, every known value present from the start (at 0), so a rate()
    or an alert on a value that has not happened yet still has a series to read."""
    f = _lf(name, help, [label], "counter")
    values = dict.fromkeys(known, 0)
    values.update(seen)
    for v, n in values.items():
        f.add((v,), n)
    return f


def _le(x: float) -> str:
    return repr(float(x))


# ----------------------------------------------------------------------------- live part
def live_families(s: MetricsState, now: float) -> Iterator[Family]:
    """What changes between ticks: build info and the ages of the last tick's inputs (ages
    keep growing while the loop is stuck, which is exactly when the alerts need them)."""
    yield Family("curtaild_build", "info", "curtaild build information.",
                 ("version", "python"), [((__version__, platform.python_version()), 1.0)])
    yield from _cluster_families(s.cluster, now)
    t = s.tick
    if t is None:
        return
    since = max(0.0, now - t.started_at)
    age = _lf("curtaild_input_age_seconds", "Age now of each input of the last decision: "
              "hashprice and tariff (as of their source), fleet (the last poll).", ["input"])
    age.add(("fleet",), max(0.0, now - t.fleet.taken_at))
    if t.market is not None:
        age.add(("hashprice",), t.market.hashprice_age_s + since)
        age.add(("tariff",), t.market.tariff_age_s + since)
    yield age
    mk = t.market
    sources = (mk.extra.get("hashprice") or {}).get("sources") or [] if mk else []
    if sources:
        sage = _lf("curtaild_market_hashprice_source_age_seconds",
                   "Age now of each hash price source's value.", ["source", "role"])
        for i, d in enumerate(sources):
            if isinstance(d, dict) and (a := _num(d, "age_s")) is not None:
                sage.add(_source_labels(d, i), a + since)
        yield sage


def _cluster_families(c: ClusterMetrics | None, now: float) -> Iterator[Family]:
    """[cluster]: who leads (alert when no instance of a shard reports 1), the term, how long
    this instance's lease is known to hold, whether etcd answers."""
    if c is None:
        return
    labels = ("instance", "shard")
    values = (c.instance, c.shard)
    for name, help_, value, kind in (
        ("curtaild_cluster_leader", "1 if this instance leads its shard (commands), 0 if it "
         "is a standby (polls and decides, never commands).", float(c.leader), "gauge"),
        ("curtaild_cluster_term", "The leader's term (the etcd revision that created the "
         "leader key): it grows at every change of leader.", float(c.term), "gauge"),
        ("curtaild_cluster_lease_remaining_seconds", "How long this instance's etcd lease is "
         "known to hold; a leader stops commanding before it reaches 0.",
         max(0.0, c.lease_deadline - now) if c.lease_deadline else 0.0, "gauge"),
        ("curtaild_cluster_etcd_up", "1 if the last request to etcd succeeded.",
         float(c.etcd_up), "gauge"),
        ("curtaild_cluster_takeovers", "Times this instance became the leader.",
         float(c.takeovers), "counter"),
        ("curtaild_cluster_leadership_losses", "Times this instance stopped leading without "
         "being asked to (lease lost, another leader).", float(c.losses), "counter"),
    ):
        f = _lf(name, help_, labels, kind)
        f.add(values, value)
        yield f
    if c.budget_w is not None:
        f = _lf("curtaild_cluster_budget_watts", "This shard's power budget from the site "
                "allocation ([cluster] site_power_cap_w; the safe budget once the last one is "
                "older than budget_hold_s).", labels)
        f.add(values, c.budget_w)
        yield f
        f = _lf("curtaild_cluster_allocator", "1 if this instance divides the site's power cap "
                "across the shards.", labels)
        f.add(values, float(c.allocator))
        yield f
    yield from _site_families(c.site)


def _site_families(s: SiteMetrics | None) -> Iterator[Family]:
    """The sharded site as a whole (curtaild_site_* are this instance's own fleet), from its
    allocator only: one instance of the site exports them, so sums and alerts need no
    de-duplication."""
    if s is None:
        return
    yield from _gauge("curtaild_cluster_site_power_watts", "Sharded site power: the sum of "
                      "the shards' observed power in their last summaries.", s.power_w)
    yield from _gauge("curtaild_cluster_site_target_watts", "The site power target the "
                      "allocator divides: the tighter of [cluster] site_power_cap_w and a site "
                      "demand-response event.", s.target_w)
    yield from _gauge("curtaild_cluster_site_demand_response_active", "1 while a site "
                      "demand-response event sets the site target.", float(s.event))
    power = _lf("curtaild_cluster_site_shard_power_watts", "Each shard's observed power in "
                "its last summary.", ["shard"])
    budget = _lf("curtaild_cluster_site_budget_watts", "Each shard's budget in the "
                 "allocator's last division of the site target.", ["shard"])
    for name, p, b in s.shards:
        power.add((name,), p)
        budget.add((name,), b)
    yield power
    yield budget


def _source_labels(d: dict, i: int) -> tuple[str, str]:
    return (str(d.get("source") or "unknown"),
            str(d.get("role") or ("primary" if i == 0 else f"fallback {i}")))


# ------------------------------------------------------------------------- snapshot part
def snapshot_families(s: MetricsState) -> Iterator[Family]:
    """Everything that depends only on the published state (cached per state)."""
    yield from _controller(s)
    t = s.tick
    caps = [c for c in (s.power_cap_w, t.market.power_cap_w if t and t.market else None,
                        t.directives.power_cap_w if t and t.directives else None)
            if c is not None]
    if caps:
        yield from _gauge("curtaild_site_power_cap_watts",
                          "Site power cap in force: the lowest of [site] power_cap_w and an "
                          "active demand-response cap (an MQTT event or the market's), watts.",
                          min(caps))
    yield from _gauge("curtaild_site_fixed_costs_usd_per_day",
                      "Configured fixed costs of the site ([site] fixed_costs_usd_per_day), "
                      "USD per day.", s.fixed_costs_usd_per_day)
    if t is None:
        return
    yield from _last_tick(t, s)
    yield from _market(t)
    yield from _site(t, s)
    yield from _miners(t, s)
    from curtaild.controller.site_metrics import site_families  # PDUs, meter, placements (issue 18)

    yield from site_families(t)


def _controller(s: MetricsState) -> Iterator[Family]:
    c = s.counters
    f = _lf("curtaild_ticks", "Reconcile ticks since start, by result.", ["result"], "counter")
    ticks = dict.fromkeys(TICK_RESULTS, 0)
    ticks.update(c.ticks)
    for res, n in ticks.items():
        f.add((res,), n)
    yield f
    h = Family("curtaild_sweep_duration_seconds", "histogram",
               "Duration of one reconcile tick (observe, decide, guard, act), seconds.",
               ("le",), hist_sum=c.sweep_sum_s, hist_count=c.sweep_count)
    acc = 0
    for le, n in zip(SWEEP_BUCKETS, c.sweep_bucket_counts, strict=True):
        acc += n
        h.add((_le(le),), acc)
    h.add(("+Inf",), c.sweep_count)
    yield h
    f = _lf("curtaild_commands", "Commands sent to miners, by action and result (ok, failed, "
            "dry_run).", ["action", "result"], "counter")
    cmds = {(a, r): 0 for a in ACTIONS for r in COMMAND_RESULTS}
    cmds.update({(a, r): n for a, r, n in c.commands})
    for (a, r), n in cmds.items():
        f.add((a, r), n)
    yield f
    yield _counts("curtaild_verification_failures", "Observations of a miner not in its "
                  "commanded state after the grace time: mismatch (re-commanded) or flagged "
                  "(gave up).", "verdict", VERDICTS, c.verification_failures)
    yield _counts("curtaild_poll_errors", "Failed miner polls since start, by kind.", "kind",
                  POLL_ERROR_KINDS, s.poll_errors)
    yield _counts("curtaild_config_writes", "Stock Antminer sleep/wake config writes since "
                  "start, by outcome: applied and read back, already in the mode, not_applied "
                  "(acknowledged, read back otherwise), refused_* (nothing posted: the read "
                  "failed or the config has no pool).", "outcome", CONFIG_WRITE_OUTCOMES,
                  s.config_writes)
    yield Family("curtaild_journal_writes", "counter",
                 "Journal (SQLite) write transactions since start.", (), [((), s.journal_writes)])
    yield Family("curtaild_status_write_failures", "counter", "Ticks whose status.json (for "
                 "curtaild status) could not be written; the loop goes on regardless.", (),
                 [((), s.status_write_failures)])
    yield from _gauge("curtaild_unknown_owner_miners", "Miners a new or lost journal found "
                      "asleep or power-limited without knowing who did it: never woken until "
                      "`curtaild adopt` hands them to curtaild or to the operator.",
                      s.unknown_owner_miners)
    yield _counts("curtaild_config_reloads", "Configuration reloads (SIGHUP) since start, by "
                  "result; a failed reload keeps the running configuration.", "result",
                  RELOAD_RESULTS, s.reloads)
    yield from _gauge("curtaild_poll_interval_seconds",
                      "Configured time between reconcile ticks, seconds.", s.poll_interval_s)
    yield from _gauge("curtaild_dry_run", "1 when curtaild decides and journals but sends "
                      "nothing.", 1.0 if s.dry_run else 0.0)
    yield from _gauge("curtaild_ramp_budget_watts",
                      "Site power change the ramp limit allowed after the last tick, watts.",
                      s.ramp_budget_w)
    yield from _gauge("curtaild_shed_ramp_budget_watts",  # only with a shed ramp of its own
                      "Economic shed the sheds' own ramp ([guards] shed_ramp_w_per_min) "
                      "allowed after the last tick, watts.", s.shed_ramp_budget_w)
    lim = _lf("curtaild_input_max_age_seconds", "Age beyond which the guards treat an input "
              "as stale ([guards] stale_market_after_s, stale_reading_after_s), seconds.",
              ["input"])
    if s.stale_reading_after_s is not None:
        lim.add(("fleet",), s.stale_reading_after_s)
    if s.stale_market_after_s is not None:
        lim.add(("hashprice",), s.stale_market_after_s)
        lim.add(("tariff",), s.stale_market_after_s)
    yield lim
    if s.mqtt is not None:
        yield from _mqtt(s.mqtt)


MQTT_COMMAND_TOPICS = ("curtail", "curtail/cancel", "override", "automation", "heartbeat",
                       "site/curtail", "site/curtail/cancel")
#: "busy": answered rejected without being applied, the bridge was overloaded (a flood)
MQTT_COMMAND_RESULTS = ("accepted", "rejected", "expired", "duplicate", "busy")
MQTT_PUBLISH_KINDS = ("status", "state", "decisions", "miners", "response", "site")


def _mqtt(m: MqttCounters) -> Iterator[Family]:
    yield from _gauge("curtaild_mqtt_connected", "1 while the MQTT bridge is connected to the "
                      "broker.", 1.0 if m.connected else 0.0)
    yield Family("curtaild_mqtt_reconnects", "counter", "MQTT connection attempts after the "
                 "first (each after a failure or a lost connection).", (),
                 [((), m.reconnects)])
    yield _counts("curtaild_mqtt_published_messages", "MQTT messages the bridge published, "
                  "by topic kind.", "topic", MQTT_PUBLISH_KINDS, m.published)
    yield Family("curtaild_mqtt_dropped_messages", "counter", "MQTT messages dropped: "
                 "the outbox was full while the broker was away, or a message was over "
                 "[mqtt] max_publish_bytes.", (),
                 [((), m.dropped)])
    f = _lf("curtaild_mqtt_commands", "Inbound MQTT commands, by command topic and result.",
            ["topic", "result"], "counter")
    cmds = {(t, r): 0 for t in MQTT_COMMAND_TOPICS for r in MQTT_COMMAND_RESULTS}
    cmds.update({(t, r): n for t, r, n in m.commands})
    for (t, r), n in cmds.items():
        f.add((t, r), n)
    yield f


def _last_tick(t: TickResult, s: MetricsState) -> Iterator[Family]:
    yield from _gauge("curtaild_last_sweep_timestamp_seconds",
                      "Unix time the last completed tick ended.", t.started_at + t.duration_s)
    yield from _gauge("curtaild_last_sweep_duration_seconds",
                      "Duration of the last completed tick, seconds.", t.duration_s)
    yield from _gauge("curtaild_last_sweep_commands",
                      "Commands the last tick sent (or would send in dry run).", len(t.commands))


def _market(t: TickResult) -> Iterator[Family]:
    mk = t.market
    if mk is None:
        return
    yield Family("curtaild_market", "info", "Where the market inputs of the last tick came "
                 "from.", ("hashprice_source", "tariff_source"),
                 [((mk.hashprice_source, mk.tariff_source), 1.0)])
    yield from _gauge(f"curtaild_market_hashprice_{HASHPRICE_UNIT}",
                      "Hash price used by the last decision, USD per TH/s per day.",
                      mk.hashprice_usd_per_th_day)
    yield from _gauge(f"curtaild_market_tariff_{TARIFF_UNIT}",
                      "Energy price now, all-in, USD per kWh.", mk.tariff_usd_per_kwh)
    yield from _gauge("curtaild_market_pool_fee_ratio", "Pool fee as a fraction of revenue.",
                      mk.pool_fee)
    tr = mk.extra.get("tariff") or {}
    if tr:
        yield from _gauge("curtaild_market_demand_window_active",
                          "1 while a demand-response window is in force.",
                          1.0 if tr.get("in_demand_window") else 0.0)
    hp = mk.extra.get("hashprice") or {}
    yield from _gauge("curtaild_market_hashprice_disagreement_ratio",
                      "(max - min) / median of the fresh live hash price sources.",
                      _num(hp, "disagreement"))
    sources = hp.get("sources") or []
    if sources:
        val = _lf(f"curtaild_market_hashprice_source_{HASHPRICE_UNIT}",
                  "Each configured hash price source's last value, USD per TH/s per day.",
                  ["source", "role"])
        fresh = _lf("curtaild_market_hashprice_source_fresh",
                    "1 when the source's value is fresh (younger than its max_age_s).",
                    ["source", "role"])
        for i, d in enumerate(sources):
            if not isinstance(d, dict):
                continue
            labels = _source_labels(d, i)
            if (v := _num(d, "usd_per_th_day")) is not None:
                val.add(labels, v)
            fresh.add(labels, 1.0 if d.get("fresh") else 0.0)
        yield val
        yield fresh
    network = mk.extra.get("network") or {}
    yield from _gauge("curtaild_market_network_difficulty", "Bitcoin network difficulty.",
                      _num(network, "difficulty"))
    yield from _gauge("curtaild_market_network_hashrate_hashes_per_second",
                      "Bitcoin network hashrate implied by the difficulty, H/s.",
                      network_hashrate_hs(network))
    yield from _gauge("curtaild_market_block_reward_btc",
                      "Expected reward per block (subsidy + mean fees), BTC.",
                      btc_per_block(network))
    price = _num(network, "btc_price_usd")
    yield from _gauge("curtaild_market_btc_price_usd", "Bitcoin price, USD.",
                      price if price and price > 0 else None)


def _site(t: TickResult, s: MetricsState) -> Iterator[Family]:
    e = site_economics(t, s.fixed_costs_usd_per_day)
    yield from _gauge("curtaild_site_power_watts", "Power of the whole fleet (sleeping "
                      "machines' idle draw included), watts.", e.power_w)
    yield from _gauge("curtaild_site_hashrate_hashes_per_second",
                      "Hashrate of the whole fleet, H/s.", e.hashrate_hs)
    states = dict.fromkeys(SITE_STATES, 0)
    desired = dict.fromkeys(ACTIONS, 0)
    commands = dict.fromkeys(COMMAND_STATES, 0)
    for m in t.fleet.miners:
        seen = "transitioning" if m.command_state == "transitioning" else m.state
        states[seen] = states.get(seen, 0) + 1
        if m.command_state is not None:
            commands[m.command_state] = commands.get(m.command_state, 0) + 1
        d = t.desired.get(m.key)
        if d is not None:
            desired[d.action] = desired.get(d.action, 0) + 1
    f = _lf("curtaild_site_miners", "Miners by observed state; transitioning: silent right "
            "after curtaild's own command (restarting), not counted as unreachable.", ["state"])
    for k, n in states.items():
        f.add((k,), n)
    yield f
    f = _lf("curtaild_site_miners_command_state", "Miners by where curtaild's last command "
            "stands: pending (acknowledged, not yet seen in effect), transitioning (pending and "
            "silent), confirmed, failed (not acknowledged), lying (flagged); only confirmed "
            "sheds count toward a power cap.", ["state"])
    for k, n in commands.items():
        f.add((k,), n)
    yield f
    f = _lf("curtaild_site_miners_desired", "Miners by what the policy wants.", ["action"])
    for k, n in desired.items():
        f.add((k,), n)
    yield f
    yield from _gauge("curtaild_site_miners_curtailed",
                      "Miners curtaild itself curtailed (journal ownership).", len(s.curtailed))
    yield from _gauge("curtaild_site_miners_flagged",
                      "Miners flagged for ignoring repeated commands.", len(s.flagged))
    yield from _gauge("curtaild_site_miners_held",
                      "Miners whose change the guards held back in the last tick.",
                      len(t.held))
    yield from _gauge("curtaild_site_revenue_usd_per_day",
                      "Pool revenue per day at the current hashrate and hash price, after the "
                      "pool fee, USD.", e.revenue_usd_per_day)
    yield from _gauge("curtaild_site_energy_cost_usd_per_day",
                      "Energy cost per day at the current power and tariff, USD.",
                      e.energy_cost_usd_per_day)
    if e.revenue_usd_per_day is not None and e.energy_cost_usd_per_day is not None:
        yield from _gauge("curtaild_site_margin_usd_per_day",
                          "Revenue minus energy cost per day, USD.",
                          e.revenue_usd_per_day - e.energy_cost_usd_per_day)
    yield from _gauge("curtaild_site_efficiency_joules_per_terahash",
                      "Efficiency of the running fleet (mining machines only), J/TH.",
                      e.efficiency_j_per_th)
    yield from _gauge(f"curtaild_site_breakeven_tariff_{TARIFF_UNIT}",
                      "Tariff at which the running fleet earns exactly its energy, USD/kWh.",
                      e.breakeven_tariff)
    yield from _gauge(f"curtaild_site_breakeven_hashprice_{HASHPRICE_UNIT}",
                      "Hash price at which the running fleet earns exactly its energy, "
                      "USD per TH/s per day.", e.breakeven_hashprice)
    yield from _gauge("curtaild_site_production_btc_per_day",
                      "Expected BTC mined per day after the pool fee (network share, else "
                      "revenue / BTC price).", e.btc_per_day)
    yield from _gauge("curtaild_site_cash_cost_usd_per_btc",
                      "Energy cost per BTC produced (cash production cost), USD.",
                      e.cash_cost_usd_per_btc)
    yield from _gauge("curtaild_site_all_in_cost_usd_per_btc",
                      "Energy plus fixed costs per BTC produced, USD.", e.all_in_cost_usd_per_btc)


def _miners(t: TickResult, s: MetricsState) -> Iterator[Family]:
    ml = MINER_LABELS
    info = _lf("curtaild_miner", "Identity of each miner (value 1).",
               ["miner", "ip", "make", "model", "firmware", "mac", "serial"], "info")
    up = _lf("curtaild_miner_up", "1 when the miner answered its last poll.", ml)
    state = _lf("curtaild_miner_state", "Observed state: one series per miner, value 1, label "
                "state = mining | sleeping | unreachable.", (*ml, "state"))
    hashrate = _lf("curtaild_miner_hashrate_hashes_per_second", "Hashrate reported, H/s.", ml)
    power = _lf("curtaild_miner_power_watts", "Power estimate, watts; source = firmware | "
                "override | model_table | nameplate | idle_estimate | none.", (*ml, "source"))
    limit = _lf("curtaild_miner_power_limit_watts", "Power limit the firmware reports, watts.",
                ml)
    temp = _lf("curtaild_miner_temperature_celsius", "Hottest chip or board temperature.", ml)
    fans = _lf("curtaild_miner_fan_speed_rpm", "Fan speed, revolutions per minute.",
               (*ml, "fan"))
    curtailed = _lf("curtaild_miner_curtailed", "1 when curtaild curtailed this miner (it owns "
                    "the curtailment and will restore it).", ml)
    flagged = _lf("curtaild_miner_flagged", "1 when the miner ignored repeated commands.", ml)
    command = _lf("curtaild_miner_command_state", "Where curtaild's last command to the miner "
                  "stands: one series per miner with a command outstanding, value 1, label "
                  "state = pending | transitioning | confirmed | failed | lying.",
                  (*ml, "state"))
    desired = _lf("curtaild_miner_desired", "What the policy wants: one series per miner, "
                  "value 1, label action = run | limit | sleep.", (*ml, "action"))
    dlimit = _lf("curtaild_miner_desired_power_limit_watts",
                 "Power limit the policy wants (action limit), watts.", ml)
    margin = _lf("curtaild_miner_margin_usd_per_day", "Marginal margin if the miner ran at "
                 "full power (revenue minus energy), USD per day, as the policy priced it.", ml)
    for m in t.fleet.miners:
        lv = (m.key, m.model, m.firmware)
        info.samples.append(((m.key, m.ip, m.make, m.model, m.firmware, m.mac or "",
                              m.serial or ""), 1.0))
        up.samples.append((lv, 0.0 if m.state == "unreachable" else 1.0))
        state.samples.append(((*lv, m.state), 1.0))
        hashrate.samples.append((lv, m.hashrate_ths * 1e12))
        power.samples.append(((*lv, m.power_source), m.power_w))
        if m.power_limit_w is not None:
            limit.samples.append((lv, m.power_limit_w))
        if m.temp_c is not None:
            temp.samples.append((lv, m.temp_c))
        for i, rpm in enumerate(m.fan_rpm):
            fans.samples.append(((*lv, str(i)), rpm))
        curtailed.samples.append((lv, 1.0 if m.key in s.curtailed else 0.0))
        flagged.samples.append((lv, 1.0 if m.key in s.flagged else 0.0))
        if m.command_state is not None:
            command.samples.append(((*lv, m.command_state), 1.0))
        d = t.desired.get(m.key)
        if d is not None:
            desired.samples.append(((*lv, d.action), 1.0))
            if d.action == "limit" and d.power_limit_w is not None:
                dlimit.samples.append((lv, d.power_limit_w))
            if d.run_margin_usd_per_day is not None:
                margin.samples.append((lv, d.run_margin_usd_per_day))
    yield from (info, up, state, hashrate, power, limit, temp, fans, curtailed, flagged,
                command, desired, dlimit, margin)


# ----------------------------------------------------------------------------- rendering
def _fmt(v: float) -> str:
    if v == 0:
        return "0.0"
    if v == 1:
        return "1.0"
    if v != v:
        return "NaN"
    if v == float("inf"):
        return "+Inf"
    if v == float("-inf"):
        return "-Inf"
    return repr(float(v))


def render_text(families: Iterable[Family]) -> bytes:
    """Prometheus text format 0.0.4. Label values are escaped once and memoised (a miner's
    key appears in a dozen families), which makes this ~10x faster than the generic path."""
    esc: dict[str, str] = {}
    #: label names -> label values -> rendered '{k="v",...}' (miner families share both)
    memos: dict[tuple[str, ...], dict[tuple[str, ...], str]] = {}

    def e(v: str) -> str:
        r = esc.get(v)
        if r is None:
            r = esc[v] = v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        return r

    out: list[str] = []
    for f in families:
        if not f.samples:
            continue  # no HELP/TYPE for an empty family
        name = f.name + ("_total" if f.kind == "counter" else "_info" if f.kind == "info"
                         else "")
        kind = "gauge" if f.kind == "info" else f.kind
        doc = f.help.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        if f.kind == "histogram":
            for (le,), n in f.samples:
                out.append(f'{name}_bucket{{le="{le}"}} {_fmt(n)}\n')
            out.append(f"{name}_count {_fmt(f.hist_count)}\n{name}_sum {_fmt(f.hist_sum)}\n")
            continue
        keys = [f'{k}="' for k in f.labels]
        if not keys:
            out.extend(f"{name} {_fmt(v)}\n" for _, v in f.samples)
            continue
        # Memoise the leading labels shared across families (a miner's key, model and
        # firmware); only the family's own trailing label (state, fan...) is rendered anew.
        n = len(MINER_LABELS) if f.labels[:len(MINER_LABELS)] == MINER_LABELS else len(keys)
        memo = memos.setdefault(f.labels[:n], {})
        head_keys, tail_keys = keys[:n], keys[n:]
        for values, v in f.samples:
            head_values = values[:n] if tail_keys else values
            lbl = memo.get(head_values)
            if lbl is None:
                lbl = memo[head_values] = "{" + '",'.join(
                    [k + e(x) for k, x in zip(head_keys, head_values, strict=True)])
            if tail_keys:
                tail = "".join([f'",{k}{e(x)}' for k, x in zip(tail_keys, values[n:],
                                                                 strict=True)])
                out.append(f'{name}{lbl}{tail}"}} {_fmt(v)}\n')
            else:
                out.append(f'{name}{lbl}"}} {_fmt(v)}\n')
    return "".join(out).encode()


def to_prometheus(f: Family) -> Metric:
    """The same family as a prometheus_client metric (for CollectorRegistry users)."""
    labels = list(f.labels)
    if f.kind == "histogram":
        return HistogramMetricFamily(f.name, f.help, sum_value=f.hist_sum,
                                     buckets=[(le, n) for (le,), n in f.samples])
    if f.kind == "counter":
        m: Any = CounterMetricFamily(f.name, f.help, labels=labels)
    elif f.kind == "info":
        m = InfoMetricFamily(f.name, f.help, labels=labels)
        for values, _ in f.samples:
            m.add_metric(list(values), {})
        return m
    else:
        m = GaugeMetricFamily(f.name, f.help, labels=labels)
    for values, v in f.samples:
        m.add_metric(list(values), v)
    return m


class CurtaildCollector:
    """A prometheus_client custom collector over ``exporter.state`` (the latest published
    snapshot; one reference, swapped atomically by the daemon). Never contacts a miner."""

    def __init__(self, exporter: MetricsExporter):
        self.exporter = exporter

    def describe(self) -> list[Metric]:
        return []  # names vary with the state: no registry pre-scan

    def collect(self) -> Iterator[Metric]:
        state = self.exporter.state
        for f in (*live_families(state, time.time()), self.exporter._dropped_family(),
                  *snapshot_families(state)):
            if f.samples:
                yield to_prometheus(f)


# ------------------------------------------------------------------------------- exporter
class MetricsExporter:
    """Owns the published state and the HTTP server thread (controller/scrape_server.py:
    at most ``max_connections`` sockets, each request due within ``request_timeout_s``).

    A scrape renders the small live part (build info, input ages, process metrics) and appends
    the snapshot part, rendered and gzipped once per published state and then reused by every
    scrape until the next tick. With gzip the two parts are two gzip members, which RFC 1952
    and Go's (Prometheus's) reader treat as one stream.

    ``listen=None``: start/stop are no-ops; the state is still kept (cheap), so the daemon can
    call everything unconditionally.
    """

    def __init__(self, listen: str | None = None, *, max_connections: int = 32,
                 request_timeout_s: float = 5.0):
        self.listen = listen
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.stats = LoopStats()
        self.state = MetricsState(tick=None, published_at=time.time())
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(CurtaildCollector(self))
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._process)
        self._lock = threading.Lock()
        self._cached_for: MetricsState | None = None
        self._cached: tuple[bytes, bytes] = (b"", b"")
        self._server: BoundedHTTPServer | None = None
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind and serve in a daemon thread; OSError if the address cannot be bound."""
        if self.listen is None or self._server is not None:
            return
        host, port = parse_listen(self.listen)
        server = BoundedHTTPServer(host, port, self._respond,
                                   max_connections=self.max_connections,
                                   request_timeout_s=self.request_timeout_s)
        server.start()
        self._server = server
        self.address = (host, server.port)
        log.info("metrics on http://%s/metrics",
                 f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def open_connections(self) -> int:
        """Scrape connections open now (never more than max_connections)."""
        return self._server.open_connections() if self._server is not None else 0

    def dropped(self) -> dict[str, int]:
        """Connections the server closed unanswered since start, by reason."""
        if self._server is None:
            return dict.fromkeys(DROP_REASONS, 0)
        return dict(self._server.dropped)

    # -------------------------------------------------------------------- publish
    def publish(self, state: MetricsState) -> None:
        """Swap in a new snapshot (one reference assignment: atomic for the scrape thread)."""
        self.state = state

    def publish_from(self, daemon: Any) -> None:
        self.publish(state_from_daemon(daemon, self.stats))

    # ---------------------------------------------------------------------- serve
    def _snapshot_part(self, state: MetricsState) -> tuple[bytes, bytes]:
        with self._lock:  # concurrent scrapes of a new state render it once
            if self._cached_for is not state:
                text = render_text(snapshot_families(state))
                self._cached = (text, gzip.compress(text, compresslevel=6))
                self._cached_for = state
            return self._cached

    def _live_part(self, state: MetricsState) -> bytes:
        return (render_text([*live_families(state, time.time()), self._dropped_family()])
                + generate_latest(self._process))

    def _dropped_family(self) -> Family:
        """Scrape connections the server closed unanswered, by reason: a rising rate means
        something is holding connections open or flooding the port (a slowloris)."""
        return _counts("curtaild_metrics_connections_dropped", "Connections to the metrics "
                       "port closed without a metrics response, by reason: request_timeout "
                       "(no complete request in time), response_timeout, evicted (an idle "
                       "connection closed to make room at the cap), over_capacity (503: every "
                       "slot busy), bad_request.", "reason", DROP_REASONS,
                       self.dropped().items())

    def exposition(self) -> bytes:
        """Exactly what a scrape returns, uncompressed (tests, benchmarks)."""
        state = self.state
        return self._live_part(state) + self._snapshot_part(state)[0]

    def _respond(self, method: str, path: str,
                 headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        """The server's handler: (status, headers, body) for one GET or HEAD."""
        if path != "/metrics":
            return (200 if path == "/" else 404,
                    [("Content-Type", "text/plain; charset=utf-8")],
                    b"curtaild exporter: metrics at /metrics\n")
        state = self.state
        live = self._live_part(state)
        text, gz = self._snapshot_part(state)
        out = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in headers.get("accept-encoding", ""):
            body = gzip.compress(live, compresslevel=6) + gz
            out.append(("Content-Encoding", "gzip"))
        else:
            body = live + text
        return 200, out, body
