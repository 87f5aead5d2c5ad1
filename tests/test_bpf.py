# Tests of guardian/bpf.py without a kernel: the assembler's label resolution and checks, the
# interpreter's semantics on hand-written programs, and the knock filter on crafted packets (both
# families, both protocols, fragments, extension headers, range edges, every truncation). A seeded
# fuzz checks that the filter never rejects what the userspace parser would take as a knock.
from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from guardian import bpf
from guardian.bpf import (
    ABS,
    ADD,
    ALU,
    AND,
    DIV,
    JEQ,
    JGT,
    LD,
    LDX,
    LEN,
    MEM,
    MISC,
    MOD,
    RET,
    RET_A,
    SNAP_LEN,
    ST,
    TAX,
    TXA,
    B,
    H,
    Insn,
    Jump,
    Label,
    W,
    X,
    assemble,
    compile_knock_filter,
    goto,
    jump_if,
    knock_filter_program,
    ld_abs,
    pack,
    port_ranges,
    ret,
    run_filter,
    unpack,
    validate,
)
from guardian.parsers.packet import parse_knock

SRC4, DST4 = "192.0.2.2", "192.0.2.1"
SRC6, DST6 = "2001:db8::2", "2001:db8::1"


# ---------------------------------------------------------------------------------------------
# Packet builders (checksums are left zero: neither the filter nor the parser reads them).
def tcp(dport: int, flags: int = 0x02, sport: int = 40000) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 64240, 0, 0)


def udp(dport: int, payload: bytes = b"\x00", sport: int = 40000) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(segment: bytes, proto: int, frag: int = 0, options: bytes = b"", src: str = SRC4) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(segment),
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(DST4).packed,
    )
    return header + options + segment


def ipv6(segment: bytes, next_header: int, src: str = SRC6) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(segment),
        next_header,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(DST6).packed,
    )
    return header + segment


TCP_PORTS = {7000, 9000, *range(6992, 7009)}
UDP_PORTS = {8000}
FILTER = compile_knock_filter(TCP_PORTS, UDP_PORTS)


def accepted(packet: bytes, protocol: int | None = None) -> bool:
    verdict = run_filter(FILTER, packet, protocol)
    assert verdict in (0, SNAP_LEN)
    return verdict == SNAP_LEN


# ---------------------------------------------------------------------------------------------
# Assembler.
def test_labels_resolve_to_forward_offsets() -> None:
    program = assemble(
        [
            ld_abs(B, 0),
            jump_if(JEQ, 1, jt="one", jf="other"),
            goto("other"),
            Label("one"),
            ret(1),
            Label("other"),
            ret(2),
        ]
    )
    assert program[1] == Insn(bpf.JMP | JEQ, jt=1, jf=2, k=1)
    assert program[2] == Insn(bpf.JMP | bpf.JA, k=1)
    assert run_filter(program, b"\x01") == 1
    assert run_filter(program, b"\x02") == 2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ([goto("nowhere"), ret(0)], "unknown label"),
        ([Label("a"), Label("a"), ret(0)], "twice"),
        ([Label("back"), ld_abs(B, 0), jump_if(JEQ, 1, jt="back"), ret(0)], "backward"),
        ([jump_if(JEQ, 1, jt="far"), *[ret(0)] * 256, Label("far"), ret(1)], "max 255"),
        ([], "instructions"),
        ([ld_abs(B, 0)], "must end with a return"),
        ([ret(0)] * (bpf.BPF_MAXINSNS + 1), "instructions"),
        ([Insn(0xFFFF), ret(0)], "unknown opcode"),
        ([Insn(ST, k=16), ret(0)], "scratch memory"),
        ([Insn(ALU | DIV, k=0), ret(0)], "division"),
        ([Jump(bpf.JMP | JEQ, k=1), ret(0)], None),  # falls through both ways: fine
    ],
)
def test_assembler_refuses_what_the_kernel_refuses(
    source: list[bpf.Item], message: str | None
) -> None:
    if message is None:
        assert assemble(source)
        return
    with pytest.raises(ValueError, match=message):
        assemble(source)


def test_validate_refuses_jumps_past_the_end() -> None:
    with pytest.raises(ValueError, match="past the end"):
        validate([Insn(bpf.JMP | JEQ, jt=1), ret(0)])
    with pytest.raises(ValueError, match="past the end"):
        validate([Insn(bpf.JMP | bpf.JA, k=5), ret(0)])


def test_pack_is_struct_sock_filter_and_unpack_inverts_it() -> None:
    program = (Insn(0x15, 3, 4, 0x86DD), ret(SNAP_LEN))
    data = pack(program)
    assert data == struct.pack("=HBBI", 0x15, 3, 4, 0x86DD) + struct.pack("=HBBI", 6, 0, 0, 65535)
    assert unpack(data) == program
    with pytest.raises(ValueError, match="multiple of 8"):
        unpack(data[:-1])


# ---------------------------------------------------------------------------------------------
# Interpreter semantics.
def test_interpreter_alu_memory_registers_and_ret_a() -> None:
    program = [
        Insn(LD | W | LEN),  # A = 6
        Insn(ALU | ADD, k=10),  # 16
        Insn(ST, k=3),  # M[3] = 16
        Insn(MISC | TAX),  # X = 16
        Insn(LD | H | ABS, k=1),  # A = 0x0203
        Insn(ALU | AND | X),  # A = 0x0203 & 16 = 0
        Insn(LD | MEM, k=3),  # A = 16
        Insn(ALU | MOD, k=5),  # 1
        Insn(ALU | bpf.LSH, k=31),  # 0x80000000
        Insn(ALU | ADD, k=0x80000001),  # wraps to 1
        Insn(LDX | bpf.IMM, k=7),
        Insn(MISC | TXA),  # A = 7
        Insn(ALU | bpf.NEG),  # -7 mod 2**32
        Insn(bpf.JMP | JGT, jt=0, jf=1, k=0xFFFFFFF0),
        Insn(RET | RET_A),
        ret(0),
    ]
    assert run_filter(program, bytes(range(1, 7))) == 0xFFFFFFF9


def test_interpreter_out_of_bounds_and_division_by_zero_return_zero() -> None:
    assert run_filter([ld_abs(W, 3), ret(1)], b"\x00" * 7) == 1
    assert run_filter([ld_abs(W, 4), ret(1)], b"\x00" * 7) == 0
    assert run_filter([Insn(LDX | bpf.IMM, k=0), Insn(ALU | DIV | X), ret(1)], b"") == 0
    assert run_filter([Insn(LDX | B | bpf.MSH, k=0), ret(1)], b"") == 0
    assert (
        run_filter([Insn(LDX | B | bpf.MSH, k=0), Insn(MISC | TXA), Insn(RET | RET_A)], b"\x46")
        == 24
    )


def test_interpreter_ancillary_protocol_is_inferred_or_given() -> None:
    program = [bpf.ld_protocol(), Insn(RET | RET_A)]
    assert run_filter(program, b"\x45") == 0x0800
    assert run_filter(program, b"\x60") == 0x86DD
    assert run_filter(program, b"\x45", protocol=0x0806) == 0x0806
    assert run_filter(program, b"") == 0


# ---------------------------------------------------------------------------------------------
# The knock filter.
def test_port_ranges_merge_contiguous_ports() -> None:
    assert port_ranges([9000, 7001, 7000, 7002, 7000]) == ((7000, 7002), (9000, 9000))
    assert port_ranges([]) == ()
    assert port_ranges([1, 65535]) == ((1, 1), (65535, 65535))
    for bad in (0, 65536, -1):
        with pytest.raises(ValueError, match="out of range"):
            port_ranges([bad])


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (ipv4(tcp(7000), 6), True),
        (ipv4(tcp(9000, flags=0x12), 6), True),  # flags are the engine's business
        (ipv4(udp(8000), 17), True),
        (ipv4(udp(7000), 17), False),  # a TCP knock port, over UDP
        (ipv4(tcp(8000), 6), False),  # a UDP knock port, over TCP
        (ipv4(tcp(6991), 6), False),  # range edges: 6992..7008
        (ipv4(tcp(6992), 6), True),
        (ipv4(tcp(7008), 6), True),
        (ipv4(tcp(7009), 6), False),
        (ipv4(tcp(8999), 6), False),
        (ipv4(tcp(9001), 6), False),
        (ipv4(tcp(22), 6), False),
        (ipv4(tcp(40000, sport=7000), 6), False),  # the knock port as source is no knock
        (ipv4(tcp(7000), 6, frag=0x2000), False),  # MF
        (ipv4(tcp(7000), 6, frag=0x0001), False),  # offset
        (ipv4(tcp(7000), 6, frag=0x4000), True),  # DF is fine
        (ipv4(tcp(7000), 6, options=b"\x01\x01\x01\x00"), True),  # IHL 6: port read after options
        (ipv4(tcp(22), 6, options=b"\x01\x01\x1b\x58"), False),  # 7000 in the options: not a port
        (ipv4(tcp(7000), 1), False),  # ICMP
        (ipv6(tcp(7000), 6), True),
        (ipv6(udp(8000), 17), True),
        (ipv6(udp(7000), 17), False),
        (ipv6(tcp(7009), 6), False),
        (ipv6(b"\x06\x00" + b"\x00" * 6 + tcp(7000), 0), False),  # hop-by-hop, then TCP
        (ipv6(tcp(7000), 44), False),  # fragment header
        (ipv6(tcp(7000), 58), False),  # ICMPv6
        (b"", False),
    ],
)
def test_knock_filter_verdicts(packet: bytes, expected: bool) -> None:
    assert accepted(packet) is expected


def test_knock_filter_checks_header_fields_against_the_ethertype() -> None:
    packet = ipv4(tcp(7000), 6)
    assert accepted(packet, protocol=0x0800)
    assert not accepted(packet, protocol=0x0806)  # ARP carrying IPv4-looking bytes
    assert not accepted(packet, protocol=0x86DD)  # claims IPv6, reads version 4
    assert not accepted(ipv6(tcp(7000), 6), protocol=0x0800)
    assert not accepted(b"\x44" + packet[1:])  # IHL 4 would put the "ports" inside the header


@pytest.mark.parametrize("packet", [ipv4(tcp(7000), 6), ipv4(udp(8000), 17), ipv6(tcp(9000), 6)])
def test_knock_filter_needs_the_port_bytes(packet: bytes) -> None:
    # The filter reads up to the destination port (header + 4 bytes); shorter captures drop.
    header = 20 if packet[0] >> 4 == 4 else 40
    for length in range(len(packet) + 1):
        assert accepted(packet[:length]) is (length >= header + 4), length


def test_empty_port_sets_accept_nothing() -> None:
    empty = compile_knock_filter([], [])
    assert run_filter(empty, ipv4(tcp(7000), 6)) == 0
    assert run_filter(empty, ipv6(udp(8000), 17)) == 0


def test_decoy_bands_keep_the_program_small() -> None:
    # Three doors of three ports, each with a band of 8 decoys on each side: 9 ranges per proto.
    ports = {p + d for p in (7000, 8000, 9000, 17000, 18000, 19000, 27000, 28000, 29000)
             for d in range(-8, 9)}  # fmt: skip
    program = knock_filter_program(ports, ports)
    assert len(program) < 100
    assert run_filter(program, ipv4(udp(18008), 17)) == SNAP_LEN
    assert run_filter(program, ipv4(udp(18009), 17)) == 0


def test_too_many_ranges_is_a_clear_error() -> None:
    scattered = range(1, 65536, 2)  # 32768 single-port ranges
    with pytest.raises(ValueError, match="knock filter too large"):
        compile_knock_filter(scattered, [])
    largest = range(1, 2 * 1300, 2)  # 1300 single ports = 2600 instructions + header: fits
    assert len(compile_knock_filter(largest, [])) // 8 <= bpf.BPF_MAXINSNS


def test_port_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        compile_knock_filter([70000], [])


# ---------------------------------------------------------------------------------------------
# Fuzz: the filter passes everything the parser calls a knock on a configured port (the kernel
# filter must never hide a real knock), on random and mutated packets. Seeded and bounded.
def _mutations(rng: random.Random) -> bytes:
    base = rng.choice(
        [
            ipv4(tcp(rng.choice([7000, 6992, 7008, 7009, 9000])), 6),
            ipv4(udp(rng.choice([8000, 8001, 7000])), 17),
            ipv6(tcp(rng.choice([7000, 9000, 22])), 6),
            ipv6(udp(rng.choice([8000, 7999])), 17),
        ]
    )
    packet = bytearray(base)
    for _ in range(rng.randrange(4)):
        packet[rng.randrange(len(packet))] = rng.randrange(256)
    if rng.random() < 0.3:
        del packet[rng.randrange(len(packet)) :]  # a truncated capture
    return bytes(packet)


def test_filter_never_hides_what_the_parser_accepts() -> None:
    rng = random.Random(20240601)
    knocks = 0
    for _ in range(3000):
        packet = _mutations(rng) if rng.random() < 0.9 else rng.randbytes(rng.randrange(80))
        event = parse_knock(packet)
        is_knock = event is not None and event.port in (
            TCP_PORTS if event.proto == "tcp" else UDP_PORTS
        )
        knocks += is_knock
        if is_knock:
            assert accepted(packet), packet.hex()
    assert knocks > 100  # the fuzz really exercised accepted knocks
