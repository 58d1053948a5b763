"""The directive store (pure): validation, event timing, duplicates, overrides, pause,
watchdog, persistence."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curtaild.controller.directives import DirectiveStore, Limits
from tests.support.directives import T0, cmd, iso, store


def test_event_now_caps_until_end_then_releases():
    s = store()
    r = s.handle("curtail", cmd(id="e1", target_power_w=5000, end=iso(T0 + 600)), T0)
    assert (r.id, r.status) == ("e1", "accepted")
    d = s.directives(T0 + 1)
    assert (d.power_cap_w, d.power_cap_event_id, d.power_cap_until) == (5000.0, "e1", T0 + 600)
    assert s.directives(T0 + 599.9).power_cap_w == 5000.0
    assert s.directives(T0 + 600).power_cap_w is None
    assert s.take_released() == [("e1", "ended")]
    assert s.events == {}


def test_future_start_waits():
    s = store()
    s.handle("curtail", cmd(id="e1", target_power_w=1e4, start=iso(T0 + 60),
                            end=iso(T0 + 120)), T0)
    assert s.directives(T0 + 59).power_cap_w is None
    assert s.view(T0 + 59)["scheduled_events"][0]["id"] == "e1"
    assert s.directives(T0 + 60).power_cap_w == 1e4


def test_lowest_target_wins_while_overlapping():
    s = store()
    s.handle("curtail", cmd(id="a", target_power_w=8000, end=iso(T0 + 300)), T0)
    s.handle("curtail", cmd(id="b", target_power_w=3000, start=iso(T0 + 100),
                            end=iso(T0 + 200)), T0)
    assert s.directives(T0 + 50).power_cap_event_id == "a"
    assert s.directives(T0 + 150).power_cap_event_id == "b"
    assert s.directives(T0 + 250).power_cap_event_id == "a"


def test_expired_and_no_end_and_limits():
    s = store(max_target_power_w=1e6, max_event_duration_s=3600, max_event_lead_s=60)
    assert s.handle("curtail", cmd(id="x", target_power_w=1, end=iso(T0 - 1)), T0).status \
        == "expired"
    r = s.handle("curtail", cmd(id="y", target_power_w=100), T0)
    assert r.status == "accepted" and s.events["y"].end == T0 + 3600
    bad = {
        "target 0": cmd(id="a", target_power_w=0),
        "target too big": cmd(id="a", target_power_w=2e6),
        "bool target": cmd(id="a", target_power_w=True),
        "string target": cmd(id="a", target_power_w="5000"),
        "start after end": cmd(id="a", target_power_w=1, start=iso(T0 + 20), end=iso(T0 + 10)),
        "too long": cmd(id="a", target_power_w=1, end=iso(T0 + 7200)),
        "too far ahead": cmd(id="a", target_power_w=1, start=iso(T0 + 120),
                             end=iso(T0 + 180)),
        "naive time": cmd(id="a", target_power_w=1, end="2030-01-01T00:00:00"),
        "unknown field": cmd(id="a", target_power_w=1, priority="high"),
    }
    for why, payload in bad.items():
        r = s.handle("curtail", payload, T0)
        assert (r.status, r.id) == ("rejected", "a"), why
    assert set(s.events) == {"y"}


def test_malformed_payloads_are_rejected_with_a_reason():
    s = store(max_payload_bytes=300)
    for payload, reason in [(b"\xff\xfe", "not UTF-8 JSON"), (b"{", "not UTF-8 JSON"),
                            (b"[1]", "JSON object"), (b"{}", "id: required"),
                            (b"x" * 301, "exceeds max_payload_bytes"),
                            (cmd(id="has space", target_power_w=1), "id:")]:
        r = s.handle("curtail", payload, T0)
        assert r.status == "rejected" and reason in r.reason
        assert r.id is None
    assert s.handle("nope", b"{}", T0).status == "rejected"
    assert s.handle("curtail", cmd(id="r", target_power_w=1), T0, retained=True).status \
        == "rejected"


def test_duplicate_ids_change_nothing_and_repeat_the_answer():
    s = store()
    first = s.handle("curtail", cmd(id="e1", target_power_w=5000, end=iso(T0 + 600)), T0)
    again = s.handle("curtail", cmd(id="e1", target_power_w=1, end=iso(T0 + 60)), T0 + 5)
    assert again.duplicate and again.status == "accepted"
    assert again.reason == "duplicate: " + first.reason
    assert s.directives(T0 + 100).power_cap_w == 5000.0
    # a rejected id may be corrected and sent again
    assert s.handle("curtail", cmd(id="e2", target_power_w=-1), T0).status == "rejected"
    assert s.handle("curtail", cmd(id="e2", target_power_w=10), T0).status == "accepted"


def test_cancel():
    s = store()
    s.handle("curtail", cmd(id="e1", target_power_w=5000), T0)
    assert s.handle("curtail/cancel", cmd(id="e1"), T0 + 1).status == "accepted"
    assert s.directives(T0 + 2).power_cap_w is None
    assert s.handle("curtail/cancel", cmd(id="e1"), T0 + 3).status == "rejected"


def test_overrides_resolve_topic_ids_and_expire():
    s = store(max_override_s=3600)
    known = {"AA:BB": "AA:BB", "SER_1": "SER/1", "SER/1": "SER/1"}
    r = s.handle("override", cmd(id="o1", miner="SER_1", action="sleep", duration_s=60), T0,
                 known_miners=known)
    assert r.status == "accepted"
    (o,) = s.directives(T0 + 1).overrides
    assert (o.key, o.action, o.until, o.source) == ("SER/1", "sleep", T0 + 60, "mqtt:o1")
    assert s.directives(T0 + 60).overrides == ()
    r = s.handle("override", cmd(id="o2", miner="ghost", action="run"), T0, known_miners=known)
    assert r.status == "rejected" and "not in the fleet" in r.reason
    r = s.handle("override", cmd(id="o3", miner="AA:BB", action="run"), T0, known_miners=known)
    assert r.status == "accepted" and s.overrides["AA:BB"].until == T0 + 3600
    assert s.handle("override", cmd(id="o4", miner="AA:BB", action="run",
                                    until=iso(T0 + 10), duration_s=5), T0).status == "rejected"
    assert s.handle("override", cmd(id="o5", miner="AA:BB", action="run",
                                    duration_s=7200), T0).status == "rejected"
    assert s.handle("override", cmd(id="o6", miner="AA:BB", action="clear"), T0).status \
        == "accepted"
    assert s.directives(T0).overrides == ()


def test_pause_and_resume():
    s = store()
    r = s.handle("automation", cmd(id="p1", action="pause", until=iso(T0 + 30)), T0)
    assert r.status == "accepted" and s.directives(T0 + 1).automation_paused
    assert not s.directives(T0 + 30).automation_paused
    s.handle("automation", cmd(id="p2", action="pause"), T0)
    s.handle("automation", cmd(id="p3", action="resume"), T0 + 1)
    assert not s.directives(T0 + 2).automation_paused
    assert s.handle("automation", cmd(id="p4", action="stop"), T0).status == "rejected"


@pytest.mark.parametrize(("policy", "after", "cap_at_150", "cap_at_250"), [
    ("hold", None, 5000.0, 5000.0),
    ("release", None, None, None),
    ("end_after_s", 120.0, 5000.0, None),
])
def test_watchdog(policy, after, cap_at_150, cap_at_250):
    s = store(event_heartbeat_s=60, on_signal_loss=policy, signal_loss_end_after_s=after)
    s.handle("curtail", cmd(id="e1", target_power_w=5000, end=iso(T0 + 1000)), T0)
    s.handle("heartbeat", b"", T0 + 50)  # heard at 50: lost at 110
    assert s.directives(T0 + 100).power_cap_w == 5000.0
    assert not s.signal_lost(T0 + 100)
    assert s.directives(T0 + 150).power_cap_w == cap_at_150
    assert s.directives(T0 + 250).power_cap_w == cap_at_250
    if policy == "hold":
        assert s.signal_lost(T0 + 250)


def test_resent_event_is_a_heartbeat():
    s = store(event_heartbeat_s=60, on_signal_loss="release")
    payload = cmd(id="e1", target_power_w=5000, end=iso(T0 + 1000))
    s.handle("curtail", payload, T0)
    for t in (50, 100, 150):
        assert s.handle("curtail", payload, T0 + t).duplicate
    assert s.directives(T0 + 200).power_cap_w == 5000.0
    assert s.directives(T0 + 211).power_cap_w is None


def test_snapshot_restore_round_trip():
    s = store()
    s.handle("curtail", cmd(id="e1", target_power_w=5000, end=iso(T0 + 600)), T0)
    s.handle("override", cmd(id="o1", miner="AA", action="sleep", duration_s=300), T0)
    s.handle("automation", cmd(id="p1", action="pause", duration_s=100), T0)
    data = json.loads(json.dumps(s.snapshot()))  # what the journal stores
    r, problems = DirectiveStore.restore(data, Limits(), T0 + 10)
    assert problems == []
    assert r.directives(T0 + 10) == s.directives(T0 + 10)
    assert r.handle("curtail", cmd(id="e1", target_power_w=1), T0 + 11).duplicate
    # what ended while we were down is gone
    later, _ = DirectiveStore.restore(data, Limits(), T0 + 601)
    assert later.directives(T0 + 601).power_cap_w is None
    bad, problems = DirectiveStore.restore({"version": 1, "events": [{"id": 1}]}, Limits(), T0)
    assert bad.events == {} and problems
    assert DirectiveStore.restore("junk", Limits(), T0)[1]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600),
                 st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=20)
                              | st.integers(), lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.text(max_size=12), c, max_size=5),
                              max_leaves=12).map(lambda v: json.dumps(v).encode())),
       st.sampled_from(["curtail", "curtail/cancel", "override", "automation", "heartbeat",
                        "zzz"]))
def test_any_payload_gets_an_answer_never_an_exception(payload, kind):
    s = store(max_payload_bytes=512)
    r = s.handle(kind, payload, T0)
    if r is not None:
        assert r.status in ("accepted", "rejected", "expired") and r.reason
    s.directives(T0)
