"""What every real-process test helper shares: finding an installed binary (skip locally when
it is missing, fail under CI=true, where `.ci/run` installs it and a skip would hide a broken
set-up) and stopping a child process."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Skip, or under CI=true fail: every integration test must run in CI."""
    if in_ci():
        pytest.fail(f"{what} (CI=true: this must not be skipped)")
    pytest.skip(what)


def binary(name: str, package: str, paths: tuple[str, ...] = ()) -> str:
    """Path of an installed program (PATH, then ``paths``, then /usr/bin and /usr/sbin)."""
    candidates = (*paths, f"/usr/bin/{name}", f"/usr/sbin/{name}")
    found = shutil.which(name) or next((p for p in candidates if os.access(p, os.X_OK)), None)
    if found:
        return found
    missing(f"{name} is not installed (apt-get install {package})")
    raise AssertionError  # unreachable: missing() skips or fails


def stop_process(proc: subprocess.Popen | None, wait_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``wait_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
