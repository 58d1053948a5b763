"""Shared plumbing for the bench scripts: the machine, an emulator process, CPU and RSS readers.

The emulator always runs in its own process so that its CPU is never charged to the controller
being measured; the controller's CPU is this process's (``time.process_time``, every thread).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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

    def __init__(self, count: int, first_ip: str, start_timeout_s: float = 600.0):
        self.count = count
        self.first_ip = first_ip
        self.control = f"127.0.0.1:{free_port()}"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0
        self.lines: list[str] = []

    def __enter__(self) -> Emulator:
        cmd = [sys.executable, "-m", "curtaild.controller.cli", "emulate", "--count",
               str(self.count),
               "--first-ip", self.first_ip, "--control", self.control, "--time-scale", "1"]
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

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(self.start_timeout_s) or not any(
                x.startswith("control: ") for x in self.lines):
            self.__exit__()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"emulator did not start: {err.strip()}")
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

    def ips(self) -> list[str]:
        return addresses(self.first_ip, self.count)

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
