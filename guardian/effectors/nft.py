# The nftables effector: applies the commands built by nft_rules to the kernel through libnftables
# in-process (Debian's python3-nftables, the ctypes binding firewalld uses; ~0.1 ms per change
# against ~3 ms for an `nft` subprocess). Every call is one transaction: the kernel applies all of
# it or nothing, so a failed call leaves the ruleset exactly as it was and the caller may keep its
# own bookkeeping unchanged. The untyped binding stays behind this class; callers see typed data.
#
# A libnftables context opens its netlink socket when it is created and keeps it: an NftEffector
# acts on the network namespace it was constructed in, even if the thread moves later (so does
# the raw netlink socket that reads the big ban sets, nft_dump.py).
from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import nftables  # Debian's python3-nftables; reachable from a --system-site-packages venv

from guardian.actions import Action
from guardian.addresses import IPAddress, IPNetwork, networks_from_ints, parse_address
from guardian.config import DEFAULT_IPV6_PREFIX, DEFAULT_PORTS, TABLE_NAME, Config
from guardian.effectors.nft_dump import DumpError, SetDumper
from guardian.effectors.nft_rules import (
    ALLOW4,
    ALLOW6,
    BAN4,
    BANNET4,
    BANNET6,
    EVERYONE,
    FAMILY,
    Command,
    ban6_migration_commands,
    ban6_prefix_of,
    commands_for,
    grant_commands,
    install_commands,
    offence_from_comment,
    remove_table_commands,
    revoke_commands,
    transaction,
)

# A ban as listed from the kernel: the network, the seconds left (None: permanent) and the offence
# its element's comment carries (None: no comment of ours, see nft_rules.py).
ListedBan = tuple[IPNetwork, float | None, int | None]


class NftError(Exception):
    """nftables refused a transaction (nothing of it was applied); str() is nft's own message."""


class NftEffector:
    """One libnftables context bound to the current network namespace."""

    def __init__(self) -> None:
        self._nft: Any = nftables.Nftables()
        self._nft.set_json_output(True)
        self._dumper = SetDumper()  # table and set listings, big sets (nft_dump.py)
        self._ipv6_prefix = DEFAULT_IPV6_PREFIX  # of the config installed last
        self._ports: tuple[int, ...] = DEFAULT_PORTS  # guarded ports of the config installed last

    def close(self) -> None:
        """Release the raw netlink socket (the libnftables contexts go with the object)."""
        self._dumper.close()

    def apply(self, commands: Sequence[Command]) -> None:
        """Run the commands as one transaction; raise NftError if the kernel or nft refuses."""
        if commands:
            self._run(transaction(commands))

    def apply_actions(self, actions: Sequence[Action]) -> None:
        """One engine step's actions as one transaction (Notices and RecordOffence are ignored),
        bans routed by the ipv6_prefix of the config installed last."""
        self.apply(commands_for(actions, ipv6_prefix=self._ipv6_prefix, ports=self._ports))

    def install(self, config: Config) -> None:
        """Install or re-install table inet guardian for this config; grants and bans stay. If
        [ban] ipv6_prefix changed, the old prefix set's bans move to bannet6 in the same step."""
        commands = install_commands(config)
        prefix = config.ban.ipv6_prefix
        stale = [n for n in self._set_names() if ban6_prefix_of(n) not in (None, prefix)]
        if stale:
            moved = [(name, self._hash_bans(name)) for name in stale]
            in_bannet6 = [n for n, _, _ in self._interval_bans(BANNET6)]
            commands += ban6_migration_commands(moved, in_bannet6)
        self.apply(commands)
        self._ipv6_prefix = prefix
        self._ports = config.guard.ports

    def remove_table(self) -> None:
        """Remove table inet guardian with every grant in it; no error when it is absent."""
        self.apply(remove_table_commands())

    def grant(self, source: IPAddress, timeout: float) -> None:
        """Open or refresh one grant for `timeout` seconds (rounded up to whole seconds)."""
        self.apply(grant_commands(source, timeout))

    def revoke(self, source: IPAddress) -> None:
        """Remove one grant; no error when it is absent."""
        self.apply(revoke_commands(source))

    def table_exists(self) -> bool:
        # Raw netlink: libnftables' `list tables` would first fetch every element of every set.
        try:
            return self._dumper.table_exists(TABLE_NAME)
        except DumpError as exc:
            raise NftError(f"cannot look up table {TABLE_NAME}: {exc.strerror or exc}") from exc

    def list_grants(self) -> list[tuple[IPAddress, float | None]]:
        """The grants in the kernel now: (source, seconds until the kernel drops it).

        None means a permanent element (added by hand, without timeout). nft reports the
        remaining time in whole seconds, rounded down. [] when the table does not exist."""
        names = self._set_names()
        grants: list[tuple[IPAddress, float | None]] = []
        # One `list set` per call: libnftables 1.0.6 fails a JSON batch holding two list
        # commands, and `list table` would format every ban as well.
        for name in (ALLOW4, ALLOW6):
            if name not in names:
                continue
            for element in self._set_elements(name):
                grant = _parse_grant(element)
                if grant is not None:
                    grants.append(grant)
        return grants

    def everyone_left(self) -> float | None:
        """Seconds an everyone door's window has left in the kernel (the shortest of its ports'
        elements: it never outlives the window), or None when none is open. A permanent element
        (added by hand) counts as 0: it is closed at once rather than adopted forever."""
        if EVERYONE not in self._set_names():
            return None
        left: list[float] = []
        for element in self._set_elements(EVERYONE):
            if isinstance(element, dict) and isinstance(element.get("elem"), dict):
                inner = element["elem"]
                seconds = inner.get("expires", inner.get("timeout"))
                if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                    left.append(float(seconds))
                    continue
            left.append(0.0)
        return min(left) if left else None

    def list_bans(self) -> list[ListedBan]:
        """Every ban in the kernel now: (network, seconds left or None = permanent, the offence
        its comment carries or None), for the engine to adopt at start-up (Engine.adopt_bans).
        [] when the table does not exist.

        The hash sets (ban4, every ban6_<P>) are read with a raw netlink dump (nft_dump.py),
        which keeps 100k bans well under a second; the interval sets through libnftables."""
        bans: list[ListedBan] = []
        for name in sorted(self._set_names()):
            if name == BAN4 or ban6_prefix_of(name) is not None:
                bans += self._hash_bans(name)
            elif name in (BANNET4, BANNET6):
                bans += self._interval_bans(name)
        return bans

    def _set_names(self) -> set[str]:
        """The sets of table inet guardian (empty when the table does not exist)."""
        try:
            return self._dumper.set_names(TABLE_NAME)
        except DumpError as exc:
            raise NftError(f"cannot list the sets of {TABLE_NAME}: {exc.strerror or exc}") from exc

    def _set_elements(self, name: str) -> list[Any]:
        command = {"list": {"set": {"family": FAMILY, "table": TABLE_NAME, "name": name}}}
        for item in _items(self._run({"nftables": [command]})):
            found = item.get("set")
            if isinstance(found, dict) and found.get("name") == name:
                elements = found.get("elem", [])
                return elements if isinstance(elements, list) else []
        return []

    def _hash_bans(self, name: str) -> list[ListedBan]:
        """A ban4 / ban6_<P> set, read with the raw dump."""
        prefix = ban6_prefix_of(name)
        try:
            elements = self._dumper.elements(TABLE_NAME, name)
        except DumpError as exc:
            raise NftError(f"cannot list set {name}: {exc.strerror or exc}") from exc
        keys = [key for key, _, _ in elements]
        networks = networks_from_ints(4, 32, keys) if prefix is None else (
            networks_from_ints(6, prefix, keys)
        )  # fmt: skip
        # Bans share a few comments: each is read once.
        offences = {c: offence_from_comment(c) for c in {c for _, _, c in elements}}
        return [
            (network, None if left is None else left / 1000, offences[comment])
            for network, (_, left, comment) in zip(networks, elements, strict=True)
        ]

    def _interval_bans(self, name: str) -> list[ListedBan]:
        """A bannet4 / bannet6 set through libnftables, which reassembles the intervals."""
        if name not in self._set_names():
            return []
        bans: list[ListedBan] = []
        for element in self._set_elements(name):
            ban = _parse_ban(element)
            if ban is not None:
                bans.append(ban)
        return bans

    def _run(self, document: dict[str, Any]) -> Any:
        rc, output, error = self._nft.json_cmd(document)
        if rc != 0:
            raise NftError(str(error).strip() or f"nftables failed with code {rc}")
        return output


def _items(output: Any) -> list[dict[str, Any]]:
    """The objects of a JSON listing (output is "" when nft printed nothing)."""
    if not isinstance(output, dict):
        return []
    items = output.get("nftables", [])
    return [item for item in items if isinstance(item, dict)]


def _parse_ban(element: Any) -> ListedBan | None:
    """An interval-set element: an address, {"prefix": {...}}, or either inside
    {"elem": {"val": ..., "expires": s, "comment": "offence N"}}. Ranges (made by hand) are
    skipped."""
    remaining: float | None = None
    offence: int | None = None
    value = element
    if isinstance(element, dict) and isinstance(element.get("elem"), dict):
        inner = element["elem"]
        value = inner.get("val")
        for key in ("expires", "timeout"):
            seconds = inner.get(key)
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                remaining = float(seconds)
                break
        comment = inner.get("comment")
        offence = offence_from_comment(comment if isinstance(comment, str) else None)
    try:
        if isinstance(value, str):
            return ipaddress.ip_network(value), remaining, offence
        if isinstance(value, dict) and isinstance(value.get("prefix"), dict):
            prefix = value["prefix"]
            return ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}"), remaining, offence
    except (KeyError, ValueError):
        return None
    return None


def _parse_grant(element: Any) -> tuple[IPAddress, float | None] | None:
    """A grant-set element as `nft -j list` shows it: a bare address (permanent) or
    {"elem": {"val": address, "timeout": s, "expires": s}}. Anything else is skipped."""
    remaining: float | None = None
    if isinstance(element, dict) and isinstance(element.get("elem"), dict):
        inner = element["elem"]
        value = inner.get("val")
        for key in ("expires", "timeout"):  # expires is what is left; timeout if nft omits it
            seconds = inner.get(key)
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                remaining = float(seconds)
                break
    else:
        value = element
    if not isinstance(value, str):
        return None
    try:
        # Normalised like every source in the product (a hand-made ::ffff:a.b.c.d in allow6 is
        # reported as a.b.c.d, the identity the engine knows it by).
        return parse_address(value), remaining
    except ValueError:
        return None
