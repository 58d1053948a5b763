"""`curtaild run` on a site whose firmware passwords were changed, judged by the emulator.

Separate processes, real sockets, unmodified pyasic: the emulator serves a fleet whose stock
Antminers and Whatsminer have site passwords (LuxOS and Bitaxe have none); curtaild gets them
from ``[fleet.credentials]`` -- a file for the Antminer web UI, a systemd credential
(``$CREDENTIALS_DIRECTORY``) for the Whatsminer API -- and must sleep the losing machines and
wake them again. One Antminer has a password curtaild does not know: it must be reported
``auth`` (status, metrics, MQTT) and never commanded. No secret may appear in any output:
the daemon's DEBUG log, status.json, ``status --json``, ``plan --json``, a metrics scrape, every
MQTT message and a dump of the journal.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from pyasic.rpc.btminer import BTMinerRPCAPI

from tests.support.daemon import REPO, DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import EmulatorProcess, free_port
from tests.support.mosquitto import Client, MosquittoProcess

pytestmark = pytest.mark.integration

ANT_PW = "Ant-site-5521"
WM_PW = "wm-93kq"
UNKNOWN_PW = "nobody-knows-88"  # set on one machine, never given to curtaild
SECRETS = (ANT_PW, WM_PW, UNKNOWN_PW)
FIRST = "127.157.3.1"
ANT_LOSER, WM_LOSER, ANT_UNKNOWN, LUX_WINNER, ANT_WINNER, AXE = (
    f"127.157.3.{i}" for i in range(1, 7))
LOSERS = (ANT_LOSER, WM_LOSER)
# 0.045 USD/TH/day, 2 % pool fee, 0.07 USD/kWh: breakeven 26.25 J/TH. The S19j Pros (29.5)
# and the M30S (38.0) lose money, the S19 XP on LuxOS (21.3), the S21 (17.5) and the Bitaxe
# earn.
FLEET = f"""
[[miner]]
model = "S19j Pro"
password = "{ANT_PW}"
[[miner]]
model = "M30S"
password = "{WM_PW}"
[[miner]]
model = "S19j Pro"
password = "{UNKNOWN_PW}"
[[miner]]
model = "S19 XP"
[[miner]]
model = "S21"
password = "{ANT_PW}"
[[miner]]
model = "BitAxe Gamma"
"""


class DebugDaemon(DaemonProcess):
    """The daemon at ``--log-level DEBUG``: where libraries log the most (pyasic's Whatsminer
    client logs the token it derives from the password at DEBUG)."""

    def start(self) -> DebugDaemon:
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "curtaild.controller.cli", "--log-level", "DEBUG", "--config",
             str(self.config), "run"], cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            env=env)
        return self


def cli(cfg: Path, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "--config", str(cfg),
                          *args],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def miner_rows(status: dict) -> dict[str, dict]:
    return {m["ip"]: m for m in status["miners"]}


def host_passwd_md5() -> str:
    """What pyasic derives from the Whatsminer password (the AES key of the API): as good as
    the password to anyone who reads it, so it must not leak either."""
    api = BTMinerRPCAPI(WM_LOSER)
    api.pwd = WM_PW
    return asyncio.run(api.get_token()).host_passwd_md5


def test_changed_passwords_per_family(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secrets = tmp_path / "secrets"
    creds_dir = tmp_path / "credentials"
    secrets.mkdir()
    creds_dir.mkdir()
    (secrets / "antminer-web").write_text(ANT_PW + "\n")
    (creds_dir / "whatsminer-api").write_text(WM_PW)
    env = {"CREDENTIALS_DIRECTORY": str(creds_dir)}
    metrics = f"127.157.3.250:{free_port('127.157.3.250')}"
    cfg = tmp_path / "config.toml"

    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01) as emu, \
            MosquittoProcess(host="127.157.3.251") as broker, \
            Client(broker, user="dashboard") as mqtt:
        def write(hashprice: float) -> None:
            extra = (f'[fleet.credentials.antminer]\npassword_file = "{secrets}/antminer-web"\n'
                     '[fleet.credentials.whatsminer]\n'
                     'password_credential = "whatsminer-api"\n'
                     f'[metrics]\nlisten = "{metrics}"\n' + broker.mqtt_toml(state))
            write_config(cfg, ranges=[f"{FIRST}-6"], hashprice=hashprice, tariff=0.07,
                         state_dir=state, extra=extra,
                         guards={"ramp_w_per_min": 60000.0})

        write(0.045)
        with DebugDaemon(cfg, tmp_path / "daemon.log", env=env) as daemon:
            # The losers go to sleep, for real.
            wait_for(lambda: all(emu.miner(ip)["state"] == "sleeping" for ip in LOSERS), 90,
                     what="losing machines asleep")
            # The machine whose password curtaild does not know: reported, never commanded.
            status_path = state / "status.json"
            status = wait_for(lambda: _status_with_auth(status_path), 60,
                              what="status.json reporting the refused machine")
            row = miner_rows(status)[ANT_UNKNOWN]
            assert row["error"].startswith("auth: web UI refused"), row
            assert row["state"] == "mining", row  # it hashes; not "unreachable"
            assert emu.miner(ANT_UNKNOWN)["state"] == "mining"
            assert emu.miner(ANT_UNKNOWN)["changes"] == []  # nothing was ever sent to it
            # ... and nothing believed: pyasic alone would report its sleep done (True after
            # a 401) and the journal would hold an intent and an "ok" outcome for it.
            assert journal_rows(state, "SELECT kind, result FROM events WHERE ip = ?",
                                (ANT_UNKNOWN,)) == []
            assert journal_rows(state, "SELECT * FROM curtailed WHERE ip = ?",
                                (ANT_UNKNOWN,)) == []
            for ip in (ANT_LOSER, WM_LOSER, LUX_WINNER, ANT_WINNER):
                assert not (miner_rows(status)[ip].get("error") or "").startswith("auth"), ip
            scrape = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read()
            scrape_text = scrape.decode()
            auth_errors = [line for line in scrape_text.splitlines()
                           if line.startswith('curtaild_poll_errors_total{kind="auth"')]
            assert auth_errors and float(auth_errors[0].split()[-1]) >= 1, auth_errors
            status_cli = cli(cfg, "status", "--json", env=env)
            assert "auth: web UI refused" in status_cli
            plan = cli(cfg, "plan", "--json", env=env)
            assert ANT_UNKNOWN in plan and "credentials refused" in plan
            wait_for(lambda: _mqtt_says_auth(mqtt), 30, what="MQTT state with the auth error")

            # The hash price rises: curtaild wakes the machines it slept.
            write(0.09)
            daemon.proc.send_signal(1)
            wait_for(lambda: all(emu.miner(ip)["state"] == "mining" for ip in LOSERS), 120,
                     what="machines woken")
            assert emu.miner(ANT_UNKNOWN)["changes"] == []
            assert daemon.alive()
            assert daemon.stop() == 0

        derived = host_passwd_md5()
        outputs = {
            "daemon log": daemon.log(),
            "status.json": status_path.read_text(),
            "status --json": status_cli,
            "plan --json": plan,
            "metrics scrape": scrape_text,
            "journal dump": _journal_dump(state / "journal.sqlite"),
            "MQTT": "\n".join(p.decode(errors="replace") for _t, p, _r in mqtt.messages),
            "emulator control API": json.dumps(emu.miners()),
        }
    assert "auth" in outputs["daemon log"] and "reloaded" in outputs["daemon log"]
    assert "DEBUG" in outputs["daemon log"]
    for where, text in outputs.items():
        assert text, where
        for secret in (*SECRETS, derived):
            assert secret not in text, f"a secret appears in the {where}"


def _status_with_auth(path: Path) -> dict | None:
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    row = miner_rows(status).get(ANT_UNKNOWN)
    return status if row and (row.get("error") or "").startswith("auth:") else None


def _mqtt_says_auth(mqtt: Client) -> bool:
    return any(ANT_UNKNOWN in p.decode(errors="replace") and "auth: " in p.decode(
        errors="replace") for _t, p, _r in list(mqtt.messages))


def _journal_dump(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


def test_reload_with_an_unreadable_secret_is_rejected_and_changes_nothing(
        tmp_path: Path) -> None:
    """SIGHUP with a password file that cannot be read: the reload is rejected naming the key,
    the running passwords stay, and the machine is still commanded with them."""
    state = tmp_path / "state"
    pw = tmp_path / "antminer-web"
    pw.write_text(ANT_PW)
    cfg = tmp_path / "config.toml"
    ip = "127.157.3.20"

    def write(password_file: Path, hashprice: float) -> None:
        write_config(cfg, ranges=[f"{ip}-20"], hashprice=hashprice, tariff=0.07,
                     state_dir=state, guards={"ramp_w_per_min": 60000.0},
                     extra=f'[fleet.credentials.antminer]\npassword_file = "{password_file}"\n')

    fleet = f'[[miner]]\nmodel = "S19j Pro"\npassword = "{ANT_PW}"\n'
    with EmulatorProcess(fleet_toml=fleet, first_ip=ip, time_scale=0.01) as emu:
        write(pw, 0.09)  # earns: keeps running
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: (state / "status.json").exists(), 60, what="first tick")
            write(tmp_path / "gone", 0.045)  # loses money now, but the file is missing
            daemon.proc.send_signal(1)
            wait_for(lambda: "reload rejected" in daemon.log(), 30, what="reload rejected")
            assert ("reload rejected, keeping the running config: fleet.credentials.antminer."
                    "password_file: cannot read") in daemon.log()
            assert emu.miner(ip)["state"] == "mining"  # the old config (0.09) still rules
            write(pw, 0.045)
            daemon.proc.send_signal(1)
            try:
                wait_for(lambda: emu.miner(ip)["state"] == "sleeping", 60,
                         what="slept with the running password after a good reload")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- daemon log tail:\n{daemon.log()[-6000:]}"
                                     ) from None
            assert daemon.stop() == 0
    assert ANT_PW not in daemon.log()
