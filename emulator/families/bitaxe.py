"""Bitaxe running AxeOS / ESP-Miner: a JSON REST API on port 80 and no cgminer RPC.

pyasic 0.79 detects it by "AxeOS" in the page at ``/`` and picks the class from
``/api/system/info`` "ASICModel" (BM1370 -> ``BitAxeGamma``); all of ``get_data()`` comes from
that one endpoint (``asicCount`` is there too, so ``/api/system/asic`` is only a fallback).
Routes, shapes and error behaviour follow ESP-Miner's ``http_server.c`` of the 2.x line that
pyasic 0.79 targets: unknown ``/api/*`` routes answer 404 ``{"error": "unknown route"}``,
anything else redirects to ``/``, ``PATCH /api/system`` answers 200 with an empty body.

It cannot be curtailed remotely: the 2.x API has no sleep, pause or power-limit endpoint
(the ``/api/system/mining`` pause of later releases is not emulated because pyasic 0.79 does
not use it), and pyasic's ``stop_mining()`` on a Bitaxe returns False without sending anything.
A site controller must treat it as "cannot command", not pretend.
"""

from __future__ import annotations

import json
import time

from emulator.families.base import HttpRequest, HttpResponse
from emulator.physics import EmulatedMiner

VERSION = "v2.4.2"
IDF_VERSION = "v5.3.1"
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


def system_info(miner: EmulatedMiner) -> dict:
    """``GET /api/system/info``: hashRate in GH/s, power in W, temps in degC."""
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
        "responseTime": 42.0, "version": VERSION, "axeOSVersion": VERSION,
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
    }


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
            if path == "/api/system/info" and method in ("GET", "HEAD"):
                return _json(system_info(miner))
            if path == "/api/system/asic" and method in ("GET", "HEAD"):
                return _json(system_asic(miner))
            if path == "/api/system/restart" and method == "POST":
                miner.reboot()
                return _json({"message": "System will restart shortly."})
            if path == "/api/system/identify" and method == "POST":
                miner.led_on = not miner.led_on
                msg = ("The device says \"Hi!\" for 30 seconds." if miner.led_on
                       else "The device no longer says \"Hi!\".")
                return _json({"message": msg})
            if path == "/api/system" and method == "PATCH":
                return patch_settings(miner, request.body)
            if path == "/api/system/statistics" and method in ("GET", "HEAD"):
                return _json({"currentTimestamp": int(time.monotonic() * 1000),
                              "labels": ["hashrate", "power", "timestamp"], "statistics": []})
            return _json({"error": "unknown route"}, 404)
        if method in ("GET", "HEAD") and path in ("/", "/index.html"):
            return HttpResponse.text(INDEX_HTML, content_type="text/html")
        # ESP-Miner's 404 handler: redirect everything else to the captive-portal root
        return HttpResponse(302, b"Redirect to the captive portal",
                            {"Location": "/", "Content-Type": "text/plain"})
