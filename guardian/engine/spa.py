# SPA policy: one captured datagram -> accepted (which address gets access, for how long) or
# refused (one stable reason, a detail for the operator). Pure: the wall clock is an argument, and
# the replay cache lives here so a test can drive it packet by packet. The wire format and the
# crypto are guardian/parsers/spa.py's; this module decides what an authentic packet may do.
#
# Order of checks (spec/fwknop-spa.md "Server checks", with fwknopd's weaknesses fixed):
#   1. cheap wire checks (alphabet, length) before any crypto: garbage costs microseconds;
#   2. stanzas whose `source` covers the packet's source, in file order; each tries HMAC first,
#      then decryption and the digest (decode()); the first that authenticates wins;
#   3. replay: keyed on the decrypted plaintext (SpaMessage.canonical), not on the wire text, so
#      re-encoding tricks (the low-bit flip of the last base64 character) do not make a packet new.
#      An authentic packet enters the cache even when policy then refuses it (as fwknopd does):
#      a refused packet stays refused when replayed. Entries expire at max(client time, now) +
#      max_age + SPA_REPLAY_MARGIN; after that the age check refuses the packet anyway. They are
#      persisted (RecordSpaReplay) and loaded back at start-up (SpaReplaysLoaded). An exact
#      replay (the same wire bytes) is also caught before any crypto, by a digest of the wire text
#      kept beside the canonical one: a flood of one sniffed packet costs a hash, not an HMAC and
#      a decryption per copy (not persisted: after a restart the canonical digest still catches it).
#   4. policy: stanza expiry, message type (1 access, 3 access with client timeout; command and
#      NAT types refused by name), age in both directions with the measured skew, allow-IP
#      (0.0.0.0 = the packet's source, IPv6 included; refused when require_source_address),
#      username, open_ports / restrict_ports, and every requested TCP port must be guarded (a
#      grant opens the guarded ports; SPA cannot open a port the gate does not hold).
# Refusals never ban: a datagram's source address is spoofable (issue 4's rule for knocks too).
from __future__ import annotations

import hashlib
import heapq
import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from guardian.addresses import IPAddress, in_any, normalize
from guardian.config import (
    MAX_SPA_REPLAYS,
    SPA_REPLAY_MARGIN,
    Spa,
    SpaStanza,
    format_duration,
)
from guardian.parsers.spa import SpaError, SpaKey, SpaMessage, check_wire, decode

ACCESS_TYPES = frozenset({1, 3})  # access, access with client timeout
TYPE_NAMES = {
    0: "command (type 0)",
    2: "NAT access (type 2)",
    4: "NAT access with timeout (type 4)",
    5: "local NAT access (type 5)",
    6: "local NAT access with timeout (type 6)",
}
# fwknop's `-s`: "grant the address this packet comes from" (a message field, not a bind).
ANY_SOURCE = "0.0.0.0"  # noqa: S104

# Stable refusal reasons (the `reason` of SpaRefused; counted per reason in the snapshot).
REFUSAL_REASONS: tuple[str, ...] = (
    "wire",  # not an SPA packet at all (alphabet, length)
    "no_stanza",  # no stanza's source covers the packet's source
    "not_authentic",  # no stanza's keys authenticate it (HMAC, decryption or digest failed)
    "replay",  # seen before (canonical data), also across restarts
    "expired_stanza",  # the stanza's `expires` has passed
    "message_type",  # command or NAT messages: not supported
    "too_old",  # client time more than max_age behind ours
    "from_future",  # client time more than max_age ahead of ours
    "source_required",  # 0.0.0.0 while the stanza requires an explicit address
    "bad_address",  # the allow-IP cannot be granted (multicast, unspecified, loopback...)
    "username",  # require_username does not match
    "port_not_allowed",  # a requested port is not in open_ports, or is in restrict_ports
    "port_not_guarded",  # a requested port is not a guarded TCP port
    "banned_address",  # the allow-IP is banned (decided by the engine, which holds the bans)
)


@dataclass(frozen=True, slots=True)
class SpaAccepted:
    """An authentic, fresh packet within policy: `address` gets a grant for `window` seconds."""

    stanza: str
    address: IPAddress
    window: float
    message: SpaMessage
    skew: float  # our wall clock minus the client's, seconds (positive: the client is behind)


@dataclass(frozen=True, slots=True)
class SpaRefused:
    """A refused packet: `reason` is one of REFUSAL_REASONS; `stanza` is "" before one matched."""

    reason: str
    stanza: str
    detail: str


SpaVerdict = SpaAccepted | SpaRefused
Replay = tuple[bytes, float] | None  # (canonical digest, wall-clock expiry) of a new cache entry


def spa_key(stanza: SpaStanza) -> SpaKey:
    """The decoder's key material for a stanza (the config's "none" is the decoder's too)."""
    return SpaKey(stanza.key, stanza.hmac_key, stanza.hmac, stanza.legacy)


class ReplayCache:
    """Canonical digests of authentic packets until their expiry (wall clock), bounded: over the
    cap the entry closest to expiry goes first (counted by the caller via `evicted`)."""

    def __init__(self, cap: int = MAX_SPA_REPLAYS) -> None:
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._cap = cap
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._expiry

    def add(self, digest: bytes, expires: float) -> None:
        self._expiry[digest] = max(expires, self._expiry.get(digest, expires))
        heapq.heappush(self._heap, (expires, digest))
        while len(self._expiry) > self._cap:
            self._pop()
            self.evicted += 1

    def prune(self, wall: float) -> None:
        """Forget the digests whose expiry has passed."""
        while self._heap and self._heap[0][0] <= wall:
            self._pop()

    def entries(self) -> list[tuple[bytes, float]]:
        return sorted(self._expiry.items(), key=lambda item: item[1])

    def _pop(self) -> None:
        expires, digest = heapq.heappop(self._heap)
        if self._expiry.get(digest) == expires:
            del self._expiry[digest]


class SpaGate:
    """The [spa] policy with its replay cache. judge() once per captured datagram."""

    def __init__(
        self,
        spa: Spa,
        guarded_ports: Iterable[int],
        *,
        max_replays: int = MAX_SPA_REPLAYS,
    ) -> None:
        self.replays = ReplayCache(max_replays)
        self.refusals: Counter[str] = Counter()  # refusals per reason (the snapshot's)
        self.reconfigure(spa, guarded_ports)

    def reconfigure(self, spa: Spa, guarded_ports: Iterable[int]) -> None:
        """New stanzas and ports; the replay cache stays (a reload never makes old packets new)."""
        self.spa = spa
        self.guarded = frozenset(guarded_ports)
        self._keys = {stanza.name: spa_key(stanza) for stanza in spa.stanzas}

    def load(self, entries: Iterable[tuple[bytes, float]], wall: float) -> int:
        """Start-up: the persisted digests; returns how many were still current."""
        loaded = 0
        for digest, expires in entries:
            if expires > wall:
                self.replays.add(digest, expires)
                loaded += 1
        return loaded

    def judge(self, source: IPAddress, payload: bytes, wall: float) -> tuple[SpaVerdict, Replay]:
        """The verdict on one datagram, and the new replay entry (digest, wall expiry) to
        persist, if the packet was authentic and new (accepted or not)."""
        self.replays.prune(wall)
        try:
            check_wire(payload)
        except SpaError as error:
            return self._refuse("wire", "", str(error)), None
        wire = hashlib.sha256(payload).digest()
        if wire in self.replays:
            return self._refuse("replay", "", "this packet was seen before"), None
        source = normalize(source)
        candidates = [s for s in self.spa.stanzas if not s.source or in_any(source, s.source)]
        if not candidates:
            return self._refuse("no_stanza", "", f"no stanza's source covers {source}"), None
        failures: list[str] = []
        for stanza in candidates:
            try:
                message = decode(payload, self._keys[stanza.name])
            except SpaError as error:
                failures.append(f"{stanza.name}: {error.reason}")
                continue
            return self._authentic(stanza, message, source, wall, wire)
        stanza_name = candidates[0].name if len(candidates) == 1 else ""
        return self._refuse("not_authentic", stanza_name, "; ".join(failures)), None

    # -- after authentication ---------------------------------------------------------------------

    def _authentic(
        self, stanza: SpaStanza, message: SpaMessage, source: IPAddress, wall: float, wire: bytes
    ) -> tuple[SpaVerdict, Replay]:
        expires = max(float(message.timestamp), wall) + self.spa.max_age + SPA_REPLAY_MARGIN
        self.replays.add(wire, expires)
        if message.canonical in self.replays:
            return self._refuse("replay", stanza.name, "this packet was seen before"), None
        self.replays.add(message.canonical, expires)
        return self._policy(stanza, message, source, wall), (message.canonical, expires)

    def _policy(
        self, stanza: SpaStanza, message: SpaMessage, source: IPAddress, wall: float
    ) -> SpaVerdict:
        name = stanza.name
        if stanza.expires is not None and wall >= stanza.expires:
            return self._refuse("expired_stanza", name, "the stanza has expired")
        if message.message_type not in ACCESS_TYPES:
            kind = TYPE_NAMES.get(message.message_type, f"type {message.message_type}")
            return self._refuse("message_type", name, f"{kind} messages are not supported")
        skew = wall - message.timestamp
        if abs(skew) > self.spa.max_age:
            reason = "too_old" if skew > 0 else "from_future"
            side = "behind" if skew > 0 else "ahead of"
            size = format_duration(float(round(abs(skew))))
            return self._refuse(
                reason,
                name,
                f"clock skew: the client's clock is {size} {side} ours "
                f"(max_age {format_duration(self.spa.max_age)})",
            )
        address = self._address(stanza, message, source)
        if isinstance(address, SpaRefused):
            return address
        if stanza.require_username is not None and message.username != stanza.require_username:
            return self._refuse("username", name, f"username {message.username!r} is not allowed")
        refused = self._ports(stanza, message)
        if refused is not None:
            return refused
        window = stanza.access_timeout
        if message.message_type == 3 and message.client_timeout:
            window = float(min(message.client_timeout, stanza.max_timeout))
        return SpaAccepted(name, address, window, message, skew)

    def _address(
        self, stanza: SpaStanza, message: SpaMessage, source: IPAddress
    ) -> IPAddress | SpaRefused:
        if message.allow_ip == ANY_SOURCE:
            if stanza.require_source_address:
                return self._refuse(
                    "source_required", stanza.name, "0.0.0.0 while the stanza requires an address"
                )
            return source  # an IPv6 packet grants its IPv6 source (fwknop cannot say IPv6)
        try:
            address = normalize(ipaddress.ip_address(message.allow_ip))
        except ValueError:
            return self._refuse("bad_address", stanza.name, f"allow-IP {message.allow_ip!r}")
        if address.is_multicast or address.is_unspecified or address.is_loopback:
            return self._refuse("bad_address", stanza.name, f"allow-IP {address} cannot be granted")
        return address

    def _ports(self, stanza: SpaStanza, message: SpaMessage) -> SpaRefused | None:
        for proto, port in message.access:
            spec = f"{proto}/{port}"
            if (proto, port) not in stanza.open_ports or (proto, port) in stanza.restrict_ports:
                return self._refuse("port_not_allowed", stanza.name, f"{spec} is not allowed")
            if proto != "tcp" or port not in self.guarded:
                return self._refuse("port_not_guarded", stanza.name, f"{spec} is not guarded")
        if not message.access:
            return self._refuse("port_not_allowed", stanza.name, "no port requested")
        return None

    def _refuse(self, reason: str, stanza: str, detail: str) -> SpaRefused:
        self.refusals[reason] += 1
        return SpaRefused(reason, stanza, detail)
