"""A power cut and restore of the whole fleet under the real `curtaild run` (issue 14).

Real firmware stores sleep: a stock Antminer in cgminer.conf, LuxOS its curtailment ("the
curtailment state will persist if you restart the machine"), so after mains power comes back
those machines boot asleep; a Whatsminer's ``power_off`` is not stored (no source says it is),
so it boots mining. While the power is off every machine is off the network (blackholed:
connects time out) and, as it boots, silent.

Fleet: machines curtaild slept because they lose money (LuxOS S19j Pro, stock S19j Pro, M30S),
machines an operator slept at the machine (two LuxOS S19 XP that earn: curtaild never sleeps
them itself, so whether it got to one before the operator is no race), one that earns (S19
XP). After the cut and the restore, curtaild leaves the operator's asleep, puts its own
Whatsminer back to sleep, and when the hash price makes every machine earn it wakes exactly
the machines it owns: the operator's stay asleep. Judged by the emulator's truth (states, the
actor log of changes).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, journal_rows, wait_for, write_config
from tests.support.emulator import SITE_WHATSMINER_PASSWORD, EmulatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LUX_LOSER, LUX_OPERATOR, STOCK_LOSER, XP_WINNER, M30S_LOSER, XP_OPERATOR = (
    f"127.159.3.{i}" for i in range(1, 7))
FLEET = "\n".join(f'[[miner]]\nmodel = "{model}"\nip = "{ip}"\n' for model, ip in (
    ("S19j Pro LuxOS", LUX_LOSER), ("S19 XP", LUX_OPERATOR), ("S19j Pro", STOCK_LOSER),
    ("S19 XP", XP_WINNER), ("M30S", M30S_LOSER), ("S19 XP", XP_OPERATOR)))
# the M30S set up as at a site: admin password changed (write_config gives curtaild the same)
FLEET = FLEET.replace(f'ip = "{M30S_LOSER}"\n',
                      f'ip = "{M30S_LOSER}"\npassword = "{SITE_WHATSMINER_PASSWORD}"\n')
RANGE = "127.159.3.1-127.159.3.6"
OURS = {LUX_LOSER, STOCK_LOSER, M30S_LOSER}
OPERATOR = {LUX_OPERATOR, XP_OPERATOR}


def config(path: Path, state: Path, hashprice: float) -> Path:
    # 0.045 USD/TH/day at 0.07 USD/kWh (2 % fee): breakeven 26.25 J/TH; the S19j Pros (29.5)
    # and the M30S (38) lose, the S19 XP (21.3) earns. 0.09: every machine earns.
    return write_config(path, ranges=[RANGE], hashprice=hashprice, tariff=0.07,
                        state_dir=state, policy={"use_power_limits": False},
                        guards={"ramp_w_per_min": 60000.0, "confirm_grace_s": Toml(
                            '{ antminer = 8, whatsminer = 5, "whatsminer.run" = 8, luxos = 5 }')})


class Toml:
    """A TOML literal for write_config (an inline table): the families' confirm graces are
    real minutes, this fleet runs at a hundredth of real time."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def states(emu: EmulatorProcess) -> dict[str, str]:
    return {m["ip"]: m["state"] for m in emu.miners()}


def reached(emu: EmulatorProcess, want: dict[str, str]):
    now = states(emu)
    return now if all(now[ip] == s for ip, s in want.items()) else None


def client_wakes(view: dict, since: float) -> list:
    return [c for c in view["changes"]
            if c[2] == "client" and c[1] in ("wake", "restart", "reboot") and c[0] >= since]


def test_after_a_power_cut_curtaild_wakes_its_own_and_leaves_the_operators(
        tmp_path: Path) -> None:
    state, cfg = tmp_path / "state", tmp_path / "config.toml"
    with EmulatorProcess(fleet_toml=FLEET, first_ip=LUX_LOSER, time_scale=0.01) as emu:
        config(cfg, state, 0.045)
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            split = {ip: "sleeping" for ip in OURS} | {XP_WINNER: "mining"}
            wait_for(lambda: reached(emu, split), 90, what="the losers asleep")
            # the operator sleeps two machines at the machine itself (winners: curtaild's policy
            # would never sleep them, so they are the operator's whatever the tick order)
            operator_since = time.time()
            for ip in OPERATOR:
                emu.action(ip, "sleep")
            time.sleep(3.0)  # a few ticks: curtaild leaves them alone
            assert reached(emu, split | dict.fromkeys(OPERATOR, "sleeping"))

            # the whole site loses mains power, then gets it back
            for ip in states(emu):
                assert emu.power(ip, False)["network"] == "blackhole"
            time.sleep(4.0)  # curtaild polls a dark site: every connect times out
            assert daemon.alive()
            restored = time.time()
            for ip in states(emu):
                emu.power(ip, True)
            booted = wait_for(lambda: (s := states(emu)) and "booting" not in s.values() and s,
                              30, what="every machine booted")
            # stored sleep survived (LuxOS curtailment, stock cgminer.conf); power_off did not
            for ip in (LUX_LOSER, STOCK_LOSER, *OPERATOR):
                assert booted[ip] == "sleeping", (ip, booted)
            assert booted[XP_WINNER] == "mining"
            # curtaild owns the Whatsminer that came back mining and still loses: asleep again
            wait_for(lambda: reached(emu, split | dict.fromkeys(OPERATOR, "sleeping")), 90,
                     what="curtaild's Whatsminer asleep again, nothing else changed")
            m30s = emu.miner(M30S_LOSER)
            assert any(c[1] == "sleep" and c[2] == "client" and c[0] >= restored
                       for c in m30s["changes"])

            # every machine earns now: curtaild wakes what it owns, never the operator's
            woken_since = time.time()
            config(cfg, state, 0.09)
            daemon.proc.send_signal(1)
            wait_for(lambda: reached(emu, dict.fromkeys(OURS | {XP_WINNER}, "mining")), 120,
                     what="curtaild's machines mining again")
            time.sleep(3.0)
            assert reached(emu, dict.fromkeys(OPERATOR, "sleeping"))
            for ip in OPERATOR:
                assert client_wakes(emu.miner(ip), operator_since) == [], ip
            for ip in OURS:
                assert client_wakes(emu.miner(ip), woken_since), ip
            assert daemon.stop() == 0
        owned = {r[0] for r in journal_rows(state, "SELECT DISTINCT ip FROM events "
                                                   "WHERE kind='intent' AND action='sleep'")}
        assert owned == OURS
