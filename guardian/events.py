# Events: the facts the watchers and the operator feed into the engine. Frozen dataclasses, data
# only — no behaviour, no I/O. Every event the engine understands is declared here, so this file is
# the whole input vocabulary of the pure core.
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from guardian.addresses import IPAddress, IPNetwork

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


# ---- sessions (fed by the conntrack, socket-table and journal watchers) ----------------------

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
    """A full listing of live connections to guarded ports (conntrack dump or socket-table poll).

    It speaks for its origin: a connection this origin reported before and missing here is closed;
    one no live origin vouches for (journal-only, or its watcher went away) is closed unless listed;
    connections known only from another origin are left alone; anything new here is open."""

    connections: frozenset[ConnectionId]
    origin: str = "conntrack"
    # True only for a watcher's listing taken at daemon start-up (before "ready"): live
    # connections from untrusted sources without a grant are then adopted (a restart must not cut
    # a live session's access). Later listings never create grants.
    initial: bool = False


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


@dataclass(frozen=True, slots=True)
class SignalsChanged:
    """Which session signals the daemon has right now; sent at start-up (before the first listing)
    and whenever a watcher comes up or goes down.

    connections: the origins currently able to report connections ("conntrack", "sockets"); empty
    when none is. Connections only a vanished origin vouched for become unconfirmed: the next
    listing of any origin confirms or closes them.
    auth: the journal watcher is up, so sshd's "Accepted" lines (SessionOpened) can be seen. When
    it is down, every connection counts as a session from its start (nothing could tell)."""

    connections: frozenset[str]
    auth: bool


# ---- failures and bans (fed by the journal, btmp and auth.log watchers; the operator) --------


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """sshd reported a failed authentication attempt from `source` (over a completed TCP
    handshake, so the address is not spoofed). The same attempt may arrive from several origins
    (journal, btmp, auth.log): the engine joins them so it counts once.

    wall_time is when sshd logged it (epoch seconds; btmp has 1-second resolution); pid is the
    sshd process that handled the connection (None when unknown)."""

    source: IPAddress
    origin: str  # "journal" | "btmp" | "authlog"
    rule: str  # the parser's rule name, e.g. "failed_password", "invalid_user"
    user: str | None = None
    pid: int | None = None
    wall_time: float | None = None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class BanRequested:
    """The operator bans a source or network by hand; duration None means the escalated default."""

    network: IPNetwork
    duration: float | None = None
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class UnbanRequested:
    """The operator lifts a ban (and, by choice, forgets the offence history)."""

    network: IPNetwork
    forget: bool = False


@dataclass(frozen=True, slots=True)
class BanFound:
    """A ban already in the kernel at start-up (adoption): remaining seconds, None if permanent;
    `offence`: the number the element's comment carries (None: no comment of ours)."""

    network: IPNetwork
    expires_in: float | None
    offence: int | None = None


@dataclass(frozen=True, slots=True)
class OffenceRecord:
    """What the state store remembers of a source across restarts."""

    network: IPNetwork
    offences: int  # how many times it has been banned
    last_ban_wall: float  # epoch seconds of the last ban


@dataclass(frozen=True, slots=True)
class OffencesLoaded:
    """The persisted offence history, fed once at start-up before anything else about bans."""

    records: tuple[OffenceRecord, ...]


@dataclass(frozen=True, slots=True)
class SpaSeen:
    """A UDP datagram to the SPA port, as captured (nothing listens there): its payload is what
    the engine authenticates. `source` is the packet's (spoofable) source address."""

    source: IPAddress
    port: int
    payload: bytes
    interface: str = ""


@dataclass(frozen=True, slots=True)
class SpaReplaysLoaded:
    """Start-up: the replay digests the state store kept (digest, wall-clock expiry), fed once
    before any SpaSeen so a packet accepted before a restart is refused after it."""

    entries: tuple[tuple[bytes, float], ...]


Event: TypeAlias = (
    KnockSeen
    | GrantFound
    | GrantRequested
    | RevokeRequested
    | ConnectionOpened
    | ConnectionClosed
    | ConnectionsListed
    | SessionOpened
    | SessionClosed
    | SignalsChanged
    | AuthFailed
    | BanRequested
    | UnbanRequested
    | BanFound
    | OffencesLoaded
    | SpaSeen
    | SpaReplaysLoaded
)
