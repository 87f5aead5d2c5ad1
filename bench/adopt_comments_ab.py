# What the offence comments on ban elements cost at start-up (session 10): three private
# namespaces hold the same 100k bans (70k IPv4, 30k IPv6 /64) as bench/adopt_bans.py writes them:
# without comments, with a comment on repeat offences only (what the daemon writes; offences
# drawn with halving odds), and with a comment on every element (the worst case). Rounds
# alternate the three (order reversed every other round) and each round's ratios are taken
# between runs made back to back, because this machine's speed drifts between rounds by more
# than the difference measured. Each run is adopt_bans.py's: list_bans() + Engine.adopt_bans().
#
#   sudo .venv/bin/python bench/adopt_comments_ab.py [--rounds 9] [--json OUT]
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

from adopt_bans import CONFIG, _elements, _one_run

from guardian.config import TABLE_NAME
from guardian.effectors.nft import NftEffector
from guardian.effectors.nft_rules import FAMILY
from guardian.lab.inside import inside, scratch_namespaces

VARIANTS = ("none", "repeat", "all")


def _ratios(these: list[float], those: list[float]) -> list[float]:
    return [a / b for a, b in zip(these, those, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with scratch_namespaces("gacab") as make_ns:
        names = {v: make_ns(v) for v in VARIANTS}
        effectors: dict[str, NftEffector] = {}
        try:
            for variant, name in names.items():
                with inside(name):
                    elements4, elements6 = _elements(random.Random(14), variant)
                    effectors[variant] = nft = NftEffector()
                    nft.install(CONFIG)
                    nft.apply(
                        [
                            {"add": {"element": {"family": FAMILY, "table": TABLE_NAME,
                                                 "name": set_name, "elem": elements}}}
                            for set_name, elements in (("ban4", elements4),
                                                       ("ban6_64", elements6))
                        ]
                    )  # fmt: skip
            for round_ in range(args.rounds):
                order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    with inside(names[variant]):
                        seconds[variant].append(_one_run(effectors[variant])["total_s"])
                print(", ".join(f"{v} {seconds[v][-1]:.3f} s" for v in VARIANTS), flush=True)
        finally:
            for variant, nft in effectors.items():
                with inside(names[variant]):
                    nft.remove_table()
                    nft.close()
    median = statistics.median
    out: dict[str, object] = {
        "benchmark": "adopt 100k bans: elements without comments, repeat offences with, all with",
        "command": "bench/adopt_comments_ab.py",
        "rounds": args.rounds,
        "seconds": seconds,
        "median_s": {v: round(median(seconds[v]), 3) for v in VARIANTS},
        "per_round_ratio_median": {
            f"{v}/none": round(median(_ratios(seconds[v], seconds["none"])), 3)
            for v in ("repeat", "all")
        },
    }
    print(json.dumps(out["median_s"]), json.dumps(out["per_round_ratio_median"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
