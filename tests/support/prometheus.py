"""Debian's `prometheus` and `promtool` for tests: find them (skip locally, fail under CI) and
run a private Prometheus server on loopback with a temporary config and storage."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.emulator import free_port
from tests.support.tools import binary, stop_process

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules" / "curtaild.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "rules" / "curtaild.rules.test.yml"
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "curtaild.json"


def tool(name: str) -> str:
    """Path of a Prometheus binary. Missing: skip, unless CI=true (then the test fails:
    `.ci/run` installs it and a silent skip would hide a broken setup)."""
    return binary(name, "prometheus")


def promtool(*args: str, stdin: bytes | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], input=stdin, cwd=cwd,
                          capture_output=True, timeout=120)


class PrometheusProcess:
    """A real Prometheus scraping ``targets`` every ``scrape_interval``; rule files as given."""

    def __init__(self, targets: list[str], *, rule_files: list[Path] = (),  # type: ignore[assignment]
                 scrape_interval: str = "1s", job: str = "curtaild"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="curtaild-prom-")
        d = Path(self._tmp.name)
        self.config_path = d / "prometheus.yml"
        self.config_path.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "scrape_interval": scrape_interval,
                                "scrape_timeout": scrape_interval,
                                "static_configs": [{"targets": targets}]}],
        }, indent=2))
        self.storage = d / "data"
        self.log_path = d / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> PrometheusProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.storage}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout}s: {self.log()}")

    def stop(self) -> None:
        stop_process(self.proc, 20)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def __enter__(self) -> PrometheusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()

    # ------------------------------------------------------------------------- HTTP API
    def api(self, path: str, **params: Any) -> dict:
        """GET /api/v1/<path>; returns the whole JSON answer (status, data, error...)."""
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            return json.loads(exc.read() or b"{}") | {"http_status": exc.code}

    def query(self, expr: str, at: float | None = None) -> dict:
        return self.api("query", query=expr, **({"time": at} if at is not None else {}))

    def query_range(self, expr: str, start: float, end: float, step: float) -> dict:
        return self.api("query_range", query=expr, start=start, end=end, step=step)

    def vector(self, expr: str) -> list[dict]:
        """Instant query that must succeed; its result list."""
        answer = self.query(expr)
        assert answer.get("status") == "success", f"{expr}: {answer}"
        return answer["data"]["result"]
