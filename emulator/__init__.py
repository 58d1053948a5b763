"""Miner-firmware emulator: many emulated ASICs on loopback that unmodified pyasic talks to.

It is a product part (demo, tests, benchmarks), not a test double: every family speaks the
real firmware protocol over real sockets, and a physical model per machine decides what the
firmware reports, so that the controller can be checked against *physical truth*.
"""
