"""The MQTT bridge against a real mosquitto (shipped config and ACL, password auth), a real
`curtaild run` process and the emulated fleet, judged by the emulator's physical truth."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.daemon import DaemonProcess, journal_rows, ticks, wait_for, write_config
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess
from tests.support.mosquitto import PREFIX, Client, MosquittoProcess, free_port, retained

pytestmark = pytest.mark.integration

STATUS = f"{PREFIX}/status"
STATE = f"{PREFIX}/state"
CURTAIL = f"{PREFIX}/cmd/curtail"
RESPONSE = f"{PREFIX}/cmd/curtail/response"
# Every machine earns at this price, so only a demand-response event can shed them.
HASHPRICE, TARIFF = 0.09, 0.03


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def config(tmp: Path, broker: MosquittoProcess, ranges: list[str], *, guards: dict | None = None,
           metrics: str | None = None, **mqtt: object) -> Path:
    state = tmp / "state"
    extra = broker.mqtt_toml(state, **mqtt)
    if metrics:
        extra += f'[metrics]\nlisten = "{metrics}"\n'
    return write_config(tmp / "config.toml", ranges=ranges, hashprice=HASHPRICE, tariff=TARIFF,
                        state_dir=state, poll_interval_s=1.0, guards=guards, extra=extra)


def state(client: Client) -> dict:
    raw = client.last(STATE)
    return json.loads(raw) if raw else {}


def next_state(client: Client, timeout: float = 15.0) -> dict:
    """The state published after the client's last clear(): the daemon logs a tick before
    the bridge has published it, so a test must wait for the message, not the log line."""
    return wait_for(lambda: state(client), timeout, interval=0.1, what="a state message")


def true_power_w(emu: EmulatorProcess) -> float:
    return sum(m["power_w"] for m in emu.miners())


# ---------------------------------------------------------------------------- status and will
def test_status_online_will_after_kill9_and_explicit_offline_on_stop(tmp_path: Path) -> None:
    with MosquittoProcess() as broker, \
            EmulatorProcess(count=2, first_ip="127.51.3.1", time_scale=0.01):
        cfg = config(tmp_path, broker, ["127.51.3.1-127.51.3.2"])
        with DaemonProcess(cfg, tmp_path / "d1.log") as d:
            wait_for(lambda: retained(broker, STATUS, 5.0) == b"online", 30,
                     what="retained online")
            wait_for(lambda: retained(broker, STATE, 5.0), 30, what="retained state")
            d.kill9()
        # The broker publishes the last will when the TCP connection dies.
        wait_for(lambda: retained(broker, STATUS, 5.0) == b"offline", 15,
                 what="last will 'offline' after kill -9")

        with Client(broker, user="dashboard", subscribe=STATUS) as watcher, \
                DaemonProcess(cfg, tmp_path / "d2.log") as d:
            wait_for(lambda: watcher.on(STATUS)[-1:] == [b"online"], 30, what="online again")
            assert d.stop() == 0
            wait_for(lambda: watcher.on(STATUS)[-1:] == [b"offline"], 10,
                     what="explicit offline on SIGTERM")
            assert "could not publish offline" not in d.log()
        assert retained(broker, STATUS, 5.0) == b"offline"
        # A clean DISCONNECT discards the will: the broker logged a clean disconnect.
        assert "Client curtaild disconnected" in broker.log()


# ------------------------------------------------------------------ demand-response event
FLEET = f"""
[[miner]]
model = "S19j Pro"
count = 2
[[miner]]
model = "S21"
count = 2
[[miner]]
model = "M30S"
password = "{SITE_WHATSMINER_PASSWORD}"
"""


def test_event_brings_true_power_under_target_and_releases_at_end(tmp_path: Path) -> None:
    ramp = 60000.0
    with MosquittoProcess() as broker, \
            EmulatorProcess(fleet_toml=FLEET, first_ip="127.51.4.1", time_scale=0.01) as emu, \
            Client(broker) as ems:
        cfg = config(tmp_path, broker, ["127.51.4.1-127.51.4.5"],
                     guards={"ramp_w_per_min": ramp})
        with DaemonProcess(cfg, tmp_path / "d.log") as d:
            wait_for(lambda: state(ems).get("states", {}).get("mining") == 5, 60,
                     what="whole fleet mining")
            full_w = true_power_w(emu)
            target = round(full_w * 0.45)
            start = time.time()
            end = start + 20.0
            ems.publish(CURTAIL, json.dumps({"id": "dr-1", "target_power_w": target,
                                             "start": iso(start), "end": iso(end)}))
            answer = json.loads(wait_for(lambda: ems.last(RESPONSE), 10, what="a response"))
            assert (answer["id"], answer["status"]) == ("dr-1", "accepted")
            # Shedding for an event is "emergency": not ramped. Truth under target fast.
            wait_for(lambda: true_power_w(emu) < target, 15,
                     what=f"true fleet power under {target} W")
            shed_s = time.time() - start
            s = state(ems)
            assert s["mode"] == "event" and s["power_target_w"] == target
            assert s["active_event"]["id"] == "dr-1"
            # Held under target for the whole event.
            while time.time() < end - 1.0:
                assert true_power_w(emu) < target * 1.05
                time.sleep(0.5)
            # Released at `end`: mode back to normal and the fleet restored (ramped).
            wait_for(lambda: state(ems).get("mode") == "normal", 10, what="released at end")
            wait_for(lambda: all(m["state"] == "mining" for m in emu.miners()), 60,
                     what="fleet restored after the event")
            # A duplicate id changes nothing: answered as a duplicate of an event that is
            # over (not "accepted ... capped"), no new event.
            ems.clear()
            ems.publish(CURTAIL, json.dumps({"id": "dr-1", "target_power_w": 1}))
            dup = json.loads(wait_for(lambda: ems.last(RESPONSE), 10, what="duplicate answer"))
            assert dup["status"] == "expired"
            assert dup["reason"].startswith("duplicate: event dr-1 ended at ")
            time.sleep(2.5)
            assert next_state(ems)["mode"] == "normal"
            assert d.stop() == 0
        assert shed_s < 15
        runs = journal_rows(tmp_path / "state", "SELECT ts FROM events WHERE kind='intent'"
                            " AND action='run' AND ts > ? ORDER BY ts", (end - 1.0,))
        assert runs, "nothing was restored after the event"


def test_event_acts_at_once_not_at_the_next_poll(tmp_path: Path) -> None:
    """A 60 s poll interval: only the fast tick an inbound command triggers (decided on the
    last observation) can shed within seconds; the regular schedule is kept."""
    with MosquittoProcess() as broker, \
            EmulatorProcess(fleet_toml=FLEET, first_ip="127.51.7.1", time_scale=0.01) as emu, \
            Client(broker) as ems:
        state_dir = tmp_path / "state"
        cfg = write_config(tmp_path / "config.toml", ranges=["127.51.7.1-127.51.7.5"],
                           hashprice=HASHPRICE, tariff=TARIFF, state_dir=state_dir,
                           poll_interval_s=60.0, guards={"ramp_w_per_min": 1e9},
                           extra=broker.mqtt_toml(state_dir))
        with DaemonProcess(cfg, tmp_path / "d.log") as d:
            wait_for(lambda: state(ems).get("states", {}).get("mining") == 5, 60,
                     what="first tick published")
            target = round(true_power_w(emu) * 0.5)
            sent = time.time()
            ems.publish(CURTAIL, json.dumps({"id": "dr-fast", "target_power_w": target}))
            sleeps = wait_for(lambda: journal_rows(
                state_dir, "SELECT ts FROM events WHERE kind='intent' AND action IN "
                "('sleep', 'limit') AND ts > ?", (sent,)), 20, what="shed commands journaled")
            assert max(ts for (ts,) in sleeps) - sent < 20  # the next regular tick is 60 s away
            assert "fast tick (inbound command)" in d.log()
            wait_for(lambda: true_power_w(emu) < target, 20, what="true power under target")
            assert ticks(d) == 1  # no regular tick was pulled forward
            # Cancelled right away: the readings predate the sheds, so this one observes first
            # (a fast tick would see every machine still running and restore nothing).
            ems.publish(f"{CURTAIL}/cancel", json.dumps({"id": "dr-fast"}))
            wait_for(lambda: all(m["state"] == "mining" for m in emu.miners()), 30,
                     what="fleet restored at once after the cancel, not at the next poll")
            assert d.stop() == 0


def test_event_survives_a_restart(tmp_path: Path) -> None:
    with MosquittoProcess() as broker, \
            EmulatorProcess(count=2, first_ip="127.51.5.1", time_scale=0.01), \
            Client(broker) as ems:
        cfg = config(tmp_path, broker, ["127.51.5.1-127.51.5.2"])
        with DaemonProcess(cfg, tmp_path / "d1.log") as d:
            wait_for(lambda: state(ems).get("mode") == "normal", 30, what="running")
            ems.publish(CURTAIL, json.dumps({"id": "keep", "target_power_w": 100.0,
                                             "end": iso(time.time() + 600)}))
            wait_for(lambda: state(ems).get("mode") == "event", 10, what="event in force")
            d.kill9()
        ems.clear()
        with DaemonProcess(cfg, tmp_path / "d2.log") as d:
            wait_for(lambda: state(ems).get("active_event"), 30, what="state after restart")
            assert state(ems)["active_event"]["id"] == "keep"
            assert d.stop() == 0


# --------------------------------------------------------------------------- broker restart
def test_broker_restart_mid_run(tmp_path: Path) -> None:
    port = free_port()
    metrics = f"127.51.0.1:{free_port()}"
    broker = MosquittoProcess(port=port).start()
    try:
        with EmulatorProcess(count=2, first_ip="127.51.6.1", time_scale=0.01):
            cfg = config(tmp_path, broker, ["127.51.6.1-127.51.6.2"], metrics=metrics)
            with DaemonProcess(cfg, tmp_path / "d.log") as d:
                wait_for(lambda: retained(broker, STATE, 5.0), 30, what="state")
                broker.stop()  # no persistence in the test broker: retained topics are lost
                before = ticks(d)
                wait_for(lambda: ticks(d) >= before + 3, 20, what="ticks without a broker")
                assert d.alive()
                broker.start()
                wait_for(lambda: retained(broker, STATUS, 5.0) == b"online", 30,
                         what="online after the broker restart")
                got = wait_for(lambda: retained(broker, STATE, 5.0), 10, what="state again")
                assert json.loads(got)["miners"] == 2
                text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read()
                text = text.decode()
                assert "curtaild_mqtt_connected 1.0" in text
                reconnects = [ln for ln in text.splitlines()
                              if ln.startswith("curtaild_mqtt_reconnects_total ")]
                assert reconnects and float(reconnects[0].split()[1]) >= 1
                assert d.stop() == 0
                assert "exception was never retrieved" not in d.log()
    finally:
        broker.stop()
        broker._tmp.cleanup()


# ---------------------------------------------------------------------------------- ACL
def test_acl_denies_wrong_users(tmp_path: Path) -> None:
    with MosquittoProcess() as broker, \
            EmulatorProcess(count=1, first_ip="127.51.7.1", time_scale=0.01), \
            Client(broker) as ems:
        cfg = config(tmp_path, broker, ["127.51.7.1-127.51.7.1"])
        with DaemonProcess(cfg, tmp_path / "d.log") as d:
            wait_for(lambda: state(ems).get("mode") == "normal", 30, what="running")
            # dashboard is read-only: its command never reaches curtaild
            with Client(broker, user="dashboard") as dash:
                dash.publish(CURTAIL, json.dumps({"id": "sneaky", "target_power_w": 1}))
                # nor can it forge the state
                dash.publish(STATE, b'{"mode":"forged"}', retain=True)
            # a wrong password is refused at connect
            bad = Client(broker, user="ems", password="wrong").start(expect_ok=False)
            time.sleep(1.0)
            assert not bad.connected.is_set()
            bad.stop()
            time.sleep(2.5)
            assert ems.on(RESPONSE) == []
            assert state(ems)["mode"] == "normal"
            assert "sneaky" not in d.log()
            # the ems user is allowed: the same command is answered
            ems.publish(CURTAIL, json.dumps({"id": "allowed", "target_power_w": 1e6}))
            got = json.loads(wait_for(lambda: ems.last(RESPONSE), 10, what="ems answered"))
            assert got["id"] == "allowed" and got["status"] == "accepted"
            assert d.stop() == 0
        assert "Denied PUBLISH" in broker.log()


# ------------------------------------------------------------------- malformed payloads
_bad_number = st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=2e9),
                        st.text(max_size=8), st.booleans(), st.lists(st.integers(), max_size=2),
                        st.none())
_bad_time = st.text(min_size=1, max_size=30).filter(lambda t: not t[:1].isdigit())


@st.composite
def malformed(draw) -> bytes:
    ident = f"bad-{draw(st.uuids()).hex[:12]}"
    kind = draw(st.sampled_from(["bytes", "not-object", "number", "time", "extra", "huge",
                                 "no-id"]))
    if kind == "bytes":
        raw = draw(st.binary(max_size=200))
        try:
            if isinstance(json.loads(raw), dict):
                raw = b"{" + raw
        except (ValueError, UnicodeDecodeError):
            pass
        return raw
    if kind == "not-object":
        return json.dumps(draw(st.lists(st.integers(), max_size=3) | st.text(max_size=10)
                               | st.integers())).encode()
    if kind == "number":
        return json.dumps({"id": ident, "target_power_w": draw(_bad_number)}).encode()
    if kind == "time":
        return json.dumps({"id": ident, "target_power_w": 1000,
                           draw(st.sampled_from(["start", "end"])): draw(_bad_time)}).encode()
    if kind == "extra":
        return json.dumps({"id": ident, "target_power_w": 1000,
                           draw(st.sampled_from(["priority", "x", "Target"])): 1}).encode()
    if kind == "huge":
        return json.dumps({"id": ident, "target_power_w": 1000, "pad": "x" * 5000}).encode()
    return json.dumps({"target_power_w": draw(st.floats(1, 1e6))}).encode()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mqtt-fuzz")
    with MosquittoProcess() as broker, \
            EmulatorProcess(count=2, first_ip="127.51.8.1", time_scale=0.01), \
            Client(broker) as ems:
        metrics = f"127.51.0.1:{free_port()}"
        cfg = config(tmp, broker, ["127.51.8.1-127.51.8.2"], max_payload_bytes=2048,
                     metrics=metrics)
        with DaemonProcess(cfg, tmp / "d.log") as d:
            wait_for(lambda: state(ems).get("mode") == "normal", 30, what="running")
            sent = [0]
            yield metrics, sent, ems, d
            assert d.stop() == 0
        assert sent[0] > 0


def rejected_metric(metrics: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith('curtaild_mqtt_commands_total{topic="curtail",result="rejected"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(malformed(), min_size=1, max_size=8))
def test_malformed_payloads_are_rejected_and_the_daemon_keeps_ticking(live, batch) -> None:
    metrics, sent, ems, d = live
    ems.clear()
    before = ticks(d)
    for payload in batch:
        ems.publish(CURTAIL, payload)
    sent[0] += len(batch)
    got = wait_for(lambda: (r := ems.on(RESPONSE)) and len(r) >= len(batch) and r, 15,
                   interval=0.1, what=f"{len(batch)} responses")
    answers = [json.loads(r) for r in got]
    assert len(answers) == len(batch)
    assert all(a["status"] == "rejected" and a["reason"] for a in answers), answers
    assert d.alive()
    wait_for(lambda: ticks(d) > before, 10, what="still ticking")
    assert next_state(ems)["mode"] == "normal"
    wait_for(lambda: rejected_metric(metrics) >= sent[0], 10, interval=0.2,
             what=f"curtaild_mqtt_commands_total rejected >= {sent[0]}")
