# nftables commands as data: pure functions that build the libnftables JSON for the guardian's own
# table `inet guardian` (the gate, the trusted sets, the grant sets) and for grants and revokes.
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
from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from typing import Any, TypeAlias, assert_never

from guardian.actions import Action, Notice, OpenGrant, RefreshGrant, RevokeGrant
from guardian.addresses import IPAddress, IPNetwork, normalize
from guardian.config import TABLE_NAME, Config

# One libnftables JSON command object, e.g. {"add": {"element": {...}}}.
Command: TypeAlias = dict[str, Any]

FAMILY = "inet"
ALLOW4 = "allow4"  # grants, IPv4 sources, per-element kernel timeouts
ALLOW6 = "allow6"  # grants, IPv6 sources
TRUSTED4 = "trusted4"  # config.guard.trusted, IPv4 networks (interval set)
TRUSTED6 = "trusted6"  # config.guard.trusted, IPv6 networks
CHAIN = "input"
# Ahead of the usual `filter` priority (0) so the gate is decided before a host firewall's
# input chain; an accept here does not override a drop there (spec/platform.md).
CHAIN_PRIORITY = -10
JSON_SCHEMA_VERSION = 1


def kernel_timeout(seconds: float) -> int:
    """Seconds as nftables JSON takes them: whole, rounded up, at least 1 (0 would be permanent)."""
    if not math.isfinite(seconds):
        raise ValueError(f"grant timeout must be a finite number of seconds, not {seconds!r}")
    return max(1, math.ceil(seconds))


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

    Grants (allow4/allow6 elements) survive a re-install; the trusted sets and the chain are
    emptied and refilled in the same transaction, so a config change lands all at once."""
    commands: list[Command] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE_NAME}}},
        _add_set(ALLOW4, "ipv4_addr", "timeout"),
        _add_set(ALLOW6, "ipv6_addr", "timeout"),
        _add_set(TRUSTED4, "ipv4_addr", "interval"),
        _add_set(TRUSTED6, "ipv6_addr", "interval"),
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


def _add_set(name: str, key_type: str, flag: str) -> Command:
    return {
        "add": {
            "set": {
                "family": FAMILY,
                "table": TABLE_NAME,
                "name": name,
                "type": key_type,
                "flags": [flag],
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
    rules: list[list[dict[str, Any]]] = [
        # Local connections (the operator's own ssh to localhost, tunnels) are never gated.
        [_match({"meta": {"key": "iif"}}, "lo"), {"accept": None}],
        # Sessions already let in go on whatever happens to grants later.
        [_match({"ct": {"key": "state"}}, ["established", "related"], op="in"), {"accept": None}],
    ]
    ports = sorted(set(config.guard.ports))
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
    ]
    # "reset" answers exactly like a closed port; "drop" like a filtered one.
    answer: dict[str, Any] = (
        {"reject": {"type": "tcp reset"}} if config.guard.answer == "reset" else {"drop": None}
    )
    rules.append([*gate, answer])
    return rules


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


def commands_for(actions: Sequence[Action]) -> list[Command]:
    """The commands for one engine step, in action order, to be applied as one transaction.

    Notices change nothing in the firewall and produce no commands."""
    commands: list[Command] = []
    for action in actions:
        match action:
            case OpenGrant() | RefreshGrant():
                commands += grant_commands(action.source, action.timeout)
            case RevokeGrant():
                commands += revoke_commands(action.source)
            case Notice():
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
