"""Client-id takeover against a real mosquitto with the shipped config and ACL: a user that
may log in but not command (the read-only dashboard) connects with curtaild's client id while
the EMS sends commands. MQTT's session takeover would disconnect curtaild each time (found by
a probe: 11 of 38 EMS commands lost); deploy/mosquitto/mosquitto.conf's
`use_username_as_clientid true` names every session after its username, so the intruder only
ever replaces its own. Uses 127.154.2.1 (broker) and 127.154.3.1-2 (miners)."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from tests.support.daemon import DaemonProcess, wait_for, write_config
from tests.support.emulator import EmulatorProcess
from tests.support.mosquitto import CONF, PREFIX, USERS, Client, MosquittoProcess

pytestmark = pytest.mark.integration

BROKER_IP = "127.154.2.1"
COMMANDS = 38


class Intruder:
    """Logs in as ``user`` with ``client_id`` again and again (every ``period_s``) until
    stopped; counts the logins the broker accepted."""

    def __init__(self, broker: MosquittoProcess, user: str, client_id: str,
                 password: str | None = None, period_s: float = 0.3) -> None:
        self.broker, self.user, self.client_id = broker, user, client_id
        self.password = USERS[user] if password is None else password
        self.period_s = period_s
        self.accepted = 0
        self.attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id)
            c.username_pw_set(self.user, self.password)
            answered = threading.Event()
            result: list[bool] = []

            def on_connect(cl, ud, fl, rc, pr=None, result=result, answered=answered) -> None:
                result.append(not rc.is_failure)
                answered.set()
            c.on_connect = on_connect
            self.attempts += 1
            try:
                c.connect(self.broker.host, self.broker.port, keepalive=10)
                c.loop_start()
                if answered.wait(2.0) and result[0]:
                    self.accepted += 1
                self._stop.wait(self.period_s)
            except OSError:
                pass
            finally:
                c.loop_stop()
                c.disconnect()

    def __enter__(self) -> Intruder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_shipped_config_names_sessions_after_usernames_on_its_listener_only() -> None:
    """The setting sits in the listener's block: placed before any `listener` line, mosquitto
    applies it to an implicit default listener that it then opens on port 1883 on every
    interface, and the configured listener keeps client ids as sent."""
    lines = [x.split("#", 1)[0].split() for x in CONF.read_text().splitlines()]
    lines = [x for x in lines if x]
    at = lines.index(["use_username_as_clientid", "true"])
    assert any(x[0] == "listener" for x in lines[:at])
    with MosquittoProcess(host=BROKER_IP) as broker:
        opened = re.findall(r"Opening ipv\d listen socket on port (\d+)", broker.log())
    assert opened and set(opened) == {str(broker.port)}


def test_read_only_user_with_curtailds_client_id_cannot_knock_it_off(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with MosquittoProcess(host=BROKER_IP) as broker, \
            EmulatorProcess(count=2, first_ip="127.154.3.1", time_scale=0.01), \
            Client(broker, subscribe=f"{PREFIX}/#") as ems:
        cfg = write_config(tmp_path / "config.toml", ranges=["127.154.3.1-127.154.3.2"],
                           hashprice=0.09, tariff=0.03, state_dir=state, poll_interval_s=1.0,
                           extra=broker.mqtt_toml(state))
        with DaemonProcess(cfg, tmp_path / "d.log") as d:
            wait_for(lambda: ems.last(f"{PREFIX}/state"), 60, what="curtaild's first state")
            client_id = "curtaild-curtaild-site1"  # what curtaild sends (effective_client_id)
            assert f"as {client_id}" in d.log()
            answers: dict[str, dict] = {}
            # The dashboard takes curtaild's configured client id and the session name the
            # broker gives curtaild; curtaild's own username with a wrong password tries too.
            with Intruder(broker, "dashboard", client_id) as by_id, \
                    Intruder(broker, "dashboard", "curtaild") as by_name, \
                    Intruder(broker, "curtaild", client_id, password="wrong") as guesser:
                time.sleep(1.0)
                for i in range(COMMANDS):
                    kind = "curtail" if i % 2 == 0 else "curtail/cancel"
                    ident = f"ems-{i // 2}"
                    body = ({"id": ident, "target_power_w": 5e5} if kind == "curtail"
                            else {"id": ident})
                    ems.publish(f"{PREFIX}/cmd/{kind}", json.dumps(body))
                    time.sleep(0.15)

                def all_answered() -> bool:
                    for kind in ("curtail", "curtail/cancel"):
                        for raw in ems.on(f"{PREFIX}/cmd/{kind}/response"):
                            got = json.loads(raw)
                            answers[f"{kind} {got['id']}"] = got
                    return len(answers) == COMMANDS
                try:
                    wait_for(all_answered, 20, interval=0.2, what="an answer to every command")
                except AssertionError:
                    pass  # reported below with the counts
            assert by_id.accepted >= 5 and by_name.accepted >= 5, "the intruders never got in"
            assert guesser.attempts >= 5 and guesser.accepted == 0
            log = d.log()
            assert len(answers) == COMMANDS, (
                f"{COMMANDS - len(answers)} of {COMMANDS} commands unanswered; curtaild "
                f"connected {log.count('mqtt connected to')} times")
            assert all(a["status"] == "accepted" for a in answers.values()), answers
            assert log.count("mqtt connected to") == 1
            assert "reconnecting" not in log
            assert d.stop() == 0
        blog = broker.log()
        assert "Client curtaild already connected" not in blog
        assert "as dashboard (" in blog  # the intruders' sessions carry their own name
