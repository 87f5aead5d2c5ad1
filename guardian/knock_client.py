# The knock client: send a door's sequence to a host, like the `knock` program of knockd, in
# process (never a shell). A TCP knock is one SYN: a non-blocking connect() that is closed at once
# (Linux sends the SYN inside connect(), so closing leaves no connection and no FIN behind). A UDP
# knock is one one-byte datagram, as `knock` sends. The address is resolved once, so every knock
# of a sequence goes to the same address and family.
from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Sequence

from guardian.addresses import IPAddress, parse_address
from guardian.config import KnockStep

_CONNECT_IN_FLIGHT = frozenset({0, errno.EINPROGRESS, errno.EAGAIN, errno.ECONNREFUSED})
_UDP_PAYLOAD = b"\x00"


class KnockError(Exception):
    """The host could not be resolved or a knock could not be sent; the message says which."""


def resolve(host: str, family: int = 0) -> tuple[int, tuple[object, ...]]:
    """host (name or literal, brackets allowed) -> (family, sockaddr) of the first address.

    family: 0 for either, socket.AF_INET or socket.AF_INET6 to insist (-4 / -6)."""
    if family not in (0, socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family must be 0, AF_INET or AF_INET6, not {family}")
    try:
        infos = socket.getaddrinfo(host.strip().strip("[]"), 0, family, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as error:
        raise KnockError(f"cannot resolve {host!r}: {error}") from error
    for info_family, _, _, _, sockaddr in infos:
        if info_family in (socket.AF_INET, socket.AF_INET6):
            return int(info_family), tuple(sockaddr)
    raise KnockError(f"no IPv4 or IPv6 address for {host!r}")


def send_sequence(
    host: str, steps: Sequence[KnockStep], delay: float = 0.0, family: int = 0
) -> IPAddress:
    """Send each knock in order to host, waiting `delay` seconds between knocks (not after the
    last); return the address used. Raises KnockError (resolution, sending) or ValueError (a port
    outside 1..65535, a negative delay, a bad family)."""
    if delay < 0:
        raise ValueError(f"delay must not be negative: {delay}")
    for step in steps:
        if not 1 <= step.port <= 65535:
            raise ValueError(f"knock port out of range 1..65535: {step}")
    address_family, sockaddr = resolve(host, family)
    for index, step in enumerate(steps):
        if index and delay:
            time.sleep(delay)
        target = (sockaddr[0], step.port, *sockaddr[2:])  # keeps an IPv6 flowinfo and scope id
        try:
            if step.proto == "tcp":
                _knock_tcp(address_family, target)
            else:
                _knock_udp(address_family, target)
        except OSError as error:
            raise KnockError(f"knock {step} to {sockaddr[0]}: {error}") from error
    return parse_address(str(sockaddr[0]))


def _knock_tcp(family: int, target: tuple[object, ...]) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        result = sock.connect_ex(target)
        if result not in _CONNECT_IN_FLIGHT:
            raise OSError(result, os.strerror(result))


def _knock_udp(family: int, target: tuple[object, ...]) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(_UDP_PAYLOAD, target)
