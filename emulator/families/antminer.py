"""Bitmain stock firmware (S19 / S19j Pro / S21): bmminer RPC on 4028, digest-auth web UI on 80.

Shapes follow what pyasic 0.79 detects and parses (``miners/factory.py``,
``miners/backends/antminer.py`` ``AntminerModern``, ``bmminer.py``, ``web/antminer.py``) and,
key for key and type for type, the replies captured from a real S19 Pro (stock, CompileTime
Dec 2022) and S21 (``FR-1.12(251009-S21)``) in ``shared/firmware-captures/antminer/v2020``
(tests/emulator/test_antminer_conformance.py compares them):

* detection: ``GET /`` answers 401 with ``WWW-Authenticate: Digest realm="antMiner
  Configuration"``; the Marathon probe ``/kaonsu/v1/brief`` is a non-JSON 404 (so the miner stays
  an Antminer); the model comes from ``get_system_info.cgi`` "minertype" or RPC ``version``
  "Type" ("Antminer S19j Pro" -> ``BMMinerS19jPro``);
* data: RPC ``version``/``summary``/``stats``/``pools``/``devs`` and the CGIs
  ``get_system_info``, ``summary``, ``get_blink_status``, ``get_miner_conf`` and ``stats``;
  the stock ``api-groups`` refuse ``config`` and ``devdetails`` with STATUS E, code 45
  (cgminer API-README "Access denied");
* control: ``set_miner_conf.cgi``, ``blink.cgi``, ``reboot.cgi``.

Like the real firmware it reports no wattage and accepts no power limit. "Is it mining" is what
``get_miner_conf.cgi`` says in ``bitmain-work-mode``: 1 means asleep.

Field behaviour (shared/firmware-behaviour.md), on by default:

* **Config writes are slow and restart the miner process.** ``set_miner_conf.cgi`` stores the
  config at once (``get_miner_conf.cgi`` reads it back), answers after ``CGI_S`` (about 21 s on
  an S19j Pro, asic-rs#245; scaled by --time-scale), then restarts bmminer: RPC and the
  ``stats``/``summary`` CGIs are silent for ``RESTART_S``, ``Elapsed`` starts again from 0, and
  the hash boards boot with ``asic_num`` 0 and no temperatures before they hash.
* **Generations** (``GENERATIONS``, per miner ``firmware_version`` in the fleet file) differ in
  the key a write must use: Dec-2022 firmware applies ``miner-mode`` and acknowledges
  ``bitmain-work-mode`` without applying it (asic-rs#245/#249); 2025 FR firmware applies
  ``bitmain-work-mode`` (asic-rs#120), where work mode 2 is HEM (hass-miner#588); the S21+
  Feb-2025 firmware acknowledges every write and changes nothing (asic-rs#310). Dec-2022
  firmware refuses joined RPC commands (``summary+stats``; pyasic ``rpc/base.py``).
* **Pools are stored as posted**: a config with three empty pools (what pyasic posts when its
  config read failed) leaves the machine with no pool: it wakes and hashes nothing.
* **Sleep persists** in the stored config: after a power cut the machine boots asleep.
* **Faults**: ``ignore_sleep`` stores work mode 1 (pyasic believes it) but never restarts
  bmminer, whose boards keep hashing (asic-rs#245); ``lie`` acknowledges a write and changes
  nothing; ``slow_write`` answers a write after ``delay_s`` real seconds (it still lands);
  ``wipe_pools_on_failed_read`` makes ``get_miner_conf.cgi`` fail (HTTP 500) while writes
  work; ``silent_reboot`` reboots the control board unasked: nothing answers for
  ``BOARD_BOOT_S`` (scaled), then it comes back in the mode it had stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from curtaild.emulator.families.base import HttpRequest, HttpResponse
from curtaild.emulator.physics import (
    BOARD_BOOT_S as BOARD_BOOT_S,  # re-exported: tests time reboots
)
from curtaild.emulator.physics import EmulatedMiner, Reading

USERNAME = "root"
PASSWORD = "root"
REALM = "antMiner Configuration"
BMMINER_VERSION = "1.0.0"
#: What every RPC reply's STATUS says it is (the captures: "cgminer 1.0.0", "CGMiner stats").
DESCRIPTION = f"cgminer {BMMINER_VERSION}"
#: Per-chain sensor offsets (inlet side cooler, outlet side hotter); they average to zero so a
#: board's mean sensor reading is the physical per-chain temperature.
SENSOR_OFFSETS = (-7, -8, 8, 7)
#: temp_pic (the PIC's sensor) reads this much below temp_pcb (the captures: 63 vs 73).
PIC_OFFSET = -10
#: Chain slots a stats reply lists: an S19's control board has four, one left empty.
SLOTS = 4

#: Emulated seconds ``set_miner_conf.cgi`` works before it answers (about 21 s measured on an
#: S19j Pro, Dec-2022 firmware: asic-rs#245); scaled by --time-scale.
CGI_S = 20.0
#: Emulated seconds bmminer is down (RPC and the stats CGIs silent) after a config write.
RESTART_S = 30.0

WORK_MODE_KEY = "antminer.work_mode"  # the stored (cgminer.conf) work mode
FAN_KEY = "antminer.fan"
PROCESS_DOWN_KEY = "antminer.process_down_until"  # clock time bmminer answers again
PROCESS_START_KEY = "antminer.process_started_at"  # clock time Elapsed counts from
BOARD_DOWN_KEY = "antminer.board_down_until"  # clock time the control board answers again
PENDING_KEY = "antminer.restart_pending"  # a write answered later restarts bmminer then
SILENT_REBOOT_KEY = "antminer.silent_reboot_of"  # the silent_reboot Fault already applied


@dataclass(frozen=True, slots=True)
class Generation:
    """One stock firmware generation: what it reports and which config write it obeys."""

    name: str  # what fleet files use (``firmware_version``), e.g. "2022-12"
    compile_time: str  # RPC version/stats "CompileTime" (pyasic's fw_ver), web INFO
    filesystem_version: str  # get_system_info "system_filesystem_version"; {model} filled in
    kernel: str  # get_system_info "system_kernel_version"
    miner_version: str  # RPC "Miner", web INFO "miner_version"
    mode_key: str  # the set_miner_conf key that changes the work mode
    modes: tuple[int, ...]  # work modes it takes: 0 normal, 1 sleep, 2 HEM, 3 low power
    joined_rpc: bool  # answers joined commands ("summary+stats")
    lies: bool  # acknowledges every write and applies none
    source: str  # where the behaviour was seen

    def version(self, model: str) -> str:
        """The firmware version as the machine reports it (system_filesystem_version)."""
        return self.filesystem_version.format(model=model.replace(" ", ""))


GENERATIONS: dict[str, Generation] = {g.name: g for g in (
    Generation("2022-12", "Tue Dec  6 16:12:30 CST 2022", "Tue Dec  6 16:12:30 CST 2022",
               "Linux 4.9.38 #1 SMP PREEMPT Thu Mar 24 10:13:39 CST 2022", "49.0.1.3",
               "miner-mode", (0, 1, 3), joined_rpc=False, lies=False,
               source="S19 Pro capture (CompileTime Dec 2022); asic-rs#245, #249: "
                      "bitmain-work-mode acknowledged, not applied; pyasic rpc/base.py"),
    Generation("2025-02", "Fri Feb  7 11:15:49 CST 2025", "Fri Feb  7 11:15:49 CST 2025",
               "Linux 4.9.113 #1 SMP PREEMPT Fri Feb 7 11:15:49 CST 2025", "uart_trans.1.3",
               "bitmain-work-mode", (0, 1, 2, 3), joined_rpc=True, lies=True,
               source="S21+ 'Fri Feb 7 11:15:49 CST 2025': pause() True, kept hashing "
                      "(asic-rs#310)"),
    Generation("2025-10", "Thu Oct  9 18:55:45 CST 2025", "FR-1.12(251009-{model})",
               "Linux 4.9.113 #1 SMP PREEMPT Thu Oct 9 18:55:45 CST 2025", "uart_trans.1.3",
               "bitmain-work-mode", (0, 1, 2, 3), joined_rpc=True, lies=False,
               source="S21 capture FR-1.12(251009-S21); asic-rs#120 (bitmain-work-mode on "
                      "newer firmware); HEM = 2 (hass-miner#588)"),
)}
#: A machine whose fleet entry names no firmware runs the captured S19 Pro's.
DEFAULT_GENERATION = "2022-12"
#: ``--count`` fleets give their stock Antminers these in turn (benign ones first, so small
#: fleets get the lie last).
COUNT_GENERATIONS = ("2022-12", "2025-10", "2025-02")


def generation_named(text: object) -> Generation | None:
    """A generation from its name ("2025-10") or a version string the firmware reports (its
    CompileTime or system_filesystem_version, whitespace-insensitive); None if unknown."""
    if not isinstance(text, str):
        return None
    if text in GENERATIONS:
        return GENERATIONS[text]
    wanted = " ".join(text.split()).lower()
    for gen in GENERATIONS.values():
        pattern = re.escape(" ".join(gen.filesystem_version.split()).lower())
        pattern = pattern.replace(re.escape("{model}"), r"[a-z0-9+]+")
        if wanted == " ".join(gen.compile_time.split()).lower() or re.fullmatch(pattern, wanted):
            return gen
    return None


def generation(miner: EmulatedMiner) -> Generation:
    return GENERATIONS.get(miner.firmware_version or DEFAULT_GENERATION,
                           GENERATIONS[DEFAULT_GENERATION])


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@lru_cache(maxsize=64)
def _acs(chips: int) -> str:
    """bmminer's per-chain chip status string: ' ooo ooo ...' (one group per domain)."""
    groups = [("o" * min(3, chips - i)) for i in range(0, chips, 3)]
    return (" " + " ".join(groups)) if groups else ""


def work_mode(miner: EmulatedMiner) -> int:
    """``bitmain-work-mode`` as the firmware reports it (0 normal, 1 sleep, 2 HEM, 3 low).

    The stored config's mode, unless the machine was slept or woken at the machine (the control
    API's operator actions change the physics, not the config) and no write is pending. With
    the ``ignore_sleep`` fault the stored 1 is reported while the boards keep hashing.
    """
    fs = miner.firmware_state
    stored = fs.get(WORK_MODE_KEY)
    if stored is None:
        return 1 if miner.state == "sleeping" else (3 if miner.mode == "low" else 0)
    if fs.get(PENDING_KEY) or (stored == 1 and miner.fault.kind == "ignore_sleep"):
        return stored
    if miner.state == "sleeping" and stored != 1:
        return 1
    if miner.state == "mining" and stored == 1:
        return 0
    return stored


@lru_cache(maxsize=4096)
def _ha1(username: str, realm: str, password: str) -> str:
    """HA1 of RFC 2617; cached because a fleet has few distinct passwords and many requests."""
    return _md5(f"{username}:{realm}:{password}")


class DigestAuth:
    """Server side of RFC 2617 digest (MD5, qop=auth), as lighttpd on the control board does.

    Nonces are stateless (random part + HMAC) so thousands of miners keep no nonce tables.
    """

    _param = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]*))')

    def __init__(self, realm: str, username: str, password: str) -> None:
        self.realm = realm
        self.username = username
        self._password = password  # the factory password, for miners that kept it
        self._secret = secrets.token_bytes(16)

    def nonce(self) -> str:
        rand = secrets.token_hex(8)
        return rand + hmac.new(self._secret, rand.encode(), "sha1").hexdigest()[:16]

    def _nonce_ok(self, nonce: str) -> bool:
        rand, mac = nonce[:16], nonce[16:]
        good = hmac.new(self._secret, rand.encode(), "sha1").hexdigest()[:16]
        return len(nonce) == 32 and hmac.compare_digest(mac, good)

    def authorized(self, req: HttpRequest, password: str | None = None) -> bool:
        """True when the request's digest matches ``password`` (the miner's own, so every
        machine of a site can have its own; None: the factory one)."""
        header = req.headers.get("authorization", "")
        if header[:7].lower() != "digest ":
            return False
        p = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
             for m in self._param.finditer(header[7:])}
        if p.get("username") != self.username or p.get("realm") != self.realm:
            return False
        nonce = p.get("nonce", "")
        if not self._nonce_ok(nonce):
            return False
        uri = p.get("uri", "")
        target = req.path + (f"?{req.query}" if req.query else "")
        if uri != target:
            return False
        ha1 = _ha1(self.username, self.realm, password if password is not None
                   else self._password)
        ha2 = _md5(f"{req.method}:{uri}")
        qop = p.get("qop")
        if qop:
            expected = _md5(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:"
                            f"{qop}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        return hmac.compare_digest(expected, p.get("response", ""))

    def challenge(self) -> HttpResponse:
        body = ("<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<html><head><title>"
                "401 - Unauthorized</title></head><body><h1>401 - Unauthorized</h1></body>"
                "</html>\n")
        return HttpResponse(401, body.encode(), {
            "Content-Type": "text/html",
            "WWW-Authenticate": (f'Digest realm="{self.realm}", charset="UTF-8", '
                                 f'nonce="{self.nonce()}", qop="auth", algorithm="MD5"'),
        })


# ----------------------------------------------------------------------------- RPC
def _rpc_status(code: int, msg: str, status: str = "S") -> list[dict]:
    return [{"STATUS": status, "When": int(time.time()), "Code": code, "Msg": msg,
             "Description": DESCRIPTION}]


def _rpc_error(code: int, msg: str) -> dict:
    return {"STATUS": _rpc_status(code, msg, "E"), "id": 1}


def _type(miner: EmulatedMiner) -> str:
    return f"Antminer {miner.spec.model}"


def _shares(r: Reading) -> int:
    return int(r.hashing_s * max(r.hashrate_ths, 0.0) / 400.0)


def _boards_up(r: Reading) -> bool:
    """Hash boards powered and enumerated: a sleeping or booting machine reports no chips and
    no temperatures (asic_num 0, empty sensor arrays)."""
    return r.state == "mining"


def elapsed_s(miner: EmulatedMiner, r: Reading) -> int:
    """``Elapsed``: seconds since bmminer started (a config write restarts it; a reboot or a
    power cut restarts the control board and it with it)."""
    started = miner.firmware_state.get(PROCESS_START_KEY)
    if started is None:
        return int(r.uptime_s)
    process_s = max(0.0, (miner.clock() - started) / max(miner.time_scale, 1e-9))
    return int(min(r.uptime_s, process_s))


def rpc_version(miner: EmulatedMiner) -> dict:
    gen = generation(miner)
    return {"STATUS": _rpc_status(22, "CGMiner versions"),
            "VERSION": [{"API": "3.1", "BMMiner": BMMINER_VERSION,
                         "CompileTime": gen.compile_time, "Miner": gen.miner_version,
                         "Type": _type(miner)}],
            "id": 1}


def rpc_summary(miner: EmulatedMiner) -> dict:
    r = miner.read()
    ghs = round(r.hashrate_ths * 1000.0, 2)
    accepted = _shares(r)
    rejected = accepted // 400
    return {"STATUS": _rpc_status(11, "Summary"),
            "SUMMARY": [{
                "Accepted": accepted, "Best Share": accepted * 3181, "Device Hardware%": 0.0,
                "Device Rejected%": 0.0, "Difficulty Accepted": float(accepted * 65536),
                "Difficulty Rejected": float(rejected * 65536), "Difficulty Stale": 0.0,
                "Discarded": accepted * 4, "Elapsed": elapsed_s(miner, r), "Found Blocks": 0,
                "GHS 30m": ghs, "GHS 5s": ghs, "GHS av": ghs, "Get Failures": 0,
                "Getwork": accepted // 8 + 1, "Hardware Errors": 0,
                "Last getwork": int(time.time()), "Local Work": accepted * 4,
                "Network Blocks": 0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0,
                "Rejected": rejected, "Remote Failures": 0, "Stale": 0,
                "Total MH": round(ghs * 1000.0 * r.hashing_s, 1), "Utility": 0.0,
                "Work Utility": 0.0,
            }],
            "id": 1}


def _temps(values: list[int]) -> str:
    return "-".join(str(v) for v in values)


def rpc_stats(miner: EmulatedMiner) -> dict:
    spec, gen = miner.spec, generation(miner)
    r = miner.read()
    up = _boards_up(r)
    ghs = round(r.hashrate_ths * 1000.0, 2)
    ideal = round(spec.hashrate_ths * 1000.0, 1)
    chains = range(1, spec.chains + 1)
    slots = range(1, max(SLOTS, spec.chains) + 1)
    chips = spec.chips_per_chain if up else 0
    hot = max(SENSOR_OFFSETS)
    detail: dict = {"Calls": 0, "Elapsed": elapsed_s(miner, r), "GHS 5s": ghs, "GHS av": ghs,
                    "ID": "BTM_SOC0", "Max": 0, "Min": 99999999, "Mode": 2, "STATS": 0,
                    "Wait": 0}
    for i in slots:
        detail[f"chain_acn{i}"] = chips if i <= spec.chains else 0
    for i in slots:
        detail[f"chain_acs{i}"] = _acs(chips) if i <= spec.chains and up else ""
    for i in slots:
        detail[f"chain_hw{i}"] = 0
    for i in slots:
        rate = r.chain_hashrate_ths[i - 1] * 1000.0 if i <= spec.chains else None
        detail[f"chain_rate{i}"] = f"{rate:.2f}" if rate is not None and up else ""
    for i, rpm in enumerate(r.fan_rpm, 1):
        detail[f"fan{i}"] = rpm
    detail["fan_num"] = spec.fans
    for i in slots:
        detail[f"freq{i}"] = 525 if i <= spec.chains and up else 0
    detail.update({"frequency": 525, "miner_count": spec.chains,
                   "miner_id": miner.serial.lower()[:16].rjust(16, "0"),
                   "miner_version": gen.miner_version, "no_matching_work": 0,
                   "rate_30m": ghs, "rate_unit": "GH"})
    board = [round(t) for t in r.board_temp_c]
    chip = [round(t) for t in r.chip_temp_c]
    for i in chains:  # hottest PCB sensor (pyasic: "chip_temp") and hottest chip ("temp")
        detail[f"temp{i}"] = board[i - 1] + hot if up else 0
    for i in chains:
        detail[f"temp2_{i}"] = chip[i - 1] + hot if up else 0
    for i in slots:
        on = up and i <= spec.chains
        detail[f"temp_chip{i}"] = _temps([chip[i - 1] + o if on else 0 for o in SENSOR_OFFSETS])
    detail["temp_max"] = 0  # the real firmware reports 0 here
    detail["temp_num"] = spec.chains
    for i in slots:
        on = up and i <= spec.chains
        detail[f"temp_pcb{i}"] = _temps([board[i - 1] + o if on else 0 for o in SENSOR_OFFSETS])
    for i in slots:
        on = up and i <= spec.chains
        detail[f"temp_pic{i}"] = _temps([board[i - 1] + o + PIC_OFFSET if on else 0
                                         for o in SENSOR_OFFSETS])
    detail.update({"total rate": ghs, "total_acn": chips * spec.chains,
                   "total_freqavg": 525 if up else 0, "total_rateideal": ideal})
    return {"STATUS": _rpc_status(70, "CGMiner stats"),
            "STATS": [{"BMMiner": BMMINER_VERSION, "CompileTime": gen.compile_time,
                       "Miner": gen.miner_version, "Type": _type(miner)}, detail],
            "id": 1}


def rpc_pools(miner: EmulatedMiner) -> dict:
    r = miner.read()
    accepted = _shares(r)
    pools = []
    for i, pool in enumerate(p for p in miner.pools if p.get("url")):
        active = i == 0
        pools.append({
            "Accepted": accepted if active else 0, "Best Share": float(accepted * 3181),
            "Diff": "65.5K" if active else "", "Diff1 Shares": 0,
            "Difficulty Accepted": float(accepted * 65536) if active else 0.0,
            "Difficulty Rejected": 0.0, "Difficulty Stale": 0.0, "Discarded": 0,
            "Get Failures": 0, "Getworks": accepted // 8 + 3 if active else 3,
            "Has GBT": False, "Has Stratum": True,
            "Last Share Difficulty": 65536.0 if active else 0.0,
            "Last Share Time": "0:00:05" if active else "0", "Long Poll": "N", "POOL": i,
            "Pool Rejected%": 0.0, "Pool Stale%%": 0.0, "Priority": i, "Proxy": "",
            "Proxy Type": "", "Quota": 1, "Rejected": accepted // 400 if active else 0,
            "Remote Failures": 0, "Stale": 0, "Status": "Alive", "Stratum Active": active,
            "Stratum URL": pool["url"].split("//")[-1].split(":")[0] if active else "",
            "URL": pool["url"], "User": pool["user"],
        })
    return {"STATUS": _rpc_status(7, f"{len(pools)} Pool(s)"), "POOLS": pools, "id": 1}


def rpc_devs(miner: EmulatedMiner) -> dict:
    """One ASC for the whole machine, as the captured S19 Pro answers (with its "Tenperature"
    spelling and MHS fields that stay 0.0 while it hashes)."""
    r = miner.read()
    accepted = _shares(r)
    now = int(time.time())
    devs = [{"ASC": 0, "Accepted": accepted, "Device Elapsed": elapsed_s(miner, r),
             "Device Hardware%": 0.0, "Device Rejected%": 0.0, "Diff1 Work": 0,
             "Difficulty Accepted": accepted * 65536, "Difficulty Rejected": 0,
             "Enabled": "Y", "Hardware Errors": 0, "ID": 0, "Last Share Difficulty": now,
             "Last Share Pool": 0, "Last Share Time": now, "Last Valid Work": now,
             "MHS 5s": 0.0, "MHS av": 0.0, "Name": "BTM_SOC", "Rejected": accepted // 400,
             "Status": "Alive", "Tenperature": 0.0, "Total MH": 0.0, "Utility": 0.0}]
    return {"STATUS": _rpc_status(9, f"{len(devs)} ASC(s)"), "DEVS": devs, "id": 1}


#: The stock api-groups ("A:stats:pools:devs:summary:version"): everything else that cgminer
#: knows is refused with code 45 (cgminer API-README; cryptoGlance-web-app#49).
DENIED_COMMANDS = frozenset({"config", "devdetails", "edevs", "estats", "coin", "check",
                             "lcd", "notify", "privileged", "asc", "asccount"})

RPC_COMMANDS: dict[str, Callable[[EmulatedMiner], dict]] = {
    "version": rpc_version, "summary": rpc_summary, "stats": rpc_stats, "pools": rpc_pools,
    "devs": rpc_devs,
}


# ----------------------------------------------------------------------------- web
def _web_status(msg: str) -> dict:
    return {"STATUS": "S", "when": int(time.time()), "Msg": msg, "api_version": "1.0.0"}


def _web_info(miner: EmulatedMiner) -> dict:
    gen = generation(miner)
    return {"miner_version": gen.miner_version, "CompileTime": gen.compile_time,
            "type": _type(miner)}


def _json(obj: object) -> HttpResponse:
    return HttpResponse(200, _dumps(obj), {"Content-Type": "application/json"})


def cgi_get_system_info(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    gen = generation(miner)
    return _json({
        "dnsservers": "", "firmware_type": "Release", "gateway": "",
        "hostname": miner.hostname, "ipaddress": miner.ip, "macaddr": miner.mac,
        "minertype": _type(miner), "netdevice": "eth0", "netmask": "255.255.255.0",
        "nettype": "DHCP", "serinum": miner.serial,
        "system_filesystem_version": gen.version(miner.spec.model),
        "system_kernel_version": gen.kernel, "system_mode": "GNU/Linux",
    })


def cgi_get_network_info(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    return _json({
        "nettype": "DHCP", "netdevice": "eth0", "macaddr": miner.mac, "ipaddress": miner.ip,
        "netmask": "255.255.255.0", "conf_nettype": "DHCP", "conf_hostname": miner.hostname,
        "conf_ipaddress": "", "conf_netmask": "", "conf_gateway": "", "conf_dnsservers": "",
    })


def cgi_get_miner_conf(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    if miner.fault.kind == "wipe_pools_on_failed_read":
        # The read fails (pyasic turns it into {"success": False} and posts empty pools).
        return HttpResponse.text("500 - Internal Server Error\n", 500)
    pools = [{"url": p["url"], "user": p["user"], "pass": p.get("pass", "")}
             for p in miner.pools[:3]]
    pools += [{"url": "", "user": "", "pass": ""} for _ in range(3 - len(pools))]
    fan = miner.firmware_state.get(FAN_KEY, {"ctrl": False, "pwm": "100"})
    return _json({
        "pools": pools, "api-listen": True, "api-network": True,
        "api-groups": "A:stats:pools:devs:summary:version", "api-allow": "A:0/0,W:*",
        "bitmain-fan-ctrl": fan["ctrl"], "bitmain-fan-pwm": fan["pwm"],
        "bitmain-use-vil": True, "bitmain-freq": "525", "bitmain-voltage": "1360",
        "bitmain-ccdelay": "0", "bitmain-pwth": "0",
        "bitmain-work-mode": str(work_mode(miner)), "bitmain-freq-level": "100",
    })


def _conf_reply(ok: bool, msg: str = "OK!", delay_s: float = 0.0) -> HttpResponse:
    resp = _json({"stats": "success" if ok else "error", "code": "M000" if ok else "M001",
                  "msg": msg})
    resp.delay_s = delay_s
    return resp


def _scaled(miner: EmulatedMiner, emulated_s: float) -> float:
    return emulated_s * max(miner.time_scale, 0.0)


def _later(delay_s: float, fn: Callable[[], None]) -> None:
    """Run ``fn`` after ``delay_s`` real seconds on the server's loop (at once without one:
    a family driven directly by a unit test)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        fn()
        return
    loop.call_later(delay_s, fn)


def restart_bmminer(miner: EmulatedMiner) -> None:
    """The restart that follows a config write: bmminer down for RESTART_S, then back in the
    stored work mode (asleep, or booting its boards towards hashing)."""
    fs = miner.firmware_state
    mode = work_mode(miner)  # while pending: the stored mode, whatever the boards do now
    fs.pop(PENDING_KEY, None)
    if miner.state == "off":
        return  # the power went while the CGI worked
    asleep = mode == 1 and miner.fault.kind != "ignore_sleep"
    now = miner.clock()
    fs[PROCESS_DOWN_KEY] = now + _scaled(miner, RESTART_S)
    fs[PROCESS_START_KEY] = fs[PROCESS_DOWN_KEY]
    actor, miner.actor = miner.actor, "firmware"
    try:
        wanted = "low" if mode in (2, 3) else "normal"
        if miner.mode != wanted:
            miner.set_mode(wanted)
        miner.restart_process("sleeping" if asleep else "mining", RESTART_S)
    finally:
        miner.actor = actor


def cgi_set_miner_conf(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    """Store the config now, answer after the CGI's working time, then restart bmminer."""
    try:
        conf = json.loads(req.body or b"{}")
        if not isinstance(conf, dict):
            raise ValueError("not an object")
    except ValueError:
        return _conf_reply(False, "invalid json")
    gen = generation(miner)
    fault = miner.fault
    delay_s = fault.delay_s if fault.kind == "slow_write" else _scaled(miner, CGI_S)
    if fault.kind == "lie":
        return _conf_reply(True, delay_s=delay_s)  # acknowledged; nothing stored or restarted
    if not gen.lies:
        error = _store_conf(miner, gen, conf)
        if error is not None:
            return _conf_reply(False, error)
    if fault.kind == "ignore_sleep":
        # Stored (the config reads back asleep) but never applied: bmminer is not restarted
        # and keeps hashing (asic-rs#245: "hashrate did not drop within 60s").
        return _conf_reply(True, delay_s=delay_s)
    miner.firmware_state[PENDING_KEY] = True
    _later(delay_s, lambda: restart_bmminer(miner))
    return _conf_reply(True, delay_s=delay_s)


def _store_conf(miner: EmulatedMiner, gen: Generation, conf: dict) -> str | None:
    """Write what this generation applies into the stored config; an error text, or None."""
    fs = miner.firmware_state
    mode: int | None = None
    if gen.mode_key in conf:
        try:
            mode = int(conf[gen.mode_key])
        except (TypeError, ValueError):
            return f"invalid {gen.mode_key}"
        if mode not in gen.modes:
            return f"invalid {gen.mode_key}"
    if mode is not None:
        before = work_mode(miner)
        fs[WORK_MODE_KEY] = mode
        miner.sleep_persisted = mode == 1
        if mode != before:
            miner.record("sleep" if mode == 1 else "wake" if before == 1 else "mode")
    pools = conf.get("pools")
    if isinstance(pools, list):
        # Stored as posted, empty entries and all: three empty pools leave none.
        new = [{"url": str(p.get("url", "")), "user": str(p.get("user", "")),
                "pass": str(p.get("pass", ""))}
               for p in pools if isinstance(p, dict) and p.get("url")]
        if new != miner.pools:
            miner.pools = new
            miner.record("pools")
    if "bitmain-fan-ctrl" in conf:
        pwm = conf.get("bitmain-fan-pwm", conf.get("bitmain-fan-pwn", "100"))
        fs[FAN_KEY] = {"ctrl": bool(conf["bitmain-fan-ctrl"]), "pwm": str(pwm)}
    return None


def _rate_status(r: Reading) -> list[dict]:
    ok = r.state == "mining"
    return [{"type": "rate", "status": "s" if ok else "w", "code": 0 if ok else 1,
             "msg": "" if ok else "Hashrate low"},
            {"type": "network", "status": "s", "code": 0, "msg": ""},
            {"type": "fans", "status": "s", "code": 0, "msg": ""},
            {"type": "temp", "status": "s", "code": 0, "msg": ""}]


def cgi_summary(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    r = miner.read()
    ghs = round(r.hashrate_ths * 1000.0, 2)
    return _json({
        "STATUS": _web_status("summary"), "INFO": _web_info(miner),
        "SUMMARY": [{"elapsed": elapsed_s(miner, r), "rate_5s": ghs, "rate_30m": ghs,
                     "rate_avg": ghs, "rate_ideal": miner.spec.hashrate_ths * 1000.0,
                     "rate_unit": "GH/s", "hw_all": 0, "bestshare": 0,
                     "status": _rate_status(r)}],
    })


def cgi_stats(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    spec = miner.spec
    r = miner.read()
    up = _boards_up(r)
    ghs = round(r.hashrate_ths * 1000.0, 2)
    chains = []
    for i in range(spec.chains):
        b, c = round(r.board_temp_c[i]), round(r.chip_temp_c[i])
        chains.append({
            "index": i, "freq_avg": 525 if up else 0,
            "rate_ideal": round(spec.hashrate_ths * 1000.0 / spec.chains, 2),
            "rate_real": round(r.chain_hashrate_ths[i] * 1000.0, 2),
            "asic_num": spec.chips_per_chain if up else 0,
            "asic": _acs(spec.chips_per_chain).strip() if up else "",
            "temp_pic": [b + o + PIC_OFFSET for o in SENSOR_OFFSETS] if up else [],
            "temp_pcb": [b + o for o in SENSOR_OFFSETS] if up else [],
            "temp_chip": [c + o for o in SENSOR_OFFSETS] if up else [],
            "hw": 0, "eeprom_loaded": True, "sn": f"{miner.serial}C{i}", "hwp": 0.0,
            "tpl": [],
        })
    return _json({
        "STATUS": _web_status("stats"), "INFO": _web_info(miner),
        "STATS": [{"elapsed": elapsed_s(miner, r), "rate_5s": ghs, "rate_30m": ghs,
                   "rate_avg": ghs, "rate_ideal": spec.hashrate_ths * 1000.0,
                   "rate_unit": "GH/s", "chain_num": spec.chains, "fan_num": spec.fans,
                   "fan": list(r.fan_rpm), "hwp_total": 0.0, "miner-mode": work_mode(miner),
                   "freq-level": 100, "chain": chains}],
    })


def cgi_pools(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    rpc = rpc_pools(miner)
    pools = [{"index": p["POOL"], "url": p["URL"], "user": p["User"], "status": p["Status"],
              "priority": p["Priority"], "getworks": p["Getworks"],
              "accepted": p["Accepted"], "rejected": p["Rejected"], "discarded": 0,
              "stale": 0, "diff": p["Diff"], "diff1": 0,
              "diffa": p["Difficulty Accepted"], "diffr": 0.0, "diffs": 0.0,
              "lsdiff": p["Last Share Difficulty"], "lstime": p["Last Share Time"]}
             for p in rpc["POOLS"]]
    return _json({"STATUS": _web_status("pools"), "INFO": _web_info(miner), "POOLS": pools})


def cgi_get_blink_status(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    return _json({"blink": miner.led_on})


def cgi_blink(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    try:
        params = json.loads(req.body) if req.body else {}
    except ValueError:
        params = {}
    want = str(params.get("blink", "")).lower() if isinstance(params, dict) else ""
    if want in ("true", "1"):
        miner.led_on = True
        return _json({"code": "B000", "msg": "start blink"})
    if want in ("false", "0"):
        miner.led_on = False
        return _json({"code": "B100", "msg": "stop blink"})
    return _json({"code": "B200", "msg": "invalid blink parameter"})


def reboot_board(miner: EmulatedMiner) -> bool:
    """The control board reboots: silent for its boot (``miner.board_boot_s``, at most
    BOARD_BOOT_S, scaled: the same silence as after a power cut), then bmminer starts again in
    the stored work mode."""
    if miner.fault.kind == "lie":
        return True
    if not miner.reboot():
        return False
    fs = miner.firmware_state
    fs[BOARD_DOWN_KEY] = miner.clock() + _scaled(miner, miner.board_boot_s)
    fs[PROCESS_START_KEY] = fs[BOARD_DOWN_KEY]
    return True


def cgi_reboot(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    ok = reboot_board(miner)
    return _json({"stats": "success" if ok else "error", "code": "R000" if ok else "R001",
                  "msg": "reboot" if ok else "failed"})


def cgi_set_network_conf(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    try:
        conf = json.loads(req.body or b"{}")
    except ValueError:
        conf = {}
    if isinstance(conf, dict) and conf.get("ipHost"):
        miner.hostname = str(conf["ipHost"])
    return _json({"stats": "success", "code": "N000", "msg": "OK!"})


def page_index(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    html = (f"<!DOCTYPE html><html><head><title>{_type(miner)}</title></head>"
            "<body><div id=\"app\"></div></body></html>\n")
    return HttpResponse.text(html, content_type="text/html")


def cgi_log(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    return HttpResponse.text(f"bmminer {BMMINER_VERSION}: state {miner.state}\n")


WEB_ROUTES: dict[str, Callable[[EmulatedMiner, HttpRequest], HttpResponse]] = {
    "/": page_index,
    "/index.html": page_index,
    "/cgi-bin/get_system_info.cgi": cgi_get_system_info,
    "/cgi-bin/get_network_info.cgi": cgi_get_network_info,
    "/cgi-bin/get_miner_conf.cgi": cgi_get_miner_conf,
    "/cgi-bin/set_miner_conf.cgi": cgi_set_miner_conf,
    "/cgi-bin/summary.cgi": cgi_summary,
    "/cgi-bin/stats.cgi": cgi_stats,
    "/cgi-bin/pools.cgi": cgi_pools,
    "/cgi-bin/get_blink_status.cgi": cgi_get_blink_status,
    "/cgi-bin/blink.cgi": cgi_blink,
    "/cgi-bin/reboot.cgi": cgi_reboot,
    "/cgi-bin/set_network_conf.cgi": cgi_set_network_conf,
    "/cgi-bin/log.cgi": cgi_log,
}
#: CGIs that ask bmminer: while it restarts they print nothing (an empty 200 body).
BMMINER_CGIS = frozenset({"/cgi-bin/summary.cgi", "/cgi-bin/stats.cgi", "/cgi-bin/pools.cgi"})


def process_down(miner: EmulatedMiner) -> bool:
    """bmminer is restarting after a config write."""
    return miner.clock() < miner.firmware_state.get(PROCESS_DOWN_KEY, 0.0)


def board_down(miner: EmulatedMiner) -> bool:
    """The control board is rebooting (its own reboot, or booting after mains power came
    back): nothing on the machine answers."""
    now = miner.clock()
    return now < miner.firmware_state.get(BOARD_DOWN_KEY, 0.0) or now < miner.board_down_until


def process_state(miner: EmulatedMiner) -> str:
    """running | restarting | off: bmminer as the control API reports it."""
    if miner.state == "off":
        return "off"
    if board_down(miner) or process_down(miner):
        return "restarting"
    return "running"


class AntminerFamily:
    """Bitmain stock firmware: bmminer RPC + lighttpd/CGI web UI behind digest auth."""

    name = "antminer"
    rpc_port: int | None = 4028
    http_port: int | None = 80

    def __init__(self) -> None:
        self.auth = DigestAuth(REALM, USERNAME, PASSWORD)

    @staticmethod
    def touch(miner: EmulatedMiner) -> None:
        """Apply what happens without a request: a ``silent_reboot`` fault reboots the control
        board once, when the machine is first touched after the fault was set (a request or
        the control API's view)."""
        fault = miner.fault
        fs = miner.firmware_state
        if fault.kind == "silent_reboot" and fs.get(SILENT_REBOOT_KEY) is not fault:
            fs[SILENT_REBOOT_KEY] = fault
            actor, miner.actor = miner.actor, "firmware"
            try:
                reboot_board(miner)
            finally:
                miner.actor = actor

    def handle_rpc(self, miner: EmulatedMiner, request: bytes) -> bytes:
        """cgminer API: JSON ``{"command": "a+b", "parameter": ...}``; NUL-terminated reply.
        Silent (closed unanswered) while bmminer restarts or the control board reboots."""
        self.touch(miner)
        if board_down(miner) or process_down(miner):
            return b""
        text = request.decode("utf-8", "replace").strip().rstrip("\x00")
        if text.startswith("{"):
            try:
                req = json.loads(text)
                command = str(req.get("command", "")) if isinstance(req, dict) else ""
            except ValueError:
                return _dumps(_rpc_error(23, "Invalid JSON")) + b"\x00"
        else:
            command = text.split("|", 1)[0]  # cgminer's plain-text form "command|parameter"
        if not command:
            return _dumps(_rpc_error(14, "Invalid command")) + b"\x00"
        parts = command.split("+")
        if len(parts) == 1:
            return _dumps(self._one(miner, command)) + b"\x00"
        if not generation(miner).joined_rpc:
            return _dumps(_rpc_error(14, "Invalid command")) + b"\x00"
        joined: dict = {part: [self._one(miner, part)] for part in parts}
        joined["id"] = 1
        return _dumps(joined) + b"\x00"

    @staticmethod
    def _one(miner: EmulatedMiner, command: str) -> dict:
        if command in DENIED_COMMANDS:
            return _rpc_error(45, f"Access denied to '{command}' command")
        fn = RPC_COMMANDS.get(command)
        if fn is None:
            return _rpc_error(14, "Invalid command")
        return fn(miner)

    def handle_http(self, miner: EmulatedMiner, request: HttpRequest) -> HttpResponse:
        """Everything on :80 sits behind digest auth (lighttpd), including the 404s."""
        self.touch(miner)
        if board_down(miner):
            return HttpResponse(drop=True)
        if not self.auth.authorized(request, miner.effective_password):
            return self.auth.challenge()
        route = WEB_ROUTES.get(request.path)
        if route is None:
            return HttpResponse.text("404 - Not Found\n", 404)
        if request.path in BMMINER_CGIS and process_down(miner):
            return HttpResponse(200, b"", {"Content-Type": "application/json"})
        return route(miner, request)

    def control_view(self, miner: EmulatedMiner) -> dict:
        """What GET /miners adds for a stock Antminer: its firmware and whether it obeys."""
        self.touch(miner)
        gen = generation(miner)
        return {
            "firmware_version": gen.version(miner.spec.model),
            "firmware_generation": gen.name,
            "process": process_state(miner),
            "work_mode": work_mode(miner),
            "obeys": not gen.lies and miner.fault.kind not in ("lie", "ignore_sleep"),
        }
