# The nftables effector: applies the commands built by nft_rules to the kernel through libnftables
# in-process (Debian's python3-nftables, the ctypes binding firewalld uses; ~0.1 ms per change
# against ~3 ms for an `nft` subprocess). Every call is one transaction: the kernel applies all of
# it or nothing, so a failed call leaves the ruleset exactly as it was and the caller may keep its
# own bookkeeping unchanged. The untyped binding stays behind this class; callers see typed data.
#
# A libnftables context opens its netlink socket when it is created and keeps it: an NftEffector
# acts on the network namespace it was constructed in, even if the thread moves later.
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nftables  # Debian's python3-nftables; reachable from a --system-site-packages venv

from guardian.actions import Action
from guardian.addresses import IPAddress, parse_address
from guardian.config import TABLE_NAME, Config
from guardian.effectors.nft_rules import (
    ALLOW4,
    ALLOW6,
    FAMILY,
    Command,
    commands_for,
    grant_commands,
    install_commands,
    remove_table_commands,
    revoke_commands,
    transaction,
)


class NftError(Exception):
    """nftables refused a transaction (nothing of it was applied); str() is nft's own message."""


class NftEffector:
    """One libnftables context bound to the current network namespace."""

    def __init__(self) -> None:
        self._nft: Any = nftables.Nftables()
        self._nft.set_json_output(True)

    def apply(self, commands: Sequence[Command]) -> None:
        """Run the commands as one transaction; raise NftError if the kernel or nft refuses."""
        if commands:
            self._run(transaction(commands))

    def apply_actions(self, actions: Sequence[Action]) -> None:
        """One engine step's actions as one transaction (Notices are ignored)."""
        self.apply(commands_for(actions))

    def install(self, config: Config) -> None:
        """Install or re-install table inet guardian for this config; existing grants stay."""
        self.apply(install_commands(config))

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
        output = self._run({"nftables": [{"list": {"tables": {"family": FAMILY}}}]})
        return any(
            item.get("table", {}).get("family") == FAMILY
            and item.get("table", {}).get("name") == TABLE_NAME
            for item in _items(output)
        )

    def list_grants(self) -> list[tuple[IPAddress, float | None]]:
        """The grants in the kernel now: (source, seconds until the kernel drops it).

        None means a permanent element (added by hand, without timeout). nft reports the
        remaining time in whole seconds, rounded down. [] when the table does not exist."""
        if not self.table_exists():
            return []
        # One `list table` rather than two `list set`: libnftables 1.0.6 fails a JSON batch
        # holding two list commands.
        output = self._run(
            {"nftables": [{"list": {"table": {"family": FAMILY, "name": TABLE_NAME}}}]}
        )
        grants: list[tuple[IPAddress, float | None]] = []
        for item in _items(output):
            found = item.get("set")
            if not isinstance(found, dict) or found.get("table") != TABLE_NAME:
                continue
            if found.get("name") not in (ALLOW4, ALLOW6):
                continue
            for element in found.get("elem", []):
                grant = _parse_grant(element)
                if grant is not None:
                    grants.append(grant)
        return grants

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
