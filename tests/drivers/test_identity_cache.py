"""Warm start (issue 19, drivers/identity_cache.py): a restart polls at once, no discovery.

Against the real emulator, one machine per firmware family: the first driver discovers and
writes identities.json; a second driver (a restart) builds every miner object from it, makes
no discovery request, and reads the same machines; a stale identity (the address now holds
another firmware) fails its polls and is re-discovered in the background; what discovery reads
besides is owed, read in later sweeps or before a command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path

import pyasic
import pytest
from pyasic.miners.base import MinerProtocol
from pyasic.miners.data import DataOptions

from curtaild.controller.config import FleetConfig
from curtaild.drivers import miners as miners_module
from curtaild.drivers.credentials_config import CredentialsConfig
from curtaild.drivers.identity_cache import CACHE_FILE, IdentityCache
from curtaild.drivers.miners import SETTLE_SWEEPS, CommandFailed, MinerDriver
from tests.support.driving import cmd
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
    warm = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path),
                       defer_reads=True)
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
        await asyncio.sleep(0.5)
    assert snap[IPS[0]] == truth[IPS[0]]
    assert IPS[0] in calls  # re-discovered in the background after failing its polls
    saved = json.loads(path.read_text())["miners"]
    assert saved[IPS[0]]["class"] != saved[IPS[1]]["class"]  # corrected in the cache


async def test_the_owed_reads_follow_the_first_sweep_bounded_like_discovery(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking a cached miner owes a few reads (LuxOS: its profiles and ATM). A warm start of
    10,000 began all of them at once, outside every pool: thousands of connections and a loop
    too busy for etcd's deadline (bench/failover.py); done in the first sweep, they made it
    cost four steady ones (bench/warm_start.py). None is made in the first sweep; they follow,
    a SETTLE_SWEEPS-th of the fleet a sweep, bounded by discovery_concurrency."""
    from curtaild.drivers import luxos

    ips = [f"127.192.1.{i}" for i in range(1, 25)]
    fleet = '[[miner]]\nmodel = "S19j Pro LuxOS"\ncount = 24\n'
    cfg = FleetConfig(hosts=ips, poll_timeout_s=5.0, discovery_timeout_s=8.0,
                      discovery_concurrency=2)
    path = tmp_path / CACHE_FILE
    with EmulatorProcess(fleet_toml=fleet, first_ip=ips[0], time_scale=0.01):
        cold = MinerDriver(cfg, poll_interval_s=5.0, identities=IdentityCache(path))
        assert {r.state for r in (await cold.observe()).miners} == {"mining"}
        in_flight, peak, reads = 0, 0, 0
        real = luxos.atm_enabled

        async def counted(rpc):  # type: ignore[no-untyped-def]
            nonlocal in_flight, peak, reads
            in_flight += 1
            reads += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(0.05)  # long enough for the reads of a sweep to overlap
                return await real(rpc)
            finally:
                in_flight -= 1

        monkeypatch.setattr(luxos, "atm_enabled", counted)
        warm = MinerDriver(cfg, poll_interval_s=5.0, identities=IdentityCache(path),
                           defer_reads=True)
        snap = await warm.observe()
        assert warm.identities is not None and warm.identities.hits == len(ips)
        assert {r.state for r in snap.miners} == {"mining"} and len(snap.miners) == len(ips)
        assert reads == 0
        owed = [sum(t.settle_due for t in warm._tracked.values())]
        while owed[-1] and len(owed) <= SETTLE_SWEEPS + 1:
            snap = await warm.observe()
            assert {r.state for r in snap.miners} == {"mining"}
            owed.append(sum(t.settle_due for t in warm._tracked.values()))
    share = math.ceil(len(ips) / SETTLE_SWEEPS)
    assert owed == list(range(len(ips), -1, -share)), owed
    assert reads == len(ips)
    assert 1 <= peak <= 2, peak


async def test_the_first_warm_sweep_is_a_known_machines_poll(
        emu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAC, serial and LuxOS profiles come from the file: no credential probe, no profile or
    ATM read, no identity read in the first sweep, and the same readings (keys, power-limit
    range) as before the restart. Every owed read is made within SETTLE_SWEEPS sweeps."""
    from curtaild.drivers import credentials as creds
    from curtaild.drivers import luxos

    path = tmp_path / CACHE_FILE
    cold = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path))
    await cold.observe()
    before = {r.ip: r for r in (await cold.observe()).miners}
    saved = json.loads(path.read_text())["miners"]
    assert saved[IPS[3]]["presets_w"] and "presets_w" not in saved[IPS[0]]
    calls: list[tuple[str, str]] = []
    real_probe, real_atm = creds.probe, luxos.atm_enabled
    real_presets, real_get_data = MinerDriver._read_presets, MinerProtocol.get_data

    async def probe(miner, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(("probe", str(miner.ip)))
        return await real_probe(miner, *a, **kw)

    async def atm(rpc):  # type: ignore[no-untyped-def]
        calls.append(("atm", str(rpc.ip)))
        return await real_atm(rpc)

    async def presets(self, t, miner):  # type: ignore[no-untyped-def]
        calls.append(("presets", t.ip))
        return await real_presets(self, t, miner)

    async def get_data(self, *a, include=None, **kw):  # type: ignore[no-untyped-def]
        if include and DataOptions.MAC in include:
            calls.append(("identity", str(self.ip)))
        return await real_get_data(self, *a, include=include, **kw)

    monkeypatch.setattr(creds, "probe", probe)
    monkeypatch.setattr(luxos, "atm_enabled", atm)
    monkeypatch.setattr(MinerDriver, "_read_presets", presets)
    monkeypatch.setattr(MinerProtocol, "get_data", get_data)
    warm = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path),
                       defer_reads=True)
    got = {r.ip: r for r in (await warm.observe()).miners}
    assert calls == []
    for ip, r in before.items():
        assert (got[ip].key, got[ip].min_power_limit_w, got[ip].max_power_limit_w,
                got[ip].state, got[ip].error) == (r.key, r.min_power_limit_w,
                                                  r.max_power_limit_w, r.state, None), ip
    for _ in range(math.ceil(len(IPS) / math.ceil(len(IPS) / SETTLE_SWEEPS))):
        got = {r.ip: r for r in (await warm.observe()).miners}
    assert not any(t.settle_due or t.identity_check for t in warm._tracked.values())
    probed = {ip for ip, t in warm._tracked.items() if creds.has_probe(t.miner, t.family)}
    assert {ip for kind, ip in calls if kind == "probe"} == probed and probed
    luxos_ips = [IPS[2], IPS[3]]  # the S19 XP and S19j Pro run LuxOS
    assert sorted(ip for ip, t in warm._tracked.items() if t.family == "luxos") == luxos_ips
    for kind in ("presets", "atm"):
        assert sorted(ip for k, ip in calls if k == kind) == luxos_ips
    assert {r.key for r in got.values()} == {r.key for r in before.values()}


async def test_another_machine_at_a_cached_address_is_found_by_its_mac(
        emu, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The file's MAC is taken on trust for the first sweep only: the owed identity read finds
    the machine that answers now, which is then another key."""
    path = tmp_path / CACHE_FILE
    cold = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path))
    await cold.observe()
    truth = _view(await cold.observe())
    data = json.loads(path.read_text())
    data["miners"][IPS[0]]["mac"] = "02:EC:00:00:00:99"  # the machine that was here
    path.write_text(json.dumps(data))
    warm = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path),
                       defer_reads=True)
    assert _view(await warm.observe())[IPS[0]][0] == "02:EC:00:00:00:99"
    for _ in range(len(IPS)):
        view = _view(await warm.observe())
    assert view == truth
    assert "another machine answers at this address (MAC 02:EC:7F:C0:00:01" in caplog.text
    assert json.loads(path.read_text())["miners"][IPS[0]]["mac"] == "02:EC:7F:C0:00:01"


async def test_a_command_before_the_owed_reads_probes_the_credentials_first(
        emu, tmp_path: Path) -> None:
    """pyasic believes a stock Antminer's sleep sent with a wrong password: a machine built
    from the file whose credential probe is still owed is probed before anything is sent."""
    path = tmp_path / CACHE_FILE
    cold = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path))
    await cold.observe()
    (tmp_path / "ant").write_text("not-its-password\n")
    cfg = _cfg().model_copy(update={"credentials": CredentialsConfig.model_validate(
        {"antminer": {"password_file": str(tmp_path / "ant")}})})
    warm = MinerDriver(cfg, poll_interval_s=5.0, identities=IdentityCache(path),
                       defer_reads=True)
    first = {r.ip: r for r in (await warm.observe()).miners}
    assert first[IPS[0]].error is None and warm._tracked[IPS[0]].settle_due
    changes = list(emu.miner(IPS[0])["changes"])
    with pytest.raises(CommandFailed, match=r"^auth: .*HTTP 401"):
        await warm.execute(cmd(IPS[0], "sleep"), observed_state="mining", timeout_s=10,
                           attempts=2)
    assert emu.miner(IPS[0])["state"] == "mining" and emu.miner(IPS[0])["changes"] == changes
    r = {r.ip: r for r in (await warm.observe()).miners}[IPS[0]]
    assert r.error is not None and r.error.startswith("auth: ")


async def test_a_cached_miner_that_never_answers_stays_unreachable(
        emu, tmp_path: Path) -> None:
    """Past rediscover_after_failures its object is dropped for re-discovery; it was reported
    gone from then on (its metrics vanished) instead of unreachable."""
    path = tmp_path / CACHE_FILE
    cold = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path))
    await cold.observe()
    silent = "127.192.0.9"  # nothing answers there
    data = json.loads(path.read_text())
    # ... and the MAC of a machine that answers elsewhere (it moved): no second reading under
    # that key (a ghost that would shadow the live machine)
    data["miners"][silent] = {"class": data["miners"][IPS[0]]["class"],
                              "mac": data["miners"][IPS[0]]["mac"]}
    path.write_text(json.dumps(data))
    cfg = _cfg().model_copy(update={"hosts": [*IPS, silent]})
    warm = MinerDriver(cfg, poll_interval_s=5.0, identities=IdentityCache(path),
                       defer_reads=True)
    for sweep in range(2 * cfg.rediscover_after_failures + 1):
        got = {r.ip: r for r in (await warm.observe()).miners}
        assert silent in got and got[silent].state == "unreachable", sweep
        assert got[silent].key == silent and got[IPS[0]].key == "02:EC:7F:C0:00:01", sweep
    assert warm._tracked[silent].miner is None  # dropped for re-discovery all the same


class _Journal:
    """What the driver reads of the journal: ATM settings and the machines it holds rows for."""

    def __init__(self, owned: set[str]) -> None:
        self.owned, self.meta = owned, {}

    def get_meta(self, key: str) -> object | None:
        return self.meta.get(key)

    def set_meta(self, key: str, value: object) -> None:
        self.meta[key] = value

    def owned_keys(self) -> set[str]:
        return set(self.owned)


async def _cold_cache(path: Path) -> None:
    """identities.json as a first start writes it (MAC and serial from the second sweep)."""
    cold = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path))
    await cold.observe()
    await cold.observe()


def _edit(path: Path, ip: str, **entry: object) -> None:
    data = json.loads(path.read_text())
    data["miners"][ip].update(entry)
    path.write_text(json.dumps(data))


async def test_a_machine_the_journal_holds_is_read_in_the_first_sweep(
        emu, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Review of the warm start: A (slept by curtaild) and B swapped addresses while curtaild
    was down; taken on the file's word, B would be judged as A (A's sleep "not in effect":
    re-commanded; or, the margin back, A released) and A, read under B's key, left asleep as
    the operator's. The machines the journal holds rows for are read in the first sweep."""
    path = tmp_path / CACHE_FILE
    await _cold_cache(path)
    _edit(path, IPS[0], mac="02:EC:00:00:00:99")  # A was here; another S19 answers now
    warm = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path),
                       defer_reads=True)
    warm.attach_journal(_Journal({"02:EC:00:00:00:99"}))
    got = _view(await warm.observe())
    assert got[IPS[0]][0] == "02:EC:7F:C0:00:01"
    assert "02:EC:00:00:00:99" not in {v[0] for v in got.values()}
    assert "another machine answers at this address (MAC 02:EC:7F:C0:00:01" in caplog.text


async def test_a_command_to_a_machine_that_is_not_the_cached_one_is_not_sent(
        emu, tmp_path: Path) -> None:
    """Decided under the cached MAC, a command is sent only once the machine at the address
    has said it is that MAC: another machine there is not commanded in its place."""
    path = tmp_path / CACHE_FILE
    await _cold_cache(path)
    _edit(path, IPS[0], mac="02:EC:00:00:00:99")
    warm = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path),
                       defer_reads=True)
    first = {r.ip: r for r in (await warm.observe()).miners}
    assert first[IPS[0]].key == "02:EC:00:00:00:99"  # not in the journal: taken on trust
    changes = list(emu.miner(IPS[0])["changes"])
    command = cmd(IPS[0], "sleep")
    with pytest.raises(CommandFailed, match=r"another machine answers at 127\.192\.0\.1"):
        await warm.execute(dataclasses.replace(command, key="02:EC:00:00:00:99"),
                           observed_state="mining", timeout_s=10, attempts=2)
    assert emu.miner(IPS[0])["changes"] == changes and emu.miner(IPS[0])["state"] == "mining"
    assert _view(await warm.observe())[IPS[0]][0] == "02:EC:7F:C0:00:01"


async def test_a_machine_that_moved_leaves_no_duplicate_key(
        emu, tmp_path: Path) -> None:
    """The file says the Whatsminer's MAC is at the S19's address (it moved): once the
    Whatsminer is read under its MAC at its own address, the S19's address drops the stale
    identity (keyed by its address until read) instead of a second reading under that key."""
    path = tmp_path / CACHE_FILE
    await _cold_cache(path)
    wm_mac = json.loads(path.read_text())["miners"][IPS[1]]["mac"]
    _edit(path, IPS[0], mac=wm_mac, serial=None)
    _edit(path, IPS[1], mac=None, serial=None)  # read in the first sweep (nothing cached)
    warm = MinerDriver(_cfg(), poll_interval_s=5.0, identities=IdentityCache(path),
                       defer_reads=True)
    got = _view(await warm.observe())
    keys = [v[0] for v in got.values()]
    assert len(keys) == len(set(keys)), got
    assert got[IPS[1]][0] == wm_mac and got[IPS[0]][0] == IPS[0]
    assert json.loads(path.read_text())["miners"][IPS[0]]["mac"] is None
    assert _view(await warm.observe())[IPS[0]][0] == "02:EC:7F:C0:00:01"


def test_profile_watts_from_the_file_are_bounded(tmp_path: Path) -> None:
    """A hand-edited file must not put an absurd floor or ceiling under the guards."""
    cache = IdentityCache(tmp_path / CACHE_FILE)
    cache.entries["127.192.9.1"] = {"class": "x"}
    for bad in ([1e300], [float("nan")], [0.0], [-5.0], [True], ["900"], [900.0] * 65, "x"):
        cache.entries["127.192.9.1"]["presets_w"] = bad
        assert cache.cached_presets("127.192.9.1") == (), bad
    cache.entries["127.192.9.1"]["presets_w"] = [1200, 900.0, 1200.0]
    assert cache.cached_presets("127.192.9.1") == (900.0, 1200.0)
