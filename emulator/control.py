"""Control API: JSON over HTTP on a loopback address, for tests, demos and operators.

It exposes *physical truth* (``EmulatedMiner.truth()``), never what a firmware claims, so a
controller can be judged against reality. It also lets a test do what an operator does at
the machine (sleep, wake, reboot, pull the plug) and switch faults at run time.

Endpoints::

    GET  /health                      {"status": "ok", "miners": N, ...}
    GET  /miners                      [{ip, make, model, firmware, state, hashrate_ths,
                                        power_w, power_limit_w, temp_c, ...}, ...]
    GET  /miners/{ip}                 one of those
    POST /miners/{ip}/fault           {"kind": "hang"|"refuse"|"garbage"|"slow"|
                                        "ignore_sleep"|"endless"|"huge"|"nested"|
                                        "accept_close"|"drip"|"none", "delay_s": 5.0,
                                        "size_bytes": 52428800}
    POST /miners/{ip}/action          {"action": "sleep"|"wake"|"reboot"|"off"|"on"}
    POST /miners/{ip}/power           {"on": false|true}: cut or restore mains power (the
                                        machine boots back into what its firmware stored:
                                        a slept stock Antminer comes back asleep)
    GET  /pdus, GET /meter, ...       the site's PDUs and meter: emulator/pdu/control.py

Errors are JSON ``{"error": "..."}`` with 400 (bad body), 404 (unknown miner or path),
405 (wrong method) or 409 (action impossible in the current state).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import Counter

from curtaild.emulator.families.base import HttpRequest, HttpResponse
from curtaild.emulator.physics import FAULT_KINDS, Fault
from curtaild.emulator.server import (
    BindError,
    FleetServer,
    HttpProtocol,
    MinerEndpoint,
    bind_listener,
)

ACTIONS = ("sleep", "wake", "reboot", "off", "on")
#: Families whose firmware stores "asleep" across a reboot and a power cut (stock Antminer:
#: cgminer.conf; LuxOS: "the curtailment state will persist if you restart the machine",
#: docs.luxor.tech curtail). Whatsminer and Bitaxe: no source says so, so they wake.
SLEEP_STORED = frozenset({"antminer", "luxos"})
#: Largest ``huge`` reply (64 GiB): streamed lazily, so only the client's patience limits it.
MAX_SIZE_BYTES = 64 * 1024**3


class ControlAddressError(ValueError):
    """--control is malformed or not a loopback address."""


def parse_control(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) on loopback only: the API is unauthenticated."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ControlAddressError(f"--control: expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ControlAddressError(
            f"--control: host {host!r} is not an IP address; use 127.0.0.1") from None
    if not addr.is_loopback:
        raise ControlAddressError(
            f"--control: {host} is not a loopback address; the control API has no "
            "authentication, so it only binds to 127.0.0.0/8 or ::1")
    try:
        port = int(port_text)
    except ValueError:
        raise ControlAddressError(f"--control: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ControlAddressError(f"--control: port {port} out of range 1-65535")
    return host, port


def miner_view(endpoint: MinerEndpoint) -> dict:
    """Truth plus the emulator's own bookkeeping (fault, listening, LED, requests seen)."""
    miner = endpoint.miner
    # What only the firmware family knows (Whatsminer: API generation, firmware version,
    # btminer process, API v3 tokens per client IP; stock Antminer: firmware generation, miner
    # process, whether it obeys). Asked first: it applies what happened meanwhile (a stock
    # Antminer's silent_reboot fault), so the truth below includes it.
    family_view = getattr(endpoint.family, "control_view", None)
    family = family_view(miner) if family_view is not None else {}
    # The sockets follow the boot clock through a timer, which a loaded machine runs late:
    # catch them up first, so "network" below is what a connect meets now, not what it
    # should meet once the timer fires.
    endpoint.sync_listening()
    view = miner.truth()
    view.update({
        "fault_delay_s": miner.fault.delay_s,
        "fault_size_bytes": miner.fault.size_bytes,
        "listening": endpoint.listening,
        # up | refused | blackhole: what a client's connect meets (powered off or the first
        # half of a control-board boot: blackhole; the second half or ``refuse``: refused)
        "network": endpoint.network_state()[0],
        "led_on": miner.led_on,
        "pools": [p["url"] for p in miner.pools],
        "commands_received": miner.commands_received,
        "nameplate_hashrate_ths": miner.spec.hashrate_ths,
        "nameplate_power_w": miner.spec.power_w,
        "changes": [list(c) for c in miner.changes],
        "api": miner.api,
        "firmware_version": miner.firmware_version,
        # false once the machine has no pool (it then boots and hashes nothing)
        "pools_ok": miner.has_work,
        # running | restarting | off (families that restart their process say more)
        "process": "off" if miner.state == "off" else "running",
        # false while a fault (or, per family, its firmware generation) ignores sleep
        "obeys": miner.fault.kind not in ("ignore_sleep", "lie"),
    })
    view.update(family)
    return view


def _error(status: int, message: str) -> HttpResponse:
    return HttpResponse.json({"error": message}, status)


class ControlApi:
    """The request handler; a ``Site`` for ``emulator.server.HttpProtocol``."""

    def __init__(self, fleet: FleetServer) -> None:
        self.fleet = fleet
        self.started = time.monotonic()

    def fault(self) -> Fault | None:
        return None  # the control API itself is never faulty

    def handle_http(self, req: HttpRequest) -> HttpResponse:
        parts = [p for p in req.path.split("/") if p]
        if parts == ["health"]:
            return self._only(req, "GET") or self.health()
        if parts == ["miners"]:
            return self._only(req, "GET") or HttpResponse.json(
                [miner_view(e) for e in self.fleet.endpoints.values()])
        if len(parts) >= 2 and parts[0] == "miners":
            endpoint = self.fleet.endpoints.get(parts[1])
            if endpoint is None:
                return _error(404, f"no emulated miner at {parts[1]}")
            if len(parts) == 2:
                return self._only(req, "GET") or HttpResponse.json(miner_view(endpoint))
            if parts[2:] == ["fault"]:
                return self._only(req, "POST") or self.set_fault(endpoint, req.body)
            if parts[2:] == ["action"]:
                return self._only(req, "POST") or self.action(endpoint, req.body)
            if parts[2:] == ["power"]:
                return self._only(req, "POST") or self.power(endpoint, req.body)
        site = getattr(self.fleet, "site", None)  # PDUs and meter: emulator/pdu/control.py
        if site is not None and parts and parts[0] in ("pdus", "meter"):
            return site.handle(req, parts)
        return _error(404, f"no such endpoint {req.method} {req.path}")

    @staticmethod
    def _only(req: HttpRequest, method: str) -> HttpResponse | None:
        if req.method == method or (method == "GET" and req.method == "HEAD"):
            return None
        resp = _error(405, f"{req.path} accepts {method} only")
        resp.headers["Allow"] = method
        return resp

    def health(self) -> HttpResponse:
        endpoints = self.fleet.endpoints.values()
        return HttpResponse.json({
            "status": "ok",
            "miners": len(self.fleet.endpoints),
            "listeners": self.fleet.listener_count,
            "families": dict(Counter(e.family.name for e in endpoints)),
            "uptime_s": round(time.monotonic() - self.started, 3),
        })

    @staticmethod
    def _body(body: bytes) -> dict | HttpResponse:
        try:
            data = json.loads(body or b"")
        except ValueError:
            return _error(400, "body must be a JSON object")
        if not isinstance(data, dict):
            return _error(400, "body must be a JSON object")
        return data

    def set_fault(self, endpoint: MinerEndpoint, body: bytes) -> HttpResponse:
        data = self._body(body)
        if isinstance(data, HttpResponse):
            return data
        kind = data.get("kind")
        if kind not in FAULT_KINDS:
            return _error(400, f"'kind' must be one of {', '.join(FAULT_KINDS)}; got {kind!r}")
        delay = data.get("delay_s")
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)
                                  or not 0 <= delay <= 3600):
            return _error(400, f"'delay_s' must be a number of seconds in [0, 3600]; "
                               f"got {delay!r}")
        size = data.get("size_bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or not 0 <= size <= MAX_SIZE_BYTES):
            return _error(400, f"'size_bytes' must be an integer number of bytes in "
                               f"[0, {MAX_SIZE_BYTES}]; got {size!r}")
        try:
            self.fleet.set_fault(endpoint.ip, kind, delay, size)
        except BindError as exc:
            return _error(409, str(exc))
        return HttpResponse.json(miner_view(endpoint))

    def action(self, endpoint: MinerEndpoint, body: bytes) -> HttpResponse:
        data = self._body(body)
        if isinstance(data, HttpResponse):
            return data
        action = data.get("action")
        if action not in ACTIONS:
            return _error(400, f"'action' must be one of {', '.join(ACTIONS)}; got {action!r}")
        miner = endpoint.miner
        miner.actor = "operator"
        try:
            return self._operate(endpoint, miner, action)
        finally:
            miner.actor = "client"

    def power(self, endpoint: MinerEndpoint, body: bytes) -> HttpResponse:
        """Mains power off or on (idempotent: the plug is where it was asked to be)."""
        data = self._body(body)
        if isinstance(data, HttpResponse):
            return data
        on = data.get("on")
        if not isinstance(on, bool):
            return _error(400, f"'on' must be true or false; got {on!r}")
        miner = endpoint.miner
        miner.actor = "operator"
        try:
            if on and miner.state == "off":
                miner.restore_power()
            elif not on and miner.state != "off":
                miner.cut_power()
        finally:
            miner.actor = "client"
        try:
            endpoint.sync_listening()
        except BindError as exc:
            return _error(409, str(exc))
        return HttpResponse.json(miner_view(endpoint))

    def _operate(self, endpoint: MinerEndpoint, miner, action: str) -> HttpResponse:
        if action == "on":
            if miner.state != "off":
                return _error(409, f"{miner.ip} is not powered off (state {miner.state})")
            miner.restore_power()
        elif miner.state == "off":
            return _error(409, f"{miner.ip} is powered off; use action 'on' first")
        elif action == "off":
            miner.cut_power()
        elif action == "sleep":
            miner.sleep()
            # at the machine's own UI: firmware that stores sleep stores it (power-cut test)
            if endpoint.family.name in SLEEP_STORED:
                miner.sleep_persisted = miner.fault.kind != "ignore_sleep"
        elif action == "wake":
            miner.wake()
            miner.sleep_persisted = False
        elif action == "reboot":
            miner.reboot_board()
        try:
            endpoint.sync_listening()
        except BindError as exc:
            return _error(409, str(exc))
        return HttpResponse.json(miner_view(endpoint))


async def start_control(fleet: FleetServer, host: str, port: int):
    """Bind the control API (BindError names host and port if that fails)."""
    api = ControlApi(fleet)
    sock = bind_listener(host, port)
    return await fleet.loop.create_server(lambda: HttpProtocol(api), sock=sock)
