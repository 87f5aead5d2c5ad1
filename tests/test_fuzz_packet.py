# Fuzz: the knock packet parser (guardian/parsers/packet.py parse_knock, and parse_datagram, the
# SPA capture's view of a UDP packet) and the classic-BPF interpreter running the compiled knock
# filter (guardian/bpf.py run_filter). Untrusted input: whatever the wire carries to a capture
# socket, spoofed at will.
#
# Invariants: parse_knock returns a KnockSeen or None and never raises; run_filter returns a u32
# verdict for any packet, and for any program it either runs it or raises ValueError (a program
# the kernel would refuse). Agreement: on a packet the parser calls well formed, the filter's
# verdict is exactly "the destination port is in the configured set of that protocol" — so the
# kernel never hides a knock and never wakes userspace for a non-knock it could have dropped.
# (On truncated packets the filter is knowingly looser: the parser has the last word.)
from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from guardian import bpf
from guardian.bpf import SNAP_LEN, Insn, compile_knock_filter, run_filter
from guardian.events import KnockSeen
from guardian.parsers.packet import parse_datagram, parse_knock
from tests.test_fuzz_support import assert_fast, counted, fuzz_settings, outcome

TCP_PORTS = frozenset({7000, 9000, *range(6992, 7009), 65535})
UDP_PORTS = frozenset({8000, 1})
FILTER = compile_knock_filter(TCP_PORTS, UDP_PORTS)
PORTS = {"tcp": TCP_PORTS, "udp": UDP_PORTS}
_INTERESTING_PORTS = sorted(TCP_PORTS | UDP_PORTS | {0, 22, 6991, 7009, 7999, 8001, 65534})


# ---- packets: well-formed ones with every field drawn, then maybe damaged ------------------------
def _usually(value: int, other: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """The sound value seven times in eight, else anything (so most packets get deep)."""
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda ok: st.just(value) if ok else other)


@st.composite
def _segment(draw: st.DrawFn, proto: int) -> bytes:
    interesting = st.sampled_from(_INTERESTING_PORTS)
    port = draw(st.one_of(interesting, interesting, interesting, st.integers(0, 65535)))
    sport = draw(st.integers(0, 65535))
    payload = draw(st.binary(max_size=24))
    if proto == 6:
        offset = draw(_usually(5, st.integers(0, 15)))
        options = draw(st.binary(min_size=max(0, offset - 5) * 4, max_size=max(0, offset - 5) * 4))
        flags = draw(st.integers(0, 255))
        header = struct.pack("!HHIIBBHHH", sport, port, 1, 0, offset << 4, flags, 1024, 0, 0)
        return header + options + payload
    length = draw(_usually(8 + len(payload), st.integers(0, 65535)))
    return struct.pack("!HHHH", sport, port, length, 0) + payload


@st.composite
def _ip_packet(draw: st.DrawFn) -> bytes:
    proto = draw(st.sampled_from([6, 17] * 10 + [0, 1, 41, 44, 58, 255]))
    segment = draw(_segment(6 if proto not in (6, 17) and draw(st.booleans()) else proto))
    if draw(st.booleans()):
        ihl = draw(_usually(5, st.integers(0, 15)))
        options = bytes(max(0, ihl - 5) * 4)
        total = draw(_usually(ihl * 4 + len(segment), st.integers(0, 65535)))
        frag = draw(st.sampled_from([0, 0, 0, 0x4000, 0x2000, 0x0001, 0x3FFF, 0x8000]))
        source = draw(st.ip_addresses(v=4)).packed
        version = draw(_usually(4, st.integers(0, 15)))
        header = struct.pack(
            "!BBHHHBBH4s4s", version << 4 | ihl, 0, total, 1, frag, 64, proto, 0, source, bytes(4)
        )
        packet = header + options + segment
    else:
        source = draw(st.ip_addresses(v=6)).packed
        length = draw(_usually(len(segment), st.integers(0, 65535)))
        version = draw(_usually(6, st.integers(0, 15)))
        header = struct.pack("!IHBB16s16s", version << 28, length, proto, 64, source, bytes(16))
        packet = header + segment
    damage = draw(st.sampled_from(["none"] * 5 + ["flip", "cut", "tail"]))
    mutable = bytearray(packet)
    if damage == "flip":
        for at, value in draw(
            st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=3)
        ):
            if at < len(mutable):
                mutable[at] = value
    elif damage == "cut":
        del mutable[draw(st.integers(0, len(mutable))) :]
    elif damage == "tail":
        mutable += draw(st.binary(min_size=1, max_size=8))  # capture longer than the IP length
    return bytes(mutable)


PACKETS = st.one_of(_ip_packet(), _ip_packet(), _ip_packet(), st.binary(max_size=120))


def check_packet(packet: bytes, interface: str = "") -> None:
    """The invariants for one packet (also driven by bench/fuzz_long.py)."""
    event = outcome("packet", lambda: parse_knock(packet, interface))
    assert event is None or isinstance(event, KnockSeen)
    verdict = outcome("packet", lambda: run_filter(FILTER, packet))
    assert verdict in (0, SNAP_LEN), verdict
    if event is None:
        return
    assert isinstance(event.source, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert 0 <= event.port <= 65535 and event.proto in ("tcp", "udp")
    assert 0 <= event.tcp_flags <= 0x3F and (event.proto == "tcp" or event.tcp_flags == 0)
    assert event.interface == interface
    is_knock = event.port in PORTS[event.proto]
    assert (verdict == SNAP_LEN) == is_knock, (packet.hex(), event, verdict)
    if event.proto == "udp":  # the SPA path reads the same datagram: same source and port
        datagram = parse_datagram(packet)
        assert datagram is not None and datagram[:2] == (event.source, event.port), datagram


def check_datagram(packet: bytes) -> None:
    """parse_datagram (the SPA capture path): None or (source, port, payload inside the packet)."""
    found = outcome("packet", lambda: parse_datagram(packet))
    if found is not None:
        source, port, payload = found
        assert isinstance(source, ipaddress.IPv4Address | ipaddress.IPv6Address)
        assert 0 <= port <= 65535 and isinstance(payload, bytes) and payload in packet
        assert parse_knock(packet) is not None


@fuzz_settings(400)
@given(packet=PACKETS, interface=st.text(max_size=16))
@counted("packet")
def test_parser_and_filter_never_raise_and_agree(packet: bytes, interface: str) -> None:
    check_packet(packet, interface)
    check_datagram(packet)


# ---- the interpreter on arbitrary programs -------------------------------------------------------
_CODES = sorted(bpf._KNOWN)
_INSN = st.builds(
    Insn,
    code=st.one_of(st.sampled_from(_CODES), st.integers(0, 0xFFFF)),
    jt=st.one_of(st.integers(0, 3), st.integers(0, 255)),
    jf=st.one_of(st.integers(0, 3), st.integers(0, 255)),
    k=st.one_of(
        st.integers(0, 64),
        st.sampled_from([bpf._ANC_PROTOCOL_K, 0xFFFFFFFF, 0x80000000, 15, 16]),
        st.integers(0, 0xFFFFFFFF),
    ),
)
PROGRAMS = st.one_of(
    st.lists(_INSN, min_size=0, max_size=40),
    st.binary(max_size=200),
)


def check_program(program: list[Insn] | bytes, packet: bytes, protocol: int | None) -> None:
    verdict = outcome("bpf", lambda: run_filter(program, packet, protocol), (ValueError,))
    assert isinstance(verdict, ValueError) or 0 <= verdict <= 0xFFFFFFFF, verdict


@fuzz_settings(300)
@given(
    program=PROGRAMS,
    packet=st.binary(max_size=64),
    protocol=st.one_of(st.none(), st.sampled_from([0x0800, 0x86DD, 0]), st.integers(0, 0xFFFF)),
)
@counted("bpf_program")
def test_interpreter_runs_or_refuses_any_program(
    program: list[Insn] | bytes, packet: bytes, protocol: int | None
) -> None:
    check_program(program, packet, protocol)


def test_a_jumbo_packet_and_the_largest_filter_take_bounded_time() -> None:
    """64 KiB packets (the SNAP_LEN) through the parser and the largest filter the kernel takes."""
    largest = compile_knock_filter(range(1, 2 * 1300, 2), [])
    segment = struct.pack("!HHIIBBHHH", 1, 2600, 1, 0, 5 << 4, 2, 1024, 0, 0) + bytes(65000)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 1, 0, 64, 6, 0, bytes(4), bytes(4))
    packet = header + segment  # total length 0: not a knock for the parser
    assert assert_fast(lambda: parse_knock(packet), 0.05, "parse_knock on 64 KiB") is None
    # the worst case for the filter: the port misses every range, so every range is tested
    assert assert_fast(lambda: run_filter(largest, packet), 0.5, "largest filter") == 0
