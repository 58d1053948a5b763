"""``curtaild run``: the daemon around the reconcile loop.

Signals: SIGTERM/SIGINT stop cleanly and in bounded time (the sweep in progress is abandoned
and nothing is decided on it; commands already sent finish, with their journal writes, and
commands not yet sent are recorded as not sent; after STOP_GRACE_MAX_S the tick is cancelled
whatever it waits on, so the exit fits the unit's TimeoutStopSec; the fleet is left exactly as
it is, and the journal lets the next start resume); SIGHUP reloads config and policy atomically
(an invalid file keeps the running ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from curtaild.controller.config import Config, ConfigError, advisories, config_errors, load_config
from curtaild.controller.directive_journal import DirectiveJournal
from curtaild.controller.directives import Limits
from curtaild.controller.guards import memory_window_s
from curtaild.controller.journal import Journal, JournalError, write_private_file
from curtaild.controller.limits import open_files_needed, raise_open_files_limit, tune_gc
from curtaild.controller.loop import Reconciler, TickResult
from curtaild.controller.market import MarketInputs
from curtaild.controller.metrics import MetricsExporter
from curtaild.controller.recovery import review_tick, start_lines, unknown_line
from curtaild.controller.report import tick_summary
from curtaild.controller.scrape_server import fd_budget
from curtaild.core.snapshot import Directives
from curtaild.drivers.hashprice import build_hashprice_source
from curtaild.drivers.miners import MinerDriver, ObservationAborted
from curtaild.drivers.tariff import build_tariff_source
from curtaild.policies.compose import build_policy_stack

if TYPE_CHECKING:
    from curtaild.controller.directives import Response
    from curtaild.controller.mqtt import MqttBridge, SiteCommands

log = logging.getLogger("curtaild")
#: After SIGTERM a tick runs at most this long (commands already sent get command_timeout_s
#: plus 2 s); then it is cancelled, so the exit fits the unit's TimeoutStopSec (90 s) with time
#: left for the MQTT goodbye (5 s) and closing the journal.
STOP_GRACE_MAX_S = 60.0


class TickAbandoned(Exception):
    """A stop ended the tick in progress before it finished (see ``Daemon._tick``)."""


def build_policy(config: Config):
    """The ``[policy]`` table as a stack: the base policy plus its layers (policies/compose.py)."""
    return build_policy_stack(config.policy)


def build_reconciler(config: Config, journal: Journal,
                     directives: Callable[[float], Directives] | None = None, *,
                     defer_reads: bool = False) -> Reconciler:
    """``defer_reads``: a long-running daemon's warm start polls first and reads the rest
    over the next sweeps (drivers/miners.py SETTLE_SWEEPS); a one-shot tick (``plan``) has no
    next sweep, so its miners built from the identity cache are read in full at once."""
    policy = build_policy(config)
    market = MarketInputs(build_hashprice_source(config.hashprice),
                          build_tariff_source(config.tariff),
                          pool_fee=policy.config.pool_fee)
    from curtaild.drivers.identity_cache import CACHE_FILE, IdentityCache

    identities = (IdentityCache(Path(config.controller.state_dir) / CACHE_FILE)
                  if journal.marker is not None else None)  # warm start (issue 19)
    driver = MinerDriver(config.fleet, poll_interval_s=config.controller.poll_interval_s,
                         identities=identities, defer_reads=defer_reads)
    return Reconciler(config, journal, driver, market, policy, directives=directives,
                      site=build_site(config, journal))


def build_site(config: Config, journal: Journal):
    """PDUs, meter and inventory (controller/site.py), None when none is configured; reads
    the SNMP secrets now (ValueError naming the setting when one cannot be read)."""
    if not (config.pdu or config.meter or config.inventory.file or config.inventory.miner):
        return None
    from curtaild.controller.site import Site

    with config_errors("pdu"):  # an unreadable SNMP secret: ``pdu[0].community_file: ...``
        return Site(config, journal)


class Daemon:
    def __init__(self, config_path: str, config: Config):
        self.config_path = config_path
        self.config = config
        # JournalError (path and reason) when the state directory or journal is unusable:
        # run() refuses to start (exit 2). A new or lost journal opens a review
        # (controller/recovery.py): it is reported, never silent.
        self.journal = Journal(config.controller.state_dir)
        self.identity = self.journal.check_identity()
        # Demand-response events and overrides survive restarts in the journal, one row each
        # (controller/directive_journal.py): a save writes only what changed.
        self.directive_journal = DirectiveJournal(self.journal)
        self.directive_store, problems = self.directive_journal.load(
            Limits.from_config(config.mqtt) if config.mqtt else Limits(), time.time())
        for line in problems:
            log.warning("%s", line)
        self.mqtt: MqttBridge | None = None  # the MQTT bridge (controller/mqtt.py), by run()
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        with config_errors(config_path):  # a source or policy that cannot be built: exit 2
            self.reconciler = build_reconciler(config, self.journal, directives=self._directives,
                                               defer_reads=True)
            # [cluster] (controller/cluster.py): a standby until it wins the leader lease
            self.cluster = None
            if config.cluster is not None:
                from curtaild.controller.cluster import ClusterMember

                self.cluster = ClusterMember(config.cluster, self.journal)
                self.cluster.on_change = self.wake.set
                self.cluster.mirror.dwell_s = memory_window_s(config.guards)
                self.reconciler.fence = self.cluster
        self.reload_requested = False
        self.mqtt_restart = False
        self.reloads = {"ok": 0, "failed": 0}
        self.metrics = MetricsExporter(config.metrics.listen,
                                       max_connections=config.metrics.max_connections,
                                       request_timeout_s=config.metrics.request_timeout_s)
        self.status_write_failures = 0  # exported: curtaild_status_write_failures_total
        self._status_failing: set[str] = set()  # kinds logged since the last good write
        from curtaild.controller.sdnotify import Notifier

        self.notifier = Notifier()

    def request_reload(self) -> None:
        self.reload_requested = True
        self.wake.set()

    def _reload(self) -> None:
        """Validate the new file completely before swapping anything."""
        self.reload_requested = False
        self.notifier.reloading()
        try:  # any exception while loading or building is a rejected file, never a crash
            with config_errors(self.config_path):
                config = load_config(self.config_path)
                policy = build_policy(config)
                market = MarketInputs(build_hashprice_source(config.hashprice),
                                      build_tariff_source(config.tariff),
                                      pool_fee=policy.config.pool_fee)
                # firmware passwords: an unreadable secret file rejects the reload too
                self.reconciler.driver.prepare_credentials(config.fleet)
                site = build_site(config, self.journal)  # PDU secrets and the site map too
        except ConfigError as exc:
            self.reloads["failed"] += 1
            for line in exc.problems:
                log.error("reload rejected, keeping the running config: %s", line)
            self.notifier.ready("reload rejected: " + "; ".join(exc.problems)[:200])
            return
        if config.controller.state_dir != self.config.controller.state_dir:
            log.warning("reload: controller.state_dir change needs a restart; keeping %s",
                        self.config.controller.state_dir)
            config = config.model_copy(update={"controller": config.controller.model_copy(
                update={"state_dir": self.config.controller.state_dir})})
        if config.mqtt != self.config.mqtt:
            self.mqtt_restart = True  # run() reconnects with the new settings
            if config.mqtt is not None:
                self.directive_store.limits = Limits.from_config(config.mqtt)
        if config.cluster != self.config.cluster:
            log.warning("reload: a [cluster] change needs a restart; keeping the running "
                        "cluster settings")
            config = config.model_copy(update={"cluster": self.config.cluster})
        if config.metrics != self.config.metrics:
            log.warning("reload: a [metrics] change needs a restart; still serving %s",
                        self.config.metrics.listen)
        self.config = config
        if self.cluster is not None:  # a successor keeps minimum dwell as configured now
            self.cluster.mirror.dwell_s = memory_window_s(config.guards)
        self.reconciler.swap(config, policy)
        self.reconciler.market = market
        self.reconciler.site = site
        self.reloads["ok"] += 1
        log.info("reloaded %s (policy %s)", self.config_path, config.policy["name"])
        for line in advisories(config):
            log.warning("%s", line)
        ensure_open_files(config)
        self.notifier.ready("reloaded")

    def _write_status(self, result: TickResult) -> None:
        """A small JSON file for `curtaild status` (no socket, no daemon round-trip).

        Never fatal: status.json is a convenience for the operator, the loop is the job. A
        failure (EMFILE, ENOSPC, a read-only or replaced file, anything) is counted for the
        exporter and logged once per kind until a write succeeds again, so a full disk does
        not write one line per tick to the journal it is filling.
        """
        path = Path(self.config.controller.state_dir) / "status.json"
        try:
            summary = tick_summary(result, self.journal)
            if self.cluster is not None:
                summary["cluster"] = self.cluster.status().as_json()
            write_private_file(path, json.dumps(summary, default=str))
        except Exception as exc:
            self.status_write_failures += 1
            kind = (errno.errorcode.get(exc.errno, str(exc.errno))
                    if isinstance(exc, OSError) and exc.errno else type(exc).__name__)
            if kind not in self._status_failing:
                self._status_failing.add(kind)
                log.error("cannot write status.json (%s): %s; the loop goes on (`curtaild "
                          "status` shows the last written tick); logged once per kind until "
                          "a write succeeds", kind, exc)
            return
        if self._status_failing:
            log.info("status.json written again (%d failed writes since start)",
                     self.status_write_failures)
            self._status_failing.clear()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        from curtaild.controller.signals import take_early_reload

        if take_early_reload():
            log.info("SIGHUP arrived while starting: reloading %s", self.config_path)
            self.request_reload()
        log.info("curtaild starting: %d addresses, policy %s, dry_run=%s, journal %s",
                 len(self.config.fleet.addresses()), self.config.policy["name"],
                 self.config.controller.dry_run, self.journal.path)
        for level, line in start_lines(self.identity, self.journal, self.config_path):
            log.log(level, "%s", line)
        ready = False
        try:
            try:
                self.metrics.start()  # before the first tick: scrapes never wait for one
            except OSError as exc:
                log.error("metrics.listen %s: cannot listen: %s", self.config.metrics.listen,
                          exc.strerror or exc)
                return 2
            if self.cluster is None:
                self._start_mqtt()
            else:
                self.cluster.start()  # the MQTT bridge runs on the leader only
                await self._identities_from_cluster()
            next_regular = time.monotonic()
            commands_seen = 0.0
            while not self.stop.is_set():
                reloaded = self.reload_requested
                if reloaded:
                    self._reload()
                    if self.mqtt_restart:
                        await self._restart_mqtt()
                started = time.monotonic()
                # An inbound command between regular ticks gets a fast tick: decided on the
                # last observation, no polling first (controller/loop.py); the regular
                # schedule is kept.
                last_command = self._last_command_mono()
                fast = (last_command > commands_seen and not reloaded and started < next_regular
                        and self.reconciler.last is not None)
                commands_seen = max(commands_seen, last_command)
                if not fast:
                    next_regular = started + self.config.controller.poll_interval_s
                status = "first tick failed"
                send = await self._cluster_turn()
                try:
                    result = await self._tick(fast, send)
                except TickAbandoned as exc:
                    log.info("stop: %s", exc)
                except Exception:
                    log.exception("tick failed; retrying next interval")
                    self.metrics.stats.tick_failed(time.monotonic() - started)
                else:
                    self.metrics.stats.tick_done(result)
                    self._log_tick(result)
                    if not result.fast and send:
                        self._review(result)
                    self._write_status(result)
                    self._publish_mqtt(result)
                    await self._cluster_site(result, send)
                    status = f"{len(result.fleet.miners)} miners"
                self._save_directives()
                await self._cluster_share()
                self._export()
                if not ready:
                    # READY after the first completed tick, even a failed one: systemd should
                    # supervise (watchdog, restart) a running loop, not time out its start.
                    self.notifier.ready(status)
                    ready = True
                self.notifier.watchdog()
                if self._last_command_mono() > commands_seen:
                    continue  # a command (or a new site target) came during the tick: act now
                await self._sleep_until(next_regular)
        finally:
            if self.mqtt is not None:
                await self.mqtt.stop()  # explicit retained "offline", clean disconnect
            self._save_directives()
            if self.cluster is not None:
                await self._cluster_share()
                await self.cluster.stop()  # a leader revokes its lease: a standby takes over
            self.metrics.stop()
            self.notifier.stopping()
            self.journal.close()
            log.info("curtaild stopped; fleet left as it is (journal keeps ownership)")
        return 0

    def _last_command_mono(self) -> float:
        """When the last inbound command applied, or the site target changed (a sharded
        site's budget): either gets a fast tick (decided on the last observation)."""
        last = self.mqtt.last_command_mono if self.mqtt is not None else 0.0
        if self.cluster is not None:
            last = max(last, self.cluster.site.changed_mono)
        return last

    # --------------------------------------------------------------------- cluster
    async def _cluster_turn(self) -> bool:
        """Before a tick: may this instance command? Alone, always. In a cluster, only the
        leader, once it has resumed the shared state (controller/cluster.py); the MQTT bridge
        follows the role (one bridge per shard, the leader's)."""
        c = self.cluster
        if c is None:
            return True
        if c.role == "leader" and c.resume_needed:
            from curtaild.drivers.etcd import EtcdUnavailable

            try:
                await c.resume()
            except (EtcdUnavailable, JournalError) as exc:
                log.error("cluster: cannot resume the shared state yet (%s); not commanding",
                          exc)
                return False
            self._after_resume()
        if c.role == "leader" and self.config.mqtt is not None and self.mqtt is None:
            self._start_mqtt()
        elif c.role != "leader" and self.mqtt is not None:
            await self.mqtt.stop()
            self.mqtt = None
        return c.may_command()

    def _after_resume(self) -> None:
        """The journal now holds the predecessor's state: reload what is kept in memory."""
        self.directive_store, problems = self.directive_journal.load(
            Limits.from_config(self.config.mqtt) if self.config.mqtt else Limits(), time.time())
        for line in problems:
            log.warning("%s", line)
        from curtaild.controller.guards import RampBucket

        saved = self.journal.get_meta("ramp_bucket")
        if isinstance(saved, dict):
            self.reconciler.bucket = RampBucket.from_meta(saved, time.time())
        self.reconciler.last = None  # decided by the predecessor: observe afresh
        driver = self.reconciler.driver
        if hasattr(driver, "attach_journal"):
            driver.attach_journal(self.journal)  # the operator's LuxOS ATM settings

    async def _identities_from_cluster(self) -> None:
        """At start: miner identities the leader shared, for the addresses this instance has
        none cached for (drivers/identity_cache.py): its first sweep then polls at once."""
        cache = getattr(self.reconciler.driver, "identities", None)
        if self.cluster is None or cache is None:
            return
        shared = await self.cluster.fetch_identities()
        added = cache.merge(shared)
        if added:
            log.info("cluster: %d miner identities from the leader (no discovery for them)",
                     added)

    async def _cluster_share(self) -> None:
        """After a leader's tick: share what changed (verifications, outcomes, directives)."""
        c = self.cluster
        if c is None or not c.may_command():
            return
        from curtaild.drivers.etcd import EtcdUnavailable

        try:
            if not await c.push():
                c._lose("the leader key is no longer this instance's")
            cache = getattr(self.reconciler.driver, "identities", None)
            if cache is not None:
                await c.share_identities(cache.entries, getattr(cache, "version", None))
        except EtcdUnavailable as exc:
            c._etcd_down(exc)
        except Exception:
            log.exception("cluster: sharing the state failed")

    # ------------------------------------------------------------------------ MQTT
    def _directives(self, now: float) -> Directives:
        """The Reconciler's hook: what the MQTT bridge set, none without [mqtt]; in a sharded
        site under a cap, this shard's budget as a power cap (the lower one wins)."""
        d = Directives()
        if self.config.mqtt is not None:
            d = self.directive_store.directives(now)
            for event_id, why in self.directive_store.take_released():
                log.info("demand-response event %s released: %s", event_id, why)
        if self.cluster is not None:
            budget, source = self.cluster.budget_in_force()
            if budget is not None and (d.power_cap_w is None or budget < d.power_cap_w):
                from dataclasses import replace

                d = replace(d, power_cap_w=budget, power_cap_until=None,
                            power_cap_event_id=f"{source} of shard "
                            f"{self.config.cluster.shard or '_site'}"
                            if self.config.cluster else source)
        return d

    async def _cluster_site(self, result: TickResult, sent: bool) -> None:
        """[cluster] site_power_cap_w: publish this shard's summary, allocate (if this
        instance is the site's allocator), read the budget (controller/site_allocator.py)."""
        c = self.cluster
        if c is None or c.config.site_power_cap_w is None:
            return
        from curtaild.controller.site_allocator import summarize

        summary = summarize(result.fleet, result.market).as_json() if (
            sent and not result.fast) else None
        try:
            await c.share_site(summary)
            if self.mqtt is not None and self.mqtt.site is not None:
                from curtaild.controller.site_demand import read_state

                record = await read_state(c)
                if record is not None:
                    self.mqtt.publish_site(record)
        except Exception:
            log.exception("cluster: the site allocation step failed")

    def _save_directives(self) -> None:
        if self.directive_store.dirty:
            try:
                self.directive_journal.save(self.directive_store)  # the changed rows only
            except Exception:
                log.exception("journal: saving the MQTT directives failed")

    def _start_mqtt(self) -> None:
        from curtaild.controller.mqtt import MqttBridge

        self.mqtt_restart = False
        if self.config.mqtt is None:
            return
        self.mqtt = MqttBridge(
            self.config.mqtt, self.directive_store, wake=self.wake.set,
            persist=self._save_directives, on_connection_change=self._export,
            known_miners=self._known_miners, site=self._site_commands())
        self.mqtt.start()

    def _site_commands(self) -> SiteCommands | None:
        """A sharded site's demand-response commands on this shard's bridge
        (controller/site_demand.py); None without a site cap in [cluster]."""
        c, mqtt = self.cluster, self.config.mqtt
        if c is None or c.config.site_power_cap_w is None or mqtt is None:
            return None
        from curtaild.controller import site_demand
        from curtaild.controller.mqtt import SiteCommands

        async def handle(kind: str, body: bytes, retained: bool) -> Response:
            return await site_demand.handle_command(c, kind, body, time.time(),
                                                    retained=retained,
                                                    limits=Limits.from_config(mqtt))

        return SiteCommands(site_demand.site_root(mqtt.topic_prefix, c.config.site_id), handle)

    async def _restart_mqtt(self) -> None:
        if self.config.mqtt is None:
            log.info("reload: [mqtt] removed; stopping the MQTT bridge")
        else:
            log.info("reload: [mqtt] changed; reconnecting with the new settings")
        if self.mqtt is not None:
            await self.mqtt.stop()
            self.mqtt = None
        self._start_mqtt()

    def _review(self, result: TickResult) -> None:
        """Journal review after a new or lost journal (controller/recovery.py): one log line
        per machine of unknown owner as it is first seen. Never fatal: a journal that cannot
        be written now is reviewed on a later tick."""
        try:
            out = review_tick(self.journal, result.fleet, time.time())
        except Exception:
            log.exception("journal review failed; retrying next tick")
            return
        level = logging.ERROR if self.identity.status == "lost" else logging.WARNING
        for u in out.new_unknown:
            log.log(level, "%s", unknown_line(u, self.config_path))
        for key in out.running:
            log.info("unknown owner: %s seen running at full power; nothing to recover", key)
        if out.finished:
            log.info("journal review done: every machine seen, none of unknown owner left")

    def _known_miners(self) -> dict[str, str] | None:
        """Miner ids an override may name (topic id and key -> key); None before a tick."""
        last = self.reconciler.last
        if last is None:
            return None
        from curtaild.controller.mqtt_payloads import miner_topic_id

        out = {m.key: m.key for m in last.fleet.miners}
        out.update({miner_topic_id(m): m.key for m in last.fleet.miners})
        if self.reconciler.site is not None:  # overrides may name rack:R / container:C
            out.update({g: g for g in self.reconciler.site.inventory.groups()})
        return out

    def _publish_mqtt(self, result: TickResult) -> None:
        if self.mqtt is None:
            return
        try:
            self.mqtt.publish_tick(result, curtailed=len(self.journal.curtailed()),
                                   stale_after_s=self.config.guards.stale_market_after_s)
        except Exception:
            log.exception("mqtt: building the tick's messages failed")

    def _export(self) -> None:
        """Publish the frozen snapshot the metrics collector reads (never fatal)."""
        try:
            self.metrics.publish_from(self)
        except Exception:
            log.exception("metrics: publishing the snapshot failed")

    def request_stop(self) -> None:
        if not self.stop.is_set():
            log.info("stop requested: abandoning the sweep in progress, finishing the commands "
                     "already sent")
            self.notifier.stopping()
        self.stop.set()
        self.reconciler.driver.stop()  # no new poll, discovery or command; see _tick

    async def _tick(self, fast: bool, send: bool = True) -> TickResult:
        """The reconciler's tick, bounded once a stop is requested.

        A hostile or hung miner must not hold SIGTERM hostage (issue 15): request_stop makes
        the driver abandon the sweep in progress (each poll's scope ends its sockets and tasks)
        and refuse commands not yet started; commands already sent finish within their own
        deadline. If the tick still runs after the grace (a market source that hangs, a command
        deadline over STOP_GRACE_MAX_S) it is cancelled: each intent was journaled before its
        command, so the next start resumes as after a crash.
        """
        tick = asyncio.ensure_future(self.reconciler.tick(fast=fast and send, send=send))
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({tick, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not tick.done():
                grace = min(self.config.controller.command_timeout_s + 2.0, STOP_GRACE_MAX_S)
                await asyncio.wait({tick}, timeout=grace)
                if not tick.done():
                    log.warning("stop: the tick still runs after %.0fs; cancelling it", grace)
                    tick.cancel()
                    await asyncio.wait({tick}, timeout=5.0)
        except asyncio.CancelledError:
            tick.cancel()
            raise
        finally:
            stop.cancel()
        if not tick.done() or tick.cancelled():
            raise TickAbandoned("the tick in progress was cancelled")
        if isinstance(tick.exception(), ObservationAborted):
            raise TickAbandoned("the sweep in progress was abandoned; nothing was decided on it")
        return tick.result()

    async def _sleep_until(self, deadline: float) -> None:
        """Wait for the next tick, a stop or a reload, pinging the watchdog meanwhile so a
        long poll interval never looks like a stuck loop."""
        self.wake.clear()
        ping = self.notifier.watchdog_interval_s
        while not (self.stop.is_set() or self.wake.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_any(), timeout=min(left, ping or left))
            self.notifier.watchdog()

    async def _wait_any(self) -> None:
        stop = asyncio.ensure_future(self.stop.wait())
        wake = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({stop, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    def _log_tick(self, r: TickResult) -> None:
        states: dict[str, int] = {}
        power = 0.0
        for m in r.fleet.miners:
            states[m.state] = states.get(m.state, 0) + 1
            power += m.power_w
        market = r.market
        log.info(
            "%s %.2fs: %s | %.1f kW | hashprice %s tariff %s | %d commands%s",
            "fast tick (inbound command)" if r.fast else "tick",
            r.duration_s,
            " ".join(f"{k}={v}" for k, v in sorted(states.items())),
            power / 1000.0,
            f"{market.hashprice_usd_per_th_day:.4f}" if market else "-",
            f"{market.tariff_usd_per_kwh:.4f}" if market else "-",
            len(r.commands),
            " (dry run)" if r.dry_run else "",
        )


def ensure_open_files(config: Config) -> int:
    """Raise the soft descriptor limit for the configured pools; warn if the hard one is short.

    Returns the soft limit now in force.
    """
    soft, needed = raise_open_files_limit(open_files_needed(
        poll_concurrency=config.fleet.poll_concurrency,
        discovery_concurrency=config.fleet.discovery_concurrency,
        command_concurrency=config.controller.command_concurrency,
        metrics_fds=fd_budget(config.metrics.max_connections) if config.metrics.listen else 0))
    if soft < needed:
        log.warning("open files limit %d is under the %d the configured concurrency can hold: "
                    "raise LimitNOFILE= or lower fleet.poll_concurrency", soft, needed)
    return soft


def run(config_path: str) -> int:
    """Start the daemon, or refuse (exit 2) with one journal line per config problem.

    The lines name the file, so an operator reading `journalctl -u curtaild` after a failed
    restart sees which edit broke it without running `curtaild check`.
    """
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for line in exc.problems:
            log.error("refusing to start, invalid configuration %s: %s", config_path, line)
        return 2
    for line in advisories(config):
        log.warning("%s", line)
    soft = ensure_open_files(config)
    tune_gc()
    log.info("process: open files limit %d, gc thresholds %s", soft, gc.get_threshold())
    try:
        daemon = Daemon(config_path, config)
    except ConfigError as exc:  # valid keys, but a source or policy could not be built
        for line in exc.problems:
            log.error("refusing to start, invalid configuration %s: %s", config_path, line)
        return 2
    except JournalError as exc:  # the state directory or journal is unusable: say which, why
        log.error("refusing to start (%s): %s", config_path, exc)
        return 2
    return asyncio.run(daemon.run())
