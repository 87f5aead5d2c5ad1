# Events: the facts the watchers and the operator feed into the engine. Frozen dataclasses, data
# only — no behaviour, no I/O. Every event the engine understands is declared here, so this file is
# the whole input vocabulary of the pure core.
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from guardian.addresses import IPAddress

Proto: TypeAlias = Literal["tcp", "udp"]

# TCP header flag bits, as they sit in byte 13 of the TCP header.
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True, slots=True)
class KnockSeen:
    """A packet to a knock or decoy port, as captured (before any firewall verdict)."""

    source: IPAddress
    port: int
    proto: Proto
    tcp_flags: int = 0  # TCP flag bits (FIN..URG); 0 for UDP
    interface: str = ""


@dataclass(frozen=True, slots=True)
class GrantFound:
    """A grant already present in the kernel when the daemon starts (adoption, not a new grant).

    expires_in is the kernel's remaining timeout in seconds; None means the element is permanent
    (it should never be, and the engine puts a timeout back on it)."""

    source: IPAddress
    expires_in: float | None


@dataclass(frozen=True, slots=True)
class GrantRequested:
    """The operator opens access for a source by hand (control socket / CLI)."""

    source: IPAddress
    duration: float
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class RevokeRequested:
    """The operator closes a source's access by hand."""

    source: IPAddress
    reason: str = "operator"


Event: TypeAlias = KnockSeen | GrantFound | GrantRequested | RevokeRequested


# ---- sessions (fed by the conntrack, socket-table and journal watchers) ----------------------
# Not yet part of the Event union: the engine learns them with the session lifecycle.

ConnectionId: TypeAlias = tuple[IPAddress, int, int]  # (source address, source port, guarded port)


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """A TCP connection from source:sport to a guarded port is established (or was found live)."""

    source: IPAddress
    sport: int
    dport: int
    origin: str = "conntrack"  # "conntrack" or "sockets"


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """That connection is closing or gone (conntrack state >= FIN_WAIT, or gone from a listing)."""

    source: IPAddress
    sport: int
    dport: int
    origin: str = "conntrack"


@dataclass(frozen=True, slots=True)
class ConnectionsListed:
    """A full listing of live connections to guarded ports (conntrack dump or socket-table poll):
    anything the engine believes live but missing here is closed; anything new here is open."""

    connections: frozenset[ConnectionId]
    origin: str = "conntrack"


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """sshd accepted an authentication: `Accepted <method> for USER from HOST port N`."""

    source: IPAddress
    sport: int
    user: str
    pid: int


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """sshd's session from that source and port ended (`Disconnected from user ...`, etc.)."""

    source: IPAddress
    sport: int
    user: str
    pid: int
