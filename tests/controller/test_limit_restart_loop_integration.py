"""No Whatsminer restart loop under the shipped config (issue 15, High-3), against real processes.

The real emulator (M30S, M50, LuxOS S19 XP, stock S19j Pro; a Whatsminer restarts btminer for
its 120 s boot, scaled, on every adjust_power_limit) and two real ``curtaild run`` daemons, each
on its own half of the test's 127.152.x block, both from the shipped ``config.toml`` with only
the addresses, the fixed hash price, state_dir and a 1 s poll replaced:

- **shipped**: the shipped [guards] as they are, hash price 0.08 (the issue's). Before the fix
  each M30S got a new limit every time its last restart ended and hashed about half the time
  here; now at most one limit change per machine per ``limit_dwell_s``.
- **short dwell**: [guards] durations cut so the dwell cannot hide a moving target
  (``limit_dwell_s = 20``, ``min_dwell_s = 3``, a 2 s Whatsminer restart cost) and hash price
  0.075 (the M30S optimum is an interior point of the curve, which reading noise used to move).
  The dwell expires five times in the run: exactly one limit per M30S, the model's.

Limit changes are counted in the emulator's actor log (GET /miners ``changes``: every
state-changing call a client made), the physical truth, not curtaild's own account.
"""

from __future__ import annotations

import itertools
import re
import time
import tomllib
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TIME_SCALE = 0.05  # a 120 s Whatsminer restart takes 6 s
RUN_S = 120.0  # real seconds judged: 40 minutes of emulated machine time
#: the Whatsminers set up as at a site: admin password changed (the shipped config's demo
#: password file holds the same)
FLEET = "\n".join(
    f'[[miner]]\nmodel = "{model}"\nip = "127.152.{block}.{first}"\ncount = {count}\n'
    + (f'password = "{SITE_WHATSMINER_PASSWORD}"\n' if model in ("M30S", "M50") else "")
    for block in (0, 1)
    for model, first, count in (("M30S", 1, 3), ("M50", 4, 1), ("S19 XP", 5, 1),
                                ("S19j Pro", 6, 1)))
SHIPPED = {"range": "127.152.0.1-127.152.0.6", "hashprice": 0.08, "guards": {}}
SHORT = {"range": "127.152.1.1-127.152.1.6", "hashprice": 0.075,
         "guards": {"limit_dwell_s": "20", "min_dwell_s": "3",
                    "limit_restart_s": "{ whatsminer = 2, luxos = 1 }"}}


def _sub(text: str, pattern: str, repl: str) -> str:
    """One replacement in the shipped file, or the test says which line it no longer finds."""
    out, n = re.subn(pattern, repl, text, count=1, flags=re.MULTILINE)
    assert n == 1, f"config.toml: no line matches {pattern!r}"
    return out


def shipped_config(path: Path, state_dir: Path, variant: dict) -> Path:
    text = (REPO / "config.toml").read_text()
    text = _sub(text, r'^ranges = \[.*\]$', f'ranges = ["{variant["range"]}"]')
    text = _sub(text, r'^usd_per_th_day = .*$', f'usd_per_th_day = {variant["hashprice"]}')
    text = _sub(text, r'^state_dir = .*$', f'state_dir = "{state_dir}"')
    text = _sub(text, r'^poll_interval_s = .*$', "poll_interval_s = 1")
    # the demo password file lives beside the shipped config, not beside this copy
    text = _sub(text, r'^password_file = "demo/',
                f'password_file = "{REPO / "demo"}/')
    for key, value in variant["guards"].items():
        text = _sub(text, rf'^{key} = .*$', f"{key} = {value}")
    path.write_text(text)
    return path


def limit_changes(miner: dict, since: float) -> list[float]:
    """When clients changed this machine's power limit (the emulator's actor log)."""
    return [c[0] for c in miner["changes"]
            if c[1] == "limit" and c[2] == "client" and c[0] >= since]


def test_shipped_config_has_no_whatsminer_restart_loop(tmp_path: Path) -> None:
    variants = {"shipped": SHIPPED, "short": SHORT}
    for name, v in variants.items():
        v = {**v, "dir": tmp_path / name}
        v["dir"].mkdir()
        v["config"] = shipped_config(v["dir"] / "config.toml", v["dir"] / "state", v)
        variants[name] = v
    dwell_s = {name: tomllib.loads(v["config"].read_text())["guards"]["limit_dwell_s"]
               for name, v in variants.items()}
    hashing: dict[str, list[bool]] = {}
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.152.0.1",
                         time_scale=TIME_SCALE) as emu:
        start = time.time()
        daemons = [DaemonProcess(v["config"], v["dir"] / "daemon.log").start()
                   for v in variants.values()]
        try:
            deadline = time.monotonic() + RUN_S
            while time.monotonic() < deadline:
                for m in emu.miners():
                    if m["model"] == "M30S":
                        hashing.setdefault(m["ip"], []).append(m["state"] == "mining")
                assert all(d.alive() for d in daemons), [d.log()[-2000:] for d in daemons]
                time.sleep(1.0)
            miners = {m["ip"]: m for m in emu.miners()}
        finally:
            codes = [d.stop() for d in daemons]
    assert codes == [0, 0]
    for name, v in variants.items():
        assert "INFO curtaild: tick " in v["dir"].joinpath("daemon.log").read_text(), name

    block = {"shipped": "127.152.0.", "short": "127.152.1."}
    for name, prefix in block.items():
        mine = {ip: m for ip, m in miners.items() if ip.startswith(prefix)}
        changes = {ip: limit_changes(m, start) for ip, m in mine.items()}
        counts = {ip: len(ts) for ip, ts in changes.items()}
        m30s = [ip for ip, m in mine.items() if m["model"] == "M30S"]
        share = {ip: sum(hashing[ip]) / len(hashing[ip]) for ip in m30s}
        why = (f"{name}: limit changes per machine in {RUN_S:.0f} s: {counts}; M30S hashing "
               f"share: { {ip: f'{s:.0%}' for ip, s in share.items()} }")
        # At most one limit change per machine per stated interval (limit_dwell_s).
        for ts in changes.values():
            gaps = [b - a for a, b in itertools.pairwise(ts)]
            assert all(g >= dwell_s[name] - 1.0 for g in gaps), why
        assert all(s >= 0.85 for s in share.values()), why
        if name == "shipped":
            assert all(n <= 1 for n in counts.values()), why  # the run is < limit_dwell_s
        else:
            # Steady prices: the M30S limit is set once, the model's, and never moved again,
            # though the dwell expired five times; nothing else is touched.
            assert {ip: counts[ip] for ip in m30s} == dict.fromkeys(m30s, 1), why
            assert {mine[ip]["power_limit_w"] for ip in m30s} == {1967.0}, why
            assert all(counts[ip] == 0 for ip in mine if ip not in m30s), why
            intents = journal_rows(variants[name]["dir"] / "state",
                                   "SELECT COUNT(*) FROM events WHERE kind='intent'"
                                   " AND action='limit' AND dry_run=0")
            assert intents == [(3,)], why
