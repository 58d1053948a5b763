"""Shared plumbing for the bench scripts: the machine, an emulator process, CPU and RSS readers.

The emulator always runs in its own process so that its CPU is never charged to the controller
being measured; the controller's CPU is this process's (``time.process_time``, every thread).
"""

from __future__ import annotations

import collections
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE to the hard limit (10,000 miners need ~16k descriptors in the emulator
    and one per in-flight connection here); returns the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine() -> list[tuple[str, str]]:
    """What the figures were measured on, printed by every script."""
    from importlib.metadata import version

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                  if x.startswith("MemTotal:"))
    return [("cpu", f"{cpu} ({os.cpu_count()} cores)"),
            ("ram", f"{mem_kb / 1024 / 1024:.1f} GiB"),
            ("kernel", platform.release()),
            ("python", platform.python_version()),
            ("pyasic", version("pyasic")),
            ("RLIMIT_NOFILE", str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))]


def print_machine() -> None:
    for k, v in machine():
        print(f"{k:<14}{v}")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A small aligned table: first column left, the others right."""
    cells = [[str(h) for h in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                        for i, c in enumerate(r)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def cpu_s(pid: int) -> float:
    """utime + stime of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_mb(pid: int, field: str) -> float:
    """One memory line of /proc/PID/status (kB) in MB; NaN if the kernel does not report it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_mb(pid: int) -> float:
    """Resident memory of another process now."""
    return _status_mb(pid, "VmRSS")


def hwm_mb(pid: int) -> float:
    """Peak resident memory of another process so far (VmHWM): catches a spike between
    samples."""
    return _status_mb(pid, "VmHWM")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def addresses(first_ip: str, n: int) -> list[str]:
    """The emulator's numbering: consecutive, skipping last octets .0 and .255."""
    out, a = [], int.from_bytes(socket.inet_aton(first_ip), "big")
    while len(out) < n:
        if a & 0xFF not in (0, 255):
            out.append(socket.inet_ntoa(a.to_bytes(4, "big")))
        a += 1
    return out


class Emulator:
    """``curtaild emulate --count N`` in its own process (every model in turn, so the default
    family mix); started and stopped as a context manager."""

    def __init__(self, count: int, first_ip: str, start_timeout_s: float = 600.0,
                 pdus: bool = True):
        self.count = count
        self.first_ip = first_ip
        #: --count fleets get PDUs and a site meter (GET /meter: the site's true power);
        #: ``pdus=False`` (``--no-pdus``) saves ~1,250 UDP sockets per 10,000 miners
        self.pdus = pdus
        self.control = f"127.0.0.1:{free_port()}"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0
        self.lines: list[str] = []
        #: the last lines of its stderr: drained all along (a pipe nobody reads fills at 64 KiB
        #: and then blocks the emulator in its next log write -- at 10,000 miners an accept()
        #: that ran out of descriptors logs one line per listener and froze it for good)
        self.err_lines: collections.deque[str] = collections.deque(maxlen=200)

    def __enter__(self) -> Emulator:
        cmd = [sys.executable, "-m", "curtaild.controller.cli", "emulate", "--count",
               str(self.count),
               "--first-ip", self.first_ip, "--control", self.control, "--time-scale", "1"]
        if not self.pdus:
            cmd.append("--no-pdus")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def pump() -> None:  # keep the pipe drained for the life of the process
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("control: "):
                    ready.set()
            ready.set()

        def pump_err() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.err_lines.append(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
        threading.Thread(target=pump_err, daemon=True).start()
        if not ready.wait(self.start_timeout_s) or not any(
                x.startswith("control: ") for x in self.lines):
            self.__exit__()
            time.sleep(0.5)
            raise RuntimeError("emulator did not start: " + "\n".join(self.err_lines))
        self.startup_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fds(self) -> int:
        """Descriptors the emulator holds now (listeners, PDUs' UDP sockets, connections)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def ranges(self) -> list[str]:
        ips = self.ips()
        return [f"{ips[0]}-{ips[-1]}"]

    def ips(self) -> list[str]:
        return addresses(self.first_ip, self.count)

    def get(self, path: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(f"http://{self.control}{path}", timeout=timeout_s) as resp:
            return json.loads(resp.read())

    def site_power_w(self) -> float:
        """The site meter's reading (``GET /meter``): every machine's true draw now, what a
        utility's meter sees; ~0.2 s of emulator CPU at 10,000 miners (``GET /miners`` takes
        0.5 s and 7 MB)."""
        return float(self.get("/meter", 30.0)["power_w"])

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://{self.control}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def set_faults(self, ips: Sequence[str], kind: str) -> None:
        """The same fault on many miners (a few threads: the control API is HTTP/1.0)."""
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda ip: self._post(f"/miners/{ip}/fault", {"kind": kind}), ips))


LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(log: Path, needle: str | re.Pattern[str], after: float = 0.0) -> list[float]:
    """Unix times of the daemon log lines (``curtaild run``'s format) that contain ``needle``
    (a string, or a compiled pattern searched for), at or after ``after``."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_TS.match(line)
        if not m:
            continue
        hit = needle.search(line) if isinstance(needle, re.Pattern) else needle in line
        if hit:
            ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if ts >= after:
                out.append(ts)
    return out


#: a regular tick's log line (controller/daemon.py _log_tick): its duration and the states
TICK = re.compile(r"curtaild: tick (\d+\.\d+)s: (.*?) \| ")


def ticks(log: Path) -> list[tuple[float, float, int]]:
    """(end time, duration s, miners read) of every regular tick in a daemon log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m, t = LOG_TS.match(line), TICK.search(line)
        if m and t:
            states = dict(kv.split("=") for kv in t.group(2).split())
            read = sum(int(v) for k, v in states.items() if k != "unreachable")
            end = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((end, float(t.group(1)), read))
    return out


def log_first(log: Path, needle: str | re.Pattern[str], after: float = 0.0) -> float | None:
    got = log_times(log, needle, after)
    return got[0] if got else None


def wait(what: str, pred, timeout_s: float, interval_s: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll ``pred`` until it returns something true; RuntimeError naming ``what`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval_s)
    raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}")


def seed_identities(emus: Sequence[Emulator], state_dirs: Sequence[Path],
                    samples: int = 2) -> dict[str, int]:
    """Write ``identities.json`` (drivers/identity_cache.py) into each state directory for
    every emulated miner, as an instance that has run a day has it, without the minutes a
    discovery of 10,000 addresses takes: ``samples`` miners of every emulated kind (model,
    firmware, API, firmware version, from the control API) are discovered with
    ``pyasic.get_miner`` and their class named with the product's own ``class_name``; every
    miner of that kind gets it. Samples of one kind that disagree are an error (the kind
    would not determine the class). Returns {class: miners}."""
    import asyncio

    import pyasic

    from curtaild.drivers.identity_cache import CACHE_FILE, VERSION, class_name

    kinds: dict[tuple, list[str]] = {}
    for emu in emus:
        for m in emu.get("/miners", 120.0):
            key = (m.get("make"), m.get("model"), m.get("firmware"), m.get("api"),
                   m.get("firmware_version"))
            kinds.setdefault(key, []).append(m["ip"])

    async def name_of(ip: str) -> str | None:
        for _ in range(3):
            try:
                miner = await asyncio.wait_for(pyasic.get_miner(ip), 30)
            except Exception:
                miner = None
            if miner is not None:
                return class_name(miner)
        return None

    async def discover() -> dict[tuple, str | None]:
        out = {}
        for key, ips in kinds.items():
            names = {await name_of(ip) for ip in ips[:samples]}
            if len(names) != 1:
                raise RuntimeError(f"emulated kind {key}: samples discovered as {names}")
            out[key] = names.pop()
        return out

    classes = asyncio.run(discover())
    entries = {ip: {"class": classes[key]} for key, ips in kinds.items() for ip in ips
               if classes[key] is not None}
    for state in state_dirs:
        state.mkdir(parents=True, exist_ok=True)
        (state / CACHE_FILE).write_text(json.dumps({"version": VERSION, "miners": entries}))
    counts: dict[str, int] = {}
    for e in entries.values():
        counts[e["class"]] = counts.get(e["class"], 0) + 1
    return counts


class EmulatorFleet:
    """One fleet of ``count`` miners in several ``curtaild emulate`` processes of at most
    ``per_process`` each, numbered on from ``first_ip`` as one emulator would number them.

    Why: the emulator holds ~1.9 descriptors per miner idle (1.75 listening sockets, plus the
    --count fleet's PDUs: one UDP socket per 8 miners), 18,758 at 10,000, and RLIMIT_NOFILE's
    hard limit on this box is 20,000 (not raisable: ``ulimit -Hn``). The 1,242 left cannot hold
    the connections of one daemon polling at the default poll_concurrency (400 polls, ~8
    connections each on the emulator's side): accept() failed with EMFILE and every poll
    timed out. 5,000 per process leaves 10,600 each, and spreads the emulator's CPU over the
    box's two cores. Each process has its own site meter: the site's power is their sum."""

    def __init__(self, count: int, first_ip: str, per_process: int = 5000,
                 pdus: bool = True) -> None:
        ips = addresses(first_ip, count)
        self.parts = [Emulator(len(ips[i:i + per_process]), ips[i], pdus=pdus)
                      for i in range(0, count, per_process)]
        self.count = count

    def __enter__(self) -> EmulatorFleet:
        try:
            for e in self.parts:
                e.__enter__()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for e in self.parts:
            e.__exit__()

    @property
    def startup_s(self) -> float:
        return sum(e.startup_s for e in self.parts)

    def ips(self) -> list[str]:
        return [ip for e in self.parts for ip in e.ips()]

    def ranges(self) -> list[str]:
        return [r for e in self.parts for r in e.ranges()]

    def get(self, path: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
        """``GET /miners`` of every part as one list (other paths: the first part's)."""
        if path == "/miners":
            return [m for e in self.parts for m in e.get(path, timeout_s)]
        return self.parts[0].get(path, timeout_s)

    def site_power_w(self) -> float:
        return sum(e.site_power_w() for e in self.parts)

    def fds(self) -> int:
        """The most descriptors one part holds now (each part has its own limit)."""
        return max(e.fds() for e in self.parts)

    def cpu_s(self) -> float:
        return sum(cpu_s(e.pid) for e in self.parts)


class FdWatch:
    """Samples the emulators' descriptor count every ``interval_s`` (a thread); ``peak`` is the
    highest seen, reported beside the figures so a run near RLIMIT_NOFILE is visible."""

    def __init__(self, emu: Emulator | EmulatorFleet, interval_s: float = 1.0) -> None:
        self.emu = emu
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), daemon=True)

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.peak = max(self.peak, self.emu.fds())
            except OSError:
                return

    def __enter__(self) -> FdWatch:
        self.peak = self.emu.fds()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
