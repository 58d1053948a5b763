"""MicroBT Whatsminer firmware: the btminer API v2 on port 4028, as pyasic 0.79 drives it.

pyasic detects btminer by "btminer"/"bitmicro" in a ``devdetails`` reply, reads the model
from ``DEVDETAILS[0].Model`` ("M50_VH55" -> "M50VH50", last digit zeroed) and picks the API v2
backend (``BTMinerV2``) when ``get_version``'s ``fw_ver`` dates from before 2024-11; so we
report a 2023 firmware. Reads are plain JSON (``{"command": "summary"}``; "a+b" joins the
cgminer-style ones). Writes are *privileged*: the client fetches ``get_token`` (time, salt,
newsalt), derives ``host_passwd_md5 = md5crypt(password, salt)`` and ``host_sign =
md5crypt(host_passwd_md5 + time, newsalt)``, and sends ``{"enc": 1, "data": base64(AES-256-ECB
(json + token))}`` keyed by ``sha256(host_passwd_md5)``; the reply comes back as ``{"enc": ...}``
under the same key. A wrong password or a stale token gets the firmware's plaintext error.

What the firmware *reports* comes from the physics reading; what it *believes* (mining was
switched off by the API) is kept in ``miner.firmware_state`` so that an ``ignore_sleep`` fault
shows up as "mineroff" with hashrate still flowing, as on a misbehaving real machine.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import string
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from passlib.handlers.md5_crypt import md5_crypt

from emulator.families.base import HttpRequest, HttpResponse
from emulator.physics import ALPHA, EmulatedMiner, Reading

#: Before 2024-11-00, so pyasic's ``BTMiner.__new__`` injects ``BTMinerV2`` (API v2).
FW_VERSION = "20230911.12.Rel"
API_VERSION = "2.0.5"
#: ``DEVDETAILS.Model`` per emulated model; pyasic maps these to BTMinerM50VH50 / M30SV10,
#: whose chip counts (105 / 148 per board) match the physics specs.
DEVDETAILS_MODEL = {"M50": "M50_VH55", "M30S": "M30S_V12"}
#: Nominal chip clock (MHz) at nameplate; scaled with hashrate for reporting only.
NOMINAL_FREQ_MHZ = {"M50": 580, "M30S": 600}
TOKEN_TTL_S = 30 * 60  # pyasic caches a token for 30 minutes; the firmware honours as long
MAX_TOKENS = 32  # tokens remembered per machine; older ones are forgotten
_SALT_CHARS = string.ascii_letters + string.digits + "./"

#: Plain (unencrypted) commands that answer in cgminer style and may be joined with "+".
CGMINER_STYLE = ("summary", "devs", "edevs", "pools", "devdetails")
#: Commands that change the machine: accepted only inside an encrypted envelope.
PRIVILEGED = (
    "power_off", "power_on", "reboot", "restart_btminer", "adjust_power_limit",
    "set_low_power", "set_normal_power", "set_high_power", "set_led", "update_pools",
    "update_pwd", "factory_reset", "net_config", "set_target_freq", "set_power_pct",
    "set_power_pct_v2", "pre_power_on", "set_temp_offset", "adjust_upfreq_speed",
    "set_poweroff_cool", "set_fan_zero_speed", "enable_btminer_fast_boot",
    "disable_btminer_fast_boot", "enable_web_pools", "disable_web_pools", "set_hostname",
    "upgrade_firmware",
)


def _now() -> int:
    return int(time.time())


def _flat(code: int, msg: Any, status: str = "S") -> dict:
    """btminer's own replies: a flat STATUS (not the cgminer list)."""
    return {"STATUS": status, "When": _now(), "Code": code, "Msg": msg, "Description": ""}


def _error(code: int, msg: str) -> dict:
    return _flat(code, msg, status="E")


OK_CODE = 131  # "API command OK"


def _ok() -> dict:
    return _flat(OK_CODE, "API command OK")


def _cg(section: str, code: int, msg: str, rows: list[dict]) -> dict:
    """cgminer-style reply, as btminer gives for summary/devs/pools/devdetails."""
    status = {"STATUS": "S", "When": _now(), "Code": code, "Msg": msg, "Description": "btminer"}
    return {"STATUS": [status], section: rows, "id": 1}


def _md5crypt_hash(word: str, salt: str) -> str:
    """The 22-character hash part of ``$1$salt$hash``, as the token derivation uses it."""
    return md5_crypt.using(salt=salt).hash(word).split("$")[3]


@lru_cache(maxsize=4096)
def _passwd_md5(password: str, salt: str) -> str:
    """Cached: md5crypt costs a thousand MD5 rounds and every privileged request needs it."""
    return _md5crypt_hash(password, salt)


def belief(miner: EmulatedMiner) -> tuple[float, str]:
    """Record a firmware belief ("mining is off") against the physics as it is now: the boot
    (when, on the physics clock, it began) and the physical state."""
    r = miner.read()
    return miner.clock() - r.uptime_s * miner.time_scale, r.state


def belief_holds(miner: EmulatedMiner, r: Reading, recorded: tuple[float, str] | None) -> bool:
    """A belief lasts while nothing physical happened since: same boot, same state. So an
    ``ignore_sleep`` machine says "off" while it keeps hashing, but a reboot, a power cycle
    or a wake from elsewhere (the control API) brings the report back to the truth."""
    if recorded is None:
        return False
    boot = miner.clock() - r.uptime_s * miner.time_scale
    return abs(recorded[0] - boot) < 1e-4 and recorded[1] == r.state


def _aes(key_material: str) -> Cipher:
    key = binascii.unhexlify(hashlib.sha256(key_material.encode()).hexdigest())
    return Cipher(algorithms.AES(key), modes.ECB())


def _pad16(raw: bytes) -> bytes:
    return raw + b"\0" * (-len(raw) % 16)


class WhatsminerFamily:
    """btminer API v2. Shared by all Whatsminers; per-machine state lives on the miner."""

    name = "whatsminer"
    rpc_port: int | None = 4028
    http_port: int | None = None

    def __init__(self, *, password: str = "admin", clock: Callable[[], float] = time.monotonic):
        """``password`` is the admin password pyasic assumes; ``clock`` times token expiry in
        real seconds (clients cache tokens in real time, whatever the emulator's time scale)."""
        self._password = password
        self._clock = clock

    # ------------------------------------------------------------------------ entry points
    def handle_rpc(self, miner: EmulatedMiner, request: bytes) -> bytes:
        try:
            req = json.loads(request.rstrip(b"\0 \r\n").decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            return self._dump(_error(23, "invalid JSON message"))
        if "enc" in req:
            return self._privileged(miner, req)
        cmd = str(req.get("cmd") or req.get("command") or "")
        return self._dump(self._plain(miner, cmd))

    def handle_http(self, miner: EmulatedMiner, request: HttpRequest) -> HttpResponse:
        """No web UI is emulated (pyasic drives Whatsminers over RPC only)."""
        return HttpResponse.text("Not Found", status=404)

    @staticmethod
    def _dump(payload: dict) -> bytes:
        return json.dumps(payload).encode("utf-8")

    # ----------------------------------------------------------------------- plain reads
    def _plain(self, miner: EmulatedMiner, cmd: str) -> dict:
        if cmd in PRIVILEGED:
            return _error(45, "Permission denied")
        if "+" in cmd:
            parts = cmd.split("+")
            if not all(p in CGMINER_STYLE for p in parts):
                return _error(14, "invalid cmd")
            reading = miner.read()
            return {p: [self._cgminer(miner, p, reading)] for p in parts} | {"id": 1}
        if cmd in CGMINER_STYLE:
            return self._cgminer(miner, cmd, miner.read())
        if cmd == "get_token":
            return self._get_token(miner)
        if cmd == "get_version":
            msg = {"api_ver": API_VERSION, "fw_ver": self.fw_version(miner), "platform": "H6OS",
                   "chip": "K210"}
            return _flat(OK_CODE, msg)
        if cmd == "get_miner_info":
            return _flat(OK_CODE, self._miner_info(miner))
        if cmd == "get_psu":
            return _flat(OK_CODE, self._psu(miner, miner.read()))
        if cmd == "status":
            return _flat(OK_CODE, self._status(miner, miner.read()))
        if cmd == "get_error_code":
            return _flat(OK_CODE, {"error_code": []})
        return _error(14, "invalid cmd")

    def _cgminer(self, miner: EmulatedMiner, cmd: str, r: Reading) -> dict:
        if cmd == "summary":
            return _cg("SUMMARY", 11, "Summary", [self._summary(miner, r)])
        if cmd in ("devs", "edevs"):
            return _cg("DEVS", 9, f"{len(r.chain_hashrate_ths)} ASC(s)", self._devs(miner, r))
        if cmd == "pools":
            return _cg("POOLS", 7, f"{len(miner.pools)} Pool(s)", self._pools(miner, r))
        model = DEVDETAILS_MODEL.get(miner.spec.model, f"{miner.spec.model}_V10")
        rows = [{"DEVDETAILS": i, "Name": "SM", "ID": i, "Driver": "bitmicro", "Kernel": "",
                 "Model": model} for i in range(miner.spec.chains)]
        return _cg("DEVDETAILS", 69, "Device Details", rows)

    # ------------------------------------------------------------------- report builders
    @staticmethod
    def fw_version(miner: EmulatedMiner) -> str:
        """The firmware version this machine reports: its own (fleet file), else the default.
        pyasic picks its btminer backend from this date, so it must match the API served."""
        return miner.firmware_version or FW_VERSION

    def _fw(self, miner: EmulatedMiner) -> dict:
        return miner.firmware_state.setdefault("whatsminer", {"tokens": {}})

    def _mining_off(self, miner: EmulatedMiner, r: Reading) -> bool:
        """Off if the hash boards are physically down, or if the firmware still believes the
        API switched mining off (see ``belief_holds``)."""
        return r.state in ("sleeping", "off") or belief_holds(miner, r, self._fw(miner).get("off"))

    def _target_ths(self, miner: EmulatedMiner) -> float:
        spec = miner.spec
        load = max(0.0, (miner.target_power_w() - spec.idle_power_w)
                   / (spec.power_w - spec.idle_power_w))
        return spec.hashrate_ths * load**ALPHA

    def _freq(self, miner: EmulatedMiner) -> int:
        nominal = NOMINAL_FREQ_MHZ.get(miner.spec.model, 600)
        return int(nominal * self._target_ths(miner) / miner.spec.hashrate_ths)

    def _summary(self, miner: EmulatedMiner, r: Reading) -> dict:
        spec = miner.spec
        mhs = round(r.hashrate_ths * 1e6, 2)
        fans = [*r.fan_rpm, 0, 0]
        accepted = int(r.hashing_s * r.hashrate_ths / 20.0)
        limit = miner.power_limit_w if miner.power_limit_w is not None else spec.power_w
        chip = r.chip_temp_c or [r.inlet_temp_c]
        return {
            "Elapsed": int(r.uptime_s), "MHS av": mhs, "MHS 5s": mhs, "MHS 1m": mhs,
            "MHS 5m": mhs, "MHS 15m": mhs, "HS RT": mhs, "Accepted": accepted, "Rejected": 0,
            "Total MH": round(mhs * r.hashing_s, 1),
            "Temperature": round(sum(r.board_temp_c) / max(1, len(r.board_temp_c)), 1),
            "freq_avg": self._freq(miner) if r.hashrate_ths > 0 else 0,
            "Fan Speed In": fans[0], "Fan Speed Out": fans[1], "Power": int(r.power_w),
            "Power Rate": round(r.power_w / r.hashrate_ths, 2) if r.hashrate_ths else 0.0,
            "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Uptime": int(r.uptime_s),
            "Security Mode": 0, "Hash Stable": r.state == "mining",
            "Hash Stable Cost Seconds": 1450, "Hash Deviation%": 0.0,
            "Target Freq": self._freq(miner),
            "Target MHS": round(self._target_ths(miner) * 1e6, 0),
            "Env Temp": r.inlet_temp_c, "Power Mode": miner.mode.capitalize(),
            "Factory GHS": int(spec.hashrate_ths * 1000), "Power Limit": int(limit),
            "Chip Temp Min": min(chip), "Chip Temp Max": max(chip),
            "Chip Temp Avg": round(sum(chip) / len(chip), 1), "Debug": "-0.0_100.0_0",
            "Btminer Fast Boot": "disable", "Power Fanspeed": self._psu_fan(r),
            "Error Code Count": 0, "Factory Error Code Count": 0, "Liquid Cooling": False,
            "Firmware Version": f"'{self.fw_version(miner)}'", "MAC": miner.mac.upper(),
            "Power Current": round(r.power_w / 230.0, 1), "Upfreq Complete": 1,
        }

    def _devs(self, miner: EmulatedMiner, r: Reading) -> list[dict]:
        spec = miner.spec
        rows = []
        for i, ths in enumerate(r.chain_hashrate_ths):
            mhs = round(ths * 1e6, 2)
            chip = r.chip_temp_c[i]
            rows.append({
                "ASC": i, "Slot": i, "Enabled": "Y", "Status": "Alive",
                "Temperature": r.board_temp_c[i],
                "Chip Frequency": self._freq(miner) if ths > 0 else 0,
                "MHS av": mhs, "MHS 5s": mhs, "MHS 1m": mhs, "MHS 5m": mhs, "MHS 15m": mhs,
                "HS RT": mhs, "Factory GHS": int(spec.hashrate_ths * 1000 / spec.chains),
                "Upfreq Complete": 1, "Effective Chips": spec.chips_per_chain,
                "PCB SN": f"{miner.serial}B{i}", "Chip Temp Min": round(chip - 3.0, 1),
                "Chip Temp Max": round(chip + 3.0, 1), "Chip Temp Avg": chip,
                "chip_vol_diff": 8,
            })
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
                "Last Share Time": _now() if accepted else 0, "Diff1 Shares": 0,
                "Proxy Type": "", "Proxy": "", "Difficulty Accepted": accepted * 65536.0,
                "Difficulty Rejected": 0.0, "Difficulty Stale": 0.0,
                "Last Share Difficulty": 65536.0 if accepted else 0.0,
                "Work Difficulty": 65536.0, "Has Stratum": 1, "Stratum Active": active,
                "Stratum URL": pool.get("url", "").split("//")[-1].split(":")[0],
                "Stratum Difficulty": 65536.0, "Best Share": 0, "Pool Rejected%": 0.0,
                "Pool Stale%": 0.0, "Bad Work": 0, "Current Block Height": 0,
                "Current Block Version": 536870912,
            })
        return rows

    @staticmethod
    def _psu_fan(r: Reading) -> int:
        return 0 if r.state == "off" else int(3000 + r.power_w)

    def _psu(self, miner: EmulatedMiner, r: Reading) -> dict:
        return {"name": "P222B", "hw_version": "V01.00", "sw_version": "V01.00.V01.03",
                "model": "P222B", "iin": str(int(r.power_w / 230.0 * 1000)), "vin": "23000",
                "fan_speed": str(self._psu_fan(r)), "serial_no": f"P{miner.serial}",
                "vendor": "1", "version": "0001"}

    @staticmethod
    def _miner_info(miner: EmulatedMiner) -> dict:
        return {"ip": miner.ip, "proto": "dhcp", "netmask": "255.255.0.0",
                "gateway": ".".join([*miner.ip.split(".")[:3], "254"]), "dns": "8.8.8.8",
                "hostname": miner.hostname, "mac": miner.mac.upper(),
                "ledstat": "manual" if miner.led_on else "auto", "minersn": miner.serial,
                "powersn": f"P{miner.serial}"}

    def _status(self, miner: EmulatedMiner, r: Reading) -> dict:
        """The post-2023 ``status`` shape: pyasic's ``_is_mining`` reads ``mineroff``."""
        fw = self._fw(miner)
        off = self._mining_off(miner, r)
        return {"mineroff": "true" if off else "false",
                "mineroff_reason": fw.get("off_reason", "") if off else "",
                "mineroff_time": fw.get("off_time", "") if off else "",
                "FirmwareVersion": self.fw_version(miner),
                "power_mode": miner.mode.capitalize(),
                "hash_percent": ""}

    # ------------------------------------------------------------------- token handshake
    def _salt(self, miner: EmulatedMiner) -> str:
        """The per-machine md5-crypt salt (on hardware, from the admin password hash)."""
        digest = hashlib.sha256(f"{miner.serial}/{miner.mac}".encode()).digest()
        return "".join(_SALT_CHARS[b % len(_SALT_CHARS)] for b in digest[:8])

    def _host_passwd_md5(self, miner: EmulatedMiner) -> str:
        """md5crypt of the machine's admin password: the miner's own once the site changed it
        (``miner.password``; the factory ``admin`` is then refused like any wrong password),
        else the family's (``admin``, what pyasic assumes)."""
        password = miner.password if miner.password is not None else self._password
        return _passwd_md5(password, self._salt(miner))

    def _get_token(self, miner: EmulatedMiner) -> dict:
        if miner.fault.kind == "token_exhaustion":
            # "one IP can get 32 tokens" (API v2.0.5); field clients match this Msg text
            return _error(136, "over max connect")
        newsalt = "".join(random.choices(_SALT_CHARS, k=8))
        stamp = str(_now())[-4:]
        sign = _md5crypt_hash(self._host_passwd_md5(miner) + stamp, newsalt)
        tokens: dict[str, float] = self._fw(miner)["tokens"]
        tokens[sign] = self._clock()
        while len(tokens) > MAX_TOKENS:
            tokens.pop(next(iter(tokens)))
        return _flat(134, {"time": stamp, "salt": self._salt(miner), "newsalt": newsalt})

    def _token_valid(self, miner: EmulatedMiner, sign: object) -> bool:
        issued = self._fw(miner)["tokens"].get(sign) if isinstance(sign, str) else None
        return issued is not None and self._clock() - issued <= TOKEN_TTL_S

    # ------------------------------------------------------------------ privileged writes
    def _privileged(self, miner: EmulatedMiner, req: dict) -> bytes:
        cipher = _aes(self._host_passwd_md5(miner))
        try:
            raw = base64.b64decode(str(req.get("data", "")), validate=False)
            if not raw or len(raw) % 16:
                raise ValueError("not whole AES blocks")
        except (ValueError, binascii.Error):
            return self._dump(_error(137, "base64 decode error"))
        decryptor = cipher.decryptor()
        plain = (decryptor.update(raw) + decryptor.finalize()).rstrip(b"\0")
        try:
            inner = json.loads(plain.decode("utf-8"))
            if not isinstance(inner, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            # A wrong admin password decrypts to garbage: the firmware cannot read it.
            return self._dump(_error(23, "invalid JSON message"))
        if not self._token_valid(miner, inner.get("token")):
            return self._dump(_error(135, "check token error"))
        reply = self._write(miner, str(inner.get("cmd") or inner.get("command") or ""), inner)
        encryptor = cipher.encryptor()
        enc = encryptor.update(_pad16(json.dumps(reply).encode("utf-8"))) + encryptor.finalize()
        return self._dump({"enc": base64.b64encode(enc).decode("ascii")})

    def _write(self, miner: EmulatedMiner, cmd: str, args: dict) -> dict:
        """One privileged command, applied to the physics; the (to-be-encrypted) reply."""
        fw = self._fw(miner)
        if cmd == "power_off":
            miner.power_off()
            fw.update(off=belief(miner), off_reason="by whatsminer api",
                      off_time=time.strftime("%Y-%m-%d %H:%M:%S"))
            return _ok()
        if cmd == "power_on":
            fw.pop("off", None)
            miner.power_on()
            return _ok()
        if cmd == "reboot":
            return _ok() if miner.reboot() else _error(132, "command error")
        if cmd == "restart_btminer":
            self._restart_btminer(miner)
            return _ok()
        if cmd == "adjust_power_limit":
            try:
                watts = int(float(str(args.get("power_limit", ""))))
            except ValueError:
                return _error(14, "invalid API command or data")
            if watts <= 0 or not miner.set_power_limit(watts):
                return _error(14, "invalid API command or data")
            self._restart_btminer(miner)  # "the miner will reboot after this is set"
            return _ok()
        if cmd in ("set_low_power", "set_normal_power", "set_high_power"):
            miner.set_mode(cmd.split("_")[1])
            self._restart_btminer(miner)
            return _ok()
        if cmd == "set_led":
            miner.led_on = args.get("param") != "auto"
            return _ok()
        if cmd == "update_pools":
            pools = [{"url": args[f"pool{i}"], "user": args.get(f"worker{i}") or "",
                      "pass": args.get(f"passwd{i}") or ""}
                     for i in (1, 2, 3) if args.get(f"pool{i}")]
            if not pools:
                return _error(14, "invalid API command or data")
            miner.pools = pools
            return _ok()
        if cmd in PRIVILEGED:
            return _error(14, "invalid API command or data")  # not emulated: refused
        return _error(14, "invalid cmd")

    @staticmethod
    def _restart_btminer(miner: EmulatedMiner) -> None:
        """btminer restarts to apply a new limit or mode: hash boards re-initialise for the
        model's boot time; a machine switched off stays off."""
        if miner.read().state in ("mining", "booting"):
            miner.sleep()
            miner.wake()
