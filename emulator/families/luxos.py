"""Luxor LuxOS on Antminer hardware: the LUXminer RPC on 4028 and the web UI on 80.

pyasic 0.79 detects LuxOS by "LUXminer" in the ``version`` reply (or "Luxor Firmware" on the
web page) and takes the model from ``VERSION[0].Type`` ("Antminer S19 XP" -> LUXMinerS19XP).
Reads are cgminer-style and may be joined with "+" (pyasic's ``get_data`` and ``get_config``
send one joined request). Every reply has the keys and value types of the replies captured
from a real S19k Pro on LUXminer 2025.4.8 (``shared/firmware-captures/luxminer/v1``;
tests/emulator/test_luxos_field.py compares them key for key and through pyasic's parsers).

Field behaviour (docs.luxor.tech, shared/firmware-behaviour.md), on by default:

* **The profile ladder** has the 25 steps LuxOS generates (16 below the EEPROM ``default``,
  8 above, 25 MHz apart), with the watts of the captured ladder scaled to the model's
  nameplate (784-4195 W on the captured S19k Pro at 2794 W). ``profileset`` turns a profile's
  watts into the physics power limit.
* **ATM** (advanced thermal management) is on unless the fleet file says ``atm = false``. Once
  the machine has been up ``StartupMinutes`` and hashing ``PostRampMinutes`` after its last
  ramp or profile change, it steps the profile every ``ATM_INTERVAL_S``: down while the
  hottest board is within ``TempWindow`` of ``Hot``, and back up toward ``MaxProfile`` (the
  EEPROM ``default``) while it is cool. A power limit set by ``profileset`` therefore undoes
  itself on a cool machine unless ATM is off -- which pyasic's ``set_power_limit`` turns back
  on after every ``profileset``. ``profileset`` is refused while ATM is enabled.
* **One session** at a time: ``logon`` answers ``402 Another session is active`` while one is
  live; ``session`` returns the active id (anyone may use it: LuxOS sessions coordinate,
  they do not authenticate); a session dies 60 real seconds after its last use and whenever
  luxminer or the control board restarts.
* **Curtailment persists** across a reboot and a power cut (``curtail sleep`` is stored): the
  machine boots back asleep until ``curtail wakeup``.
* **Power is an estimate** (``PSU: false``): the active profile's watts scaled by the boards'
  hashrate, 0 while the hash boards are off; not a measurement.
* **Wake ramps like a boot**: after ``curtail wakeup`` (and any boot) the boards take the
  model's boot time, then ramp over ``RAMP_S`` to the profile's power (``IsRamping`` in
  ``devs``).
* The ``lie`` fault: every write (curtail, profileset, atmset, ledset, rebootdevice,
  resetminer) answers its success reply and changes nothing.

Error codes and messages of the failure paths are modelled on cgminer conventions and the
documented success codes; they were not captured from hardware.
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from curtaild.core.models import ModelSpec
from curtaild.emulator.families.base import HttpRequest, HttpResponse
from curtaild.emulator.families.whatsminer import belief, belief_holds
from curtaild.emulator.physics import ALPHA, EmulatedMiner, Reading

#: The captured firmware (S19k Pro, shared/firmware-captures/luxminer/v1/version.json).
LUXMINER_VERSION = "2025.4.8.220305-57b389c7"
MINER_VERSION = LUXMINER_VERSION.split("-")[0]
COMPILE_TIME = "Tue Apr  8 22:05:35 UTC 2025"
DESCRIPTION = f"LUXminer {LUXMINER_VERSION}"
SESSION_TTL_S = 60.0  # "Sessions expire automatically after one minute", refreshed on use
#: (default frequency MHz, default voltage V) of the EEPROM profile, per reported model.
NOMINAL = {"S19 XP": (495, 13.0), "S19j Pro": (545, 13.4), "S19k Pro": (590, 13.5)}
FREQ_STEP_MHZ = 25
VOLT_STEP_V = 0.15  # the captured ladder: 13.5 V default, 13.35 one step down, ...
VOLT_FLOOR = 0.88  # ... never below 88 % of the default voltage (11.88 V of 13.5 V)
STEPS_DOWN, STEPS_UP = 16, 8  # LuxOS generates 16 underclock and 8 overclock profiles
#: Watts of the captured S19k Pro ladder (profiles.json, steps -16..+8) and its default: every
#: model's ladder has the same shape, scaled to its nameplate power.
CAPTURED_WATTS = (784, 879, 978, 1080, 1188, 1299, 1414, 1533, 1657, 1785, 1916, 2052, 2192,
                  2336, 2485, 2637, 2794, 2954, 3119, 3288, 3461, 3638, 3820, 4005, 4195)
CAPTURED_DEFAULT_W = 2794
#: Emulated seconds the boards ramp to the profile's power after a boot or a wakeup.
RAMP_S = 180.0
#: Emulated seconds between two ATM decisions (at most one profile step each).
ATM_INTERVAL_S = 60.0
#: tempctrl: fans go to 100 % at Target; ATM steps down within TempWindow of Hot; Dangerous
#: cuts the boards. Board (not chip) temperatures, as LuxOS reports and decides on.
TARGET_C, HOT_C, DANGEROUS_C = 75.0, 85.0, 95.0
#: ATM steps back up only this far below the step-down threshold (no oscillation).
ATM_COOL_MARGIN_C = 5.0
#: firmware_state keys: the fleet file's ``atm`` setting, and the family's own state.
ATM_KEY = "luxos.atm"
STATE_KEY = "luxos"

#: Reads that need no session; everything in WRITES needs one as the first parameter.
READS = ("version", "summary", "stats", "estats", "devs", "edevs", "devdetails", "pools",
         "groups", "config", "power", "fans", "temps", "tempctrl", "profiles", "profileget",
         "atm", "session", "logon", "limits", "coin")
WRITES = ("curtail", "profileset", "atmset", "ledset", "rebootdevice", "resetminer", "logoff")

HTML = """<!doctype html><html><head><meta charset="utf-8"><title>LuxOS</title></head>
<body><div id="app">Luxor Firmware - LuxOS {version}</div></body></html>
"""


@dataclass(slots=True)
class Profile:
    name: str
    step: int
    frequency: int
    voltage: float
    watts: int
    hashrate_ths: float

    def row(self, active: str = "") -> dict:
        """A ``profiles`` row, keys and types as captured (``Step`` is a string there)."""
        return {"CanRestore": True, "Frequency": self.frequency, "HasOverrides": False,
                "Hashrate": round(self.hashrate_ths, 1), "IsDynamic": True,
                "IsTuned": self.name == active and self.step != 0,
                "Profile Name": self.name, "Step": str(self.step), "Voltage": self.voltage,
                "Watts": self.watts}


def profiles_for(spec: ModelSpec) -> list[Profile]:
    """The 25 built-in profiles, lowest first: 25 MHz steps around the EEPROM default, the
    captured ladder's watts scaled to this nameplate, and each profile's hashrate what the
    physics yields at its watts (hashrate ~ (power - idle)**ALPHA), so that setting a
    profile's watts as the power limit gives the profile's hashrate."""
    freq0, volt0 = NOMINAL.get(spec.model, (500, 13.0))
    span = spec.power_w - spec.idle_power_w
    out = []
    for i, step in enumerate(range(-STEPS_DOWN, STEPS_UP + 1)):
        freq = freq0 + step * FREQ_STEP_MHZ
        watts = spec.power_w if step == 0 else spec.power_w * CAPTURED_WATTS[i] / \
            CAPTURED_DEFAULT_W
        load = max(0.0, (watts - spec.idle_power_w) / span)
        volt = max(round(volt0 * VOLT_FLOOR, 2), round(volt0 + step * VOLT_STEP_V, 2))
        out.append(Profile("default" if step == 0 else f"{freq}MHz", step, freq, volt,
                           round(watts), spec.hashrate_ths * load ** ALPHA))
    return out


@dataclass
class LuxState:
    """What luxminer keeps for itself (on ``miner.firmware_state["luxos"]``)."""

    profile: str = "default"
    session_id: str = ""
    session_used: float = 0.0
    session_boot: float = 0.0  # physics clock time of the boot the session was made in
    red_led: str = "off"
    curtailed: tuple[float, str] | None = None  # belief: the API put it to sleep (see belief)
    #: physics clock: when the profile last changed by hand (ATM waits PostRampMinutes)
    profile_set_at: float = float("-inf")
    atm_checked_at: float | None = None  # physics clock of ATM's last decision point
    atm_steps: int = 0  # profile steps ATM took (GET /miners)
    atm: dict = field(default_factory=lambda: {
        "Enabled": True, "MaxProfile": "default", "MinProfile": "", "PostRampMinutes": 15,
        "StartupMinutes": 15, "TempWindow": 5.0})


def _status(code: int, msg: str, status: str = "S") -> dict:
    return {"Code": code, "Description": DESCRIPTION, "Msg": msg, "STATUS": status,
            "When": int(time.time())}


def _reply(code: int, msg: str, **sections: list[dict]) -> dict:
    return {**sections, "STATUS": [_status(code, msg)], "id": 1}


def _err(code: int, msg: str) -> dict:
    return {"STATUS": [_status(code, msg, "E")], "id": 1}


def _boot_of(miner: EmulatedMiner) -> float:
    """Identifies the running boot of the control board (changes with every reboot and power
    cycle): when it finished booting, on the physics clock."""
    return miner.board_up_at


def _acs(chips: int) -> str:
    """A ``chain_acs`` string as captured: " oooo oooo ... o" (one 'o' per healthy chip)."""
    groups = ["oooo"] * (chips // 4) + (["o" * (chips % 4)] if chips % 4 else [])
    return " " + " ".join(groups)


def _clock_text(seconds: float) -> str:
    """"HH:MM:SS", as the captured ``pools`` report ``Last Share Time``."""
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


class LuxosFamily:
    """LUXminer RPC + the web page pyasic detects. Shared by all LuxOS machines."""

    name = "luxos"
    rpc_port: int | None = 4028
    http_port: int | None = 80

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        """``clock`` times session expiry in real seconds (clients hold sessions in real time,
        whatever the emulator's time scale); ATM runs on the physics clock (scaled)."""
        self._clock = clock
        self._ladders: dict[str, list[Profile]] = {}

    # ------------------------------------------------------------------------ entry points
    def handle_http(self, miner: EmulatedMiner, request: HttpRequest) -> HttpResponse:
        if request.method in ("GET", "HEAD") and request.path in ("/", "/index.html"):
            return HttpResponse.text(HTML.format(version=LUXMINER_VERSION),
                                     content_type="text/html; charset=utf-8")
        return HttpResponse.text("Not Found", status=404)

    def handle_rpc(self, miner: EmulatedMiner, request: bytes) -> bytes:
        try:
            req = json.loads(request.rstrip(b"\0 \r\n").decode("utf-8"))
            cmd = str(req["command"])
            param = req.get("parameter", "")
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            return self._dump(_err(23, "Invalid JSON"))
        params = [] if param in ("", None) else str(param).split(",")
        st = self._state(miner)
        self._atm_tick(miner, st)
        if "+" in cmd:
            reading = miner.read()
            joined = {c: [self._command(miner, st, c, [], reading)] for c in cmd.split("+")}
            return self._dump({**joined, "id": 1})
        return self._dump(self._command(miner, st, cmd, params, miner.read()))

    def control_view(self, miner: EmulatedMiner) -> dict:
        """What GET /miners adds for a LuxOS machine: the active profile, ATM, curtailment,
        the firmware version, and whether a session is live."""
        st = self._state(miner)
        self._atm_tick(miner, st)
        r = miner.read()
        prof = self._find_profile(miner, st.profile)
        return {
            "profile": st.profile,
            "profile_step": prof.step if prof else None,
            "profile_w": prof.watts if prof else None,
            "atm": bool(st.atm.get("Enabled")),
            "atm_steps": st.atm_steps,
            "curtail_mode": "Sleep" if self._curtailed(miner, st, r) else "None",
            "session_active": bool(self._active_session(miner, st, r)),
            "firmware_version": LUXMINER_VERSION,
        }

    @staticmethod
    def _dump(payload: dict) -> bytes:
        return json.dumps(payload).encode("utf-8")

    # ---------------------------------------------------------------------------- state
    def _state(self, miner: EmulatedMiner) -> LuxState:
        st = miner.firmware_state.get(STATE_KEY)
        if st is None:
            st = LuxState()
            if miner.firmware_state.get(ATM_KEY) is False:
                st.atm["Enabled"] = False
            # A machine configured with a power limit (fleet file) runs the profile under it.
            if miner.power_limit_w is not None:
                ladder = self._profiles(miner)
                fitting = [p for p in ladder if p.watts <= miner.power_limit_w] or ladder[:1]
                st.profile = fitting[-1].name
                st.profile_set_at = miner.clock()
            miner.firmware_state[STATE_KEY] = st
        return st

    def _profiles(self, miner: EmulatedMiner) -> list[Profile]:
        key = f"{miner.spec.model}/{miner.spec.power_w}/{miner.spec.hashrate_ths}"
        if key not in self._ladders:
            self._ladders[key] = profiles_for(miner.spec)
        return self._ladders[key]

    def _find_profile(self, miner: EmulatedMiner, name: str) -> Profile | None:
        """By name, or by position relative to the default ("+1", "-2"), as LuxOS takes it."""
        ladder = self._profiles(miner)
        if name[:1] in "+-" and name[1:].isdigit():
            step = int(name)
            return next((p for p in ladder if p.step == step), None)
        return next((p for p in ladder if p.name == name), None)

    def _set_profile(self, miner: EmulatedMiner, st: LuxState, prof: Profile) -> None:
        st.profile = prof.name
        miner.set_power_limit(prof.watts)

    def _active_session(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> str:
        """The live session id, "" if none: sessions expire after a minute unused and die with
        luxminer (a reboot or power cycle of the control board)."""
        if st.session_id and (self._clock() - st.session_used > SESSION_TTL_S
                              or abs(_boot_of(miner) - st.session_boot) > 1e-4):
            st.session_id = ""
        return st.session_id

    def _check_session(self, miner: EmulatedMiner, st: LuxState, params: list[str],
                       r: Reading) -> bool:
        if not params or not params[0] or params[0] != self._active_session(miner, st, r):
            return False
        st.session_used = self._clock()
        return True

    @staticmethod
    def _curtailed(miner: EmulatedMiner, st: LuxState, r: Reading) -> bool:
        """Belief (sleep since the last boot) or physical truth (boards down; a stored
        curtailment brings a rebooted machine back asleep, which the physics shows)."""
        return r.state in ("sleeping", "off") or belief_holds(miner, r, st.curtailed)

    # ------------------------------------------------------------------------------ ATM
    def _atm_tick(self, miner: EmulatedMiner, st: LuxState) -> None:
        """Apply the ATM decisions due since the last look (lazily, like the physics): one
        profile step per ATM_INTERVAL_S at most, on the temperature now."""
        now = miner.clock()
        interval = ATM_INTERVAL_S * max(miner.time_scale, 1e-9)
        if not st.atm.get("Enabled") or st.atm_checked_at is None:
            st.atm_checked_at = now
            return
        due = int((now - st.atm_checked_at) // interval)
        if due <= 0:
            return
        st.atm_checked_at += due * interval
        r = miner.read()
        if r.state != "mining":
            return
        ts = max(miner.time_scale, 1e-9)
        post_ramp_s = 60.0 * float(st.atm.get("PostRampMinutes", 15))
        if (r.uptime_s < 60.0 * float(st.atm.get("StartupMinutes", 15))
                or r.hashing_s < miner.ramp_s + post_ramp_s
                or (now - st.profile_set_at) / ts < post_ramp_s):
            return
        ladder = self._profiles(miner)
        names = [p.name for p in ladder]
        idx = names.index(st.profile) if st.profile in names else STEPS_DOWN
        low = self._bound(miner, st.atm.get("MinProfile"), 0)
        high = self._bound(miner, st.atm.get("MaxProfile"), len(ladder) - 1)
        hottest = max(r.board_temp_c) if r.board_temp_c else 0.0
        hot_from = HOT_C - float(st.atm.get("TempWindow", 5.0))
        start = idx
        for _ in range(due):
            if idx > high or (hottest >= hot_from and idx > low):
                idx -= 1
            elif idx < low or (hottest < hot_from - ATM_COOL_MARGIN_C and idx < high):
                idx += 1
            else:
                break
        if idx != start:
            st.atm_steps += abs(idx - start)
            actor, miner.actor = miner.actor, "firmware"
            try:
                self._set_profile(miner, st, ladder[idx])
            finally:
                miner.actor = actor

    def _bound(self, miner: EmulatedMiner, name: object, default: int) -> int:
        """Ladder index of an ATM bound; ``default`` when unset ("")."""
        prof = self._find_profile(miner, str(name)) if name else None
        return self._profiles(miner).index(prof) if prof is not None else default

    # ------------------------------------------------------------------------- dispatch
    def _command(self, miner: EmulatedMiner, st: LuxState, cmd: str, params: list[str],
                 r: Reading) -> dict:
        if cmd in WRITES:
            if not self._check_session(miner, st, params, r):
                return _err(401, "Invalid session ID")
            return self._write(miner, st, cmd, params[1:])
        if cmd not in READS:
            return _err(14, "Invalid command")
        if cmd == "session":
            return _reply(319, "Session information",
                          SESSION=[{"SessionID": self._active_session(miner, st, r)}])
        if cmd == "logon":
            if self._active_session(miner, st, r):
                return _err(402, "Another session is active")
            st.session_id = "".join(random.choices(string.ascii_letters + string.digits, k=8))
            st.session_used = self._clock()
            st.session_boot = _boot_of(miner)
            return _reply(316, "Session created", SESSION=[{"SessionID": st.session_id}])
        return self._read(miner, st, cmd, params, r)

    def _read(self, miner: EmulatedMiner, st: LuxState, cmd: str, params: list[str],
              r: Reading) -> dict:
        spec = miner.spec
        if cmd == "version":
            return _reply(22, "LUXminer versions", VERSION=[{
                "API": "3.7", "CompileTime": COMPILE_TIME, "LUXminer": LUXMINER_VERSION,
                "Miner": MINER_VERSION, "Type": f"Antminer {spec.model}"}])
        if cmd == "summary":
            return _reply(11, "Summary", SUMMARY=[self._summary(r)])
        if cmd in ("stats", "estats"):
            return _reply(70, "LUXminer stats", STATS=self._stats(miner, st, r))
        if cmd in ("devs", "edevs"):
            return _reply(9, f"{spec.chains} ASC(s)", DEVS=self._devs(miner, st, r))
        if cmd == "devdetails":
            rows = [{"DEVDETAILS": i, "Name": "", "ID": i, "Driver": "bitmain",
                     "Kernel": "", "Model": f"Antminer {spec.model}", "Device Path": "",
                     "Chips": spec.chips_per_chain, "Profile": st.profile}
                    for i in range(spec.chains)]
            return _reply(69, "Device Details", DEVDETAILS=rows)
        if cmd == "pools":
            return _reply(7, f"{len(miner.pools)} Pool(s)", POOLS=self._pools(miner, r))
        if cmd == "groups":
            return _reply(324, "List groups", GROUPS=[{"GROUP": 0, "Name": "default",
                                                       "Quota": 1}])
        if cmd == "config":
            return _reply(33, "LUXminer config", CONFIG=[self._config(miner, st, r)])
        if cmd == "power":
            return _reply(311, "Power usage",
                          POWER=[{"PSU": False, "Watts": self._power_estimate(miner, st, r)}])
        if cmd == "fans":
            fans = [{"FAN": f"FAN{i + 1}", "ID": i, "RPM": rpm,
                     "Speed": min(100, rpm * 100 // 6000)} for i, rpm in enumerate(r.fan_rpm)]
            return _reply(202, f"{len(fans)} Fan(s)", FANS=fans,
                          FANCTRL=[{"MinFans": spec.fans, "PowerOffSpeed": 20}])
        if cmd == "temps":
            return _reply(201, f"{spec.chains} Temp(s)", TEMPS=self._temps(r), METADATA=[{
                "BottomLeft": {"Label": "Board Exhaust (bottom)", "Position": [1, 0]},
                "BottomRight": {"Label": "Board Intake (bottom)", "Position": [1, 1]},
                "TopLeft": {"Label": "Board Exhaust (top)", "Position": [0, 0]},
                "TopRight": {"Label": "Board Intake (top)", "Position": [0, 1]}}])
        if cmd == "tempctrl":
            return _reply(200, "Temperature control", TEMPCTRL=[{
                "Mode": "Auto", "Target": TARGET_C, "Hot": HOT_C, "Dangerous": DANGEROUS_C}])
        if cmd == "profiles":
            return _reply(323, "List profiles",
                          PROFILES=[p.row(st.profile) for p in self._profiles(miner)])
        if cmd == "profileget":
            prof = self._find_profile(miner, params[0] if params else st.profile)
            if prof is None:
                return _err(325, "Profile not found")
            return _reply(322, "Profile", PROFILE=[prof.row(st.profile)])
        if cmd == "atm":
            return _reply(339, "ATM configuration values", ATM=[dict(st.atm)])
        if cmd == "limits":
            ladder = self._profiles(miner)
            return _reply(330, "Limits", LIMITS=[{
                "MinProfile": ladder[0].name, "MaxProfile": ladder[-1].name,
                "FrequencyStepMax": 100, "VoltageStepMax": 1.0}])
        return _reply(78, "Coin", COIN=[{"Hash Method": "sha256", "Current Block Time": 0.0,
                                         "Current Block Hash": "", "LP": True,
                                         "Network Difficulty": 0.0}])

    # -------------------------------------------------------------------------- writes
    def _write(self, miner: EmulatedMiner, st: LuxState, cmd: str, args: list[str]) -> dict:
        if cmd == "logoff":
            st.session_id = ""
            return _reply(317, "Session closed")
        if miner.fault.kind == "lie":
            return self._lie(miner, cmd, args)
        if cmd == "curtail":
            action = args[0] if args else ""
            if action == "sleep":
                miner.sleep()
                miner.sleep_persisted = miner.fault.kind != "ignore_sleep"
                st.curtailed = belief(miner)
                return _reply(335, "Curtailment command sent", CURTAIL=[{"Action": "sleep mode"}])
            if action == "wakeup":
                st.curtailed = None
                miner.sleep_persisted = False
                miner.wake()
                return _reply(335, "Curtailment command sent", CURTAIL=[{"Action": "wake up"}])
            return _err(337, "Invalid curtail action")
        if cmd == "profileset":
            return self._profileset(miner, st, args)
        if cmd == "atmset":
            return self._atmset(miner, st, args)
        if cmd == "ledset":
            if len(args) < 2 or args[0] not in ("red", "green") \
                    or args[1] not in ("on", "off", "blink"):
                return _err(342, "Invalid LED parameters")
            if args[0] == "red":
                st.red_led = args[1]
                miner.led_on = args[1] != "off"
            return _reply(341, "LED set", LED=[{"Color": args[0], "State": args[1]}])
        # rebootdevice / resetminer: luxminer restarts, so the session is gone.
        st.session_id = ""
        if cmd == "rebootdevice":
            miner.reboot_board()  # a curtailed machine boots back asleep (stored curtailment)
            return _reply(307, "Device reboot scheduled")
        if miner.read().state in ("mining", "booting"):  # resetminer: boards re-initialise
            miner.sleep()
            miner.wake()
        return _reply(308, "Miner reset scheduled")

    def _lie(self, miner: EmulatedMiner, cmd: str, args: list[str]) -> dict:
        """The ``lie`` fault: each write answers its success reply and changes nothing (no
        curtailment, profile, ATM setting, LED or restart); malformed ones still fail."""
        if cmd == "curtail":
            action = args[0] if args else ""
            if action not in ("sleep", "wakeup"):
                return _err(337, "Invalid curtail action")
            return _reply(335, "Curtailment command sent", CURTAIL=[
                {"Action": "sleep mode" if action == "sleep" else "wake up"}])
        if cmd == "profileset":
            names = args[1:] if len(args) >= 2 and args[0].isdigit() and int(args[0]) <= 3 \
                else args
            prof = self._find_profile(miner, names[0]) if names else None
            if prof is None:
                return _err(325, "Profile not found")
            return _reply(321, "Profile Set", PROFILE=[{"Board": 0, "FrequencyStep": 5,
                                                        "Profile": prof.name,
                                                        "VoltageStep": 0.05}])
        if cmd == "atmset":
            return _reply(340, "Advanced Thermal Management configuration updated")
        if cmd == "ledset":
            return _reply(341, "LED set", LED=[{"Color": args[0] if args else "red",
                                                "State": args[1] if len(args) > 1 else "on"}])
        if cmd == "rebootdevice":
            return _reply(307, "Device reboot scheduled")
        return _reply(308, "Miner reset scheduled")

    def _profileset(self, miner: EmulatedMiner, st: LuxState, args: list[str]) -> dict:
        # Legacy form "session,board,profile": a board id 0-3 before the name is ignored.
        if len(args) >= 2 and args[0].isdigit() and int(args[0]) <= 3:
            args = args[1:]
        prof = self._find_profile(miner, args[0]) if args else None
        if prof is None:
            return _err(325, "Profile not found")
        if st.atm.get("Enabled"):
            return _err(338, "Cannot set profile while ATM is enabled")
        self._set_profile(miner, st, prof)
        st.profile_set_at = miner.clock()
        return _reply(321, "Profile Set", PROFILE=[{"Board": 0, "FrequencyStep": 5,
                                                    "Profile": prof.name, "VoltageStep": 0.05}])

    def _atmset(self, miner: EmulatedMiner, st: LuxState, args: list[str]) -> dict:
        keys = {"enabled": "Enabled", "startup_minutes": "StartupMinutes",
                "post_ramp_minutes": "PostRampMinutes", "temp_window": "TempWindow",
                "min_profile": "MinProfile", "max_profile": "MaxProfile", "prevent_oc": None}
        update: dict = {}
        prevent_oc = False
        for arg in args:
            key, sep, value = arg.partition("=")
            if not sep or key not in keys:
                return _err(343, f"Invalid ATM parameter: {arg}")
            try:
                if key in ("enabled", "prevent_oc"):
                    if value not in ("true", "false"):
                        raise ValueError(value)
                    parsed: object = value == "true"
                elif key == "temp_window":
                    parsed = float(value)
                elif key in ("startup_minutes", "post_ramp_minutes"):
                    parsed = int(value)
                else:
                    prof = self._find_profile(miner, value) if value else None
                    if value and prof is None:
                        raise ValueError(value)
                    parsed = prof.name if prof is not None else value
            except ValueError:
                return _err(343, f"Invalid ATM value: {arg}")
            if keys[key]:
                update[keys[key]] = parsed
            else:
                prevent_oc = bool(parsed)
        if not update:
            return _err(343, "No ATM parameters")
        was_on = bool(st.atm.get("Enabled"))
        st.atm.update(update)
        if not was_on and st.atm.get("Enabled"):
            st.atm_checked_at = miner.clock()  # ATM starts deciding from now
        if was_on and not st.atm.get("Enabled") and prevent_oc:
            prof = self._find_profile(miner, st.profile)
            if prof is not None and prof.step > 0:  # prevent_oc: back to default when leaving
                self._set_profile(miner, st, self._profiles(miner)[STEPS_DOWN])
        return _reply(340, "Advanced Thermal Management configuration updated")

    # ------------------------------------------------------------------- report builders
    def _power_estimate(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> int:
        """LuxOS estimates the boards' power from the active profile (``PSU: false``: no
        meter): the profile's watts scaled by the hashrate it achieves; 0 with boards off."""
        prof = self._find_profile(miner, st.profile)
        if prof is None or r.hashrate_ths <= 0 or prof.hashrate_ths <= 0:
            return 0
        return round(prof.watts * min(1.2, r.hashrate_ths / prof.hashrate_ths))

    @staticmethod
    def _summary(r: Reading) -> dict:
        ghs = round(r.hashrate_ths * 1000, 2)
        accepted = int(r.hashing_s * r.hashrate_ths / 20.0)
        return {"Accepted": accepted, "Best Share": 32768 if accepted else 0,
                "Device Hardware%": 0.0, "Device Rejected%": 0.0,
                "Difficulty Accepted": accepted * 32768, "Difficulty Rejected": 0,
                "Difficulty Stale": 0, "Discarded": 0, "Elapsed": int(r.uptime_s),
                "Found Blocks": 0, "GHS 15m": ghs, "GHS 1m": ghs, "GHS 24h": ghs,
                "GHS 30m": ghs, "GHS 5m": ghs, "GHS 5s": ghs, "GHS av": ghs,
                "Get Failures": 0, "Getworks": accepted // 2, "Hardware Errors": 0,
                "Last getwork": int(time.time()), "Local Work": 0, "Network Blocks": 0,
                "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Rejected": 0,
                "Remote Failures": 0, "Stale": 0,
                "Total MH": round(ghs * 1000 * r.hashing_s, 4), "Utility": 0.0,
                "Work Utility": 0.0}

    @staticmethod
    def _sensors(exhaust: float, intake: float) -> str:
        """A captured sensor string "47-34-34-47": exhaust, intake, intake, exhaust (integer
        degrees; pyasic averages positions 0 and 3 for the chips, 1 and 2 for the board)."""
        hi, lo = round(exhaust), round(intake)
        return f"{hi}-{lo}-{lo}-{hi}"

    def _stats(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> list[dict]:
        spec = miner.spec
        prof = self._find_profile(miner, st.profile) or self._profiles(miner)[STEPS_DOWN]
        hashing = r.hashrate_ths > 0
        freq = float(prof.frequency) if hashing else 0.0
        ghs = round(r.hashrate_ths * 1000, 2)
        detail: dict = {
            "Calls": 0, "Elapsed": int(r.uptime_s), "GHS 5s": ghs, "GHS av": ghs,
            "ID": "BTM_SOC0", "Max": 0, "Min": 99999999, "Mode": 2, "STATS": 0, "Wait": 0,
            "fan_num": spec.fans, "frequency": prof.frequency if hashing else 0,
            "miner_count": spec.chains, "miner_id": miner.mac.replace(":", "").lower(),
            "miner_version": MINER_VERSION, "no_matching_work": 0, "rate_30m": ghs,
            "rate_unit": "GH", "temp_max": round(max(r.board_temp_c), 1),
            "temp_num": spec.chains, "total rate": round(ghs / max(spec.chains, 1), 2),
            "total_acn": spec.chains * spec.chips_per_chain, "total_freqavg": freq,
            "total_rateideal": round(prof.hashrate_ths * 1000, 2),
        }
        for i, rpm in enumerate(r.fan_rpm, start=1):
            detail[f"fan{i}"] = rpm
        slots = max(4, spec.chains)  # the control board has four chain slots, one left empty
        for n in range(1, slots + 1):
            i = n - 1
            present = i < spec.chains
            detail[f"chain_acn{n}"] = spec.chips_per_chain if present else 0
            detail[f"chain_acs{n}"] = _acs(spec.chips_per_chain) if present else ""
            detail[f"chain_hw{n}"] = 0
            detail[f"chain_rate{n}"] = (f"{r.chain_hashrate_ths[i] * 1000:.2f}" if present
                                        else "0")
            detail[f"freq{n}"] = freq if present else 0.0
            sensors = (self._sensors(r.chip_temp_c[i], r.board_temp_c[i]) if present
                       else "0-0-0-0")
            detail[f"temp_chip{n}"] = sensors
            detail[f"temp_pcb{n}"] = sensors
            detail[f"temp_pic{n}"] = sensors
            if present:
                detail[f"temp{n}"] = round(r.board_temp_c[i], 1)
                detail[f"temp2_{n}"] = round(r.board_temp_c[i], 1)
        head = {"CompileTime": COMPILE_TIME, "Miner": MINER_VERSION,
                "Type": f"Antminer {spec.model}"}
        return [head, detail]

    def _devs(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> list[dict]:
        rows = []
        ramping = r.state == "booting" or miner.ramp_fraction() < 1.0
        nominal = round(miner.spec.hashrate_ths * 1e6 / miner.spec.chains, 1)
        accepted = int(r.hashing_s * r.hashrate_ths / 20.0 / max(miner.spec.chains, 1))
        for i, ths in enumerate(r.chain_hashrate_ths):
            mhs = ths * 1e6
            rows.append({
                "ASC": i, "Accepted": accepted, "Board": "BHB56903", "Connector": f"J{7 + i}",
                "ControllerIPVersionHex": "0x18351835", "ControllerIPVersionStr": "N/A",
                "Device Elapsed": int(r.hashing_s), "Device Hardware%": 0,
                "Device Rejected%": 0, "Diff1 Work": accepted * 32768,
                "Difficulty Accepted": accepted * 32768, "Difficulty Rejected": 0,
                "Enabled": "Y", "Hardware Error MHS 15m": 0, "Hardware Errors": 0, "ID": i,
                "IsRamping": ramping, "IsUserShutdown": False,
                "Last Share Difficulty": 32768 if accepted else 0, "Last Share Pool": 0,
                "Last Share Time": int(time.time()) if accepted else 0,
                "Last Valid Work": int(time.time()) if accepted else 0,
                "MHS 15m": mhs, "MHS 1m": mhs, "MHS 30m": mhs, "MHS 5m": mhs, "MHS 5s": mhs,
                "MHS 60m": mhs, "MHS av": mhs, "Name": "", "Nominal MHS": nominal,
                "Profile": st.profile, "Rejected": 0,
                "SerialNumber": f"{miner.serial}B{i}",
                "Status": "Alive" if r.state == "mining" else "Dead",
                "Temperature": round(r.board_temp_c[i], 1), "Total MH": mhs * r.hashing_s,
                "Utility": 0})
        return rows

    @staticmethod
    def _temps(r: Reading) -> list[dict]:
        rows = []
        for i, board in enumerate(r.board_temp_c):
            exhaust, intake = float(round(r.chip_temp_c[i])), float(round(board))
            rows.append({"BottomLeft": exhaust, "BottomRight": intake, "ID": i, "TEMP": i,
                         "TopLeft": exhaust, "TopRight": intake})
        return rows

    @staticmethod
    def _pools(miner: EmulatedMiner, r: Reading) -> list[dict]:
        rows = []
        for i, pool in enumerate(miner.pools):
            active = i == 0 and bool(pool.get("url"))
            accepted = int(r.hashing_s * r.hashrate_ths / 20.0) if active else 0
            diff = 32768 if active else 0
            url = pool.get("url", "")
            rows.append({
                "Accepted": accepted, "AsicBoost": True, "Bad Work": 0,
                "Best Share": diff if accepted else 0, "Current Block Height": 0,
                "Current Block Version": 536870912 if active else 0,
                "Diff": "32K" if active else "0", "Diff1 Shares": accepted * diff,
                "Difficulty Accepted": accepted * diff, "Difficulty Rejected": 0,
                "Difficulty Stale": 0, "Discarded": 0, "GROUP": 0, "Get Failures": 0,
                "Getworks": accepted // 2, "Has GBT": False, "Has Stratum": True,
                "Has Vmask": True, "Last Share Difficulty": diff if accepted else 0,
                "Last Share Time": _clock_text(1 if accepted else r.uptime_s),
                "Long Pool": "N", "POOL": i, "Pool Rejected%": 0.0, "Pool Stale%": 0.0,
                "Priority": i, "Proxy": "", "Proxy Type": "", "Quota": 1.0, "Rejected": 0,
                "Remote Failures": 0, "Stale": 0, "Status": "Alive" if active else "Dead",
                "Stratum Active": active, "Stratum Difficulty": diff,
                "Stratum URL": url.split("//")[-1], "URL": url,
                "User": pool.get("user", ""), "Work Difficulty": diff, "Works": 0,
            })
        return rows

    def _config(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> dict:
        prof = self._find_profile(miner, st.profile)
        octets = miner.ip.split(".")
        return {
            "ASC Count": miner.spec.chains, "BcastAddr": ".".join([*octets[:3], "255"]),
            "ControlBoardType": "cvitek", "Cooling": "Air",
            "CurtailMode": "Sleep" if self._curtailed(miner, st, r) else "None",
            "DHCP": True, "DNS Servers": "", "Device Code": "",
            "FPGABuildIdHex": "0x18351835", "FPGABuildIdStr": "2018-35-18 35:00",
            "FeeStatus": "Ok", "Gateway": ".".join([*octets[:3], "1"]), "GreenLed": "auto",
            "Hostname": miner.hostname, "Hotplug": "None", "IPAddr": miner.ip,
            "ImmersionMode": False, "IsAtmEnabled": bool(st.atm.get("Enabled")),
            "IsPowerSupplyOn": r.state in ("mining", "booting"), "IsSingleVoltage": True,
            "IsTuning": False, "Log Interval": 0, "LogFileLevel": "info",
            "MACAddr": miner.mac.lower(), "Model": f"Antminer {miner.spec.model}",
            "NameplateTHS": miner.spec.hashrate_ths, "Netmask": "255.255.255.0",
            "OS": "LuxOS", "PGA Count": 0, "PSUHwVersion": "75", "PSULabel": "APW121215e",
            "Pool Count": len(miner.pools), "Profile": st.profile,
            "ProfileStep": str(prof.step if prof else 0), "RedLed": st.red_led,
            "SerialNumber": miner.serial, "Strategy": "Failover", "SystemStatus": "Normal",
            "UpdateOnStartup": "off", "UpdateOnTimeout": "off", "UpdateOnUser": "full",
            "UpdateSource": "https://storage.googleapis.com/luxor-firmware/stable",
            "UpdateTimeout": 60,
        }
