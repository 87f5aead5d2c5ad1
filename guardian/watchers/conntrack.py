# The conntrack watcher: TCP connections to guarded ports, opened and closed, from the kernel's
# connection tracking — the primary session signal (the socket table is the fallback). One
# NETLINK_NETFILTER socket subscribed to conntrack events gives the event loop a plain fd; a
# separate short-lived socket dumps the table at start-up and whenever events were lost.
#
# Why this shape (spec/platform.md "Conntrack"; each point checked in the lab test):
# - A raw netlink socket bound to groups NEW|UPDATE|DESTROY (= 7): pyroute2's sync Conntrack
#   cannot subscribe, and its decoder is ~10x slower than guardian.parsers.conntrack.
# - nf_conntrack_events must be 1 (per namespace): with the default 2, connections created while
#   nobody listened never produce events, not even their close. Set at open(); failing → the
#   daemon falls back to the socket table. (Connections created before that still produce none:
#   dump() lists them, and the socket-table reconciliation is what notices their end.)
# - Closing is a TCP state FIN_WAIT..CLOSE, ~0.15 ms after the client's FIN; DESTROY is garbage
#   collection minutes later. LiveConnections turns the stream into one Opened/Closed each.
# - ENOBUFS means the kernel dropped events: drain what is queued (it is older than anything a dump
#   returns and would replay stale opens), dump, and hand the listing on as the new truth.
# - A classic BPF socket filter drops, in the kernel, every event that is not TCP to a guarded port
#   (found with the SKF_AD_NLATTR helpers, as libnetfilter_conntrack does): a busy host's other
#   connections never wake the loop. Anything it cannot judge it passes on; userspace checks again.
# - Dumps are filtered by the kernel (CTA_FILTER: TCP + destination port, one family per request:
#   the kernel refuses a filter with family 0); a kernel without CTA_FILTER gets one unfiltered
#   dump of both families, filtered here.
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from guardian.bpf import (
    ABS,
    IMM,
    JEQ,
    JGE,
    JGT,
    LD,
    LDX,
    MEM,
    MISC,
    SKF_AD_OFF,
    ST,
    TAX,
    B,
    H,
    Insn,
    Item,
    Label,
    W,
    assemble,
    jump_if,
    ld_ind,
    pack,
    port_ranges,
    ret,
)
from guardian.events import ConnectionClosed, ConnectionId, ConnectionOpened, ConnectionsListed
from guardian.parsers.conntrack import (
    IPPROTO_TCP,
    ConntrackRecord,
    Control,
    LiveConnections,
    MalformedMessage,
    iter_messages,
    listed_connections,
)
from guardian.watchers import WatcherError

NETLINK_NETFILTER = 12
NFNLGRP_CONNTRACK_ALL = 1 | 2 | 4  # NEW | UPDATE | DESTROY (legacy group bitmask)
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
SKF_AD_NLATTR, SKF_AD_NLATTR_NEST = 12, 16  # linux/filter.h: byte offsets, steps of 4
NLMSG_ATTRIBUTES_AT = 16 + 4  # nlmsghdr + nfgenmsg: where a conntrack event's attributes start
MAX_FILTER_RANGES = 100  # more port ranges than this: no kernel filter (8-bit jump offsets)
RCVBUF_BYTES = 8 << 20  # the kernel doubles it; ~1.3 kB per queued event → thousands of events
EVENTS_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_events")
DUMP_TIMEOUT = 10.0  # seconds for one whole dump (measured: ~25-35 µs per returned entry)
RECV_BYTES = 1 << 16
DRAIN_LIMIT = 100_000  # datagrams discarded at most per resync, so a flood cannot pin us here

# nlmsghdr / nfnetlink request bits
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLA_F_NESTED = 0x8000
IPCTNL_MSG_CT_GET = 1
NFNL_SUBSYS_CTNETLINK = 1
CTA_TUPLE_ORIG, CTA_FILTER = 1, 25
CTA_TUPLE_PROTO = 2
CTA_PROTO_NUM, CTA_PROTO_DST_PORT = 1, 3
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
CTA_FILTER_FLAG_CTA_PROTO_NUM, CTA_FILTER_FLAG_CTA_PROTO_DST_PORT = 1 << 3, 1 << 5
FILTER_TCP_DPORT = CTA_FILTER_FLAG_CTA_PROTO_NUM | CTA_FILTER_FLAG_CTA_PROTO_DST_PORT
_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")

STAT_KEYS = (
    "datagrams",  # event datagrams read
    "records",  # conntrack records decoded for guarded TCP ports
    "ignored",  # messages about other protocols/ports (or not conntrack entries)
    "malformed",  # datagrams that did not decode (the rest of such a datagram is skipped)
    "opened",  # ConnectionOpened emitted
    "closed",  # ConnectionClosed emitted
    "overruns",  # ENOBUFS: the kernel dropped events for us
    "resyncs",  # listings produced by read_events after an overrun
    "drained",  # queued datagrams discarded before a resync dump
    "dumps",  # dumps taken (start-up + resyncs + on request)
    "dump_records",  # entries the kernel returned to dumps (after its own filter, if any)
    "live",  # connections currently known established
    "unobservable",  # of those, how many predate events (see ConntrackWatcher.unobservable)
    "rcvbuf_bytes",  # the receive buffer the kernel granted
    "kernel_filter",  # 1 when the BPF event filter is attached
)

WatcherEvent = ConnectionOpened | ConnectionClosed | ConnectionsListed


class ConntrackWatcher:
    """Connections to the guarded TCP ports, from conntrack events of this network namespace.

    Call open(), then dump() once (the start-up listing), then read_events() whenever fileno()
    is readable. Needs CAP_NET_ADMIN. OS errors surface as WatcherError. kernel_filter=False
    leaves all filtering to userspace (no BPF on the event socket, unfiltered dumps): slower,
    for comparison and as an escape hatch."""

    def __init__(
        self,
        guarded_ports: tuple[int, ...],
        *,
        rcvbuf_bytes: int = RCVBUF_BYTES,
        events_sysctl: Path = EVENTS_SYSCTL,
        kernel_filter: bool = True,
    ) -> None:
        ports = frozenset(guarded_ports)
        if not ports or any(not 0 < p < 65536 for p in ports):
            raise ValueError(f"guarded ports must be 1..65535, got {guarded_ports!r}")
        self.guarded_ports = tuple(sorted(ports))
        self._ports = ports
        self._rcvbuf_bytes = rcvbuf_bytes
        self._sysctl = events_sysctl
        self._use_event_filter = kernel_filter
        self._sock: socket.socket | None = None
        self._live = LiveConnections(ports)
        self._resync_needed = False
        self._dump_filter = kernel_filter  # cleared once the kernel refuses CTA_FILTER
        self._seq = 0
        self._counts = dict.fromkeys(STAT_KEYS, 0)
        self.events_sysctl_was: int | None = None  # what nf_conntrack_events was before open()
        # Connections the first dump found while events had been off: the kernel never reports
        # anything about them (not even their close), so only listings can tell they ended.
        self._unobservable: frozenset[ConnectionId] = frozenset()
        self._first_dump_done = False

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Subscribe to conntrack events and make sure the kernel sends them (sysctl = 1)."""
        if self._sock is not None:
            raise WatcherError("conntrack watcher: already open")
        sock = _netlink_socket("conntrack watcher")
        try:
            self._counts["rcvbuf_bytes"] = _grow_receive_buffer(sock, self._rcvbuf_bytes)
            # Before bind: no unfiltered event can be queued in between.
            self._counts["kernel_filter"] = int(
                self._use_event_filter and _attach_event_filter(sock, self.guarded_ports)
            )
            sock.bind((0, NFNLGRP_CONNTRACK_ALL))
        except OSError as error:
            sock.close()
            reason = "needs CAP_NET_ADMIN" if error.errno == errno.EPERM else str(error)
            raise WatcherError(
                f"conntrack watcher: cannot subscribe to conntrack events: {reason}"
            ) from error
        try:
            self.events_sysctl_was = _enable_events(self._sysctl)
        except WatcherError:
            sock.close()
            raise
        self._sock = sock
        self._resync_needed = False
        self._first_dump_done = False

    def close(self) -> None:
        """Close the event socket (counters survive). Idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ConntrackWatcher:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The fd to wait on for readability."""
        return self._open_socket().fileno()

    @property
    def unobservable(self) -> frozenset[ConnectionId]:
        """Live connections that predate conntrack events in this namespace (nf_conntrack_events
        was not 1 before open()): no event will ever mark their end, so while this is non-empty
        the daemon should list (dump() or the socket table) more often. Shrinks as they close."""
        return frozenset(c for c in self._unobservable if c in self._live)

    @property
    def resync_needed(self) -> bool:
        """Events were lost and the resynchronising dump has not succeeded yet."""
        return self._resync_needed

    # -- reading -----------------------------------------------------------------------------
    def read_events(self, max_messages: int = 512) -> list[WatcherEvent]:
        """Drain up to max_messages queued datagrams without blocking; return their events.

        After an overrun (ENOBUFS) the queue is discarded and the list ends with a fresh
        ConnectionsListed from dump(): everything before it is older. If that dump fails the
        WatcherError propagates and the next call tries again."""
        sock = self._open_socket()
        events: list[WatcherEvent] = []
        if not self._resync_needed:
            for _ in range(max_messages):
                try:
                    data = sock.recv(RECV_BYTES)
                except BlockingIOError:
                    break
                except OSError as error:
                    if error.errno == errno.ENOBUFS:
                        self._counts["overruns"] += 1
                        self._resync_needed = True
                        break
                    raise WatcherError(
                        f"conntrack watcher: reading conntrack events: {error}"
                    ) from error
                self._counts["datagrams"] += 1
                self._decode_events(data, events)
        if self._resync_needed:
            self._discard_queue(sock)
            events.append(self.dump())
            self._counts["resyncs"] += 1
        return events

    def _decode_events(self, data: bytes, events: list[WatcherEvent]) -> None:
        counts = self._counts
        try:
            for message in iter_messages(data, self._ports):
                if not isinstance(message, ConntrackRecord):
                    counts["ignored"] += 1
                    continue
                counts["records"] += 1
                event = self._live.feed(message)
                if event is None:
                    continue
                counts["opened" if isinstance(event, ConnectionOpened) else "closed"] += 1
                events.append(event)
        except MalformedMessage:
            counts["malformed"] += 1

    def _discard_queue(self, sock: socket.socket) -> None:
        # Everything queued predates the dump that follows; replaying it after the listing would
        # resurrect connections that closed while their events were being dropped.
        for _ in range(DRAIN_LIMIT):
            try:
                sock.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    continue  # the overrun flag is cleared by reporting it; keep draining
                raise WatcherError(f"conntrack watcher: draining events: {error}") from error
            self._counts["drained"] += 1

    # -- listing -----------------------------------------------------------------------------
    def dump(self) -> ConnectionsListed:
        """List the established connections to guarded ports, both IPv4 and IPv6, and take the
        listing as the new truth for event de-duplication. Blocking (bounded by DUMP_TIMEOUT);
        works whether or not the watcher is open."""
        deadline = time.monotonic() + DUMP_TIMEOUT
        records: list[ConntrackRecord] = []
        sock = _netlink_socket("conntrack dump")
        try:
            sock.bind((0, 0))
            if self._dump_filter:
                try:
                    for family in (socket.AF_INET, socket.AF_INET6):
                        for port in self.guarded_ports:
                            records += self._dump_request(sock, family, port, deadline)
                except _FilterRefused:
                    self._dump_filter = False
                    records = []
            if not self._dump_filter:
                records = self._dump_request(sock, socket.AF_UNSPEC, None, deadline)
        except OSError as error:
            raise WatcherError(
                f"conntrack watcher: dumping the conntrack table: {error}"
            ) from error
        finally:
            sock.close()
        connections = listed_connections(records, self._ports)
        self._live.reset(connections)
        if self._sock is not None and not self._first_dump_done:
            self._first_dump_done = True
            if self.events_sysctl_was != 1:
                self._unobservable = connections
        else:
            self._unobservable &= connections
        self._resync_needed = False
        self._counts["dumps"] += 1
        return ConnectionsListed(connections, "conntrack")

    def _dump_request(
        self, sock: socket.socket, family: int, port: int | None, deadline: float
    ) -> list[ConntrackRecord]:
        self._seq += 1
        seq = self._seq
        sock.send(_dump_message(seq, family, port))
        records: list[ConntrackRecord] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WatcherError("conntrack watcher: dump timed out")
            sock.settimeout(remaining)
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError as error:
                raise WatcherError("conntrack watcher: dump timed out") from error
            try:
                for message in iter_messages(data, self._ports):
                    if not isinstance(message, Control):
                        self._counts["dump_records"] += 1
                    if isinstance(message, ConntrackRecord):
                        records.append(message)
                    elif isinstance(message, Control) and message.seq == seq:
                        if message.errno == 0:
                            return records  # NLMSG_DONE (or a bare ack)
                        if port is not None and message.errno in (
                            errno.EOPNOTSUPP,
                            errno.EINVAL,
                        ):
                            raise _FilterRefused
                        raise WatcherError(
                            "conntrack watcher: the kernel refused the dump: "
                            + os.strerror(message.errno)
                        )
            except MalformedMessage as error:
                raise WatcherError(f"conntrack watcher: unreadable dump reply: {error}") from error

    # -- counters ----------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters since construction (keys: STAT_KEYS)."""
        self._counts["live"] = len(self._live)
        self._counts["unobservable"] = len(self.unobservable)
        return dict(self._counts)

    def _open_socket(self) -> socket.socket:
        if self._sock is None:
            raise WatcherError("conntrack watcher: not open")
        return self._sock


class _FilterRefused(Exception):
    """The kernel does not support CTA_FILTER for dumps (before Linux 5.8)."""


def _netlink_socket(who: str) -> socket.socket:
    try:
        return socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    except OSError as error:
        raise WatcherError(f"{who}: cannot open a NETLINK_NETFILTER socket: {error}") from error


def _grow_receive_buffer(sock: socket.socket, size: int) -> int:
    # SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN; SO_RCVBUF is capped.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return granted


def event_filter_program(guarded_ports: Iterable[int]) -> tuple[Insn, ...]:
    """Classic BPF for the event socket: drop (return 0) a conntrack message whose original tuple
    is not TCP or whose destination port is not guarded; keep everything else, including what it
    cannot find (SKF_AD_NLATTR* answer 0 for "not found", and for a non-linear skb).

    SKF_AD_NLATTR: A = offset of the attribute of type X among the attributes from offset A.
    SKF_AD_NLATTR_NEST: A = offset of the attribute of type X inside the nested one at offset A.
    ValueError for a port outside 1..65535."""
    nlattr = Insn(LD | W | ABS, k=(SKF_AD_OFF + SKF_AD_NLATTR) & 0xFFFFFFFF)
    nested = Insn(LD | W | ABS, k=(SKF_AD_OFF + SKF_AD_NLATTR_NEST) & 0xFFFFFFFF)
    source: list[Item] = [
        Insn(LD | IMM, k=NLMSG_ATTRIBUTES_AT),
        Insn(LDX | IMM, k=CTA_TUPLE_ORIG),
        nlattr,
        jump_if(JEQ, 0, jt="keep"),
        Insn(LDX | IMM, k=CTA_TUPLE_PROTO),
        nested,
        jump_if(JEQ, 0, jt="keep"),
        Insn(ST, k=0),  # M[0] = offset of the protocol attributes
        Insn(LDX | IMM, k=CTA_PROTO_NUM),
        nested,
        jump_if(JEQ, 0, jt="keep"),
        Insn(MISC | TAX),
        ld_ind(B, 4),  # the protocol number, after the 4-byte attribute header
        jump_if(JEQ, IPPROTO_TCP, jf="drop"),
        Insn(LD | MEM, k=0),
        Insn(LDX | IMM, k=CTA_PROTO_DST_PORT),
        nested,
        jump_if(JEQ, 0, jt="keep"),
        Insn(MISC | TAX),
        ld_ind(H, 4),  # the destination port (big-endian, as BPF loads it)
    ]
    for n, (low, high) in enumerate(port_ranges(guarded_ports)):
        miss = f"miss{n}"
        source += [jump_if(JGE, low, jf=miss), jump_if(JGT, high, jt=miss, jf="keep"), Label(miss)]
    source += [Label("drop"), ret(0), Label("keep"), ret(0xFFFFFFFF)]
    return assemble(source)


def _attach_event_filter(sock: socket.socket, guarded_ports: Iterable[int]) -> bool:
    """Attach the event filter; False (no filter, userspace filters alone) if it cannot be."""
    if len(port_ranges(guarded_ports)) > MAX_FILTER_RANGES:
        return False
    program = pack(event_filter_program(guarded_ports))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel copies the
    # instructions during setsockopt, so the buffer only has to outlive this call.
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(buffer))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


def _enable_events(path: Path) -> int:
    """Make nf_conntrack_events 1 in this namespace; return its previous value."""
    try:
        before = int(path.read_text().strip())
    except FileNotFoundError as error:
        raise WatcherError(
            f"conntrack events are unavailable: {path} does not exist "
            "(nf_conntrack not loaded: no ruleset uses `ct state` yet)"
        ) from error
    except (OSError, ValueError) as error:
        raise WatcherError(f"conntrack events are unavailable: reading {path}: {error}") from error
    if before != 1:
        try:
            path.write_text("1\n")
        except OSError as error:
            raise WatcherError(
                f"conntrack events are unavailable: cannot set {path} to 1 (it is {before}): "
                f"{error}"
            ) from error
    return before


def _nla(nla_type: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, nla_type) + payload + b"\0" * (-length % 4)


def _dump_message(seq: int, family: int, port: int | None) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP; with a port, a kernel filter on TCP + that dport."""
    body = _NFGENMSG.pack(family, 0, 0)
    if port is not None:
        proto = _nla(CTA_PROTO_NUM, bytes([IPPROTO_TCP])) + _nla(
            CTA_PROTO_DST_PORT, struct.pack("!H", port)
        )
        body += _nla(CTA_TUPLE_ORIG | NLA_F_NESTED, _nla(CTA_TUPLE_PROTO | NLA_F_NESTED, proto))
        flags = struct.pack("=I", FILTER_TCP_DPORT)
        body += _nla(
            CTA_FILTER | NLA_F_NESTED,
            _nla(CTA_FILTER_ORIG_FLAGS, flags) + _nla(CTA_FILTER_REPLY_FLAGS, struct.pack("=I", 0)),
        )
    msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body
