"""Run `curtaild` as a separate process against a config written by the test."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: The demo's Whatsminer admin password file: what the emulator's ``--count`` Whatsminers
#: (and test fleets that give theirs ``SITE_WHATSMINER_PASSWORD``) accept.
DEMO_WHATSMINER_PASSWORD_FILE = REPO / "demo" / "whatsminer-api-password"


def write_config(path: Path, *, ranges: list[str], hashprice: float, tariff: float,
                 state_dir: Path, poll_interval_s: float = 1.0, guards: dict | None = None,
                 policy: dict | None = None, controller: dict | None = None,
                 extra: str = "",
                 whatsminer_password_file: Path | None = DEMO_WHATSMINER_PASSWORD_FILE) -> Path:
    """A config.toml for a test fleet; values as TOML literals.

    Like a real site that commands Whatsminers, it gives curtaild their admin password
    (``[fleet.credentials.whatsminer]``, the demo's file unless ``whatsminer_password_file``
    says otherwise or ``extra`` has its own): the emulated Whatsminers' write API is off with
    the factory password. ``whatsminer_password_file=None`` leaves it out."""

    def table(name: str, values: dict[str, Any]) -> str:
        lines = [f"[{name}]"]
        for k, v in values.items():
            if isinstance(v, bool):
                lit = "true" if v else "false"
            elif isinstance(v, str):
                lit = f'"{v}"'
            elif isinstance(v, list):
                lit = "[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in v) + "]"
            else:
                lit = repr(v)
            lines.append(f"{k} = {lit}")
        return "\n".join(lines) + "\n"

    text = table("fleet", {"ranges": ranges, "poll_timeout_s": 5.0, "discovery_timeout_s": 8.0})
    if whatsminer_password_file is not None and "[fleet.credentials.whatsminer]" not in extra:
        text += table("fleet.credentials.whatsminer",
                      {"password_file": str(whatsminer_password_file)})
    text += table("hashprice", {"source": "fixed", "usd_per_th_day": hashprice})
    text += table("tariff", {"kind": "flat", "usd_per_kwh": tariff})
    text += table("policy", {"name": "margin", "pool_fee": 0.02, **(policy or {})})
    text += table("guards", {"min_dwell_s": 0.0, "hysteresis_usd_per_day": 0.05,
                             **(guards or {})})
    text += table("controller", {"state_dir": str(state_dir), "poll_interval_s": poll_interval_s,
                                 "verify_grace_s": 5.0, "command_timeout_s": 10.0,
                                 **(controller or {})})
    path.write_text(text + extra)
    return path


class DaemonProcess:
    """`curtaild --config PATH run` in its own process; logs go to a file the test can read."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None,
                 open_files_soft: int | None = None):
        """``open_files_soft``: the soft RLIMIT_NOFILE the daemon starts with (systemd starts
        services at 1024, hard limit untouched), for tests that exhaust descriptors."""
        self.config = config
        self.log_path = log_path
        self.extra_env = env or {}
        self.open_files_soft = open_files_soft
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "curtaild.controller.cli", "--config", str(self.config), "run"],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=self._limit_open_files if self.open_files_soft is not None else None,
        )
        return self

    def _limit_open_files(self) -> None:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files_soft, hard))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._log.close()
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self._log.close()


def ticks(daemon: DaemonProcess) -> int:
    """Reconcile ticks the daemon has logged so far."""
    return daemon.log().count("INFO curtaild: tick ")


def journal_rows(state_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(state_dir / "journal.sqlite")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail with what it last saw."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def read_status(state_dir: Path) -> dict:
    """The daemon's status.json ({} while it is missing or half-written)."""
    try:
        return json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def cluster_role(state_dir: Path) -> str | None:
    """"leader" or "standby" as the daemon's status says, None before its first status."""
    return (read_status(state_dir).get("cluster") or {}).get("role")


#: Two shards of stock Antminers (they sleep, never limit: the allocator's full-or-idle blocks
#: are exact). Margin per watt: S21 (17.5 J/TH) best, S19j Pro (29.5), S19 (34.2) worst.
SHARD_A_FLEET = """
[[miner]]
model = "S21"
count = 2
[[miner]]
model = "S19j Pro"
count = 2
"""
SHARD_B_FLEET = """
[[miner]]
model = "S21"
[[miner]]
model = "S19j Pro"
[[miner]]
model = "S19"
count = 2
"""
