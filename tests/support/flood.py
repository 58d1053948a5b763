"""A command flood against a running curtaild: many MQTT commands at a fixed rate from the EMS
user, every answer collected, and what the daemon process did meanwhile (reconnects, RSS,
bytes written, tick times). Shared by tests/controller/test_mqtt_flood.py and
bench/mqtt_flood.py so the test and the published figures measure the same thing.

The mix is what an EMS gone wrong (or an attacker holding its password) sends: new curtail
events, cancels of earlier ones, overrides, pause/resume and heartbeats, every id unique, so
each non-heartbeat command must get exactly one answer on ``<topic>/response``.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho

from tests.support.mosquitto import USERS, MosquittoProcess

#: a tick's duration as curtaild logs it ("tick 0.12s: ..." / "fast tick (...) 0.01s: ...")
_TICK = re.compile(r"(?:^|\s)(fast tick \(inbound command\)|tick) (\d+\.\d+)s: ")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def commands(n: int, miners: list[str], *, seed: int = 1) -> list[tuple[str, bytes, str | None]]:
    """``n`` commands as (kind, payload, id); id None for heartbeats (never answered)."""
    rnd = random.Random(seed)
    out: list[tuple[str, bytes, str | None]] = []
    events: list[str] = []
    now = time.time()
    for i in range(n):
        r = rnd.random()
        ident = f"flood-{seed}-{i}"
        if r < 0.40 or not events:
            body = {"id": ident, "target_power_w": rnd.choice([5e3, 2e4, 1e5, 1e6]),
                    "end": _iso(now + 3600 + rnd.randrange(600))}
            events.append(ident)
            out.append(("curtail", json.dumps(body).encode(), ident))
        elif r < 0.55:
            ident = events.pop(rnd.randrange(len(events)))
            out.append(("curtail/cancel", json.dumps({"id": ident}).encode(), ident))
        elif r < 0.80 and miners:
            body = {"id": ident, "miner": rnd.choice(miners),
                    "action": rnd.choice(["run", "sleep", "clear"])}
            if body["action"] != "clear":
                body["duration_s"] = 600
            out.append(("override", json.dumps(body).encode(), ident))
        elif r < 0.90:
            body = {"id": ident, "action": rnd.choice(["pause", "resume"])}
            if body["action"] == "pause":
                body["duration_s"] = 60
            out.append(("automation", json.dumps(body).encode(), ident))
        else:
            out.append(("heartbeat", json.dumps({"id": ident}).encode(), None))
    return out


def _proc_io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


@dataclass
class FloodResult:
    sent: int = 0
    expected: int = 0  # commands that must be answered (heartbeats are not)
    publish_s: float = 0.0
    answered: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)
    duplicate_answers: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    busy: int = 0  # rejected because the daemon was overloaded
    last_answer_s: float = 0.0  # from the first publish to the last answer
    daemon_connects: int = 0  # "mqtt connected" lines in the daemon's log during the run
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0  # VmHWM: the process's peak since it started
    write_bytes: int = 0  # the daemon's storage writes during the flood (/proc/<pid>/io)
    log_bytes: int = 0  # of which its own log file grew by
    ticks: list[tuple[str, float]] = field(default_factory=list)  # during the flood
    cpu_s: float = 0.0  # the daemon's CPU time (user + system) from the first publish to the end
    broker_cpu_s: float = 0.0  # mosquitto's, same span
    sender_cpu_s: float = 0.0  # this process's (the EMS client: publishing and reading answers)
    reasons: dict[str, int] = field(default_factory=dict)  # rejections by reason, numbers as #
    #: the broker's "Outgoing messages are being dropped for client X" warnings
    broker_drops: list[str] = field(default_factory=list)

    def tick_summary(self) -> str:
        if not self.ticks:
            return "no tick"
        d = sorted(s for _k, s in self.ticks)
        fast = sum(1 for k, _s in self.ticks if k != "tick")
        return (f"{len(d)} ticks ({fast} fast): median {d[len(d) // 2]:.3f} s, "
                f"max {d[-1]:.3f} s")


def flood(broker: MosquittoProcess, prefix: str, cmds: list[tuple[str, bytes, str | None]], *,
          rate_per_s: float, daemon_pid: int, daemon_log: Path,
          answer_timeout_s: float = 60.0) -> FloodResult:
    """Publish ``cmds`` at ``rate_per_s`` as the EMS user (QoS 1) and collect every answer.

    Returns once every expected answer arrived or ``answer_timeout_s`` after the last publish.
    """
    res = FloodResult(sent=len(cmds), expected=sum(1 for c in cmds if c[2] is not None))
    want = {(f"{prefix}/cmd/{k}/response", i) for k, _p, i in cmds if i is not None}
    got: dict[tuple[str, str], dict] = {}
    lock = threading.Lock()
    done = threading.Event()
    connected = threading.Event()

    def on_connect(client, userdata, flags, rc, props=None) -> None:
        client.subscribe(f"{prefix}/cmd/+/response", qos=1)
        client.subscribe(f"{prefix}/cmd/+/+/response", qos=1)
        connected.set()

    def on_message(client, userdata, msg) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        key = (msg.topic, body.get("id"))
        with lock:
            if key in got:
                res.duplicate_answers += 1
                return
            got[key] = body
            if want.issubset(got.keys()):
                done.set()

    ems = paho.Client(paho.CallbackAPIVersion.VERSION2,
                      client_id=f"flood-ems-{time.monotonic_ns()}")
    ems.username_pw_set("ems", USERS["ems"])
    ems.max_inflight_messages_set(200)
    ems.max_queued_messages_set(0)
    ems.on_connect = on_connect
    ems.on_message = on_message
    ems.connect(broker.host, broker.port, keepalive=30)
    ems.loop_start()
    try:
        if not connected.wait(10):
            raise AssertionError("flood client could not connect")
        time.sleep(0.3)  # subscriptions in place
        log_size0 = daemon_log.stat().st_size
        io0 = _proc_io(daemon_pid)
        res.rss_before_mb = _proc_status(daemon_pid, "VmRSS")
        cpu0 = _cpu_s(daemon_pid)
        bcpu0 = _cpu_s(broker.proc.pid) if broker.proc else 0.0
        scpu0 = time.process_time()
        t0 = time.monotonic()
        for i, (kind, payload, _ident) in enumerate(cmds):
            due = t0 + i / rate_per_s
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ems.publish(f"{prefix}/cmd/{kind}", payload, qos=1)
        res.publish_s = time.monotonic() - t0
        done.wait(answer_timeout_s) if want else None
        res.last_answer_s = time.monotonic() - t0
        time.sleep(0.5)  # a late duplicate answer would show here
        io1 = _proc_io(daemon_pid)
        res.cpu_s = _cpu_s(daemon_pid) - cpu0
        res.broker_cpu_s = (_cpu_s(broker.proc.pid) if broker.proc else 0.0) - bcpu0
        res.sender_cpu_s = time.process_time() - scpu0
        res.rss_peak_mb = _proc_status(daemon_pid, "VmHWM")
        res.write_bytes = io1["write_bytes"] - io0["write_bytes"]
        log_text = daemon_log.read_bytes()
        res.log_bytes = len(log_text) - log_size0
    finally:
        ems.loop_stop()
        ems.disconnect()
    new_lines = log_text[log_size0:].decode(errors="replace").splitlines()
    for line in new_lines:
        if (m := _TICK.search(line)) is not None:
            res.ticks.append((m.group(1), float(m.group(2))))
    res.daemon_connects = sum(1 for x in new_lines if "mqtt connected to" in x)
    res.broker_drops = [x for x in broker.log().splitlines()
                        if "Outgoing messages are being dropped" in x]
    with lock:
        res.answered = len(want & got.keys())
        res.missing = sorted(want - got.keys())
        for key, body in got.items():
            if key not in want:
                continue
            status = str(body.get("status"))
            res.by_status[status] = res.by_status.get(status, 0) + 1
            if status == "rejected":
                reason = str(body.get("reason", ""))
                res.busy += reason.startswith("busy:")
                short = re.sub(r"\d+", "#", reason.split(";")[0])[:60]
                res.reasons[short] = res.reasons.get(short, 0) + 1
    return res
