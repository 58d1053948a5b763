"""Scrape time and size of the Prometheus exporter for a large synthetic fleet.

    python bench/metrics_scrape.py                  # 10,000 miners, 20 scrapes
    python bench/metrics_scrape.py --miners 2000 --scrapes 50
    python bench/metrics_scrape.py --prometheus 60  # and a real Prometheus scraping it
    python bench/metrics_scrape.py --slowloris 1500 # and scrapes while 1,500 idle clients try

Builds one TickResult with N readings (every firmware family, 2-4 fans, a third curtailed,
a few unreachable, a mempool-like market), publishes it, serves it on 127.0.0.1 with the real
exporter (its threaded WSGI server, the same code path as ``curtaild run``),
and scrapes it over HTTP the way Prometheus does, reporting:

* the first scrape after a tick (builds the per-state families) and the following ones
  (cached families; only ages are recomputed), as median and max wall time;
* exposition size: text format, and gzip (Prometheus asks for gzip);
* number of samples, and the cost of publishing one snapshot on the event loop.

No miner is contacted: a scrape only reads the published snapshot.
"""

from __future__ import annotations

import argparse
import gzip
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curtaild.controller.loop import TickResult
from curtaild.controller.metrics import LoopStats, MetricsExporter, MetricsState
from curtaild.core.snapshot import (
    Command,
    Desired,
    FleetSnapshot,
    MarketSnapshot,
    MinerReading,
)

MODELS = [  # (make, model, firmware family, TH/s, W, fans, power source, power limit)
    ("AntMiner", "Antminer S19j Pro", "antminer", 104.0, 3068.0, 4, "nameplate", None),
    ("AntMiner", "Antminer S21", "antminer", 200.0, 3500.0, 4, "nameplate", None),
    ("AntMiner", "Antminer S19 XP", "luxos", 141.0, 3010.0, 4, "firmware", 3010.0),
    ("WhatsMiner", "WhatsMiner M30S", "whatsminer", 88.0, 3344.0, 2, "firmware", 3400.0),
    ("WhatsMiner", "WhatsMiner M50", "whatsminer", 114.0, 3306.0, 2, "firmware", 3300.0),
    ("Bitaxe", "Bitaxe Gamma", "bitaxe", 1.2, 18.0, 1, "firmware", None),
]


def synthetic_tick(n: int, now: float | None = None) -> tuple[TickResult, frozenset[str]]:
    now = time.time() if now is None else now
    readings, desired, curtailed = [], {}, set()
    for i in range(n):
        make, model, fw, ths, watts, nfans, src, limit = MODELS[i % len(MODELS)]
        mac = f"02:EC:{(i >> 24) & 255:02X}:{(i >> 16) & 255:02X}:{(i >> 8) & 255:02X}:" \
              f"{i & 255:02X}"
        ip = f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        if i % 97 == 0:
            state, h, w, src_i, temp, fans = "unreachable", 0.0, 0.0, "none", None, ()
        elif i % 3 == 0:
            state, h, w, src_i, temp, fans = "sleeping", 0.0, 40.0, "idle_estimate", 35.0, \
                tuple(1000 for _ in range(nfans))
            curtailed.add(mac)
        else:
            state, h, w, src_i, temp, fans = "mining", ths, watts, src, 68.5, \
                tuple(5400 + j for j in range(nfans))
        readings.append(MinerReading(
            key=mac, ip=ip, make=make, model=model, firmware=fw, state=state,  # type: ignore[arg-type]
            hashrate_ths=h, power_w=w, power_source=src_i,  # type: ignore[arg-type]
            power_limit_w=limit, temp_c=temp, fan_rpm=fans, nameplate_hashrate_ths=ths,
            nameplate_power_w=watts, observed_at=now, mac=mac, serial=f"SN{i:08d}"))
        if state != "unreachable":
            action = "sleep" if state == "sleeping" else ("limit" if limit else "run")
            desired[mac] = Desired(action=action, reason="bench",  # type: ignore[arg-type]
                                   power_limit_w=limit if action == "limit" else None,
                                   margin_usd_per_day=1.0, run_margin_usd_per_day=-0.5 + i % 7)
    market = MarketSnapshot(
        hashprice_usd_per_th_day=0.05, hashprice_source="mempool", hashprice_age_s=12.0,
        tariff_usd_per_kwh=0.07, tariff_source="flat", tariff_age_s=0.0, pool_fee=0.02,
        extra={"network": {"difficulty": 1.2e14, "btc_price_usd": 100_000.0,
                           "btc_per_block": 3.15},
               "hashprice": {"sources": [{"source": "mempool", "usd_per_th_day": 0.05,
                                          "age_s": 12.0, "fresh": True, "error": None}]}})
    cmds = tuple(Command(key=r.key, ip=r.ip, action="sleep", power_limit_w=None, reason="bench",
                         delta_power_w=-3000.0) for r in readings[:50])
    tick = TickResult(started_at=now - 2.0, duration_s=2.0,
                      fleet=FleetSnapshot(tuple(readings), now - 1.0), market=market,
                      desired=desired, effective=dict(desired), held={}, commands=cmds,
                      outcomes={c.key: "ok: sent" for c in cmds}, dry_run=False)
    return tick, frozenset(curtailed)


def scrape(url: str, *, gzip_ok: bool = True) -> tuple[float, bytes]:
    headers = {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"}
    if gzip_ok:
        headers["Accept-Encoding"] = "gzip"
    req = urllib.request.Request(url, headers=headers)
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        body = resp.read()
    return time.perf_counter() - t0, body


def loop_lag_during(work) -> tuple[float, float]:
    """Max and p99 overshoot of a 5 ms asyncio sleep in another thread while work() runs:
    what a scrape costs the daemon's event loop (the exporter runs in its own thread but
    shares the GIL)."""
    import asyncio
    import threading

    lags: list[float] = []
    done = threading.Event()

    async def probe() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t0 - 0.005)

    th = threading.Thread(target=lambda: asyncio.run(probe()))
    th.start()
    time.sleep(0.2)
    try:
        work()
    finally:
        done.set()
        th.join()
    lags.sort()
    return lags[-1], lags[int(len(lags) * 0.99)]


def under_slowloris(exporter: MetricsExporter, port: int, url: str, clients: int,
                    scrapes: int) -> dict:
    """``clients`` connections that send one byte of a request line and stop (a slowloris),
    opened as fast as the server takes them, then ``scrapes`` scrapes while they are held:
    what a scrape costs during the attack and how many sockets the exporter held."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients + 256 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (clients + 256, hard))
    socks = []
    peak = 0
    t0 = time.perf_counter()
    try:
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.send(b"G")
            socks.append(s)
            peak = max(peak, exporter.open_connections())
        open_s = time.perf_counter() - t0
        times = [scrape(url)[0] for _ in range(scrapes)]
        peak = max(peak, exporter.open_connections())
    finally:
        for s in socks:
            s.close()
    return {"open_s": open_s, "times": times, "peak": peak, "dropped": exporter.dropped()}


def real_prometheus(exporter: MetricsExporter, port: int, tick: TickResult,
                    curtailed: frozenset[str], stats: LoopStats, seconds: float) -> dict:
    from tests.support.prometheus import PrometheusProcess

    with PrometheusProcess([f"127.0.0.1:{port}"], scrape_interval="5s") as prom:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            exporter.publish(MetricsState(tick=tick, counters=stats.snapshot(),
                                          curtailed=curtailed, published_at=time.time()))
            time.sleep(5.0)
        window = f"{int(seconds) + 10}s"

        def one(expr: str) -> float:
            result = prom.vector(expr)
            return float(result[0]["value"][1]) if result else float("nan")

        return {
            "scrapes": one(f"count_over_time(scrape_duration_seconds[{window}])"),
            "mean": one(f"avg_over_time(scrape_duration_seconds[{window}])"),
            "max": one(f"max_over_time(scrape_duration_seconds[{window}])"),
            "samples": one("scrape_samples_scraped"),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--miners", type=int, default=10_000)
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--prometheus", type=float, default=0.0, metavar="SECONDS",
                    help="also let a real Prometheus (Debian's binary) scrape every 5 s for "
                    "this long, publishing a new snapshot every 5 s (every scrape is cold)")
    ap.add_argument("--slowloris", type=int, default=0, metavar="CLIENTS",
                    help="also scrape while this many idle clients hold connections open")
    args = ap.parse_args()

    t0 = time.perf_counter()
    tick, curtailed = synthetic_tick(args.miners)
    build_s = time.perf_counter() - t0
    with socket.socket() as sock:  # [metrics] listen refuses port 0: pick a free one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exporter = MetricsExporter(f"127.0.0.1:{port}")
    exporter.start()
    url = f"http://127.0.0.1:{port}/metrics"
    stats = LoopStats()
    stats.tick_done(tick)
    try:
        t0 = time.perf_counter()
        exporter.publish(MetricsState(tick=tick, counters=stats.snapshot(), curtailed=curtailed,
                                      poll_interval_s=30.0, stale_market_after_s=1800.0,
                                      stale_reading_after_s=300.0, ramp_budget_w=50_000.0,
                                      fixed_costs_usd_per_day=5000.0, power_cap_w=30e6,
                                      published_at=time.time()))
        publish_s = time.perf_counter() - t0

        first_s, gz_body = scrape(url)
        warm = [scrape(url)[0] for _ in range(args.scrapes)]
        _, plain_body = scrape(url, gzip_ok=False)
        # a new tick invalidates the cache: measure a cold scrape again on a fresh state
        exporter.publish(MetricsState(tick=tick, counters=stats.snapshot(), curtailed=curtailed,
                                      published_at=time.time()))
        cold2_s, _ = scrape(url)
        lag = loop_lag_during(lambda: [
            (exporter.publish(MetricsState(tick=tick, counters=stats.snapshot(),
                                           curtailed=curtailed, published_at=time.time())),
             scrape(url)) for _ in range(3)])
        prom = real_prometheus(exporter, port, tick, curtailed, stats, args.prometheus) \
            if args.prometheus > 0 else None
        loris = under_slowloris(exporter, port, url, args.slowloris, args.scrapes) \
            if args.slowloris > 0 else None
    finally:
        exporter.stop()
    text = gzip.decompress(gz_body) if gz_body[:2] == b"\x1f\x8b" else gz_body
    samples = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    per_miner = samples / max(1, args.miners)
    print(f"miners                      {args.miners:,}")
    print(f"samples                     {samples:,} ({per_miner:.1f} per miner)")
    print(f"synthesize TickResult       {build_s:.3f} s")
    print(f"publish (event loop)        {publish_s * 1e3:.3f} ms")
    print(f"scrape after a tick (cold)  {first_s:.3f} s, again {cold2_s:.3f} s")
    print(f"scrape, cached (n={len(warm)})    median {statistics.median(warm):.3f} s, "
          f"max {max(warm):.3f} s")
    print(f"size text                   {len(plain_body) / 1e6:.2f} MB "
          f"({len(plain_body) / max(1, args.miners):.0f} B per miner)")
    print(f"size gzip (as Prometheus)   {len(gz_body) / 1e6:.2f} MB")
    print(f"event-loop lag while 3 cold scrapes render: max {lag[0] * 1e3:.0f} ms, "
          f"p99 {lag[1] * 1e3:.0f} ms (asyncio.sleep(5 ms) overshoot, GIL shared)")
    if loris:
        d = loris["dropped"]
        print(f"slowloris: {args.slowloris:,} idle clients opened in {loris['open_s']:.2f} s; "
              f"exporter sockets peak {loris['peak']} (cap {exporter.max_connections}); "
              f"{d['evicted']:,} evicted, {d['request_timeout']:,} timed out")
        print(f"scrape during the slowloris (n={len(loris['times'])}) median "
              f"{statistics.median(loris['times']):.3f} s, max {max(loris['times']):.3f} s")
    if prom:
        print(f"real Prometheus ({prom['scrapes']} scrapes, 5 s interval): scrape_duration_seconds "
              f"mean {prom['mean']:.3f} s, max {prom['max']:.3f} s; "
              f"scrape_samples_scraped {prom['samples']:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
