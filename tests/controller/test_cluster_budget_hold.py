"""Budget hold against fencing (issue 19), with a real etcd on loopback and an instance's path
to it cut (tests/support/tcpproxy.py):

- a shard whose leader loses etcd: the leader of a pair stops commanding within its TTL (a
  peer may lead; its machines keep their last state), while a shard configured without a
  standby (``[cluster] standby = false``) goes on commanding under its last budget for
  ``budget_hold_s``, then ``safe_budget_w``, and takes a new term once etcd is back;
- a successor that reaches etcd while the allocator does not: the last budget is held
  ``budget_hold_s`` after the allocator wrote it, then the safe budget, until a new allocator
  writes.

As tests/controller/test_cluster_member.py, each test runs its instances' steps by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from curtaild.controller.cluster import ClusterMember
from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.journal import Journal
from tests.support.etcd import EtcdCluster
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration]
IP = "127.190.8.1"
#: one proxy address per test: gRPC shares a connection's reconnect backoff between channels
PROXIES = iter(f"127.190.8.{i}" for i in range(10, 60))
SUMMARY = {"power_w": 5000.0, "base_w": 500.0, "blocks": [[4000.0, 10.0]]}


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster([IP]) as cluster:
        yield cluster


_sites = iter(range(1000))


def _member(tmp_path: Path, site: str, name: str, shard: str, endpoints: list[str],
            **cfg: object) -> ClusterMember:
    base: dict[str, object] = {"lease_ttl_s": 2, "site_power_cap_w": 10_000.0,
                               "safe_budget_w": 3000.0, "budget_hold_s": 3.0,
                               "request_timeout_s": 0.3}
    config = ClusterConfig(endpoints=endpoints, site_id=site, instance_id=name,  # type: ignore[arg-type]
                           shard=shard, **{**base, **cfg})
    return ClusterMember(config, Journal(tmp_path / name))


async def test_a_shard_without_standby_commands_on_without_etcd_a_pair_stops(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    site = f"b{next(_sites)}"
    proxy_ip = next(PROXIES)
    via_proxy = [f"http://{proxy_ip}:2379"]
    with TcpProxy((proxy_ip, 2379), (IP, 2379)) as proxy:
        lone = _member(tmp_path, site, "lone", "A", via_proxy, standby=False)
        pair = _member(tmp_path, site, "pair", "B", via_proxy)
        # before etcd was ever reached: the lone shard commands (nobody else can), the pair
        # member waits as a standby
        assert lone.may_command() and await lone.confirm() is None
        assert not pair.may_command()
        await lone.step()
        await pair.step()
        await pair.resume()
        assert lone.term > 0 and lone.journal.term == lone.term
        assert lone.status().as_json()["role"] == "leader"
        for _ in range(2):  # publish; the allocator divides; each reads its budget
            for m in (lone, pair):
                await m.share_site(SUMMARY)
        assert lone.budget_in_force() == (4500.0, "site budget")
        written_at, term = lone.budget_at, lone.term

        proxy.cut()
        cut_at = time.monotonic()
        sources: list[tuple[float, float | None, str]] = []
        while time.monotonic() - cut_at < 5.0:
            for m in (lone, pair):
                await m.step()
                await m.share_site(SUMMARY)
            budget, source = lone.budget_in_force()
            sources.append((time.time() - written_at, budget, source))
            assert lone.may_command() and await lone.confirm() is None, "the lone shard stopped"
            assert lone.remaining_s() == float("inf")
            await asyncio.sleep(0.2)
        # the pair's leader stopped within its TTL (a standby of its shard may lead now)
        assert pair.role == "standby" and not pair.may_command()
        assert await pair.confirm() is not None
        # the lone shard held its last budget budget_hold_s after the allocator wrote it,
        # then fell back to its safe budget
        assert all(b == 4500.0 and s == "site budget" for age, b, s in sources if age < 2.9)
        late = [(b, s) for age, b, s in sources if age > 3.1]
        assert late and all(b == 3000.0 and s.startswith("safe budget (the last budget is")
                            for b, s in late), sources

        await asyncio.sleep(8.0)  # gRPC's reconnect backoff grows while etcd is away
        proxy.restore()
        back_at = time.monotonic()
        while not lone.etcd_up and time.monotonic() - back_at < 4.0:
            await lone.step()
            await asyncio.sleep(0.2)
        # its key went with its lease: it holds the shard again under a new term
        assert lone.etcd_up and lone.may_command() and lone.term > term
        assert lone.journal.term == lone.term
        for m in (lone, pair):
            await m.stop()


async def test_a_second_instance_of_a_shard_without_standby_does_not_command(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    """``standby = false`` on two instances of one shard is a mistake: the one that finds the
    other's key stops commanding (and says why) until the other is gone."""
    site = f"b{next(_sites)}"
    one = _member(tmp_path, site, "one", "A", etcd.endpoints, standby=False)
    two = _member(tmp_path, site, "two", "A", etcd.endpoints, standby=False)
    await one.step()
    await two.step()
    assert one.may_command()
    assert not two.may_command() and two.leader == "one" and two.term == one.term
    refused = await two.confirm()
    assert refused is not None and "standby = false" in refused
    await one.stop()  # revokes its lease: its key goes
    await two.step()
    assert two.may_command() and two.leader == "two" and two.term > one.term
    await two.stop()


async def test_a_shard_alone_publishes_its_summary_on_its_lease_only(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    """A shard alone commands before it holds a lease: its summary must not outlive it."""
    site = f"b{next(_sites)}"
    lone = _member(tmp_path, site, "lone", "A", etcd.endpoints, standby=False)
    summaries = lone.config.site_scope + "summary/"
    await lone.share_site(SUMMARY)
    assert lone.may_command() and not etcd.get_prefix(summaries)
    await lone.step()
    await lone.share_site(SUMMARY)
    assert list(etcd.get_prefix(summaries)) == [summaries + "A"]
    await lone.stop()  # its lease revoked: the summary goes with it
    assert not etcd.get_prefix(summaries)


async def test_a_successor_holds_the_last_budget_then_the_safe_one_until_a_new_allocator(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    """Shard A's leader dies while the site's allocator (shard C) is cut off from etcd: A's
    successor reads etcd fine, but nobody writes budgets. It keeps the allocator's last budget
    for budget_hold_s after it was written, then the safe budget; once the allocator's lease
    is gone an instance that reaches etcd allocates and writes fresh budgets."""
    site = f"b{next(_sites)}"
    proxy_ip = next(PROXIES)
    with TcpProxy((proxy_ip, 2379), (IP, 2379)) as proxy:
        hold = {"budget_hold_s": 1.0, "lease_ttl_s": 3}
        alloc = _member(tmp_path, site, "z", "C", [f"http://{proxy_ip}:2379"], **hold)
        a1 = _member(tmp_path, site, "a1", "A", etcd.endpoints, **hold)
        a2 = _member(tmp_path, site, "a2", "A", etcd.endpoints, **hold)
        for m in (alloc, a1, a2):
            await m.step()
        assert alloc.allocator and a1.role == "leader" and a2.role == "standby"
        await a1.resume()
        await alloc.resume()
        for _ in range(2):
            for m in (alloc, a1, a2):
                await m.share_site(SUMMARY)
        assert a2.budget_in_force() == (4500.0, "site budget")
        written_at = a2.budget_at

        proxy.cut()
        etcd.etcdctl("lease", "revoke", format(a1.lease_id, "x"))  # a1 dies (kill -9)
        seen: list[tuple[float, str, bool]] = []
        start = time.monotonic()
        while time.monotonic() - start < 6.0:
            await a2.step()
            if a2.role == "leader" and a2.resume_needed:
                await a2.resume()
            await a2.share_site(SUMMARY if a2.may_command() else None)
            _, source = a2.budget_in_force()
            seen.append((a2.budget_at, source, a2.allocator))
            await asyncio.sleep(0.2)
        assert a2.role == "leader"
        sources = [s.split(" (")[0] for _, s, _ in seen]
        # held, then safe, then a new allocator's (a2's own: it reaches etcd)
        first_safe = sources.index("safe budget")
        assert all(at == written_at for at, _, _ in seen[:first_safe])
        assert sources[:first_safe] and set(sources[:first_safe]) == {"site budget"}
        fresh = [i for i, (at, s, _) in enumerate(seen) if at > written_at]
        assert fresh and fresh[0] > first_safe and seen[-1][2], seen
        assert all(seen[i][1] == "site budget" for i in fresh)
        for m in (alloc, a1, a2):
            await m.stop()
