"""``[fleet.credentials]``: parsing, where secrets come from, which password a miner gets, and
errors that name the key (and never the secret)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from curtaild.controller.config import ConfigError, parse_config
from curtaild.controller.mqtt_config import MqttConfig
from curtaild.drivers.credentials import CredentialStore
from curtaild.drivers.credentials_config import CredentialsConfig, parse_match
from curtaild.drivers.secret import MASK, RedactingFilter, read_secret, redact

BASE = {
    "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
    "tariff": {"kind": "flat", "usd_per_kwh": 0.05},
    "policy": {"name": "margin"},
}


def config_with(credentials: dict) -> dict:
    return {**BASE, "fleet": {"hosts": ["127.157.0.1"], "credentials": credentials}}


def problems(credentials: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(config_with(credentials))
    return err.value.problems


def secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    return str(path)


# ---------------------------------------------------------------------------- parsing
def test_absent_section_means_pyasic_defaults() -> None:
    cfg = parse_config({**BASE, "fleet": {"hosts": ["127.157.0.1"]}})
    assert cfg.fleet.credentials == CredentialsConfig()
    store = CredentialStore.load(cfg.fleet.credentials)
    assert store.resolve(family="antminer", ip="127.157.0.1") is None


def test_a_full_section_parses(tmp_path: Path) -> None:
    f = secret_file(tmp_path, "ant", "x")
    cfg = parse_config(config_with({
        "antminer": {"password_file": f},
        "whatsminer": {"password_credential": "whatsminer-api"},
        "braiins": {"password_file": f},
        "vnish": {"password_file": f},
        "override": [{"match": ["02:EC:9D:01:01:05", "EMU009D0106", "127.157.1.7",
                                "127.157.2.1-20", "127.157.3.0/24"],
                      "family": "antminer", "password_file": f}],
    }))
    assert cfg.fleet.credentials.whatsminer.password_credential == "whatsminer-api"
    assert [m.kind for m in cfg.fleet.credentials.override[0].parsed()] == [
        "mac", "serial", "ip", "range", "range"]


@pytest.mark.parametrize(("credentials", "expected"), [
    ({"antminer": {"password": "hunter2"}},
     "fleet.credentials.antminer: password: secrets never live in the config file"),
    ({"antminer": {}}, "fleet.credentials.antminer: give exactly one of password_file"),
    ({"antminer": {"password_file": "a", "password_credential": "b"}},
     "fleet.credentials.antminer: give exactly one of password_file"),
    ({"whatsminer": {"password_credential": "has space"}},
     "fleet.credentials.whatsminer.password_credential: 'has space' is not a systemd"),
    ({"luxos": {"password_file": "x"}}, "fleet.credentials: luxos: LuxOS's API takes no"),
    ({"bitaxe": {"password_file": "x"}}, "fleet.credentials: bitaxe: AxeOS has no auth"),
    ({"innosilicon": {"password_file": "x"}}, "fleet.credentials.innosilicon: Extra inputs"),
    ({"override": [{"password_file": "x"}]}, "fleet.credentials.override[0].match: Field"),
    ({"override": [{"match": [], "password_file": "x"}]},
     "fleet.credentials.override[0].match: List should have at least 1 item"),
    ({"override": [{"match": ["127.0.0.300"], "password_file": "x"}]},
     "fleet.credentials.override[0].match: [0] '127.0.0.300' is not a valid IPv4"),
    ({"override": [{"match": ["127.0.0.9-127.0.0.1"], "password_file": "x"}]},
     "ends before it starts"),
    ({"override": [{"match": ["a b"], "password_file": "x"}]}, "is neither a MAC"),
    ({"override": [{"match": ["127.157.0.1"], "family": "luxos", "password_file": "x"}]},
     "fleet.credentials.override[0].family: Input should be"),
    ({"override": [{"match": ["aa:bb:cc:dd:ee:ff"], "password_file": "x"},
                   {"match": ["AA-BB-CC-DD-EE-FF"], "password_file": "y"}]},
     "fleet.credentials: override[1].match: AA:BB:CC:DD:EE:FF is also matched by override[0]"),
])
def test_errors_name_the_key(credentials: dict, expected: str) -> None:
    lines = problems(credentials)
    assert any(line.startswith(expected) or expected in line for line in lines), lines
    assert all("hunter2" not in line for line in lines)


def test_same_identity_in_different_families_is_not_ambiguous() -> None:
    cfg = CredentialsConfig.model_validate({"override": [
        {"match": ["127.157.0.1"], "family": "antminer", "password_file": "a"},
        {"match": ["127.157.0.1"], "family": "whatsminer", "password_file": "b"}]})
    assert len(cfg.override) == 2


@pytest.mark.parametrize("text", ["", " ", "127.0.0.0/33", "127.0.0.1-127.0.1", "1.2.3"])
def test_match_rejects_what_is_not_an_identity(text: str) -> None:
    with pytest.raises(ValueError):
        parse_match(text)


# ------------------------------------------------------------------------ secret sources
def test_secrets_from_files_and_systemd_credentials(tmp_path: Path, monkeypatch) -> None:
    creds_dir = tmp_path / "creds"
    creds_dir.mkdir()
    (creds_dir / "whatsminer-api").write_text("wm-secret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds_dir))
    cfg = CredentialsConfig.model_validate({
        "antminer": {"password_file": secret_file(tmp_path, "ant", "ant-secret")},
        "whatsminer": {"password_credential": "whatsminer-api"}})
    store = CredentialStore.load(cfg)
    ant = store.resolve(family="antminer", ip="127.157.0.1")
    wm = store.resolve(family="whatsminer", ip="127.157.0.1")
    assert ant is not None and ant.secret.get_secret_value() == "ant-secret"  # newline dropped
    assert ant.source == "fleet.credentials.antminer"
    assert wm is not None and wm.secret.get_secret_value() == "wm-secret"
    assert store.resolve(family="luxos", ip="127.157.0.1") is None
    for shown in (repr(store), repr(ant), str(ant), repr(cfg)):
        assert "ant-secret" not in shown and "wm-secret" not in shown


def test_unreadable_secrets_are_config_errors_naming_every_key(tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    two = tmp_path / "two"
    two.write_text("first\nsecond-line-secret\n")
    cfg = CredentialsConfig.model_validate({
        "antminer": {"password_file": str(tmp_path / "missing")},
        "whatsminer": {"password_credential": "wm"},
        "braiins": {"password_file": str(empty)},
        "override": [{"match": ["127.157.0.1"], "password_file": str(two)}]})
    with pytest.raises(ConfigError) as err:
        CredentialStore.load(cfg)
    lines = err.value.problems
    assert lines[0].startswith("fleet.credentials.antminer.password_file: cannot read ")
    assert "No such file" in lines[0]
    assert lines[1] == ("fleet.credentials.whatsminer.password_credential 'wm': "
                        "$CREDENTIALS_DIRECTORY is not set (LoadCredential= missing?)")
    assert lines[2] == f"fleet.credentials.braiins.password_file: {empty} is empty"
    assert lines[3] == (f"fleet.credentials.override[0].password_file: {two} holds more "
                        "than one line")
    assert all("second-line-secret" not in line for line in lines)


def test_missing_systemd_credential_names_the_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = CredentialsConfig.model_validate({"whatsminer": {"password_credential": "nope"}})
    with pytest.raises(ConfigError, match=r"^fleet.credentials.whatsminer.password_credential "
                                          r"'nope': cannot read .*/nope"):
        CredentialStore.load(cfg)


def test_mqtt_password_uses_the_same_reader(tmp_path: Path) -> None:
    """One reader for every secret: the MQTT password gets the same rules (one line)."""
    two = tmp_path / "two"
    two.write_text("a\nb\n")
    mqtt = MqttConfig(host="b", topic_prefix="a", username="u", password_file=str(two))
    with pytest.raises(ValueError, match=r"^mqtt.password_file: .* holds more than one line"):
        mqtt.read_password()
    assert read_secret(file=None, credential=None, file_key="x", credential_key="y") is None


# -------------------------------------------------------------------------- precedence
def test_most_specific_override_wins(tmp_path: Path) -> None:
    def src(name: str) -> str:
        return secret_file(tmp_path, name, f"pw-{name}")

    cfg = CredentialsConfig.model_validate({
        "antminer": {"password_file": src("family")},
        "override": [
            {"match": ["127.157.0.0/16"], "password_file": src("wide")},
            {"match": ["127.157.5.1-127.157.5.50"], "password_file": src("range50")},
            {"match": ["127.157.5.1-10"], "password_file": src("range10")},
            {"match": ["127.157.5.1-10"], "password_file": src("range10-second")},
            {"match": ["127.157.5.1-10"], "family": "whatsminer",
             "password_file": src("range10-wm")},
            {"match": ["127.157.5.3"], "password_file": src("ip")},
            {"match": ["02:EC:9D:05:03:00", "SERIAL-9"], "password_file": src("identity")},
            {"match": ["02:ec:9d:05:03:01"], "family": "whatsminer",
             "password_file": src("mac-wm")},
        ]})
    store = CredentialStore.load(cfg)

    def pw(**kw) -> str | None:
        c = store.resolve(**{"family": "antminer", **kw})
        return c.secret.get_secret_value() if c else None

    assert pw(ip="127.0.0.1") == "pw-family"  # no override: the family's
    assert pw(ip="127.157.9.9") == "pw-wide"
    assert pw(ip="127.157.5.40") == "pw-range50"
    assert pw(ip="127.157.5.5") == "pw-range10"  # smallest range; first among equal ones
    assert pw(ip="127.157.5.5", family="whatsminer") == "pw-range10-wm"  # family-specific
    assert pw(ip="127.157.5.3") == "pw-ip"  # an IP beats any range
    assert pw(ip="127.157.5.3", mac="02:ec:9d:05:03:00") == "pw-identity"  # MAC beats IP
    assert pw(ip="127.157.5.3", serial="SERIAL-9") == "pw-identity"
    # A family-restricted override never applies to another family.
    assert pw(ip="127.157.5.3", mac="02:EC:9D:05:03:01") == "pw-ip"
    assert pw(ip="127.157.5.3", mac="02-EC-9D-05-03-01", family="whatsminer") == "pw-mac-wm"
    assert store.resolve(family="luxos", ip="127.0.0.1") is None


# ---------------------------------------------------------------------- never in logs
def test_log_lines_are_redacted(tmp_path: Path) -> None:
    CredentialStore.load(CredentialsConfig.model_validate(
        {"vnish": {"password_file": secret_file(tmp_path, "v", "redact-me-7731")}}))
    assert redact("pw=redact-me-7731!") == f"pw={MASK}!"
    logger = logging.getLogger("test.credentials.redact")
    handler = logging.StreamHandler(stream := _Sink())
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("login with %s failed", "redact-me-7731")
        try:
            raise RuntimeError("bad password redact-me-7731")
        except RuntimeError:
            logger.exception("boom")
        # pyasic's Whatsminer DEBUG lines (token data derived from the password) are dropped
        rec = logging.LogRecord("root", logging.DEBUG, "/x/site-packages/pyasic/rpc/btminer.py",
                                1, "Gathered token data: %s", ("host_passwd_md5=abc",), None)
        assert RedactingFilter().filter(rec) is False
    finally:
        logger.removeHandler(handler)
    assert "redact-me-7731" not in stream.text
    assert stream.text.count(MASK) == 3  # the message, the traceback's line, the exception


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


# ------------------------------------------------------------------------------- the CLI
def _cli(cfg: Path, command: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    from tests.support.daemon import REPO

    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg),
                           command],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_cli_check_warns_and_plan_and_run_refuse_an_unreadable_secret(tmp_path: Path) -> None:
    """``run`` (and ``plan``, which polls) need the secrets: exit 2 naming the key. ``check``
    may run as another user than the service: it warns, and passes."""
    two = tmp_path / "two-lines"
    two.write_text("first\ncli-secret-6612\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[fleet]
hosts = ["127.157.5.1"]
[fleet.credentials.antminer]
password_file = "{tmp_path}/missing"
[fleet.credentials.whatsminer]
password_file = "{two}"
[fleet.credentials.vnish]
password_credential = "vnish-web"
[hashprice]
source = "fixed"
usd_per_th_day = 0.05
[tariff]
kind = "flat"
usd_per_kwh = 0.05
[policy]
name = "margin"
[controller]
state_dir = "{tmp_path}/state"
""")
    check = _cli(cfg, "check", env={"CREDENTIALS_DIRECTORY": ""})
    assert check.returncode == 0, check.stderr
    assert "warning: fleet.credentials.antminer.password_file: cannot read" in check.stderr
    assert "warning: fleet.credentials.whatsminer.password_file: " in check.stderr
    assert "vnish" not in check.stderr  # no $CREDENTIALS_DIRECTORY outside the service
    outputs = [check]
    for command in ("plan", "run"):
        out = _cli(cfg, command, env={"CREDENTIALS_DIRECTORY": ""})
        assert out.returncode == 2, (command, out.stderr)
        assert "fleet.credentials.antminer.password_file: cannot read" in out.stderr, command
        assert "Traceback" not in out.stderr
        outputs.append(out)
    assert all("cli-secret-6612" not in o.stdout + o.stderr for o in outputs)


def test_relative_password_files_resolve_beside_the_config_file(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Against the working directory a relative path named another file when the daemon ran
    from elsewhere (systemd starts it in /): it resolves beside the config file."""
    from curtaild.controller.config import load_config

    site = tmp_path / "site"
    (site / "secrets").mkdir(parents=True)
    (site / "secrets" / "antminer").write_text("site-pass\n")
    (site / "secrets" / "mqtt").write_text("mqtt-pass\n")
    cfg = site / "curtaild.toml"
    cfg.write_text(
        '[fleet]\nhosts = ["127.0.0.9"]\n'
        '[fleet.credentials.antminer]\npassword_file = "secrets/antminer"\n'
        '[hashprice]\nsource = "fixed"\nusd_per_th_day = 0.05\n'
        '[tariff]\nkind = "flat"\nusd_per_kwh = 0.06\n'
        '[policy]\nname = "margin"\n'
        '[mqtt]\nhost = "127.0.0.1"\ntopic_prefix = "curtaild/t"\nusername = "curtaild"\n'
        'password_file = "secrets/mqtt"\n')
    monkeypatch.chdir(tmp_path)  # anywhere but the config's directory
    loaded = load_config(str(cfg))
    assert loaded.fleet.credentials.antminer.password_file == str(site / "secrets" / "antminer")
    assert loaded.mqtt.password_file == str(site / "secrets" / "mqtt")
    assert loaded.mqtt.read_password() == "mqtt-pass"
