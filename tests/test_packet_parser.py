# Tests of guardian/parsers/packet.py: crafted IPv4/IPv6 TCP/UDP packets become the right
# KnockSeen; malformed, truncated (at every length) and foreign packets become None; and random
# or mutated bytes never make it raise.
from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from guardian.events import ACK, FIN, PSH, RST, SYN, URG, KnockSeen, Proto
from guardian.parsers.packet import parse_knock

SRC4, DST4 = "192.0.2.2", "192.0.2.1"
SRC6, DST6 = "2001:db8::2", "2001:db8::1"
ECE, CWR = 0x40, 0x80


def tcp(dport: int, flags: int = SYN, data_offset: int = 5, sport: int = 40000) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, data_offset << 4, flags, 64240, 0, 0)
    return header + b"\x01" * max(0, (data_offset - 5) * 4)  # NOP options


def udp(dport: int, payload: bytes = b"\x00", length: int | None = None) -> bytes:
    size = 8 + len(payload) if length is None else length
    return struct.pack("!HHHH", 40000, dport, size, 0) + payload


def ipv4(
    segment: bytes,
    proto: int,
    frag: int = 0,
    options: bytes = b"",
    src: str = SRC4,
    total: int | None = None,
) -> bytes:
    ihl = 5 + len(options) // 4
    total_length = ihl * 4 + len(segment) if total is None else total
    src_bytes, dst_bytes = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(DST4).packed
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, total_length, 1, frag, 64, proto, 0, src_bytes, dst_bytes
    )
    return header + options + segment


def ipv6(segment: bytes, next_header: int, src: str = SRC6, payload: int | None = None) -> bytes:
    length = len(segment) if payload is None else payload
    src_bytes, dst_bytes = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(DST6).packed
    return struct.pack("!IHBB16s16s", 6 << 28, length, next_header, 64, src_bytes, dst_bytes) + (
        segment
    )


def seen(source: str, port: int, proto: Proto, flags: int = 0, interface: str = "") -> KnockSeen:
    return KnockSeen(ipaddress.ip_address(source), port, proto, flags, interface)


VALID = [
    pytest.param(ipv4(tcp(7000), 6), seen(SRC4, 7000, "tcp", SYN), id="v4-tcp-syn"),
    pytest.param(ipv4(udp(8000), 17), seen(SRC4, 8000, "udp"), id="v4-udp"),
    pytest.param(ipv4(udp(8000, b""), 17), seen(SRC4, 8000, "udp"), id="v4-udp-empty"),
    pytest.param(ipv6(tcp(9000), 6), seen(SRC6, 9000, "tcp", SYN), id="v6-tcp-syn"),
    pytest.param(ipv6(udp(8000), 17), seen(SRC6, 8000, "udp"), id="v6-udp"),
    pytest.param(
        ipv4(tcp(7000, flags=ACK | PSH), 6, options=b"\x01\x01\x01\x00"),
        seen(SRC4, 7000, "tcp", ACK | PSH),
        id="v4-options",
    ),
    pytest.param(
        ipv4(tcp(7000, flags=SYN, data_offset=8), 6), seen(SRC4, 7000, "tcp", SYN), id="tcp-opts"
    ),
    pytest.param(
        ipv4(tcp(7000, flags=FIN | SYN | RST | PSH | ACK | URG | ECE | CWR), 6),
        seen(SRC4, 7000, "tcp", FIN | SYN | RST | PSH | ACK | URG),
        id="ecn-bits-masked",
    ),
    pytest.param(ipv4(tcp(7000), 6, frag=0x4000), seen(SRC4, 7000, "tcp", SYN), id="v4-df"),
    pytest.param(
        ipv6(udp(8000), 17, src="::ffff:192.0.2.9"), seen("192.0.2.9", 8000, "udp"), id="v4-mapped"
    ),
]


@pytest.mark.parametrize(("packet", "expected"), VALID)
def test_valid_packets(packet: bytes, expected: KnockSeen) -> None:
    assert parse_knock(packet) == expected


def test_interface_is_carried() -> None:
    event = parse_knock(ipv4(tcp(7000), 6), "eth0")
    assert event is not None and event.interface == "eth0"


def test_link_padding_after_the_ip_packet_is_ignored() -> None:
    # Ethernet pads short frames to 60 bytes; the IP length says where the packet ends.
    assert parse_knock(ipv4(udp(8000), 17) + b"\x00" * 17) == seen(SRC4, 8000, "udp")
    assert parse_knock(ipv6(udp(8000), 17) + b"\xff" * 5) == seen(SRC6, 8000, "udp")


@pytest.mark.parametrize("case", range(len(VALID)))
def test_every_truncation_is_none(case: int) -> None:
    packet = VALID[case].values[0]
    assert isinstance(packet, bytes)
    for length in range(len(packet)):
        assert parse_knock(packet[:length]) is None, length


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x45", id="one-byte"),
        pytest.param(ipv4(tcp(7000), 6, frag=0x2000), id="v4-more-fragments"),
        pytest.param(ipv4(tcp(7000), 6, frag=0x00B9), id="v4-fragment-offset"),
        pytest.param(ipv4(tcp(7000), 1), id="v4-icmp"),
        pytest.param(b"\x44" + ipv4(tcp(7000), 6)[1:], id="v4-ihl-4"),
        pytest.param(b"\x4f" + ipv4(tcp(7000), 6)[1:], id="v4-ihl-beyond-packet"),
        pytest.param(ipv4(tcp(7000), 6, total=19), id="v4-total-below-header"),
        pytest.param(ipv4(tcp(7000), 6, total=41), id="v4-total-beyond-capture"),
        pytest.param(ipv4(tcp(7000), 6, total=39), id="v4-total-cuts-tcp"),
        pytest.param(ipv4(tcp(7000, data_offset=4), 6), id="tcp-offset-below-20"),
        pytest.param(ipv4(tcp(7000, data_offset=6)[:-4], 6), id="tcp-offset-beyond"),
        pytest.param(ipv4(udp(8000, length=7), 17), id="udp-length-below-8"),
        pytest.param(ipv4(udp(8000, length=10), 17), id="udp-length-beyond"),
        pytest.param(ipv6(tcp(7000), 0), id="v6-hop-by-hop"),
        pytest.param(ipv6(udp(8000), 44), id="v6-fragment-header"),
        pytest.param(ipv6(tcp(7000), 58), id="v6-icmp"),
        pytest.param(ipv6(tcp(7000), 6, payload=21), id="v6-payload-beyond-capture"),
        pytest.param(ipv6(tcp(7000), 6, payload=0), id="v6-jumbo-or-empty"),
        pytest.param(b"\x55" + ipv4(tcp(7000), 6)[1:], id="version-5"),
        pytest.param(bytes(60), id="zeros"),
    ],
)
def test_malformed_packets_are_none(packet: bytes) -> None:
    assert parse_knock(packet) is None


def test_random_and_mutated_bytes_never_raise() -> None:
    rng = random.Random(7000)
    bases = [p.values[0] for p in VALID if isinstance(p.values[0], bytes)]
    results = {"event": 0, "none": 0}
    for _ in range(4000):
        if rng.random() < 0.2:
            packet = rng.randbytes(rng.randrange(100))
        else:
            mutated = bytearray(rng.choice(bases))
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            if rng.random() < 0.3:
                del mutated[rng.randrange(len(mutated)) :]
            packet = bytes(mutated)
        event = parse_knock(packet)
        results["event" if event is not None else "none"] += 1
        if event is not None:
            assert 0 <= event.port <= 65535 and event.proto in ("tcp", "udp")
            assert event.tcp_flags & ~0x3F == 0
    assert results["event"] > 100 and results["none"] > 100
