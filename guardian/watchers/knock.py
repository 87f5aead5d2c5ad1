# The knock watcher: one AF_PACKET socket, a kernel BPF filter built from the knock, decoy and SPA
# ports, and a non-blocking drain into KnockSeen events (and SpaSeen, with the datagram's payload,
# for UDP to an SPA port). It decides nothing about doors or SPA keys.
#
# Why this shape (spec/platform.md "Knock capture"):
# - AF_PACKET taps packets before nftables (ingress and input), so knocks the firewall drops are
#   still seen; SOCK_DGRAM puts offset 0 at the IP header on every link type.
# - The socket is bound to ifindex 0 = every interface, present and future. Interfaces going down,
#   up, away or appearing never touch it (knockd and fwknopd die there: knock#69, fwknop#161).
#   Restricting to configured interfaces happens here in userspace, by the name recvfrom reports.
# - No race with the filter: the socket is created with protocol 0, which receives nothing until
#   it is bound; the filter is attached first and only then is it bound with ETH_P_ALL. Python's
#   bind() insists on an interface name, so the ifindex-0 bind goes through libc via ctypes. Ports
#   are still checked in userspace, so the kernel filter is an optimisation, never the only guard.
# - PACKET_IGNORE_OUTGOING: our own outgoing packets (a knock client on this host) are not taps.
# - A large receive buffer absorbs bursts; PACKET_STATISTICS counts what the kernel still dropped.
# - SPA (spec/fwknop-spa.md) rides the same socket: nothing listens on the SPA port, so it answers
#   a scanner exactly as any closed UDP port does (ICMP port unreachable), and nothing is sent back.
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Iterable

from guardian.bpf import compile_knock_filter
from guardian.events import KnockSeen, SpaSeen
from guardian.parsers.packet import parse_datagram, parse_knock
from guardian.watchers import WatcherError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST = 0, 1, 2
INCOMING_TYPES = frozenset({PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST})
RCVBUF_BYTES = 8 << 20  # ~10k small packets: rides out a burst while the loop is busy elsewhere
MAX_PACKET = 0xFFFF

_TPACKET_STATS = struct.Struct("=II")  # struct tpacket_stats { tp_packets; tp_drops; }
# struct sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen, addr[8]
_SOCKADDR_LL = struct.Struct("=H2siHBB8s")

STAT_KEYS = (
    "received",  # packets read from the socket
    "parsed",  # became KnockSeen events
    "spa",  # became SpaSeen events (UDP datagrams to an SPA port)
    "malformed",  # not a complete IPv4/IPv6 TCP/UDP packet
    "ignored_port",  # parsed, but not to a port in the sets (e.g. queued under an older filter)
    "ignored_interface",  # arrived on an interface outside the configured ones
    "ignored_type",  # not addressed to this host (outgoing, other host)
    "kernel_packets",  # passed the filter and were queued (PACKET_STATISTICS tp_packets)
    "kernel_drops",  # passed the filter but the receive buffer was full
)


class KnockWatcher:
    """Knocks on the given TCP/UDP ports, from every interface or only the named ones.

    Ports are checked when constructed: ValueError for a port outside 1..65535 or port sets too
    large for one BPF program. OS errors surface as WatcherError."""

    def __init__(
        self,
        tcp_ports: Iterable[int],
        udp_ports: Iterable[int],
        interfaces: tuple[str, ...] = (),
        spa_ports: Iterable[int] = (),
    ) -> None:
        self._spa = frozenset(spa_ports)
        self._tcp, self._udp, self._filter = _prepare(tcp_ports, udp_ports, self._spa)
        self._interfaces = frozenset(interfaces)
        self._sock: socket.socket | None = None
        self._counts = dict.fromkeys(STAT_KEYS, 0)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create the socket, attach the filter, bind to all interfaces. Needs CAP_NET_RAW."""
        if self._sock is not None:
            raise WatcherError("knock watcher: already open")
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        except PermissionError as error:
            raise WatcherError(
                f"knock watcher: capturing packets needs CAP_NET_RAW: {error}"
            ) from error
        except OSError as error:
            raise WatcherError(
                f"knock watcher: cannot create an AF_PACKET socket: {error}"
            ) from error
        try:
            _attach_filter(sock, self._filter)
            _ignore_outgoing(sock)
            _grow_receive_buffer(sock)
            sock.setblocking(False)
            _bind_all_interfaces(sock)
        except OSError as error:
            sock.close()
            raise WatcherError(
                f"knock watcher: cannot set up the capture socket: {error}"
            ) from error
        self._sock = sock

    def close(self) -> None:
        """Close the socket (the counters survive, so stats() still answers). Idempotent."""
        if self._sock is None:
            return
        try:
            self._collect_kernel_stats()
        except WatcherError:
            pass  # the last counters are lost, the socket must still close
        finally:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> KnockWatcher:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The fd to wait on for readability."""
        return self._open_socket().fileno()

    # -- reading -----------------------------------------------------------------------------
    def read_events(self, max_packets: int = 512) -> list[KnockSeen | SpaSeen]:
        """Drain up to max_packets queued packets without blocking; return the knocks and SPA
        datagrams among them.

        Bounded so a flood cannot starve the rest of the event loop: call again when the fd is
        still readable."""
        sock = self._open_socket()
        events: list[KnockSeen | SpaSeen] = []
        for _ in range(max_packets):
            try:
                packet, address = sock.recvfrom(MAX_PACKET)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno == errno.ENETDOWN:
                    continue  # only a socket bound to one interface gets this; never fatal here
                raise WatcherError(f"knock watcher: reading the capture socket: {error}") from error
            event = self._accept(packet, address)
            if event is not None:
                events.append(event)
        return events

    def _accept(self, packet: bytes, address: tuple[object, ...]) -> KnockSeen | SpaSeen | None:
        counts = self._counts
        counts["received"] += 1
        interface, pkttype = str(address[0]), address[2]
        if pkttype not in INCOMING_TYPES:
            counts["ignored_type"] += 1
            return None
        if self._interfaces and interface not in self._interfaces:
            counts["ignored_interface"] += 1
            return None
        event = parse_knock(packet, interface)
        if event is None:
            counts["malformed"] += 1
            return None
        if event.proto == "udp" and event.port in self._spa:
            # Only SPA datagrams are parsed a second time, for their payload: knocks stay one parse.
            datagram = parse_datagram(packet)
            if datagram is None:  # cannot be: parse_knock accepted the same UDP packet
                counts["malformed"] += 1
                return None
            counts["spa"] += 1
            return SpaSeen(datagram[0], datagram[1], datagram[2], interface)
        if event.port not in (self._tcp if event.proto == "tcp" else self._udp):
            counts["ignored_port"] += 1
            return None
        counts["parsed"] += 1
        return event

    # -- reconfiguration and counters ----------------------------------------------------------
    def set_ports(
        self, tcp_ports: Iterable[int], udp_ports: Iterable[int], spa_ports: Iterable[int] = ()
    ) -> None:
        """Swap the port sets (config reload). The kernel replaces the filter atomically; packets
        queued under the old one are checked against the new sets here. ValueError as __init__."""
        spa = frozenset(spa_ports)
        tcp, udp, program = _prepare(tcp_ports, udp_ports, spa)
        if self._sock is not None:
            try:
                _attach_filter(self._sock, program)
            except OSError as error:
                raise WatcherError(f"knock watcher: replacing the filter: {error}") from error
        self._tcp, self._udp, self._filter, self._spa = tcp, udp, program, spa

    def stats(self) -> dict[str, int]:
        """Counters since construction (keys: STAT_KEYS). Reading the kernel's counters resets
        them, so they are accumulated here."""
        if self._sock is not None:
            self._collect_kernel_stats()
        return dict(self._counts)

    def _collect_kernel_stats(self) -> None:
        assert self._sock is not None
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        except OSError as error:
            raise WatcherError(f"knock watcher: reading PACKET_STATISTICS: {error}") from error
        packets, drops = _TPACKET_STATS.unpack(raw)
        self._counts["kernel_packets"] += packets  # the kernel already includes drops here
        self._counts["kernel_drops"] += drops

    def _open_socket(self) -> socket.socket:
        if self._sock is None:
            raise WatcherError("knock watcher: not open")
        return self._sock


def _prepare(
    tcp_ports: Iterable[int], udp_ports: Iterable[int], spa_ports: frozenset[int]
) -> tuple[frozenset[int], frozenset[int], bytes]:
    tcp, udp = frozenset(tcp_ports), frozenset(udp_ports)
    return tcp, udp, compile_knock_filter(tcp, udp | spa_ports)


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel copies the
    # instructions during setsockopt, so the buffer only has to outlive this call.
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _ignore_outgoing(sock: socket.socket) -> None:
    # Linux >= 4.20. Older kernels still queue our own outgoing packets; _accept drops them by
    # their packet type, so only the cost is lost, not the correctness.
    try:
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError as error:
        if error.errno != errno.ENOPROTOOPT:
            raise


def _grow_receive_buffer(sock: socket.socket) -> None:
    # SO_RCVBUFFORCE passes net.core.rmem_max (root); without the capability fall back to the
    # capped SO_RCVBUF, which is still better than the default.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)


def _bind_all_interfaces(sock: socket.socket) -> None:
    address = _SOCKADDR_LL.pack(socket.AF_PACKET, ETH_P_ALL.to_bytes(2, "big"), 0, 0, 0, 0, b"")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.bind(sock.fileno(), address, len(address)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"bind to all interfaces: {os.strerror(code)}")
