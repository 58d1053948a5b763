"""Process limits and runtime tuning the daemon needs at fleet scale.

Descriptors: every poll, discovery and command holds a socket. With the default pools (400
polls, 400 polls of miners that failed last sweep, 100 discoveries, 50 commands) that is ~950
descriptors before the journal, the exporter and MQTT, and systemd starts services with a
soft RLIMIT_NOFILE of 1024 (hard 524288). Running out shows up as EMFILE on connect: miners
read "unreachable" for no reason of their own. So the daemon raises its soft limit to what
its pools can hold (never above the hard limit), as systemd's documentation advises programs
that need more than 1024 to do.

The budget is only a reservation if nothing else can grow without bound. The one part of the
daemon that strangers can make open descriptors is the metrics port: it is capped
(``[metrics] max_connections``, default 32, plus 5 of its own: controller/scrape_server.py)
and that cap is counted here, so ~1,200 idle connections to /metrics can no longer take the
fleet's descriptors (issue 15). Budget with the defaults and metrics on: 800 polls + 100
discoveries + 50 commands + 37 metrics + 256 overhead = 1,243.

Garbage collector: a sweep allocates ~700,000 container objects per 10,000 miners (pyasic's
data models, asyncio tasks and futures), so CPython's default gen-0 threshold of 700 runs
~1,000 collections per sweep, each walking the survivors of a large young generation: ~5 s of
a ~25 s sweep at 10,000 miners (bench/gc_ab.py). Raising the thresholds cuts that to ~0.3 s;
the third threshold stays low enough that a full collection still runs every few minutes, so
cyclic garbage cannot pile up over months.
"""

from __future__ import annotations

import gc
import resource

#: descriptors beyond the sockets of the pools: journal, exporter, MQTT, logs, imports
OVERHEAD_FDS = 256


def open_files_needed(*, poll_concurrency: int, discovery_concurrency: int,
                      command_concurrency: int, metrics_fds: int = 0) -> int:
    """Descriptors the configured pools can hold at once (two poll pools: see drivers), plus
    the metrics server's cap (``scrape_server.fd_budget``; 0 when metrics are off)."""
    return (2 * poll_concurrency + discovery_concurrency + command_concurrency + metrics_fds
            + OVERHEAD_FDS)


def raise_open_files_limit(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to at least ``needed`` (capped by the hard limit).

    Returns (soft limit now, needed). Never lowers a limit; a hard limit below ``needed``
    is left to the caller to report.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, needed


#: (gen0, gen1, gen2) collection thresholds for the daemon (CPython's default: 700, 10, 10)
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> tuple[int, int, int]:
    """Apply GC_THRESHOLDS; returns the previous thresholds (benchmarks restore them)."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    return before
