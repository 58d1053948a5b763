"""drivers/etcd.py against a real etcd (one member on loopback): reads that outgrow one gRPC
message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from curtaild.drivers.etcd import EtcdStore
from tests.support.etcd import EtcdCluster

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
