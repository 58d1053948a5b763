"""How long curtaild's tick spends reading PDUs, and what the emulator's shared SNMP engine
costs: N emulated APC PDUs (8 outlets each, one pysnmp engine, each on its own 127.186.x
address) read concurrently by the drivers (drivers/pdu/apc.py, v2c), as the loop does.

    python bench/pdu_snmp.py [--pdus 125] [--rounds 5]

Prints the emulator engine's start time and RSS growth, then per round the wall time of one
full read of every PDU. Runs as root (udp/161). Addresses: 127.186.0.0/16 only.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_machine  # puts the repository on sys.path

from curtaild.core.models import MODELS
from curtaild.drivers.pdu.apc import ApcPdu
from curtaild.drivers.pdu.snmp import SnmpCredentials, SnmpSession
from curtaild.emulator.pdu.agent import PduAgent
from curtaild.emulator.pdu.model import EmulatedPdu, Outlet
from curtaild.emulator.physics import EmulatedMiner


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(pdus: int, rounds: int) -> None:
    base = int(ipaddress.IPv4Address("127.186.0.1"))
    spec = MODELS["S19j Pro"]
    emulated = []
    for i in range(pdus):
        address = str(ipaddress.IPv4Address(base + i + (i // 254) * 2))
        outlets = [Outlet(n, miners=[EmulatedMiner(ip=f"127.187.{i // 250}.{n + 10 * (i % 25)}",
                                                   spec=spec)]) for n in range(1, 9)]
        emulated.append(EmulatedPdu(address, "apc", outlets))
    before = rss_mb()
    started = time.perf_counter()
    agent = PduAgent(emulated)
    agent.start()
    print(f"emulator: {pdus} PDUs ({pdus * 8} outlets) in one engine: started in "
          f"{time.perf_counter() - started:.3f} s, max RSS +{rss_mb() - before:.1f} MB")
    drivers = [ApcPdu(p.address, SnmpSession(p.address, 161, SnmpCredentials.v2c("public", None),
                                             timeout_s=5.0, retries=0), 8) for p in emulated]
    for r in range(rounds):
        t0 = time.perf_counter()
        readings = await asyncio.gather(*(d.read() for d in drivers))
        errors = sum(1 for x in readings if x.error)
        print(f"round {r + 1}: every PDU read in {time.perf_counter() - t0:.3f} s "
              f"({errors} errors; agent and drivers share this process)")
    agent.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pdus", type=int, default=125)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print_machine()
    asyncio.run(main(args.pdus, args.rounds))
