# Classic BPF, pure: a tiny assembler (labels resolved to jump offsets, checked like the kernel's
# checker would), the knock filter compiled from the configured ports, and an interpreter that runs
# a program on a packet exactly as the kernel would — so the filter is proven without a kernel and
# can be fuzzed. No sockets here: guardian/watchers/knock.py attaches the bytes (SO_ATTACH_FILTER).
#
# The knock filter runs on an AF_PACKET SOCK_DGRAM socket, so offset 0 is the first byte of the IP
# header on every link type. It accepts (returns SNAP_LEN) only:
#   - IPv4 (ethertype 0x0800, version 4, IHL >= 5), not a fragment (MF clear, offset 0),
#     TCP or UDP, destination port in the TCP resp. UDP set;
#   - IPv6 (ethertype 0x86DD, version 6) whose next header is TCP or UDP directly (no extension
#     headers: a knock never needs them), destination port in the set.
# Everything else returns 0, so non-knock floods never wake userspace. Port sets are compiled into
# contiguous ranges (a decoy band around each knock port makes ranges), three instructions each.
from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

# ---------------------------------------------------------------------------------------------
# Opcode fields (linux/filter.h, linux/bpf_common.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0,
)  # fmt: skip
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08  # operand source: the constant k, or the X register
RET_A = 0x10  # BPF_RET | BPF_A (BPF_A shares the value of BPF_X's slot in the rval field)
TAX, TXA = 0x00, 0x80

BPF_MAXINSNS = 4096  # the kernel refuses longer classic programs
BPF_MEMWORDS = 16  # scratch memory M[0..15]
SKF_AD_OFF = -0x1000  # ancillary data: loads at k = SKF_AD_OFF + n read skb fields, not bytes
SKF_AD_PROTOCOL = 0  # skb->protocol, the ethertype (host order once loaded)
SNAP_LEN = 0xFFFF  # "accept the whole packet"

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17

_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
_U32 = 0xFFFFFFFF
_ANC_PROTOCOL_K = (SKF_AD_OFF + SKF_AD_PROTOCOL) & _U32


@dataclass(frozen=True, slots=True)
class Insn:
    """One resolved instruction, field for field a struct sock_filter."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0


@dataclass(frozen=True, slots=True)
class Label:
    """A position in the source; jumps name it."""

    name: str


@dataclass(frozen=True, slots=True)
class Jump:
    """A jump whose targets are labels. For a conditional jump, jt/jf name where to go when the
    test is true/false; None means the next instruction. For JA, `to` names the target (classic
    BPF jumps only forward: a loop cannot be written, so every program terminates)."""

    code: int
    k: int = 0
    jt: str | None = None
    jf: str | None = None
    to: str | None = None


Item: TypeAlias = Insn | Label | Jump


# ---------------------------------------------------------------------------------------------
# Mnemonics: small constructors so programs read like `bpf_asm` source.
def ld_abs(size: int, offset: int) -> Insn:
    """A = packet[offset] (size W, H or B; big-endian)."""
    return Insn(LD | size | ABS, k=offset & _U32)


def ld_ind(size: int, offset: int) -> Insn:
    """A = packet[X + offset]."""
    return Insn(LD | size | IND, k=offset & _U32)


def ld_protocol() -> Insn:
    """A = the ethertype the packet arrived with (an ancillary load, not a packet byte)."""
    return Insn(LD | H | ABS, k=_ANC_PROTOCOL_K)


def ldx_ip_header_length(offset: int = 0) -> Insn:
    """X = 4 * (packet[offset] & 0xf): the IPv4 header length from IHL."""
    return Insn(LDX | B | MSH, k=offset)


def alu_k(op: int, k: int) -> Insn:
    return Insn(ALU | op | K, k=k & _U32)


def ret(k: int) -> Insn:
    return Insn(RET | K, k=k & _U32)


def jump_if(op: int, k: int, jt: str | None = None, jf: str | None = None) -> Jump:
    """if A <op> k goto jt else goto jf (op is JEQ, JGT, JGE or JSET)."""
    return Jump(JMP | op | K, k=k & _U32, jt=jt, jf=jf)


def goto(label: str) -> Jump:
    return Jump(JMP | JA, to=label)


# ---------------------------------------------------------------------------------------------
# Assembler.
def assemble(source: Iterable[Item]) -> tuple[Insn, ...]:
    """Resolve labels to forward offsets and check the result like the kernel does.

    Raises ValueError on an unknown or duplicate label, a backward jump, a conditional offset that
    does not fit in 8 bits, or anything validate() refuses."""
    items = list(source)
    positions: dict[str, int] = {}
    index = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in positions:
                raise ValueError(f"BPF label defined twice: {item.name!r}")
            positions[item.name] = index
        else:
            index += 1

    def offset(at: int, label: str | None, limit: int) -> int:
        if label is None:
            return 0
        if label not in positions:
            raise ValueError(f"BPF jump to unknown label {label!r}")
        distance = positions[label] - (at + 1)
        if distance < 0:
            raise ValueError(
                f"BPF jump to {label!r} goes backward (classic BPF only jumps forward)"
            )
        if distance > limit:
            raise ValueError(f"BPF jump to {label!r} is {distance} instructions away (max {limit})")
        return distance

    program: list[Insn] = []
    for item in items:
        if isinstance(item, Label):
            continue
        at = len(program)
        if isinstance(item, Jump):
            if item.code == JMP | JA:
                program.append(Insn(item.code, k=offset(at, item.to, _U32)))
            else:
                program.append(
                    Insn(item.code, offset(at, item.jt, 0xFF), offset(at, item.jf, 0xFF), item.k)
                )
        else:
            program.append(item)
    result = tuple(program)
    validate(result)
    return result


_LOADS = {LD | s | m for s in (W, H, B) for m in (ABS, IND)} | {LD | W | LEN, LD | IMM, LD | MEM}
_LOADS_X = {LDX | IMM, LDX | MEM, LDX | W | LEN, LDX | B | MSH}
_ALU = {
    ALU | op | src for op in (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR) for src in (K, X)
}
_JUMPS = {JMP | op | src for op in (JEQ, JGT, JGE, JSET) for src in (K, X)}
_KNOWN = (
    _LOADS | _LOADS_X | _ALU | _JUMPS | {ALU | NEG, JMP | JA, ST, STX, RET | K, RET | RET_A}
) | {MISC | TAX, MISC | TXA}


def validate(program: Sequence[Insn]) -> None:
    """The checks of the kernel's classic-BPF checker that matter here; raises ValueError."""
    if not 0 < len(program) <= BPF_MAXINSNS:
        raise ValueError(f"BPF program has {len(program)} instructions (allowed 1..{BPF_MAXINSNS})")
    for pc, insn in enumerate(program):
        if insn.code not in _KNOWN:
            raise ValueError(f"BPF instruction {pc}: unknown opcode {insn.code:#06x}")
        if not (0 <= insn.jt <= 0xFF and 0 <= insn.jf <= 0xFF and 0 <= insn.k <= _U32):
            raise ValueError(f"BPF instruction {pc}: field out of range: {insn}")
        if insn.code in (LD | MEM, LDX | MEM, ST, STX) and insn.k >= BPF_MEMWORDS:
            raise ValueError(f"BPF instruction {pc}: scratch memory index {insn.k} out of range")
        if insn.code in (ALU | DIV | K, ALU | MOD | K) and insn.k == 0:
            raise ValueError(f"BPF instruction {pc}: division by the constant zero")
        if insn.code == JMP | JA:
            if insn.k >= len(program) - pc - 1:
                raise ValueError(f"BPF instruction {pc}: jump past the end")
        elif insn.code in _JUMPS and max(insn.jt, insn.jf) >= len(program) - pc - 1:
            raise ValueError(f"BPF instruction {pc}: jump past the end")
    if program[-1].code not in (RET | K, RET | RET_A):
        raise ValueError("BPF program must end with a return")


def pack(program: Sequence[Insn]) -> bytes:
    """Program -> the bytes of a struct sock_filter array (native byte order: the kernel's)."""
    return b"".join(_SOCK_FILTER.pack(i.code, i.jt, i.jf, i.k) for i in program)


def unpack(data: bytes) -> tuple[Insn, ...]:
    """The inverse of pack(); raises ValueError when the length is not a multiple of 8."""
    if len(data) % _SOCK_FILTER.size:
        raise ValueError(f"BPF program bytes: length {len(data)} is not a multiple of 8")
    return tuple(Insn(*fields) for fields in _SOCK_FILTER.iter_unpack(data))


# ---------------------------------------------------------------------------------------------
# The knock filter.
def port_ranges(ports: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged, inclusive ranges: {7000, 7001, 7002, 9000} -> ((7000, 7002), (9000, 9000)).

    Raises ValueError for a port outside 1..65535."""
    ranges: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if not 1 <= port <= 65535:
            raise ValueError(f"port out of range 1..65535: {port}")
        if ranges and ranges[-1][1] + 1 == port:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return tuple(ranges)


def _port_block(name: str, ranges: tuple[tuple[int, int], ...]) -> list[Item]:
    """A holds the destination port: accept when it lies in one of the ranges.

    Each range gets its own local `ret` so every conditional jump is short (1-2 instructions) and
    the block can grow to the kernel's program limit without an 8-bit offset overflowing."""
    block: list[Item] = [Label(name)]
    for n, (low, high) in enumerate(ranges):
        miss = f"{name}.{n}.miss"
        if low == high:
            block += [jump_if(JEQ, low, jf=miss), ret(SNAP_LEN), Label(miss)]
        else:
            block += [
                jump_if(JGE, low, jf=miss),
                jump_if(JGT, high, jt=miss),
                ret(SNAP_LEN),
                Label(miss),
            ]
    block.append(ret(0))
    return block


def knock_filter_program(tcp_ports: Iterable[int], udp_ports: Iterable[int]) -> tuple[Insn, ...]:
    """The knock filter as instructions (see the module header for what it accepts)."""
    tcp, udp = port_ranges(tcp_ports), port_ranges(udp_ports)
    source: list[Item] = [
        ld_protocol(),
        jump_if(JEQ, ETH_P_IP, jf="not4"),
        # IPv4: version and IHL >= 5 from byte 0 (a shorter header would put "ports" inside it).
        ld_abs(B, 0),
        alu_k(AND, 0xF0),
        jump_if(JEQ, 0x40, jf="reject"),
        ld_abs(B, 0),
        alu_k(AND, 0x0F),
        jump_if(JGE, 5, jf="reject"),
        # Fragments: MF set or a non-zero offset. A non-first fragment has no ports to read.
        ld_abs(H, 6),
        jump_if(JSET, 0x3FFF, jt="reject"),
        ldx_ip_header_length(0),
        ld_abs(B, 9),
        jump_if(JEQ, IPPROTO_TCP, jf="v4.not_tcp"),
        ld_ind(H, 2),  # destination port: bytes 2-3 of TCP and UDP alike
        goto("tcp"),
        Label("v4.not_tcp"),
        jump_if(JEQ, IPPROTO_UDP, jf="reject"),
        ld_ind(H, 2),
        goto("udp"),
        Label("not4"),
        jump_if(JEQ, ETH_P_IPV6, jf="reject"),
        ld_abs(B, 0),
        alu_k(AND, 0xF0),
        jump_if(JEQ, 0x60, jf="reject"),
        ld_abs(B, 6),  # next header, directly TCP or UDP
        jump_if(JEQ, IPPROTO_TCP, jf="v6.not_tcp"),
        ld_abs(H, 42),  # 40-byte fixed header + 2
        goto("tcp"),
        Label("v6.not_tcp"),
        jump_if(JEQ, IPPROTO_UDP, jf="reject"),
        ld_abs(H, 42),
        goto("udp"),
        Label("reject"),
        ret(0),
        *_port_block("tcp", tcp),
        *_port_block("udp", udp),
    ]
    size = sum(not isinstance(item, Label) for item in source)
    if size > BPF_MAXINSNS:
        raise ValueError(
            f"knock filter too large: {len(tcp)} TCP and {len(udp)} UDP port ranges need "
            f"{size} BPF instructions, the kernel takes at most {BPF_MAXINSNS}: "
            "use fewer or contiguous ports"
        )
    return assemble(source)


def compile_knock_filter(tcp_ports: Iterable[int], udp_ports: Iterable[int]) -> bytes:
    """The knock filter as the bytes SO_ATTACH_FILTER takes (a struct sock_filter array).

    Raises ValueError for a port outside 1..65535 or when the port sets need more than
    BPF_MAXINSNS instructions."""
    return pack(knock_filter_program(tcp_ports, udp_ports))


# ---------------------------------------------------------------------------------------------
# Interpreter.
def _load(packet: bytes, offset: int, size: int) -> int | None:
    """Big-endian load, or None when out of bounds (the kernel then returns 0 from the filter)."""
    width = {W: 4, H: 2, B: 1}[size]
    if offset < 0 or offset + width > len(packet):
        return None
    return int.from_bytes(packet[offset : offset + width], "big")


def _infer_protocol(packet: bytes) -> int:
    version = packet[0] >> 4 if packet else 0
    return {4: ETH_P_IP, 6: ETH_P_IPV6}.get(version, 0)


def run_filter(program: bytes | Sequence[Insn], packet: bytes, protocol: int | None = None) -> int:
    """Run a classic BPF program on a packet and return what the kernel would (0 = drop).

    protocol is the ethertype the ancillary load sees (skb->protocol); None guesses it from the IP
    version nibble, as it would be for an IP packet on any real link. Out-of-bounds loads and a
    division by zero end the program with 0, as in the kernel. Raises ValueError for a program the
    kernel would refuse. Terminates always: jumps go forward only."""
    insns = unpack(program) if isinstance(program, bytes | bytearray) else tuple(program)
    validate(insns)
    ethertype = _infer_protocol(packet) if protocol is None else protocol
    a = x = 0
    memory = [0] * BPF_MEMWORDS
    pc = 0
    while True:
        insn = insns[pc]
        code, k = insn.code, insn.k
        cls = code & 0x07
        pc += 1
        if cls == RET:
            return a if code == RET | RET_A else k
        if cls == LD:
            mode, size = code & 0xE0, code & 0x18
            if mode == ABS and k == _ANC_PROTOCOL_K:
                a = ethertype
            elif mode in (ABS, IND):
                offset = k if mode == ABS else (x + k) & _U32
                value = _load(packet, offset, size)
                if value is None:
                    return 0
                a = value
            elif mode == LEN:
                a = len(packet)
            elif mode == IMM:
                a = k
            else:  # MEM
                a = memory[k]
        elif cls == LDX:
            mode = code & 0xE0
            if mode == MSH:
                value = _load(packet, k, B)
                if value is None:
                    return 0
                x = 4 * (value & 0x0F)
            elif mode == LEN:
                x = len(packet)
            elif mode == IMM:
                x = k
            else:  # MEM
                x = memory[k]
        elif cls == ST:
            memory[k] = a
        elif cls == STX:
            memory[k] = x
        elif cls == ALU:
            result = _alu(code & 0xF0, a, x if code & X else k)
            if result is None:
                return 0
            a = result
        elif cls == JMP:
            op = code & 0xF0
            if op == JA:
                pc += k
            else:
                pc += insn.jt if _test(op, a, x if code & X else k) else insn.jf
        else:  # MISC
            if code == MISC | TAX:
                x = a
            else:
                a = x


def _alu(op: int, a: int, operand: int) -> int | None:
    if op in (DIV, MOD) and operand == 0:
        return None
    if op == NEG:
        return -a & _U32
    if op == LSH:
        return (a << operand) & _U32 if operand < 32 else 0
    if op == RSH:
        return a >> operand
    ops = {
        ADD: lambda: a + operand,
        SUB: lambda: a - operand,
        MUL: lambda: a * operand,
        DIV: lambda: a // operand,
        MOD: lambda: a % operand,
        OR: lambda: a | operand,
        AND: lambda: a & operand,
        XOR: lambda: a ^ operand,
    }
    return ops[op]() & _U32


def _test(op: int, a: int, operand: int) -> bool:
    if op == JEQ:
        return a == operand
    if op == JGT:
        return a > operand
    if op == JGE:
        return a >= operand
    return bool(a & operand)  # JSET
