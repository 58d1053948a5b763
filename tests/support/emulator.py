"""Run the miner-firmware emulator as a separate process and talk to its control API.

Usage::

    with EmulatorProcess(count=8, first_ip="127.10.0.1") as emu:
        emu.miners()                      # physical truth of every miner
        emu.set_fault("127.10.0.1", "slow", delay_s=1.0)
        emu.action("127.10.0.2", "sleep")

The emulator is started with ``python -m controller.cli emulate`` (the ``curtaild emulate``
command) so tests exercise the shipped entry point, in its own process, over real sockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from curtaild.emulator.fleet import COUNT_PASSWORDS

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
#: The admin password a site set on its Whatsminers: every ``--count`` Whatsminer has it (and
#: its write API on); a test fleet file gives it as ``password = ...`` to Whatsminers that
#: curtaild commands with ``tests/support/daemon.write_config``'s credentials. Without it an
#: emulated Whatsminer keeps the factory password and its write API stays off.
SITE_WHATSMINER_PASSWORD = COUNT_PASSWORDS["whatsminer"]


class EmulatorError(RuntimeError):
    """The emulator failed to start, died, or a control call failed."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmulatorProcess:
    """``curtaild emulate`` in a child process; a context manager that stops it on exit."""

    def __init__(self, *, count: int | None = None, fleet_toml: str | None = None,
                 first_ip: str = "127.1.0.1", time_scale: float = 0.01,
                 control: str | None = None) -> None:
        if (count is None) == (fleet_toml is None):
            raise ValueError("give exactly one of count= or fleet_toml=")
        self.count = count
        self.fleet_toml = fleet_toml
        self.first_ip = first_ip
        self.time_scale = time_scale
        self.control = control or f"127.0.0.1:{free_port()}"
        self.control_url = f"http://{self.control}"
        self.proc: subprocess.Popen | None = None
        self.stdout_lines: list[str] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="curtaild-emu-")
        self._stderr_path = Path(self._tmp.name) / "stderr.log"
        self._stderr = None

    # ----------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "curtaild.controller.cli", "emulate",
               "--first-ip", self.first_ip, "--control", self.control,
               "--time-scale", repr(self.time_scale)]
        if self.fleet_toml is not None:
            path = Path(self._tmp.name) / "fleet.toml"
            path.write_text(self.fleet_toml)
            cmd += ["--fleet", str(path)]
        else:
            cmd += ["--count", str(self.count)]
        return cmd

    def start(self) -> EmulatorProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        self._stderr = open(self._stderr_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        ready = threading.Event()

        def pump() -> None:  # keeps the pipe drained for the whole life of the process
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout_lines.append(line.rstrip("\n"))
                if line.startswith("control: "):
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True, name="emulator-stdout").start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                break
        if not any(line.startswith("control: ") for line in self.stdout_lines):
            code = self.proc.poll()
            self.stop()
            why = f"exit code {code}" if code is not None else f"silent for {START_TIMEOUT_S}s"
            raise EmulatorError(
                f"emulator did not start ({why}): {self.stderr().strip() or '(no stderr)'}")
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            code = self.proc.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()

    # -------------------------------------------------------------- control API
    def _call(self, method: str, path: str, body: dict | None = None,
              timeout: float = 30.0) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.control_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise EmulatorError(f"{method} {path}: HTTP {exc.code}: {detail}") from None

    def health(self) -> dict:
        return self._call("GET", "/health")

    def miners(self) -> list[dict]:
        return self._call("GET", "/miners")

    def miner(self, ip: str) -> dict:
        return self._call("GET", f"/miners/{ip}")

    def set_fault(self, ip: str, kind: str, **kw: Any) -> dict:
        return self._call("POST", f"/miners/{ip}/fault", {"kind": kind, **kw})

    def action(self, ip: str, action: str) -> dict:
        return self._call("POST", f"/miners/{ip}/action", {"action": action})

    def power(self, ip: str, on: bool) -> dict:
        """Cut (False) or restore (True) the miner's mains power."""
        return self._call("POST", f"/miners/{ip}/power", {"on": on})

    def wait_view(self, ip: str, what: str, predicate, timeout: float = 30.0) -> dict:
        """Poll GET /miners/{ip} until ``predicate(view)``; EmulatorError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.miner(ip)
            if predicate(m):
                return m
            if time.monotonic() > deadline:
                raise EmulatorError(f"{ip}: not {what} after {timeout}s: state {m['state']!r}"
                                    f", process {m.get('process')!r}")
            time.sleep(0.05)

    def wait_state(self, ip: str, state: str, timeout: float = 30.0) -> dict:
        """Poll the truth until the miner is in ``state``; EmulatorError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.miner(ip)
            if m["state"] == state:
                return m
            if time.monotonic() > deadline:
                raise EmulatorError(f"{ip} still {m['state']!r} after {timeout}s, "
                                    f"wanted {state!r}")
            time.sleep(0.05)
