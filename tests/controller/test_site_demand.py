"""controller/site_demand.py, pure parts: a sharded site's demand-response target (the tighter
of the site cap and the site event), its division across shards, its rows as etcd keys, the
budget a shard holds during an event, the site record, the site metrics, and the MQTT bridge's
routing of site commands (no broker). The etcd round trips are in
tests/controller/test_site_demand_etcd.py."""

from __future__ import annotations

import json
import time

import pytest

from curtaild.controller.cluster import ClusterMember
from curtaild.controller.cluster_config import ClusterConfig
from curtaild.controller.directives import DirectiveStore, Limits, Response
from curtaild.controller.journal import Journal
from curtaild.controller.metrics import (
    ClusterMetrics,
    MetricsState,
    live_families,
    render_text,
    site_metrics,
)
from curtaild.controller.mqtt import MqttBridge, SiteCommands
from curtaild.controller.mqtt_config import MqttConfig
from curtaild.controller.site_allocator import Summary, allocate
from curtaild.controller.site_demand import (
    changes,
    load,
    rows_of,
    site_root,
    site_state,
    site_target,
)
from curtaild.core.snapshot import Directives

PREFIX = "/curtaild/big/_allocation/dr/"
NOW = 1_900_000_000.0
# Shard A: 3000 W at 0.4 USD/day per W... margins per watt: A has the best and a bad block,
# B has a middling one and the worst.
SUMMARIES = {
    "A": Summary(power_w=9000.0, base_w=200.0, blocks=((3000.0, 30.0), (3000.0, 6.0))),
    "B": Summary(power_w=6000.0, base_w=100.0, blocks=((3000.0, 15.0), (3000.0, 3.0))),
}
CAP_W = 20000.0


def _event(store: DirectiveStore, target_w: float, end: float, ident: str = "dr-1") -> None:
    end_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end))
    resp = store.handle("curtail", json.dumps({"id": ident, "target_power_w": target_w,
                                               "end": end_iso}).encode(), NOW)
    assert resp is not None and resp.status == "accepted", resp


def test_the_tighter_of_the_site_cap_and_the_site_event_wins() -> None:
    assert site_target(CAP_W, Directives()).target_w == CAP_W
    assert site_target(CAP_W, Directives()).source == "site cap"
    low = site_target(CAP_W, Directives(power_cap_w=8000.0, power_cap_event_id="dr-1",
                                        power_cap_until=NOW + 60))
    assert (low.target_w, low.source, low.until) == (8000.0, "site event dr-1", NOW + 60)
    high = site_target(CAP_W, Directives(power_cap_w=25000.0, power_cap_event_id="dr-2"))
    assert (high.target_w, high.source, high.until) == (CAP_W, "site cap", None)
    assert low.key != site_target(CAP_W, Directives()).key


def test_a_site_event_is_divided_worst_watts_first_and_its_end_restores_the_cap() -> None:
    store = DirectiveStore(Limits())
    _event(store, 6300.0, NOW + 600)
    target = site_target(CAP_W, store.directives(NOW + 1))
    assert target.target_w == 6300.0
    budgets = allocate(target.target_w, SUMMARIES)
    assert sum(budgets.values()) == pytest.approx(6300.0)
    # base 300 W, then the best block (A, 0.01 USD/W) takes the remaining 6000 W... of which
    # 3000 W fit; the next best (B's first, 0.005) the other 3000: A's and B's worst shed
    assert budgets == {"A": pytest.approx(3200.0), "B": pytest.approx(3100.0)}
    after = site_target(CAP_W, store.directives(NOW + 601))
    assert (after.target_w, after.source) == (CAP_W, "site cap")
    assert allocate(after.target_w, SUMMARIES) == {"A": 6200.0, "B": 6100.0}


def test_site_rows_round_trip_through_etcd_keys_and_a_retry_is_a_duplicate() -> None:
    store = DirectiveStore(Limits())
    _event(store, 6300.0, NOW + 600, ident="ercot-4cp")
    puts, deletes = changes(store.take_pending(), PREFIX)
    assert not deletes
    assert set(puts) == {PREFIX + "event/ercot-4cp", PREFIX + "seen/curtail%20ercot-4cp"}
    again = load(puts, PREFIX, Limits(), NOW + 5)
    assert again.directives(NOW + 5).power_cap_w == 6300.0
    retry = again.handle("curtail", json.dumps({"id": "ercot-4cp", "target_power_w": 1e3})
                         .encode(), NOW + 5)
    assert retry is not None and retry.duplicate and retry.status == "accepted"
    assert again.directives(NOW + 5).power_cap_w == 6300.0  # not replaced
    cancel = again.handle("curtail/cancel", b'{"id": "ercot-4cp"}', NOW + 6)
    assert cancel is not None and cancel.status == "accepted"
    puts2, deletes2 = changes(again.take_pending(), PREFIX)
    assert deletes2 == [PREFIX + "event/ercot-4cp"]
    assert json.loads(puts2[PREFIX + "seen/curtail%20ercot-4cp"])[0] == "expired"
    assert rows_of({PREFIX + "seen/curtail%20x": b"[]"}, PREFIX) == [("seen", "curtail x", "[]")]


def _member(**kw: object) -> ClusterMember:
    cfg = ClusterConfig(endpoints=["http://127.190.5.1:2379"], site_id="big", instance_id="a",
                        shard="A", site_power_cap_w=10000.0, safe_budget_w=5000.0,
                        budget_hold_s=60.0, **kw)  # type: ignore[arg-type]
    return ClusterMember(cfg, Journal(None))


def test_a_budget_made_for_a_site_event_is_held_to_its_end_then_the_safe_budget() -> None:
    m = _member()
    now = time.time()
    # the allocator's record for a site event: 3000 W for this shard until the event's end
    from curtaild.controller.site_demand import take_budget

    take_budget(m, {"budget_w": 3000.0, "at": now - 61, "target_w": 6000.0,
                    "target": "site event dr-1", "until": now + 300})
    budget, source = m.budget_in_force()
    # the safe budget (5000 W) would be above this shard's share of the event
    assert budget == 3000.0 and source.startswith("held budget (site event until "), source
    take_budget(m, {"budget_w": 3000.0, "at": now - 61, "target_w": 6000.0,
                    "target": "site event dr-1", "until": now - 1})
    assert m.budget_in_force()[0] == 5000.0  # the event is over: the safe budget
    take_budget(m, {"budget_w": 7000.0, "at": now - 61, "target_w": 10000.0,
                    "target": "site cap", "until": None})
    assert m.budget_in_force()[0] == 5000.0


def test_a_new_site_target_wakes_the_loop_and_a_new_budget_alone_does_not() -> None:
    m = _member()
    woken: list[int] = []
    m.on_change = lambda: woken.append(1)
    from curtaild.controller.site_demand import take_budget

    base = {"at": time.time(), "target_w": 10000.0, "target": "site cap", "until": None}
    take_budget(m, {**base, "budget_w": 5000.0})
    take_budget(m, {**base, "budget_w": 5100.0})  # summaries moved: the next tick will do
    assert not woken and m.site.changed_mono == 0.0
    take_budget(m, {**base, "budget_w": 2000.0, "target_w": 4000.0,
                    "target": "site event dr-1"})
    assert woken == [1] and m.site.changed_mono > 0


def test_the_site_record_and_the_allocators_site_metrics() -> None:
    store = DirectiveStore(Limits())
    _event(store, 6300.0, NOW + 600)
    target = site_target(CAP_W, store.directives(NOW + 1))
    budgets = allocate(target.target_w, SUMMARIES)
    record = site_state(target=target, summaries=SUMMARIES, budgets=budgets,
                        view=store.view(NOW + 1), allocator="b1", now=NOW + 1)
    assert record["power_w"] == 15000.0 and record["target_w"] == 6300.0
    assert record["target"] == "site event dr-1" and record["active_event"]["id"] == "dr-1"
    assert record["shards"] == {"A": {"power_w": 9000.0, "budget_w": 3200.0},
                                "B": {"power_w": 6000.0, "budget_w": 3100.0}}
    base = dict(instance="b1", shard="B", leader=True, term=7, lease_deadline=0.0,
                etcd_up=True, takeovers=1, losses=0, budget_w=3100.0, allocator=True)
    text = _render(MetricsState(None, cluster=ClusterMetrics(**base, site=site_metrics(
        json.loads(json.dumps(record))))))
    assert "curtaild_cluster_site_power_watts 15000.0" in text
    assert "curtaild_cluster_site_target_watts 6300.0" in text
    assert "curtaild_cluster_site_demand_response_active 1.0" in text
    assert 'curtaild_cluster_site_budget_watts{shard="A"} 3200.0' in text
    assert 'curtaild_cluster_site_shard_power_watts{shard="B"} 6000.0' in text
    # an instance that does not allocate exports no site families (no copies to add up)
    other = _render(MetricsState(None, cluster=ClusterMetrics(**{**base, "allocator": False})))
    assert "curtaild_cluster_site_" not in other and "curtaild_cluster_budget_watts" in other


def _render(state: MetricsState) -> str:
    return render_text(live_families(state, time.time())).decode()


# ------------------------------------------------------------------- the bridge, no broker
SHARD_PREFIX = "curtaild/site1/hall-a"
ROOT = site_root(SHARD_PREFIX, "big")


def _bridge(seen: list[tuple[str, bytes, bool]], answer: Response, **cfg: object
            ) -> tuple[MqttBridge, list[str]]:
    config = MqttConfig(host="127.0.0.1", topic_prefix=SHARD_PREFIX, **cfg)  # type: ignore
    calls: list[str] = []

    async def handle(kind: str, body: bytes, retained: bool) -> Response:
        seen.append((kind, body, retained))
        return answer

    b = MqttBridge(config, DirectiveStore(Limits.from_config(config)),
                   wake=lambda: calls.append("wake"), site=SiteCommands(ROOT, handle))
    return b, calls


async def test_the_bridge_hands_site_commands_to_the_site_and_answers_them() -> None:
    seen: list[tuple[str, bytes, bool]] = []
    ok = Response("dr-1", "accepted", "site big: ...")
    b, calls = _bridge(seen, ok)
    assert ROOT == "curtaild/site1/hall-a/site/big"
    await b.handle_site_message(f"{ROOT}/cmd/curtail", b'{"id":"dr-1"}', retained=False)
    assert seen == [("curtail", b'{"id":"dr-1"}', False)]
    assert [(t, json.loads(p)) for t, p in b._responses] == [
        (f"{ROOT}/cmd/curtail/response", {"id": "dr-1", "status": "accepted",
                                          "reason": "site big: ..."})]
    assert calls == ["wake"] and b.commands == {("site/curtail", "accepted"): 1}
    # the shard's own store saw nothing: a site event is not this shard's event
    assert b.store.directives(time.time()).power_cap_w is None
    # its own answers are not commands
    await b.handle_site_message(f"{ROOT}/cmd/curtail/response", b"{}", retained=False)
    assert len(seen) == 1
    # the site record goes out retained on <root>/state
    b.publish_site({"target_w": 1.0})
    assert b._retained == {f"{ROOT}/state": b'{"target_w":1.0}'}
    assert b._kind(f"{ROOT}/state") == "site" and b._kind(f"{ROOT}/cmd/curtail/response") \
        == "response"


async def test_the_bridge_counts_rejected_site_commands_and_sheds_a_flood() -> None:
    seen: list[tuple[str, bytes, bool]] = []
    bad = Response(None, "rejected", "target_power_w: required, the site power to stay under, W")
    b, calls = _bridge(seen, bad, busy_backlog=10)
    await b.handle_site_message(f"{ROOT}/cmd/curtail", b'{"id":"x"}', retained=False)
    assert b.commands == {("site/curtail", "rejected"): 1} and not calls
    await b.handle_site_message(f"{ROOT}/cmd/override", b"{}", retained=False)
    assert b.commands[("unknown", "rejected")] == 1  # the site's own answer, via the handler
    await b.handle_site_message(f"{ROOT}/cmd/curtail", b'{"id":"f-1"}', retained=False,
                                backlog=10)
    assert len(seen) == 2  # shed: no etcd request
    last = json.loads(b._responses[-1][1])
    assert last["id"] == "f-1" and last["reason"].startswith("busy: ")
    assert b.commands[("site/curtail", "busy")] == 1


def test_the_site_families_fit_a_full_scrape_with_the_instances_own_families() -> None:
    """The allocator's exposition also carries its own fleet's curtaild_site_* families: no
    family may appear twice (a duplicate is an invalid exposition), and promtool accepts it."""
    from tests.controller.test_metrics import exposition, state
    from tests.support.prometheus import promtool

    record = {"power_w": 15000.0, "target_w": 6300.0, "target": "site event dr-1",
              "shards": {"A": {"power_w": 9000.0, "budget_w": 3200.0},
                         "B": {"power_w": 6000.0, "budget_w": 3100.0}}}
    cluster = ClusterMetrics(instance="b1", shard="B", leader=True, term=7, lease_deadline=0.0,
                             etcd_up=True, takeovers=1, losses=0, budget_w=3100.0,
                             allocator=True, site=site_metrics(record))
    text = exposition(state(cluster=cluster)).decode()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    assert "curtaild_site_power_watts" in types and "curtaild_cluster_site_power_watts" in types
    checked = promtool("check", "metrics", stdin=text.encode())
    assert checked.returncode == 0, checked.stdout + checked.stderr
