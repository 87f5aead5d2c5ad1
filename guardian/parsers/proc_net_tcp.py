# /proc/net/tcp and /proc/net/tcp6 text → socket rows → the live connections to guarded ports.
# Pure: text in, data out. The socket-table watcher reads the files; tests feed samples.
#
# The format (net/ipv4/tcp_ipv4.c get_tcp4_sock, net/ipv6/tcp_ipv6.c get_tcp6_sock), one header
# line, then per socket:
#   "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
#   "   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 12345 1 ..."
# An IPv4 address is its 32-bit network-order value printed with %08X in the host's byte order (so
# reversed on little-endian hosts); an IPv6 address is four such words. Ports are plain %04X.
# State 01 is ESTABLISHED, 0A LISTEN, 08 CLOSE_WAIT (include/net/tcp_states.h).
# A dual-stack listener's IPv4 peers show up in tcp6 as v4-mapped (::ffff:a.b.c.d): normalised here,
# so a source has one identity whichever file and whichever watcher reported it.
from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from guardian.addresses import IPAddress, normalize
from guardian.events import ConnectionId

ByteOrder: TypeAlias = Literal["little", "big"]

TCP_ESTABLISHED = 0x01
TCP_CLOSE_WAIT = 0x08
TCP_LISTEN = 0x0A
_STATE_ESTABLISHED = "01"


@dataclass(frozen=True, slots=True)
class SocketRow:
    """One TCP socket as the kernel lists it (addresses normalised)."""

    local: IPAddress
    local_port: int
    remote: IPAddress
    remote_port: int
    state: int


@dataclass(frozen=True, slots=True)
class SocketTable:
    """The rows of one file that were kept, and how many lines could not be read."""

    rows: tuple[SocketRow, ...]
    malformed: int


@dataclass(frozen=True, slots=True)
class Listing:
    """Live connections to guarded ports found in one file (+ the count of unreadable lines)."""

    connections: frozenset[ConnectionId]
    malformed: int


def parse_table(
    text: str,
    *,
    local_ports: Iterable[int] | None = None,
    established_only: bool = False,
    byteorder: ByteOrder = sys.byteorder,
) -> SocketTable:
    """Parse a whole /proc/net/tcp or tcp6 text (the header line is skipped wherever it is).

    With `local_ports` and/or `established_only`, rows are filtered before their addresses are
    decoded (the cheap path: a busy host lists thousands of sockets, a handful are sessions).
    Lines that do not parse are skipped and counted, never raised."""
    ports = None if local_ports is None else frozenset(local_ports)
    rows: list[SocketRow] = []
    malformed = 0
    for line in text.splitlines():
        fields = line.split(None, 4)
        if len(fields) < 4:
            if line.strip():
                malformed += 1
            continue
        slot, local, remote, state_hex = fields[0], fields[1], fields[2], fields[3]
        if slot == "sl":
            continue  # the header
        if established_only and state_hex != _STATE_ESTABLISHED:
            if not _is_hex_state(state_hex):
                malformed += 1
            continue
        row = _parse_row(local, remote, state_hex, ports, byteorder)
        if row is None:
            malformed += 1
        elif row is not _FILTERED:
            rows.append(row)
    return SocketTable(tuple(rows), malformed)


def established_connections(
    text: str, guarded_ports: Iterable[int], *, byteorder: ByteOrder = sys.byteorder
) -> Listing:
    """The ESTABLISHED sockets whose local port is guarded, as (peer, peer port, local port)."""
    table = parse_table(text, local_ports=guarded_ports, established_only=True, byteorder=byteorder)
    return Listing(
        frozenset((r.remote, r.remote_port, r.local_port) for r in table.rows), table.malformed
    )


# A sentinel for "well-formed but filtered out" (None means malformed).
_FILTERED = SocketRow(ipaddress.IPv4Address(0), 0, ipaddress.IPv4Address(0), 0, 0)


def _parse_row(
    local: str,
    remote: str,
    state_hex: str,
    ports: frozenset[int] | None,
    byteorder: ByteOrder,
) -> SocketRow | None:
    local_addr, _, local_port_hex = local.partition(":")
    remote_addr, _, remote_port_hex = remote.partition(":")
    try:
        local_port = int(local_port_hex, 16)
        remote_port = int(remote_port_hex, 16)
        state = int(state_hex, 16)
    except ValueError:
        return None
    if len(local_port_hex) != 4 or len(remote_port_hex) != 4 or len(state_hex) != 2:
        return None
    if not _plausible(local_addr, remote_addr):
        return None
    if ports is not None and local_port not in ports:
        return _FILTERED
    try:
        return SocketRow(
            _address(local_addr, byteorder),
            local_port,
            _address(remote_addr, byteorder),
            remote_port,
            state,
        )
    except ValueError:
        return None


def _plausible(local_addr: str, remote_addr: str) -> bool:
    return len(local_addr) == len(remote_addr) and len(local_addr) in (8, 32)


def _is_hex_state(state_hex: str) -> bool:
    try:
        int(state_hex, 16)
    except ValueError:
        return False
    return len(state_hex) == 2


def _address(text: str, byteorder: ByteOrder) -> IPAddress:
    """Decode one address field: 8 hex digits (IPv4) or 32 (IPv6), words in host byte order."""
    raw = bytes.fromhex(text)  # ValueError on non-hex or odd length
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1] if byteorder == "little" else raw)
    if len(raw) == 16:
        if byteorder == "little":
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        return normalize(ipaddress.IPv6Address(raw))
    raise ValueError(f"address field of {len(raw)} bytes")


def encode_address(address: IPAddress, byteorder: ByteOrder = sys.byteorder) -> str:
    """The inverse of the kernel's formatting (tests build sample tables with it)."""
    raw = address.packed
    if byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return raw.hex().upper()
