# Failed logins -> bans: counting sshd's failures per source, joining the reports of one attempt,
# escalating repeat offences, and the table of bans the kernel holds. Pure bookkeeping driven by
# the facade (core.py): every method takes the engine's clock `now` (monotonic) and `wall` (the
# wall clock, epoch seconds, as data), and returns the actions to take. Nothing here reads a clock.
#
# Theory of operation
#   * Only AuthFailed counts: sshd saw it over a completed TCP handshake, so the address is real.
#     Knocks are never counted here (their sources are spoofable); a banned source's knocks are
#     dropped by the facade before the knock matcher sees them (covering()).
#   * Never counted, never banned: loopback, trusted networks, and sources with a live session
#     sshd accepted (an admin mistyping in a second window keeps access). Those failures are
#     counted apart (failures_trusted, failures_in_session).
#   * One attempt counts once. The journal, btmp and auth.log may each report the same attempt.
#     Reports are joined per sshd connection, (source, PID) — (source, user) when the PID is
#     unknown: each connection keeps "slots", one per attempt, holding the origins that reported
#     it. A report fills the earliest slot within FAILURE_JOIN_WINDOW seconds (log time) that its
#     origin has not filled yet; if there is none, it is a new attempt. As each origin reports in
#     log order, this pairs the i-th report of one origin with the i-th of another; an origin
#     that sees more (the journal's host-less lines) adds attempts. Bounded: an LRU of keys and a
#     few slots each.
#   * Counting: a new attempt's time is its log time (clamped to `wall`). Attempts older than
#     wall - findtime are stale (a restart replaying old log lines must not ban for yesterday).
#     IPv4 sources count per address, IPv6 per ipv6_prefix (link-local: per address). When a
#     source's window holds maxretry attempts, all within findtime of `wall`, it is banned at once.
#     Windows live in an LRU (bounded, evictions counted).
#   * What is banned: the counted network. If that (an IPv6 prefix) would catch a trusted
#     network, loopback or a live session, the ban narrows to the one address ("narrowed").
#   * How long: min(bantime * factor ** (offence - 1), maxtime) + uniform(0, jitter) from the
#     injected random source. offence = the network's previous offences + 1, unless its last ban
#     is older than OFFENCE_MEMORY. Histories are persisted (RecordOffence, executed by the
#     state store) and fed back at start (OffencesLoaded), so escalation survives restarts.
#   * Bans: the kernel times them out (set element timeouts); the engine tracks each until its
#     deadline, then forgets it (Notice "unban", no action). Failures of a banned source are
#     counted (failures_while_banned) and never escalate. Bans found in the kernel at start are
#     adopted as they are (BanFound, no kernel action), unless they cover trusted addresses or
#     loopback: those are lifted, as they are when [guard] trusted grows at a reload. The daemon
#     goes to the kernel before the store, so one killed between the two leaves a ban the
#     history does not know: an adopted ban whose history is missing or behind takes the offence
#     its element carries (BanFound.offence, the comment of nft_rules.py; none: offence 1), and
#     the history catches up (RecordOffence, counter offences_restored).
#   * Kernel layout (effectors/nft_rules.py): single IPv4 addresses and IPv6 prefixes of exactly
#     ipv6_prefix live in hash sets; every other network in interval sets, where the kernel (and
#     nft) refuse overlapping elements even when the same transaction deletes the older one. So an
#     operator ban that would overlap another interval ban (other than itself) is refused with a
#     notice: unban the other first. See uses_interval_set().
#   * Operator: BanRequested bans exactly the network given (refused if it covers loopback or
#     trusted addresses); UnbanRequested lifts every ban overlapping the network, clears the
#     failure windows there, and with forget=True also the offence histories (RecordOffence 0).
from __future__ import annotations

import bisect
import heapq
import ipaddress
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import NamedTuple

from guardian.actions import Action, Ban, Notice, RecordOffence, Unban
from guardian.addresses import IPAddress, IPNetwork, normalize
from guardian.config import (
    FAILURE_JOIN_WINDOW,
    MAX_BAN_TIME,
    MAX_FAILURE_JOINS,
    MAX_FAILURE_SOURCES,
    MAX_OFFENCES,
    OFFENCE_MEMORY,
    format_duration,
)
from guardian.config import Ban as BanPolicy
from guardian.events import (
    AuthFailed,
    BanFound,
    BanRequested,
    OffenceRecord,
    OffencesLoaded,
    UnbanRequested,
)

REASON_ADOPTED = "adopted"
REASON_TRUSTED = "trusted"
MAX_SLOTS = 32  # attempts remembered per sshd connection (MaxAuthTries is 6 by default)
MAX_LABELS = 64  # distinct origins / rules counted by name; the rest go to "other"
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")

# Who may ask whether a live, sshd-accepted session comes from an address or a network.
SessionProbe = Callable[[IPAddress | IPNetwork], bool]


def uses_interval_set(network: IPNetwork, ipv6_prefix: int) -> bool:
    """Does the kernel keep this ban in an interval set (where overlaps are refused)?

    Single IPv4 addresses and IPv6 networks of exactly ipv6_prefix go to hash sets; the nft
    effector routes by the same rule (it imports this function)."""
    if isinstance(network, ipaddress.IPv4Network):
        return network.prefixlen != 32
    return network.prefixlen != ipv6_prefix


def unmap_network(network: IPNetwork) -> IPNetwork:
    """::ffff:192.0.2.0/120 is 192.0.2.0/24, as sources are normalised to IPv4."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


# Networks inside the table are keyed by plain integers: hashing and comparing ipaddress objects
# costs microseconds each, and adopting 100k bans at start-up must take well under a second.
NetKey = tuple[int, int, int]  # (IP version, prefix length, network address as an int)
_BITS = {4: 32, 6: 128}


def net_key(network: IPNetwork) -> NetKey:
    return (network.version, network.prefixlen, int(network.network_address))


def address_key(address: IPAddress, prefixlen: int | None = None) -> NetKey:
    """The key of the network of `prefixlen` bits (all of them by default) around an address."""
    bits = _BITS[address.version]
    length = bits if prefixlen is None else prefixlen
    return (address.version, length, int(address) >> (bits - length) << (bits - length))


def key_network(key: NetKey) -> IPNetwork:
    version, length, value = key
    if version == 4:
        return ipaddress.IPv4Network((value, length))
    return ipaddress.IPv6Network((value, length))


def keys_overlap(a: NetKey, b: NetKey) -> bool:
    """Two networks overlap when the shorter one contains the other's network address."""
    if a[0] != b[0]:
        return False
    shift = _BITS[a[0]] - min(a[1], b[1])
    return a[2] >> shift == b[2] >> shift


LOOPBACK_KEYS: tuple[NetKey, ...] = tuple(net_key(n) for n in LOOPBACK)


class BanView(NamedTuple):
    """A ban the engine tracks. since/until are instants on the engine's clock (until None:
    permanent); offence is how many times the network has been banned, this ban included.

    A NamedTuple, not a frozen dataclass: immutable and typed alike, and start-up builds 100k
    of them at once (adopted bans), where the dataclass's __init__ was a fifth of the time."""

    network: IPNetwork
    reason: str
    since: float
    until: float | None
    offence: int


# ---------------------------------------------------------------------------------------------
# One attempt counts once


class _Slot:
    """One attempt of one sshd connection: when it happened, and who reported it (a bit per
    origin: a set here cost ~200 bytes per attempt held)."""

    __slots__ = ("at", "origins")

    def __init__(self, at: float, origin_bit: int) -> None:
        self.at = at
        self.origins = origin_bit


JoinKey = tuple[IPAddress, int | str]


class AttemptJoiner:
    """Tells new attempts from another origin's report of one already counted (see header)."""

    def __init__(self, counters: Counter[str], *, window: float, cap: int) -> None:
        if cap < 1:
            raise ValueError("the join cap must be at least 1")
        self._counters = counters
        self.window = window
        self.cap = cap
        self._slots: OrderedDict[JoinKey, list[_Slot]] = OrderedDict()
        # Origin name -> its bit in _Slot.origins: this joiner's own numbering (no state shared
        # between engines). A handful of origins exist (journal, btmp, authlog, ...): never many.
        self._origin_bits: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def _origin_bit(self, origin: str) -> int:
        bit = self._origin_bits.get(origin)
        if bit is None:
            bit = self._origin_bits[origin] = 1 << len(self._origin_bits)
        return bit

    def forget_before(self, horizon: float) -> None:
        """Drop the least recently used keys whose newest attempt is older than `horizon` (log
        time). The caller passes wall - findtime - window: a report that could still join such
        a key is stale anyway, so forgetting it changes no count that matters, and the table
        stays proportional to recent attacks instead of filling up to its cap (the soak saw
        ~0.9 MiB per 10 minutes of brute force until the cap)."""
        while self._slots:
            key, slots = next(iter(self._slots.items()))
            if slots and max(slot.at for slot in slots) >= horizon:
                return
            del self._slots[key]
            self._counters["failure_joins_expired"] += 1

    def new_attempts(self, source: IPAddress, event: AuthFailed, at: float, count: int) -> int:
        """How many of the `count` attempts this report stands for are new."""
        key: JoinKey = (source, event.pid if event.pid is not None else event.user or "")
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = []
            while len(self._slots) > self.cap:
                self._slots.popitem(last=False)
                self._counters["failure_joins_evicted"] += 1
        else:
            self._slots.move_to_end(key)
        new = 0
        bit = self._origin_bit(event.origin)
        for _ in range(count):
            for slot in slots:
                if not slot.origins & bit and abs(slot.at - at) <= self.window:
                    slot.origins |= bit
                    break
            else:
                slots.append(_Slot(at, bit))
                new += 1
        del slots[:-MAX_SLOTS]
        return new


# ---------------------------------------------------------------------------------------------
# The ban table


class BanTable:
    """Failure windows, offence histories and the bans in force (see the header)."""

    def __init__(
        self,
        policy: BanPolicy,
        trusted: tuple[IPNetwork, ...],
        counters: Counter[str],
        rng: random.Random,
        has_session: SessionProbe,
        *,
        max_sources: int = MAX_FAILURE_SOURCES,
        max_joins: int = MAX_FAILURE_JOINS,
        max_offences: int = MAX_OFFENCES,
    ) -> None:
        if max_sources < 1 or max_offences < 1:
            raise ValueError("the failure and offence caps must be at least 1")
        self._counters = counters
        self._rng = rng
        self._has_session = has_session
        self._max_sources = max_sources
        self._max_offences = max_offences
        self._joiner = AttemptJoiner(counters, window=FAILURE_JOIN_WINDOW, cap=max_joins)
        self._windows: OrderedDict[NetKey, list[float]] = OrderedDict()  # LRU, oldest first
        self._offences: OrderedDict[NetKey, OffenceRecord] = OrderedDict()  # oldest ban first
        self._bans: dict[NetKey, BanView] = {}  # in the order they were made
        self._lengths: dict[int, Counter[int]] = {4: Counter(), 6: Counter()}  # prefixes in use
        # Ban deadlines: a heap of (until, key) with lazy deletion (an entry is live while its
        # ban still has that `until`), so that start-up can build it for 100k bans in one
        # heapify. Stale entries are compacted away like in deadlines.DeadlineQueue.
        self._expiry: list[tuple[float, NetKey]] = []
        self.by_origin: Counter[str] = Counter()
        self.by_rule: Counter[str] = Counter()
        self.policy = policy
        self.trusted = trusted

    @property
    def trusted(self) -> tuple[IPNetwork, ...]:
        return self._trusted

    @trusted.setter
    def trusted(self, networks: tuple[IPNetwork, ...]) -> None:
        self._trusted = networks
        self._shielded = (*LOOPBACK_KEYS, *(net_key(unmap_network(n)) for n in networks))
        # The same, split by IP version: _shield runs for every failure and every adopted ban.
        self._shields: dict[int, tuple[NetKey, ...]] = {
            version: tuple(k for k in self._shielded if k[0] == version) for version in (4, 6)
        }
        # For found(): per (version, prefix length) of a ban, _shield_lookup_for's table.
        self._shield_lookup: dict[tuple[int, int], list[tuple[int, set[int]]]] = {}

    # -- observation ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._bans)

    def __contains__(self, network: IPNetwork) -> bool:
        return net_key(unmap_network(network)) in self._bans

    @property
    def timer_entries(self) -> int:
        return len(self._expiry)

    @property
    def failure_sources(self) -> int:
        """Sources (or IPv6 prefixes) whose failures are being counted (bounded)."""
        return len(self._windows)

    @property
    def join_keys(self) -> int:
        return len(self._joiner)

    @property
    def offence_records(self) -> int:
        return len(self._offences)

    def offence(self, network: IPNetwork) -> OffenceRecord | None:
        return self._offences.get(net_key(unmap_network(network)))

    def next_deadline(self) -> float | None:
        expiry = self._expiry
        while expiry and not self._live_deadline(expiry[0]):
            heapq.heappop(expiry)
        return expiry[0][0] if expiry else None

    def _live_deadline(self, entry: tuple[float, NetKey]) -> bool:
        view = self._bans.get(entry[1])
        return view is not None and view.until == entry[0]

    def views(self) -> tuple[BanView, ...]:
        return tuple(self._bans.values())

    def covering(self, address: IPAddress) -> IPNetwork | None:
        """The ban that covers this address, if any (the longest prefix first)."""
        view = self._covering(address_key(normalize(address)))
        return None if view is None else view.network

    def _covering(self, host: NetKey) -> BanView | None:
        version, bits, value = host
        for length in sorted(self._lengths[version], reverse=True):
            view = self._bans.get((version, length, value >> (bits - length) << (bits - length)))
            if view is not None:
                return view
        return None

    # -- failures ------------------------------------------------------------------------------

    def failed(self, event: AuthFailed, now: float, wall: float) -> list[Action]:
        count = event.attempts
        if count < 1:
            self._counters["unexpected_events"] += 1
            return []
        self._counters["failures_seen"] += count
        self._label(self.by_origin, event.origin, count)
        self._label(self.by_rule, event.rule, count)
        source = normalize(event.source)
        host = address_key(source)
        if self._shield(host) is not None:
            self._counters["failures_trusted"] += count
            return []
        if self._has_session(source):
            self._counters["failures_in_session"] += count
            return []
        at = wall
        if event.wall_time is not None and math.isfinite(event.wall_time):
            at = min(event.wall_time, wall)
        self._joiner.forget_before(wall - self.policy.findtime - self._joiner.window)
        new = self._joiner.new_attempts(source, event, at, count)
        self._counters["failures_joined"] += count - new
        if new == 0:
            return []
        if self._covering(host) is not None:
            self._counters["failures_while_banned"] += new
            return []
        if at < wall - self.policy.findtime:
            self._counters["failures_stale"] += new
            return []
        key = self.counting_key(source)
        if at < self._last_ban_wall(key, host):
            # Older than this source's last ban: read again after a restart (a daemon killed
            # before it saved its positions), it was part of that ban, not of the next.
            self._counters["failures_before_ban"] += new
            return []
        if not self.policy.enabled:
            self._counters["failures_ignored"] += new
            return []
        self._counters["failures_counted"] += new
        return self._count(source, key, at, new, event.rule, now, wall)

    def _last_ban_wall(self, key: NetKey, host: NetKey) -> float:
        """When the source was last banned (-inf: never): as its counting network, or, for an
        IPv6 ban narrowed to the address beside a trusted one or a session, as itself."""
        record = self._offences.get(key)
        last = -math.inf if record is None else record.last_ban_wall
        if host != key:  # (IPv6 only: an IPv4 source counts as itself)
            alone = self._offences.get(host)
            if alone is not None and alone.last_ban_wall > last:
                last = alone.last_ban_wall
        return last

    def counting_key(self, source: IPAddress) -> NetKey:
        """The network a source's failures count for (and that its ban covers)."""
        if isinstance(source, ipaddress.IPv6Address) and source not in LINK_LOCAL6:
            # fe80::/64 is every link-local address of the link: never count it as one source.
            return address_key(source, self.policy.ipv6_prefix)
        return address_key(source)

    def _count(
        self,
        source: IPAddress,
        key: NetKey,
        at: float,
        new: int,
        rule: str,
        now: float,
        wall: float,
    ) -> list[Action]:
        """`key`: counting_key(source), the window's and the ban's network."""
        floor = wall - self.policy.findtime
        times = [t for t in self._windows.pop(key, ()) if t >= floor]
        for _ in range(min(new, self.policy.maxretry)):
            bisect.insort(times, at)
        if len(times) >= self.policy.maxretry:
            return self._ban_for(source, key, len(times), rule, now, wall)
        self._windows[key] = times
        while len(self._windows) > self._max_sources:
            self._windows.popitem(last=False)
            self._counters["failure_sources_evicted"] += 1
        return []

    def _ban_for(
        self, source: IPAddress, key: NetKey, seen: int, rule: str, now: float, wall: float
    ) -> list[Action]:
        target = key
        if self._shield(key) is not None or self._has_session(key_network(key)):
            target = address_key(source)
            if target == key:  # the address itself was shielded when it failed: cannot happen
                raise AssertionError(f"counted failures of a shielded source {source}")
            if self._shield(target) is not None:
                self._counters["bans_spared"] += 1
                return []
            self._counters["bans_narrowed"] += 1
        network = key_network(target)
        offence = self._next_offence(target, wall)
        timeout = self._escalated(offence)
        reason = f"{seen} failures within {format_duration(self.policy.findtime)} (last: {rule})"
        self._counters["bans"] += 1
        actions = self._impose(network, timeout, reason, offence, now, wall)
        detail = f"{network} for {_duration(timeout)}, offence {offence}: {reason}"
        return [*actions, Notice("ban", source, detail=detail)]

    # -- the operator ------------------------------------------------------------------------

    def requested(self, event: BanRequested, now: float, wall: float) -> list[Action]:
        network = unmap_network(event.network)
        key = net_key(network)
        duration = event.duration
        if duration is not None and not (duration > 0 and math.isfinite(duration)):
            self._counters["unexpected_events"] += 1
            return [self._refused(network, f"the duration must be positive, not {duration!r}")]
        shield = self._shield(key)
        if shield is not None:
            return [self._refused(network, f"it covers {key_network(shield)}: never banned")]
        conflict = self._interval_conflict(network, key)
        if conflict is not None:
            return [self._refused(network, f"it overlaps the ban of {conflict}: unban that first")]
        if self._has_session(network):
            self._counters["bans_of_sessions"] += 1  # the operator's call (an intruder, say)
        offence = self._next_offence(key, wall)
        timeout = self._escalated(offence) if duration is None else min(duration, MAX_BAN_TIME)
        self._counters["bans_operator"] += 1
        actions = self._impose(network, timeout, event.reason, offence, now, wall)
        detail = f"{network} for {_duration(timeout)}, offence {offence}: {event.reason}"
        return [*actions, Notice("ban", _notice_source(network), detail=detail)]

    def unban_requested(self, event: UnbanRequested) -> list[Action]:
        network = unmap_network(event.network)
        key = net_key(network)
        actions: list[Action] = []
        hits = [k for k in self._bans if keys_overlap(k, key)]
        for hit in hits:
            actions.append(Unban(self._bans[hit].network, "operator"))
            self._lift(hit)
            self._counters["unbans"] += 1
        for window in [k for k in self._windows if keys_overlap(k, key)]:
            del self._windows[window]
        if event.forget:
            for known in [k for k in self._offences if keys_overlap(k, key)]:
                record = self._offences.pop(known)
                self._counters["offences_forgotten"] += 1
                actions.append(RecordOffence(record.network, 0, 0.0))
        forgot = ", offence history forgotten" if event.forget else ""
        if hits:
            lifted = ", ".join(str(a.network) for a in actions if isinstance(a, Unban))
            detail = f"{lifted} lifted by the operator{forgot}"
        else:
            detail = f"{network} was not banned{forgot}"
        return [*actions, Notice("unban", _notice_source(network), detail=detail)]

    # -- start-up ------------------------------------------------------------------------------

    def found(self, events: Iterable[BanFound], now: float, wall: float) -> list[Action]:
        """Bans already in the kernel: track each as it is (lift those that cover trusted).

        Start-up feeds 100k of these at once, so the loop is written for speed."""
        actions: list[Action] = []
        bans, offences, lengths = self._bans, self._offences, self._lengths
        lookups, shield_lookup = self._shield_lookup, self._shield_lookup_for
        new, view = tuple.__new__, BanView
        deadlines: list[tuple[float, NetKey]] = []
        adopted = 0
        for event in events:
            network = event.network
            if isinstance(network, ipaddress.IPv6Network):
                network = unmap_network(network)
            version, length = network.version, network.prefixlen
            value = int(network.network_address)
            key = (version, length, value)
            expires_in = event.expires_in
            if expires_in is not None and not (expires_in >= 0 and math.isfinite(expires_in)):
                self._counters["unexpected_events"] += 1
                expires_in = 0.0
            shielded = None  # self._shield(key), as lookups (the first hit asks it which one)
            lookup = lookups.get((version, length))
            if lookup is None:  # (an empty list is a valid table: no shields of that version)
                lookup = shield_lookup(version, length)
            for shift, targets in lookup:
                if value >> shift in targets:
                    shielded = self._shield(key)
                    break
            if shielded is not None:
                actions += self._lift_shielded(key, network, shielded)
                continue
            record = offences.get(key)
            found = event.offence
            if record is None or (found is not None and found > record.offences):
                # The store missed this ban: see _restore_offence
                since, offence = now, found or 1
                actions.append(self._restore_offence(key, network, wall, offence))
            else:
                since, offence = now - max(0.0, wall - record.last_ban_wall), record.offences
            if key in bans:
                self._lift(key)  # found twice: the later listing wins
            lengths[key[0]][key[1]] += 1
            if expires_in is None:
                bans[key] = new(view, (network, REASON_ADOPTED, since, None, offence))
            else:
                until = now + expires_in
                bans[key] = new(view, (network, REASON_ADOPTED, since, until, offence))
                deadlines.append((until, key))
            adopted += 1
        self._counters["bans_adopted"] += adopted
        actions += self._trim_offences()
        if len(deadlines) > 64:
            self._expiry += deadlines
            heapq.heapify(self._expiry)
        else:
            for entry in deadlines:
                heapq.heappush(self._expiry, entry)
        self._compact_expiry()
        return actions

    def _restore_offence(
        self, key: NetKey, network: IPNetwork, wall: float, offence: int
    ) -> RecordOffence:
        """An adopted ban the offence history does not know: the daemon that banned it died
        between the kernel's commit and the store's (the kernel goes first, daemon._apply), or
        the store was lost. Its element's comment says which offence it was (nft_rules.py); with
        no comment of ours, it is offence 1. Either way the history catches up (as of now), or
        that source's next ban would repeat this one's length instead of escalating."""
        self._offences[key] = OffenceRecord(network, offence, wall)
        self._counters["offences_restored"] += 1
        return RecordOffence(network, offence, wall)

    def _lift_shielded(self, key: NetKey, network: IPNetwork, shield: NetKey) -> list[Action]:
        """A ban found in the kernel covers loopback or trusted addresses: lift it."""
        if key in self._bans:
            self._lift(key)
        self._counters["bans_lifted"] += 1
        detail = f"{network} found in the kernel covers {key_network(shield)}: lifted"
        return [
            Unban(network, REASON_TRUSTED),
            Notice("unban", _notice_source(network), detail=detail),
        ]

    def loaded(self, event: OffencesLoaded, wall: float) -> list[Action]:
        """The persisted offence histories; stale ones are forgotten (deleted from the store)."""
        actions: list[Action] = []
        for record in sorted(event.records, key=lambda r: r.last_ban_wall):
            network = unmap_network(record.network)
            if record.offences < 1:
                self._counters["unexpected_events"] += 1
                continue
            if wall - record.last_ban_wall > OFFENCE_MEMORY:
                self._counters["offences_forgotten"] += 1
                actions.append(RecordOffence(network, 0, record.last_ban_wall))
                continue
            key = net_key(network)
            self._offences.pop(key, None)
            self._offences[key] = OffenceRecord(network, record.offences, record.last_ban_wall)
            self._counters["offences_loaded"] += 1
        return actions + self._trim_offences()

    def reconfigure(self, policy: BanPolicy, trusted: tuple[IPNetwork, ...]) -> list[Action]:
        """New [ban] and trusted networks: bans now covering trusted addresses are lifted."""
        if policy.ipv6_prefix != self.policy.ipv6_prefix:
            self._windows.clear()  # IPv6 windows were keyed by the old prefix
        self.policy = policy
        self.trusted = trusted
        actions: list[Action] = []
        for key in [k for k in self._bans if self._shield(k) is not None]:
            network = self._bans[key].network
            self._lift(key)
            self._counters["bans_lifted"] += 1
            actions += [
                Unban(network, REASON_TRUSTED),
                Notice("unban", _notice_source(network), detail=f"{network} is trusted now"),
            ]
        return actions

    # -- time ----------------------------------------------------------------------------------

    def expire_next(self, now: float) -> list[Action] | None:
        """Forget the earliest ban whose time is up (the kernel has dropped it by itself)."""
        until = self.next_deadline()
        if until is None or until > now:
            return None
        _, key = heapq.heappop(self._expiry)
        view = self._bans.get(key)
        if view is None:
            raise AssertionError(f"ban deadline without a ban: {key}")
        self._forget(key)
        self._counters["bans_expired"] += 1
        detail = f"{view.network} expired after {_duration(now - view.since)}"
        return [
            Notice(
                "unban", _notice_source(view.network), detail=f"{detail}, offence {view.offence}"
            )
        ]

    # -- internals -----------------------------------------------------------------------------

    def _shield_lookup_for(self, version: int, length: int) -> list[tuple[int, set[int]]]:
        """found()'s form of _shield for bans of one version and prefix length (memoised until
        the trusted networks change): the shields' values grouped by the shift _shield would
        use, so a ban is checked with a set lookup per distinct shift."""
        by_shift: dict[int, set[int]] = {}
        bits = _BITS[version]
        for shielded in self._shields[version]:
            shift = bits - min(length, shielded[1])
            by_shift.setdefault(shift, set()).add(shielded[2] >> shift)
        lookup = self._shield_lookup[(version, length)] = sorted(by_shift.items())
        return lookup

    def _shield(self, key: NetKey) -> NetKey | None:
        """The loopback or trusted network this one overlaps, if any (keys_overlap, inlined)."""
        version, length, value = key
        bits = _BITS[version]
        for shielded in self._shields[version]:
            shift = bits - min(length, shielded[1])
            if shielded[2] >> shift == value >> shift:
                return shielded
        return None

    def _interval_conflict(self, network: IPNetwork, key: NetKey) -> IPNetwork | None:
        prefix = self.policy.ipv6_prefix
        if not uses_interval_set(network, prefix):
            return None
        for banned, view in self._bans.items():
            if (
                banned != key
                and keys_overlap(banned, key)
                and uses_interval_set(view.network, prefix)
            ):
                return view.network
        return None

    def _next_offence(self, key: NetKey, wall: float) -> int:
        record = self._offences.get(key)
        if record is None or wall - record.last_ban_wall > OFFENCE_MEMORY:
            return 1
        return record.offences + 1

    def _escalated(self, offence: int) -> float:
        policy = self.policy
        steps = offence - 1
        seconds = policy.bantime
        if steps > 0 and policy.factor > 1:
            # Compare in logs first: factor ** steps overflows a float long before it matters.
            if steps * math.log(policy.factor) >= math.log(policy.maxtime / policy.bantime):
                seconds = policy.maxtime
            else:
                seconds = min(policy.bantime * policy.factor**steps, policy.maxtime)
        if policy.jitter > 0:
            seconds += self._rng.uniform(0.0, policy.jitter)
        return min(seconds, MAX_BAN_TIME)

    def _impose(
        self,
        network: IPNetwork,
        timeout: float,
        reason: str,
        offence: int,
        now: float,
        wall: float,
    ) -> list[Action]:
        key = net_key(network)
        self._windows.pop(key, None)
        self._track(key, BanView(network, reason, now, now + timeout, offence))
        self._offences.pop(key, None)
        self._offences[key] = OffenceRecord(network, offence, wall)
        return [
            Ban(network, timeout, reason, offence),
            RecordOffence(network, offence, wall),
            *self._trim_offences(),
        ]

    def _trim_offences(self) -> list[Action]:
        actions: list[Action] = []
        while len(self._offences) > self._max_offences:
            _, oldest = self._offences.popitem(last=False)
            self._counters["offences_forgotten"] += 1
            actions.append(RecordOffence(oldest.network, 0, oldest.last_ban_wall))
        return actions

    def _track(self, key: NetKey, view: BanView) -> None:
        if key not in self._bans:
            self._lengths[key[0]][key[1]] += 1
        self._bans[key] = view
        if view.until is not None:
            heapq.heappush(self._expiry, (view.until, key))
        self._compact_expiry()

    def _lift(self, key: NetKey) -> None:
        self._forget(key)  # its heap entry turns stale

    def _forget(self, key: NetKey) -> None:
        del self._bans[key]
        lengths = self._lengths[key[0]]
        lengths[key[1]] -= 1
        if lengths[key[1]] <= 0:
            del lengths[key[1]]
        self._compact_expiry()

    def _compact_expiry(self) -> None:
        """Rebuild the heap once stale entries outnumber the live ones (plus some slack)."""
        if len(self._expiry) > 2 * len(self._bans) + 64:
            self._expiry = [(v.until, k) for k, v in self._bans.items() if v.until is not None]
            heapq.heapify(self._expiry)

    def _refused(self, network: IPNetwork, why: str) -> Notice:
        self._counters["bans_refused"] += 1
        return Notice("ban_refused", _notice_source(network), detail=f"{network}: {why}")

    def _label(self, counter: Counter[str], name: str, count: int) -> None:
        if name not in counter and len(counter) >= MAX_LABELS:
            name = "other"
        counter[name] += count


def _notice_source(network: IPNetwork) -> IPAddress | None:
    """A notice names an address: the network's own when it is one address, else none (the
    detail names the network)."""
    return network.network_address if network.num_addresses == 1 else None


def _duration(seconds: float) -> str:
    return format_duration(round(seconds)) if seconds >= 1 else format_duration(seconds)
