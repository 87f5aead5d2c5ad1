# Tests of guardian/knock_client.py on loopback only: UDP knocks arrive one datagram each, in
# order and spaced by the delay; a TCP knock is exactly one SYN (checked with a raw socket when
# root); resolution and argument errors are clear. The lab (test_knock_watcher_lab.py) repeats the
# knocks across a veth against the real watcher.
from __future__ import annotations

import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from guardian.addresses import parse_address
from guardian.config import KnockStep
from guardian.events import SYN
from guardian.knock_client import KnockError, resolve, send_sequence
from guardian.parsers.packet import parse_knock

TIMEOUT = 3.0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def udp_listeners(request: pytest.FixtureRequest) -> Iterator[list[socket.socket]]:
    family, host = request.param
    with ExitStack() as stack:
        listeners = []
        for _ in range(3):
            sock = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            sock.bind((host, 0))
            listeners.append(sock)
        yield listeners


class ArrivalWatcher(threading.Thread):
    """Records when each socket first becomes readable (monotonic seconds), bounded in time.

    Kernel receive timestamps (SO_TIMESTAMP) looked attractive but can be filled in lazily at
    recvmsg() time right after timestamping is switched on, which made the spacing check flaky."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        super().__init__(daemon=True)
        self.sockets = sockets
        self.arrived: dict[int, float] = {}

    def run(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        waiting = list(self.sockets)
        while waiting and time.monotonic() < deadline:
            ready, _, _ = select.select(waiting, [], [], 0.05)
            now = time.monotonic()
            for sock in ready:
                self.arrived[sock.fileno()] = now
                waiting.remove(sock)


@pytest.mark.parametrize(
    "udp_listeners",
    [
        pytest.param((socket.AF_INET, "127.0.0.1"), id="v4"),
        pytest.param(
            (socket.AF_INET6, "::1"),
            id="v6",
            marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 on loopback"),
        ),
    ],
    indirect=True,
)
def test_udp_knocks_arrive_once_each_in_order_and_spaced(
    udp_listeners: list[socket.socket],
) -> None:
    host = udp_listeners[0].getsockname()[0]
    steps = [KnockStep(sock.getsockname()[1], "udp") for sock in udp_listeners]
    watcher = ArrivalWatcher(udp_listeners)
    watcher.start()
    started = time.monotonic()
    used = send_sequence(host, steps, delay=0.05)
    elapsed = time.monotonic() - started
    watcher.join(TIMEOUT + 1)
    assert used == parse_address(host)
    assert elapsed >= 0.1  # two gaps, none after the last knock
    assert [sock.recv(100) for sock in udp_listeners] == [b"\x00"] * 3
    assert [sock.recv(100) if select.select([sock], [], [], 0)[0] else None
            for sock in udp_listeners] == [None] * 3  # fmt: skip
    # Arrived in sending order, spaced by the delay (the watcher polls every <= 50 ms, so a
    # gap can only look longer than it was, never shorter by more than scheduling noise).
    times = [watcher.arrived[sock.fileno()] for sock in udp_listeners]
    assert all(later - earlier >= 0.04 for earlier, later in itertools.pairwise(times))


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw socket needs root")
def test_tcp_knock_is_exactly_one_syn() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw:
        send_sequence("127.0.0.1", [KnockStep(port, "tcp")])
        seen = []
        deadline = time.monotonic() + 0.5  # the knock and any retransmission would be this fast
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([raw], [], [], left)[0]:
                break
            event = parse_knock(raw.recv(65535))
            if event is not None and event.port == port:
                seen.append(event)
    assert [(str(e.source), e.proto, e.tcp_flags) for e in seen] == [("127.0.0.1", "tcp", SYN)]


def test_tcp_knock_to_a_closed_port_does_not_raise() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert send_sequence("localhost", [KnockStep(port)], family=socket.AF_INET) == parse_address(
        "127.0.0.1"
    )


def test_resolve_literals_names_and_family_preference() -> None:
    assert resolve("127.0.0.1") == (socket.AF_INET, ("127.0.0.1", 0))
    assert resolve("localhost", socket.AF_INET)[1][0] == "127.0.0.1"
    family, sockaddr = resolve("[::1]")
    assert family == socket.AF_INET6 and sockaddr[0] == "::1"
    with pytest.raises(KnockError, match=r"cannot resolve .127\.0\.0\.1"):
        resolve("127.0.0.1", socket.AF_INET6)
    with pytest.raises(KnockError, match="cannot resolve"):
        resolve("no-such-host.invalid")


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="delay"):
        send_sequence("127.0.0.1", [KnockStep(7000)], delay=-1)
    with pytest.raises(ValueError, match="out of range"):
        send_sequence("127.0.0.1", [KnockStep(0, "udp")])
    with pytest.raises(ValueError, match="family"):
        resolve("127.0.0.1", family=socket.AF_UNIX)
