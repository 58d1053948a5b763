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
asleep that is not curtaild's is left alone, as always).
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
from curtaild.controller.journal import Journal, JournalError
from curtaild.controller.loop import Fence
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
#: Miner identities per etcd key (``<scope>identities/NNNN``): ~60 bytes each, class only, so
#: a key stays far under etcd's 1.5 MiB request limit whatever the shard's size.
IDENTITY_CHUNK = 5000


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
        return out

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
            value = held.get(f"{self.prefix}meta/{key}")
            if value is None:
                stmts.append(("DELETE FROM meta WHERE key=?", (key,)))
            else:
                stmts.append(("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                              "UPDATE SET value=excluded.value", (key, value.decode())))
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
        self._identities_shared: dict[str, bytes] | None = None  # key -> what etcd holds
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
        return (self.role == "leader" and not self.resume_needed
                and time.monotonic() < self.deadline - self.margin_s)

    # ------------------------------------------------------------------- Fence
    def remaining_s(self) -> float:
        return self.deadline - self.margin_s - time.monotonic() if self.may_command() else 0.0

    async def confirm(self) -> str | None:
        """Refresh the lease, then share what changed, fenced on the term (module docstring)."""
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
            if self.role == "leader":
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
            if self._last_error is not None:
                log.info("etcd reachable again (%s)", ", ".join(self.config.endpoints))
            self.etcd_up = True
            self._last_error = None
        except EtcdUnavailable as exc:
            self._etcd_down(exc)
        if self.role == "leader" and time.monotonic() >= self.deadline - self.margin_s:
            self._lose("its lease could not be confirmed within the TTL")

    async def _keepalive(self) -> None:
        if self.lease_id:
            sent = time.monotonic()
            ttl = await self.store.keepalive(self.lease_id)
            if ttl > 0:
                self.deadline = sent + ttl
                return
            if self.role == "leader":
                self._lose("its lease expired in etcd")
            self.lease_id = 0
        sent = time.monotonic()
        self.lease_id = await self.store.grant(self.config.lease_ttl_s)
        self.deadline = sent + self.config.lease_ttl_s

    # ---------------------------------------------------------------- identities
    async def share_identities(self, entries: dict[str, dict]) -> None:
        """A leader shares its miner identity cache (drivers/identity_cache.py) so that a
        standby that starts later polls at once instead of discovering every address.
        Only the class (all a standby takes: MAC and serial are read by its first poll), in
        keys of IDENTITY_CHUNK addresses: one value for 20,000 miners with MAC and serial was
        2.4 MB, refused by etcd (1.5 MiB per request). Written when they change; never raises
        for etcd."""
        if not self.may_command():
            return
        prefix = self.config.scope + "identities/"
        items = sorted((ip, e["class"]) for ip, e in entries.items()
                       if isinstance(e, dict) and isinstance(e.get("class"), str))
        blobs = {f"{prefix}{n // IDENTITY_CHUNK:04d}": json.dumps(
            dict(items[n:n + IDENTITY_CHUNK]), separators=(",", ":")).encode()
            for n in range(0, len(items), IDENTITY_CHUNK)}
        try:
            if self._identities_shared is None:  # what an earlier leader left
                self._identities_shared = await self.store.get_prefix(prefix)
            held = self._identities_shared
            puts = {k: v for k, v in blobs.items() if held.get(k) != v}
            stale = [k for k in held if k not in blobs]
            if (puts or stale) and await self.store.fenced(self.leader_key, self.term, puts,
                                                           stale):
                self._identities_shared = blobs
        except EtcdUnavailable as exc:
            self._etcd_down(exc)

    async def fetch_identities(self) -> dict[str, dict]:
        """The identities the leader shared ({} if none, or etcd is unreachable)."""
        try:
            held = await self.store.get_prefix(self.config.scope + "identities/")
        except EtcdUnavailable as exc:
            self._etcd_down(exc)
            return {}
        out: dict[str, dict] = {}
        for value in held.values():
            try:
                data = json.loads(value)
            except ValueError:
                continue
            if isinstance(data, dict):
                out.update({ip: {"class": c} for ip, c in data.items() if isinstance(c, str)})
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
        """After a tick: publish this shard's summary (leader only), divide the cap (the
        allocator only), read this shard's budget. Never raises for etcd."""
        if self.config.site_power_cap_w is None:
            return
        from curtaild.controller.site_allocator import Summary, allocate

        scope = self.config.site_scope
        shard = self.config.shard or "_site"
        try:
            if summary is not None and self.may_command():
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
                self.budgets = allocate(self.config.site_power_cap_w, summaries)
                stamp = time.time()
                puts = {scope + "budget/" + name: json.dumps(
                    {"budget_w": round(w, 1), "at": stamp, "cap_w": self.config.site_power_cap_w,
                     "allocator": self.config.instance_id}).encode()
                    for name, w in self.budgets.items()}
                if puts and not await self.store.fenced(scope + "allocator",
                                                        self.allocator_term, puts):
                    self.allocator = False
            own = await self.store.get(scope + "budget/" + shard)
            if own is not None:
                data = json.loads(own.value)
                self.budget_w, self.budget_at = float(data["budget_w"]), float(data["at"])
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
        age = time.time() - self.budget_at
        if self.budget_w is not None and age <= cfg.budget_hold_s:
            return self.budget_w, "site budget"
        why = ("no budget yet" if self.budget_w is None
               else f"the last budget is {age:.0f}s old")
        return cfg.safe_budget_w, f"safe budget ({why})"

    def _etcd_down(self, exc: Exception) -> None:
        text = str(exc)
        if self.etcd_up or self._last_error is None:
            log.warning("etcd unreachable (%s): %s%s", ", ".join(self.config.endpoints), text,
                        "; commanding stops when the lease runs out"
                        if self.role == "leader" else "")
        self.etcd_up = False
        self._last_error = text

    def _win(self, term: int) -> None:
        self.role = "leader"
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
