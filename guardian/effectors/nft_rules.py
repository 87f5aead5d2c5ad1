# nftables commands as data: pure functions that build the libnftables JSON for the guardian's own
# table `inet guardian` (the gate, the trusted sets, the grant sets, the ban sets) and for grants,
# revokes, bans and unbans.
# No I/O and no nftables import: guardian/effectors/nft.py applies what is built here, one
# transaction per call, and tests compare it with golden files (tests/data/nft/).
#
# Facts this relies on (spec/platform.md, re-checked on nftables 1.0.6, kernels 6.1/6.18):
# - `add table|set|chain` are idempotent for an unchanged definition; `flush chain`/`flush set`
#   followed by adds in the same transaction replace contents atomically.
# - JSON element timeouts are whole seconds. A fractional value (1.5) is silently read as 0, and 0
#   means "no timeout": the element would become permanent. Hence kernel_timeout() below.
# - `delete element` of a missing element fails the whole transaction (ENOENT); `add` of an
#   existing one does not. So "add; delete" removes an element whether or not it exists, and the
#   refresh is "add; delete; add with timeout" (re-adding alone does not reset expiry on every
#   kernel).
# - An interval set rejects overlapping elements within one transaction: trusted networks are
#   collapsed first.
#
# Bans (verified on nftables 1.0.6, kernel 6.18, tests/test_nft_bans_lab.py):
# - Sets: ban4 (single IPv4 addresses) and ban6_<P> (IPv6 prefixes of [ban] ipv6_prefix = P, kept
#   as their network address and matched with `ip6 saddr & <mask of P>`) are hash sets with
#   timeouts; bannet4 / bannet6 (every other network: operator bans, an IPv6 address banned alone)
#   are interval sets with timeouts. Why not interval sets for all: the kernel dumps an interval
#   set in quadratic time (100k elements: 0.65 s in the kernel alone, 7.5 s to insert them), a hash
#   set in linear time (0.16 s, 0.75 s to insert), and adopting 100k bans must take under a
#   second. Hash sets also never refuse an "overlap". engine/bans.py's uses_interval_set() is the
#   routing rule; both sides use it.
# - Interval sets with timeouts take JSON elements like {"elem": {"val": {"prefix": {"addr":
#   "2001:db8::", "len": 48}}, "timeout": 600}}; the refresh "add; delete; add with timeout" works
#   there too, also on an element that has just expired. An element overlapping another one is
#   refused ("interval overlaps with an existing one"), by nft itself, even when the same
#   transaction deletes the other first: the engine never asks for that.
# - Ban rules come right after `iif lo accept`, before `ct state established,related accept`, so
#   a new ban also cuts the source's open connections. Traffic on lo never comes from outside (a
#   banned source cannot arrive there), and the host's own addresses must stay reachable locally
#   whatever was banned. [ban] scope = "guarded" limits them to the guarded TCP ports.
# - The set name carries P: after ipv6_prefix changes, NftEffector.install moves the old set's
#   prefixes into bannet6 (with the time they had left) and deletes it (ban6_migration_commands).
# - A repeat offender's ban element carries its offence number as its comment ("offence 3";
#   NFTA_SET_ELEM_USERDATA). Why: the daemon commits a ban to the kernel before it commits the
#   offence to the state store (a ban must not wait for a disk write), so a daemon killed between
#   the two would otherwise lose that escalation step; adoption reads the number back
#   (offence_from_comment) and the store catches up. A first offence has no comment: an element
#   without one (or with one not ours, a ban added by hand) is adopted as offence 1 when the store
#   does not know it, which is what it was. A comment is 16-20 bytes more per element in the
#   kernel's dump, which restarts its walk of the set at every 32 KiB datagram: with a comment on
#   every element, adopting 100k bans took ~16 % longer, with repeat offences' only ~10 %
#   (bench/adopt_comments_ab.py); so it is only written where it says something.
#
# Everyone doors (verified on nftables 1.0.6, tests/test_lab_everyone.py): set `everyone` (type
# inet_service, flags timeout) holds the guarded ports while an open_to = "everyone" door is open,
# each with the window as its kernel timeout, and the rule `tcp dport @everyone accept` follows
# the grant rules. So the kernel closes it by itself at the window's end, whatever the daemon
# does; a restarted daemon reads the time left (never extends it); ban rules come first, so bans
# still apply; `ct state established` comes first too, so sessions started meanwhile go on.
from __future__ import annotations

import copy
import ipaddress
import math
from collections.abc import Sequence
from typing import Any, TypeAlias, assert_never

from guardian.actions import (
    Action,
    Ban,
    CloseEveryone,
    Notice,
    OpenEveryone,
    OpenGrant,
    RecordOffence,
    RecordSpaReplay,
    RefreshGrant,
    RevokeGrant,
    Unban,
)
from guardian.addresses import IPAddress, IPNetwork, normalize
from guardian.config import DEFAULT_IPV6_PREFIX, DEFAULT_PORTS, MAX_BAN_TIME, TABLE_NAME, Config
from guardian.engine.bans import unmap_network, uses_interval_set

# One libnftables JSON command object, e.g. {"add": {"element": {...}}}.
Command: TypeAlias = dict[str, Any]

FAMILY = "inet"
ALLOW4 = "allow4"  # grants, IPv4 sources, per-element kernel timeouts
ALLOW6 = "allow6"  # grants, IPv6 sources
TRUSTED4 = "trusted4"  # config.guard.trusted, IPv4 networks (interval set)
TRUSTED6 = "trusted6"  # config.guard.trusted, IPv6 networks
BAN4 = "ban4"  # banned IPv4 addresses (hash, timeouts)
BAN6_PREFIX = "ban6_"  # + [ban] ipv6_prefix: banned IPv6 prefixes of that length (hash, timeouts)
BANNET4 = "bannet4"  # banned IPv4 networks (interval, timeouts)
BANNET6 = "bannet6"  # banned IPv6 networks of any other length (interval, timeouts)
EVERYONE = "everyone"  # guarded ports open to every source (an everyone door; timeouts)
CHAIN = "input"
# Ahead of the usual `filter` priority (0) so the gate is decided before a host firewall's
# input chain; an accept here does not override a drop there (spec/platform.md).
CHAIN_PRIORITY = -10
JSON_SCHEMA_VERSION = 1


def kernel_timeout(seconds: float) -> int:
    """Seconds as nftables JSON takes them: whole, rounded up, at least 1 (0 would be permanent),
    at most MAX_BAN_TIME (nft refuses much longer timeouts)."""
    if not math.isfinite(seconds):
        raise ValueError(f"a timeout must be a finite number of seconds, not {seconds!r}")
    return min(max(1, math.ceil(seconds)), int(MAX_BAN_TIME))


def ban6_set(ipv6_prefix: int) -> str:
    """The hash set of banned IPv6 prefixes of this length."""
    return f"{BAN6_PREFIX}{ipv6_prefix}"


def ban6_prefix_of(set_name: str) -> int | None:
    """The prefix length a ban6_<P> set holds, None for any other name."""
    digits = set_name.removeprefix(BAN6_PREFIX)
    if digits == set_name or not digits.isdigit() or not 0 < int(digits) <= 128:
        return None
    return int(digits)


def allow_set_for(source: IPAddress) -> str:
    """The grant set that holds this source (v4-mapped IPv6 counts as IPv4)."""
    return ALLOW4 if normalize(source).version == 4 else ALLOW6


def transaction(commands: Sequence[Command]) -> dict[str, Any]:
    """The JSON document libnftables runs as one transaction (also what `nft -j -f` reads)."""
    return {"nftables": [{"metainfo": {"json_schema_version": JSON_SCHEMA_VERSION}}, *commands]}


# ---------------------------------------------------------------------------------------------
# The table


def install_commands(config: Config) -> list[Command]:
    """One transaction that installs, or re-installs in place, table inet guardian.

    Grants (allow4/allow6 elements) and bans survive a re-install; the trusted sets and the chain
    are emptied and refilled in the same transaction, so a config change lands all at once."""
    commands: list[Command] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE_NAME}}},
        _add_set(ALLOW4, "ipv4_addr", "timeout"),
        _add_set(ALLOW6, "ipv6_addr", "timeout"),
        _add_set(TRUSTED4, "ipv4_addr", "interval"),
        _add_set(TRUSTED6, "ipv6_addr", "interval"),
        _add_set(BAN4, "ipv4_addr", "timeout"),
        _add_set(ban6_set(config.ban.ipv6_prefix), "ipv6_addr", "timeout"),
        _add_set(BANNET4, "ipv4_addr", "interval", "timeout"),
        _add_set(BANNET6, "ipv6_addr", "interval", "timeout"),
        _add_set(EVERYONE, "inet_service", "timeout"),
        {
            "add": {
                "chain": {
                    "family": FAMILY,
                    "table": TABLE_NAME,
                    "name": CHAIN,
                    "type": "filter",
                    "hook": "input",
                    "prio": CHAIN_PRIORITY,
                    "policy": "accept",
                }
            }
        },
        {"flush": {"chain": {"family": FAMILY, "table": TABLE_NAME, "name": CHAIN}}},
        {"flush": {"set": {"family": FAMILY, "table": TABLE_NAME, "name": TRUSTED4}}},
        {"flush": {"set": {"family": FAMILY, "table": TABLE_NAME, "name": TRUSTED6}}},
    ]
    trusted = config.guard.trusted
    v4 = [n for n in trusted if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in trusted if isinstance(n, ipaddress.IPv6Network)]
    commands += _trusted_elements(TRUSTED4, list(ipaddress.collapse_addresses(v4)))
    commands += _trusted_elements(TRUSTED6, list(ipaddress.collapse_addresses(v6)))
    commands += [_rule(r) for r in _chain_rules(config)]
    return commands


def remove_table_commands() -> list[Command]:
    """Remove table inet guardian; succeeds whether or not it exists (add first, then delete)."""
    table = {"family": FAMILY, "name": TABLE_NAME}
    return [{"add": {"table": dict(table)}}, {"delete": {"table": dict(table)}}]


def _add_set(name: str, key_type: str, *flags: str) -> Command:
    return {
        "add": {
            "set": {
                "family": FAMILY,
                "table": TABLE_NAME,
                "name": name,
                "type": key_type,
                "flags": list(flags),
            }
        }
    }


def _trusted_elements(name: str, collapsed: Sequence[IPNetwork]) -> list[Command]:
    """Fill a trusted set; `collapsed` must not overlap (nft rejects overlaps in one batch)."""
    if not collapsed:
        return []  # an empty "elem" list is a parse error in libnftables
    elements = [
        {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}} for net in collapsed
    ]
    return [_element_command("add", name, elements)]


def _chain_rules(config: Config) -> list[list[dict[str, Any]]]:
    """The statements of every rule of chain input, in order."""
    ports = sorted(set(config.guard.ports))
    rules: list[list[dict[str, Any]]] = [
        # Local connections (the operator's own ssh to localhost, tunnels) are never gated.
        [_match({"meta": {"key": "iif"}}, "lo"), {"accept": None}],
        # Banned sources next: before anything else from outside, open connections included.
        *_ban_rules(config, ports),
        # Sessions already let in go on whatever happens to grants later.
        [_match({"ct": {"key": "state"}}, ["established", "related"], op="in"), {"accept": None}],
    ]
    if not ports:
        return rules
    gate: list[dict[str, Any]] = []
    interfaces = sorted(set(config.guard.interfaces))
    if interfaces:
        gate.append(_match({"meta": {"key": "iifname"}}, {"set": interfaces}))
    gate.append(_match(_payload("tcp", "dport"), {"set": ports}))
    rules += [
        [*gate, _match(_payload("ip", "saddr"), f"@{TRUSTED4}"), {"accept": None}],
        [*gate, _match(_payload("ip6", "saddr"), f"@{TRUSTED6}"), {"accept": None}],
        [*gate, _match(_payload("ip", "saddr"), f"@{ALLOW4}"), {"accept": None}],
        [*gate, _match(_payload("ip6", "saddr"), f"@{ALLOW6}"), {"accept": None}],
        # An everyone door: its set holds the guarded ports while the window lasts.
        [*gate[:-1], _match(_payload("tcp", "dport"), f"@{EVERYONE}"), {"accept": None}],
    ]
    # "reset" answers exactly like a closed port; "drop" like a filtered one.
    answer: dict[str, Any] = (
        {"reject": {"type": "tcp reset"}} if config.guard.answer == "reset" else {"drop": None}
    )
    rules.append([*gate, answer])
    return rules


def _ban_rules(config: Config, ports: list[int]) -> list[list[dict[str, Any]]]:
    scope: list[dict[str, Any]] = []
    if config.ban.scope == "guarded":
        if not ports:
            return []
        scope = [_match(_payload("tcp", "dport"), {"set": ports})]
    prefix = config.ban.ipv6_prefix
    masked: dict[str, Any] = _payload("ip6", "saddr")
    if prefix < 128:
        mask = ipaddress.IPv6Network(("::", prefix)).netmask
        masked = {"&": [_payload("ip6", "saddr"), str(mask)]}
    return [
        [*scope, _match(_payload("ip", "saddr"), f"@{BAN4}"), {"drop": None}],
        [*scope, _match(_payload("ip", "saddr"), f"@{BANNET4}"), {"drop": None}],
        [*scope, _match(masked, f"@{ban6_set(prefix)}"), {"drop": None}],
        [*scope, _match(_payload("ip6", "saddr"), f"@{BANNET6}"), {"drop": None}],
    ]


def _rule(statements: list[dict[str, Any]]) -> Command:
    return {
        "add": {"rule": {"family": FAMILY, "table": TABLE_NAME, "chain": CHAIN, "expr": statements}}
    }


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


# ---------------------------------------------------------------------------------------------
# Grants


def grant_commands(source: IPAddress, timeout: float) -> list[Command]:
    """Open (or refresh) a grant that the kernel removes after `timeout` seconds.

    The portable refresh: works whether or not the element exists, and whatever timeout (or
    none) it had, on kernels with and without element updates."""
    address = normalize(source)
    name = allow_set_for(address)
    timed = {"elem": {"val": str(address), "timeout": kernel_timeout(timeout)}}
    return [
        _element_command("add", name, [str(address)]),
        _element_command("delete", name, [str(address)]),
        _element_command("add", name, [timed]),
    ]


def revoke_commands(source: IPAddress) -> list[Command]:
    """Remove a grant now; idempotent (the add makes the delete safe when it already expired)."""
    address = normalize(source)
    name = allow_set_for(address)
    return [
        _element_command("add", name, [str(address)]),
        _element_command("delete", name, [str(address)]),
    ]


# ---------------------------------------------------------------------------------------------
# Everyone doors


def everyone_commands(ports: Sequence[int], timeout: float) -> list[Command]:
    """Open the guarded ports to every source for `timeout` seconds (the kernel closes them)."""
    values = sorted(set(ports))
    if not values:
        return []
    timed = [{"elem": {"val": port, "timeout": kernel_timeout(timeout)}} for port in values]
    return [
        _element_command("add", EVERYONE, list(values)),
        _element_command("delete", EVERYONE, list(values)),
        _element_command("add", EVERYONE, timed),
    ]


def close_everyone_commands() -> list[Command]:
    """Close an everyone window now; idempotent (flushing an empty set is fine)."""
    return [{"flush": {"set": {"family": FAMILY, "table": TABLE_NAME, "name": EVERYONE}}}]


# ---------------------------------------------------------------------------------------------
# Bans


def ban_element(network: IPNetwork, ipv6_prefix: int) -> tuple[str, Any]:
    """(set name, element value) where the ban of `network` lives; see the header."""
    network = unmap_network(network)
    v4 = isinstance(network, ipaddress.IPv4Network)
    if not uses_interval_set(network, ipv6_prefix):
        return (BAN4 if v4 else ban6_set(ipv6_prefix)), str(network.network_address)
    name = BANNET4 if v4 else BANNET6
    if network.num_addresses == 1:
        return name, str(network.network_address)
    return name, {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


_OFFENCE_PREFIX = "offence "
_MAX_OFFENCE = 999_999_999  # nine digits: more than any history the store keeps


def offence_comment(offence: int) -> str:
    """The comment a ban element carries: its offence number (see the header)."""
    return f"{_OFFENCE_PREFIX}{offence}"


def offence_from_comment(comment: str | None) -> int | None:
    """The offence number of an element's comment; None for no comment or one not ours."""
    if comment is None or not comment.startswith(_OFFENCE_PREFIX):
        return None
    digits = comment[len(_OFFENCE_PREFIX) :]
    if not (digits.isascii() and digits.isdigit()) or digits[0] == "0" or len(digits) > 9:
        return None
    return int(digits)


def ban_commands(
    network: IPNetwork,
    timeout: float | None,
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
    offence: int | None = None,
) -> list[Command]:
    """Ban (or re-ban) a network for `timeout` seconds (None: until unbanned): the grant
    refresh recipe, which works whether or not the element exists, with whatever timeout. The
    element carries `offence` as its comment from the second offence on."""
    name, value = ban_element(network, ipv6_prefix)
    return [
        _element_command("add", name, [copy.deepcopy(value)]),
        _element_command("delete", name, [copy.deepcopy(value)]),
        _element_command("add", name, [_ban_entry(value, timeout, offence)]),
    ]


def _ban_entry(value: Any, timeout: float | None, offence: int | None) -> Any:
    """A ban set's element as JSON: the value alone, or {"elem": ...} with the kernel timeout
    and the offence comment (a fresh copy of `value`)."""
    entry: dict[str, Any] = {"val": copy.deepcopy(value)}
    if timeout is not None:
        entry["timeout"] = kernel_timeout(timeout)
    if offence is not None and 1 < offence <= _MAX_OFFENCE:  # a first offence goes without
        entry["comment"] = offence_comment(offence)
    return {"elem": entry} if len(entry) > 1 else entry["val"]


def unban_commands(network: IPNetwork, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> list[Command]:
    """Lift a ban now; idempotent like a revoke (the add makes the delete safe)."""
    name, value = ban_element(network, ipv6_prefix)
    return [
        _element_command("add", name, [copy.deepcopy(value)]),
        _element_command("delete", name, [copy.deepcopy(value)]),
    ]


def ban6_migration_commands(
    stale: Sequence[tuple[str, Sequence[tuple[IPNetwork, float | None, int | None]]]],
    in_bannet6: Sequence[IPNetwork],
) -> list[Command]:
    """After [ban] ipv6_prefix changed: move the bans of old ban6_<Q> sets into bannet6 (with
    the time they had left and their offence) and delete those sets. To run after
    install_commands in the same transaction (its chain flush drops the rules that use them). A
    prefix that would overlap one already in bannet6, or another moved one, is dropped rather
    than fail the whole install."""
    existing = [n for n in in_bannet6 if isinstance(n, ipaddress.IPv6Network)]
    candidates = [
        (network, remaining, offence)
        for _, bans in stale
        for network, remaining, offence in bans
        if isinstance(network, ipaddress.IPv6Network)
        and not any(network.overlaps(other) for other in existing)  # bannet6 holds few
    ]
    # CIDR networks nest or are disjoint: sorted by start (wider first), one sweep keeps the
    # first of every nest.
    candidates.sort(key=lambda c: (int(c[0].network_address), c[0].prefixlen))
    elements: list[Any] = []
    covered_to = -1  # the last address of the networks kept so far
    for network, remaining, offence in candidates:
        if int(network.network_address) <= covered_to:
            continue
        covered_to = int(network.broadcast_address)
        value = {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}
        elements.append(_ban_entry(value, remaining, offence))
    commands: list[Command] = []
    if elements:
        commands.append(_element_command("add", BANNET6, elements))
    for name, _ in stale:
        commands.append({"delete": {"set": {"family": FAMILY, "table": TABLE_NAME, "name": name}}})
    return commands


def commands_for(
    actions: Sequence[Action],
    *,
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
    ports: Sequence[int] = DEFAULT_PORTS,
) -> list[Command]:
    """The commands for one engine step, in action order, to be applied as one transaction.

    ipv6_prefix must be the installed config's [ban] ipv6_prefix (it decides the ban sets), and
    ports its guarded ports (what an everyone door opens).
    Notices, RecordOffence and RecordSpaReplay (the state store's business) produce no commands."""
    commands: list[Command] = []
    for action in actions:
        match action:
            case OpenGrant() | RefreshGrant():
                commands += grant_commands(action.source, action.timeout)
            case RevokeGrant():
                commands += revoke_commands(action.source)
            case Ban():
                commands += ban_commands(
                    action.network, action.timeout, ipv6_prefix, action.offence
                )
            case Unban():
                commands += unban_commands(action.network, ipv6_prefix)
            case OpenEveryone():
                commands += everyone_commands(ports, action.timeout)
            case CloseEveryone():
                commands += close_everyone_commands()
            case Notice() | RecordOffence() | RecordSpaReplay():
                pass
            case _:
                assert_never(action)
    return commands


def _element_command(verb: str, set_name: str, elements: list[Any]) -> Command:
    return {
        verb: {
            "element": {"family": FAMILY, "table": TABLE_NAME, "name": set_name, "elem": elements}
        }
    }
