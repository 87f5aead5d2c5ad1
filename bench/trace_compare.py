# Compare two dumps of bench/trace_daemon.py: where Python memory grew (tracemalloc, grouped by
# traceback) and how the C heap and the process's anonymous memory moved between them. For dumps
# of the light mode (no tracemalloc): live objects by type, the largest containers, and the
# small-object allocator's arenas and block bytes.
#
#   .venv/bin/python bench/trace_compare.py DIR [FIRST LAST] [--top 15] [--by-count]
# --by-count: for tracemalloc dumps, the source lines whose live blocks grew or shrank most, by
# number of blocks (a slow leak of small objects: a few blocks a second, each a few dozen bytes,
# hides among the larger allocations that a by-size list puts first).
from __future__ import annotations

import argparse
import json
import tracemalloc
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("first", type=int, nargs="?", default=1)
    parser.add_argument("last", type=int, nargs="?")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by-count", action="store_true")
    args = parser.parse_args()
    taken = sorted(int(p.stem.split("-")[1]) for p in args.dir.glob("native-*.json"))
    last = args.last or taken[-1]
    a = json.loads((args.dir / f"native-{args.first}.json").read_text())
    b = json.loads((args.dir / f"native-{last}.json").read_text())
    minutes = (b["wall"] - a["wall"]) / 60
    print(f"dumps {args.first} -> {last}: {minutes:.1f} min apart")
    for key in ("malloc_in_use", "malloc_arena", "tracemalloc_traced"):
        print(
            f"  {key:20} {a[key] / 1024:10.0f} -> {b[key] / 1024:10.0f} KiB"
            f"  ({(b[key] - a[key]) / 1024:+.0f})"
        )
    for key in ("Anonymous", "Rss", "Private_Dirty"):
        va, vb = a["smaps_kib"].get(key, 0), b["smaps_kib"].get(key, 0)
        print(f"  smaps {key:14} {va:10} -> {vb:10} KiB  ({vb - va:+})")
    if "by_type" in b:
        _light(a, b, args.top)
        return 0
    first = tracemalloc.Snapshot.load(str(args.dir / f"snapshot-{args.first}.pickle"))
    second = tracemalloc.Snapshot.load(str(args.dir / f"snapshot-{last}.pickle"))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    first, second = first.filter_traces(ignore), second.filter_traces(ignore)
    if args.by_count:
        _by_count(first, second, args.top)
        return 0
    print(f"\nlargest Python growth by traceback (top {args.top}):")
    for stat in second.compare_to(first, "traceback")[: args.top]:
        print(
            f"\n{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+} blocks "
            f"(now {stat.size / 1024:.1f} KiB)"
        )
        for line in stat.traceback.format()[-8:]:
            print("   ", line)
    return 0


def _by_count(first: tracemalloc.Snapshot, second: tracemalloc.Snapshot, top: int) -> None:
    changes = second.compare_to(first, "lineno")
    print(
        f"\nlive blocks {sum(c.count - c.count_diff for c in changes)} -> "
        f"{sum(c.count for c in changes)} ({sum(c.count_diff for c in changes):+}); "
        f"the lines that changed most by blocks (top {top}):"
    )
    for stat in sorted(changes, key=lambda c: -abs(c.count_diff))[:top]:
        print(f"  {stat.count_diff:+7} blocks {stat.size_diff / 1024:+8.1f} KiB  "
              f"(now {stat.count:6})  {stat.traceback[0]}")  # fmt: skip


def _light(a: dict[str, Any], b: dict[str, Any], top: int) -> None:
    print(f"\nlive objects {a['objects']} -> {b['objects']} ({b['objects'] - a['objects']:+})")
    for key in sorted(set(a["obmalloc"]) | set(b["obmalloc"])):
        va, vb = a["obmalloc"].get(key, 0), b["obmalloc"].get(key, 0)
        if va != vb:
            print(f"  obmalloc {key:45} {va:>12} -> {vb:>12} ({vb - va:+})")
    grown = {
        name: b["by_type"].get(name, 0) - a["by_type"].get(name, 0)
        for name in set(a["by_type"]) | set(b["by_type"])
    }
    print(f"\nobject counts that changed most (top {top}):")
    for name, diff in sorted(grown.items(), key=lambda item: -abs(item[1]))[:top]:
        print(f"  {diff:+8}  {name} (now {b['by_type'].get(name, 0)})")
    print("\nlargest containers, first -> last dump:")
    before = {(c["type"], c["holder"]): c["len"] for c in a["largest"]}
    for c in b["largest"][:top]:
        print(f"  {c['len']:>8} (was {before.get((c['type'], c['holder']), '?')})  "
              f"{c['type']} {c['holder']}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
