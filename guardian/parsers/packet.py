# Knock and SPA packets, pure: bytes starting at the IP header (what an AF_PACKET SOCK_DGRAM
# socket delivers) -> a KnockSeen (ports and flags), or a UDP datagram's source, port and payload
# (parse_datagram, for SPA), or None for anything that is not a well-formed, complete IPv4/IPv6 TCP
# or UDP packet. It never raises: a capture socket hands us whatever the wire carried, and a
# malformed packet is an ordinary non-event.
#
# It agrees with the kernel filter (guardian/bpf.py) on what a knock is: no IPv4 fragments (a
# first fragment would carry ports, but a knock never needs fragmenting), no IPv6 extension
# headers. It is stricter than the filter about lengths: the IP length fields must fit inside what
# was captured, so a truncated packet is not a knock.
from __future__ import annotations

import ipaddress

from guardian.addresses import normalize
from guardian.events import KnockSeen, Proto

IPPROTO_TCP, IPPROTO_UDP = 6, 17
_PROTOCOLS: dict[int, Proto] = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
_TCP_FLAGS_MASK = (
    0x3F  # FIN..URG (events.py); ECE/CWR ride on ECN-capable SYNs and mean nothing here
)
_IPV6_HEADER = 40


_Source = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_knock(packet: bytes, interface: str = "") -> KnockSeen | None:
    """An IP packet -> KnockSeen(source, port, proto, tcp_flags, interface), or None."""
    found = _network_layer(packet)
    if found is None:
        return None
    source, proto, segment = found
    return _parse_transport(segment, proto, source, interface)


def parse_datagram(packet: bytes) -> tuple[_Source, int, bytes] | None:
    """A UDP packet -> (source, destination port, payload), or None (not complete UDP)."""
    found = _network_layer(packet)
    if found is None or found[1] != "udp":
        return None
    source, _, segment = found
    if len(segment) < 8:
        return None
    udp_length = int.from_bytes(segment[4:6], "big")
    if not 8 <= udp_length <= len(segment):
        return None
    return normalize(source), int.from_bytes(segment[2:4], "big"), segment[8:udp_length]


def _network_layer(packet: bytes) -> tuple[_Source, Proto, bytes] | None:
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return _parse_ipv4(packet)
    if version == 6:
        return _parse_ipv6(packet)
    return None


def _parse_ipv4(packet: bytes) -> tuple[_Source, Proto, bytes] | None:
    if len(packet) < 20:
        return None
    header_length = (packet[0] & 0x0F) * 4
    total_length = int.from_bytes(packet[2:4], "big")
    fragment = int.from_bytes(packet[6:8], "big") & 0x3FFF  # MF bit and offset
    proto = _PROTOCOLS.get(packet[9])
    if header_length < 20 or fragment or proto is None:
        return None
    if not header_length <= total_length <= len(packet):
        return None
    return ipaddress.IPv4Address(packet[12:16]), proto, packet[header_length:total_length]


def _parse_ipv6(packet: bytes) -> tuple[_Source, Proto, bytes] | None:
    if len(packet) < _IPV6_HEADER:
        return None
    payload_length = int.from_bytes(packet[4:6], "big")
    proto = _PROTOCOLS.get(packet[6])  # the next header, directly: extension headers are refused
    end = _IPV6_HEADER + payload_length
    if proto is None or end > len(packet):
        return None
    return ipaddress.IPv6Address(packet[8:24]), proto, packet[_IPV6_HEADER:end]


def _parse_transport(segment: bytes, proto: Proto, source: _Source, iface: str) -> KnockSeen | None:
    if proto == "tcp":
        if len(segment) < 20:
            return None
        data_offset = (segment[12] >> 4) * 4
        if not 20 <= data_offset <= len(segment):
            return None
        flags = segment[13] & _TCP_FLAGS_MASK
    else:
        udp_length = int.from_bytes(segment[4:6], "big") if len(segment) >= 8 else 0
        if not 8 <= udp_length <= len(segment):
            return None
        flags = 0
    port = int.from_bytes(segment[2:4], "big")
    return KnockSeen(normalize(source), port, proto, flags, iface)
