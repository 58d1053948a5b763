"""controller/cluster.py against a real etcd (one member on loopback): election, term,
fencing, the shared state and its resumption by a successor.

Each test runs its instances' steps by hand (no background task): what a daemon does every
third of the TTL, made deterministic.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from curtaild.controller.cluster import ClusterMember, StateMirror
from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.journal import Journal
from curtaild.controller.outlet_journal import OutletJournal
from curtaild.core.snapshot import Command
from curtaild.drivers.etcd import EtcdStore, EtcdUnavailable
from tests.support.etcd import EtcdCluster

pytestmark = [pytest.mark.integration]
IP = "127.190.4.1"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster([IP]) as cluster:
        yield cluster


_sites = iter(range(1000))


def _members(etcd: EtcdCluster, tmp_path: Path, n: int = 2, ttl: int = 2
             ) -> list[ClusterMember]:
    site = f"s{next(_sites)}"  # a fresh election per test on the shared etcd
    out = []
    for i in range(n):
        cfg = ClusterConfig(endpoints=etcd.endpoints, site_id=site, instance_id=f"i{i}",
                            lease_ttl_s=ttl)
        journal = Journal(tmp_path / f"i{i}")
        out.append(ClusterMember(cfg, journal))
    return out


def _sleep(key: str, ip: str) -> Command:
    return Command(key=key, ip=ip, action="sleep", power_limit_w=None, reason="test",
                   delta_power_w=-3000.0)


async def test_one_leader_and_its_term(etcd: EtcdCluster, tmp_path: Path) -> None:
    a, b = _members(etcd, tmp_path)
    await a.step()
    await b.step()
    assert (a.role, b.role) == ("leader", "standby")
    assert a.term > 0 and b.term == a.term and b.leader == "i0"
    assert a.resume_needed and not a.may_command()  # nothing commanded before resuming
    assert await a.resume() == 0  # etcd held no state: a's journal is shared
    assert a.may_command() and a.journal.term == a.term
    assert await a.confirm() is None
    assert await b.confirm() is not None  # a standby never passes the fence
    for m in (a, b):
        await m.stop()


async def test_a_create_applied_after_its_deadline_still_wins(etcd: EtcdCluster,
                                                              tmp_path: Path) -> None:
    """The campaign's create reached etcd but its answer came after the request deadline (a
    10,000-miner first sweep starves the loop: bench/failover.py): the key is on this
    instance's own lease. The next step must take it as a win; it followed itself as the
    "leader" for good, and with its key alive on its kept lease nobody ever led."""
    a, b = _members(etcd, tmp_path)
    await a._keepalive()  # a's lease
    created, _held = await a.store.create(a.leader_key, json.dumps(
        {"instance_id": "i0"}).encode(), a.lease_id)  # the answer a never saw
    assert created and a.role == "standby"
    await a.step()
    await b.step()
    assert (a.role, b.role) == ("leader", "standby") and a.term == b.term > 0
    assert a.leader == b.leader == "i0" and a.resume_needed
    for m in (a, b):
        await m.stop()
    # the same for the site allocator's key
    cfg = ClusterConfig(endpoints=etcd.endpoints, site_id=f"s{next(_sites)}", instance_id="i0",
                        lease_ttl_s=2, shard="h1", site_power_cap_w=10_000.0,
                        safe_budget_w=5_000.0)
    c = ClusterMember(cfg, Journal(tmp_path / "c"))
    await c._keepalive()
    await c.store.create(cfg.site_scope + "allocator", b"{}", c.lease_id)
    await c.step()
    assert c.role == "leader" and c.allocator and c.allocator_term > 0
    await c.stop()


async def test_deposed_leader_is_fenced_and_successor_resumes(etcd: EtcdCluster,
                                                             tmp_path: Path) -> None:
    a, b = _members(etcd, tmp_path)
    await a.step()
    await a.resume()
    # a journals a sleep (curtaild's) and shares it before sending, as the loop does
    a.journal.record_intent(_sleep("m1", "127.190.9.1"), observed_limit_w=None, dry_run=False)
    assert await a.confirm() is None
    held = etcd.get_prefix(a.config.scope + "state/curtailed/")
    assert list(held) == [a.config.scope + "state/curtailed/m1"]
    # a's lease is revoked behind its back (as its expiry would): a must stop at once
    a_lease = a.lease_id
    etcd.etcdctl("lease", "revoke", format(a_lease, "x"))
    await b.step()
    assert b.role == "leader" and b.term > a.term
    refused = await a.confirm()
    assert refused is not None and a.role == "standby" and not a.may_command()
    assert a.remaining_s() == 0.0
    # b resumes a's state: m1 is curtaild's (woken when the margin returns)
    assert await b.resume() >= 2  # the ownership row and its expectation
    assert set(b.journal.curtailed()) == {"m1"}
    assert b.journal.expectations()["m1"].action == "sleep"
    # a, deposed, cannot overwrite the state any more
    a.journal.record_intent(_sleep("m2", "127.190.9.2"), observed_limit_w=None, dry_run=False)
    a.role, a.resume_needed = "leader", False  # as if it had not noticed yet
    assert await a.push() is False
    assert "m2" not in json.dumps(etcd.get_prefix(b.config.scope))
    for m in (a, b):
        await m.stop()


async def test_leader_without_etcd_stops_within_the_ttl(etcd: EtcdCluster,
                                                       tmp_path: Path) -> None:
    cfg = ClusterConfig(endpoints=["http://127.190.4.99:2379"], site_id="x", instance_id="a",
                        lease_ttl_s=2, request_timeout_s=0.3)
    a = _members(etcd, tmp_path, n=1)[0]
    await a.step()
    await a.resume()
    assert a.may_command()
    # the same instance now reaches no etcd at all (its endpoint answers nothing)
    a.store = EtcdStore(cfg.endpoints, timeout_s=0.3)
    lost = None
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 4:
        await a.step()
        if a.role != "leader":
            lost = loop.time() - start
            break
        await asyncio.sleep(0.2)
    assert lost is not None and lost <= 2.0, lost
    assert not a.may_command() and not a.etcd_up
    assert await a.confirm() is not None


async def test_store_deadline_on_a_silent_endpoint() -> None:
    store = EtcdStore(["http://127.190.4.98:2379"], timeout_s=0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(EtcdUnavailable):
        await store.get("/x")
    assert loop.time() - start < 2.0
    await store.close()


def test_mirror_round_trip(tmp_path: Path) -> None:
    """Every mirrored table and meta key comes back as it was; nothing else is touched."""
    src, dst = Journal(tmp_path / "src"), Journal(tmp_path / "dst")
    src.record_intent(_sleep("m1", "127.190.9.1"), observed_limit_w=3000.0, dry_run=False)
    src.mark_mismatch("m1", "127.190.9.1", "sleep", "mining", flag_after=3)
    src.set_meta("ramp_bucket", {"budget_w": 1234.0, "updated_at": 5.0})
    dst.record_intent(_sleep("stale", "127.190.9.9"), observed_limit_w=None, dry_run=False)
    held = StateMirror(src, "/p/").snapshot()
    StateMirror(dst, "/p/").restore(held)
    assert dst.curtailed() == src.curtailed()
    assert dst.expectations() == src.expectations()
    assert dst.get_meta("ramp_bucket") == {"budget_w": 1234.0, "updated_at": 5.0}
    assert StateMirror(dst, "/p/").snapshot() == held
    # the local history is not replaced: dst's own intent stays in its events
    assert [e["miner"] for e in dst.events()] == ["stale"]


def test_mirror_carries_the_outlets_curtaild_switched_off(tmp_path: Path) -> None:
    """A successor (here one that never switched an outlet, so has no outlet tables) owns
    what its predecessor switched off: it switches those back on when it should, never one
    an operator switched off."""
    src, dst = Journal(tmp_path / "src"), Journal(tmp_path / "dst")
    outlets = OutletJournal(src)
    outlets.intend_off("127.190.9.50", 3, ("02:EC:7F:BE:09:01",), "cannot sleep", now=100.0)
    outlets.off_done("127.190.9.50", 3, ok=True, now=101.0)
    outlets.intend_off("127.190.9.50", 4, ("02:EC:7F:BE:09:02",), "cap", now=102.0)
    held = StateMirror(src, "/p/").snapshot()
    assert any(k.startswith("/p/outlets/") for k in held)
    StateMirror(dst, "/p/").restore(held)
    assert OutletJournal(dst).owned() == outlets.owned()
    assert set(OutletJournal(dst).owned()) == {("127.190.9.50", 3), ("127.190.9.50", 4)}


async def test_identities_shared_by_the_leader(etcd: EtcdCluster, tmp_path: Path) -> None:
    """A standby that starts later takes the leader's miner identities (warm start)."""
    from curtaild.drivers.identity_cache import IdentityCache

    a, b = _members(etcd, tmp_path)
    await a.step()
    await a.resume()
    entries = {"127.190.9.1": {"class": "ANTMINER/ANTMINER S19", "mac": "02:00:00:00:00:01"},
               "127.190.9.2": {"class": "WHATSMINER/M30SV10@v3"}}
    await a.share_identities(entries)
    await b.share_identities({"127.190.9.3": {"class": "ANTMINER/S21"}})  # a standby: no
    cache = IdentityCache(tmp_path / "b-identities.json")
    cache.entries["127.190.9.2"] = {"class": "WHATSMINER/M30SV10"}  # its own wins
    assert cache.merge(await b.fetch_identities()) == 1
    assert cache.entries == {"127.190.9.1": {"class": "ANTMINER/ANTMINER S19"},
                             "127.190.9.2": {"class": "WHATSMINER/M30SV10"}}
    assert cache.build("127.190.9.1") is not None
    for m in (a, b):
        await m.stop()


async def test_identities_of_a_large_shard_are_shared(etcd: EtcdCluster, tmp_path: Path) -> None:
    """20,000 identities with their MAC and serial were one 2.4 MB etcd value, past etcd's
    1.5 MiB request limit: refused at every tick, and a standby started later discovered every
    address (bench/shards.py). Shared in one key per /24 (controller/cluster.py
    identity_blocks); a shrunken fleet leaves no stale key behind."""
    from curtaild.controller.cluster import identity_blocks

    a, b = _members(etcd, tmp_path)
    await a.step()
    await a.resume()
    entries = {f"127.{190 + i // 60000}.{i // 250 % 240}.{i % 250 + 1}": {
        "class": "ANTMINER/ANTMINER S19J PRO", "mac": f"02:EC:7F:C4:{i // 256 % 256:02X}:"
        f"{i % 256:02X}", "serial": f"JYZZB{i:010d}"} for i in range(30_000)}
    await a.share_identities(entries)
    got = await b.fetch_identities()
    assert {ip: e["class"] for ip, e in got.items()} == \
        {ip: e["class"] for ip, e in entries.items()}
    keys = etcd.etcdctl("get", "--prefix", "--keys-only", a.config.scope + "identities")
    assert len([k for k in keys.stdout.split() if k]) == len(identity_blocks(entries)) == 120
    few = dict(list(entries.items())[:10])
    await a.share_identities(few)
    assert {ip: e["class"] for ip, e in (await b.fetch_identities()).items()} == \
        {ip: e["class"] for ip, e in few.items()}
    keys = etcd.etcdctl("get", "--prefix", "--keys-only", a.config.scope + "identities")
    assert len([k for k in keys.stdout.split() if k]) == 1
    for m in (a, b):
        await m.stop()
