"""A real mosquitto broker for tests: the shipped deploy/mosquitto/ config and ACL, a generated
password file, a free port on 127.51.0.1 (or ``host=``), optionally a second, TLS listener
(``tls=TlsListener(...)``). Missing binary: skip, unless CI=true (then fail).

Also a small synchronous client (paho, in its own network thread) that tests use to play the
EMS and to read what curtaild publishes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho

from tests.support.tools import binary, stop_process

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "mosquitto" / "mosquitto.conf"
ACL = REPO / "deploy" / "mosquitto" / "acl"
HOST = "127.51.0.1"
PREFIX = "curtaild/site1"  # the shipped ACL's prefix
USERS = {"curtaild": "curtaild-secret", "ems": "ems-secret", "dashboard": "dash-secret",
         "observer": "observer-secret"}
#: Added to the shipped ACL for tests only: a read-only user for one-off reads (retained()).
#: The shipped mosquitto.conf names each session after its username, so a one-off read as
#: `dashboard` would replace a test's long-lived `dashboard` subscriber.
TEST_ACL = "\n# tests only\nuser observer\ntopic read {prefix}/#\n"


def shard_acl(shipped: str, user: str, prefix: str) -> str:
    """The shipped ACL again for one shard's prefix, its controller block under ``user``
    (mosquitto adds the lines of a repeated ``user`` to that user's list)."""
    out = [f"\n# shard {user} ({prefix})"]
    for line in shipped.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.strip() == "user curtaild":
            line = f"user {user}"
        out.append(line.replace(PREFIX, prefix))
    return "\n".join(out) + "\n"


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class TlsListener:
    """PEM files for a TLS listener (copied into the broker's directory, which the
    unprivileged `mosquitto` user can read); ``require_certificate``: clients must present a
    certificate signed by ``ca_file``."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


class MosquittoProcess:
    """``/usr/sbin/mosquitto -c <conf>`` built from the shipped conf (paths and listener
    replaced); restartable on the same port, with or without persistence. With ``tls`` it
    also listens with TLS on ``tls_port`` (same users and ACL: ``per_listener_settings
    false``). ``prefix`` rewrites the shipped ACL's topic prefix."""

    def __init__(self, *, port: int | None = None, host: str = HOST,
                 tls: TlsListener | None = None, tls_port: int | None = None,
                 prefix: str = PREFIX, shards: dict[str, str] | None = None) -> None:
        """``shards``: more controller users, each with its own topic prefix (a sharded site:
        one bridge per shard, each its own session): the shipped ACL's blocks are repeated
        for each prefix, its ``curtaild`` block under that user (password: curtaild's)."""
        self.mosquitto = binary("mosquitto", "mosquitto")
        self.passwd_tool = binary("mosquitto_passwd", "mosquitto")
        self.host = host
        self.prefix = prefix
        self.port = port or free_port(host)
        self.tls = tls
        self.tls_port = (tls_port or free_port(host)) if tls else None
        self._tmp = tempfile.TemporaryDirectory(prefix="curtaild-mqtt-")
        self.dir = Path(self._tmp.name)
        self.passwd = self.dir / "passwd"
        self.acl = self.dir / "acl"
        shipped = ACL.read_text()
        self.acl.write_text(shipped.replace(PREFIX, prefix) + TEST_ACL.format(prefix=prefix)
                            + "".join(shard_acl(shipped, user, shard_prefix)
                                      for user, shard_prefix in (shards or {}).items()))
        users = {**USERS, **{user: USERS["curtaild"] for user in shards or {}}}
        for i, (user, pw) in enumerate(users.items()):
            subprocess.run([self.passwd_tool, "-b", *(["-c"] if i == 0 else []),
                            str(self.passwd), user, pw], check=True, capture_output=True)
        self.conf = self.dir / "mosquitto.conf"
        lines = []
        for line in CONF.read_text().splitlines():
            word = line.split(" ", 1)[0]
            if word == "password_file":
                line = f"password_file {self.passwd}"
            elif word == "acl_file":
                line = f"acl_file {self.acl}"
            elif word == "listener":
                line = f"listener {self.port} {host}"
            lines.append(line)
        readable = [self.passwd, self.acl]
        if tls is not None:
            names = {"cafile": "tls-ca.crt", "certfile": "tls-server.crt",
                     "keyfile": "tls-server.key"}
            lines.append(f"listener {self.tls_port} {host}")
            lines.append("use_username_as_clientid true")  # as the shipped TLS block says
            for word, src in zip(names, (tls.ca_file, tls.cert_file, tls.key_file), strict=True):
                dst = self.dir / names[word]
                shutil.copy(src, dst)
                readable.append(dst)
                lines.append(f"{word} {dst}")
            lines.append(f"require_certificate {'true' if tls.require_certificate else 'false'}")
        lines.append("log_dest stderr")
        lines.append("log_type all")
        self.conf.write_text("\n".join(lines) + "\n")
        self.log_path = self.dir / "mosquitto.log"
        # Started as root, mosquitto drops to the `mosquitto` user: it must read these files.
        os.chmod(self.dir, 0o755)
        for f in (*readable, self.conf):
            os.chmod(f, 0o644)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> MosquittoProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.mosquitto, "-c", str(self.conf)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.log(4000)}")
            try:
                for port in filter(None, (self.port, self.tls_port)):
                    with socket.create_connection((self.host, port), timeout=0.5):
                        pass
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto not listening after {timeout}s: {self.log(4000)}")

    def stop(self) -> None:
        stop_process(self.proc, 10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def log(self, tail: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
            return text[-tail:] if tail else text
        except OSError:
            return ""

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()

    def mqtt_toml(self, state_dir: Path, **extra: object) -> str:
        """An ``[mqtt]`` section for a curtaild under test (password in a file)."""
        pw = state_dir.parent / "mqtt-password"
        pw.write_text(USERS["curtaild"] + "\n")
        values: dict[str, object] = {
            "host": self.host, "port": self.port, "topic_prefix": self.prefix,
            "username": "curtaild",
            "password_file": str(pw), "reconnect_min_s": 0.2, "reconnect_max_s": 1.0,
            "keepalive_s": 5, **extra}
        out = ["[mqtt]"]
        for k, v in values.items():
            if v is None:  # e.g. password_file=None to use password_credential instead
                continue
            if isinstance(v, bool):
                out.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, str):
                out.append(f'{k} = "{v}"')
            else:
                out.append(f"{k} = {v!r}")
        return "\n".join(out) + "\n"


class Client:
    """A paho client in its own thread that records every message it receives."""

    def __init__(self, broker: MosquittoProcess, user: str = "ems",
                 password: str | None = None, subscribe: str = f"{PREFIX}/#", *,
                 tls_ca: Path | None = None, tls_cert: Path | None = None,
                 tls_key: Path | None = None) -> None:
        """``tls_ca``: connect to the broker's TLS listener, trusting that CA (and presenting
        ``tls_cert``/``tls_key`` if given)."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.rc: object = None
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{user}-{time.monotonic_ns()}")
        self.client.username_pw_set(user, USERS.get(user) if password is None else password)
        self.subscribe = subscribe
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.broker = broker
        self.port = broker.port
        if tls_ca is not None:
            assert broker.tls_port is not None, "the broker has no TLS listener"
            self.client.tls_set(ca_certs=str(tls_ca), certfile=tls_cert and str(tls_cert),
                                keyfile=tls_key and str(tls_key))
            self.port = broker.tls_port

    def _on_connect(self, client, userdata, flags, rc, props=None) -> None:
        self.rc = rc
        if not rc.is_failure:
            client.subscribe(self.subscribe, qos=1)
            self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def start(self, timeout: float = 10.0, *, expect_ok: bool = True) -> Client:
        self.client.connect(self.broker.host, self.port, keepalive=10)
        self.client.loop_start()
        if expect_ok and not self.connected.wait(timeout):
            raise AssertionError(f"test client could not connect: {self.rc}")
        time.sleep(0.2)  # subscription in place
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self) -> Client:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _r in self.messages if t == topic]

    def last(self, topic: str) -> bytes | None:
        got = self.on(topic)
        return got[-1] if got else None

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


def retained(broker: MosquittoProcess, topic: str, timeout: float = 3.0,
             **client_kw: object) -> bytes | None:
    """What the broker holds retained on ``topic`` now, as a new subscriber (the test-only
    ``observer`` user) sees it first; None if nothing arrives within ``timeout``.
    ``client_kw`` goes to :class:`Client` (TLS files)."""
    c = Client(broker, user="observer", subscribe=topic, **client_kw).start()  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (got := c.last(topic)) is not None:
                return got
            time.sleep(0.05)
        return None
    finally:
        c.stop()
