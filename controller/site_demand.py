"""A sharded site's demand-response target (issue 19): taken by any shard's MQTT bridge, kept
in etcd, divided across the shards by the site allocator like the site cap.

Why etcd and not the receiving shard's journal: the event must reach the allocator (elected
among every instance of the site, on any box), survive the loss of the shard that took it, and
a retry sent to another shard's bridge must be a duplicate, not a second event. So any shard
leader's bridge takes ``<topic_prefix>/site/<site_id>/cmd/curtail`` (and ``.../curtail/
cancel``); the command is validated by the same code as a shard's own commands
(controller/directives.py: same fields, limits, duplicates, answers), against the site's
events as etcd holds them, and the rows it changes are written under ``<site scope>dr/`` (one
key per row, the rows of the journal's ``mqtt_directives`` table) in one transaction fenced on
the receiving shard leader's term. The answer leaves after that write: ``accepted`` means
saved in etcd.

The allocator reads those rows at each allocation: the site target is the tighter of
``[cluster] site_power_cap_w`` and the active site event (overlapping events: the lowest
target wins, as for a shard's events); it is divided across the shards exactly as the cap is
(controller/site_allocator.py). When the event ends or is cancelled, the target is the cap
again and the shards restore. A shard's own ``<prefix>/cmd/curtail`` keeps capping that shard
only (the lower of it and the shard's budget wins).

Site events have no heartbeat watchdog: heartbeats belong to one shard's bridge; a site event
holds to its end or its cancel (``on_signal_loss = "hold"``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import quote, unquote

from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.directive_journal import store_from_rows
from curtaild.controller.directives import SITE_KINDS, DirectiveStore, Invalid, Limits, Response
from curtaild.controller.directives import _decode as decode_payload
from curtaild.controller.directives import _read_id as read_id
from curtaild.controller.mqtt_payloads import iso
from curtaild.controller.site_allocator import Summary
from curtaild.core.snapshot import Directives
from curtaild.drivers.etcd import EtcdStore, EtcdUnavailable

log = logging.getLogger("curtaild.cluster")

#: What the allocator reads the site's rows with: nothing trimmed (the receiving shard's own
#: [mqtt] limits decide what is accepted).
READ_LIMITS = Limits(max_active_events=10000, max_remembered_ids=1_000_000)


def site_root(topic_prefix: str, site_id: str) -> str:
    """The site topics under one shard's prefix: ``<prefix>/site/<site_id>``."""
    return f"{topic_prefix}/site/{site_id}"


def site_limits(limits: Limits) -> Limits:
    """The receiving shard's limits, without the heartbeat watchdog (module docstring)."""
    return replace(limits, event_heartbeat_s=None, on_signal_loss="hold",
                   signal_loss_end_after_s=None)


# ------------------------------------------------------------------------ rows <-> etcd
def rows_of(held: Mapping[str, bytes], prefix: str) -> list[tuple[str, str, str]]:
    """etcd keys ``<prefix><kind>/<quoted key>`` -> ``(kind, key, value)`` rows."""
    out = []
    for k, v in held.items():
        kind, _, name = k[len(prefix):].partition("/")
        out.append((kind, unquote(name), v.decode("utf-8", "replace")))
    return out


def changes(pending: Mapping[tuple[str, str], Any], prefix: str
            ) -> tuple[dict[str, bytes], list[str]]:
    """A store's pending rows -> (etcd puts, etcd deletes)."""
    puts: dict[str, bytes] = {}
    deletes: list[str] = []
    for (kind, key), row in pending.items():
        name = f"{prefix}{kind}/{quote(key, safe='')}"
        if row is None:
            deletes.append(name)
        else:
            puts[name] = json.dumps(row, separators=(",", ":")).encode()
    return puts, deletes


def load(held: Mapping[str, bytes], prefix: str, limits: Limits, now: float
         ) -> DirectiveStore:
    """The site's directive store as etcd holds it (what ended is dropped: its deletions stay
    pending, written with the next command)."""
    store, problems = store_from_rows(rows_of(held, prefix), limits, now)
    for line in problems:
        log.warning("site demand response: %s", line.replace("journal directives: ", ""))
    return store


# ----------------------------------------------------------------------- the site target
@dataclass(frozen=True)
class SiteTarget:
    """What the allocator divides: the tighter of the site cap and the active site event."""

    target_w: float
    cap_w: float
    event_id: str | None = None
    until: float | None = None  # the event's end; None: the cap (no end)

    @property
    def source(self) -> str:
        return f"site event {self.event_id}" if self.event_id is not None else "site cap"

    @property
    def key(self) -> tuple[float, str]:
        """Changes when the target does (a shard then acts on its new budget at once)."""
        return (round(self.target_w, 1), self.source)


def site_target(cap_w: float, events: Directives) -> SiteTarget:
    """The tighter of the configured cap and the site event in force (a tie: the cap)."""
    ev = events.power_cap_w
    if ev is not None and ev < cap_w:
        return SiteTarget(ev, cap_w, events.power_cap_event_id, events.power_cap_until)
    return SiteTarget(cap_w, cap_w)


def site_state(*, target: SiteTarget, summaries: Mapping[str, Summary],
               budgets: Mapping[str, float], view: Mapping[str, Any], allocator: str,
               now: float) -> dict[str, Any]:
    """The site record the allocator writes to etcd and every shard leader's bridge publishes
    retained on ``<prefix>/site/<site_id>/state`` (docs/mqtt.md). Power is the sum of the
    shards' last summaries (each shard's observed power)."""
    return {
        "at": iso(now),
        "allocator": allocator,
        "target_w": round(target.target_w, 1),
        "target": target.source,
        "cap_w": target.cap_w,
        "active_event": view.get("active_event"),
        "scheduled_events": view.get("scheduled_events", []),
        "power_w": round(sum(s.power_w for s in summaries.values()), 1),
        "budget_w": round(sum(budgets.values()), 1),
        "shards": {name: {"power_w": round(summaries[name].power_w, 1),
                          "budget_w": round(budgets.get(name, 0.0), 1)}
                   for name in sorted(summaries)},
    }


class ClusterMember(Protocol):
    """What this module uses of controller/cluster.py's ClusterMember (which imports this
    module: a protocol, not an import, keeps the modules free of cycles)."""

    config: ClusterConfig
    store: EtcdStore
    site: SiteView
    role: str
    term: int
    leader_key: str
    allocator: bool
    budget_w: float | None
    budget_at: float
    on_change: Callable[[], None]

    def may_command(self) -> bool: ...
    def _lose(self, why: str) -> None: ...
    def _etcd_down(self, exc: Exception) -> None: ...


@dataclass
class SiteView:
    """What one instance knows of the site beyond its budget (ClusterMember.site)."""

    budget_until: float | None = None  # the end of the site event the budget was made for
    budget_key: tuple | None = None  # the target the last budget read was made for
    allocated: tuple | None = None  # the target the allocator last divided
    state: dict | None = None  # the allocator's last site record (for its metrics)
    #: monotonic time the site target changed (the daemon then ticks at once, fast)
    changed_mono: float = 0.0


def take_budget(member: ClusterMember, data: Mapping[str, Any]) -> None:
    """Keep a budget record the allocator wrote; a new target (an event began or ended)
    wakes the loop at once, rather than at its next interval."""
    member.budget_w, member.budget_at = float(data["budget_w"]), float(data["at"])
    until = data.get("until")
    member.site.budget_until = float(until) if isinstance(until, int | float) else None
    key = (data.get("target_w"), data.get("target"))
    if member.site.budget_key is not None and key != member.site.budget_key:
        changed(member)
    member.site.budget_key = key


def changed(member: ClusterMember) -> None:
    member.site.changed_mono = time.monotonic()
    member.on_change()


# ----------------------------------------------------------------------------- etcd I/O
def dr_prefix(member: ClusterMember) -> str:
    return member.config.site_scope + "dr/"


async def read_target(member: ClusterMember, now: float) -> tuple[SiteTarget, dict[str, Any]]:
    """The site target now and the events' view (for the site record). Raises
    EtcdUnavailable."""
    held = await member.store.get_prefix(dr_prefix(member))
    store = load(held, dr_prefix(member), READ_LIMITS, now)
    cap = member.config.site_power_cap_w
    assert cap is not None
    return site_target(cap, store.directives(now)), store.view(now)


async def watch(member: ClusterMember) -> None:
    """Every cluster step (a third of the TTL): the allocator notices a new site target (an
    event taken by another shard's bridge, a scheduled start, an end) and a shard leader a
    new budget, each waking its loop, so a site event takes effect within a few seconds
    rather than a poll interval or two. Never raises but EtcdUnavailable."""
    try:
        if member.allocator:
            target, _ = await read_target(member, time.time())
            if member.site.allocated is not None and target.key != member.site.allocated:
                changed(member)
        if member.role == "leader":
            shard = member.config.shard or "_site"
            own = await member.store.get(member.config.site_scope + "budget/" + shard)
            if own is not None:
                take_budget(member, json.loads(own.value))
    except EtcdUnavailable:
        raise
    except Exception:
        log.exception("cluster: watching the site target failed")


async def handle_command(member: ClusterMember, kind: str, body: bytes, now: float, *,
                         retained: bool, limits: Limits) -> Response:
    """One site command from this shard's bridge: validated against the site's events in
    etcd, saved there (fenced on this shard leader's term), then answered."""
    site = member.config.site_id
    ident: str | None = None
    try:
        ident = read_id(decode_payload(body, limits))
    except Invalid:
        pass
    if kind not in SITE_KINDS:
        return Response(ident, "rejected", f"unknown site command topic {kind!r}: site "
                        f"topics take {' and '.join(SITE_KINDS)} (a shard's own commands go "
                        "to <prefix>/cmd/...)")
    if not member.may_command():
        return Response(ident, "rejected", "not saved: this instance does not lead its shard "
                        "now; send it again (any shard's bridge takes site commands)")
    prefix = dr_prefix(member)
    try:
        held = await member.store.get_prefix(prefix)
        store = load(held, prefix, site_limits(limits), now)
        resp = store.handle(kind, body, now, retained=retained)
        assert resp is not None  # only heartbeats go unanswered
        rows = store.take_pending()
        if rows:
            puts, deletes = changes(rows, prefix)
            if not await member.store.fenced(member.leader_key, member.term, puts, deletes):
                member._lose("the leader key is no longer this instance's")
                return Response(resp.id, "rejected", "not saved: this instance no longer "
                                "leads its shard; send it again")
    except EtcdUnavailable as exc:
        member._etcd_down(exc)
        return Response(ident, "rejected", f"not saved: etcd unavailable ({exc}); send it "
                        "again")
    if resp.status == "rejected" or resp.duplicate:
        return resp
    return replace(resp, reason=f"site {site}: {resp.reason}; divided across the shards")


async def read_state(member: ClusterMember) -> dict | None:
    """The site record for this shard's bridge: the allocator's own, or as etcd holds it
    (None if there is none yet, it is unreadable, or etcd is unreachable)."""
    if member.allocator and member.site.state is not None:
        return member.site.state
    try:
        held = await member.store.get(member.config.site_scope + "site")
    except EtcdUnavailable as exc:
        member._etcd_down(exc)
        return None
    if held is None:
        return None
    try:
        data = json.loads(held.value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
