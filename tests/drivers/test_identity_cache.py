"""Warm start (issue 19, drivers/identity_cache.py): a restart polls at once, no discovery.

Against the real emulator, one machine per firmware family: the first driver discovers and
writes identities.json; a second driver (a restart) builds every miner object from it, makes
no discovery request, and reads the same machines; a stale identity (the address now holds
another firmware) fails its polls and is re-discovered in the background.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyasic
import pytest

from curtaild.controller.config import FleetConfig
from curtaild.drivers import miners as miners_module
from curtaild.drivers.identity_cache import CACHE_FILE, IdentityCache
from curtaild.drivers.miners import MinerDriver
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration

FLEET = """
[[miner]]
model = "S19"
[[miner]]
model = "M30S"
[[miner]]
model = "S19 XP"
[[miner]]
model = "S19j Pro LuxOS"
[[miner]]
model = "BitAxe Gamma"
"""
FIRST = "127.192.0.1"
IPS = [f"127.192.0.{i}" for i in range(1, 6)]


def _cfg() -> FleetConfig:
    return FleetConfig(hosts=IPS, poll_timeout_s=5.0, discovery_timeout_s=8.0,
                       rediscover_after_failures=2)


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as e:
        yield e


def _counting_get_miner(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = pyasic.get_miner

    async def counted(ip, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(str(ip))
        return await real(ip, *a, **kw)

    monkeypatch.setattr(miners_module.pyasic, "get_miner", counted)
    return calls


def _view(snapshot) -> dict:  # type: ignore[no-untyped-def]
    return {r.ip: (r.key, r.make, r.model, r.firmware, r.state) for r in snapshot.miners}


async def test_restart_reads_every_miner_without_discovery(
        emu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_get_miner(monkeypatch)
    path = tmp_path / CACHE_FILE
    cold = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path))
    first = _view(await cold.observe())
    assert sorted(calls) == sorted(IPS)
    first = _view(await cold.observe())  # MAC/serial known from the polls
    saved = json.loads(path.read_text())
    assert set(saved["miners"]) == set(IPS)
    assert saved["miners"][IPS[1]]["class"] == "WHATSMINER/M30SV10"
    assert path.stat().st_mode & 0o777 == 0o600
    calls.clear()
    warm = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path))
    assert _view(await warm.observe()) == first
    assert calls == [] and warm.identities is not None and warm.identities.hits == len(IPS)


async def test_stale_identity_is_rediscovered(emu, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / CACHE_FILE
    d = MinerDriver(_cfg(), poll_interval_s=1.0, identities=IdentityCache(path))
    truth = _view(await d.observe())
    data = json.loads(path.read_text())
    # the S19's address "now holds" a Whatsminer: the cached class is the M30S's
    data["miners"][IPS[0]] = dict(data["miners"][IPS[1]])
    data["miners"][IPS[2]] = {"class": "os:system"}  # not in pyasic's table: never built
    path.write_text(json.dumps(data))
    calls = _counting_get_miner(monkeypatch)
    d2 = MinerDriver(_cfg(), poll_interval_s=1.0, identities=IdentityCache(path))
    snap = _view(await d2.observe())
    assert IPS[2] in calls  # the refused class: discovered inline
    assert snap[IPS[2]] == truth[IPS[2]]
    assert IPS[0] not in calls
    for _ in range(10):
        snap = _view(await d2.observe())
        if snap.get(IPS[0]) == truth[IPS[0]]:
            break
        import asyncio

        await asyncio.sleep(0.5)
    assert snap[IPS[0]] == truth[IPS[0]]
    assert IPS[0] in calls  # re-discovered in the background after failing its polls
    saved = json.loads(path.read_text())["miners"]
    assert saved[IPS[0]]["class"] != saved[IPS[1]]["class"]  # corrected in the cache


async def test_warm_start_bounds_the_first_reads_like_discovery(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking a cached miner reads a few things first (LuxOS: its profiles and ATM). A warm
    start of 10,000 began all of them at once, outside every pool: thousands of connections
    and a loop too busy for etcd's deadline (bench/failover.py). They are bounded by
    discovery_concurrency, as discovery is."""
    from curtaild.drivers import luxos

    ips = [f"127.192.1.{i}" for i in range(1, 25)]
    fleet = '[[miner]]\nmodel = "S19j Pro LuxOS"\ncount = 24\n'
    cfg = FleetConfig(hosts=ips, poll_timeout_s=5.0, discovery_timeout_s=8.0,
                      discovery_concurrency=3)
    path = tmp_path / CACHE_FILE
    with EmulatorProcess(fleet_toml=fleet, first_ip=ips[0], time_scale=0.01):
        cold = MinerDriver(cfg, poll_interval_s=5.0, identities=IdentityCache(path))
        assert {r.state for r in (await cold.observe()).miners} == {"mining"}
        in_flight, peak = 0, 0
        real = luxos.atm_enabled

        async def counted(rpc):  # type: ignore[no-untyped-def]
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await real(rpc)
            finally:
                in_flight -= 1

        monkeypatch.setattr(luxos, "atm_enabled", counted)
        warm = MinerDriver(cfg, poll_interval_s=5.0, identities=IdentityCache(path))
        snap = await warm.observe()
    assert warm.identities is not None and warm.identities.hits == len(ips)
    assert {r.state for r in snap.miners} == {"mining"} and len(snap.miners) == len(ips)
    assert 1 <= peak <= 3, peak
