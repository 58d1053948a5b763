"""``[cluster]`` (issue 19): strict, every problem named by its key; absent = alone."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from curtaild.controller.cluster import build_store
from curtaild.controller.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[2]
BASE = tomllib.loads((REPO / "config.toml").read_text())
OK = {"endpoints": ["http://127.190.0.1:2379"], "site_id": "site1", "instance_id": "a"}


def _problems(cluster: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config({**BASE, "cluster": cluster})
    return exc.value.problems


def test_absent_section_means_alone() -> None:
    assert parse_config(dict(BASE)).cluster is None


def test_defaults_and_scope() -> None:
    c = parse_config({**BASE, "cluster": OK}).cluster
    assert c is not None and c.lease_ttl_s == 10 and c.shard is None
    assert c.scope == "/curtaild/site1/_site/"
    c = parse_config({**BASE, "cluster": {**OK, "shard": "hall-b"}}).cluster
    assert c is not None and c.scope == "/curtaild/site1/hall-b/"


@pytest.mark.parametrize(("change", "expected"), [
    ({"endpoints": []}, "cluster.endpoints: List should have at least 1 item"),
    ({"endpoints": ["127.190.0.1:2379"]}, "cluster.endpoints: '127.190.0.1:2379': not an etcd"),
    ({"endpoints": ["http://etcd-1:2379"]}, "cluster.endpoints: 'http://etcd-1:2379': give the"),
    ({"endpoints": ["http://127.190.0.1"]}, "cluster.endpoints: 'http://127.190.0.1': give the "
                                            "port"),
    ({"endpoints": ["http://127.190.0.1:2379", "http://127.190.0.1:2379"]},
     "cluster.endpoints: an endpoint is listed twice"),
    ({"site_id": "site 1"}, "cluster.site_id: 'site 1': 1 to 64 letters"),
    ({"instance_id": "a/b"}, "cluster.instance_id: 'a/b': 1 to 64 letters"),
    ({"shard": ""}, "cluster.shard: '': 1 to 64 letters"),
    ({"lease_ttl_s": 1}, "cluster.lease_ttl_s: Input should be greater than or equal to 2"),
    ({"lease_ttl_s": 301}, "cluster.lease_ttl_s: "),
    ({"leader": "a"}, "cluster.leader: Extra inputs are not permitted"),
    ({"endpoints": ["https://127.190.0.1:2379"]}, "cluster: https endpoints need [cluster.tls]"),
    ({"tls": {"ca_file": "/x"}}, "cluster: [cluster.tls] is set but the endpoints are http://"),
    ({"password_file": "/x"}, "cluster: a password needs a username"),
    ({"username": "curtaild"}, "cluster: username needs password_file or password_credential"),
    ({"endpoints": ["https://127.190.0.1:2379"], "tls": {"cert_file": "/c"}},
     "cluster.tls: ca_file or ca_credential is required"),
    ({"endpoints": ["https://127.190.0.1:2379"], "tls": {"ca_file": "/a", "key_file": "/k"}},
     "cluster.tls: a client certificate needs its key"),
    ({"standby": False}, "cluster: standby = false needs site_power_cap_w"),
    ({"standby": "no", "site_power_cap_w": 1e6, "safe_budget_w": 5e5},
     "cluster.standby: Input should be a valid boolean"),
    ({"standby": 0, "site_power_cap_w": 1e6, "safe_budget_w": 5e5},
     "cluster.standby: Input should be a valid boolean"),
])
def test_bad_values_are_named(change: dict, expected: str) -> None:
    problems = _problems({**OK, **change})
    assert any(p.startswith(expected) for p in problems), problems


def test_a_shard_without_standby() -> None:
    c = parse_config({**BASE, "cluster": {**OK, "shard": "A", "standby": False,
                                          "site_power_cap_w": 1e6,
                                          "safe_budget_w": 5e5}}).cluster
    assert c is not None and c.standby is False
    assert parse_config({**BASE, "cluster": OK}).cluster.standby is True  # type: ignore[union-attr]


def test_secrets_are_read_when_the_client_is_built(tmp_path: Path) -> None:
    """A missing password or CA file is an error naming the setting, never the content."""
    cfg = parse_config({**BASE, "cluster": {**OK, "username": "curtaild",
                                            "password_file": str(tmp_path / "nope")}}).cluster
    assert cfg is not None
    with pytest.raises(ValueError, match=r"cluster.password_file: cannot read .*nope"):
        build_store(cfg)
    (tmp_path / "pw").write_text("s3cret-etcd\n")
    cfg = parse_config({**BASE, "cluster": {**OK, "username": "curtaild",
                                            "password_file": str(tmp_path / "pw")}}).cluster
    assert cfg is not None
    store = build_store(cfg)
    assert store.username == "curtaild" and store._password == "s3cret-etcd"
    tls = {"ca_file": str(tmp_path / "ca.pem"), "server_name": "etcd"}
    cfg = parse_config({**BASE, "cluster": {**OK, "endpoints": ["https://127.190.0.1:2379"],
                                            "tls": tls}}).cluster
    assert cfg is not None
    with pytest.raises(ValueError, match=r"cluster.tls.ca_file: cannot read .*ca.pem"):
        build_store(cfg)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    store = build_store(cfg)
    assert store.tls is not None and store.tls.ca_cert.startswith(b"-----BEGIN")
    assert store.targets == ["127.190.0.1:2379"]
