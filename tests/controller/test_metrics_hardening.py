"""Issue 15, High-1: nobody who can reach /metrics can stop the controller.

The attack that used to work: ~1,200 idle connections to the exporter (a thread each, no
timeout) used up the open-files limit the daemon runs with under systemd, every miner poll
then failed with EMFILE, and the status.json write (outside the tick's error handling) raised
and ended the daemon. Here the same slowloris runs against the real ``curtaild run`` (started
with systemd's soft limit of 1024) while the daemon must keep ticking and commanding, judged
by the emulator's physical truth; and the exporter's bounds (request deadline, connection cap,
rejection past it) and the status.json write are checked on their own.

Addresses: 127.150.x.y only.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import os
import resource
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from curtaild.controller.metrics import MetricsExporter
from curtaild.controller.scrape_server import fd_budget
from tests.support.daemon import DaemonProcess, ticks, wait_for, write_config
from tests.support.emulator import EmulatorProcess, free_port

# 0.045 USD/TH/day, 2 % pool fee, 0.07 USD/kWh: breakeven 26.25 J/TH. The S21s (17.5 J/TH)
# earn, the S19j Pros (29.5 J/TH, stock firmware: no power limit) lose; at 0.09 all earn.
FLEET = """
[[miner]]
model = "S21"
count = 2
[[miner]]
model = "S19j Pro"
count = 2
"""
FIRST = "127.150.0.1"
RANGE = "127.150.0.1-127.150.0.4"
LOSERS = {"127.150.0.3", "127.150.0.4"}
METRICS_HOST = "127.150.1.1"
ATTACKER = "127.150.2.1"  # source address of the slowloris
SCRAPER = "127.150.3.1"  # source address of the legitimate scrapes
EMU_CONTROL = "127.150.4.1"


def _raise_own_fd_limit(n: int) -> None:
    """The attacker (this process) needs more sockets than a default 1024 soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def scrape(host: str, port: int, *, gzip: bool = False,
           timeout: float = 5.0) -> tuple[int, bytes]:
    """One scrape from the legitimate scraper's address: (HTTP status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=(SCRAPER, 0))
    try:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gzip else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def counter(body: bytes, name: str) -> float:
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


class Slowloris:
    """Holds ``idle`` connections open that send one byte and nothing more, re-opening each
    one the server closes (at most ``reopen_per_s``, to spare the shared CPUs), and
    ``trickle`` connections that send a request's headers one byte every ``trickle_every_s``
    and never finish them.

    Records how long each trickling connection lived until the server closed it."""

    def __init__(self, target: tuple[str, int], *, idle: int, trickle: int,
                 trickle_every_s: float = 0.2, reopen_per_s: float = 200.0):
        self.target = target
        self.idle_n = idle
        self.trickle_n = trickle
        self.trickle_every_s = trickle_every_s
        self.reopen_per_s = reopen_per_s
        self.stop = threading.Event()
        self.opened = 0
        self.connect_failures = 0
        self.closed_by_server = 0
        self.trickle_lifetimes_s: list[float] = []
        self.held = 0
        self.peak_held = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def _connect(self, _: object = None) -> socket.socket | None:
        s = socket.socket()
        s.settimeout(5.0)  # past a SYN retransmit (1 s) when the accept queue is full
        try:
            s.bind((ATTACKER, 0))
            s.connect(self.target)
        except OSError:
            s.close()
            with self._lock:
                self.connect_failures += 1
            return None
        # One byte of a request line: TCP retransmits it until the server has accepted the
        # connection, so none is lost in a full accept queue (a silent client's would be).
        s.send(b"G")
        s.setblocking(False)
        with self._lock:
            self.opened += 1
        return s

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        trickling: dict[socket.socket, float] = {}  # socket -> opened at
        header = b"ET /metrics HTTP/1.1\r\nHost: curtaild\r\nX-Slowloris: "
        idle: set[socket.socket] = set()
        # The first wave from 32 connectors at once: one connect waiting out a SYN
        # retransmit (accept queue full) does not hold back the others.
        with ThreadPoolExecutor(32) as pool:
            for s in pool.map(self._connect, range(self.idle_n)):
                if s is not None:
                    idle.add(s)
                    sel.register(s, selectors.EVENT_READ, "idle")
        for _ in range(self.trickle_n):
            if (s := self._connect()) is not None:
                s.send(header)
                trickling[s] = time.monotonic()
                sel.register(s, selectors.EVENT_READ, "trickle")
        self.held = self.peak_held = len(idle) + len(trickling)
        next_byte = time.monotonic()
        budget = 0.0  # then re-open what the server closes, at most reopen_per_s
        last = time.monotonic()
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                budget = min(budget + (now - last) * self.reopen_per_s, float(self.idle_n))
                last = now
                while len(idle) < self.idle_n and budget >= 1 and not self.stop.is_set():
                    budget -= 1
                    if (s := self._connect()) is not None:
                        idle.add(s)
                        sel.register(s, selectors.EVENT_READ, "idle")
                self.held = len(idle) + len(trickling)
                self.peak_held = max(self.peak_held, self.held)
                for key, _ in sel.select(timeout=0.05):
                    s = key.fileobj
                    try:
                        data = s.recv(4096)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data and key.data == "idle":
                        continue  # e.g. a 503 before the close: wait for the close
                    if not data or key.data == "trickle":
                        self._closed(sel, s, idle, trickling)  # type: ignore[arg-type]
                if time.monotonic() >= next_byte:
                    next_byte = time.monotonic() + self.trickle_every_s
                    for s in list(trickling):
                        try:
                            s.send(b"a")
                        except OSError:
                            self._closed(sel, s, idle, trickling)
        finally:
            for s in [*idle, *trickling]:
                with contextlib.suppress(OSError):
                    sel.unregister(s)
                s.close()
            sel.close()

    def _closed(self, sel: selectors.BaseSelector, s: socket.socket, idle: set,
                trickling: dict) -> None:
        self.closed_by_server += 1
        if s in trickling:
            self.trickle_lifetimes_s.append(time.monotonic() - trickling.pop(s))
        idle.discard(s)
        with contextlib.suppress(OSError, KeyError, ValueError):
            sel.unregister(s)
        s.close()

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _states(emu: EmulatorProcess) -> dict[str, str]:
    return {m["ip"]: m["state"] for m in emu.miners()}


# ----------------------------------------------------------------------- the real attack
@pytest.mark.integration
def test_slowloris_on_metrics_neither_stops_nor_blinds_the_daemon(tmp_path: Path) -> None:
    """1,500 idle connections plus 20 byte-by-byte header senders against ``/metrics`` of a
    daemon started with systemd's soft open-files limit (1024): the loop keeps ticking, a
    SIGHUP'd price drop during the attack still puts the losers to sleep in the emulator,
    a legitimate scrape succeeds during and after, and the exporter never holds more
    descriptors than its budget."""
    _raise_own_fd_limit(4096)
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    port = free_port(METRICS_HOST)
    metrics = f'[metrics]\nlisten = "{METRICS_HOST}:{port}"\n'
    guards = {"ramp_w_per_min": 60000.0}
    control = f"{EMU_CONTROL}:{free_port(EMU_CONTROL)}"
    with EmulatorProcess(fleet_toml=FLEET, first_ip=FIRST, time_scale=0.01,
                         control=control) as emu:
        write_config(cfg, ranges=[RANGE], hashprice=0.09, tariff=0.07, state_dir=state,
                     guards=guards, extra=metrics)
        with DaemonProcess(cfg, tmp_path / "daemon.log", open_files_soft=1024) as daemon:
            pid = daemon.proc.pid
            wait_for(lambda: ticks(daemon) >= 2, 90, what="two ticks before the attack")
            assert set(_states(emu).values()) == {"mining"}
            status, _ = scrape(METRICS_HOST, port)
            assert status == 200
            fds_before = _open_fds(pid)
            peak_fds = fds_before
            with Slowloris((METRICS_HOST, port), idle=1500, trickle=20) as attack:
                wait_for(lambda: attack.opened + attack.connect_failures >= 1500
                         or not daemon.alive(), 120, interval=0.2,
                         what="1,500 attacking connections tried")
                assert daemon.alive(), daemon.log()[-3000:]
                assert attack.opened >= 1500, (attack.opened, attack.connect_failures)
                ticks_at_attack = ticks(daemon)
                # Prices fall during the attack: the losers must still be put to sleep.
                write_config(cfg, ranges=[RANGE], hashprice=0.045, tariff=0.07,
                             state_dir=state, guards=guards, extra=metrics)
                daemon.proc.send_signal(1)
                during: list[int] = []
                deadline = time.monotonic() + 60
                asleep = False
                while time.monotonic() < deadline and not (asleep and len(during) >= 3):
                    assert daemon.alive(), daemon.log()[-3000:]
                    peak_fds = max(peak_fds, _open_fds(pid))
                    with contextlib.suppress(OSError, http.client.HTTPException):
                        during.append(scrape(METRICS_HOST, port, gzip=True)[0])
                    states = _states(emu)
                    asleep = all((states[ip] == "sleeping") == (ip in LOSERS) for ip in states)
                    time.sleep(0.5)
                assert asleep, f"the losers were not put to sleep during the attack: {states}"
                assert daemon.alive(), daemon.log()[-3000:]
                assert ticks(daemon) >= ticks_at_attack + 3, "the loop stopped ticking"
                assert during.count(200) >= 3, f"legitimate scrapes during the attack: {during}"
                print(f"slowloris: {attack.opened} opened, {attack.closed_by_server} closed "
                      f"by the server, peak {attack.peak_held} held; daemon fds "
                      f"{fds_before} -> peak {peak_fds}; scrapes during: {during}; "
                      f"trickle lifetimes {sorted(attack.trickle_lifetimes_s)}")
            # A byte-by-byte header never buys more than the request deadline (5 s).
            assert len(attack.trickle_lifetimes_s) == 20, attack.trickle_lifetimes_s
            assert max(attack.trickle_lifetimes_s) < 5.0 + 3.0, attack.trickle_lifetimes_s
            assert peak_fds <= fds_before + fd_budget(32) + 8, (peak_fds, fds_before)
            status, body = scrape(METRICS_HOST, port)
            assert status == 200 and counter(body, "curtaild_ticks_total{result=\"ok\"}") >= 3
            assert daemon.stop() == 0
    log = daemon.log()
    assert "Traceback" not in log, log[-3000:]
    assert "Too many open files" not in log


# ---------------------------------------------------------------------- exporter bounds
def _exporter(**kw) -> MetricsExporter:
    exporter = MetricsExporter(f"{METRICS_HOST}:{free_port(METRICS_HOST)}", **kw)
    exporter.start()
    return exporter


def _connect(exporter: MetricsExporter) -> socket.socket:
    s = socket.socket()
    s.bind((ATTACKER, 0))
    s.settimeout(10)
    s.connect(exporter.address)  # type: ignore[arg-type]
    return s


def _closed_within(s: socket.socket, timeout: float, trickle: bool = False) -> float | None:
    """Seconds until the server closed ``s`` (None if still open after ``timeout``); with
    ``trickle`` send one header byte every 0.1 s meanwhile."""
    start = time.monotonic()
    s.setblocking(False)
    while time.monotonic() - start < timeout:
        try:
            if trickle:
                s.send(b"a")
            if s.recv(4096) == b"":
                return time.monotonic() - start
        except BlockingIOError:
            pass
        except OSError:
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def test_a_request_that_never_completes_is_dropped_at_its_deadline() -> None:
    """Idle and byte-by-byte connections both end at request_timeout_s from their accept:
    the deadline is for the whole request, not per read."""
    exporter = _exporter(request_timeout_s=1.5)
    try:
        idle = _connect(exporter)
        slow = _connect(exporter)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t_slow = _closed_within(slow, 6.0, trickle=True)
        t_idle = _closed_within(idle, 6.0)
        assert t_slow is not None and 1.0 <= t_slow < 3.0, t_slow
        assert t_idle is not None and t_idle < 3.0, t_idle
        assert exporter.dropped()["request_timeout"] == 2
        status, _ = scrape(*exporter.address)  # type: ignore[misc]
        assert status == 200
    finally:
        exporter.stop()


def test_connections_past_the_cap_never_hold_a_descriptor() -> None:
    """With every slot held by idle clients, 200 more connections leave the exporter's
    descriptor count where it was; a new scrape takes the slot of the oldest idle client."""
    exporter = _exporter(max_connections=4, request_timeout_s=30.0)
    held: list[socket.socket] = []
    try:
        held = [_connect(exporter) for _ in range(4)]
        wait_for(lambda: exporter.open_connections() == 4, 5, interval=0.05,
                 what="four idle connections held")
        fds = _open_fds(os.getpid())
        for _ in range(200):
            held.append(_connect(exporter))
        peak = exporter.open_connections()
        wait_for(lambda: exporter.dropped()["evicted"] >= 200, 10, interval=0.05,
                 what="200 evictions")
        assert peak <= 4 and exporter.open_connections() <= 4
        # our own 200 client sockets are still open here; the server's side of each is gone
        assert _open_fds(os.getpid()) <= fds + 200 + 1
        status, body = scrape(*exporter.address)  # type: ignore[misc]
        assert status == 200 and b"curtaild_ticks_total" in body
    finally:
        for s in held:
            s.close()
        exporter.stop()


def test_past_the_cap_with_every_slot_busy_answers_503() -> None:
    """Slots whose response is being written are never evicted: a newcomer gets 503."""
    from tests.controller.test_metrics import reading, state, tick

    miners = tuple(reading(f"AA:{i:04d}", ip=f"127.0.{i // 256}.{i % 256}") for i in range(3000))
    exporter = _exporter(max_connections=2, request_timeout_s=30.0)
    exporter.publish(state(tick(miners=miners)))
    readers: list[socket.socket] = []
    try:
        for _ in range(2):  # ask for a large uncompressed body and never read it
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((ATTACKER, 0))
            s.connect(exporter.address)  # type: ignore[arg-type]
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            readers.append(s)
        wait_for(lambda: exporter.open_connections() == 2, 10, interval=0.05,
                 what="two responses in flight")
        time.sleep(0.5)
        status, body = scrape(*exporter.address)  # type: ignore[misc]
        assert status == 503, body[:200]
        assert exporter.dropped()["over_capacity"] >= 1
    finally:
        for s in readers:
            s.close()
        exporter.stop()


def test_malformed_and_oversized_requests_are_refused_and_closed() -> None:
    exporter = _exporter()
    try:
        for request, code in [(b"NONSENSE\r\n\r\n", b"400"),
                              (b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
                              (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000, b"431")]:
            s = _connect(exporter)
            s.sendall(request)
            reply = s.recv(4096)
            assert reply.split(b" ")[1] == code, reply
            assert _closed_within(s, 3.0) is not None
            s.close()
        s = _connect(exporter)
        s.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
        head = s.recv(65536)
        s.close()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n"), head
        assert b"Content-Length: " in head
    finally:
        exporter.stop()


def test_stop_closes_every_connection() -> None:
    exporter = _exporter()
    s = _connect(exporter)
    wait_for(lambda: exporter.open_connections() == 1, 5, interval=0.05, what="one connection")
    exporter.stop()
    assert _closed_within(s, 2.0) is not None
    s.close()


# -------------------------------------------------------------------------- status.json
async def test_status_write_failures_are_logged_once_per_kind_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    """EMFILE, ENOSPC, anything: the failure is counted and logged once per kind until a
    write succeeds again; nothing propagates to the loop."""
    from curtaild.controller.config import parse_config
    from curtaild.controller.daemon import Daemon
    from tests.controller.test_metrics import tick

    cfg = parse_config({
        "fleet": {"ranges": ["127.150.9.1-127.150.9.2"]}, "hashprice": {"source": "fixed",
                                                            "usd_per_th_day": 0.05},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.05}, "policy": {"name": "margin"},
        "controller": {"state_dir": str(tmp_path / "state")}})
    daemon = Daemon(str(tmp_path / "c.toml"), cfg)
    try:
        result = tick()
        failures = [OSError(errno.EMFILE, "Too many open files"),
                    OSError(errno.EMFILE, "Too many open files"),
                    OSError(errno.ENOSPC, "No space left on device"),
                    ValueError("something else")]
        import curtaild.controller.daemon

        # called inside the write: its errors count too
        real = curtaild.controller.daemon.tick_summary

        def failing(*a, **kw):
            if failures:
                raise failures.pop(0)
            return real(*a, **kw)

        monkeypatch.setattr(curtaild.controller.daemon, "tick_summary", failing)
        caplog.set_level(logging.INFO, logger="curtaild")
        for _ in range(5):
            daemon._write_status(result)
        assert daemon.status_write_failures == 4
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 3, errors  # EMFILE once, ENOSPC, ValueError
        assert any("EMFILE" in e for e in errors) and any("ENOSPC" in e for e in errors)
        assert (tmp_path / "state" / "status.json").is_file()  # the 5th write went through
        assert "status.json written again (4 failed writes since start)" in caplog.text
        daemon._export()
        assert daemon.metrics.state.status_write_failures == 4
    finally:
        daemon.journal.close()


@pytest.mark.integration
def test_an_unwritable_status_json_does_not_stop_the_loop(tmp_path: Path) -> None:
    """status.json is a directory (a write can never succeed): the daemon still ticks and
    commands, logs the failure once, and counts every failed write in the exporter."""
    state = tmp_path / "state"
    (state / "status.json").mkdir(parents=True)
    cfg = tmp_path / "config.toml"
    port = free_port(METRICS_HOST)
    control = f"{EMU_CONTROL}:{free_port(EMU_CONTROL)}"
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.150.5.1", time_scale=0.01,
                         control=control) as emu:
        write_config(cfg, ranges=["127.150.5.1-127.150.5.4"], hashprice=0.045, tariff=0.07,
                     state_dir=state, guards={"ramp_w_per_min": 60000.0},
                     extra=f'[metrics]\nlisten = "{METRICS_HOST}:{port}"\n')
        losers = {"127.150.5.3", "127.150.5.4"}
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            wait_for(lambda: ticks(daemon) >= 3 and all(
                (s == "sleeping") == (ip in losers) for ip, s in _states(emu).items()), 90,
                what="three ticks and the losers asleep")
            assert daemon.alive()
            _, body = scrape(METRICS_HOST, port)
            assert counter(body, "curtaild_status_write_failures_total") >= 2
            assert daemon.stop() == 0
    log = daemon.log()
    assert log.count("cannot write status.json") == 1, log
    assert "EISDIR" in log


# --------------------------------------------------------------- config and fd budget
BASE = {"fleet": {"ranges": ["127.150.9.1-127.150.9.2"]},
        "hashprice": {"source": "fixed", "usd_per_th_day": 0.05},
        "tariff": {"kind": "flat", "usd_per_kwh": 0.05}, "policy": {"name": "margin"}}


@pytest.mark.parametrize(("metrics", "problem"), [
    ({"max_connections": 0}, "metrics.max_connections"),
    ({"max_connections": 5000}, "open file the fleet's polls need"),
    ({"request_timeout_s": 0}, "metrics.request_timeout_s"),
    ({"request_timeout_s": 600}, "idle or hostile"),
    ({"request_timeout_s": float("inf")}, "not a finite number"),
])
def test_metrics_bounds_are_themselves_bounded(metrics: dict, problem: str) -> None:
    from curtaild.controller.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "metrics": {"listen": "127.150.1.1:9464", **metrics}})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_the_descriptor_budget_reserves_the_metrics_cap(monkeypatch) -> None:
    """The open-files limit the daemon asks for covers its pools and the exporter's cap, and
    nothing for an exporter that is off."""
    import curtaild.controller.daemon
    from curtaild.controller.config import parse_config
    from curtaild.controller.limits import OVERHEAD_FDS, open_files_needed

    assert open_files_needed(poll_concurrency=400, discovery_concurrency=100,
                             command_concurrency=50, metrics_fds=fd_budget(32)) \
        == 950 + 32 + 5 + OVERHEAD_FDS
    asked: list[int] = []
    monkeypatch.setattr(curtaild.controller.daemon, "raise_open_files_limit",
                        lambda needed: (asked.append(needed) or (needed, needed)))
    on = parse_config({**BASE, "metrics": {"listen": "127.150.1.1:9464",
                                           "max_connections": 100}})
    off = parse_config(BASE)
    curtaild.controller.daemon.ensure_open_files(on)
    curtaild.controller.daemon.ensure_open_files(off)
    assert asked[0] - asked[1] == fd_budget(100) == 105
