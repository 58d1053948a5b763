"""Luxor LuxOS on Antminer hardware: the LUXminer RPC on 4028 and the web UI on 80.

pyasic 0.79 detects LuxOS by "LUXminer" in the ``version`` reply (or "Luxor Firmware" on the
web page) and takes the model from ``VERSION[0].Type`` ("Antminer S19 XP" -> LUXMinerS19XP).
Reads are cgminer-style and may be joined with "+" (pyasic's ``get_data`` and ``get_config``
send one joined request). Writes need a *session*: ``session`` returns the active one (or "")
and ``logon`` creates one if none is active; the session id is the first parameter of every
write, and a session expires 60 s after it was last used (real seconds) or when luxminer
restarts. Curtailment is ``curtail`` sleep/wakeup; the power knob is the *profile*: a ladder of
frequency steps (25 MHz apart around the nameplate "default"), each with a watts figure that
``profileset`` turns into the physics power limit. ATM (automatic thermal management) must be
off to change profile by hand, which is why pyasic toggles it around ``profileset``.

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

from emulator.families.base import HttpRequest, HttpResponse
from emulator.families.whatsminer import belief, belief_holds
from emulator.models import ModelSpec
from emulator.physics import ALPHA, EmulatedMiner, Reading

LUXMINER_VERSION = "2024.5.1.160616-7ee3b3a0"
SESSION_TTL_S = 60.0  # "Sessions expire automatically after one minute", refreshed on use
#: (default frequency MHz, default voltage V) of the nameplate profile, per reported model.
NOMINAL = {"S19 XP": (495, 13.0), "S19j Pro": (545, 13.4)}
FREQ_STEP_MHZ, VOLT_STEP_V = 25, 0.1
STEPS_DOWN, STEPS_UP = 16, 8  # LuxOS generates 16 underclock and 8 overclock profiles

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

    def row(self) -> dict:
        return {"Profile Name": self.name, "Step": self.step, "Frequency": self.frequency,
                "Voltage": self.voltage, "Watts": self.watts,
                "Hashrate": round(self.hashrate_ths, 2), "IsTuned": False, "IsDynamic": False}


def profiles_for(spec: ModelSpec) -> list[Profile]:
    """The built-in ladder, lowest first. Hashrate scales with frequency and the watts are
    what the physics draws for that hashrate (hashrate ~ power**ALPHA above idle), so setting
    a profile's watts as power limit yields the profile's hashrate. Steps outside the power
    range the machine accepts are not offered."""
    freq0, volt0 = NOMINAL.get(spec.model, (500, 13.0))
    out = []
    for step in range(-STEPS_DOWN, STEPS_UP + 1):
        freq = freq0 + step * FREQ_STEP_MHZ
        frac = freq / freq0
        watts = spec.idle_power_w + frac ** (1.0 / ALPHA) * (spec.power_w - spec.idle_power_w)
        if step and not spec.min_power_w <= watts <= spec.max_power_w:
            continue
        name = "default" if step == 0 else f"{freq}MHz"
        out.append(Profile(name, step, freq, round(volt0 + step * VOLT_STEP_V, 2),
                           round(spec.power_w if step == 0 else watts),
                           spec.hashrate_ths * frac))
    return out


@dataclass
class LuxState:
    """What luxminer keeps for itself (on ``miner.firmware_state["luxos"]``)."""

    profile: str = "default"
    session_id: str = ""
    session_used: float = 0.0
    red_led: str = "off"
    curtailed: tuple[float, str] | None = None  # belief: the API put it to sleep (see belief)
    atm: dict = field(default_factory=lambda: {
        "Enabled": True, "MaxProfile": "", "MinProfile": "", "PostRampMinutes": 15,
        "StartupMinutes": 15, "TempWindow": 5.0})


def _status(code: int, msg: str, status: str = "S") -> dict:
    return {"Code": code, "Description": f"LUXminer {LUXMINER_VERSION}", "Msg": msg,
            "STATUS": status, "When": int(time.time())}


def _reply(code: int, msg: str, **sections: list[dict]) -> dict:
    return {**sections, "STATUS": [_status(code, msg)], "id": 1}


def _err(code: int, msg: str) -> dict:
    return {"STATUS": [_status(code, msg, "E")], "id": 1}


class LuxosFamily:
    """LUXminer RPC + the web page pyasic detects. Shared by all LuxOS machines."""

    name = "luxos"
    rpc_port: int | None = 4028
    http_port: int | None = 80

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        """``clock`` times session expiry in real seconds (clients hold sessions in real time,
        whatever the emulator's time scale)."""
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
        if "+" in cmd:
            reading = miner.read()
            joined = {c: [self._command(miner, c, [], reading)] for c in cmd.split("+")}
            return self._dump({**joined, "id": 1})
        return self._dump(self._command(miner, cmd, params, miner.read()))

    @staticmethod
    def _dump(payload: dict) -> bytes:
        return json.dumps(payload).encode("utf-8")

    # ---------------------------------------------------------------------------- state
    def _state(self, miner: EmulatedMiner) -> LuxState:
        st = miner.firmware_state.get("luxos")
        if st is None:
            # A machine configured with a power limit (fleet file) runs the profile under it.
            st = LuxState()
            if miner.power_limit_w is not None:
                ladder = self._profiles(miner)
                fitting = [p for p in ladder if p.watts <= miner.power_limit_w] or ladder[:1]
                st.profile = fitting[-1].name
            miner.firmware_state["luxos"] = st
        return st

    def _profiles(self, miner: EmulatedMiner) -> list[Profile]:
        key = f"{miner.spec.model}/{miner.spec.power_w}/{miner.spec.hashrate_ths}"
        if key not in self._ladders:
            self._ladders[key] = profiles_for(miner.spec)
        return self._ladders[key]

    def _active_session(self, st: LuxState) -> str:
        if st.session_id and self._clock() - st.session_used > SESSION_TTL_S:
            st.session_id = ""
        return st.session_id

    def _check_session(self, st: LuxState, params: list[str]) -> bool:
        if not params or not params[0] or params[0] != self._active_session(st):
            return False
        st.session_used = self._clock()
        return True

    def _curtailed(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> bool:
        """Belief (sleep since the last boot) or physical truth (boards down)."""
        return r.state in ("sleeping", "off") or belief_holds(miner, r, st.curtailed)

    # ------------------------------------------------------------------------- dispatch
    def _command(self, miner: EmulatedMiner, cmd: str, params: list[str], r: Reading) -> dict:
        st = self._state(miner)
        if cmd in WRITES:
            if not self._check_session(st, params):
                return _err(401, "Invalid session ID")
            return self._write(miner, st, cmd, params[1:])
        if cmd not in READS:
            return _err(14, "Invalid command")
        if cmd == "session":
            return _reply(319, "Session information",
                          SESSION=[{"SessionID": self._active_session(st)}])
        if cmd == "logon":
            if self._active_session(st):
                return _err(402, "Another session is active")
            st.session_id = "".join(random.choices(string.ascii_letters + string.digits, k=8))
            st.session_used = self._clock()
            return _reply(316, "Session created", SESSION=[{"SessionID": st.session_id}])
        return self._read(miner, st, cmd, params, r)

    def _read(self, miner: EmulatedMiner, st: LuxState, cmd: str, params: list[str],
              r: Reading) -> dict:
        spec = miner.spec
        if cmd == "version":
            return _reply(22, "LUXminer versions", VERSION=[{
                "API": "3.7", "CompileTime": "Wed May 1 16:06:16 UTC 2024",
                "LUXminer": LUXMINER_VERSION, "Miner": LUXMINER_VERSION.split("-")[0],
                "Type": f"Antminer {spec.model}"}])
        if cmd == "summary":
            return _reply(11, "Summary", SUMMARY=[self._summary(r)])
        if cmd in ("stats", "estats"):
            return _reply(70, "LUXminer stats", STATS=self._stats(miner, st, r))
        if cmd in ("devs", "edevs"):
            return _reply(9, f"{spec.chains} ASC(s)", DEVS=self._devs(miner, st, r))
        if cmd == "devdetails":
            rows = [{"DEVDETAILS": i, "Name": "BC5", "ID": i, "Driver": "bitmain",
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
            return _reply(336, "Power", POWER=[{"Watts": int(r.power_w), "PSU": True}])
        if cmd == "fans":
            fans = [{"FAN": i, "ID": i, "RPM": rpm, "Speed": min(100, rpm * 100 // 6000)}
                    for i, rpm in enumerate(r.fan_rpm)]
            return _reply(202, f"{len(fans)} Fan(s)", FANS=fans,
                          FANCTRL=[{"MinFans": spec.fans, "Mode": "Auto"}])
        if cmd == "temps":
            return _reply(201, f"{spec.chains} Temp(s)", TEMPS=self._temps(r))
        if cmd == "tempctrl":
            return _reply(200, "Temperature control", TEMPCTRL=[{
                "Mode": "Auto", "Target": 75.0, "Hot": 85.0, "Dangerous": 95.0}])
        if cmd == "profiles":
            return _reply(327, "Profiles", PROFILES=[p.row() for p in self._profiles(miner)])
        if cmd == "profileget":
            prof = self._find_profile(miner, params[0] if params else st.profile)
            if prof is None:
                return _err(323, "Profile not found")
            return _reply(322, "Profile", PROFILE=[prof.row()])
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
        if cmd == "curtail":
            action = args[0] if args else ""
            if action == "sleep":
                miner.sleep()
                st.curtailed = belief(miner)
                return _reply(335, "Curtailment command sent", CURTAIL=[{"Action": "sleep mode"}])
            if action == "wakeup":
                st.curtailed = None
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
            miner.reboot()
            return _reply(307, "Device reboot scheduled")
        if miner.read().state in ("mining", "booting"):  # resetminer: boards re-initialise
            miner.sleep()
            miner.wake()
        return _reply(308, "Miner reset scheduled")

    def _find_profile(self, miner: EmulatedMiner, name: str) -> Profile | None:
        return next((p for p in self._profiles(miner) if p.name == name), None)

    def _profileset(self, miner: EmulatedMiner, st: LuxState, args: list[str]) -> dict:
        # Legacy form "session,board,profile": a board id 0-3 before the name is ignored.
        if len(args) >= 2 and args[0].isdigit() and int(args[0]) <= 3:
            args = args[1:]
        prof = self._find_profile(miner, args[0]) if args else None
        if prof is None:
            return _err(323, "Profile not found")
        if st.atm.get("Enabled"):
            return _err(338, "Cannot set profile while ATM is enabled")
        miner.set_power_limit(prof.watts)
        st.profile = prof.name
        return _reply(321, "Profile Set", PROFILE=[{"Board": 0, "FrequencyStep": 5,
                                                    "Profile": prof.name, "VoltageStep": 0.05}])

    def _atmset(self, miner: EmulatedMiner, st: LuxState, args: list[str]) -> dict:
        keys = {"enabled": "Enabled", "startup_minutes": "StartupMinutes",
                "post_ramp_minutes": "PostRampMinutes", "temp_window": "TempWindow",
                "min_profile": "MinProfile", "max_profile": "MaxProfile", "prevent_oc": None}
        update: dict = {}
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
                    if value and self._find_profile(miner, value) is None:
                        raise ValueError(value)
                    parsed = value
            except ValueError:
                return _err(343, f"Invalid ATM value: {arg}")
            if keys[key]:
                update[keys[key]] = parsed
        if not update:
            return _err(343, "No ATM parameters")
        st.atm.update(update)
        return _reply(340, "Advanced Thermal Management configuration updated")

    # ------------------------------------------------------------------- report builders
    @staticmethod
    def _summary(r: Reading) -> dict:
        ghs = round(r.hashrate_ths * 1000, 2)
        accepted = int(r.hashing_s * r.hashrate_ths / 20.0)
        return {"Elapsed": int(r.uptime_s), "GHS 5s": ghs, "GHS av": ghs, "GHS 30m": ghs,
                "Found Blocks": 0, "Getworks": accepted // 4, "Accepted": accepted,
                "Rejected": 0, "Hardware Errors": 0, "Utility": 0.0, "Discarded": 0,
                "Stale": 0, "Get Failures": 0, "Local Work": 0, "Remote Failures": 0,
                "Network Blocks": 0, "Total MH": round(ghs * 1000 * r.hashing_s, 1),
                "Work Utility": 0.0, "Difficulty Accepted": accepted * 65536.0,
                "Difficulty Rejected": 0.0, "Difficulty Stale": 0.0, "Best Share": 0,
                "Device Hardware%": 0.0, "Device Rejected%": 0.0, "Pool Rejected%": 0.0,
                "Pool Stale%": 0.0, "Last getwork": int(time.time())}

    @staticmethod
    def _spread(center: float) -> str:
        """Inlet/inlet/outlet/outlet sensor string ("56-56-70-70"), integer degrees whose
        inlet+outlet mean is ``center`` -- pyasic averages positions [0],[3] (chips) and
        [1],[2] (PCB) of it."""
        lo, hi = round(center) - 7, round(center) + 7
        return f"{lo}-{lo}-{hi}-{hi}"

    def _stats(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> list[dict]:
        spec = miner.spec
        prof = self._find_profile(miner, st.profile) or self._profiles(miner)[0]
        hashing = r.hashrate_ths > 0
        detail: dict = {
            "STATS": 0, "ID": "BC50", "Elapsed": int(r.uptime_s), "Calls": 0, "Wait": 0.0,
            "Max": 0.0, "Min": 99999999.0, "GHS 5s": round(r.hashrate_ths * 1000, 2),
            "GHS av": round(r.hashrate_ths * 1000, 2), "miner_count": spec.chains,
            "frequency": prof.frequency if hashing else 0, "fan_num": spec.fans,
            "temp_num": spec.chains, "rate_unit": "GH",
            "total_rateideal": round(prof.hashrate_ths * 1000, 2),
            "total_freqavg": prof.frequency if hashing else 0,
            "total_acn": spec.chains * spec.chips_per_chain,
            "total_rate": round(r.hashrate_ths * 1000, 2), "no_matching_work": 0,
        }
        for i, rpm in enumerate(r.fan_rpm, start=1):
            detail[f"fan{i}"] = rpm
        for i in range(spec.chains):
            n = i + 1
            detail[f"temp{n}"] = round(r.board_temp_c[i])
            detail[f"temp_pcb{n}"] = self._spread(r.board_temp_c[i])
            detail[f"temp_chip{n}"] = self._spread(r.chip_temp_c[i])
            detail[f"chain_acn{n}"] = spec.chips_per_chain
            detail[f"chain_acs{n}"] = " ".join(["oooo"] * (spec.chips_per_chain // 4))
            detail[f"chain_rate{n}"] = f"{r.chain_hashrate_ths[i] * 1000:.2f}"
            detail[f"chain_rateideal{n}"] = round(prof.hashrate_ths * 1000 / spec.chains, 2)
            detail[f"freq{n}"] = prof.frequency if hashing else 0
            detail[f"chain_hw{n}"] = 0
        head = {"BMMiner": "1.0.0", "Miner": "uart_trans.1.3",
                "CompileTime": "Wed May 1 16:06:16 UTC 2024", "Type": f"Antminer {spec.model}"}
        return [head, detail]

    def _devs(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> list[dict]:
        rows = []
        for i, ths in enumerate(r.chain_hashrate_ths):
            mhs = round(ths * 1e6, 2)
            rows.append({"ASC": i, "Name": "BC5", "ID": i, "Enabled": "Y",
                         "Status": "Alive" if r.state == "mining" else "Dead",
                         "Temperature": r.board_temp_c[i], "MHS av": mhs, "MHS 5s": mhs,
                         "MHS 1m": mhs, "MHS 5m": mhs, "MHS 15m": mhs, "Accepted": 0,
                         "Rejected": 0, "Hardware Errors": 0, "Utility": 0.0,
                         "Last Share Pool": 0, "Last Share Time": 0, "Total MH": 0.0,
                         "Profile": st.profile, "IsRamping": r.state == "booting",
                         "Nominal MHS": round(miner.spec.hashrate_ths * 1e6 / miner.spec.chains,
                                              2)})
        return rows

    @staticmethod
    def _temps(r: Reading) -> list[dict]:
        rows = []
        for i, board in enumerate(r.board_temp_c):
            lo, hi = round(board) - 7, round(board) + 7
            rows.append({"TEMPS": i, "ID": i, "Board": i, "BottomLeft": lo, "BottomRight": hi,
                         "TopLeft": lo, "TopRight": hi})
        return rows

    @staticmethod
    def _pools(miner: EmulatedMiner, r: Reading) -> list[dict]:
        rows = []
        for i, pool in enumerate(miner.pools):
            active = i == 0
            accepted = int(r.hashing_s * r.hashrate_ths / 20.0) if active else 0
            rows.append({
                "POOL": i, "URL": pool.get("url", ""), "Status": "Alive", "Priority": i,
                "Quota": 1, "Long Poll": "N", "Getworks": accepted // 4, "Accepted": accepted,
                "Rejected": 0, "Works": 0, "Discarded": 0, "Stale": 0, "Get Failures": 0,
                "Remote Failures": 0, "User": pool.get("user", ""),
                "Last Share Time": int(time.time()) if accepted else 0, "Diff1 Shares": 0,
                "Proxy Type": "", "Proxy": "", "Difficulty Accepted": accepted * 65536.0,
                "Difficulty Rejected": 0.0, "Difficulty Stale": 0.0,
                "Last Share Difficulty": 65536.0 if accepted else 0.0,
                "Work Difficulty": 65536.0, "Has Stratum": True, "Stratum Active": active,
                "Stratum URL": pool.get("url", "").split("//")[-1].split(":")[0],
                "Stratum Difficulty": 65536.0, "Has Vmask": True, "Has GBT": False,
                "Best Share": 0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Bad Work": 0,
                "Current Block Height": 0, "Current Block Version": 536870912, "GROUP": 0,
            })
        return rows

    def _config(self, miner: EmulatedMiner, st: LuxState, r: Reading) -> dict:
        return {"ASC Count": miner.spec.chains, "PGA Count": 0, "Pool Count": len(miner.pools),
                "Strategy": "Failover", "Log Interval": 5, "Device Code": "", "OS": "LuxOS",
                "Hotplug": "None", "Profile": st.profile, "RedLed": st.red_led,
                "GreenLed": "auto", "MACAddr": miner.mac.lower(), "Hostname": miner.hostname,
                "IPAddr": miner.ip, "Model": f"Antminer {miner.spec.model}",
                "SerialNumber": miner.serial, "IsAtmEnabled": bool(st.atm.get("Enabled")),
                "CurtailMode": "Sleep" if self._curtailed(miner, st, r) else "None"}
