# Configuration: the frozen dataclasses every other module reads, and every default in one place.
# Loading TOML into these (with `file:line: key: reason` errors) lives in guardian/configfile.py;
# this module has no I/O so the pure engine can import it.
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from guardian.addresses import IPNetwork
from guardian.events import ACK, FIN, PSH, RST, SYN, URG, Proto

# ---------------------------------------------------------------------------------------------
# Defaults. Every default value of the product is written here and nowhere else.
DEFAULT_CONFIG_PATH = "/etc/guardian/guardian.toml"
DEFAULT_PORTS: tuple[int, ...] = (22,)
DEFAULT_ANSWER: Literal["reset", "drop"] = "reset"
DEFAULT_WINDOW = 30.0  # seconds a completed knock keeps the port open for a first connection
DEFAULT_LINGER = 10.0  # seconds a grant outlives its last session (a reconnect, the next scp)
DEFAULT_LEASE = 60.0  # kernel timeout of a grant while sessions live; refreshed every lease / 2
MIN_LEASE = 1.0  # shorter leases would wake the daemon for refreshes all the time
DEFAULT_REQUIRE_AUTH = True  # only sshd-authenticated connections keep access beyond login grace
# sshd's own LoginGraceTime default: what an unauthenticated connection may hold access for when
# [access] login_grace_time is "auto" and the daemon has not (or could not) read `sshd -T`.
DEFAULT_LOGIN_GRACE_TIME = 120.0
DEFAULT_DOOR_TIMEOUT = 25.0  # knockd's Seq_Timeout default: first knock to last
DEFAULT_TCP_FLAGS = "syn"
DEFAULT_DECOY_BAND = 8  # decoy ports on each side of every sequence port (see engine/knock.py)
MAX_SEQUENCE_LENGTH = 32  # knockd's limit
MAX_ATTEMPTS = 4096  # in-progress knock attempts kept (LRU); bounds memory under spoofed floods
MAX_CONNECTIONS = 65536  # connections to guarded ports tracked; beyond it the oldest are evicted
TABLE_NAME = "guardian"  # nftables table, family inet
DEFAULT_CONTROL_SOCKET = "/run/guardian/control.sock"  # the daemon's JSON-lines control socket
# The socket table is a slow reconciliation while conntrack delivers events, and the whole session
# signal when it does not: then a session's end is seen within SOCKETS_FALLBACK_INTERVAL.
SOCKETS_RECONCILE_INTERVAL = 30.0
SOCKETS_FALLBACK_INTERVAL = 2.0
# Watcher positions (btmp and auth.log offsets, the journal cursor) are saved this often when they
# moved, and at shutdown: a crash replays at most this much, and counts nothing twice (findtime).
POSITION_SAVE_INTERVAL = 1.0
# The Prometheus textfile (--metrics-file) is rewritten this often: node_exporter reads it on
# each scrape, commonly every 15 s or more.
METRICS_INTERVAL = 15.0
# A journal wake-up with no sshd line mutes the journal's fd this long (idle cost; see daemon.py).
JOURNAL_MUTE = 1.0
# How far back the journal is searched at start-up for the "Accepted" lines of live sessions.
SESSION_HISTORY = 7 * 86400.0
# Bans ([ban]; engine/bans.py): sshd's failures -> escalating bans the kernel times out.
DEFAULT_BAN_ENABLED = True
BAN_SOURCES: tuple[str, ...] = ("journal", "btmp", "authlog")  # every failure source known
DEFAULT_BAN_SOURCES = BAN_SOURCES  # whichever of them exist on the host
DEFAULT_BAN_MODE: Literal["normal", "aggressive"] = "normal"
DEFAULT_MAXRETRY = 5  # distinct failed attempts within findtime that earn a ban
DEFAULT_FINDTIME = 600.0
DEFAULT_BANTIME = 600.0  # the first ban; each repeat offence multiplies it by factor
DEFAULT_BAN_FACTOR = 2.0
DEFAULT_MAXTIME = 604800.0  # escalation stops here (1 week)
DEFAULT_JITTER = 0.0  # a random extra up to this long, against bots that time the unban
DEFAULT_IPV6_PREFIX = 64  # IPv6 sources are counted and banned by this prefix
MIN_IPV6_PREFIX = 32  # shorter prefixes would ban whole providers: refused as a likely typo
DEFAULT_BAN_SCOPE: Literal["all", "guarded"] = "all"  # drop banned sources on every port
MAX_BAN_TIME = 365 * 86400.0  # nft refuses element timeouts much beyond a year
# Memory bounds of the ban engine (LRU; evictions are counted).
MAX_FAILURE_SOURCES = 65536  # sources (or IPv6 prefixes) with failures being counted
MAX_FAILURE_JOINS = 16384  # (source, sshd PID) keys remembered to join journal/btmp/auth.log
FAILURE_JOIN_WINDOW = 2.0  # seconds between two origins' reports of one attempt (btmp: 1 s steps)
MAX_OFFENCES = 100_000  # offence histories kept; the oldest last ban is forgotten first
OFFENCE_MEMORY = 30 * 86400.0  # an offence history is forgotten this long after its last ban
DEFAULT_STATE_PATH = "/var/lib/guardian/state.db"  # offences and watcher positions (sqlite)
# [sshd] on demand: sshd's listener exists only while some grant is open (effectors/sshd.py).
DEFAULT_SSHD_ON_DEMAND = False
DEFAULT_SSHD_START: tuple[str, ...] = ("systemctl", "start", "guardian-sshd.socket")
DEFAULT_SSHD_STOP: tuple[str, ...] = ("systemctl", "stop", "guardian-sshd.socket")
SSHD_COMMAND_TIMEOUT = 10.0  # a start/stop command still running after this is killed
SSHD_RETRY_MIN = 1.0  # a failed start is retried after this, doubling up to SSHD_RETRY_MAX
SSHD_RETRY_MAX = 60.0
# systemd: the STATUS= line is refreshed at most this often (idle cost), and the socket-table tick
# checks that the nftables table is still there (an `nft flush ruleset` removes it).
NOTIFY_STATUS_INTERVAL = 5.0
# [[hook]] (effectors/hooks.py): commands run on events, the event as JSON on stdin.
DEFAULT_HOOK_TIMEOUT = 10.0  # a hook still running after this is killed (its process group)
HOOK_MAX_RUNNING = 4  # hooks running at once; further events wait in a queue
HOOK_MAX_QUEUED = 256  # events waiting for a free slot; beyond it they are dropped (counted)
# Hook event kinds -> the engine's Notice kinds they stand for (one hook kind per notice kind).
HOOK_KINDS: dict[str, str] = {
    "grant": "grant_opened",
    "revoke": "grant_closed",
    "ban": "ban",
    "unban": "unban",
    "everyone_opened": "everyone_opened",
    "everyone_closed": "everyone_closed",
    "session_opened": "session_opened",
    "session_closed": "session_closed",
    "knock_failed": "knock_failed",
}

# [spa] Single Packet Authorization, wire-compatible with fwknop (spec/fwknop-spa.md).
DEFAULT_SPA_PORT = 62201  # fwknop's UDP port; captured like knocks, nothing listens on it
DEFAULT_SPA_MAX_AGE = 120.0  # fwknopd's MAX_SPA_PACKET_AGE: a larger |now - client time| refuses
DEFAULT_SPA_ACCESS_TIMEOUT = 30.0  # fwknopd's FW_ACCESS_TIMEOUT: the grant's window
DEFAULT_SPA_MAX_TIMEOUT = 300.0  # fwknopd's MAX_FW_TIMEOUT: cap on a client-requested timeout
DEFAULT_SPA_HMAC = "sha256"
SPA_HMACS: tuple[str, ...] = ("md5", "sha1", "sha256", "sha384", "sha512", "sha3_256", "sha3_512")
SPA_NO_HMAC = "none"  # hmac = "none": packets without HMAC, only when a stanza asks (replayable)
SPA_REPLAY_MARGIN = 60.0  # replay digests are kept max_age + this past the packet's time
MAX_SPA_REPLAYS = 100_000  # replay digests kept (oldest dropped first; counted)

FLAG_BITS: dict[str, int] = {"fin": FIN, "syn": SYN, "rst": RST, "psh": PSH, "ack": ACK, "urg": URG}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """'30s' -> 30.0, '10m' -> 600.0, '1w' -> 604800.0; a bare number means seconds.

    Raises ValueError with a message meant for the operator."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f'not a duration: {text!r} (write e.g. "30s", "10m", "1h", "1d")')
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration for whole values, used when printing effective configs."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class KnockStep:
    """One knock: a port and its protocol, written "7000/tcp" (tcp if the protocol is left out)."""

    port: int
    proto: Proto = "tcp"

    def __str__(self) -> str:
        return f"{self.port}/{self.proto}"


@dataclass(frozen=True, slots=True)
class TcpFlags:
    """knockd's TCPFlags: bits that must be set, bits that must be clear ("!flag")."""

    required: int = SYN
    forbidden: int = 0

    def matches(self, flags: int) -> bool:
        return (flags & self.required) == self.required and not (flags & self.forbidden)

    def __str__(self) -> str:
        words = [n for n, b in FLAG_BITS.items() if self.required & b]
        words += [f"!{n}" for n, b in FLAG_BITS.items() if self.forbidden & b]
        return ",".join(words)


def parse_tcp_flags(text: str) -> TcpFlags:
    """'syn', 'syn,!ack', 'syn ack' -> TcpFlags; '' means any flags. Raises ValueError."""
    required = forbidden = 0
    for word in re.split(r"[,\s]+", text.strip().lower()):
        if not word:
            continue
        negate = word.startswith("!")
        name = word[1:] if negate else word
        if name not in FLAG_BITS:
            raise ValueError(f"unknown TCP flag {name!r} (use fin, syn, rst, psh, ack, urg)")
        if negate:
            forbidden |= FLAG_BITS[name]
        else:
            required |= FLAG_BITS[name]
    if required & forbidden:
        raise ValueError(f"a flag is both required and forbidden in {text!r}")
    return TcpFlags(required, forbidden)


@dataclass(frozen=True, slots=True)
class Door:
    """A knock sequence that opens the guarded ports for the knocking source, or, with
    open_to = "everyone", for every source for `window` (a hard bound, never extended).

    decoys holds every decoy port (the band around each sequence port already expanded, minus any
    port that some door or the gate uses): a hit on one resets the source's attempts.
    window: None means [access] window."""

    name: str
    sequence: tuple[KnockStep, ...]
    timeout: float = DEFAULT_DOOR_TIMEOUT
    tcp_flags: TcpFlags = field(default_factory=TcpFlags)
    close: tuple[KnockStep, ...] = ()
    decoy_band: int = DEFAULT_DECOY_BAND
    decoys: tuple[KnockStep, ...] = ()
    open_to: Literal["source", "everyone"] = "source"
    window: float | None = None


@dataclass(frozen=True, slots=True)
class Hook:
    """[[hook]]: run `run` (an argv list, no shell) on each event whose kind is in `on` (keys of
    HOOK_KINDS), the event as one JSON object on stdin; killed after `timeout`."""

    on: tuple[str, ...]
    run: tuple[str, ...]
    timeout: float = DEFAULT_HOOK_TIMEOUT


@dataclass(frozen=True, slots=True)
class Guard:
    ports: tuple[int, ...] = DEFAULT_PORTS
    trusted: tuple[IPNetwork, ...] = ()
    interfaces: tuple[str, ...] = ()  # empty = all, including ones that appear later
    answer: Literal["reset", "drop"] = DEFAULT_ANSWER


@dataclass(frozen=True, slots=True)
class Access:
    window: float = DEFAULT_WINDOW
    linger: float = DEFAULT_LINGER  # may be 0: close as soon as the last session ends
    lease: float = DEFAULT_LEASE
    require_auth: bool = DEFAULT_REQUIRE_AUTH
    # None means "auto": the daemon reads sshd's LoginGraceTime (`sshd -T`) and puts the seconds
    # here with dataclasses.replace before handing the config to the engine; until then (or if
    # sshd cannot be asked) the engine uses DEFAULT_LOGIN_GRACE_TIME. See login_grace.
    login_grace_time: float | None = None

    @property
    def login_grace(self) -> float:
        """The login grace the engine applies: the resolved value, or sshd's default."""
        if self.login_grace_time is None:
            return DEFAULT_LOGIN_GRACE_TIME
        return self.login_grace_time


@dataclass(frozen=True, slots=True)
class Ban:
    """[ban]: when sshd's failures earn a source a ban, and for how long.

    A ban lasts min(bantime * factor ** (offence - 1), maxtime) plus up to `jitter` at random.
    enabled = false stops automatic bans only: operator bans, and bans already in the kernel,
    still hold. sources and mode tell the daemon which watchers to run and how strictly its
    parsers read sshd (parsers/sshd_messages.py); the engine counts whatever it is fed."""

    enabled: bool = DEFAULT_BAN_ENABLED
    sources: tuple[str, ...] = DEFAULT_BAN_SOURCES
    mode: Literal["normal", "aggressive"] = DEFAULT_BAN_MODE
    maxretry: int = DEFAULT_MAXRETRY
    findtime: float = DEFAULT_FINDTIME
    bantime: float = DEFAULT_BANTIME
    factor: float = DEFAULT_BAN_FACTOR
    maxtime: float = DEFAULT_MAXTIME
    jitter: float = DEFAULT_JITTER
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX
    scope: Literal["all", "guarded"] = DEFAULT_BAN_SCOPE


@dataclass(frozen=True, slots=True)
class Sshd:
    """[sshd]: with on_demand, the daemon runs `start` when the first grant opens and `stop` once
    the last grant is gone (linger included), so nothing listens on the port between visits.
    Both are argv lists, executed without a shell."""

    on_demand: bool = DEFAULT_SSHD_ON_DEMAND
    start: tuple[str, ...] = DEFAULT_SSHD_START
    stop: tuple[str, ...] = DEFAULT_SSHD_STOP


SpaAccess: TypeAlias = tuple[str, int]  # ("tcp", 22): fwknop's "tcp/22"


@dataclass(frozen=True, slots=True)
class SpaStanza:
    """[[spa.stanza]]: who may open what with one SPA packet (fwknop's access.conf stanza).

    key is the raw Rijndael key (KEY_BASE64 decoded, or a passphrase's bytes); hmac_key is None
    only with hmac = "none". A stanza is tried for a packet whose source is in `source` (empty =
    ANY). `expires` is epoch seconds from which the stanza no longer opens anything (None: never).
    The grant it opens is a normal grant of door "spa:<name>": window = the client's timeout
    (message type 3) capped at max_timeout, else access_timeout; then session, linger, close."""

    name: str
    key: bytes = field(repr=False)
    hmac_key: bytes | None = field(repr=False)
    hmac: str = DEFAULT_SPA_HMAC  # one of SPA_HMACS, or SPA_NO_HMAC
    legacy: bool = False  # fwknop's ENCRYPTION_MODE legacy (pre-2.5 clients): key padded to 16
    source: tuple[IPNetwork, ...] = ()
    open_ports: tuple[SpaAccess, ...] = (("tcp", 22),)  # every requested access must be listed
    restrict_ports: tuple[SpaAccess, ...] = ()  # any requested access listed here refuses
    access_timeout: float = DEFAULT_SPA_ACCESS_TIMEOUT
    max_timeout: float = DEFAULT_SPA_MAX_TIMEOUT
    require_source_address: bool = False  # refuse 0.0.0.0 ("the packet's source"), as fwknopd
    require_username: str | None = None
    expires: float | None = None
    key_origin: str = "inline"  # where the keys came from, for messages ("file:PATH" or "inline")


@dataclass(frozen=True, slots=True)
class Spa:
    """[spa]: the UDP port SPA packets are captured on, the age window, the stanzas. SPA is on
    when there is at least one stanza."""

    port: int = DEFAULT_SPA_PORT
    max_age: float = DEFAULT_SPA_MAX_AGE
    stanzas: tuple[SpaStanza, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.stanzas)


@dataclass(frozen=True, slots=True)
class Config:
    guard: Guard = field(default_factory=Guard)
    access: Access = field(default_factory=Access)
    doors: tuple[Door, ...] = ()
    path: str = ""  # where it was loaded from, for messages
    ban: Ban = field(default_factory=Ban)
    sshd: Sshd = field(default_factory=Sshd)
    hooks: tuple[Hook, ...] = ()
    spa: Spa = field(default_factory=Spa)


def door_window(door: Door, access: Access) -> float:
    """How long a completed knock of this door opens the ports: its own window, else [access]."""
    return access.window if door.window is None else door.window


def knock_ports(config: Config) -> tuple[frozenset[int], frozenset[int]]:
    """The TCP and UDP ports the knock listener must see: every door's steps, closes and decoys."""
    tcp: set[int] = set()
    udp: set[int] = set()
    for door in config.doors:
        for step in (*door.sequence, *door.close, *door.decoys):
            (tcp if step.proto == "tcp" else udp).add(step.port)
    return frozenset(tcp), frozenset(udp)
