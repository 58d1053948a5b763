"""SIGHUP and the MQTT bridge, against two real mosquitto brokers and a real `curtaild run`:
a changed ``[mqtt]`` reconnects with the new settings (the old broker is told ``offline``), an
invalid one is rejected without touching the connection, a removed one stops the bridge."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, wait_for, write_config
from tests.support.emulator import EmulatorProcess
from tests.support.mosquitto import Client, MosquittoProcess, free_port, retained

pytestmark = pytest.mark.integration

HOST = "127.54.0.1"
OLD, NEW = "curtaild/site1", "curtaild/site2"


def write(tmp: Path, mqtt: str) -> Path:
    return write_config(tmp / "config.toml", ranges=["127.54.4.1-127.54.4.1"], hashprice=0.09,
                        tariff=0.03, state_dir=tmp / "state", poll_interval_s=1.0, extra=mqtt)


def hup(d: DaemonProcess) -> None:
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)


def connects(broker: MosquittoProcess) -> int:
    return sum(1 for line in broker.log().splitlines()
               if "New client connected" in line and " as curtaild (" in line)


def test_sighup_moves_the_bridge_rejects_bad_mqtt_and_stops_it_when_removed(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    control = f"127.54.0.2:{free_port('127.54.0.2')}"
    with MosquittoProcess(host=HOST) as old, MosquittoProcess(host=HOST, prefix=NEW) as new, \
            EmulatorProcess(count=1, first_ip="127.54.4.1", control=control), \
            Client(old, user="dashboard", subscribe=f"{OLD}/#") as on_old, \
            Client(new, user="dashboard", subscribe=f"{NEW}/#") as on_new:
        cfg = write(tmp_path, old.mqtt_toml(state))
        with DaemonProcess(cfg, tmp_path / "d.log") as d:
            wait_for(lambda: on_old.on(f"{OLD}/status")[-1:] == [b"online"], 30,
                     what="online on the first broker")
            wait_for(lambda: on_old.last(f"{OLD}/state"), 30, what="state on the first broker")

            # 1. Another broker and another prefix: reconnect there.
            write(tmp_path, new.mqtt_toml(state))
            hup(d)
            wait_for(lambda: on_new.on(f"{NEW}/status")[-1:] == [b"online"], 30,
                     what="online under the new prefix on the new broker")
            wait_for(lambda: on_new.last(f"{NEW}/state"), 30, what="state on the new broker")
            assert "reload: [mqtt] changed; reconnecting with the new settings" in d.log()
            # The old bridge stopped cleanly: explicit retained offline, clean disconnect.
            assert on_old.on(f"{OLD}/status")[-1:] == [b"offline"]
            assert retained(old, f"{OLD}/status") == b"offline"
            assert "Client curtaild disconnected" in old.log()
            on_old.clear()
            time.sleep(2.5)
            assert on_old.messages == []  # nothing more goes to the old broker
            assert connects(new) == 1

            # 2. An invalid [mqtt]: rejected, naming the key; the connection is not touched.
            write(tmp_path, new.mqtt_toml(state, port=0))
            hup(d)
            wait_for(lambda: "reload rejected, keeping the running config: mqtt.port" in d.log(),
                     20, what="the rejected reload in the log")
            on_new.clear()
            wait_for(lambda: len(on_new.on(f"{NEW}/state")) >= 2, 20,
                     what="state still published after the rejected reload")
            assert on_new.on(f"{NEW}/status") == []  # no offline, no reconnect
            assert connects(new) == 1
            assert retained(new, f"{NEW}/status") == b"online"

            # 3. [mqtt] removed: the bridge says offline and stops; the loop goes on.
            write(tmp_path, "")
            hup(d)
            wait_for(lambda: on_new.on(f"{NEW}/status")[-1:] == [b"offline"], 20,
                     what="offline when [mqtt] is removed")
            assert "reload: [mqtt] removed; stopping the MQTT bridge" in d.log()
            ticks = d.log().count("INFO curtaild: tick ")
            wait_for(lambda: d.log().count("INFO curtaild: tick ") >= ticks + 2, 20,
                     what="ticks without MQTT")
            assert d.stop() == 0
        assert d.log().count("reload rejected") == 1
