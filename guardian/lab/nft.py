# Reading a lab host's nftables state the way a test asserts on it: the whole ruleset as JSON and
# the elements of a named set (the guardian's allow4/allow6, later ban sets) with their remaining
# kernel timeouts. Read-only apart from `flush_ruleset`, which resets one lab host between tests.
from __future__ import annotations

import json
from typing import Any

from guardian.lab.netns import Lab, LabError

GUARDIAN_FAMILY = "inet"
GUARDIAN_TABLE = "guardian"
_MISSING = "No such file or directory"  # nft's message for a missing table or set


def nft_json(lab: Lab, host: str) -> dict[str, Any]:
    """`nft -j list ruleset` in `host`, parsed."""
    done = lab.run(host, ["nft", "-j", "list", "ruleset"], timeout=30.0)
    if done.returncode != 0:
        raise LabError(f"nft list ruleset failed: {done.stderr.strip()}")
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def ruleset_text(lab: Lab, host: str) -> str:
    """`nft list ruleset` in `host`, verbatim (for byte-for-byte before/after comparisons)."""
    done = lab.run(host, ["nft", "list", "ruleset"], timeout=30.0)
    if done.returncode != 0:
        raise LabError(f"nft list ruleset failed: {done.stderr.strip()}")
    return done.stdout


def _element_key(val: Any) -> str:
    # Addresses are plain strings; prefixes and ranges (ban sets by network) are objects.
    if isinstance(val, str):
        return val
    if isinstance(val, dict) and "prefix" in val:
        return f"{val['prefix']['addr']}/{val['prefix']['len']}"
    if isinstance(val, dict) and "range" in val:
        low, high = val["range"]
        return f"{low}-{high}"
    return json.dumps(val, sort_keys=True)


def parse_set_elements(listing: dict[str, Any]) -> dict[str, float | None]:
    """Element → seconds until it expires (None = permanent) from `nft -j list set` output.

    nft's JSON gives whole seconds (truncated): a timed element shows "expires", a permanent one is
    a bare value, and "elem" is absent when the set is empty.
    """
    elements: dict[str, float | None] = {}
    for item in listing.get("nftables", []):
        nft_set = item.get("set")
        if nft_set is None:
            continue
        for elem in nft_set.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                inner = elem["elem"]
                expires = inner.get("expires")
                elements[_element_key(inner["val"])] = (
                    float(expires) if expires is not None else None
                )
            else:
                elements[_element_key(elem)] = None
    return elements


def set_elements(
    lab: Lab,
    host: str,
    set_name: str,
    *,
    table: str = GUARDIAN_TABLE,
    family: str = GUARDIAN_FAMILY,
) -> dict[str, float | None]:
    """Elements of one set in `host`; {} when the table or the set does not exist."""
    done = lab.run(host, ["nft", "-j", "list", "set", family, table, set_name], timeout=30.0)
    if done.returncode != 0:
        if _MISSING in done.stderr:
            return {}
        raise LabError(f"nft list set {set_name} failed: {done.stderr.strip()}")
    return parse_set_elements(json.loads(done.stdout))


def allow_elements(lab: Lab, host: str = "server") -> dict[str, float | None]:
    """The guardian's grants in `host`: allow4 and allow6 merged, address → seconds left."""
    return {**set_elements(lab, host, "allow4"), **set_elements(lab, host, "allow6")}


def table_exists(lab: Lab, host: str, table: str = GUARDIAN_TABLE) -> bool:
    done = lab.run(host, ["nft", "list", "table", GUARDIAN_FAMILY, table], timeout=30.0)
    return done.returncode == 0


def flush_ruleset(lab: Lab, host: str) -> None:
    """Remove every table in `host`'s namespace (never the root namespace)."""
    done = lab.run(host, ["nft", "flush", "ruleset"], timeout=30.0)
    if done.returncode != 0:
        raise LabError(f"nft flush ruleset failed: {done.stderr.strip()}")
