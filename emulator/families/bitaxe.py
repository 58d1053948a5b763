"""Bitaxe running AxeOS / ESP-Miner: a JSON REST API on port 80 and no cgminer RPC.

pyasic 0.79 detects it by "AxeOS" in the page at ``/`` and picks the class from
``/api/system/info`` "ASICModel" (BM1370 -> ``BitAxeGamma``); all of ``get_data()`` comes from
that one endpoint (``asicCount`` is there too, so ``/api/system/asic`` is only a fallback).
Routes, shapes and error behaviour follow ESP-Miner's ``http_server.c`` of the 2.x line that
pyasic 0.79 targets: unknown ``/api/*`` routes answer 404 ``{"error": "unknown route"}``,
anything else redirects to ``/``, ``PATCH /api/system`` answers 200 with an empty body.

It cannot be curtailed through pyasic 0.79: its ``stop_mining()`` on a Bitaxe returns False
without sending anything, so a site controller must treat it as "cannot command".

What a machine serves depends on its AxeOS version (per miner, fleet ``firmware_version``;
default ``DEFAULT_VERSION``), as ESP-Miner's ``http_server.c`` at each release tag has it:

* v2.4.x answers ``/api/system/info`` with exactly the keys and types of the reply captured
  from a real v2.4.5 Bitaxe (``shared/firmware-captures/bitaxe/v2_0_0/system_info.json``:
  ``bestDiff`` a string such as "483k", no ``asicCount``-era extras), serves no
  ``/api/system/asic``, ``statistics`` or ``identify``, and redirects every unknown route to
  ``/`` (its 404 handler: "302 Temporary Redirect");
* ``POST /api/system/restart`` answers plain text "System will restart shortly." up to
  v2.12 and JSON ``{"message": ...}`` from v2.13 -- pyasic's ``reboot()`` parses JSON, so on
  older firmware it raises although the machine restarts;
* ``POST /api/system/pause`` and ``/resume`` exist from v2.14 (ESP-Miner #1608): the ASIC
  stops, the board stays up, ``miningPaused`` says so, and a restart resumes mining (the flag
  is not stored). Earlier versions do not have them.

The ``lie`` fault: restart, pause, resume, identify and ``PATCH /api/system`` answer as they
do on success and change nothing.
"""

from __future__ import annotations

import json
import re
import time

from curtaild.emulator.families.base import HttpRequest, HttpResponse
from curtaild.emulator.physics import EmulatedMiner

#: What an emulated Bitaxe runs unless its fleet entry says otherwise: the captured release.
DEFAULT_VERSION = "v2.4.5"
VERSION = DEFAULT_VERSION
IDF_VERSION = "v5.3.1"
#: Releases whose behaviour differs (ESP-Miner release tags).
RICH_INFO_SINCE = (2, 5, 0)  # system/info grows beyond v2.4.5's keys; asic, identify routes
JSON_RESTART_SINCE = (2, 13, 0)
PAUSE_SINCE = (2, 14, 0)
PAUSED_KEY = "bitaxe.mining_paused"
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+.].*)?$")
#: model -> (ASIC name, small cores per ASIC, board version), as ESP-Miner's device config.
ASICS: dict[str, tuple[str, int, str]] = {
    "Gamma": ("BM1370", 2040, "601"),
    "Supra": ("BM1368", 1276, "401"),
    "Ultra": ("BM1366", 894, "204"),
    "Max": ("BM1397", 672, "102"),
}
INDEX_HTML = (
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>AxeOS</title>"
    "<base href=\"/\"></head><body><app-root></app-root></body></html>\n"
)
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
}
SETTINGS_KEY = "bitaxe.settings"
#: Settings ``PATCH /api/system`` may change (the rest_name of ESP-Miner's NVS keys).
SETTABLE = {
    "stratumURL": str, "stratumPort": int, "stratumUser": str, "stratumPassword": str,
    "fallbackStratumURL": str, "fallbackStratumPort": int, "fallbackStratumUser": str,
    "fallbackStratumPassword": str, "hostname": str, "frequency": float,
    "coreVoltage": int, "autofanspeed": int, "fanspeed": int, "temptarget": int,
    "overheat_mode": int, "overclockEnabled": int, "flipscreen": int, "invertscreen": int,
    "displayTimeout": int, "statsFrequency": int, "ssid": str, "wifiPass": str,
}


def axeos_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of "v2.4.5-3-gb5d1e36-dirty"; None if it is not a version."""
    m = _VERSION_RE.match(text.strip()) if isinstance(text, str) else None
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def version_of(miner: EmulatedMiner) -> str:
    return miner.firmware_version or DEFAULT_VERSION


def _at_least(miner: EmulatedMiner, since: tuple[int, int, int]) -> bool:
    return (axeos_version(version_of(miner)) or (2, 4, 5)) >= since


def _mark(miner: EmulatedMiner) -> tuple[float, str]:
    """(when this boot began, physical state): what a firmware flag is true of."""
    # the boot's own instant (as whatsminer.belief): clock() - uptime from two clock reads
    # drifts by a context switch, and one boot looked like two on a loaded machine
    return miner.board_up_at, miner.read().state


def _paused(miner: EmulatedMiner) -> bool:
    """Paused through the API, and nothing physical happened since (the flag is not stored:
    a restart resumes; a wake from elsewhere clears it)."""
    mark = miner.firmware_state.get(PAUSED_KEY)
    if mark is None:
        return False
    boot, state = _mark(miner)
    if boot != mark[0] or state != mark[1]:
        miner.firmware_state.pop(PAUSED_KEY, None)
        return False
    return True


def _best_diff(shares: int) -> str:
    """AxeOS's own formatting of the best difficulty ("483k", "1.2M", "0")."""
    best = shares * 1700
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if best >= size:
            return f"{best / size:.3g}{unit}"
    return str(best)


def _json(obj: object, status: int = 200) -> HttpResponse:
    return HttpResponse(status, json.dumps(obj).encode(),
                        {"Content-Type": "application/json", **CORS})


def _asic(miner: EmulatedMiner) -> tuple[str, int, str]:
    return ASICS.get(miner.spec.model, ASICS["Gamma"])


def _settings(miner: EmulatedMiner) -> dict:
    """NVS settings, created on first use from the miner's pool and nameplate."""
    settings = miner.firmware_state.get(SETTINGS_KEY)
    if settings is None:
        pool = miner.pools[0] if miner.pools else {"url": "", "user": "", "pass": ""}
        hostport = pool["url"].split("//")[-1]
        host, _, port = hostport.partition(":")
        _, cores, _ = _asic(miner)
        asics = miner.spec.chains * miner.spec.chips_per_chain
        settings = {
            "stratumURL": host, "stratumPort": int(port or 3333), "stratumUser": pool["user"],
            "stratumPassword": pool.get("pass", ""), "fallbackStratumURL": "",
            "fallbackStratumPort": 3333, "fallbackStratumUser": "",
            "fallbackStratumPassword": "", "hostname": miner.hostname,
            # the frequency at which small cores x ASICs x MHz equals the nameplate hashrate
            "frequency": round(miner.spec.hashrate_ths * 1e6 / (cores * asics)),
            "coreVoltage": 1150, "autofanspeed": 1, "fanspeed": 100, "temptarget": 60,
            "overheat_mode": 0, "overclockEnabled": 0, "flipscreen": 1, "invertscreen": 0,
            "displayTimeout": -1, "statsFrequency": 0, "ssid": "site-wifi", "wifiPass": "",
        }
        miner.firmware_state[SETTINGS_KEY] = settings
    return settings


def system_info_v2_4(miner: EmulatedMiner) -> dict:
    """``GET /api/system/info`` of AxeOS v2.4.x: the captured reply's keys and types."""
    r = miner.read()
    s = _settings(miner)
    asic_name, cores, board = _asic(miner)
    hashing = r.state == "mining"
    accepted = int(r.hashing_s / 20.0)
    return {
        "ASICModel": asic_name, "asicCount": miner.spec.chains * miner.spec.chips_per_chain,
        "autofanspeed": s["autofanspeed"], "bestDiff": _best_diff(accepted),
        "bestSessionDiff": _best_diff(accepted), "boardVersion": board,
        "coreVoltage": s["coreVoltage"],
        "coreVoltageActual": s["coreVoltage"] + 6 if hashing else 0,
        "current": round(r.power_w / 5.175 * 1000.0, 2),
        "fallbackStratumPort": s["fallbackStratumPort"],
        "fallbackStratumURL": s["fallbackStratumURL"],
        "fallbackStratumUser": s["fallbackStratumUser"],
        "fanrpm": r.fan_rpm[0] if r.fan_rpm else 0,
        "fanspeed": s["fanspeed"] if not s["autofanspeed"] else 35,
        "flipscreen": s["flipscreen"], "freeHeap": 8_443_612, "frequency": s["frequency"],
        "hashRate": round(r.hashrate_ths * 1000.0, 2), "hostname": s["hostname"],
        "idfVersion": "v5.4", "invertfanpolarity": 1, "invertscreen": s["invertscreen"],
        "isUsingFallbackStratum": 0, "macAddr": miner.mac.upper(),
        "overheat_mode": s["overheat_mode"], "power": round(r.power_w, 2),
        "runningPartition": "factory", "sharesAccepted": accepted, "sharesRejected": 0,
        "smallCoreCount": cores, "ssid": s["ssid"], "stratumDiff": 1000 if hashing else 0,
        "stratumPort": s["stratumPort"], "stratumURL": s["stratumURL"],
        "stratumUser": s["stratumUser"], "temp": r.chip_temp_c[0],
        "uptimeSeconds": int(r.uptime_s), "version": version_of(miner),
        "voltage": 5175 if r.state != "off" else 0, "vrTemp": round(r.board_temp_c[0] + 8.0),
        "wifiStatus": "Connected!",
    }


def system_info(miner: EmulatedMiner) -> dict:
    """``GET /api/system/info``: hashRate in GH/s, power in W, temps in degC."""
    if not _at_least(miner, RICH_INFO_SINCE):
        return system_info_v2_4(miner)
    r = miner.read()
    s = _settings(miner)
    asic_name, cores, board = _asic(miner)
    asics = miner.spec.chains * miner.spec.chips_per_chain
    hashing = r.state == "mining"
    ghs = round(r.hashrate_ths * 1000.0, 2)
    voltage_mv = 5100.0 if r.state != "off" else 0.0
    return {
        "power": round(r.power_w, 2), "voltage": voltage_mv,
        "current": round(r.power_w / 5.1 * 1000.0, 1), "temp": r.chip_temp_c[0],
        "temp2": -1, "vrTemp": r.board_temp_c[0] + 8.0, "maxPower": 40, "nominalVoltage": 5,
        "hashRate": ghs, "hashRate_1m": ghs, "hashRate_10m": ghs, "hashRate_1h": ghs,
        "expectedHashrate": round(cores * asics * s["frequency"] / 1000.0, 2),
        "errorPercentage": 0.0, "bestDiff": 0, "bestSessionDiff": 0,
        "poolDifficulty": 1000, "isUsingFallbackStratum": 0,
        "poolConnectionInfo": "IPv4" if hashing else "", "isPSRAMAvailable": 1,
        "freeHeap": 8_000_000, "freeHeapInternal": 100_000, "freeHeapSpiram": 7_900_000,
        "coreVoltage": s["coreVoltage"],
        "coreVoltageActual": s["coreVoltage"] - 8 if hashing else 0,
        "frequency": s["frequency"], "ssid": s["ssid"], "macAddr": miner.mac,
        "hostname": s["hostname"], "ipv4": miner.ip, "ipv6": "",
        "wifiStatus": "Connected!", "wifiRSSI": -52, "apEnabled": 0,
        "sharesAccepted": int(r.hashing_s / 20.0), "sharesRejected": 0,
        "sharesRejectedReasons": [], "uptimeSeconds": int(r.uptime_s),
        "smallCoreCount": cores, "ASICModel": asic_name, "asicCount": asics,
        "stratumURL": s["stratumURL"], "stratumPort": s["stratumPort"],
        "stratumUser": s["stratumUser"], "stratumSuggestedDifficulty": 1000,
        "stratumExtranonceSubscribe": 0, "fallbackStratumURL": s["fallbackStratumURL"],
        "fallbackStratumPort": s["fallbackStratumPort"],
        "fallbackStratumUser": s["fallbackStratumUser"],
        "fallbackStratumSuggestedDifficulty": 1000, "fallbackStratumExtranonceSubscribe": 0,
        "responseTime": 42.0, "version": version_of(miner),
        "axeOSVersion": version_of(miner),
        "idfVersion": IDF_VERSION, "boardVersion": board,
        "resetReason": "Software reset via esp_restart", "runningPartition": "ota_0",
        "overheat_mode": s["overheat_mode"], "overclockEnabled": s["overclockEnabled"],
        "display": "SSD1306 (128x32)", "rotation": 0, "invertscreen": s["invertscreen"],
        "displayTimeout": s["displayTimeout"], "autofanspeed": s["autofanspeed"],
        "fanspeed": s["fanspeed"] if not s["autofanspeed"] else 60,
        "manualFanSpeed": s["fanspeed"], "minFanSpeed": 25, "temptarget": s["temptarget"],
        "fanrpm": r.fan_rpm[0] if r.fan_rpm else 0, "fan2rpm": 0,
        "statsFrequency": s["statsFrequency"], "blockFound": 0, "showNewBlock": False,
        "identifying": miner.led_on,
    } | ({"miningPaused": _paused(miner)} if _at_least(miner, PAUSE_SINCE) else {})


def system_asic(miner: EmulatedMiner) -> dict:
    asic_name, _, _ = _asic(miner)
    s = _settings(miner)
    return {
        "ASICModel": asic_name, "deviceModel": miner.spec.model, "swarmColor": "purple",
        "asicCount": miner.spec.chains * miner.spec.chips_per_chain,
        "defaultFrequency": s["frequency"],
        "frequencyOptions": [400, 490, 525, 550, 575, 596, 610, 625],
        "defaultVoltage": 1150, "voltageOptions": [1000, 1060, 1100, 1150, 1200, 1250],
    }


def patch_settings(miner: EmulatedMiner, body: bytes) -> HttpResponse:
    """Validate types like ESP-Miner's check_settings_and_update; 200 with an empty body."""
    try:
        conf = json.loads(body or b"")
    except ValueError:
        return HttpResponse.text("Invalid JSON", 400)
    if not isinstance(conf, dict):
        return HttpResponse.text("Invalid JSON", 400)
    s = _settings(miner)
    updates = {}
    for key, value in conf.items():
        kind = SETTABLE.get(key)
        if kind is None:
            continue  # unknown keys are ignored by the firmware
        if kind is str:
            if not isinstance(value, str):
                return HttpResponse.text("Wrong API input", 400)
        elif not isinstance(value, int | float):  # bools are numbers here, as in cJSON
            return HttpResponse.text("Wrong API input", 400)
        updates[key] = kind(value)
    s.update(updates)
    if "hostname" in updates:
        miner.hostname = updates["hostname"]
    if {"stratumURL", "stratumPort", "stratumUser"} & updates.keys():
        pool = {"url": f"stratum+tcp://{s['stratumURL']}:{s['stratumPort']}",
                "user": s["stratumUser"], "pass": s["stratumPassword"]}
        miner.pools = [pool, *miner.pools[1:]]
    return HttpResponse(200, b"", dict(CORS))


class BitaxeFamily:
    """AxeOS / ESP-Miner 2.x HTTP API. No RPC port."""

    name = "bitaxe"
    rpc_port: int | None = None
    http_port: int | None = 80

    def handle_rpc(self, miner: EmulatedMiner, request: bytes) -> bytes:
        raise NotImplementedError("Bitaxe has no cgminer RPC port")

    def handle_http(self, miner: EmulatedMiner, request: HttpRequest) -> HttpResponse:
        path, method = request.path, request.method
        if path.startswith("/api/"):
            if method == "OPTIONS":
                return HttpResponse(200, b"", dict(CORS))
            rich = _at_least(miner, RICH_INFO_SINCE)
            if path == "/api/system/info" and method in ("GET", "HEAD"):
                return _json(system_info(miner))
            if path == "/api/system/asic" and method in ("GET", "HEAD") and rich:
                return _json(system_asic(miner))
            lie = miner.fault.kind == "lie"
            if path == "/api/system/restart" and method == "POST":
                if not lie:  # a lying one acknowledges below and nothing restarts
                    if _paused(miner):  # the flag is not stored: the restarted ASIC mines
                        miner.firmware_state.pop(PAUSED_KEY, None)
                        miner.wake()
                    miner.reboot_board()
                if not _at_least(miner, JSON_RESTART_SINCE):
                    # v2.4-v2.12: httpd_resp_send of a C string, default type text/html
                    return HttpResponse(200, b"System will restart shortly.",
                                        {"Content-Type": "text/html", **CORS})
                return _json({"message": "System will restart shortly."})
            if path in ("/api/system/pause", "/api/system/resume") and method == "POST" \
                    and _at_least(miner, PAUSE_SINCE):
                if lie:
                    return _json({"message": "Mining paused" if path.endswith("pause")
                                  else "Mining resumed"})
                return self._pause(miner, pause=path.endswith("pause"))
            if not rich:
                return _redirect()  # v2.4: every other route meets the 404 handler
            if path == "/api/system/identify" and method == "POST":
                if not lie:
                    miner.led_on = not miner.led_on
                msg = ("The device says \"Hi!\" for 30 seconds." if miner.led_on
                       else "The device no longer says \"Hi!\".")
                return _json({"message": msg})
            if path == "/api/system" and method == "PATCH":
                if lie:
                    return HttpResponse(200, b"", dict(CORS))
                return patch_settings(miner, request.body)
            if path == "/api/system/statistics" and method in ("GET", "HEAD"):
                return _json({"currentTimestamp": int(time.monotonic() * 1000),
                              "labels": ["hashrate", "power", "timestamp"], "statistics": []})
            return _json({"error": "unknown route"}, 404)
        if method in ("GET", "HEAD") and path in ("/", "/index.html"):
            return HttpResponse.text(INDEX_HTML, content_type="text/html")
        return _redirect()

    @staticmethod
    def _pause(miner: EmulatedMiner, *, pause: bool) -> HttpResponse:
        """v2.14+: the ASIC stops (the power task's mining_stop) or starts again; the control
        board and its API stay up."""
        if pause:
            miner.sleep()
            miner.firmware_state[PAUSED_KEY] = _mark(miner)
            return _json({"message": "Mining paused"})
        if _paused(miner):
            miner.firmware_state.pop(PAUSED_KEY, None)
            miner.wake()
        return _json({"message": "Mining resumed"})


def _redirect() -> HttpResponse:
    """ESP-Miner's 404 handler: redirect everything else to the captive-portal root."""
    return HttpResponse(302, b"Redirect to the captive portal",
                        {"Location": "/", "Content-Type": "text/plain"})
