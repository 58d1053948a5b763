"""The MQTT bridge over TLS and with a systemd-credential password, against a real mosquitto
(the shipped config and ACL plus a TLS listener), a real `curtaild run` and the emulator.

Certificates are made here, per test, with ``cryptography``: a throwaway CA, a broker
certificate for 127.54.0.1 (IP SAN) and a client certificate; a second, unrelated CA plays the
wrong trust anchor."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.daemon import DaemonProcess, ticks, wait_for, write_config
from tests.support.emulator import EmulatorProcess
from tests.support.mosquitto import (
    PREFIX,
    USERS,
    Client,
    MosquittoProcess,
    TlsListener,
    free_port,
    retained,
)

pytestmark = pytest.mark.integration

HOST = "127.54.0.1"
STATUS = f"{PREFIX}/status"
STATE = f"{PREFIX}/state"
HASHPRICE, TARIFF = 0.09, 0.03


# --------------------------------------------------------------------------- certificates
class Pki:
    """A CA that signs a broker and a client certificate, all as PEM files in ``directory``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"{name} test CA")
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            _builder(subject, subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256()))
        self.ca_file = self._write("ca.crt", self.cert)

    def issue(self, cn: str, *, ip: str | None = None, client: bool = False) -> tuple[Path, Path]:
        """(certificate, key) for a server (``ip`` as SAN) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(_name(cn), self.cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False))
        if ip is not None:
            import ipaddress

            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_path = self.dir / f"{cn}.key"
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        key_path.chmod(0o600)
        return self._write(f"{cn}.crt", cert), key_path

    def _write(self, filename: str, cert: x509.Certificate) -> Path:
        path = self.dir / filename
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)))


@pytest.fixture()
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki", "site")


# ------------------------------------------------------------------------------- helpers
def emulator(first_ip: str) -> EmulatorProcess:
    return EmulatorProcess(count=1, first_ip=first_ip, time_scale=0.01,
                           control=f"127.54.0.2:{free_port('127.54.0.2')}")


def daemon_config(path: Path, broker: MosquittoProcess, miner_ip: str, *, tls: dict | None,
                  **mqtt: object) -> Path:
    """A config for one miner whose ``[mqtt]`` talks to ``broker`` (TLS port when ``tls``)."""
    path.mkdir(parents=True, exist_ok=True)
    state = path / "state"
    if tls is not None:
        mqtt.setdefault("port", broker.tls_port)
    extra = broker.mqtt_toml(state, **mqtt)
    if tls is not None:
        extra += "[mqtt.tls]\n" + "".join(f'{k} = "{v}"\n' for k, v in tls.items())
    return write_config(path / "config.toml", ranges=[f"{miner_ip}-{miner_ip}"],
                        hashprice=HASHPRICE, tariff=TARIFF, state_dir=state,
                        poll_interval_s=1.0, extra=extra)


def tls_retained(broker: MosquittoProcess, topic: str, pki: Pki,
                 timeout: float = 3.0) -> bytes | None:
    """What the broker holds retained on ``topic``, read by a TLS client (observer user)."""
    cert = broker.tls.require_certificate
    return retained(broker, topic, timeout, tls_ca=pki.ca_file,
                    tls_cert=pki.dir / "dashboard.crt" if cert else None,
                    tls_key=pki.dir / "dashboard.key" if cert else None)


def connects(broker: MosquittoProcess) -> int:
    """Successful CONNECTs of curtaild seen by the broker (the shipped config names the
    session after the username)."""
    return sum(1 for line in broker.log().splitlines()
               if "New client connected" in line and " as curtaild (" in line)


def assert_keeps_ticking_without_mqtt(d: DaemonProcess, broker: MosquittoProcess,
                                      error: str) -> str:
    """The daemon logs ``error``, never connects, leaks no secret, and its loop runs on."""
    wait_for(lambda: error in d.log(), 30, what=f"{error!r} in the daemon's log")
    first = ticks(d)
    wait_for(lambda: ticks(d) >= first + 3, 20, what="three more ticks without MQTT")
    assert d.alive()
    log = d.log()
    assert "mqtt connected" not in log
    assert connects(broker) == 0
    for secret in USERS.values():
        assert secret not in log
    return log


# ----------------------------------------------------------------------------------- TLS
def test_tls_online_then_wrong_ca_refused_and_daemon_keeps_ticking(tmp_path: Path,
                                                                    pki: Pki) -> None:
    server_crt, server_key = pki.issue("broker", ip=HOST)
    wrong = Pki(tmp_path / "wrong-pki", "other")
    listener = TlsListener(pki.ca_file, server_crt, server_key)
    with MosquittoProcess(host=HOST, tls=listener) as broker, emulator("127.54.1.1"):
        # A CA that did not sign the broker's certificate: TLS verification fails.
        cfg = daemon_config(tmp_path / "wrong", broker, "127.54.1.1",
                            tls={"ca_file": wrong.ca_file})
        with DaemonProcess(cfg, tmp_path / "wrong.log") as d:
            log = assert_keeps_ticking_without_mqtt(d, broker, "certificate verify failed")
            line = next(x for x in log.splitlines() if "certificate verify failed" in x)
            assert f"{HOST}:{broker.tls_port}" in line, line
            assert d.stop() == 0
        assert tls_retained(broker, STATUS, pki) is None  # never published anything

        # A CA file that is not there: the error names the key and the path.
        missing = tmp_path / "no-such-ca.crt"
        cfg = daemon_config(tmp_path / "missing", broker, "127.54.1.1",
                            tls={"ca_file": missing})
        with DaemonProcess(cfg, tmp_path / "missing.log") as d:
            assert_keeps_ticking_without_mqtt(
                d, broker, f"mqtt.tls.ca_file: cannot read {missing}: No such file or directory")
            assert d.stop() == 0

        # The right CA: connected over TLS, seen by a TLS test client.
        cfg = daemon_config(tmp_path / "right", broker, "127.54.1.1",
                            tls={"ca_file": pki.ca_file})
        with DaemonProcess(cfg, tmp_path / "right.log") as d:
            wait_for(lambda: tls_retained(broker, STATUS, pki) == b"online", 30,
                     what="retained online over TLS")
            wait_for(lambda: tls_retained(broker, STATE, pki), 30, what="retained state over TLS")
            assert f"mqtt connected to {HOST}:{broker.tls_port}" in d.log()
            assert d.stop() == 0
        assert tls_retained(broker, STATUS, pki) == b"offline"


def test_tls_client_certificate_required(tmp_path: Path, pki: Pki) -> None:
    server_crt, server_key = pki.issue("broker", ip=HOST)
    client_crt, client_key = pki.issue("curtaild", client=True)
    pki.issue("dashboard", client=True)  # for the test's own TLS reader
    listener = TlsListener(pki.ca_file, server_crt, server_key, require_certificate=True)
    with MosquittoProcess(host=HOST, tls=listener) as broker, emulator("127.54.2.1"):
        # No client certificate: the broker refuses the handshake.
        # (TLS 1.3: the handshake completes, the broker's alert arrives before the CONNACK;
        # aiomqtt then waits out connect_timeout_s, paho logs the reason.)
        cfg = daemon_config(tmp_path / "nocert", broker, "127.54.2.1",
                            tls={"ca_file": pki.ca_file}, connect_timeout_s=2.0)
        with DaemonProcess(cfg, tmp_path / "nocert.log") as d:
            log = assert_keeps_ticking_without_mqtt(d, broker, "alert certificate required")
            assert "ERROR curtaild.mqtt.client: " in log
            assert d.stop() == 0
        assert tls_retained(broker, STATUS, pki) is None

        # With the client certificate (and still the password and the ACL): connected.
        cfg = daemon_config(tmp_path / "cert", broker, "127.54.2.1",
                            tls={"ca_file": pki.ca_file, "cert_file": client_crt,
                                 "key_file": client_key})
        with DaemonProcess(cfg, tmp_path / "cert.log") as d:
            wait_for(lambda: tls_retained(broker, STATUS, pki) == b"online", 30,
                     what="retained online with a client certificate")
            assert d.stop() == 0
        assert connects(broker) == 1


# ------------------------------------------------------------------ systemd credential
def test_password_from_systemd_credential(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    with MosquittoProcess(host=HOST) as broker, emulator("127.54.3.1"):
        cfg = daemon_config(tmp_path / "missing", broker, "127.54.3.1", tls=None,
                            password_file=None, password_credential="mqtt-password")
        # The credential is not there (LoadCredential= forgotten or the file missing).
        with DaemonProcess(cfg, tmp_path / "missing.log",
                           env={"CREDENTIALS_DIRECTORY": str(creds)}) as d:
            log = assert_keeps_ticking_without_mqtt(d, broker, "ERROR curtaild.mqtt")
            error = next(x for x in log.splitlines() if "ERROR curtaild.mqtt" in x)
            assert (f"mqtt.password_credential 'mqtt-password': cannot read "
                    f"{creds / 'mqtt-password'}: No such file or directory") in error, error
            assert d.stop() == 0

        (creds / "mqtt-password").write_text(USERS["curtaild"] + "\n")
        with DaemonProcess(cfg, tmp_path / "ok.log",
                           env={"CREDENTIALS_DIRECTORY": str(creds)}) as d:
            watcher = Client(broker, user="dashboard", subscribe=STATUS).start()
            try:
                wait_for(lambda: watcher.on(STATUS)[-1:] == [b"online"], 30,
                         what="online with the credential's password")
            finally:
                watcher.stop()
            assert USERS["curtaild"] not in d.log()
            assert d.stop() == 0



def test_password_errors_name_the_setting_and_the_path(tmp_path: Path, monkeypatch) -> None:
    """The messages the integration tests above rely on, for each source (no broker)."""
    from curtaild.controller.mqtt_config import MqttConfig

    pw = tmp_path / "pw"
    cfg = MqttConfig(host="b", topic_prefix="a", username="u", password_file=str(pw))
    with pytest.raises(ValueError, match=f"^mqtt.password_file: cannot read {pw}: No such file"):
        cfg.read_password()
    pw.write_text("\n")
    with pytest.raises(ValueError, match=f"^mqtt.password_file: {pw} is empty$"):
        cfg.read_password()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cred = MqttConfig(host="b", topic_prefix="a", username="u", password_credential="pw")
    with pytest.raises(ValueError, match=f"^mqtt.password_credential 'pw': {pw} is empty$"):
        cred.read_password()
