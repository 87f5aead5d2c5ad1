# Tests of guardian/knock_client.py on loopback only: UDP knocks arrive one datagram each, in
# order and spaced by the delay; a TCP knock is exactly one SYN (checked with a raw socket when
# root); resolution and argument errors are clear. The lab (test_knock_watcher_lab.py) repeats the
# knocks across a veth against the real watcher.
from __future__ import annotations

import itertools
import os
import select
import socket
import struct
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
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
            listeners.append(sock)
        yield listeners


SO_TIMESTAMP = 29  # linux/socket.h; the kernel stamps each datagram as it arrives
_TIMEVAL = struct.Struct("=qq")


def _receive_one(sock: socket.socket) -> tuple[bytes, float]:
    """One datagram and the kernel's arrival time for it (seconds)."""
    ready, _, _ = select.select([sock], [], [], TIMEOUT)
    assert ready, "no datagram within the timeout"
    data, ancillary, _, _ = sock.recvmsg(100, 64)
    stamps = [
        c for level, kind, c in ancillary if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMP)
    ]
    assert len(stamps) == 1
    seconds, micros = _TIMEVAL.unpack(stamps[0][: _TIMEVAL.size])
    return data, seconds + micros / 1e6


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
    started = time.monotonic()
    used = send_sequence(host, steps, delay=0.05)
    elapsed = time.monotonic() - started
    assert used == parse_address(host)
    assert elapsed >= 0.1  # two gaps, none after the last knock
    arrivals = [_receive_one(sock) for sock in udp_listeners]
    assert [data for data, _ in arrivals] == [b"\x00"] * 3
    assert [sock.recv(100) if select.select([sock], [], [], 0)[0] else None
            for sock in udp_listeners] == [None] * 3  # fmt: skip
    # Arrived in sending order, each gap at least the delay (kernel receive timestamps).
    times = [at for _, at in arrivals]
    assert all(later - earlier >= 0.045 for earlier, later in itertools.pairwise(times))


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
