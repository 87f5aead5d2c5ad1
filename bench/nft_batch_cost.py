# What one firewall batch costs the daemon as the ban sets fill: the time of NftEffector.grant
# (one libnftables JSON transaction: add; delete; add with timeout, on allow4), in a private
# network namespace, with N elements in bannet4 (an interval set: network bans) or in ban4 (a
# hash set: single addresses). Found while tracing SPA-to-open (strace of the daemon):
# libnftables 1.0.6 fetches its cache before every JSON command, and that cache includes every
# element of every interval set of the table, whichever set the command touches; hash sets' elements
# are not fetched. So a grant, a ban or an unban costs time linear in the network bans held.
#
#   sudo .venv/bin/python bench/nft_batch_cost.py [--json bench/results/nft_batch_cost.json]
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make `guardian` importable from the checkout
    sys.path.insert(0, str(ROOT))

from guardian.configfile import parse_config  # noqa: E402
from guardian.effectors.nft import NftEffector  # noqa: E402
from guardian.lab.inside import inside, scratch_namespaces  # noqa: E402

CONFIG = '[guard]\nports = [22]\ntrusted = ["198.51.100.0/24"]\n'
GRANTS = 200  # batches timed per size
SIZES = (0, 100, 1000, 5000)  # elements in the set under test
HASH_SIZE = 50_000  # ban4: single addresses


def _fill(set_name: str, count: int) -> None:
    if count == 0:
        return
    if set_name == "bannet4":  # /24 networks: 100.X.Y.0/24
        elems = (f"100.{(i >> 8) & 255}.{i & 255}.0/24" for i in range(count))
    else:  # single addresses 100.X.Y.Z
        elems = (f"100.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(count))
    text = f"add element inet guardian {set_name} {{ {', '.join(elems)} }}\n"
    subprocess.run(["nft", "-f", "-"], input=text.encode(), check=True, timeout=300)


def _grant_times(nft: NftEffector) -> list[float]:
    times = []
    for i in range(GRANTS):
        source = ipaddress.ip_address(f"10.77.{i >> 8}.{i & 255}")
        started = time.perf_counter()
        nft.grant(source, 5)
        times.append((time.perf_counter() - started) * 1e3)
    return times


def measure(make_ns: Callable[[str], str], set_name: str, count: int) -> dict[str, float]:
    with inside(make_ns(f"{set_name}-{count}")):
        nft = NftEffector()
        try:
            nft.install(parse_config(CONFIG, "bench.toml"))
            _fill(set_name, count)
            times = sorted(_grant_times(nft))
        finally:
            nft.remove_table()
            nft.close()
    return {
        "median_ms": round(statistics.median(times), 3),
        "p90_ms": round(times[int(0.9 * (len(times) - 1))], 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    rows: list[dict[str, object]] = []
    load_before = os.getloadavg()[0]
    with scratch_namespaces("gnbc") as make_ns:
        for set_name, sizes in (("bannet4", SIZES), ("ban4", (HASH_SIZE,))):
            for count in sizes:
                result = measure(make_ns, set_name, count)
                rows.append({"set": set_name, "elements": count, **result})
                print(
                    f"{set_name:8} {count:6} elements: grant batch median "
                    f"{result['median_ms']:.3f} ms, p90 {result['p90_ms']:.3f} ms",
                    flush=True,
                )
    out = {
        "benchmark": "one grant batch (libnftables JSON) vs elements in the ban sets",
        "command": "bench/nft_batch_cost.py",
        "grants_per_size": GRANTS,
        "load_before_after": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
