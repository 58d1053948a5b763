"""drivers/etcd.py against a real etcd (one member on loopback): reads that outgrow one gRPC
message; a store back within a call of etcd after an outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from curtaild.drivers.etcd import EtcdStore, EtcdUnavailable
from tests.support.etcd import EtcdCluster
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.integration]
IP = "127.190.6.1"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster([IP]) as cluster:
        yield cluster


async def test_get_prefix_reads_more_than_one_grpc_message(etcd: EtcdCluster) -> None:
    """A successor reads the leader's whole state under one prefix: at 10,000 miners, after a
    demand-response shed, 4.9 MB -- past gRPC's 4 MiB per message, so the read failed
    (RESOURCE_EXHAUSTED) and the successor never resumed, never commanded (bench/failover.py).
    Read in pages, and smaller pages when one still does not fit."""
    store = EtcdStore(etcd.endpoints, timeout_s=10.0)
    try:
        value = b"x" * 10_000  # 600 x 10 kB = 6 MB; 500 keys of it are still > 4 MiB
        want = {f"/big/state/{i:05d}": value + str(i).encode() for i in range(600)}
        items = list(want.items())
        for start in range(0, len(items), 50):
            await asyncio.gather(*(store.put(k, v) for k, v in items[start:start + 50]))
        await store.put("/big/statf", b"outside the prefix")
        got = await store.get_prefix("/big/state/")
        assert got == want
        assert await store.get_prefix("/big/nothing/") == {}
    finally:
        await store.close()


async def test_a_store_answers_at_once_when_etcd_is_back_after_a_long_outage(
        etcd: EtcdCluster) -> None:
    """CI failure of test_cluster_budget_hold: after an 8 s outage, a lone shard stayed
    "unreachable" 3 s and more after etcd was back although each failure dials a fresh channel.
    gRPC shares connections (and their reconnect backoff, which grows to 120 s) between
    channels to one address, so while another channel there was still open -- here a second
    store, in the daemon the pair member of the test or any other client of the process -- the
    fresh channel waited out the old backoff. Each store's channel now has its own."""
    proxy_ip = "127.190.6.20"
    with TcpProxy((proxy_ip, 2379), (IP, 2379)) as proxy:
        ours = EtcdStore([f"http://{proxy_ip}:2379"], timeout_s=2.0)
        other = EtcdStore([f"http://{proxy_ip}:2379"], timeout_s=2.0)
        try:
            for store in (ours, other):
                await store.put("/outage/k", b"v")
            proxy.cut()
            ended = time.monotonic() + 12.0
            while time.monotonic() < ended:  # both fail through the outage; backoffs grow
                for store in (ours, other):
                    with pytest.raises(EtcdUnavailable):
                        await store.get("/outage/k")
                await asyncio.sleep(0.5)
            # another channel to the address is open, as a second client's would be
            await other._connected()
            proxy.restore()
            back_at = time.monotonic()
            while True:
                try:
                    got = await ours.get("/outage/k")
                    break
                except EtcdUnavailable:
                    # (shared, the backoff had grown to ~6.5 s: the next dial came ~4 s late)
                    assert time.monotonic() - back_at < 2.0, "still unreachable 2 s after etcd"
                    await asyncio.sleep(0.1)
            assert got is not None and got.value == b"v"
        finally:
            await ours.close()
            await other.close()
