"""Bitmain stock firmware (S19 / S19j Pro / S21): bmminer RPC on 4028, digest-auth web UI on 80.

Shapes follow what pyasic 0.79 detects and parses (``miners/factory.py``,
``miners/backends/antminer.py`` ``AntminerModern``, ``bmminer.py``, ``web/antminer.py``):

* detection: ``GET /`` answers 401 with ``WWW-Authenticate: Digest realm="antMiner
  Configuration"``; the Marathon probe ``/kaonsu/v1/brief`` is a non-JSON 404 (so the miner stays
  an Antminer); the model comes from ``get_system_info.cgi`` "minertype" or RPC ``version``
  "Type" ("Antminer S19j Pro" -> ``BMMinerS19jPro``);
* data: RPC ``version``/``summary``/``stats``/``pools`` (also batched as ``a+b``) and the CGIs
  ``get_system_info``, ``summary``, ``get_blink_status``, ``get_miner_conf`` and ``stats``;
* control: ``set_miner_conf.cgi`` "miner-mode" 0 normal / 1 sleep / 3 low power (pyasic's
  ``stop_mining``/``resume_mining``), ``blink.cgi``, ``reboot.cgi``.

Like the real firmware it reports no wattage and accepts no power limit. "Is it mining" is what
``get_miner_conf.cgi`` says in ``bitmain-work-mode``: 1 means asleep. With the ``ignore_sleep``
fault the firmware stores work mode 1 (so pyasic believes it) while the hash boards keep going.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from functools import lru_cache

from emulator.families.base import HttpRequest, HttpResponse
from emulator.physics import EmulatedMiner, Reading

USERNAME = "root"
PASSWORD = "root"
REALM = "antMiner Configuration"
BMMINER_VERSION = "1.0.0"
MINER_VERSION = "uart_trans.1.3"
COMPILE_TIME = "Tue Aug 16 11:00:04 CST 2022"
WEB_MINER_VERSION = "49.0.1.3"
#: Per-chain sensor offsets (inlet side cooler, outlet side hotter); they average to zero so a
#: board's mean sensor reading is the physical per-chain temperature.
SENSOR_OFFSETS = (-7, -8, 8, 7)

WORK_MODE_KEY = "antminer.work_mode"
FAN_KEY = "antminer.fan"


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@lru_cache(maxsize=64)
def _acs(chips: int) -> str:
    """bmminer's per-chain chip status string: ' oooooooo oooooooo ...'."""
    groups = [("o" * min(8, chips - i)) for i in range(0, chips, 8)]
    return " " + " ".join(groups)


def work_mode(miner: EmulatedMiner) -> int:
    """``bitmain-work-mode`` as the firmware reports it (0 normal, 1 sleep, 3 low power)."""
    if miner.state == "sleeping":
        return 1
    if miner.firmware_state.get(WORK_MODE_KEY) == 1 and miner.fault.kind == "ignore_sleep":
        return 1  # told to sleep, says it sleeps, keeps hashing
    return 3 if miner.mode == "low" else 0


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
             "Description": f"bmminer {BMMINER_VERSION}"}]


def _rpc_error(code: int, msg: str) -> dict:
    return {"STATUS": _rpc_status(code, msg, "E"), "id": 1}


def _type(miner: EmulatedMiner) -> str:
    return f"Antminer {miner.spec.model}"


def _shares(r: Reading) -> int:
    return int(r.hashing_s * max(r.hashrate_ths, 0.0) / 400.0)


def rpc_version(miner: EmulatedMiner) -> dict:
    return {"STATUS": _rpc_status(22, "BMMiner versions"),
            "VERSION": [{"BMMiner": BMMINER_VERSION, "API": "3.1", "Miner": MINER_VERSION,
                         "CompileTime": COMPILE_TIME, "Type": _type(miner)}],
            "id": 1}


def rpc_summary(miner: EmulatedMiner) -> dict:
    r = miner.read()
    ghs = r.hashrate_ths * 1000.0
    accepted = _shares(r)
    return {"STATUS": _rpc_status(11, "Summary"),
            "SUMMARY": [{
                "Elapsed": int(r.uptime_s), "GHS 5s": round(ghs, 2), "GHS av": round(ghs, 2),
                "GHS 30m": round(ghs, 2), "Found Blocks": 0, "Getworks": accepted // 8 + 1,
                "Accepted": accepted, "Rejected": accepted // 400, "Hardware Errors": 0,
                "Utility": 0.0, "Discarded": accepted // 20, "Stale": 0, "Get Failures": 0,
                "Local Work": accepted * 4, "Remote Failures": 0, "Network Blocks": 0,
                "Total MH": round(ghs * 1000.0 * r.hashing_s, 0), "Work Utility": 0.0,
                "Difficulty Accepted": float(accepted * 65536),
                "Difficulty Rejected": float(accepted // 400 * 65536),
                "Difficulty Stale": 0.0, "Best Share": 0, "Device Hardware%": 0.0,
                "Device Rejected%": 0.0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0,
                "Last getwork": int(time.time()),
            }],
            "id": 1}


def rpc_stats(miner: EmulatedMiner) -> dict:
    spec = miner.spec
    r = miner.read()
    ghs = r.hashrate_ths * 1000.0
    ideal = spec.hashrate_ths * 1000.0
    detail: dict = {
        "STATS": 0, "ID": "BTM_SOC0", "Elapsed": int(r.uptime_s), "Calls": 0, "Wait": 0.0,
        "Max": 0.0, "Min": 99999999.0, "GHS 5s": f"{ghs:.2f}", "GHS av": round(ghs, 2),
        "rate_30m": round(ghs, 2), "Mode": 2, "miner_count": spec.chains, "frequency": 525,
        "fan_num": spec.fans,
    }
    for i, rpm in enumerate(r.fan_rpm, 1):
        detail[f"fan{i}"] = rpm
    detail["temp_num"] = spec.chains
    for i in range(spec.chains):
        detail[f"temp{i + 1}"] = round(r.board_temp_c[i] + max(SENSOR_OFFSETS))
    for i in range(spec.chains):
        detail[f"temp2_{i + 1}"] = round(r.chip_temp_c[i] + max(SENSOR_OFFSETS))
    for i in range(spec.chains):
        detail[f"temp3_{i + 1}"] = round(r.chip_temp_c[i] + max(SENSOR_OFFSETS))
    for i in range(spec.chains):
        b = round(r.board_temp_c[i])
        detail[f"temp_pcb{i + 1}"] = "-".join(str(b + o) for o in SENSOR_OFFSETS)
    for i in range(spec.chains):
        c = round(r.chip_temp_c[i])
        detail[f"temp_chip{i + 1}"] = "-".join(str(c + o) for o in SENSOR_OFFSETS)
    hashing = r.state == "mining"
    detail.update({
        "total_rateideal": round(ideal, 2), "rate_unit": "GH", "total_freqavg": 525.0,
        "total_acn": spec.chains * spec.chips_per_chain, "total_rate": round(ghs, 2),
        "temp_max": round(max(r.chip_temp_c) + max(SENSOR_OFFSETS)) if r.chip_temp_c else 0,
        "no_matching_work": 0,
    })
    for i in range(spec.chains):
        detail[f"chain_acn{i + 1}"] = spec.chips_per_chain
    for i in range(spec.chains):
        detail[f"chain_acs{i + 1}"] = _acs(spec.chips_per_chain)
    for i in range(spec.chains):
        detail[f"chain_hw{i + 1}"] = 0
    for i, rate in enumerate(r.chain_hashrate_ths, 1):
        detail[f"chain_rate{i}"] = f"{rate * 1000.0:.2f}"
    for i in range(spec.chains):
        detail[f"chain_rateideal{i + 1}"] = round(ideal / spec.chains, 2)
    for i in range(spec.chains):
        detail[f"freq{i + 1}"] = 525 if hashing else 0
    detail.update({"miner_version": MINER_VERSION, "miner_id": miner.serial.lower()})
    return {"STATUS": _rpc_status(70, "BMMiner stats"),
            "STATS": [{"BMMiner": BMMINER_VERSION, "Miner": MINER_VERSION,
                       "CompileTime": COMPILE_TIME, "Type": _type(miner)}, detail],
            "id": 1}


def rpc_pools(miner: EmulatedMiner) -> dict:
    r = miner.read()
    accepted = _shares(r)
    pools = []
    for i, pool in enumerate(miner.pools):
        active = i == 0
        pools.append({
            "POOL": i, "URL": pool["url"], "Status": "Alive", "Priority": i, "Quota": 1,
            "Long Poll": "N", "Getworks": accepted // 8 + 1 if active else 0,
            "Accepted": accepted if active else 0, "Rejected": accepted // 400 if active else 0,
            "Discarded": 0, "Stale": 0, "Get Failures": 0, "Remote Failures": 0,
            "User": pool["user"], "Last Share Time": "0:00:05" if active else "0",
            "Diff": "65.5K", "Diff1 Shares": 0, "Proxy Type": "", "Proxy": "",
            "Difficulty Accepted": float(accepted * 65536) if active else 0.0,
            "Difficulty Rejected": 0.0, "Difficulty Stale": 0.0,
            "Last Share Difficulty": 65536.0 if active else 0.0, "Has Stratum": True,
            "Stratum Active": active, "Stratum URL": pool["url"].split("//")[-1].split(":")[0],
            "Has GBT": False, "Best Share": 0, "Pool Rejected%": 0.0, "Pool Stale%": 0.0,
        })
    return {"STATUS": _rpc_status(7, f"{len(pools)} Pool(s)"), "POOLS": pools, "id": 1}


def rpc_devs(miner: EmulatedMiner) -> dict:
    r = miner.read()
    devs = [{"ASC": i, "Name": "BTM_SOC", "ID": i, "Enabled": "Y",
             "Status": "Alive" if r.state == "mining" else "Dead",
             "Temperature": r.chip_temp_c[i], "MHS 5s": round(rate * 1e6, 2),
             "MHS av": round(rate * 1e6, 2), "Accepted": 0, "Rejected": 0,
             "Hardware Errors": 0, "Utility": 0.0, "Last Share Pool": 0,
             "Device Elapsed": int(r.uptime_s)}
            for i, rate in enumerate(r.chain_hashrate_ths)]
    return {"STATUS": _rpc_status(9, f"{len(devs)} ASC(s)"), "DEVS": devs, "id": 1}


def rpc_devdetails(miner: EmulatedMiner) -> dict:
    details = [{"DEVDETAILS": i, "Name": "BTM_SOC", "ID": i, "Driver": "bitmain_soc",
                "Kernel": "", "Model": "", "Device Path": ""} for i in range(miner.spec.chains)]
    return {"STATUS": _rpc_status(69, "Device Details"), "DEVDETAILS": details, "id": 1}


def rpc_config(miner: EmulatedMiner) -> dict:
    return {"STATUS": _rpc_status(33, "BMMiner config"),
            "CONFIG": [{"ASC Count": miner.spec.chains, "PGA Count": 0,
                        "Pool Count": len(miner.pools), "Strategy": "Failover",
                        "Log Interval": 5, "Device Code": "", "OS": "Linux",
                        "Hotplug": "None"}],
            "id": 1}


RPC_COMMANDS: dict[str, Callable[[EmulatedMiner], dict]] = {
    "version": rpc_version, "summary": rpc_summary, "stats": rpc_stats, "pools": rpc_pools,
    "devs": rpc_devs, "devdetails": rpc_devdetails, "config": rpc_config,
}


# ----------------------------------------------------------------------------- web
def _web_status(msg: str) -> dict:
    return {"STATUS": "S", "when": int(time.time()), "Msg": msg, "api_version": "1.0.0"}


def _web_info(miner: EmulatedMiner) -> dict:
    return {"miner_version": WEB_MINER_VERSION, "CompileTime": COMPILE_TIME,
            "type": _type(miner)}


def _json(obj: object) -> HttpResponse:
    return HttpResponse(200, _dumps(obj), {"Content-Type": "application/json"})


def cgi_get_system_info(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    return _json({
        "minertype": _type(miner), "nettype": "DHCP", "netdevice": "eth0",
        "macaddr": miner.mac, "hostname": miner.hostname, "ipaddress": miner.ip,
        "netmask": "255.255.255.0", "gateway": "", "dnsservers": "",
        "system_mode": "GNU/Linux",
        "system_kernel_version": "Linux 4.9.38 #1 SMP PREEMPT Thu Mar 24 10:13:39 CST 2022",
        "system_filesystem_version": COMPILE_TIME, "firmware_type": "Release",
        "serinum": miner.serial,
    })


def cgi_get_network_info(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    return _json({
        "nettype": "DHCP", "netdevice": "eth0", "macaddr": miner.mac, "ipaddress": miner.ip,
        "netmask": "255.255.255.0", "conf_nettype": "DHCP", "conf_hostname": miner.hostname,
        "conf_ipaddress": "", "conf_netmask": "", "conf_gateway": "", "conf_dnsservers": "",
    })


def cgi_get_miner_conf(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
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


def _conf_reply(ok: bool, msg: str = "OK!") -> HttpResponse:
    return _json({"stats": "success" if ok else "error", "code": "M000" if ok else "M001",
                  "msg": msg})


def cgi_set_miner_conf(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    try:
        conf = json.loads(req.body or b"{}")
        if not isinstance(conf, dict):
            raise ValueError("not an object")
    except ValueError:
        return _conf_reply(False, "invalid json")
    if "miner-mode" in conf:
        try:
            mode = int(conf["miner-mode"])
        except (TypeError, ValueError):
            return _conf_reply(False, "invalid miner-mode")
        if mode not in (0, 1, 3):
            return _conf_reply(False, "invalid miner-mode")
        miner.firmware_state[WORK_MODE_KEY] = mode
        if mode == 1:
            miner.sleep()
        else:
            miner.set_mode("low" if mode == 3 else "normal")
            miner.wake()  # from sleep the hash boards come back after the (scaled) boot time
    pools = conf.get("pools")
    if isinstance(pools, list):
        new = [{"url": str(p.get("url", "")), "user": str(p.get("user", "")),
                "pass": str(p.get("pass", ""))}
               for p in pools if isinstance(p, dict) and p.get("url")]
        if new:
            miner.pools = new
    if "bitmain-fan-ctrl" in conf:
        pwm = conf.get("bitmain-fan-pwm", conf.get("bitmain-fan-pwn", "100"))
        miner.firmware_state[FAN_KEY] = {"ctrl": bool(conf["bitmain-fan-ctrl"]),
                                         "pwm": str(pwm)}
    return _conf_reply(True)


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
        "SUMMARY": [{"elapsed": int(r.uptime_s), "rate_5s": ghs, "rate_30m": ghs,
                     "rate_avg": ghs, "rate_ideal": miner.spec.hashrate_ths * 1000.0,
                     "rate_unit": "GH/s", "hw_all": 0, "bestshare": 0,
                     "status": _rate_status(r)}],
    })


def cgi_stats(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    spec = miner.spec
    r = miner.read()
    ghs = round(r.hashrate_ths * 1000.0, 2)
    chains = []
    for i in range(spec.chains):
        b, c = round(r.board_temp_c[i]), round(r.chip_temp_c[i])
        chains.append({
            "index": i, "freq_avg": 525 if r.state == "mining" else 0,
            "rate_ideal": round(spec.hashrate_ths * 1000.0 / spec.chains, 2),
            "rate_real": round(r.chain_hashrate_ths[i] * 1000.0, 2),
            "asic_num": spec.chips_per_chain, "asic": _acs(spec.chips_per_chain).strip(),
            "temp_pic": [b + o for o in SENSOR_OFFSETS],
            "temp_pcb": [b + o for o in SENSOR_OFFSETS],
            "temp_chip": [c + o for o in SENSOR_OFFSETS],
            "hw": 0, "eeprom_loaded": True, "sn": f"{miner.serial}C{i}", "hwp": 0.0,
            "tpl": [],
        })
    return _json({
        "STATUS": _web_status("stats"), "INFO": _web_info(miner),
        "STATS": [{"elapsed": int(r.uptime_s), "rate_5s": ghs, "rate_30m": ghs,
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


def cgi_reboot(miner: EmulatedMiner, req: HttpRequest) -> HttpResponse:
    ok = miner.reboot()
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


class AntminerFamily:
    """Bitmain stock firmware: bmminer RPC + lighttpd/CGI web UI behind digest auth."""

    name = "antminer"
    rpc_port: int | None = 4028
    http_port: int | None = 80

    def __init__(self) -> None:
        self.auth = DigestAuth(REALM, USERNAME, PASSWORD)

    def handle_rpc(self, miner: EmulatedMiner, request: bytes) -> bytes:
        """cgminer API: JSON ``{"command": "a+b", "parameter": ...}``; NUL-terminated reply."""
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
        joined: dict = {part: [self._one(miner, part)] for part in parts}
        joined["id"] = 1
        return _dumps(joined) + b"\x00"

    @staticmethod
    def _one(miner: EmulatedMiner, command: str) -> dict:
        fn = RPC_COMMANDS.get(command)
        if fn is None:
            return _rpc_error(14, "Invalid command")
        return fn(miner)

    def handle_http(self, miner: EmulatedMiner, request: HttpRequest) -> HttpResponse:
        """Everything on :80 sits behind digest auth (lighttpd), including the 404s."""
        if not self.auth.authorized(request, miner.effective_password):
            return self.auth.challenge()
        route = WEB_ROUTES.get(request.path)
        if route is None:
            return HttpResponse.text("404 - Not Found\n", 404)
        return route(miner, request)
