"""Physical model of one emulated machine: the truth the firmware reports (with noise).

Time is evaluated lazily on every read, so thousands of idle miners cost nothing between
requests. Durations (boot, thermal lag) are multiplied by ``time_scale`` so tests can run a
90 s boot in a fraction of a second.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from curtaild.core.models import ALPHA, ModelSpec

#: State changes kept per miner in ``Miner.changes``.
MAX_CHANGES = 200

STATES = ("mining", "sleeping", "booting", "off")
FAULT_KINDS = ("none", "hang", "refuse", "garbage", "slow", "ignore_sleep",
               "endless", "huge", "nested", "accept_close", "drip",
               "lie", "slow_write", "wipe_pools_on_failed_read", "silent_reboot",
               "token_exhaustion")
#: ``token_exhaustion`` (Whatsminer): every new token is refused, code 136, as when this
#: client IP has had its 32 in the last 30 minutes; tokens already handed out still work.
#: Field faults (firmware-behaviour.md), applied by the firmware families that have them:
#: ``lie`` acknowledges a command and changes nothing; ``slow_write`` answers a config write
#: after ``delay_s`` real seconds (the write still lands); ``wipe_pools_on_failed_read`` makes
#: the config read fail while writes still work (pyasic then posts empty pools, and the
#: firmware stores them); ``silent_reboot`` reboots the control board unasked, silent while it
#: boots.
FIELD_FAULT_KINDS = ("lie", "slow_write", "wipe_pools_on_failed_read", "silent_reboot")
#: Hostile kinds (emulator/server.py): a device on a fleet address that attacks the client's
#: memory, CPU or deadlines rather than merely failing.
HOSTILE_FAULT_KINDS = ("endless", "huge", "nested", "accept_close", "drip")
#: What ``huge`` sends unless ``size_bytes`` says otherwise (the probe's 50 MB reply).
DEFAULT_HUGE_BYTES = 50 * 1024 * 1024

#: Power factor of the stock firmware "miner-mode"/"power mode" presets.
MODE_FACTORS = {"normal": 1.0, "low": 0.75, "high": 1.1}
THERMAL_TAU_S = 120.0
#: Emulated seconds a control board takes to boot and answer again after a reboot or a power
#: cut ("silent for about a minute", firmware-behaviour.md "Every family"), at most the
#: model's own ``boot_s``; the hash boards go on booting until ``boot_s`` from the same start.
BOARD_BOOT_S = 60.0

#: Factory credentials per firmware family: what a machine accepts until the site changes its
#: password, and what pyasic sends when told nothing (pyasic.settings defaults). LuxOS's
#: ``logon`` carries no password at all (pyasic sends a bare ``logon``); Bitaxe AxeOS v2.4 has
#: no authentication. A family with ``None`` has nothing to change.
FACTORY_PASSWORDS: dict[str, str | None] = {
    "antminer": "root",  # web UI digest auth, user root
    # btminer API v2 admin password. API v3 (port 4433) signs with account "super", whose
    # factory password pyasic 0.79 assumes is "super": a v3 family uses ``password`` when set
    # and that default otherwise.
    "whatsminer": "admin",
    "luxos": None,
    "bitaxe": None,
}


@dataclass(slots=True)
class Fault:
    kind: str = "none"
    delay_s: float = 5.0  # "slow": real seconds before each reply; "drip": between bytes
    size_bytes: int = DEFAULT_HUGE_BYTES  # "huge": length of the reply body


@dataclass(slots=True)
class Reading:
    """A consistent instant of physical truth."""

    state: str
    hashrate_ths: float
    power_w: float
    chain_hashrate_ths: list[float]
    chip_temp_c: list[float]  # per chain
    board_temp_c: list[float]  # per chain
    inlet_temp_c: float
    outlet_temp_c: float
    fan_rpm: list[int]
    uptime_s: float  # since last boot (power on / reboot), emulated seconds
    hashing_s: float  # since hashing (re)started, emulated seconds

    @property
    def temp_c(self) -> float:
        return max(self.chip_temp_c) if self.chip_temp_c else self.inlet_temp_c


@dataclass
class EmulatedMiner:
    """One machine. All mutations are methods so every family applies the same physics."""

    ip: str
    spec: ModelSpec
    time_scale: float = 1.0
    ambient_c: float = 25.0
    serial: str = ""
    mac: str = ""
    hostname: str = ""
    clock: Callable[[], float] = time.monotonic
    state: str = "mining"
    mode: str = "normal"
    power_limit_w: float | None = None  # None: nameplate
    fault: Fault = field(default_factory=Fault)
    led_on: bool = False
    pools: list[dict] = field(default_factory=list)
    commands_received: int = 0
    #: Every state-changing call, newest last: (unix time, action, actor). The actor is
    #: "client" (a protocol command) unless the control API set ``actor = "operator"``: the
    #: soak test checks that every client change had a journaled intent before it.
    changes: list = field(default_factory=list)
    actor: str = "client"
    #: Settings a firmware family keeps for itself (e.g. the Antminer "miner-mode" it was
    #: told), so that what the firmware *says* can differ from the physics (ignore_sleep).
    firmware_state: dict = field(default_factory=dict)
    #: The firmware password the site set (web UI root password on a stock Antminer, admin
    #: password of the btminer API on a Whatsminer, v2 and v3); None while the factory one
    #: (``FACTORY_PASSWORDS``) is in place. Never shown by ``truth()``, ``GET /miners`` or repr:
    #: the emulator must not become the place a test finds the secret it is checking for.
    password: str | None = field(default=None, repr=False)
    #: Whatsminer only: which btminer API generation the firmware speaks ("v2" on 4028, "v3"
    #: on 4433 as well), the firmware version it reports (None: the family's default for that
    #: API), and whether "Power Fast Boot" lets a power limit apply without a btminer restart.
    #: Stock Antminer: ``firmware_version`` names the firmware generation (a key of
    #: ``emulator.families.antminer.GENERATIONS``; None: the default one).
    api: str | None = None
    firmware_version: str | None = None
    fast_boot: bool = False
    #: Emulated seconds from the end of a boot to full power (0: at once). Whatsminers ramp
    #: to full hashrate over 6-10 minutes after power_on (HashSource WhatsMiner_Curtailment).
    ramp_s: float = 0.0
    #: The firmware stored "asleep" in its own config (stock Antminer ``cgminer.conf``): after
    #: a power cut the machine boots back asleep, as real firmware does.
    sleep_persisted: bool = False
    #: Clock time the control board answers again after a board reboot or a power cut (0: it
    #: runs). Only ``reboot_board()`` and ``restore_power()`` set it: ``reboot()`` alone is
    #: also how families model a miner-process restart with its own, shorter silence.
    board_down_until: float = 0.0
    _boot_done_at: float = 0.0
    _next_state: str = "mining"
    _booted_at: float = 0.0
    _hashing_since: float = 0.0
    _temp_c: float = 0.0
    _temp_at: float = 0.0
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        octets = [int(x) for x in self.ip.split(".")]
        seed = (octets[1] << 16) | (octets[2] << 8) | octets[3]
        self._rng = random.Random(seed)
        if not self.serial:
            self.serial = f"EMU{seed:08X}"
        if not self.mac:
            self.mac = "02:EC:{:02X}:{:02X}:{:02X}:{:02X}".format(*octets)
        if not self.hostname:
            self.hostname = f"miner-{octets[1]}-{octets[2]}-{octets[3]}"
        if not self.pools:
            self.pools = [
                {"url": "stratum+tcp://pool.example:3333", "user": f"site.{seed}", "pass": "x"}
            ]
        now = self.clock()
        # Pretend the machine has been up (and mining) for a while already.
        self._booted_at = now - 3600.0 * self.time_scale
        self._hashing_since = self._booted_at
        self._temp_c = self._target_temp(self.state)
        self._temp_at = now

    @property
    def effective_password(self) -> str | None:
        """The password the firmware accepts now: the site's, else the family's factory one."""
        if self.password is not None:
            return self.password
        return FACTORY_PASSWORDS.get(self.spec.firmware)

    @property
    def board_boot_s(self) -> float:
        """Emulated seconds the control board is silent while it boots (``BOARD_BOOT_S``, or
        the model's whole boot if that is shorter: a Bitaxe is up in 10 s)."""
        return min(BOARD_BOOT_S, self.spec.boot_s)

    @property
    def board_up_at(self) -> float:
        """Clock time the running boot finished (or finishes): changes with every reboot and
        power cycle, so firmware state tied to one boot (a LuxOS session) can tell."""
        return self._booted_at

    # ----------------------------------------------------------------- state changes
    def _settle(self) -> None:
        now = self.clock()
        self._update_temp(now)
        if self.state == "booting" and now >= self._boot_done_at:
            self.state = self._next_state
            if self.state == "mining":
                self._hashing_since = self._boot_done_at

    def _log(self, action: str) -> None:
        self.changes.append((time.time(), action, self.actor))
        if len(self.changes) > MAX_CHANGES:
            del self.changes[: len(self.changes) - MAX_CHANGES]

    def record(self, action: str) -> None:
        """Log a change the firmware accepted that takes effect later (a stock Antminer config
        write applies at the next restart of its miner process), at the time it was asked."""
        self._log(action)

    def _begin_boot(self, then: str = "mining", duration_s: float | None = None) -> None:
        now = self.clock()
        self._update_temp(now)
        self.state = "booting"
        self._next_state = then
        boot_s = self.spec.boot_s if duration_s is None else duration_s
        self._boot_done_at = now + boot_s * self.time_scale

    def restart_process(self, then: str, down_s: float) -> bool:
        """The miner process (bmminer) restarts, as after every stock Antminer config write:
        the hash boards stop now, nothing hashes for ``down_s`` emulated seconds, then the
        process is back either asleep (``then="sleeping"``) or booting its boards (boot_s)
        towards mining. The control board stays up: uptime does not restart."""
        self._log("restart")
        self._settle()
        if self.state == "off":
            return False
        extra = self.spec.boot_s if then == "mining" else 0.0
        self._begin_boot(then, down_s + extra)
        return True

    def sleep(self) -> bool:
        """Stop hashing, keep the control board up. Accepted even under ignore_sleep."""
        self._log("sleep")
        self._settle()
        if self.fault.kind == "ignore_sleep":
            return True
        if self.state in ("mining", "booting"):
            self._update_temp(self.clock())
            self.state = "sleeping"
        return True

    def wake(self) -> bool:
        """Resume hashing: the hash boards take boot_s (scaled) to come back."""
        self._log("wake")
        self._settle()
        if self.state in ("sleeping", "off"):
            self._begin_boot("mining")
        return True

    def reboot(self) -> bool:
        self._log("reboot")
        self._settle()
        if self.state == "off":
            return False
        resume = "sleeping" if self.state == "sleeping" or self._wakes_asleep() else "mining"
        self._booted_at = self.clock() + self.spec.boot_s * self.time_scale
        self._begin_boot(resume)
        return True

    def power_off(self) -> bool:
        """Whatsminer-style power_off: hash boards off, control board still answers."""
        return self.sleep()

    def power_on(self) -> bool:
        return self.wake()

    def cut_power(self) -> bool:
        """The operator switches the outlet off: nothing runs and nothing answers."""
        self._settle()
        self._update_temp(self.clock())
        self.state = "off"
        return True

    def restore_power(self) -> bool:
        """Power comes back: the machine boots (uptime restarts) and resumes hashing, or stays
        asleep if its firmware stored sleep (``sleep_persisted``). Nothing answers while the
        control board boots (``board_boot_s``); then the firmware answers while the hash
        boards finish their boot (a stock Antminer's ``asic_num`` 0), as after a reboot."""
        self._settle()
        if self.state != "off":
            return False
        self._booted_at = self.clock() + self.spec.boot_s * self.time_scale
        self.board_down_until = self.clock() + self.board_boot_s * self.time_scale
        self._begin_boot("sleeping" if self._wakes_asleep() else "mining")
        return True

    def reboot_board(self) -> bool:
        """The control board itself reboots (a reboot command, a watchdog): as ``reboot()``,
        and nothing on the machine answers until the board has booted (``board_boot_s``,
        emulator/server.py); the hash boards go on booting after that."""
        if not self.reboot():
            return False
        self.board_down_until = self.clock() + self.board_boot_s * self.time_scale
        return True

    def _wakes_asleep(self) -> bool:
        """Boots asleep: sleep is stored in the firmware's config (and obeyed)."""
        return self.sleep_persisted and self.fault.kind != "ignore_sleep"

    def set_power_limit(self, power_w: float) -> bool:
        """Clamp to the model's accepted range, like firmware does; False if unsupported."""
        if self.spec.min_power_w >= self.spec.max_power_w:
            return False
        self._log("limit")
        self._settle()
        self._update_temp(self.clock())
        self.power_limit_w = max(self.spec.min_power_w, min(self.spec.max_power_w, float(power_w)))
        return True

    def set_mode(self, mode: str) -> bool:
        if mode not in MODE_FACTORS:
            return False
        self._log("mode")
        self._settle()
        self._update_temp(self.clock())
        self.mode = mode
        return True

    # ---------------------------------------------------------------------- physics
    def target_power_w(self) -> float:
        """Wall power the machine draws when hashing, under its limit and mode.

        In normal mode a power limit is the target (power-tuning firmware may also run above
        nameplate); the low/high presets scale nameplate and a limit still caps them.
        """
        if self.mode == "normal":
            return self.power_limit_w if self.power_limit_w is not None else self.spec.power_w
        preset = self.spec.power_w * MODE_FACTORS[self.mode]
        return min(preset, self.power_limit_w) if self.power_limit_w is not None else preset

    def ramp_fraction(self) -> float:
        """How far the hash boards are through the ramp after a boot: 0.0 just booted, 1.0 at
        the target (always 1.0 when the model does not ramp or is not mining)."""
        if self.ramp_s <= 0 or self.state != "mining":
            return 1.0
        done_s = (self.clock() - self._hashing_since) / max(self.time_scale, 1e-9)
        return min(1.0, max(0.0, done_s / self.ramp_s))

    @property
    def has_work(self) -> bool:
        """A pool to hash for: a machine whose pools were wiped boots, and hashes nothing."""
        return any(p.get("url") for p in self.pools)

    def _load_fraction(self, state: str) -> float:
        if state != "mining" or not self.has_work:
            return 0.0
        spec = self.spec
        span = spec.power_w - spec.idle_power_w
        return max(0.0, (self.target_power_w() - spec.idle_power_w) / span) * self.ramp_fraction()

    def _target_temp(self, state: str) -> float:
        if state == "off":
            return self.ambient_c
        if state in ("sleeping", "booting"):
            return self.ambient_c + 4.0
        return self.ambient_c + 40.0 * self._load_fraction(state)

    def _update_temp(self, now: float) -> None:
        dt = max(0.0, now - self._temp_at)
        tau = THERMAL_TAU_S * max(self.time_scale, 1e-6)
        target = self._target_temp(self.state)
        self._temp_c = target + (self._temp_c - target) * math.exp(-dt / tau)
        self._temp_at = now

    def read(self) -> Reading:
        """Physical truth now, with small measurement noise."""
        self._settle()
        spec, rng, now = self.spec, self._rng, self.clock()
        load = self._load_fraction(self.state)
        if self.state == "mining" and not self.has_work:
            hashrate = 0.0  # boards up, no pool to hash for: control board and fans
            power = spec.idle_power_w * (1.0 + rng.gauss(0.0, 0.02))
        elif self.state == "mining":
            hashrate = spec.hashrate_ths * load**ALPHA * (1.0 + rng.gauss(0.0, 0.01))
            target_w = self.target_power_w()
            ramp = self.ramp_fraction()
            if ramp < 1.0:  # still ramping: from idle towards the target
                target_w = spec.idle_power_w + (target_w - spec.idle_power_w) * ramp
            power = target_w * (1.0 + rng.gauss(0.0, 0.005))
        elif self.state in ("sleeping", "booting"):
            hashrate = 0.0
            power = spec.idle_power_w * (1.0 + rng.gauss(0.0, 0.02))
        else:
            hashrate, power = 0.0, 0.0
        per_chain = [hashrate / spec.chains * (1.0 + rng.gauss(0.0, 0.005))
                     for _ in range(spec.chains)]
        scale = hashrate / sum(per_chain) if sum(per_chain) > 0 else 0.0
        per_chain = [round(h * scale, 4) for h in per_chain]
        chip = [round(self._temp_c + 8.0 * load + rng.uniform(-1.0, 1.0), 1)
                for _ in range(spec.chains)]
        board = [round(self._temp_c + rng.uniform(-1.0, 1.0), 1) for _ in range(spec.chains)]
        heat = min(1.0, (self._temp_c - self.ambient_c) / 45.0)
        fan_base = 0 if self.state == "off" else int(1500 + 4500 * heat)
        fans = [max(0, fan_base + rng.randint(-60, 60)) if fan_base else 0
                for _ in range(spec.fans)]
        ts = max(self.time_scale, 1e-9)
        return Reading(
            state=self.state,
            hashrate_ths=round(max(0.0, hashrate), 4),
            power_w=round(max(0.0, power), 1),
            chain_hashrate_ths=per_chain,
            chip_temp_c=chip,
            board_temp_c=board,
            inlet_temp_c=round(self.ambient_c + rng.uniform(-0.5, 0.5), 1),
            outlet_temp_c=round(self.ambient_c + 15.0 * load + rng.uniform(-0.5, 0.5), 1),
            fan_rpm=fans,
            uptime_s=max(0.0, (now - self._booted_at) / ts),
            hashing_s=max(0.0, (now - self._hashing_since) / ts) if self.state == "mining" else 0.0,
        )

    def truth(self) -> dict:
        """The control API's view: physical state, independent of any client's belief."""
        r = self.read()
        return {
            "ip": self.ip,
            "make": self.spec.make,
            "model": self.spec.model,
            "firmware": self.spec.firmware,
            "state": r.state,
            "hashrate_ths": r.hashrate_ths,
            "power_w": r.power_w,
            "power_limit_w": self.power_limit_w,
            "temp_c": r.temp_c,
            "mode": self.mode,
            "fault": self.fault.kind,
            "serial": self.serial,
            "mac": self.mac,
        }
