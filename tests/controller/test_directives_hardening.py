"""The directive store under hostile input (issue 15): huge integers and year-1 dates are
specific rejections (they answered "internal error" with a traceback), a target below the
sanity floor is refused (1e-300 W shed the whole site for 24 h), a retried id of an event that
is over is answered as a duplicate that says so (it was "accepted ... capped"), and everything
the store holds or writes per command is bounded (a flood rewrote 590 KB per command)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curtaild.controller.directives import SEEN, Limits
from tests.support.directives import T0, cmd, iso, store


# ------------------------------------------------------------- numbers and times out of range
@pytest.mark.parametrize(("kind", "payload", "reason"), [
    ("curtail", b'{"id":"a","target_power_w":' + b"9" * 400 + b"}",
     "target_power_w: a 400-digit integer is out of range"),
    ("override", b'{"id":"a","miner":"AA","action":"run","duration_s":' + b"9" * 400 + b"}",
     "duration_s: a 400-digit integer is out of range"),
    ("automation", b'{"id":"a","action":"pause","duration_s":-' + b"9" * 400 + b"}",
     "duration_s: a 400-digit integer is out of range"),
])
def test_a_huge_integer_is_a_specific_rejection(kind, payload, reason) -> None:
    s = store()
    r = s.handle(kind, payload, T0)
    assert (r.id, r.status, r.reason) == ("a", "rejected", reason)
    assert not s.events and not s.overrides and s.paused_until is None and not s.pending


def test_an_integer_over_pythons_digit_limit_is_a_specific_rejection() -> None:
    s = store(max_payload_bytes=8192)
    r = s.handle("curtail", b'{"id":"a","target_power_w":' + b"9" * 5000 + b"}", T0)
    assert (r.status, r.reason) == ("rejected", "payload has a number with too many digits")


@pytest.mark.parametrize(("kind", "fields", "key"), [
    ("curtail", {"target_power_w": 1000, "end": "0001-01-01T00:00:00+01:00"}, "end"),
    ("curtail", {"target_power_w": 1000, "start": "0001-01-01T00:00:00Z"}, "start"),
    ("curtail", {"target_power_w": 1000, "start": "9999-12-31T23:59:59-05:00"}, "start"),
    ("curtail", {"target_power_w": 1000, "end": "1999-12-31T23:59:59Z"}, "end"),
    ("override", {"miner": "AA", "action": "sleep", "until": "0001-01-01T00:00:00+01:00"},
     "until"),
    ("automation", {"action": "pause", "until": "9999-12-31T23:59:59-14:00"}, "until"),
])
def test_a_date_far_out_of_range_is_a_specific_rejection(kind, fields, key) -> None:
    s = store()
    r = s.handle(kind, cmd(id="a", **fields), T0)
    assert r.status == "rejected" and r.id == "a"
    assert r.reason == (f"{key}: {fields[key]!r} is out of range "
                        "(2000-01-01 to 2200-01-01 UTC)")
    assert not s.events and not s.overrides and s.paused_until is None


def test_an_event_whose_default_end_is_past_is_expired_not_accepted() -> None:
    s = store(max_event_duration_s=3600)
    r = s.handle("curtail", cmd(id="a", target_power_w=1000, start=iso(T0 - 7200)), T0)
    assert r.status == "expired" and "already past" in r.reason
    assert not s.events


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(min_value=10**300, max_value=10**1000),
                 st.integers(max_value=-(10**300), min_value=-(10**1000))),
       st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)),
                                               timezone(timedelta(hours=-12))])),
       st.sampled_from(["target_power_w", "start", "end"]))
def test_no_number_or_time_makes_the_store_raise(big, when, field) -> None:
    s = store()
    payload = {"id": "x", "target_power_w": 1000}
    payload[field] = big if field == "target_power_w" else when.isoformat()
    r = s.handle("curtail", cmd(**payload), T0)
    assert r.status in ("accepted", "rejected", "expired") and r.reason
    for kind, extra in (("override", {"miner": "AA", "action": "run"}),
                        ("automation", {"action": "pause"})):
        r = s.handle(kind, cmd(id="y", duration_s=big, **extra), T0)
        assert r.status == "rejected" and "out of range" in r.reason
        r = s.handle(kind, cmd(id="z", until=when.isoformat(), **extra), T0)
        assert r.status in ("accepted", "rejected")


# ------------------------------------------------------------------------- the sanity floor
def test_a_target_below_the_floor_is_refused_with_the_reason() -> None:
    s = store()
    r = s.handle("curtail", cmd(id="tiny", target_power_w=1e-300), T0)
    assert r.status == "rejected"
    assert r.reason.startswith("target_power_w: 1e-300 W is below min_target_power_w (1 W)")
    assert s.directives(T0).power_cap_w is None
    floor = store(min_target_power_w=50_000)
    assert floor.handle("curtail", cmd(id="a", target_power_w=49_999), T0).status == "rejected"
    assert floor.handle("curtail", cmd(id="b", target_power_w=50_000), T0).status == "accepted"
    assert floor.directives(T0).power_cap_w == 50_000


# ------------------------------------------------------------- duplicates of a finished event
def test_a_duplicate_after_a_cancel_is_answered_as_a_duplicate_of_a_cancelled_event() -> None:
    s = store()
    assert s.handle("curtail", cmd(id="e1", target_power_w=5000), T0).status == "accepted"
    assert s.handle("curtail/cancel", cmd(id="e1"), T0 + 10).status == "accepted"
    again = s.handle("curtail", cmd(id="e1", target_power_w=5000), T0 + 20)
    assert again.duplicate and again.status == "expired"
    assert again.reason == (f"duplicate: event e1 cancelled at {iso(T0 + 10)[:19]}Z; not "
                            "applied again (a new event needs a new id)")
    assert "capped" not in again.reason
    assert s.directives(T0 + 21).power_cap_w is None and not s.events
    # a repeated cancel says what became of it
    r = s.handle("curtail/cancel", cmd(id="e1"), T0 + 30)
    assert r.status == "rejected" and "(event e1 cancelled at" in r.reason


def test_a_duplicate_after_the_end_or_a_signal_loss_says_so() -> None:
    s = store(event_heartbeat_s=60, on_signal_loss="release")
    s.handle("curtail", cmd(id="short", target_power_w=5000, end=iso(T0 + 30)), T0)
    s.handle("curtail", cmd(id="long", target_power_w=8000, end=iso(T0 + 3000)), T0)
    live = s.handle("curtail", cmd(id="long", target_power_w=8000), T0 + 20)
    assert live.status == "accepted" and live.reason.startswith("duplicate: site power capped")
    s.handle("heartbeat", b"", T0 + 40)
    ended = s.handle("curtail", cmd(id="short", target_power_w=5000), T0 + 40)
    assert ended.status == "expired" and ended.reason.startswith("duplicate: event short ended")
    # silence from T0 + 40: lost at T0 + 100, released by the watchdog
    assert s.directives(T0 + 101).power_cap_w is None
    lost = s.handle("curtail", cmd(id="long", target_power_w=8000), T0 + 102)
    assert lost.status == "expired"
    assert lost.reason.startswith("duplicate: event long released on signal loss (release)")


def test_an_active_event_stays_a_duplicate_after_its_id_is_forgotten() -> None:
    s = store(max_remembered_ids=100)
    s.handle("curtail", cmd(id="keep", target_power_w=5000), T0)
    for i in range(150):
        s.handle("automation", cmd(id=f"p{i}", action="resume"), T0)
    assert ("curtail", "keep") not in s.seen
    r = s.handle("curtail", cmd(id="keep", target_power_w=1), T0 + 1)
    assert r.duplicate and r.status == "accepted"
    assert s.directives(T0 + 1).power_cap_w == 5000


# ------------------------------------------------------------------------------- the caps
def test_active_events_are_capped() -> None:
    s = store(max_active_events=3)
    for i in range(3):
        assert s.handle("curtail", cmd(id=f"e{i}", target_power_w=1e4), T0).status == "accepted"
    r = s.handle("curtail", cmd(id="e3", target_power_w=1e4), T0)
    assert r.status == "rejected"
    assert r.reason == ("3 events are active or scheduled, the most max_active_events allows; "
                        "cancel one first")
    s.handle("curtail/cancel", cmd(id="e0"), T0)
    assert s.handle("curtail", cmd(id="e3", target_power_w=1e4), T0).status == "accepted"
    assert len(s.events) == 3


def test_overrides_are_capped() -> None:
    s = store(max_overrides=2)
    for m in ("A", "B"):
        assert s.handle("override", cmd(id=f"o{m}", miner=m, action="sleep"), T0).status \
            == "accepted"
    assert s.handle("override", cmd(id="oA2", miner="A", action="run"), T0).status \
        == "accepted"  # replacing one is not one more
    r = s.handle("override", cmd(id="oC", miner="C", action="sleep"), T0)
    assert r.status == "rejected" and "max_overrides" in r.reason
    assert set(s.overrides) == {"A", "B"}


def test_remembered_ids_are_capped_oldest_first_and_their_rows_deleted() -> None:
    s = store(max_remembered_ids=100)
    for i in range(150):
        s.handle("automation", cmd(id=f"p{i}", action="resume"), T0 + i)
    assert len(s.seen) == 100
    assert next(iter(s.seen)) == ("automation", "p50")
    rows = s.take_pending()
    assert sum(1 for (t, _k), v in rows.items() if t == SEEN and v is not None) == 100
    assert sum(1 for (t, _k), v in rows.items() if t == SEEN and v is None) == 50


def test_each_command_changes_a_bounded_number_of_rows_and_heartbeats_none() -> None:
    s = store()
    for i in range(5000):  # a full memory of ids, 100 events
        s.handle("curtail" if i < 100 else "automation",
                 cmd(id=f"x{i}", target_power_w=1e4) if i < 100
                 else cmd(id=f"x{i}", action="resume"), T0)
    s.take_pending()
    for i, (kind, payload) in enumerate([
            ("curtail/cancel", cmd(id="x7")),
            ("override", cmd(id="o1", miner="AA", action="sleep", duration_s=60)),
            ("automation", cmd(id="p1", action="pause", duration_s=60)),
            ("automation", cmd(id="p2", action="resume")),
            ("curtail", cmd(id="new", target_power_w=2e4))]):
        s.handle(kind, payload, T0 + 1 + i)
        assert 1 <= len(s.take_pending()) <= 3, kind
    s.handle("heartbeat", b"", T0 + 10)
    s.handle("curtail", cmd(id="new", target_power_w=2e4), T0 + 11)  # a duplicate
    assert s.take_pending() == {}


def test_expiry_still_happens_on_time_with_the_sweep_skipped_in_between() -> None:
    s = store()
    s.handle("override", cmd(id="o1", miner="A", action="sleep", duration_s=600), T0)
    s.handle("override", cmd(id="o2", miner="B", action="sleep", duration_s=60), T0 + 1)
    s.handle("automation", cmd(id="p1", action="pause", duration_s=30), T0 + 2)
    assert {o.key for o in s.directives(T0 + 31).overrides} == {"A", "B"}
    assert not s.directives(T0 + 32).automation_paused
    assert {o.key for o in s.directives(T0 + 61).overrides} == {"A"}
    assert s.directives(T0 + 600).overrides == ()
    # a reload that turns the watchdog on is applied at once
    s.handle("curtail", cmd(id="e", target_power_w=1e4, end=iso(T0 + 5000)), T0 + 700)
    assert s.directives(T0 + 800).power_cap_w == 1e4
    s.limits = Limits(event_heartbeat_s=60, on_signal_loss="release")
    assert s.directives(T0 + 800).power_cap_w is None


def test_busy_answer_keeps_the_id_applies_nothing_and_still_takes_heartbeats() -> None:
    s = store()
    r = s.shed("curtail", cmd(id="e1", target_power_w=5000), T0, "overloaded")
    assert (r.id, r.status) == ("e1", "rejected")
    assert r.reason == "busy: overloaded; not applied, send it again later"
    assert not s.events and not s.seen and not s.pending
    assert s.shed("curtail", b"junk", T0, "overloaded").id is None
    assert s.shed("heartbeat", b"", T0 + 5, "overloaded") is None and s.last_heard == T0 + 5
    # the same id, sent again once the flood is over, is applied
    assert s.handle("curtail", cmd(id="e1", target_power_w=5000), T0).status == "accepted"
