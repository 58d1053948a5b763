"""controller/site_demand.py against a real etcd (one member on loopback): a site command taken
by one shard's leader is validated like every MQTT command, saved in etcd (nothing saved for
a bad one), seen as a duplicate by another shard, divided by the allocator as the tighter of
cap and target, and its cancel restores the cap. Steps are run by hand, as in
tests/controller/test_cluster_member.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from curtaild.controller import site_demand
from curtaild.controller.cluster import ClusterMember
from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.directives import Limits
from curtaild.controller.journal import Journal
from curtaild.controller.site_allocator import Summary
from tests.support.etcd import EtcdCluster

pytestmark = [pytest.mark.integration]
IP = "127.190.7.1"
CAP_W = 20000.0
LIMITS = Limits(min_target_power_w=100.0)


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster([IP]) as cluster:
        yield cluster


_sites = iter(range(1000))


async def _shards(etcd: EtcdCluster, tmp_path: Path, n: int = 2) -> list[ClusterMember]:
    """One leader per shard (A, B, ...) of a fresh site, each resumed (may command)."""
    site = f"dr{next(_sites)}"
    out = []
    for i in range(n):
        shard = "AB"[i]
        cfg = ClusterConfig(endpoints=etcd.endpoints, site_id=site, instance_id=f"{shard}1",
                            shard=shard, lease_ttl_s=5, site_power_cap_w=CAP_W,
                            safe_budget_w=CAP_W / n)
        m = ClusterMember(cfg, Journal(tmp_path / f"{shard}1"))
        await m.step()
        await m.resume()
        assert m.may_command() and m.role == "leader"
        out.append(m)
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _send(m: ClusterMember, kind: str, payload: object, *, retained: bool = False):  # type: ignore[no-untyped-def]
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await site_demand.handle_command(m, kind, body, time.time(), retained=retained,
                                            limits=LIMITS)


async def test_malformed_site_commands_are_rejected_naming_the_field_and_save_nothing(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    a, _b = await _shards(etcd, tmp_path)
    prefix = a.config.site_scope + "dr/"
    cases = [
        ("curtail", {"id": "x1"}, "target_power_w: required"),
        ("curtail", {"id": "x2", "target_power_w": 5.0}, "target_power_w: 5 W is below "
         "min_target_power_w (100 W)"),
        ("curtail", {"id": "x3", "target_power_w": 5e3, "stop": "now"}, "unknown field 'stop'"),
        ("curtail", {"id": "x4", "target_power_w": "5e3"}, "target_power_w: expected a finite"),
        ("curtail", {"id": "x5", "target_power_w": 5e3, "end": "2030-01-01T00:00:00"},
         "end: '2030-01-01T00:00:00' has no UTC offset"),
        ("curtail", b"not json", "payload is not UTF-8 JSON"),
        ("curtail", {"target_power_w": 5e3}, "id: required"),
        ("curtail/cancel", {"id": "nope"}, "no active or scheduled event 'nope'"),
        ("override", {"id": "o1", "miner": "AA", "action": "sleep"},
         "unknown site command topic 'override'"),
    ]
    for kind, payload, why in cases:
        resp = await _send(a, kind, payload)
        assert resp.status == "rejected" and why in resp.reason, (payload, resp)
    retained = await _send(a, "curtail", {"id": "x6", "target_power_w": 5e3}, retained=True)
    assert retained.status == "rejected" and "retained" in retained.reason
    assert etcd.get_prefix(prefix) == {}  # nothing saved
    for m in (a, _b):
        await m.stop()


async def test_a_site_event_taken_by_one_shard_is_divided_and_its_cancel_restores_the_cap(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    a, b = await _shards(etcd, tmp_path)
    scope = a.config.site_scope
    # shard summaries (as their leaders publish after a tick): A holds the best and a bad
    # block, B a middling one and the worst
    summaries = {"A": Summary(9000.0, 200.0, ((3000.0, 30.0), (3000.0, 6.0))),
                 "B": Summary(6000.0, 100.0, ((3000.0, 15.0), (3000.0, 3.0)))}
    for m, name in ((a, "A"), (b, "B")):
        await m.share_site(summaries[name].as_json())
    allocator = a if a.allocator else b
    assert a.allocator != b.allocator  # one allocator for the site
    await allocator.share_site(None)
    for m in (a, b):
        await m.share_site(None)
    assert a.budget_in_force() == (6200.0, "site budget")  # the cap does not bind
    end = time.time() + 600
    resp = await _send(a, "curtail", {"id": "dr-1", "target_power_w": 6300, "end": _iso(end)})
    assert resp.status == "accepted", resp
    assert resp.reason.startswith(f"site {a.config.site_id}: site power capped at 6300 W now")
    assert set(etcd.get_prefix(scope + "dr/")) == {scope + "dr/event/dr-1",
                                                   scope + "dr/seen/curtail%20dr-1"}
    # the same id sent to the other shard's bridge (an EMS retrying elsewhere): a duplicate
    again = await _send(b, "curtail", {"id": "dr-1", "target_power_w": 100})
    assert again.status == "accepted" and again.duplicate
    assert again.reason.startswith("duplicate: site power capped at 6300 W")
    # the allocator notices the new target at its next step and wakes its loop
    woken: list[int] = []
    allocator.on_change = lambda: woken.append(1)
    await site_demand.watch(allocator)
    assert woken == [1]
    await allocator.share_site(None)
    for m in (a, b):
        await m.share_site(None)
    # the worst watts of the site are shed: A's bad block and B's worst
    assert a.budget_in_force() == (3200.0, "site budget")
    assert b.budget_in_force() == (3100.0, "site budget")
    assert a.site.budget_until == pytest.approx(end, abs=1)
    record = await site_demand.read_state(b if allocator is a else a)
    assert record is not None and record["target"] == "site event dr-1"
    assert record["target_w"] == 6300.0 and record["power_w"] == 15000.0
    assert record["shards"]["A"]["budget_w"] == 3200.0
    # a cancel through shard B ends it; the cap is divided again
    cancel = await _send(b, "curtail/cancel", {"id": "dr-1"})
    assert cancel.status == "accepted", cancel
    assert scope + "dr/event/dr-1" not in etcd.get_prefix(scope + "dr/")
    await allocator.share_site(None)
    for m in (a, b):
        await m.share_site(None)
    assert (a.budget_in_force()[0], b.budget_in_force()[0]) == (6200.0, 6100.0)
    late = await _send(a, "curtail", {"id": "dr-1", "target_power_w": 6300})
    assert late.status == "expired" and "cancelled" in late.reason
    for m in (a, b):
        await m.stop()


async def test_a_standby_or_a_deposed_leader_saves_no_site_command(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    a, _b = await _shards(etcd, tmp_path)
    scope = a.config.site_scope
    await a.store.revoke(a.lease_id)  # its lease gone behind its back: the key is gone
    a.deadline = time.monotonic() + 60  # it has not noticed yet
    resp = await _send(a, "curtail", {"id": "dr-9", "target_power_w": 6300})
    assert resp.status == "rejected" and resp.reason.startswith("not saved: this instance no "
                                                                "longer leads")
    assert a.role == "standby"
    assert etcd.get_prefix(scope + "dr/") == {}
    again = await _send(a, "curtail", {"id": "dr-9", "target_power_w": 6300})
    assert again.status == "rejected" and "does not lead its shard" in again.reason
    for m in (a, _b):
        await m.stop()
