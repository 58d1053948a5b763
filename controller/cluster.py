"""Hot standby through etcd (issue 19): one leader commands, standbys poll and decide.

Election. Every instance holds an etcd lease of ``lease_ttl_s`` and keeps it alive every third
of it. The leader is whoever created the key ``<scope>leader`` (its value: the instance id) on
its lease; the key's create revision is the leader's *term*: etcd revisions only grow, so each
new leader's term is larger than every earlier one. A standby tries to create the key at every
step; it succeeds only once the key is gone, i.e. once the leader's lease expired (a crash, a
leader cut off from etcd) or was revoked (a clean stop).

Fencing. A leader commands only while it knows its lease holds: until ``deadline`` = the time it
*sent* its last successful keep-alive plus the TTL. etcd expires the lease no earlier than that
(it counts from the keep-alive's arrival), and a successor can create the key only after, so
every command of a leader starts before any command of its successor. Before each batch the
leader refreshes the lease and writes, in one etcd transaction guarded by "the leader key still
has my term", the state a successor needs; a refused transaction is a lost leadership and the
batch is not sent. A command still waiting when the deadline passes is cancelled
(controller/loop.py ``_within_lease``). Every journaled intent and outcome carries the term.

Shared state. The journal (SQLite) stays the full local history; what a successor needs to
resume lives under ``<scope>state/``: the ownership table (machines curtaild slept, limited or
switched off, and the limit to restore), expectations (pending verifications, failure counts,
flags), machines of unknown owner and an open journal review, the ramp bucket, the operator's
LuxOS ATM settings, and the MQTT directives (demand-response events, overrides, pauses,
remembered ids). The leader writes what changed before each batch (so no machine is slept
before a successor can know it is curtaild's) and after each tick. A new leader replaces those
tables of its local journal with etcd's before its first command, so it wakes what its
predecessor slept once the margin returns and never wakes what an operator slept (a machine
asleep that is not curtaild's is left alone, as always). What the guards and the outlet tier
count from the journal's history (the last change of each machine, each outlet's switch-offs
of the day, each PDU's last switch-on) is shared too (``changes/``), so a successor keeps
minimum dwell and the cycle caps of its predecessor.

A shard without a standby (``[cluster] standby = false``: ``lone``) has nobody to fence against
or hand over to: it commands with or without etcd (under its held, then safe, budget) and
mirrors nothing; it holds the leader key only to notice a second instance of its shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.guards import GuardConfig, memory_window_s
from curtaild.controller.journal import Journal, JournalError
from curtaild.controller.loop import Fence
from curtaild.controller.outlet_journal import DAY_S, OutletJournal
from curtaild.controller.outlet_journal import SCHEMA as OUTLET_SCHEMA
from curtaild.drivers.etcd import EtcdStore, EtcdTls, EtcdUnavailable

log = logging.getLogger("curtaild.cluster")

#: Journal tables mirrored to etcd, by primary key columns.
TABLES: dict[str, tuple[str, ...]] = {
    "curtailed": ("miner",),
    "expectations": ("miner",),
    "unknown_owner": ("miner",),
    "mqtt_directives": ("kind", "key"),
    # outlets curtaild switched off (controller/outlet_journal.py): a successor switches
    # them back on when it should, and still never one an operator switched off
    "outlets": ("pdu", "outlet"),
}
#: Journal meta keys mirrored to etcd (the rest is local: identity, history).
META_KEYS = ("ramp_bucket", "review", "luxos_atm_operator")
#: Written with every push: its presence says etcd holds a leader's state.
EPOCH_KEY = "epoch"
#: Shared miner identities: ``<scope>identities/<block>``, one key per /24 of addresses.
IDENTITIES = "identities"
#: Blocks per page of a read: a block is at most ~30 KiB, a page stays under 1 MiB.
IDENTITY_PAGE_KEYS = 32
#: Recent changes, under ``<prefix>changes/``: what the guards and the hard power-down tier
#: count from the journal's history (``events``, ``outlet_events``), which is not mirrored.
#: ``miner/<key>``: the last command that went through, within the guards' memory window
#: (minimum dwell, limit dwell); ``limit/<key>``: its power-limit changes of the last 24 h
#: (``max_limit_changes_per_day``); ``outlet/<pdu>/<n>``: the switch-offs of the last 24 h
#: (``max_cycles_per_day``); ``pdu/<pdu>``: the last switch-on (``on_interval_s``).
CHANGES = "changes/"


def build_store(config: ClusterConfig) -> EtcdStore:
    """The etcd client for ``[cluster]``; secrets are read now (ValueError names the key)."""
    tls = None
    if config.tls is not None:
        ca, cert, key = config.tls.read()
        tls = EtcdTls(ca_cert=ca, cert_chain=cert, cert_key=key,
                      server_name=config.tls.server_name)
    return EtcdStore(config.endpoints, timeout_s=config.request_timeout_s, tls=tls,
                     username=config.username, password=config.read_password())


class StateMirror:
    """The journal tables a successor needs, as etcd keys: snapshot, diff, restore."""

    def __init__(self, journal: Journal, prefix: str):
        self.journal = journal
        self.prefix = prefix
        #: what etcd holds (as last written or read by this instance)
        self.pushed: dict[str, bytes] = {}
        #: how far back the last change of a machine is shared: the guards' memory window
        #: (controller/guards.py ``memory_window_s``; the daemon sets it from ``[guards]``)
        self.dwell_s = memory_window_s(GuardConfig())

    def _columns(self, table: str) -> list[str]:
        return [r[1] for r in self.journal.db.execute(f"PRAGMA table_info({table})")]

    def snapshot(self) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        db = self.journal.db
        for table, pk in TABLES.items():
            cols = self._columns(table)
            if not cols:
                continue  # mqtt_directives: created by the daemon only
            idx = [cols.index(c) for c in pk]
            for row in db.execute(f"SELECT * FROM {table}"):
                name = "/".join(quote(str(row[i]), safe="") for i in idx)
                out[f"{self.prefix}{table}/{name}"] = json.dumps(
                    dict(zip(cols, row, strict=True)), sort_keys=True).encode()
        for key in META_KEYS:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row is not None:
                out[f"{self.prefix}meta/{key}"] = row[0].encode()
        out.update(self._changes(time.time()))
        return out

    def _changes(self, now: float) -> dict[str, bytes]:
        """The recent changes a successor needs (:data:`CHANGES`), from this journal's
        history and the changes it resumed itself (``shared_changes``)."""
        out: dict[str, bytes] = {}
        base = self.prefix + CHANGES
        if self.dwell_s > 0:
            for miner, at in self.journal.recent_changes(now - self.dwell_s).items():
                out[f"{base}miner/{quote(miner, safe='')}"] = json.dumps({"at": at}).encode()
        for miner, times in self.journal.limit_changes_since(now - DAY_S).items():
            out[f"{base}limit/{quote(miner, safe='')}"] = json.dumps(
                {"at": list(times)}).encode()
        outlets = OutletJournal(self.journal)
        for (pdu, n), off_at in outlets.off_times(now - DAY_S).items():
            out[f"{base}outlet/{quote(pdu, safe='')}/{n}"] = json.dumps(
                {"off_at": off_at}).encode()
        for pdu, at in outlets.last_on_at().items():
            if at >= now - DAY_S:
                out[f"{base}pdu/{quote(pdu, safe='')}"] = json.dumps({"on_at": at}).encode()
        return out

    def _restore_changes(self, held: dict[str, bytes]) -> list[tuple[str, tuple]]:
        """Statements replacing ``shared_changes`` with etcd's; an unreadable row is skipped
        (it can only make a guard less strict for one machine, never command it)."""
        stmts: list[tuple[str, tuple]] = [("DELETE FROM shared_changes", ())]
        base = self.prefix + CHANGES
        insert = "INSERT OR IGNORE INTO shared_changes (kind, key, at) VALUES (?, ?, ?)"
        for key, value in held.items():
            if not key.startswith(base):
                continue
            kind, _, name = key[len(base):].partition("/")
            try:
                data = json.loads(value)
                if kind == "miner":
                    stmts.append((insert, ("miner", unquote(name), float(data["at"]))))
                elif kind == "limit":
                    for at in data["at"]:
                        stmts.append((insert, ("limit", unquote(name), float(at))))
                elif kind == "outlet":
                    pdu, _, n = name.rpartition("/")
                    for at in data["off_at"]:
                        stmts.append((insert, ("outlet_off", f"{unquote(pdu)}/{int(n)}",
                                               float(at))))
                elif kind == "pdu":
                    stmts.append((insert, ("pdu_on", unquote(name), float(data["on_at"]))))
            except (ValueError, KeyError, TypeError):
                log.warning("cluster: unreadable shared change %s ignored", key)
        return stmts

    def changes(self) -> tuple[dict[str, bytes], list[str]]:
        now = self.snapshot()
        puts = {k: v for k, v in now.items() if self.pushed.get(k) != v}
        deletes = [k for k in self.pushed if k not in now]
        return puts, deletes

    def restore(self, held: dict[str, bytes]) -> int:
        """Replace the mirrored tables and meta keys with etcd's ``held``: one transaction.
        Returns the rows written."""
        stmts: list[tuple[str, tuple]] = []
        rows = 0
        if any(k.startswith(f"{self.prefix}outlets/") for k in held) \
                and not self._columns("outlets"):
            # a successor that never switched an outlet has no outlet tables yet
            self.journal.db.executescript(OUTLET_SCHEMA)
        for table in TABLES:
            cols = set(self._columns(table))
            if not cols:
                continue
            stmts.append((f"DELETE FROM {table}", ()))
            start = f"{self.prefix}{table}/"
            for key, value in held.items():
                if not key.startswith(start):
                    continue
                data = {k: v for k, v in json.loads(value).items() if k in cols}
                names = sorted(data)
                stmts.append((f"INSERT INTO {table} ({', '.join(names)}) VALUES "
                              f"({', '.join('?' for _ in names)})",
                              tuple(data[n] for n in names)))
                rows += 1
        for key in META_KEYS:
            meta = held.get(f"{self.prefix}meta/{key}")
            if meta is None:
                stmts.append(("DELETE FROM meta WHERE key=?", (key,)))
            else:
                stmts.append(("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                              "UPDATE SET value=excluded.value", (key, meta.decode())))
        stmts += self._restore_changes(held)
        self.journal._tx(stmts)
        return rows


@dataclass(frozen=True)
class ClusterStatus:
    role: str
    term: int
    leader: str | None
    shard: str | None

    budget_w: float | None = None
    budget_source: str = ""

    def as_json(self) -> dict:
        out: dict = {"role": self.role, "term": self.term, "leader": self.leader,
                     "shard": self.shard}
        if self.budget_source:
            out["budget_w"] = self.budget_w
            out["budget_source"] = self.budget_source
        return out


class ClusterMember(Fence):
    """This instance's place in the cluster: its lease, its role, the leader's term."""

    def __init__(self, config: ClusterConfig, journal: Journal, store: EtcdStore | None = None):
        self.config = config
        self.journal = journal
        self.store = store if store is not None else build_store(config)
        self.leader_key = config.scope + "leader"
        self.mirror = StateMirror(journal, config.scope + "state/")
        self.role = "standby"
        self.term = 0  # the leader's term: ours when leading, the one seen otherwise
        self.leader: str | None = None
        #: ``[cluster] standby = false``: the shard's only instance. No peer can lead in its
        #: place, so nothing is fenced: it commands from the start, with or without etcd
        #: (under its held, then safe, budget), and hands no state over. It still holds the
        #: leader key while etcd answers, so that a second instance of its shard is noticed.
        self.lone = not config.standby
        if self.lone:
            self.role, self.leader = "leader", config.instance_id
        self.lease_id = 0
        self.deadline = 0.0  # monotonic: our lease holds at least until then
        self.etcd_up = False
        self.resume_needed = False  # won the election; etcd's state not imported yet
        self.takeovers = 0
        self.losses = 0
        self._last_error: str | None = None
        self._task: asyncio.Task | None = None
        # site allocation across shards ([cluster] site_power_cap_w; controller/site_allocator)
        self.allocator = False
        self.allocator_term = 0
        self.budget_w: float | None = None  # this shard's budget as last read
        self.budget_at = 0.0  # unix time the allocator wrote it
        self.budgets: dict[str, float] = {}  # the allocator's last division (for status)
        from curtaild.controller.site_demand import SiteView

        self.site = SiteView()  # the site target and record (controller/site_demand.py)
        #: the identity blocks etcd holds, as this leader wrote or read them (None: unknown)
        self._identities_shared: dict[str, bytes] | None = None
        self._identities_version: int | None = None
        #: called on a change of role (the daemon then ticks at once, not at the next interval)
        self.on_change: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ status
    def status(self) -> ClusterStatus:
        budget, source = self.budget_in_force()
        return ClusterStatus(self.role, self.term, self.leader, self.config.shard, budget,
                             source)

    @property
    def margin_s(self) -> float:
        """Held back from the lease deadline: clocks drift, a command takes a moment to leave."""
        return min(0.5, self.config.lease_ttl_s * 0.1)

    def lease_remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if self.lease_id else 0.0

    def may_command(self) -> bool:
        if self.lone:
            return self.role == "leader"  # "standby": another instance holds its shard
        return (self.role == "leader" and not self.resume_needed
                and time.monotonic() < self.deadline - self.margin_s)

    # ------------------------------------------------------------------- Fence
    def remaining_s(self) -> float:
        if self.lone:
            return float("inf") if self.may_command() else 0.0
        return self.deadline - self.margin_s - time.monotonic() if self.may_command() else 0.0

    async def confirm(self) -> str | None:
        """Refresh the lease, then share what changed, fenced on the term (module docstring).
        Without a standby (``lone``) there is nobody to fence against or hand over to."""
        if self.lone:
            return None if self.may_command() else (
                f"{self.leader or 'another instance'} holds this shard's leader key although "
                "[cluster] standby = false here")
        if not self.may_command():
            return "not the leader (standby, or its lease is not confirmed)"
        try:
            await self._keepalive()
            if not self.may_command():
                return "the leadership lease expired"
            if not await self.push():
                self._lose("the leader key is no longer this instance's (another leader)")
                return "leadership lost"
        except EtcdUnavailable as exc:
            self._etcd_down(exc)
            return f"etcd unavailable ({exc}): the state a successor needs cannot be shared"
        return None

    async def push(self) -> bool:
        """Write the mirrored state's changes, fenced on our term. False: not the leader."""
        if self.lone:
            return True  # no successor to resume it
        puts, deletes = self.mirror.changes()
        if not puts and not deletes:
            return await self.store.fenced(self.leader_key, self.term)
        epoch = json.dumps({"term": self.term, "instance": self.config.instance_id,
                            "at": time.time()}).encode()
        puts[self.mirror.prefix + EPOCH_KEY] = epoch
        ok = await self.store.fenced(self.leader_key, self.term, puts, deletes)
        if ok:
            puts.pop(self.mirror.prefix + EPOCH_KEY)
            self.mirror.pushed.update(puts)
            for k in deletes:
                self.mirror.pushed.pop(k, None)
        return ok

    # ------------------------------------------------------------- life cycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster")

    async def stop(self) -> None:
        """Leave cleanly: a leader revokes its lease, so a standby takes over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.lease_id:
            with contextlib.suppress(EtcdUnavailable, Exception):
                await self.store.revoke(self.lease_id)
        self.role = "standby"
        await self.store.close()

    async def _run(self) -> None:
        period = max(0.2, self.config.lease_ttl_s / 3.0)
        while True:
            started = time.monotonic()
            await self.step()
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def step(self) -> None:
        """Keep the lease alive; a standby campaigns; a leader checks it still leads."""
        try:
            await self._keepalive()
            if self.lone:
                await self._hold_alone()
            elif self.role == "leader":
                held = await self.store.get(self.leader_key)
                if held is None or held.create_revision != self.term:
                    self._lose("the leader key is gone or another instance's")
            else:
                value = json.dumps({"instance_id": self.config.instance_id}).encode()
                created, held = await self.store.create(self.leader_key, value, self.lease_id)
                # held on our own lease: an earlier create reached etcd after its deadline
                if held is not None and (created or held.lease_id == self.lease_id):
                    self._win(held.create_revision)
                elif held is not None:
                    self.term = held.create_revision
                    self.leader = _instance(held.value)
            if self.config.site_power_cap_w is not None:
                await self._campaign_allocator()
                from curtaild.controller import site_demand

                await site_demand.watch(self)  # a new site target acts now, not next tick
            if self._last_error is not None:
                log.info("etcd reachable again (%s)", ", ".join(self.config.endpoints))
            self.etcd_up = True
            self._last_error = None
        except EtcdUnavailable as exc:
            self._etcd_down(exc)
        if not self.lone and self.role == "leader" \
                and time.monotonic() >= self.deadline - self.margin_s:
            self._lose("its lease could not be confirmed within the TTL")

    async def _hold_alone(self) -> None:
        """``standby = false``: hold the shard's leader key (a new term after etcd lost the
        last one with its lease); stop commanding while another instance holds it."""
        value = json.dumps({"instance_id": self.config.instance_id,
                            "standby": False}).encode()
        created, held = await self.store.create(self.leader_key, value, self.lease_id)
        if held is None:
            return
        if created or held.lease_id == self.lease_id:
            if self.term != held.create_revision:
                self.term = self.journal.term = held.create_revision
                log.info("cluster: %s holds %s alone (standby = false), term %d",
                         self.config.instance_id, self.config.scope, self.term)
            self.leader = self.config.instance_id
            if self.role != "leader":
                self.role = "leader"
                log.warning("cluster: %s commands %s again (standby = false)",
                            self.config.instance_id, self.config.scope)
                self.on_change()
            return
        other = _instance(held.value)
        if other == self.config.instance_id:
            return  # this instance's previous process (a restart): its lease runs out soon
        self.leader, self.term = other, held.create_revision
        if self.role == "leader":
            self.role = "standby"
            self.losses += 1
            log.error("cluster: %s holds %s, yet [cluster] standby = false here says this "
                      "instance is the shard's only one: this one stops commanding until the "
                      "other is gone (give each shard one instance, or standbys on all)",
                      other, self.config.scope)
            self.on_change()

    async def _keepalive(self) -> None:
        if self.lease_id:
            sent = time.monotonic()
            ttl = await self.store.keepalive(self.lease_id)
            if ttl > 0:
                self.deadline = sent + ttl
                return
            if self.role == "leader" and not self.lone:
                self._lose("its lease expired in etcd")
            self.lease_id = 0
        sent = time.monotonic()
        self.lease_id = await self.store.grant(self.config.lease_ttl_s)
        self.deadline = sent + self.config.lease_ttl_s

    # ---------------------------------------------------------------- identities
    async def share_identities(self, entries: dict[str, dict],
                               version: int | None = None) -> None:
        """A leader shares its miner identity cache (drivers/identity_cache.py) so that a
        standby that starts later polls at once instead of discovering every address.

        One key per block of addresses (``<scope>identities/<a.b.c>``: a /24, at most 255
        entries, ~30 KiB): 40,000 identities are ~4 MiB, past etcd's default 1.5 MiB request
        limit for one value, and a change rewrites its block only. Blocks that hold no
        address any more are deleted, and the single key older releases wrote with them.
        ``version`` (the cache's change count): nothing is built while it is unchanged.
        Never raises for etcd."""
        if not self.may_command() or self.lone:  # lone: no standby to warm
            return
        if version is not None and version == self._identities_version \
                and self._identities_shared is not None:
            return
        prefix = self.config.scope + IDENTITIES
        blocks = {f"{prefix}/{quote(name, safe='')}": blob
                  for name, blob in identity_blocks(entries).items()}
        try:
            if self._identities_shared is None:  # what a predecessor left there
                self._identities_shared = await self.store.get_prefix(
                    prefix, page_keys=IDENTITY_PAGE_KEYS)
            held = self._identities_shared
            puts = {k: v for k, v in blocks.items() if held.get(k) != v}
            deletes = [k for k in held if k not in blocks]
            if puts or deletes:
                self._identities_shared = None  # unknown until the write is done
                if not await self.store.fenced(self.leader_key, self.term, puts, deletes):
                    return
            self._identities_shared = blocks
            self._identities_version = version
        except EtcdUnavailable as exc:
            self._etcd_down(exc)

    async def fetch_identities(self) -> dict[str, dict]:
        """The identities the leader shared ({} if none, or etcd is unreachable): every
        block, read at one revision."""
        prefix = self.config.scope + IDENTITIES
        try:
            held = await self.store.get_prefix(prefix, page_keys=IDENTITY_PAGE_KEYS)
        except EtcdUnavailable as exc:
            self._etcd_down(exc)
            return {}
        out: dict[str, dict] = {}
        # the single key of an older release first: a block written since wins
        for key in sorted(held, key=lambda k: k != prefix):
            try:
                data = json.loads(held[key])
            except ValueError:
                log.warning("cluster: unreadable identities %s ignored", key)
                continue
            if isinstance(data, dict):
                out.update(data)
        return out

    # ------------------------------------------------------------ site allocation
    async def _campaign_allocator(self) -> None:
        key = self.config.site_scope + "allocator"
        if self.allocator:
            held = await self.store.get(key)
            if held is None or held.create_revision != self.allocator_term:
                self.allocator = False
                log.warning("cluster: %s no longer allocates the site's power",
                            self.config.instance_id)
            return
        value = json.dumps({"instance_id": self.config.instance_id}).encode()
        created, held = await self.store.create(key, value, self.lease_id)
        if held is not None and (created or held.lease_id == self.lease_id):  # as in step()
            self.allocator, self.allocator_term = True, held.create_revision
            log.warning("cluster: %s allocates the site's power cap (%.0f W) across shards",
                        self.config.instance_id, self.config.site_power_cap_w or 0.0)

    async def share_site(self, summary: dict | None) -> None:
        """After a tick: publish this shard's summary (leader only), divide the site target
        (the allocator only: the tighter of the cap and a site demand-response event,
        controller/site_demand.py), read this shard's budget. Never raises for etcd."""
        if self.config.site_power_cap_w is None:
            return
        from curtaild.controller import site_demand
        from curtaild.controller.site_allocator import Summary, allocate

        scope = self.config.site_scope
        shard = self.config.shard or "_site"
        try:
            if summary is not None and self.may_command() and self.lease_id:
                # on our lease only: a summary must go with the instance (a shard alone
                # commands before it holds a lease)
                await self.store.put(scope + "summary/" + shard, json.dumps(summary).encode(),
                                     lease_id=self.lease_id)
            if self.allocator:
                held = await self.store.get_prefix(scope + "summary/")
                summaries = {}
                for key, value in held.items():
                    try:
                        summaries[key.rsplit("/", 1)[-1]] = Summary.from_json(json.loads(value))
                    except (ValueError, KeyError, TypeError):
                        log.warning("cluster: unreadable summary %s ignored", key)
                stamp = time.time()
                target, view = await site_demand.read_target(self, stamp)
                self.budgets = allocate(target.target_w, summaries)
                puts = {scope + "budget/" + name: json.dumps(
                    {"budget_w": round(w, 1), "at": stamp, "cap_w": self.config.site_power_cap_w,
                     "target_w": round(target.target_w, 1), "target": target.source,
                     "until": target.until, "allocator": self.config.instance_id}).encode()
                    for name, w in self.budgets.items()}
                self.site.state = site_demand.site_state(
                    target=target, summaries=summaries, budgets=self.budgets, view=view,
                    allocator=self.config.instance_id, now=stamp)
                puts[scope + "site"] = json.dumps(self.site.state).encode()
                if not await self.store.fenced(scope + "allocator", self.allocator_term, puts):
                    self.allocator = False
                    self.site.state = None
                self.site.allocated = target.key
            own = await self.store.get(scope + "budget/" + shard)
            if own is not None:
                site_demand.take_budget(self, json.loads(own.value))
        except EtcdUnavailable as exc:
            self._etcd_down(exc)

    def budget_in_force(self) -> tuple[float | None, str]:
        """This shard's power cap from the site allocation and where it comes from: the last
        budget the allocator wrote, held for budget_hold_s after it wrote it (an allocator that
        died, a shard that cannot read etcd); then safe_budget_w. (None, "") without a site
        cap."""
        cfg = self.config
        if cfg.site_power_cap_w is None:
            return None, ""
        now = time.time()
        age = now - self.budget_at
        if self.budget_w is not None and age <= cfg.budget_hold_s:
            return self.budget_w, "site budget"
        why = ("no budget yet" if self.budget_w is None
               else f"the last budget is {age:.0f}s old")
        until = self.site.budget_until
        if self.budget_w is not None and until is not None and now < until \
                and cfg.safe_budget_w is not None:
            # made for a site event still running: the safe budget may be above this shard's
            # share of the event's target; the lower one keeps the site under it
            return (min(self.budget_w, cfg.safe_budget_w),
                    f"held budget (site event until {_iso(until)}; {why})")
        return cfg.safe_budget_w, f"safe budget ({why})"

    def _etcd_down(self, exc: Exception) -> None:
        text = str(exc)
        if self.etcd_up or self._last_error is None:
            log.warning("etcd unreachable (%s): %s%s", ", ".join(self.config.endpoints), text,
                        "; commanding goes on (standby = false) under the last budget, then "
                        "safe_budget_w" if self.lone and self.role == "leader"
                        else "; commanding stops when the lease runs out"
                        if self.role == "leader" else "")
        self.etcd_up = False
        self._last_error = text

    def _win(self, term: int) -> None:
        self.role = "leader"
        self._identities_shared = None  # a predecessor may have written other blocks
        self.term = term
        self.leader = self.config.instance_id
        self.resume_needed = True
        self.takeovers += 1
        log.warning("cluster: %s leads %s (term %d); resuming the shared state before the "
                    "first command", self.config.instance_id, self.config.scope, term)
        self.on_change()

    def _lose(self, why: str) -> None:
        if self.role != "leader":
            return
        self.role = "standby"
        self.leader = None
        self.losses += 1
        log.error("cluster: %s no longer leads (term %d): %s; commands stop",
                  self.config.instance_id, self.term, why)
        self.on_change()

    async def resume(self) -> int:
        """After winning: replace the mirrored journal tables with etcd's (or, if etcd holds
        no leader's state yet, share this journal's). Returns the rows imported. Raises
        EtcdUnavailable (tried again before the next tick)."""
        held = await self.store.get_prefix(self.mirror.prefix)
        if self.mirror.prefix + EPOCH_KEY in held:
            try:
                rows = self.mirror.restore(held)
            except JournalError:
                raise
            self.mirror.pushed = {k: v for k, v in held.items()
                                  if not k.endswith("/" + EPOCH_KEY)}
            epoch = json.loads(held[self.mirror.prefix + EPOCH_KEY])
            log.warning("cluster: resumed the state of %s (term %s): %d rows (ownership, "
                        "expectations, directives)", epoch.get("instance"), epoch.get("term"),
                        rows)
        else:
            self.mirror.pushed = {k: v for k, v in held.items()}
            rows = 0
            log.warning("cluster: etcd holds no leader's state yet: sharing this journal's")
            if not await self.push():
                self._lose("the leader key is no longer this instance's")
                return 0
        self.journal.term = self.term
        self.resume_needed = False
        return rows


def _iso(ts: float) -> str:
    from curtaild.controller.mqtt_payloads import iso

    return iso(ts) or ""


def identity_block(ip: str) -> str:
    """The block an address's identity is shared in: its /24 ("127.0.3" for 127.0.3.7);
    an address of another form is a block of its own."""
    head, dot, _ = ip.rpartition(".")
    return head if dot else ip


def identity_blocks(entries: dict[str, dict]) -> dict[str, bytes]:
    """The identity cache as blocks (:func:`identity_block`), each compact JSON."""
    blocks: dict[str, dict[str, dict]] = {}
    for ip, entry in entries.items():
        blocks.setdefault(identity_block(ip), {})[ip] = entry
    return {name: json.dumps(b, sort_keys=True, separators=(",", ":")).encode()
            for name, b in blocks.items()}


def _instance(value: bytes) -> str | None:
    try:
        data = json.loads(value)
    except ValueError:
        return None
    got = data.get("instance_id") if isinstance(data, dict) else None
    return got if isinstance(got, str) else None


def miner_of(key: str) -> str:
    """The miner key of a mirrored row's etcd key (for tools and tests)."""
    return unquote(key.rsplit("/", 1)[-1])
