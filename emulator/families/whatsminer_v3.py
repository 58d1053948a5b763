"""MicroBT Whatsminer firmware of either API generation; API v3 (port 4433) as pyasic 0.79's
``BTMinerV3`` speaks it, for firmware dated after 2024-11.

Which generation a machine runs is per miner (``miner.api``, from the fleet file; ``--count``
fleets put every M50 on v3). A v2 machine is today's ``WhatsminerFamily`` unchanged. A v3
machine keeps answering the v2 *reads* on 4028 -- that is how pyasic finds it: ``devdetails``
says btminer, ``get_version``'s ``fw_ver`` dates from after 2024-11, so ``BTMiner.__new__``
injects ``BTMinerV3`` -- but its v2 *writes* are refused ("basically completely broken",
pyasic#363), and everything that changes the machine goes through API v3:

* framing: 4-byte little-endian length + JSON, both ways (``emulator/framed.py``);
* reads ``{"cmd": "get.device.info" | "get.miner.status", "param": ...}`` answer
  ``{"code": 0, "msg": {...}, "desc": cmd, "when": unix}`` in the shape and types of
  ``shared/firmware-captures/whatsminer/v3`` (a real M60S, firmware 20251209.16.Rel2, API 3.0.2);
* writes ``{"cmd": "set.*", "param", "ts", "account": "super", "token"}`` where ``token`` is the
  first 8 characters of ``base64(sha256(cmd + password + salt + ts))`` (Whatsminer API v3
  "Token Generation"; pyasic ``BTMinerV3RPCAPI.send_command``). The password is the machine's
  (``miner.effective_password``: the site's, else the factory ``admin``); pyasic's own default
  is ``super``, so a client must be told the password. A wrong one gets code -1.

Field behaviour (firmware-behaviour.md), each on by default:

* **Write API**: off until the operator changes the admin password and switches the API on
  (the v2.0.5 document's rule; v3 firmware reports the switch as ``system.apiswitch`` in
  ``get.device.info``, "1" on the captured M60S). Off (the factory password, or
  ``write_api = false``): ``apiswitch`` "0" and every ``set.`` command is refused with code
  ``WRITE_DISABLED_CODE`` and v2's ``can't access write cmd`` before its token is looked at.
* **Tokens**: the salt a client fetches before writing (``get.device.info`` with param
  ``salt``, what pyasic's ``get_salt`` sends once per RPC object) is the v3 token: at most
  ``TOKEN_LIMIT`` per client IP in ``TOKEN_WINDOW_S`` real seconds, and at most
  ``MAX_CLIENT_IPS`` client IPs holding live ones, then code 136 "token over max times" (API
  v2.0.5: "supports max 16 IP clients, one IP can get 32 tokens, a token keepalive time is 30
  minutes").
  A client that keeps its pyasic objects spends one; one that rebuilds them spends one each.
  The window is real time: a client's request rate does not follow ``--time-scale``.
* **power_off** (``set.miner.service stop``) stops btminer: ``get.miner.status`` answers
  ``msg: "btminer process is down err"`` (pyasic PR#416) and ``get.device.info`` carries that
  text as its ``error-code`` (pyasic's BTMinerV3 tests); ``start`` boots the hash boards and
  they ramp to full power over ``RAMP_S`` (HashSource: 6-10 minutes), both scaled.
* **power limit** above the nameplate is refused (API document: "cannot be higher than the
  ordinary power of the machine"); an accepted one restarts btminer -- nothing answers for
  ``BTMINER_RESTART_S`` (scaled), then the boards boot and ramp -- unless the machine has
  "Power Fast Boot" (``fast_boot = true``, 2025 firmware), which applies it in place.
"""

from __future__ import annotations

import base64
import hashlib
import json
import string
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from curtaild.emulator.families.whatsminer import (
    DEVDETAILS_MODEL,
    LOCAL_CLIENT,
    MAX_CLIENT_IPS,
    NOMINAL_FREQ_MHZ,
    WRITE_DISABLED_MSG,
    WhatsminerFamily,
    belief,
    belief_holds,
)
from curtaild.emulator.families.whatsminer import FW_VERSION as FW_VERSION_V2
from curtaild.emulator.families.whatsminer import _error as _v2_error
from curtaild.emulator.physics import EmulatedMiner, Reading

V3_PORT = 4433
#: Default firmware of a v3 machine: an M50 on API 3.0.2 seen in the field (matroskin's
#: example reply); pyasic picks BTMinerV3 for any date after 2024-11.
FW_VERSION_V3 = "20250915.16.Rel2"
API_VERSION_V3 = "3.0.2"
#: pyasic's rule (``BTMiner.__new__``): firmware dated after this speaks API v3.
V3_SINCE = (2024, 11, 0)
TOKEN_LIMIT = 32
TOKEN_WINDOW_S = 30 * 60.0
#: Emulated seconds btminer is silent while it restarts to apply a limit (before --time-scale).
BTMINER_RESTART_S = 30.0
#: Emulated seconds from the end of a boot to full power for a v3 machine (HashSource: 6-10
#: minutes after power_on).
RAMP_S = 480.0
DOWN_MSG = "btminer process is down err"
#: What a ``set.`` command gets while the write API is off. Modelled, not captured: no source
#: we have shows v3 firmware's answer; the text is API v2's for the same refusal.
WRITE_DISABLED_CODE = -4
#: The ``set.`` commands this firmware implements (the ``lie`` fault acknowledges these).
V3_WRITES = ("set.miner.service", "set.miner.power_limit", "set.system.reboot",
             "set.system.led")
SERVICE_VALUES = ("start", "stop", "restart")
_SALT_CHARS = string.ascii_letters + string.digits


def is_v3(miner: EmulatedMiner) -> bool:
    return miner.api == "v3"


def firmware_date(version: str) -> tuple[int, int, int] | None:
    """(year, month, day) of a btminer version such as "20250915.16.Rel2", read the way pyasic
    reads it (first eight characters); None if it is not a date."""
    try:
        return int(version[0:4]), int(version[4:6]), int(version[6:8])
    except ValueError:
        return None


def api_for_version(version: str) -> str | None:
    """The API generation pyasic 0.79 would speak to this firmware ("v3" after 2024-11)."""
    date = firmware_date(version)
    if date is None:
        return None
    return "v3" if date > V3_SINCE else "v2"


def v3_token(cmd: str, password: str, salt: str, ts: int) -> str:
    """What a client must send with ``cmd`` at time ``ts`` (Whatsminer API v3)."""
    digest = hashlib.sha256(f"{cmd}{password}{salt}{ts}".encode()).digest()
    return base64.b64encode(digest).decode("ascii")[:8]


def _reply(code: int, msg: Any, desc: str) -> dict:
    return {"code": code, "msg": msg, "desc": desc, "when": int(time.time())}


class BtminerFamily(WhatsminerFamily):
    """Every Whatsminer: API v2 only (firmware before 2024-11) or API v3 beside v2 reads."""

    name = "whatsminer"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 token_limit: int = TOKEN_LIMIT, token_window_s: float = TOKEN_WINDOW_S,
                 max_client_ips: int = MAX_CLIENT_IPS, **kwargs: Any) -> None:
        """``clock`` (real seconds) times the token window; ``token_limit``,
        ``token_window_s`` and ``max_client_ips`` are the firmware's (tests shorten them)."""
        super().__init__(clock=clock, max_client_ips=max_client_ips, **kwargs)
        self.token_limit = token_limit
        self.token_window_s = token_window_s

    # ------------------------------------------------------------------------- ports
    def ports_for(self, miner: EmulatedMiner) -> list[tuple[int, str]]:
        ports = [(4028, "rpc")]
        if is_v3(miner):
            ports.append((V3_PORT, "framed"))
        return ports

    @staticmethod
    def fw_version(miner: EmulatedMiner) -> str:
        if miner.firmware_version:
            return miner.firmware_version
        return FW_VERSION_V3 if is_v3(miner) else FW_VERSION_V2

    # ------------------------------------------------------------------ per-machine state
    def _v3(self, miner: EmulatedMiner) -> dict:
        return miner.firmware_state.setdefault(
            "whatsminer_v3", {"salts": {}, "issued": {}, "refused": {}})

    def _silent(self, miner: EmulatedMiner) -> bool:
        """btminer is restarting (after a power limit): nothing answers."""
        return miner.clock() < self._v3(miner).get("silent_until", 0.0)

    def _down(self, miner: EmulatedMiner, r: Reading) -> bool:
        """btminer stopped: by ``set.miner.service stop`` (a belief that lasts until something
        physical happens, so an ``ignore_sleep`` machine says so while it hashes), or hash
        boards asleep by any other means (the operator's WhatsMinerTool)."""
        return r.state == "sleeping" or belief_holds(miner, r, self._v3(miner).get("stopped"))

    def process(self, miner: EmulatedMiner) -> str:
        """running | restarting | off: what btminer is doing, for the control API."""
        if (self._silent(miner) if is_v3(miner) else self.restarting(miner)):
            return "restarting"
        r = miner.read()
        if r.state == "off":
            return "off"
        off = self._down(miner, r) if is_v3(miner) else self._mining_off(miner, r)
        return "off" if off else "running"

    def control_view(self, miner: EmulatedMiner) -> dict:
        """What GET /miners adds for a Whatsminer: API generation, firmware, btminer process,
        and (v3) the tokens handed out per client IP -- the figure a test of curtaild's token
        economy reads."""
        view: dict[str, Any] = {"api": miner.api or "v2",
                                "firmware_version": self.fw_version(miner),
                                "process": self.process(miner),
                                "fast_boot": miner.fast_boot,
                                "write_api": self.write_api(miner)}
        if not is_v3(miner):
            # API v2: the firmware generation, get_token per client IP
            view["legacy_api"] = self.is_legacy(miner)
            view["api_tokens"] = self.token_view(miner)
        if is_v3(miner):
            st = self._v3(miner)
            now = self._clock()
            view["api_tokens"] = {
                "issued": dict(st["issued"]),
                "live": {ip: sum(1 for t in q if now - t < self.token_window_s)
                         for ip, q in st["salts"].items()},
                "refused": dict(st["refused"]),
                "limit": self.token_limit, "window_s": self.token_window_s,
                "max_client_ips": self.max_client_ips,
            }
        return view

    # -------------------------------------------------------------------- port 4028 (v2)
    def handle_rpc(self, miner: EmulatedMiner, request: bytes,
                   client_ip: str = LOCAL_CLIENT) -> bytes:
        if not is_v3(miner):
            return super().handle_rpc(miner, request, client_ip)
        if self._silent(miner):
            return b""  # btminer restarting: the connection closes unanswered
        try:
            req = json.loads(request.rstrip(b"\0 \r\n").decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            req = None
        if isinstance(req, dict) and "enc" in req:
            # Firmware after 2024-11 broke the v2 write API (pyasic#363): writes are v3's.
            return self._dump(_v2_error(45, "Permission denied"))
        return super().handle_rpc(miner, request, client_ip)

    # -------------------------------------------------------------------- port 4433 (v3)
    def handle_framed(self, miner: EmulatedMiner, request: bytes,
                      client_ip: str) -> bytes | None:
        """One v3 request (the frame's body); the reply body, or None for no answer."""
        if not is_v3(miner) or self._silent(miner):
            return None
        try:
            req = json.loads(request.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            return self._dump(_reply(-1, "invalid json", ""))
        cmd = req.get("cmd")
        if not isinstance(cmd, str) or not cmd:
            return self._dump(_reply(-2, "invalid command", ""))
        if cmd.startswith("set."):
            reply = self._v3_write(miner, cmd, req)
        elif cmd == "get.device.info":
            reply = self._v3_device_info(miner, req.get("param"), client_ip)
        elif cmd == "get.miner.status":
            reply = self._v3_miner_status(miner, req.get("param"))
        elif cmd == "get.miner.setting":
            reply = _reply(0, self._v3_miner_setting(miner), cmd)
        else:
            reply = _reply(-2, "invalid command", cmd)
        return self._dump(reply)

    # ---------------------------------------------------------------------------- salt
    def v3_salt(self, miner: EmulatedMiner) -> str:
        """The machine's salt: fixed per machine, as the v3 document describes it ("a unique
        salt value"), and as pyasic assumes (it fetches it once per RPC object)."""
        digest = hashlib.sha256(f"v3/{miner.serial}/{miner.mac}".encode()).digest()
        return "".join(_SALT_CHARS[b % len(_SALT_CHARS)] for b in digest[:8])

    def _v3_live_salts(self, miner: EmulatedMiner) -> dict[str, deque]:
        """Client IP -> issue times of its salts still inside the window (others dropped)."""
        salts: dict[str, deque] = self._v3(miner)["salts"]
        now = self._clock()
        for ip in list(salts):
            issued = salts[ip]
            while issued and now - issued[0] >= self.token_window_s:
                issued.popleft()
            if not issued:
                del salts[ip]
        return salts

    def _v3_issue_salt(self, miner: EmulatedMiner, client_ip: str) -> dict:
        st = self._v3(miner)
        now = self._clock()
        live = self._v3_live_salts(miner)
        issued = live.get(client_ip)
        # "one IP can get 32 tokens", "max 16 IP clients" (API v2.0.5)
        if (miner.fault.kind == "token_exhaustion"
                or (issued is not None and len(issued) >= self.token_limit)
                or (issued is None and len(live) >= self.max_client_ips)):
            st["refused"][client_ip] = st["refused"].get(client_ip, 0) + 1
            return _reply(136, "token over max times", "get.device.info")
        issued = live.setdefault(client_ip, deque())
        issued.append(now)
        st["issued"][client_ip] = st["issued"].get(client_ip, 0) + 1
        return _reply(0, {"salt": self.v3_salt(miner)}, "get.device.info")

    # --------------------------------------------------------------------------- reads
    def _v3_device_info(self, miner: EmulatedMiner, param: object, client_ip: str) -> dict:
        if param == "salt":
            return self._v3_issue_salt(miner, client_ip)
        r = miner.read()
        info = self._v3_device_sections(miner, r)
        if param is None or param == "":
            return _reply(0, info, "get.device.info")
        if isinstance(param, str) and param in info:
            return _reply(0, {param: info[param]}, "get.device.info")
        return _reply(-2, "invalid param", "get.device.info")

    def _v3_device_sections(self, miner: EmulatedMiner, r: Reading) -> dict:
        spec = miner.spec
        model = DEVDETAILS_MODEL.get(spec.model, f"{spec.model}_V10")
        board_ghs = [int(spec.hashrate_ths * 1000 / spec.chains * (1 + 0.02 * ((i % 3) - 1)))
                     for i in range(spec.chains)]
        down = self._down(miner, r)
        miner_section: dict[str, Any] = {
            "board-num": str(spec.chains),
            **{f"chipdata{i}": f"{model.split('_')[-1]}EC37{i}-2426 BINVE6-1978{i:02d}A"
               for i in range(spec.chains)},
            "detect-hash-rate": ":".join(str(g) for g in board_ghs),
            "fast-boot": "enable" if miner.fast_boot else "disable",
            "hash-board": model.split("_")[-1][1:],
            "hash-percent": "0",
            "miner-sn": miner.serial,
            **{f"pcbsn{i}": f"{miner.serial}B{i}" for i in range(spec.chains)},
            "pool-strategy": "FAILOVER",
            "type": model,
            "working": "false" if down or r.state == "off" else "true",
        }
        info: dict[str, Any] = {
            "miner": miner_section,
            "network": {
                "dns": ".".join([*miner.ip.split(".")[:3], "1"]),
                "gateway": ".".join([*miner.ip.split(".")[:3], "1"]),
                "hostname": "WhatsMiner", "ip": miner.ip, "mac": miner.mac.upper(),
                "netmask": "255.255.255.0", "proto": "dhcp",
            },
            "power": {
                "fanspeed": self._psu_fan(r), "hwversion": "RT0159", "mode": "1",
                "model": "P221B", "sn": f"P{miner.serial}", "swversion": "230224.220429",
                "type": "P221B", "vendor": "1",
            },
            "salt": self.v3_salt(miner),
            "system": {
                "api": API_VERSION_V3, "apiswitch": "1" if self.write_api(miner) else "0",
                "control-board-version": "CB6V10",
                "fwversion": self.fw_version(miner),
                "ledstatus": "manual" if miner.led_on else "auto", "platform": "H616",
            },
        }
        if down:
            info["error-code"] = DOWN_MSG
        return info

    def _v3_miner_status(self, miner: EmulatedMiner, param: object) -> dict:
        desc = "get.miner.status"
        if param not in ("summary", "edevs", "pools"):
            return _reply(-2, "invalid param", desc)
        r = miner.read()
        if self._down(miner, r):
            return _reply(-1, DOWN_MSG, desc)
        if param == "summary":
            return _reply(0, {"summary": self._v3_summary(miner, r)}, desc)
        if param == "edevs":
            return _reply(0, {"edevs": self._v3_edevs(miner, r)}, desc)
        # "id": pyasic 0.79 sorts v3 pools by it (PoolConfig.from_btminer_v3); the asic-rs
        # capture, whose numbers look edited, lacks it.
        rows = [{"account": p.get("user", ""), "id": i, "pool-priority": i, "status": "alive",
                 "stratum-active": i == 0 and r.hashrate_ths > 0, "url": p.get("url", "")}
                for i, p in enumerate(miner.pools)]
        return _reply(0, {"pools": rows}, desc)

    @staticmethod
    def _v3_miner_setting(miner: EmulatedMiner) -> dict:
        """``get.miner.setting`` as API 3.0.2 documents it (fields as matroskin reads them)."""
        limit = miner.power_limit_w if miner.power_limit_w is not None else miner.spec.power_w
        return {"power-limit": int(limit), "upfreq-speed": 0, "power-mode": miner.mode,
                "fast-boot": "enable" if miner.fast_boot else "disable", "target-freq": 0}

    def _v3_freq(self, miner: EmulatedMiner, r: Reading) -> int:
        nominal = NOMINAL_FREQ_MHZ.get(miner.spec.model, 600)
        return int(nominal * r.hashrate_ths / miner.spec.hashrate_ths) if r.hashrate_ths else 0

    def _v3_summary(self, miner: EmulatedMiner, r: Reading) -> dict:
        spec = miner.spec
        chip = r.chip_temp_c or [r.inlet_temp_c]
        fans = [*r.fan_rpm, 0, 0]
        ths = round(r.hashrate_ths, 3)
        limit = miner.power_limit_w if miner.power_limit_w is not None else spec.power_w
        at_speed = r.state == "mining" and miner.ramp_fraction() >= 1.0
        return {
            "Debug": "",
            "board-temperature": [float(t) for t in r.board_temp_c],
            "bootup-time": int(spec.boot_s + miner.ramp_s),
            "chip-temp-avg": round(sum(chip) / len(chip), 1),
            "chip-temp-max": float(max(chip)), "chip-temp-min": float(min(chip)),
            "elapsed": int(r.uptime_s),
            "environment-temperature": float(r.inlet_temp_c),
            "factory-hash": round(spec.hashrate_ths, 3),
            "fan-speed-in": int(fans[0]), "fan-speed-out": int(fans[1]),
            "freq-avg": self._v3_freq(miner, r),
            "hash-15min": ths, "hash-1min": ths, "hash-average": ths, "hash-realtime": ths,
            "power-5min": float(r.power_w), "power-limit": int(limit),
            "power-rate": round(r.power_w / r.hashrate_ths, 1) if r.hashrate_ths else 0.0,
            "power-realtime": float(r.power_w),
            "up-freq-finish": 1 if at_speed else 0,
        }

    def _v3_edevs(self, miner: EmulatedMiner, r: Reading) -> list[dict]:
        spec = miner.spec
        rows = []
        for i, ths in enumerate(r.chain_hashrate_ths):
            chip = r.chip_temp_c[i]
            rows.append({
                "chip-temp-avg": float(chip), "chip-temp-max": round(chip + 3.0, 1),
                "chip-temp-min": round(chip - 3.0, 1), "effective-chips": spec.chips_per_chain,
                "factory-hash": round(spec.hashrate_ths / spec.chains, 2),
                "freq": float(self._v3_freq(miner, r)), "hash-average": round(ths, 2),
                "hash-realtime": round(ths, 2), "id": i, "status": "alive",
            })
        return rows

    # -------------------------------------------------------------------------- writes
    def _v3_write(self, miner: EmulatedMiner, cmd: str, req: dict) -> dict:
        if not self.write_api(miner):
            # The API switch is off: refused before the token is looked at.
            return _reply(WRITE_DISABLED_CODE, WRITE_DISABLED_MSG, cmd)
        ts, token, account = req.get("ts"), req.get("token"), req.get("account")
        if account != "super" or isinstance(ts, bool) or not isinstance(ts, int) \
                or not isinstance(token, str):
            return _reply(-1, "invalid token", cmd)
        password = miner.effective_password or ""
        if token != v3_token(cmd, password, self.v3_salt(miner), ts):
            return _reply(-1, "invalid token", cmd)  # a wrong password or salt
        param = req.get("param")
        if miner.fault.kind == "lie" and cmd in V3_WRITES:
            return _reply(0, "ok", cmd)  # the ``lie`` fault: acknowledged, nothing changed
        if cmd == "set.miner.service":
            return self._v3_service(miner, param)
        if cmd == "set.miner.power_limit":
            return self._v3_power_limit(miner, param)
        if cmd == "set.system.reboot":
            ok = miner.reboot_board()  # the control board: silent for its boot time
            return _reply(0, "ok", cmd) if ok else _reply(-1, "reboot failed", cmd)
        if cmd == "set.system.led":
            miner.led_on = param != "auto"
            return _reply(0, "ok", cmd)
        return _reply(-2, "invalid command", cmd)

    def _v3_service(self, miner: EmulatedMiner, param: object) -> dict:
        cmd = "set.miner.service"
        if param not in SERVICE_VALUES:
            return _reply(-2, "invalid param", cmd)
        st = self._v3(miner)
        if param == "stop":
            miner.power_off()
            st["stopped"] = belief(miner)
        elif param == "start":
            st.pop("stopped", None)
            miner.power_on()
        else:
            self._v3_restart(miner)
        return _reply(0, "ok", cmd)

    def _v3_power_limit(self, miner: EmulatedMiner, param: object) -> dict:
        cmd = "set.miner.power_limit"
        try:
            if isinstance(param, bool):
                raise ValueError("a boolean")
            watts = float(str(param))
        except ValueError:
            return _reply(-2, "invalid param", cmd)
        if not watts > 0:
            return _reply(-2, "invalid param", cmd)
        if watts > miner.spec.power_w:
            # "cannot be higher than the ordinary power of the machine" (API document)
            return _reply(-2, "power limit higher than rated power", cmd)
        if not miner.set_power_limit(watts):
            return _reply(-2, "invalid param", cmd)
        if not miner.fast_boot:
            self._v3_restart(miner)  # "the miner will reboot after this is set"
        return _reply(0, "ok", cmd)

    def _v3_restart(self, miner: EmulatedMiner) -> None:
        """btminer restarts: silent for its restart time, then the boards boot (and ramp);
        a stopped btminer comes back stopped."""
        st = self._v3(miner)
        st["silent_until"] = miner.clock() + BTMINER_RESTART_S * miner.time_scale
        if miner.read().state != "off":
            miner.reboot()
