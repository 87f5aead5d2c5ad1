# Address types shared by every layer, and the one place that normalises what the kernel and the
# logs hand us: an IPv4-mapped IPv6 address (::ffff:192.0.2.1) is the IPv4 address it carries, so a
# source has exactly one identity whichever path reported it.
from __future__ import annotations

import ipaddress
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize(address: IPAddress) -> IPAddress:
    """Return the IPv4 address inside a v4-mapped IPv6 address, else the address itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> IPAddress:
    """Parse and normalise an address; raises ValueError naming the text on failure."""
    return normalize(ipaddress.ip_address(text.strip().strip("[]")))


def in_any(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """True when the address lies in one of the networks (mixed families never match)."""
    return any(address.version == net.version and address in net for net in networks)
