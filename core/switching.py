"""What changing a machine costs: the one table of switching costs (pure, no I/O).

A change of state is not free at a site, and a controller that treats it as free thrashes:

- **boot** (``boot_s``): a wake hashes nothing while the hash boards come up; the machine
  draws its idle power meanwhile;
- **ramp after wake** (``wake_ramp_s``): after the boot some firmware brings the boards up to
  the target gradually -- power rises linearly from idle to the target and the hashrate follows
  the power curve (a Whatsminer after ``power_on`` takes 6-10 minutes; LuxOS ramps to the
  profile like a boot);
- **restart on a new power limit** (``limit_restart_s``): btminer restarts for ~2 minutes on
  each new limit unless the firmware has fast boot; LuxOS re-tunes while it ramps; Braiins,
  VNish and ePIC restart or re-tune their miner process. Hashes nothing, idle draw.

One table serves everyone that prices a change: the margin policy (it changes a machine only
when the expected gain beats the cost, ``policies/margin.py``), the guards' payback rule for
limit changes (``[guards] limit_restart_s`` overrides :data:`LIMIT_RESTART_S` by family), and
the backtest's simulated machines and its ``foresight`` bound (``controller/backtest/``), so
the bound pays exactly what the policy weighs. The emulator's model table
(``core/models.py``: boot times; ramps in its families) is kept equal to this one by a
test (tests/controller/test_switching.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Boot time after a wake, s, by firmware family (pyasic backend name): stock Antminer ~90 s
#: to hashing, Whatsminer ~2 min, LuxOS ~1 min (then its ramp), Bitaxe ~10 s. Families not
#: listed: DEFAULT_BOOT_S.
BOOT_S: dict[str, float] = {"antminer": 90.0, "whatsminer": 120.0, "luxos": 60.0,
                            "bitaxe": 10.0, "braiins": 90.0, "vnish": 90.0, "epic": 90.0}
#: Per-model boot times where a model differs from its family (model as the firmware reports
#: it, case-insensitive); none known today.
BOOT_S_BY_MODEL: dict[str, float] = {}
DEFAULT_BOOT_S = 90.0
#: Ramp after the boot of a wake, s, by family: a Whatsminer reaches full hashrate 6-10 min
#: after power_on (8 min here); LuxOS ramps 3 min to its profile. Others: none.
WAKE_RAMP_S: dict[str, float] = {"whatsminer": 480.0, "luxos": 180.0}
#: Hashing lost per new power limit on a hashing machine, s, by family (``[guards]
#: limit_restart_s`` overrides): btminer restarts (~2 min without fast boot); LuxOS re-tunes
#: while it ramps to the profile; Braiins OS re-tunes; VNish and ePIC restart their miner
#: process. Stock Antminer firmware and Bitaxe take no power target here, so need no entry.
LIMIT_RESTART_S: dict[str, float] = {"whatsminer": 120.0, "luxos": 30.0, "braiins": 60.0,
                                     "vnish": 120.0, "epic": 120.0}
#: Exponent of hashrate against power above idle (the emulator's and the margin policy's
#: default curve), used for the hashing a ramp forgoes.
RAMP_EXPONENT = 0.75


@dataclass(frozen=True, slots=True)
class SwitchingCosts:
    """One machine's switching costs, seconds."""

    boot_s: float
    wake_ramp_s: float = 0.0
    limit_restart_s: float = 0.0

    def wake_hashing_lost_s(self, exponent: float = RAMP_EXPONENT) -> float:
        """Seconds of full hashing a wake forgoes: the whole boot, and over the ramp the part
        the curve does not deliver (hashrate ~ load**e while the load rises linearly: the
        ramp delivers ramp/(1+e) seconds' worth)."""
        return self.boot_s + self.wake_ramp_s * exponent / (1.0 + exponent)

    def describe_wake(self) -> str:
        """``boot 120 s + ramp 480 s`` (for a reason)."""
        ramp = f" + ramp {self.wake_ramp_s:.0f} s" if self.wake_ramp_s > 0 else ""
        return f"boot {self.boot_s:.0f} s{ramp}"


def costs_for(firmware: str, model: str | None = None, *,
              limit_restart_s: Mapping[str, float] | None = None,
              fast_boot: bool = False) -> SwitchingCosts:
    """The switching costs of a machine of ``firmware`` family (and ``model``).

    ``limit_restart_s``: the ``[guards] limit_restart_s`` table (families not in it keep
    :data:`LIMIT_RESTART_S`); ``fast_boot``: Whatsminer "Power Fast Boot", a new limit
    applies without a restart."""
    family = (firmware or "").casefold()
    boot = BOOT_S_BY_MODEL.get((model or "").casefold(), BOOT_S.get(family, DEFAULT_BOOT_S))
    restarts = LIMIT_RESTART_S if limit_restart_s is None else limit_restart_s
    restart = 0.0 if fast_boot else float(restarts.get(family, LIMIT_RESTART_S.get(family, 0.0)))
    return SwitchingCosts(boot_s=boot, wake_ramp_s=WAKE_RAMP_S.get(family, 0.0),
                          limit_restart_s=restart)


def ramp_segment(a_s: float, b_s: float, ramp_s: float, exponent: float) -> tuple[float, float]:
    """Over [a, b] seconds into a ramp of ``ramp_s``: (the integral of the load fraction, the
    integral of load**exponent), both in seconds. Power there is idle + (target - idle) x load
    and hashrate target_hashrate x load**exponent (the emulator's ramp, linear in time)."""
    if ramp_s <= 0 or b_s <= a_s:
        return 0.0, 0.0
    x0, x1 = max(0.0, a_s / ramp_s), min(1.0, b_s / ramp_s)
    load = ramp_s * (x1 * x1 - x0 * x0) / 2.0
    hashing = ramp_s * (x1 ** (1.0 + exponent) - x0 ** (1.0 + exponent)) / (1.0 + exponent)
    return load, hashing
