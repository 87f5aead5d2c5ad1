# The SPA client: build one fwknop-compatible packet (guardian/spa_packet.py) and send it as one
# UDP datagram, like `fwknop -A tcp/22 -s -D HOST`. Nothing comes back (the server never answers),
# so success means "sent"; whether access opened shows when ssh connects.
#
# Keys come from a stanza of a guardian config (the same TOML the server reads: a client can keep
# a file with just its [[spa.stanza]]), or from two base64 key files like the ones
# `guardian keygen --out` writes. The address is resolved once; an IPv6 destination works (the
# allow-IP 0.0.0.0 then means the packet's IPv6 source, which only ssh-guardian understands).
from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from guardian.addresses import IPAddress, parse_address
from guardian.config import DEFAULT_SPA_PORT, SpaAccess
from guardian.engine.spa import ANY_SOURCE, spa_key
from guardian.knock_client import KnockError, resolve
from guardian.parsers.spa import SpaKey
from guardian.spa_packet import encode


@dataclass(frozen=True, slots=True)
class SpaRequest:
    """What to ask for: the access (("tcp", 22),), for whom (allow_ip), as whom, for how long."""

    access: tuple[SpaAccess, ...] = (("tcp", 22),)
    allow_ip: str = ANY_SOURCE
    username: str = ""  # "" = the login name, as the fwknop client does
    client_timeout: int | None = None  # message type 3 when set


def login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def build_packet(key: SpaKey, request: SpaRequest, now: float | None = None) -> bytes:
    """One packet for `request` at `now` (default: the wall clock)."""
    return encode(
        key,
        username=request.username or login_name(),
        allow_ip=request.allow_ip,
        access=request.access,
        timestamp=int(time.time() if now is None else now),
        message_type=1 if request.client_timeout is None else 3,
        client_timeout=request.client_timeout,
    )


def send_spa(
    host: str,
    key: SpaKey,
    request: SpaRequest,
    *,
    port: int = DEFAULT_SPA_PORT,
    family: int = 0,
) -> IPAddress:
    """Build and send one packet to host:port; returns the address it went to."""
    resolved_family, sockaddr = resolve(host, family)
    packet = build_packet(key, request)
    destination = (sockaddr[0], port, *sockaddr[2:])
    with socket.socket(resolved_family, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, destination)
    return parse_address(str(sockaddr[0]))


def parse_access(words: Sequence[str]) -> tuple[SpaAccess, ...]:
    """["tcp/22", "udp/53"] -> (("tcp", 22), ("udp", 53)); ValueError naming the bad word."""
    access: list[SpaAccess] = []
    for word in words:
        proto, _, port = word.strip().lower().partition("/")
        if proto not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad access {word!r}: write tcp/PORT or udp/PORT")
        access.append((proto, int(port)))
    if not access:
        raise ValueError("no access requested")
    return tuple(access)


__all__ = [
    "ANY_SOURCE",
    "KnockError",
    "SpaRequest",
    "build_packet",
    "login_name",
    "parse_access",
    "send_spa",
    "spa_key",
]
