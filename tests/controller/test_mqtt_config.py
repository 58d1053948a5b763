"""``[mqtt]`` validation and the password sources (file, systemd credential)."""

from __future__ import annotations

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.controller.mqtt_config import MqttConfig

BASE = {"fleet": {"hosts": ["127.51.0.9"]}, "hashprice": {"source": "fixed",
        "usd_per_th_day": 0.05}, "tariff": {"kind": "flat", "usd_per_kwh": 0.05},
        "policy": {"name": "margin"}}


def problems(mqtt: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config({**BASE, "mqtt": mqtt})
    return exc.value.problems


def test_absent_section_is_off_and_minimal_section_parses():
    assert parse_config(BASE).mqtt is None
    cfg = parse_config({**BASE, "mqtt": {"host": "broker", "topic_prefix": "curtaild/site1"}})
    assert cfg.mqtt.port == 1883 and cfg.mqtt.effective_client_id == "curtaild-curtaild-site1"


@pytest.mark.parametrize(("mqtt", "expect"), [
    ({"host": "b", "topic_prefix": "a/#"}, "mqtt.topic_prefix: "),
    ({"host": "b", "topic_prefix": "/a"}, "mqtt.topic_prefix: "),
    ({"host": "b", "topic_prefix": "a", "port": 0}, "mqtt.port: "),
    ({"host": "b", "topic_prefix": "a", "pasword_file": "x"}, "mqtt.pasword_file: "),
    ({"host": "b", "topic_prefix": "a", "password_file": "x"}, "needs a username"),
    ({"host": "b", "topic_prefix": "a", "username": "u", "password_file": "x",
      "password_credential": "y"}, "not both"),
    ({"host": "b", "topic_prefix": "a", "on_signal_loss": "release"}, "needs event_heartbeat_s"),
    ({"host": "b", "topic_prefix": "a", "event_heartbeat_s": 60,
      "on_signal_loss": "end_after_s"}, "needs signal_loss_end_after_s"),
    ({"host": "b", "topic_prefix": "a", "reconnect_min_s": 10, "reconnect_max_s": 1},
     "reconnect_max_s"),
    ({"host": "b", "topic_prefix": "a", "tls": {"key_file": "k"}}, "key_file needs cert_file"),
])
def test_bad_sections_name_the_key(mqtt, expect):
    assert any(expect in p and p.startswith("mqtt") for p in problems(mqtt)), problems(mqtt)


def test_password_from_file_and_credential(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = MqttConfig(host="b", topic_prefix="a", username="u", password_file=str(tmp_path / "pw"))
    assert cfg.read_password() == "s3cret"
    cred = MqttConfig(host="b", topic_prefix="a", username="u", password_credential="mqtt-password")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ValueError, match="CREDENTIALS_DIRECTORY"):
        cred.read_password()
    (tmp_path / "mqtt-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert cred.read_password() == "from-systemd"
    assert "from-systemd" not in repr(cred) and "s3cret" not in repr(cfg)
