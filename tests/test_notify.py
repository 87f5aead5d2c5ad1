# sd_notify (guardian/notify.py): the pure parts (addresses, the watchdog interval, the
# environment), a real datagram round trip including an abstract-namespace socket, and in the
# lab the daemon itself talking to a NOTIFY_SOCKET the test owns: READY=1 (after the table is
# installed), STATUS= with live counts, WATCHDOG=1 every WATCHDOG_USEC / 2, and no WATCHDOG=1 at
# all while the loop is stalled (SIGSTOP).
from __future__ import annotations

import itertools
import os
import signal
import socket
import statistics
import time
from pathlib import Path

import pytest

from guardian.control_client import request
from guardian.lab import Lab
from guardian.lab.guardian_proc import start_guardian
from guardian.notify import Notifier, socket_address, watchdog_interval

# -- pure ------------------------------------------------------------------------------------------


def test_socket_address_maps_at_to_the_abstract_namespace() -> None:
    assert socket_address("@guardian/notify") == b"\0guardian/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_watchdog_interval_is_half_and_honours_watchdog_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}, 42) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}, 42) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_from_environ_takes_the_variables_out() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "PATH": "/bin"}
    notifier = Notifier.from_environ(env)
    try:
        assert notifier.enabled and notifier.address == b"\0x" and notifier.watchdog == 1.0
        assert env == {"PATH": "/bin"}  # children started later cannot speak for the daemon
    finally:
        notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled and notifier.watchdog is None
    assert notifier.ready("x") is False and notifier.ping() is False


def receive_all(sock: socket.socket, duration: float) -> list[tuple[float, str]]:
    """Every datagram arriving within `duration` seconds, with its monotonic arrival time."""
    out = []
    deadline = time.monotonic() + duration
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        out.append((time.monotonic(), data.decode()))
    return out


@pytest.mark.parametrize("abstract", [False, True])
def test_datagrams_reach_a_real_socket(tmp_path: Path, abstract: bool) -> None:
    name = f"@guardian-test-{os.getpid()}" if abstract else str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(socket_address(name))
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
    try:
        assert notifier.ready("1 grant(s)\nsecond line")
        assert notifier.ping() and notifier.stopping()
        got = [text for _, text in receive_all(server, 0.2)]
        assert got == ["READY=1\nSTATUS=1 grant(s) second line", "WATCHDOG=1", "STOPPING=1"]
    finally:
        notifier.close()
        server.close()


def test_a_vanished_manager_is_counted_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    try:
        assert notifier.ping() is False and notifier.failed == 1
    finally:
        notifier.close()


# -- the daemon, in the lab ------------------------------------------------------------------

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
CONFIG = """\
[guard]
ports = [22]

[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/udp"]
"""


def test_daemon_notifies_ready_status_and_watchdog(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    try:
        started = time.monotonic()
        guardian = start_guardian(lab, CONFIG)
        first = receive_all(server, 2.2)
        texts = [t for _, t in first]
        assert texts, "no datagram at all"
        ready = [t for t in texts if "READY=1" in t]
        assert ready and texts.index(ready[0]) == 0, texts  # READY first, once
        assert "STATUS=0 grant(s), 0 session(s), 0 ban(s)" in ready[0]
        assert "guardian: ready" in guardian.log_text()  # READY=1 goes with the stderr line
        pings = [at for at, t in first if t == "WATCHDOG=1"]
        assert len(pings) >= 3, texts
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 0.35 <= statistics.median(gaps) <= 0.7, gaps
        assert pings[0] - started >= 0.3  # the first ping waits its interval after READY

        # A grant changes the counts: STATUS= follows (at most every few seconds).
        request(
            str(guardian.socket_path), {"cmd": "grant", "source": "10.9.9.9", "duration": "60s"}
        )
        deadline = time.monotonic() + 7.0
        status = ""
        while time.monotonic() < deadline and "1 grant(s)" not in status:
            for _, text in receive_all(server, 0.6):
                if text.startswith("STATUS="):
                    status = text
        assert status == "STATUS=1 grant(s), 0 session(s), 0 ban(s)"

        # A stalled loop sends nothing: no WATCHDOG=1 between SIGSTOP and SIGCONT.
        receive_all(server, 0.01)  # drain
        os.kill(guardian.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        during = receive_all(server, 3.0)
        os.kill(guardian.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        late = [at for at, t in during if t == "WATCHDOG=1" and at > stopped_at + 0.05]
        assert late == [], (late, stopped_at)
        after = receive_all(server, 1.2)
        assert any(t == "WATCHDOG=1" and at >= resumed_at for at, t in after), after
        assert guardian.stop() == 0
        tail = [t for _, t in receive_all(server, 0.3)]
        assert "STOPPING=1" in tail
    finally:
        server.close()
