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

Two generations of API v2 firmware, told apart by the firmware date (``fw_version``), answer
in the shapes and types of the replies captured from real machines
(``shared/firmware-captures/whatsminer/v1`` and ``v2``):

* **legacy** (dated before ``LEGACY_BEFORE``; captures: 20210322.22.REL, 20220919.15.REL): a
  separate API daemon answers on 4028 ("whatsminer v1.4.0") and forwards the cgminer-style
  reads (summary, devs, edevs, pools, devdetails) to btminer. ``power_off`` stops btminer, so
  while it is off those reads answer ``Socket connect failed: Connection refused`` (pyasic
  ``rpc/base.py`` and its factory special-case that very reply) and ``status`` says
  ``btmineroff: "true"``; pyasic's ``_is_mining`` then asks ``devdetails`` and reads its
  failure as "not mining" (a reverse-engineered legacy daemon: status is ``pidof btminer``,
  power_off runs ``poweroff.sh``, power_on ``/etc/init.d/btminer start``).
* **2.0.5** (dated 2023-01 to 2024-11; captures: 20230803.11.REL, 20240624.18.REL): every read
  keeps answering while mining is off; ``status`` says ``mineroff``.

Field behaviour, each on by default (firmware-behaviour.md "Whatsminer"):

* **Write API**: off until the operator changes the admin password and switches the API on
  in WhatsMinerTool (API v2.0.5 document). A machine with the factory password (no
  ``password`` in the fleet file) or ``write_api = false`` answers every privileged command in
  clear with ``can't access write cmd`` (the message pyasic and hass-miner test for); one
  whose password was changed has it on unless the fleet file says ``write_api = false``.
* **Tokens**: at most ``TOKEN_LIMIT`` tokens per client IP per ``TOKEN_WINDOW_S`` (real
  seconds) and at most ``MAX_CLIENT_IPS`` client IPs holding live tokens, then code 136
  "over max connect" (API v2.0.5: "supports max 16 IP clients, one IP can get 32 tokens, and a
  token keepalive time is 30 minutes"; field clients match that ``Msg``).
* **Power limit**: above the nameplate refused ("cannot be higher than the ordinary power of
  the machine"); an accepted one restarts btminer ("the miner will reboot after this is set"):
  for ``BTMINER_RESTART_S`` (scaled) the 2.0.5 API is silent and the legacy daemon's forwarded
  reads fail, then the boards boot and ramp -- unless the machine has btminer fast boot
  (``fast_boot = true``, also switched by ``enable_btminer_fast_boot``).
* **Hashrate** ``MHS 1m`` (what pyasic reads) is the mean over the last emulated minute, so it
  lags a change by up to a minute; ``MHS 5s``/``HS RT`` are the instant's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import string
import time
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from itertools import pairwise
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from passlib.handlers.md5_crypt import md5_crypt

from curtaild.emulator.families.base import HttpRequest, HttpResponse
from curtaild.emulator.physics import ALPHA, EmulatedMiner, Reading

#: Before 2024-11-00, so pyasic's ``BTMiner.__new__`` injects ``BTMinerV2`` (API v2).
FW_VERSION = "20230911.12.Rel"
API_VERSION = "2.0.5"
#: Firmware dated before this is the legacy generation (captures v1); a legacy default for
#: fleet files that want one.
LEGACY_BEFORE = (2023, 1, 1)
LEGACY_FW_VERSION = "20220919.15.REL"
LEGACY_API_VERSION = "whatsminer v1.4.0"
#: What the cgminer-style replies carry as their STATUS Description (every capture).
CGMINER_DESCRIPTION = "cgminer 4.9.2"
#: The legacy API daemon's answer to a read it forwards to btminer while btminer is not running.
BTMINER_DOWN_REPLY = b"Socket connect failed: Connection refused\n"
#: The firmware's answer to a privileged command while its API switch is off.
WRITE_DISABLED_MSG = "can't access write cmd"
#: ``miner.firmware_state`` key of the API switch (fleet ``write_api``; absent: on exactly
#: when the admin password was changed, as the firmware allows nothing else).
WRITE_API_KEY = "whatsminer.write_api"
#: ``DEVDETAILS.Model`` per emulated model; pyasic maps these to BTMinerM50VH50 / M30SV10,
#: whose chip counts (105 / 148 per board) match the physics specs.
DEVDETAILS_MODEL = {"M50": "M50_VH55", "M30S": "M30S_V12"}
#: Nominal chip clock (MHz) at nameplate; scaled with hashrate for reporting only.
NOMINAL_FREQ_MHZ = {"M50": 580, "M30S": 600}
TOKEN_LIMIT = 32  # tokens per client IP per window
TOKEN_WINDOW_S = 30 * 60.0  # real seconds; also how long a token stays valid
TOKEN_TTL_S = TOKEN_WINDOW_S
MAX_CLIENT_IPS = 16
#: The client address a caller that cannot say (an in-process test) is counted under.
LOCAL_CLIENT = "127.0.0.1"
#: Emulated seconds btminer is down while it restarts to apply a limit or mode.
BTMINER_RESTART_S = 30.0
#: The window of ``MHS 1m`` in emulated seconds, and the samples kept to compute it.
HASH_WINDOW_S = 60.0
MAX_HASH_SAMPLES = 32
_SALT_CHARS = string.ascii_letters + string.digits + "./"

#: Plain (unencrypted) commands that answer in cgminer style and may be joined with "+"; the
#: legacy daemon forwards exactly these to btminer.
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


def firmware_date(version: str) -> tuple[int, int, int] | None:
    """(year, month, day) of a btminer version such as "20220919.15.REL" (its first eight
    characters, as pyasic reads it); None if it is not a date."""
    try:
        return int(version[0:4]), int(version[4:6]), int(version[6:8])
    except (ValueError, TypeError):
        return None


def _flat(code: int, msg: Any, status: str = "S", description: str = "") -> dict:
    """btminer's own replies: a flat STATUS (not the cgminer list)."""
    return {"STATUS": status, "When": _now(), "Code": code, "Msg": msg,
            "Description": description}


def _error(code: int, msg: str) -> dict:
    return _flat(code, msg, status="E")


OK_CODE = 131  # "API command OK"


def _ok() -> dict:
    return _flat(OK_CODE, "API command OK")


def _cg(section: str, code: int, msg: str, rows: list[dict]) -> dict:
    """cgminer-style reply, as btminer gives for summary/devs/pools/devdetails."""
    status = {"STATUS": "S", "When": _now(), "Code": code, "Msg": msg,
              "Description": CGMINER_DESCRIPTION}
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
    return miner.board_up_at, miner.read().state


def belief_holds(miner: EmulatedMiner, r: Reading, recorded: tuple[float, str] | None) -> bool:
    """A belief lasts while nothing physical happened since: same boot, same state. So an
    ``ignore_sleep`` machine says "off" while it keeps hashing, but a reboot, a power cycle
    or a wake from elsewhere (the control API) brings the report back to the truth."""
    if recorded is None:
        return False
    # the boot's own instant, not clock() - uptime: two clock reads apart by a context switch
    # would make one boot look like two under load
    return recorded[0] == miner.board_up_at and recorded[1] == r.state


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
    #: the server passes the client's address to ``handle_rpc`` (tokens are counted per IP)
    rpc_client_ip = True

    def __init__(self, *, password: str = "admin", clock: Callable[[], float] = time.monotonic,
                 token_limit: int = TOKEN_LIMIT, token_window_s: float = TOKEN_WINDOW_S,
                 max_client_ips: int = MAX_CLIENT_IPS):
        """``password`` is the admin password pyasic assumes; ``clock`` times token expiry in
        real seconds (clients cache tokens in real time, whatever the emulator's time scale);
        the token limits are the firmware's (tests of the window shorten it)."""
        self._password = password
        self._clock = clock
        self.token_limit = token_limit
        self.token_window_s = token_window_s
        self.max_client_ips = max_client_ips

    # ------------------------------------------------------------------------ entry points
    def handle_rpc(self, miner: EmulatedMiner, request: bytes,
                   client_ip: str = LOCAL_CLIENT) -> bytes:
        if self.restarting(miner) and not self.is_legacy(miner):
            return b""  # btminer (which serves this API) restarting: closed unanswered
        try:
            req = json.loads(request.rstrip(b"\0 \r\n").decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            return self._dump(_error(23, "invalid JSON message"))
        if "enc" in req:
            return self._privileged(miner, req)
        cmd = str(req.get("cmd") or req.get("command") or "")
        reply = self._plain(miner, cmd, client_ip)
        return reply if isinstance(reply, bytes) else self._dump(reply)

    def handle_http(self, miner: EmulatedMiner, request: HttpRequest) -> HttpResponse:
        """No web UI is emulated (pyasic drives Whatsminers over RPC only)."""
        return HttpResponse.text("Not Found", status=404)

    @staticmethod
    def _dump(payload: dict) -> bytes:
        return json.dumps(payload).encode("utf-8")

    # ------------------------------------------------------------------- generations
    @staticmethod
    def fw_version(miner: EmulatedMiner) -> str:
        """The firmware version this machine reports: its own (fleet file), else the default.
        pyasic picks its btminer backend from this date, so it must match the API served."""
        return miner.firmware_version or FW_VERSION

    def is_legacy(self, miner: EmulatedMiner) -> bool:
        """Firmware of the legacy API daemon (before ``LEGACY_BEFORE``; never an API v3 one)."""
        if miner.api == "v3":
            return False
        date = firmware_date(self.fw_version(miner))
        return date is not None and date < LEGACY_BEFORE

    def _description(self, miner: EmulatedMiner) -> str:
        return LEGACY_API_VERSION if self.is_legacy(miner) else ""

    @staticmethod
    def write_api(miner: EmulatedMiner) -> bool:
        """The "Miner API Switch" of WhatsMinerTool: privileged commands work only when on.
        Unless the fleet file says, it is on exactly when the site changed the admin password:
        the firmware refuses to enable it before, so a factory unit cannot be written."""
        return bool(miner.firmware_state.get(WRITE_API_KEY, miner.password is not None))

    def _fw(self, miner: EmulatedMiner) -> dict:
        return miner.firmware_state.setdefault("whatsminer", {"tokens": {}})

    def restarting(self, miner: EmulatedMiner) -> bool:
        """btminer is restarting to apply a limit or a mode (``BTMINER_RESTART_S``)."""
        return miner.clock() < self._fw(miner).get("restart_until", 0.0)

    def btminer_down(self, miner: EmulatedMiner, r: Reading) -> bool:
        """The legacy daemon's view: btminer is not running (stopped by power_off, by the
        operator, or restarting); its forwarded reads then fail."""
        return self.restarting(miner) or self._mining_off(miner, r)

    # ----------------------------------------------------------------------- plain reads
    def _plain(self, miner: EmulatedMiner, cmd: str, client_ip: str) -> dict | bytes:
        if cmd in PRIVILEGED:
            return _error(45, "Permission denied")
        legacy = self.is_legacy(miner)
        parts = cmd.split("+")
        if len(parts) > 1 or cmd in CGMINER_STYLE:
            if not all(p in CGMINER_STYLE for p in parts):
                return _error(14, "invalid cmd")
            reading = miner.read()
            if legacy and self.btminer_down(miner, reading):
                return BTMINER_DOWN_REPLY
            if len(parts) == 1:
                return self._cgminer(miner, cmd, reading)
            return {p: [self._cgminer(miner, p, reading)] for p in parts} | {"id": 1}
        desc = self._description(miner)
        if cmd == "get_token":
            return self._get_token(miner, client_ip)
        if cmd == "get_version":
            msg = ({"api_ver": LEGACY_API_VERSION, "fw_ver": self.fw_version(miner)} if legacy
                   else {"api_ver": API_VERSION, "fw_ver": self.fw_version(miner),
                         "platform": "H616"})
            return _flat(OK_CODE, msg, description=desc)
        if cmd == "get_miner_info":
            return _flat(OK_CODE, self._miner_info(miner), description=desc)
        if cmd == "get_psu":
            return _flat(OK_CODE, self._psu(miner, miner.read()), description=desc)
        if cmd == "status":
            return _flat(OK_CODE, self._status(miner, miner.read()), description=desc)
        if cmd == "get_error_code" and not legacy:  # API 2.0.4 and later
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

    # ------------------------------------------------------------ the one-minute window
    def _sample(self, miner: EmulatedMiner, r: Reading | None = None) -> Reading:
        """Record the instant's hashrate (total and per board) for the lagging averages."""
        r = r if r is not None else miner.read()
        now = miner.clock()
        hist: deque = self._fw(miner).setdefault("hash", deque())
        hist.append((now, r.hashrate_ths, tuple(r.chain_hashrate_ths)))
        start = now - HASH_WINDOW_S * miner.time_scale
        while len(hist) > 1 and hist[1][0] <= start:
            hist.popleft()  # the newest sample before the window still holds at its start
        while len(hist) > MAX_HASH_SAMPLES:
            del hist[1]
        return r

    def _lagged(self, miner: EmulatedMiner, r: Reading) -> tuple[float, list[float]]:
        """TH/s (total, per board) averaged over the last emulated minute, as a real miner's
        counters accumulate: right after a sleep the machine still reports most of its
        hashrate, after a wake (or btminer restart) it reports little, a minute later the
        truth. Hashing now: exact from the physics (nothing hashed before this hashing period
        began -- a Whatsminer boots for longer than a minute -- then the ramp). Not hashing
        now: from the samples taken at every read and around every API command, each holding
        until the next one; nothing seen in the window but now (a change from the control
        API): the instant."""
        now, scale = miner.clock(), miner.time_scale
        span = HASH_WINDOW_S * scale
        start = now - span
        if span <= 0:
            return r.hashrate_ths, list(r.chain_hashrate_ths)
        if r.state == "mining":
            began = now - r.hashing_s * scale
            ramp = miner.ramp_s * scale

            def rise(t: float) -> float:  # the ramp's share of the load at time t
                return 1.0 if ramp <= 0 else min(1.0, max(0.0, (t - began) / ramp))

            rf_now = rise(now)
            if rf_now <= 0:
                return 0.0, [0.0] * len(r.chain_hashrate_ths)
            steps = 24
            frac = 0.0
            for k in range(steps):  # midpoint rule over the window
                t = start + (k + 0.5) * span / steps
                if t >= began:
                    frac += (rise(t) / rf_now) ** ALPHA / steps
            return r.hashrate_ths * frac, [c * frac for c in r.chain_hashrate_ths]
        hist: deque = self._fw(miner)["hash"]
        last = hist[-1]
        if len(hist) < 2 or hist[-2][0] < start:
            return last[1], list(last[2])
        weight, total = 0.0, 0.0
        chains = [0.0] * len(last[2])
        for (t0, ths, per), (t1, _, _) in pairwise(hist):
            width = t1 - max(t0, start)
            if width <= 0:
                continue
            weight += width
            total += ths * width
            chains = [c + p * width for c, p in zip(chains, per, strict=False)]
        if weight <= 0:
            return last[1], list(last[2])
        # the rest of the window, before the first sample, held the first sample's value
        lead = max(0.0, min(span - weight, hist[0][0] - start))
        total += hist[0][1] * lead
        chains = [c + p * lead for c, p in zip(chains, hist[0][2], strict=False)]
        weight += lead
        return total / weight, [c / weight for c in chains]

    # ------------------------------------------------------------------- report builders
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

    def _limit(self, miner: EmulatedMiner) -> int:
        limit = miner.power_limit_w if miner.power_limit_w is not None else miner.spec.power_w
        return int(limit)

    def _summary(self, miner: EmulatedMiner, r: Reading) -> dict:
        """The legacy capture's keys and types (v1/summary.json, a real machine); 2.0.5
        firmware adds the keys of v2/summary.json and of API 2.0.5's summary."""
        spec = miner.spec
        self._sample(miner, r)
        lag_ths, _ = self._lagged(miner, r)
        mhs_1m = round(lag_ths * 1e6, 2)
        mhs_now = round(r.hashrate_ths * 1e6, 2)
        fans = [*r.fan_rpm, 0, 0]
        accepted = int(r.hashing_s * r.hashrate_ths / 20.0)
        chip = r.chip_temp_c or [r.inlet_temp_c]
        hashing = r.hashrate_ths > 0
        freq = self._freq(miner)
        summary: dict[str, Any] = {
            "Accepted": accepted, "Best Share": accepted * 17, "CB Platform": "ALLWINNER_H3",
            "CB Version": "V8", "Chip Data": "HP5A01-19101436   BINV04-192101D",
            "Chip Temp Avg": round(sum(chip) / len(chip), 2),
            "Chip Temp Max": float(max(chip)), "Chip Temp Min": float(min(chip)),
            "Device Hardware%": 0.011 if hashing else 0.0, "Device Rejected%": 0.0,
            "Difficulty Accepted": accepted * 65536.0, "Difficulty Rejected": 0.0,
            "Difficulty Stale": 0.0, "Discarded": accepted * 262,
            "Elapsed": int(r.uptime_s), "Error Code Count": 0, "Factory Error Code Count": 0,
            "Factory GHS": int(spec.hashrate_ths * 1000),
            "Fan Speed In": int(fans[0]), "Fan Speed Out": int(fans[1]),
            "Firmware Version": f"'{self.fw_version(miner)}'", "Found Blocks": 0,
            "Get Failures": 0, "Getworks": accepted // 2, "HS RT": mhs_now,
            "Hardware Errors": 0, "Hash Deviation%": 0.1061 if hashing else 0.0,
            "Hash Stable": r.state == "mining" and miner.ramp_fraction() >= 1.0,
            "Hash Stable Cost Seconds": int(spec.boot_s + miner.ramp_s),
            "Last getwork": 0, "Liquid Cooling": False, "Local Work": accepted * 34000,
            "MAC": miner.mac.upper(), "MHS 15m": mhs_1m, "MHS 1m": mhs_1m, "MHS 5m": mhs_1m,
            "MHS 5s": mhs_now, "MHS av": mhs_1m, "Network Blocks": 0,
            "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Power": int(r.power_w),
            "Power Current": int(r.power_w / 13.1), "Power Fanspeed": self._psu_fan(r),
            "Power Limit": self._limit(miner), "Power Mode": miner.mode.capitalize(),
            "Power_RT": int(r.power_w), "Rejected": 0, "Remote Failures": 0,
            "Security Mode": 0, "Stale": 0, "Target Freq": freq,
            "Target MHS": int(self._target_ths(miner) * 1e6),
            "Temperature": round(sum(r.board_temp_c) / max(1, len(r.board_temp_c)), 1),
            "Total MH": round(mhs_1m * r.hashing_s, 1), "Uptime": int(r.uptime_s),
            "Utility": round(accepted / max(r.hashing_s / 60.0, 1.0), 2),
            "Voltage": 1180 if hashing else 0,
            "Work Utility": round(r.hashrate_ths * 54.9, 2), "freq_avg": freq if hashing else 0,
        }
        if not self.is_legacy(miner):
            summary.update({
                "CB Platform": "H616", "Env Temp": float(r.inlet_temp_c),
                "Btminer Fast Boot": "enable" if miner.fast_boot else "disable",
                "Upfreq Complete": 1 if summary["Hash Stable"] else 0,
            })
        return summary

    def _devs(self, miner: EmulatedMiner, r: Reading) -> list[dict]:
        """The legacy capture's keys (v1/devs.json); 2.0.5 firmware adds v2/devs.json's."""
        spec = miner.spec
        self._sample(miner, r)
        _, lag_chains = self._lagged(miner, r)
        fans = [*r.fan_rpm, 0, 0]
        rows = []
        for i, ths in enumerate(r.chain_hashrate_ths):
            mhs = round(ths * 1e6, 2)
            mhs_1m = round((lag_chains[i] if i < len(lag_chains) else ths) * 1e6, 2)
            chip = r.chip_temp_c[i]
            accepted = int(r.hashing_s * ths / 20.0)
            freq = self._freq(miner) if ths > 0 else 0
            row: dict[str, Any] = {
                "ASC": i, "Accepted": accepted, "Chip Frequency": freq,
                "Chip Temp Avg": float(chip), "Chip Temp Max": round(chip + 3.0, 2),
                "Chip Temp Min": round(chip - 3.0, 2),
                "Device Elapsed": int(r.uptime_s),
                "Device Hardware%": 0.0072 if ths > 0 else 0.0, "Device Rejected%": 0.0,
                "Diff1 Work": accepted * 263, "Difficulty Accepted": accepted * 65536.0,
                "Difficulty Rejected": 0.0, "Effective Chips": spec.chips_per_chain,
                "Enabled": "Y", "Fan Speed In": int(fans[0]), "Fan Speed Out": int(fans[1]),
                "Hardware Errors": 0, "ID": i,
                "Last Share Difficulty": 65536.0 if accepted else 0.0, "Last Share Pool": 0,
                "Last Share Time": _now() if accepted else 0,
                "Last Valid Work": _now() if ths > 0 else 0,
                "MHS 15m": mhs_1m, "MHS 1m": mhs_1m, "MHS 5m": mhs_1m, "MHS 5s": mhs,
                "MHS av": mhs_1m, "Name": "SM", "PCB SN": f"{miner.serial}B{i}",
                "Rejected": 0, "Slot": i, "Status": "Alive",
                "Temperature": float(r.board_temp_c[i]),
                "Total MH": round(mhs_1m * r.hashing_s, 1),
                "Upfreq Complete": 1 if r.state == "mining" else 0,
                "Utility": round(accepted / max(r.hashing_s / 60.0, 1.0), 2),
            }
            if not self.is_legacy(miner):
                row["Factory GHS"] = int(spec.hashrate_ths * 1000 / spec.chains)
                row["Frequency"] = float(freq)
            rows.append(row)
        return rows

    @staticmethod
    def _pools(miner: EmulatedMiner, r: Reading) -> list[dict]:
        """Keys and types of v1/pools.json (a real machine): POOL counts from 1."""
        rows = []
        for i, pool in enumerate(miner.pools):
            active = i == 0 and r.hashrate_ths > 0
            accepted = int(r.hashing_s * r.hashrate_ths / 20.0) if i == 0 else 0
            url = pool.get("url", "")
            rows.append({
                "Accepted": accepted, "Bad Work": 0, "Best Share": accepted * 17,
                "Current Block Height": 0, "Current Block Version": 536870912 if active else 0,
                "Diff1 Shares": accepted * 263, "Difficulty Accepted": accepted * 65536.0,
                "Difficulty Rejected": 0.0, "Difficulty Stale": 0.0, "Discarded": 0,
                "Get Failures": 0, "Getworks": accepted // 2, "Has GBT": False,
                "Has Stratum": True,
                "Last Share Difficulty": 65536.0 if accepted else 0.0,
                "Last Share Time": _now() if accepted else 0, "Long Poll": "N",
                "POOL": i + 1, "Pool Rejected%": 0.0, "Pool Stale%": 0.0, "Priority": i,
                "Proxy": "", "Proxy Type": "", "Quota": 1, "Rejected": 0, "Remote Failures": 0,
                "Stale": 0, "Status": "Alive", "Stratum Active": active,
                "Stratum Difficulty": 65536.0 if active else 0.0,
                "Stratum URL": url.split("//")[-1].split(":")[0], "URL": url,
                "User": pool.get("user", ""), "Work Difficulty": 0.0,
                "Works": accepted * 34000,
            })
        return rows

    @staticmethod
    def _psu_fan(r: Reading) -> int:
        return 0 if r.state == "off" else int(3000 + r.power_w)

    def _psu(self, miner: EmulatedMiner, r: Reading) -> dict:
        """v1/get_psu.json's keys (a real machine) or v2/get_psu.json's (with the fan)."""
        if self.is_legacy(miner):
            return {"hw_version": "", "model": "P21-12-3600-E", "name": "P21",
                    "sw_version": "102220.009"}
        return {"fan_speed": str(self._psu_fan(r)), "hw_version": "", "model": "P222B",
                "name": "P222B", "sw_version": "230208.220429"}

    def _miner_info(self, miner: EmulatedMiner) -> dict:
        """API 2.0.5's ``get_miner_info`` fields (v2/get_miner_info.json has three of them;
        pyasic reads ``minersn`` for the serial number)."""
        return {"ip": miner.ip, "proto": "dhcp", "netmask": "255.255.0.0",
                "gateway": ".".join([*miner.ip.split(".")[:3], "254"]), "dns": "8.8.8.8",
                "hostname": miner.hostname, "mac": miner.mac.upper(),
                "ledstat": "manual" if miner.led_on else "auto", "minersn": miner.serial,
                "powersn": f"P{miner.serial}"}

    def _status(self, miner: EmulatedMiner, r: Reading) -> dict:
        """Legacy: ``btmineroff`` (``pidof btminer``; pyasic then asks ``devdetails``).
        2.0.5 (v2/status.json, a real 20240624 machine): ``mineroff``, which pyasic reads."""
        if self.is_legacy(miner):
            down = self.btminer_down(miner, r)
            return {"Firmware Version": f"'{self.fw_version(miner)}'",
                    "btmineroff": "true" if down else "false"}
        fw = self._fw(miner)
        off = self._mining_off(miner, r)
        return {"FirmwareVersion": self.fw_version(miner), "hash_percent": "0",
                "mineroff": "true" if off else "false",
                "mineroff_reason": fw.get("off_reason", "") if off else "",
                "mineroff_time": fw.get("off_time", "") if off else "",
                "power_limit_set": str(self._limit(miner)),
                "power_mode": miner.mode}

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

    def _token_state(self, miner: EmulatedMiner) -> dict:
        fw = self._fw(miner)
        fw.setdefault("by_ip", {})
        fw.setdefault("issued", {})
        fw.setdefault("refused", {})
        return fw

    def _live_tokens(self, miner: EmulatedMiner) -> dict[str, deque]:
        """Client IP -> issue times of its tokens still inside the window (expired dropped)."""
        st = self._token_state(miner)
        now = self._clock()
        by_ip: dict[str, deque] = st["by_ip"]
        for ip in list(by_ip):
            issued = by_ip[ip]
            while issued and now - issued[0] >= self.token_window_s:
                issued.popleft()
            if not issued:
                del by_ip[ip]
        tokens: dict[str, float] = st["tokens"]
        for sign in [s for s, t in tokens.items() if now - t > self.token_window_s]:
            del tokens[sign]
        return by_ip

    def _get_token(self, miner: EmulatedMiner, client_ip: str) -> dict:
        st = self._token_state(miner)
        by_ip = self._live_tokens(miner)
        issued = by_ip.get(client_ip)
        over = (miner.fault.kind == "token_exhaustion"
                or (issued is not None and len(issued) >= self.token_limit)
                or (issued is None and len(by_ip) >= self.max_client_ips))
        if over:
            # "one IP can get 32 tokens", "max 16 IP clients" (API v2.0.5); field clients
            # match this Msg text
            st["refused"][client_ip] = st["refused"].get(client_ip, 0) + 1
            return _error(136, "over max connect")
        newsalt = "".join(random.choices(_SALT_CHARS, k=8))
        stamp = str(_now())[-4:]
        sign = _md5crypt_hash(self._host_passwd_md5(miner) + stamp, newsalt)
        now = self._clock()
        st["tokens"][sign] = now
        by_ip.setdefault(client_ip, deque()).append(now)
        st["issued"][client_ip] = st["issued"].get(client_ip, 0) + 1
        return _flat(134, {"time": stamp, "salt": self._salt(miner), "newsalt": newsalt},
                     description=self._description(miner))

    def _token_valid(self, miner: EmulatedMiner, sign: object) -> bool:
        issued = self._fw(miner)["tokens"].get(sign) if isinstance(sign, str) else None
        return issued is not None and self._clock() - issued <= self.token_window_s

    def token_view(self, miner: EmulatedMiner) -> dict:
        """Tokens handed out, live and refused per client IP (GET /miners ``api_tokens``)."""
        st = self._token_state(miner)
        live = self._live_tokens(miner)
        return {"issued": dict(st["issued"]), "live": {ip: len(q) for ip, q in live.items()},
                "refused": dict(st["refused"]), "limit": self.token_limit,
                "window_s": self.token_window_s, "max_client_ips": self.max_client_ips}

    # ------------------------------------------------------------------ privileged writes
    def _privileged(self, miner: EmulatedMiner, req: dict) -> bytes:
        if not self.write_api(miner):
            # The API switch is off: refused in clear, before anything is decrypted.
            return self._dump(_error(45, WRITE_DISABLED_MSG))
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
        """One privileged command, applied to the physics; the (to-be-encrypted) reply. The
        hashrate window is sampled around every change, so that ``MHS 1m`` lags from the
        moment the change happened, not from the next read."""
        fw = self._fw(miner)
        if miner.fault.kind == "lie" and cmd in PRIVILEGED:
            return _ok()  # the ``lie`` fault: acknowledged, nothing changed or believed
        self._sample(miner)
        try:
            return self._apply(miner, fw, cmd, args)
        finally:
            self._sample(miner)

    def _apply(self, miner: EmulatedMiner, fw: dict, cmd: str, args: dict) -> dict:
        if cmd == "power_off":
            miner.power_off()
            fw.update(off=belief(miner), off_reason="by whatsminer api",
                      off_time=time.strftime("%Y-%m-%d %H:%M:%S"))
            return _ok()
        if cmd == "power_on":
            fw.pop("off", None)
            miner.power_on()  # boots, then ramps (miner.ramp_s)
            return _ok()
        if cmd == "reboot":
            return _ok() if miner.reboot_board() else _error(132, "command error")
        if cmd == "restart_btminer":
            self._restart_btminer(miner)
            return _ok()
        if cmd == "adjust_power_limit":
            try:
                watts = int(float(str(args.get("power_limit", ""))))
            except ValueError:
                return _error(14, "invalid API command or data")
            if watts <= 0 or watts > miner.spec.power_w:
                # "Cannot be higher than the ordinary power of the machine" (API document)
                return _error(14, "invalid API command or data")
            if not miner.set_power_limit(watts):
                return _error(14, "invalid API command or data")
            if not miner.fast_boot:
                self._restart_btminer(miner)  # "the miner will reboot after this is set"
            return _ok()
        if cmd in ("set_low_power", "set_normal_power", "set_high_power"):
            miner.set_mode(cmd.split("_")[1])
            self._restart_btminer(miner)
            return _ok()
        if cmd in ("enable_btminer_fast_boot", "disable_btminer_fast_boot"):
            miner.fast_boot = cmd.startswith("enable")
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

    def _restart_btminer(self, miner: EmulatedMiner) -> None:
        """btminer restarts to apply a new limit or mode: down for ``BTMINER_RESTART_S``
        (scaled; the 2.0.5 API silent, the legacy daemon's forwarded reads failing), while
        the hash boards re-initialise for the model's boot time and then ramp; a machine
        switched off stays off."""
        self._fw(miner)["restart_until"] = miner.clock() + BTMINER_RESTART_S * miner.time_scale
        if miner.read().state in ("mining", "booting"):
            miner.sleep()
            miner.wake()
