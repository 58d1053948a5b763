"""Control API, command line behaviour and the whole-fleet (every family) smoke test."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from pyasic import get_miner

from curtaild.core.models import FAMILIES, MODELS
from tests.support.emulator import REPO, EmulatorError, EmulatorProcess

pytestmark = pytest.mark.integration

FLEET = """
[[miner]]
model = "S19j Pro"
count = 3
[[miner]]
model = "BitAxe Gamma"
"""
A, B, C, AXE = (f"127.10.4.{i}" for i in range(1, 5))
TRUTH_KEYS = {"ip", "make", "model", "firmware", "state", "hashrate_ths", "power_w",
              "power_limit_w", "temp_c"}


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(fleet_toml=FLEET, first_ip="127.10.4.1", time_scale=0.01) as e:
        yield e


def call(emu: EmulatorProcess, method: str, path: str, body: bytes | None = None,
         ) -> tuple[int, object]:
    req = urllib.request.Request(emu.control_url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _drop_net_bind_service() -> None:
    """In the child, before exec: remove CAP_NET_BIND_SERVICE from the bounding set, so even
    root cannot bind ports below 1024 (as an unprivileged user could not)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 10, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_cli(*args: str, unprivileged: bool = False,
            timeout: float = 30) -> subprocess.CompletedProcess:
    drop = _drop_net_bind_service if unprivileged and os.geteuid() == 0 else None
    return subprocess.run([sys.executable, "-m", "curtaild.controller.cli", "emulate", *args],
                           cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=drop)


def test_health_and_miner_listing(emu: EmulatorProcess) -> None:
    health = emu.health()
    assert health["status"] == "ok" and health["miners"] == 4
    assert health["families"] == {"antminer": 3, "bitaxe": 1}
    assert health["listeners"] == 3 * 2 + 1
    miners = emu.miners()
    assert [m["ip"] for m in miners] == [A, B, C, AXE]
    for m in miners:
        assert TRUTH_KEYS <= m.keys()
        assert m["state"] == "mining" and m["hashrate_ths"] > 0 and m["power_w"] > 0
    assert miners[0]["make"] == "AntMiner" and miners[0]["firmware"] == "antminer"
    assert emu.miner(AXE)["model"] == "Gamma"
    assert emu.stdout_lines[:2] == [f"control: {emu.control_url}",
                                    f"miners: 4 at {A}-{AXE}"]
    assert emu.stdout_lines[2] == "families: antminer=3 bitaxe=1"


def test_errors(emu: EmulatorProcess) -> None:
    assert call(emu, "GET", "/miners/127.99.0.1")[0] == 404
    assert call(emu, "POST", "/miners/127.99.0.1/fault", b'{"kind": "hang"}')[0] == 404
    status, body = call(emu, "POST", f"/miners/{A}/fault", b'{"kind": "explode"}')
    assert status == 400 and "kind" in body["error"]
    status, body = call(emu, "POST", f"/miners/{A}/fault", b"not json")
    assert status == 400 and "JSON" in body["error"]
    status, body = call(emu, "POST", f"/miners/{A}/fault", b'{"kind": "slow", "delay_s": -1}')
    assert status == 400 and "delay_s" in body["error"]
    status, body = call(emu, "POST", f"/miners/{A}/action", b'{"action": "dance"}')
    assert status == 400 and "action" in body["error"]
    assert call(emu, "DELETE", "/miners")[0] == 405
    assert call(emu, "GET", "/nope")[0] == 404
    assert emu.miner(A)["fault"] == "none"  # nothing above changed anything


def test_fault_endpoint_returns_the_miner(emu: EmulatorProcess) -> None:
    status, body = call(emu, "POST", f"/miners/{B}/fault", b'{"kind": "slow", "delay_s": 0.5}')
    assert status == 200 and body["fault"] == "slow" and body["fault_delay_s"] == 0.5
    assert emu.set_fault(B, "none")["fault"] == "none"


async def _silence(ip: str, port: int, wait_s: float = 0.5) -> str:
    """How a silent address fails: "connect timeout", or "no answer" (connected, nothing
    comes back); anything else is an AssertionError."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), wait_s)
    except TimeoutError:
        return "connect timeout"
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), wait_s)
        return "no answer"
    finally:
        writer.close()


async def test_actions_follow_the_physics(emu: EmulatorProcess) -> None:
    assert emu.action(C, "sleep")["state"] == "sleeping"
    assert emu.action(C, "wake")["state"] == "booting"
    emu.wait_state(C, "mining", timeout=15)
    assert emu.action(C, "reboot")["state"] == "booting"
    emu.wait_state(C, "mining", timeout=15)

    off = emu.action(C, "off")
    assert off["state"] == "off" and off["power_w"] == 0 and off["listening"] is False
    assert off["network"] == "blackhole"
    # An unplugged machine answers nothing: off the network, a connect times out (a real LAN
    # drops the SYN), it is not refused. The first connect of a blackhole may complete into
    # the never-accepted queue (and is never answered); the ones after it time out.
    assert [await _silence(C, 80) for _ in range(2)][1] == "connect timeout"
    with pytest.raises(EmulatorError, match="409"):
        emu.action(C, "wake")
    on = emu.action(C, "on")
    assert on["state"] == "booting"
    emu.wait_state(C, "mining", timeout=15)
    assert emu.wait_view(C, "listening", lambda m: m["listening"], 15)["network"] == "up"
    assert type(await get_miner(C)).__name__ == "BMMinerS19jPro"
    with pytest.raises(EmulatorError, match="409"):
        emu.action(C, "on")


def test_control_must_be_loopback() -> None:
    result = run_cli("--count", "1", "--first-ip", "127.10.4.200", "--control", "0.0.0.0:8641")
    assert result.returncode == 2
    assert "--control: 0.0.0.0 is not a loopback address" in result.stderr


def test_bad_fleet_file_exits_2_naming_the_key(tmp_path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[miner]]\nmodel = "S21"\n[[miner]]\nmodel = "S21"\nfault = "fire"\n')
    result = run_cli("--fleet", str(fleet), "--control", "127.0.0.1:8642")
    assert result.returncode == 2
    assert "miner[1].fault: unknown fault 'fire'" in result.stderr


def test_address_in_use_exits_2_naming_address_and_port(emu: EmulatorProcess) -> None:
    result = run_cli("--count", "1", "--first-ip", A, "--control", "127.0.0.1:8643")
    assert result.returncode == 2
    assert f"cannot listen on {A}:4028: address already in use" in result.stderr
    assert not result.stdout  # no "control:" line: nothing was started


def test_control_port_in_use_exits_2(emu: EmulatorProcess) -> None:
    result = run_cli("--count", "1", "--first-ip", "127.10.4.210", "--control", emu.control)
    assert result.returncode == 2
    assert f"control API: cannot listen on {emu.control}" in result.stderr


def _fleet_file(name: str, text: str):
    """A fleet file that an unprivileged child can read too."""
    path = REPO / ".pytest_cache" / f"emulator-{name}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_port_80_without_privileges_exits_2() -> None:
    """Without CAP_NET_BIND_SERVICE the web port cannot be bound; say so clearly."""
    fleet = _fleet_file("one-bitaxe", '[[miner]]\nmodel = "BitAxe Gamma"\n')  # port 80 only
    result = run_cli("--fleet", str(fleet), "--first-ip", "127.10.4.220",
                     "--control", "127.0.0.1:8644", unprivileged=True)
    assert result.returncode == 2, result.stderr
    assert "cannot listen on 127.10.4.220:80: permission denied" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_exit_0(sig: signal.Signals) -> None:
    fleet = _fleet_file("one-bitaxe", '[[miner]]\nmodel = "BitAxe Gamma"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "curtaild.controller.cli", "emulate", "--fleet", str(fleet),
         "--first-ip", "127.10.4.230", "--control", "127.0.0.1:8645"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("control: http://127.0.0.1:8645")
        proc.send_signal(sig)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_count_fleet_every_family_detected_by_pyasic() -> None:
    """``--count 8``: one of every model, each detected by pyasic as its make and firmware."""
    with EmulatorProcess(count=len(MODELS), first_ip="127.10.5.1", time_scale=0.01) as emu:
        truth = emu.miners()
        assert {m["firmware"] for m in truth} == set(FAMILIES)
        miners = await asyncio.gather(*(get_miner(m["ip"]) for m in truth))
        for t, miner in zip(truth, miners, strict=True):
            assert miner is not None, f"pyasic did not detect {t['ip']} ({t['model']})"
            assert str(miner.make) == t["make"], t
            assert str(miner.firmware) == ("LuxOS" if t["firmware"] == "luxos" else "Stock")
            assert miner.model.upper().startswith(t["model"].upper()), (miner.model, t)
        start = time.monotonic()
        data = await asyncio.gather(*(m.get_data() for m in miners))
        assert time.monotonic() - start < 15
        for t, d in zip(truth, data, strict=True):
            assert float(d.hashrate) == pytest.approx(t["hashrate_ths"], rel=0.1), t
