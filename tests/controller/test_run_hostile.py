"""`curtaild run` with hostile devices in a 200-miner fleet (issue 15, High-2).

Five addresses are hostile from the start (one of each emulator kind: endless, huge, nested,
accept_close, drip), so discovery and background re-discovery meet them; five more machines
turn hostile after they were discovered, so polls meet them every sweep (re-discovery is put
off with ``rediscover_after_failures``, and the drip one keeps every sweep busy until its poll
deadline). The daemon must keep ticking, its peak resident memory (VmHWM) must stay under
RSS_BOUND_MB, and SIGTERM in the middle of a sweep must end it within the systemd unit's
TimeoutStopSec, with the sweep abandoned rather than decided on.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, ticks, wait_for, write_config
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: The stated bound (docs/benchmarks.md): a healthy 200-miner daemon peaks near 100 MB.
RSS_BOUND_MB = 400
HOSTILE = ("endless", "huge", "nested", "accept_close", "drip")
FIRST, LAST = "127.151.10.1", "127.151.10.200"
FROM_START = [f"127.151.10.{i}" for i in range(196, 201)]
LATER = [f"127.151.10.{i}" for i in range(1, 6)]
POLL_TIMEOUT_S = 5.0


def fleet_toml() -> str:
    models = ["S19", "S19j Pro", "S21", "M30S", "M50", "S19 XP", "S19j Pro LuxOS",
              "BitAxe Gamma"]
    site = f'password = "{SITE_WHATSMINER_PASSWORD}"\n'  # Whatsminers set up as at a site
    tables = [f'[[miner]]\nmodel = "{models[i % len(models)]}"\nip = "127.151.10.{i + 1}"\n'
              + (site if models[i % len(models)] in ("M30S", "M50") else "")
              for i in range(195)]
    for ip, kind in zip(FROM_START, HOSTILE, strict=True):
        extra = "delay_s = 0.05\n" if kind == "drip" else ""
        tables.append(f'[[miner]]\nmodel = "S19j Pro"\nip = "{ip}"\nfault = "{kind}"\n{extra}')
    return "\n".join(tables)


def stop_timeout_s() -> float:
    unit = (REPO / "deploy/systemd/curtaild.service").read_text()
    return float(re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.M).group(1))


def vm_hwm_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024


def test_hostile_miners_cost_bounded_memory_and_sigterm_exits_in_time(
        tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    write_config(cfg, ranges=[f"{FIRST}-{LAST}"], hashprice=0.09, tariff=0.05,
                 state_dir=tmp_path / "state", poll_interval_s=2.0)
    text = cfg.read_text()
    assert f"poll_timeout_s = {POLL_TIMEOUT_S}" in text
    cfg.write_text(text.replace("[fleet]\n", "[fleet]\nrediscover_after_failures = 1000\n", 1))
    with EmulatorProcess(fleet_toml=fleet_toml(), first_ip=FIRST, time_scale=0.01) as emu, \
            DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: ticks(daemon) >= 1, 90, what="the first tick (discovery of 200)")
        for ip, kind in zip(LATER, HOSTILE, strict=True):
            emu.set_fault(ip, kind, **({"delay_s": 0.05} if kind == "drip" else {}))
        seen = ticks(daemon)
        time.sleep(30)
        assert daemon.alive(), daemon.log()[-3000:]
        # every sweep waits for the drip miner's poll deadline (5 s): ~5 sweeps in 30 s
        assert ticks(daemon) - seen >= 3, daemon.log()[-3000:]
        peak_mb = vm_hwm_mb(daemon.proc.pid)
        assert peak_mb < RSS_BOUND_MB, f"daemon peaked at {peak_mb:.0f} MB"
        assert "195 miners" in daemon.log() or "mining=195" in daemon.log()
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        rc = daemon.proc.wait(timeout=stop_timeout_s() + 30)
        took = time.monotonic() - started
        log = daemon.log()
    assert rc == 0, log[-3000:]
    assert took < stop_timeout_s(), f"SIGTERM took {took:.1f}s"
    # It was stopped mid-sweep and did not decide on the part it had.
    assert "the sweep in progress was abandoned" in log, log[-3000:]
    print(f"hostile 200-miner run: VmHWM {peak_mb:.0f} MB, SIGTERM to exit {took:.2f} s")
