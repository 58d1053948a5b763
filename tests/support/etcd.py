"""Real etcd (Debian's ``etcd-server``) on loopback for the cluster tests: one member or three.

Each member is an ``/usr/bin/etcd`` process with its own data directory in a temporary
folder, listening for clients on ``<ip>:2379`` and for peers on ``<ip>:2380`` (every member
its own 127.x.y.z address, as members on separate hosts would be; the test workers' network
namespaces keep two test files' clusters apart). Short heartbeat and election timeouts, so
that losing a member elects a new raft leader in about a second.

Usage::

    with EtcdCluster(["127.190.0.1"]) as etcd:              # one member
        etcd.endpoints                                       # ["http://127.190.0.1:2379"]
    with EtcdCluster(["127.190.0.1", "127.190.0.2", "127.190.0.3"]) as etcd:
        etcd.stop_member(1)                                  # SIGTERM one member
        etcd.kill_member(0)                                  # SIGKILL
        etcd.start_member(1)                                 # the same member again
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CLIENT_PORT = 2379
PEER_PORT = 2380
START_TIMEOUT_S = 30.0


def etcd_binary() -> str:
    path = shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(path).exists():
        raise RuntimeError("etcd not installed: scripts/setup.sh installs Debian's etcd-server")
    return path


def etcdctl_binary() -> str:
    path = shutil.which("etcdctl") or "/usr/bin/etcdctl"
    if not Path(path).exists():
        raise RuntimeError("etcdctl not installed: scripts/setup.sh installs etcd-client")
    return path


class EtcdCluster:
    """An etcd cluster of ``len(ips)`` members on loopback; a context manager."""

    def __init__(self, ips: list[str], *, client_port: int = CLIENT_PORT,
                 peer_port: int = PEER_PORT, token: str = "curtaild-test") -> None:
        self.ips = list(ips)
        self.client_port = client_port
        self.peer_port = peer_port
        self.token = token
        self._tmp = tempfile.TemporaryDirectory(prefix="curtaild-etcd-")
        self.dir = Path(self._tmp.name)
        self.procs: list[subprocess.Popen | None] = [None] * len(self.ips)
        self._logs: list = [None] * len(self.ips)

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{ip}:{self.client_port}" for ip in self.ips]

    def name(self, i: int) -> str:
        return f"m{i}"

    def _command(self, i: int) -> list[str]:
        ip = self.ips[i]
        peers = ",".join(f"{self.name(j)}=http://{p}:{self.peer_port}"
                         for j, p in enumerate(self.ips))
        return [
            etcd_binary(),
            "--name", self.name(i),
            "--data-dir", str(self.dir / self.name(i)),
            "--listen-client-urls", f"http://{ip}:{self.client_port}",
            "--advertise-client-urls", f"http://{ip}:{self.client_port}",
            "--listen-peer-urls", f"http://{ip}:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://{ip}:{self.peer_port}",
            "--initial-cluster", peers,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]

    def start_member(self, i: int) -> None:
        self._logs[i] = open(self.dir / f"{self.name(i)}.log", "ab")  # closed in stop_member
        self.procs[i] = subprocess.Popen(self._command(i), stdout=self._logs[i],
                                         stderr=subprocess.STDOUT)

    def start(self) -> EtcdCluster:
        for i in range(len(self.ips)):
            self.start_member(i)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every running member answers and the cluster has a leader (a write works)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for i, p in enumerate(self.procs):
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"etcd member {i} exited {p.returncode}: {self.log(i)}")
            running = [self.endpoints[i] for i, p in enumerate(self.procs) if p is not None]
            out = self.etcdctl("endpoint", "health", "--endpoints", ",".join(running),
                               check=False)
            if out.returncode == 0:
                return
            last = (out.stdout + out.stderr).strip()
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after {timeout}s: {last}\n{self.log(0)}")

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``etcdctl`` (API v3) against the running members."""
        running = [self.endpoints[i] for i, p in enumerate(self.procs) if p is not None]
        cmd = [etcdctl_binary(), "--command-timeout=3s", "--dial-timeout=1s"]
        if "--endpoints" not in args:
            cmd += ["--endpoints", ",".join(running or self.endpoints)]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, check=check,
                              env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

    def get_prefix(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` and its value (both as text)."""
        out = self.etcdctl("get", "--prefix", prefix, "-w", "json")
        data = json.loads(out.stdout or "{}")
        import base64

        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
                for kv in data.get("kvs", [])}

    def stop_member(self, i: int, sig: int = signal.SIGTERM) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs[i] = None
        if self._logs[i] is not None:
            self._logs[i].close()
            self._logs[i] = None

    def kill_member(self, i: int) -> None:
        self.stop_member(i, signal.SIGKILL)

    def stop(self) -> None:
        for i in range(len(self.ips)):
            self.stop_member(i)

    def log(self, i: int, tail: int = 3000) -> str:
        try:
            return (self.dir / f"{self.name(i)}.log").read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def listening(self, i: int) -> bool:
        try:
            with socket.create_connection((self.ips[i], self.client_port), timeout=0.5):
                return True
        except OSError:
            return False

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            self._tmp.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()
