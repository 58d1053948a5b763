"""What a successor inherits beyond ownership (issue 19), against a real etcd on loopback:
when each machine was last changed (minimum dwell, limit dwell), each outlet's switch-offs of
the last 24 h and each PDU's last switch-on (hard power-down caps and stagger), and the miner
identities of a fleet too large for one etcd value.

As tests/controller/test_cluster_member.py, each test runs its instances' steps by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from curtaild.controller.cluster import ClusterMember
from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.guards import GuardConfig, RampBucket, apply_guards
from curtaild.controller.journal import Journal
from curtaild.controller.outlet_journal import OutletJournal
from curtaild.core.snapshot import Command, Desired, FleetSnapshot, MarketSnapshot, MinerReading
from tests.support.etcd import EtcdCluster

pytestmark = [pytest.mark.integration]
IP = "127.190.7.1"
PDU = "127.190.7.50"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster([IP]) as cluster:
        yield cluster


_sites = iter(range(1000))


def _members(etcd: EtcdCluster, tmp_path: Path, n: int = 2, **cfg: object
             ) -> list[ClusterMember]:
    site = f"h{next(_sites)}"  # a fresh election per test on the shared etcd
    out = []
    for i in range(n):
        config = ClusterConfig(endpoints=etcd.endpoints, site_id=site,  # type: ignore[arg-type]
                               instance_id=f"i{i}", lease_ttl_s=2, **cfg)
        out.append(ClusterMember(config, Journal(tmp_path / f"i{i}")))
    return out


async def _lead(m: ClusterMember) -> None:
    await m.step()
    assert m.role == "leader"
    await m.resume()
    assert m.may_command()


async def _fail_over(etcd: EtcdCluster, old: ClusterMember, new: ClusterMember) -> None:
    """``old``'s lease revoked behind its back (as its expiry after a kill -9 would be);
    ``new`` wins and resumes the shared state."""
    etcd.etcdctl("lease", "revoke", format(old.lease_id, "x"))
    await new.step()
    assert new.role == "leader"
    await new.resume()


def _cmd(key: str, action: str, limit: float | None = None) -> Command:
    return Command(key=key, ip="127.190.9.1", action=action,  # type: ignore[arg-type]
                   power_limit_w=limit, reason="test", delta_power_w=0.0)


def _mining(key: str, now: float) -> MinerReading:
    return MinerReading(key=key, ip="127.190.9.1", make="AntMiner", model="test",
                        firmware="luxos", state="mining", hashrate_ths=100.0, power_w=3000.0,
                        power_source="firmware", power_limit_w=None, temp_c=70.0,
                        nameplate_hashrate_ths=100.0, nameplate_power_w=3000.0,
                        observed_at=now - 1, supports_power_limit=True)


MARKET = MarketSnapshot(hashprice_usd_per_th_day=0.03, hashprice_source="test",
                        hashprice_age_s=0.0, tariff_usd_per_kwh=0.10, tariff_source="test",
                        tariff_age_s=0.0, pool_fee=0.02)


async def test_successor_keeps_minimum_dwell_of_a_machine_woken_just_before(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    """The predecessor woke m1 and saw it running (its ownership and expectation are gone):
    the successor must still know it changed m1 30 s ago, and not sleep it again before
    min_dwell_s -- nor change m2's power limit before limit_dwell_s."""
    a, b = _members(etcd, tmp_path)
    await _lead(a)
    now = time.time()
    wake = _cmd("m1", "run")
    a.journal.record_intent(wake, observed_limit_w=None, dry_run=False, now=now - 31)
    a.journal.record_outcome(wake, "ok", now=now - 30)
    a.journal.mark_verified("m1", "127.190.9.1", "run", now=now - 20)
    limit = _cmd("m2", "run", 3000.0)  # a restore of m2's limit, seen done and released
    a.journal.record_intent(limit, observed_limit_w=None, dry_run=False, now=now - 601)
    a.journal.record_outcome(limit, "ok", now=now - 600)
    a.journal.mark_verified("m2", "127.190.9.1", "run", now=now - 590)
    assert not a.journal.expectations() and not a.journal.curtailed()
    assert await a.push()
    await _fail_over(etcd, a, b)

    mem = b.journal.memory(dwell_s=3600.0, now=now)
    assert mem["m1"].last_change_at == pytest.approx(now - 30, abs=1e-3)
    assert mem["m2"].last_change_at == pytest.approx(now - 600, abs=1e-3)
    assert not mem["m1"].curtailed_by_us
    # and m2's power-limit change counts against max_limit_changes_per_day (rule 6c)
    assert b.journal.limit_changes_since(now - 86400.0) == {"m2": (pytest.approx(now - 601),)}
    loses = Desired(action="sleep", reason="policy", margin_usd_per_day=-2.0,
                    run_margin_usd_per_day=-2.0)
    limited = Desired(action="limit", reason="policy", power_limit_w=2000.0,
                      margin_usd_per_day=3.0, run_margin_usd_per_day=1.0,
                      hold_margin_usd_per_day=1.0)
    guarded = apply_guards(
        FleetSnapshot(miners=(_mining("m1", now), _mining("m2", now)), taken_at=now),
        MARKET, {"m1": loses, "m2": limited}, mem, RampBucket(1e9, now),
        GuardConfig(min_dwell_s=300.0, limit_dwell_s=3600.0, limit_restart_s={}), now)
    assert not guarded.commands
    assert guarded.held["m1"].startswith("min dwell: changed 30 s ago"), guarded.held
    assert guarded.held["m2"].startswith("limit dwell: changed 600 s ago"), guarded.held
    # Past the window the successor does not carry them on.
    b.mirror.dwell_s = 60.0
    assert await b.push()
    kept = etcd.get_prefix(b.config.scope + "state/changes/miner/")
    assert [k.rsplit("/", 1)[-1] for k in kept] == ["m1"]
    kept = etcd.get_prefix(b.config.scope + "state/changes/limit/")
    assert [k.rsplit("/", 1)[-1] for k in kept] == ["m2"]  # a day's window, not dwell's
    for m in (a, b):
        await m.stop()


async def test_successor_counts_the_outlet_cycles_of_its_predecessor(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    """Switch-offs per outlet in the last 24 h (max_cycles_per_day) and the PDU's last
    switch-on (on_interval_s) survive a failover, and the next one: nothing counted twice,
    nothing older than a day carried."""
    a, b, c = _members(etcd, tmp_path, n=3)
    await _lead(a)
    now = time.time()
    oa = OutletJournal(a.journal)
    for t in (now - 90_000, now - 3000, now - 1000):  # the first is older than a day
        oa.intend_off(PDU, 3, ("m1",), "cannot sleep", now=t)
        oa.off_done(PDU, 3, ok=True, now=t + 1)
        oa.intend_on(PDU, 3, now=t + 500)
        oa.on_done(PDU, 3, ok=True, now=t + 501)
    oa.intend_off(PDU, 4, ("m2",), "cap", now=now - 100)
    oa.off_done(PDU, 4, ok=True, now=now - 99)
    assert oa.cycles(now) == {(PDU, 3): 2, (PDU, 4): 1}
    assert await a.push()
    await _fail_over(etcd, a, b)

    ob = OutletJournal(b.journal)
    assert ob.cycles(now) == {(PDU, 3): 2, (PDU, 4): 1}
    assert ob.last_on_at() == {PDU: pytest.approx(now - 499, abs=1e-3)}
    assert set(ob.owned()) == {(PDU, 4)}
    # b switches outlet 3 off once more: three, not five, for the next successor
    ob.intend_off(PDU, 3, ("m1",), "cannot sleep", now=now - 10)
    ob.off_done(PDU, 3, ok=True, now=now - 9)
    assert ob.cycles(now) == {(PDU, 3): 3, (PDU, 4): 1}
    assert await b.push()
    await _fail_over(etcd, b, c)
    assert OutletJournal(c.journal).cycles(now) == {(PDU, 3): 3, (PDU, 4): 1}
    # and a day later none of them counts any more
    assert OutletJournal(c.journal).cycles(now + 86_400.0) == {}
    for m in (a, b, c):
        await m.stop()


def _identities(n: int) -> dict[str, dict]:
    """``n`` synthetic identities from 127.200.0.1 on, as a warm fleet's cache holds them."""
    out = {}
    for i in range(n):
        ip = f"127.{200 + i // 65025}.{i // 255 % 255}.{i % 255 + 1}"
        out[ip] = {"class": "ANTMINER/ANTMINER S19j Pro",
                   "mac": f"02:00:{i >> 24 & 255:02X}:{i >> 16 & 255:02X}:"
                          f"{i >> 8 & 255:02X}:{i & 255:02X}",
                   "serial": f"SN{i:012d}"}
    return out


async def test_forty_thousand_identities_are_shared_in_blocks(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    """40,000 identities are about 4 MiB of JSON, more than etcd's default 1.5 MiB request
    limit: shared in blocks, read back whole by a standby; blocks that are no longer needed
    are deleted."""
    a, b = _members(etcd, tmp_path)
    await _lead(a)
    await b.step()
    entries = _identities(40_000)
    assert len(entries) == 40_000
    assert len(json.dumps(entries)) > 3 * 1024 * 1024
    await a.share_identities(entries)
    assert a.etcd_up, "sharing the identities failed"
    got = await b.fetch_identities()
    assert got == entries
    # the fleet shrinks: stale blocks go, the others are not rewritten
    keys_before = {k: v for k, v in etcd.get_prefix(a.config.scope + "identities").items()}
    small = {ip: e for ip, e in entries.items() if int(ip.split(".")[2]) < 10}
    await a.share_identities(small)
    assert await b.fetch_identities() == small
    keys_after = etcd.get_prefix(a.config.scope + "identities")
    assert set(keys_after) < set(keys_before)
    assert all(keys_before[k] == v for k, v in keys_after.items())
    for m in (a, b):
        await m.stop()


async def test_identities_of_an_older_leader_are_still_read(etcd: EtcdCluster,
                                                           tmp_path: Path) -> None:
    """A leader of the previous release wrote one key; a standby of this one takes it, and a
    leader of this one replaces it with blocks."""
    a, b = _members(etcd, tmp_path)
    await _lead(a)
    old = {"127.190.9.1": {"class": "ANTMINER/ANTMINER S19"}}
    etcd.etcdctl("put", a.config.scope + "identities", json.dumps(old))
    assert await b.fetch_identities() == old
    new = {"127.190.9.2": {"class": "ANTMINER/ANTMINER S19"}}
    await a.share_identities(new)
    assert await b.fetch_identities() == new
    assert a.config.scope + "identities" not in etcd.get_prefix(a.config.scope + "identities")
    for m in (a, b):
        await m.stop()


async def test_identities_are_rebuilt_only_after_the_cache_changed(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    """The leader shares after every tick: at 40,000 miners building the blocks costs ~50 ms,
    so an unchanged cache (same version) is not even looked at."""
    from curtaild.drivers.identity_cache import IdentityCache

    a, b = _members(etcd, tmp_path)
    await _lead(a)
    cache = IdentityCache(tmp_path / "identities.json")
    cache.merge({"127.190.9.1": {"class": "ANTMINER/ANTMINER S19"}})
    await a.share_identities(cache.entries, cache.version)
    cache.entries["127.190.9.2"] = {"class": "ANTMINER/ANTMINER S19"}  # behind its back
    await a.share_identities(cache.entries, cache.version)
    assert set(await b.fetch_identities()) == {"127.190.9.1"}
    cache.forget("127.190.9.1")
    await a.share_identities(cache.entries, cache.version)
    assert set(await b.fetch_identities()) == {"127.190.9.2"}
    for m in (a, b):
        await m.stop()
