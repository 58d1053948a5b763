"""Where a fleet's machines are, before any of them exists: loopback addresses for emulated
and simulated fleets, and the fleet-file address rules (explicit addresses first, the rest
consecutive after them). The emulator builds machines from these addresses and the backtest
simulates them; neither imports the other.

Addresses are consecutive loopback addresses from ``--first-ip``, skipping last octets 0 and
255 (real sites never put a miner on a network or broadcast address, and some clients refuse
them).
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterator
from typing import Any

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
DEFAULT_FIRST_IP = "127.1.0.1"
#: The fleet file's vocabulary (emulator/fleet.py documents each key): the emulator validates
#: the values, and a backtest reading the same file refuses the same typos.
TOP_KEYS = {"time_scale", "ambient_c", "miner", "pdu", "meter"}  # [[pdu]], [meter]: pdu/plan.py
#: A [[miner]] table's keys that place it on a PDU outlet (emulator/pdu/plan.py).
MINER_SITE_KEYS = {"pdu", "outlet", "per_outlet"}
MINER_KEYS = {"model", "ip", "firmware", "count", "fault", "delay_s", "size_bytes", "ambient_c",
              "power_limit_w", "password", "api", "firmware_version", "fast_boot", "atm",
              "write_api"} | MINER_SITE_KEYS


class FleetError(ValueError):
    """A bad fleet description; the message says where (table index and key) and why."""


def parse_loopback(text: str, what: str = "--first-ip") -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(str(text).strip())
    except ValueError:
        raise FleetError(f"{what}: {text!r} is not an IPv4 address") from None
    if not isinstance(addr, ipaddress.IPv4Address) or addr not in LOOPBACK:
        raise FleetError(f"{what}: {text} is not a loopback address (127.0.0.0/8); the "
                         "emulator only listens on loopback")
    if int(addr) & 0xFF in (0, 255):
        raise FleetError(f"{what}: {text} ends in .0 or .255; use .1-.254")
    return addr


def consecutive(first: ipaddress.IPv4Address) -> Iterator[str]:
    """first, first+1, ... within 127/8, skipping last octets 0 and 255."""
    n = int(first)
    end = int(LOOPBACK.broadcast_address)
    while n < end:
        if n & 0xFF not in (0, 255):
            yield str(ipaddress.IPv4Address(n))
        n += 1


def assign_addresses(blocks: list[tuple[str, str | None, int]],
                     first_ip: str = DEFAULT_FIRST_IP) -> list[list[str]]:
    """Addresses for fleet-file tables ``(where, ip or None, count)``, in order.

    Explicit addresses first, so automatic ones can skip them; two tables claiming one address
    is an error naming both.
    """
    taken: dict[str, str] = {}
    explicit: list[list[str] | None] = []
    for where, ip_text, count in blocks:
        if ip_text is None:
            explicit.append(None)
            continue
        ips = consecutive(parse_loopback(ip_text, f"{where}.ip"))
        block = []
        for _ in range(count):
            ip = next(ips, None)
            if ip is None:
                raise FleetError(f"{where}.count: runs past the end of 127.0.0.0/8")
            if ip in taken:
                raise FleetError(f"{where}.ip: address {ip} is also used by {taken[ip]}")
            taken[ip] = where.rsplit(": ", 1)[-1]
            block.append(ip)
        explicit.append(block)
    auto = (ip for ip in consecutive(parse_loopback(first_ip)) if ip not in taken)
    out: list[list[str]] = []
    for (where, _ip, count), given in zip(blocks, explicit, strict=True):
        block = given if given is not None else []
        if given is None:
            for _ in range(count):
                ip = next(auto, None)
                if ip is None:
                    raise FleetError(f"{where}: no free loopback address left after "
                                     f"{first_ip}")
                block.append(ip)
        out.append(block)
    return out


def fleet_document(text: str, source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A fleet file's TOML, its top-level keys checked and its [[miner]] tables listed:
    what the emulator and the backtest refuse alike before each reads its own keys."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FleetError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise FleetError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(TOP_KEYS))}")
    tables = doc.get("miner", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise FleetError(f"{source}: 'miner' must be an array of tables ([[miner]])")
    if not tables:
        raise FleetError(f"{source}: no [[miner]] tables")
    return doc, tables
