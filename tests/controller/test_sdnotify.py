"""sd_notify client against real AF_UNIX datagram sockets (a path and an abstract name)."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from curtaild.controller.sdnotify import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A socket like systemd's notify socket, bound to a path in a temp dir."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield sock, str(path)
    finally:
        sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    name = f"curtaild-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def _recv(sock: socket.socket) -> bytes:
    return sock.recv(8192)


def _nothing_pending(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(8192)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(2.0)
    return False


def test_exact_datagrams(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled

    assert n.ready() is True
    assert _recv(sock) == b"READY=1"
    n.ready("16 miners")
    assert _recv(sock) == b"READY=1\nSTATUS=16 miners"
    n.status("tick 0.42s: running=12 sleeping=4")
    assert _recv(sock) == b"STATUS=tick 0.42s: running=12 sleeping=4"
    n.watchdog()
    assert _recv(sock) == b"WATCHDOG=1"
    n.stopping()
    assert _recv(sock) == b"STOPPING=1"
    n.extend_timeout(90)
    assert _recv(sock) == b"EXTEND_TIMEOUT_USEC=90000000"
    assert _nothing_pending(sock)
    n.close()


def test_reloading_carries_the_monotonic_clock(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = _recv(sock).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and len(lines) == 2
    assert before <= int(value) <= after
    n.ready()  # a reload ends with READY=1
    assert _recv(sock) == b"READY=1"


def test_abstract_socket(abstract_receiver: tuple[socket.socket, str]) -> None:
    sock, address = abstract_receiver
    n = Notifier({"NOTIFY_SOCKET": address})
    n.ready("ok")
    assert _recv(sock) == b"READY=1\nSTATUS=ok"
    n.watchdog()
    assert _recv(sock) == b"WATCHDOG=1"


def test_status_cannot_inject_assignments(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier({"NOTIFY_SOCKET": path})
    n.status("bad\nREADY=1\0x")
    assert _recv(sock) == b"STATUS=bad READY=1 x"
    n.status("é" * 5000)
    data = _recv(sock)
    assert len(data) <= len(b"STATUS=") + 1024
    data.decode("utf-8")  # never cut inside a character


def test_reads_os_environ_by_default(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.watchdog_interval_s == 60.0
    n.ready()
    assert _recv(sock) == b"READY=1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "120000000"}, 60.0),
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
        ({"WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    n = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert n.watchdog_interval_s == expected


def test_no_watchdog_interval_without_a_socket() -> None:
    # Without NOTIFY_SOCKET nothing can be pinged, whatever WATCHDOG_USEC says.
    assert Notifier({"WATCHDOG_USEC": "120000000"}).watchdog_interval_s is None


def test_noop_without_notify_socket(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for n in (Notifier(), Notifier({}), Notifier({"NOTIFY_SOCKET": ""})):
        assert not n.enabled
        assert n.ready("x") is False
        assert n.reloading() is False
        assert n.watchdog() is False
        assert n.status("x") is False
        assert n.stopping() is False
        assert n._sock is None  # no socket is even created
    assert caplog.records == []


def test_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="curtaild.sdnotify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert n.ready() is False
    assert len(caplog.records) == 1


def test_vanished_socket_does_not_raise_and_warns_once(
    receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = receiver
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.ready() is True
    assert _recv(sock) == b"READY=1"
    sock.close()
    os.unlink(path)  # systemd went away (re-exec, or a test harness stopped listening)

    with caplog.at_level(logging.DEBUG, logger="curtaild.sdnotify"):
        for _ in range(5):
            assert n.watchdog() is False
        assert n.reloading() is False
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert path in warnings[0].getMessage()

    # The socket comes back at the same path: notifications resume, and a later outage
    # would be reported again.
    back = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    back.bind(path)
    back.settimeout(2.0)
    try:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="curtaild.sdnotify"):
            assert n.watchdog() is True
            assert _recv(back) == b"WATCHDOG=1"
        assert any("works again" in r.getMessage() for r in caplog.records)
    finally:
        back.close()
    n.close()


def test_never_existing_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing" / "notify")})
    assert n.enabled
    assert n.ready("x") is False
    assert n.watchdog() is False
    assert Notifier({"NOTIFY_SOCKET": "@curtaild-nobody-listens-" + uuid.uuid4().hex}).ready() \
        is False
