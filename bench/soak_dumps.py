# How much of a soak's heap growth came at the tracer's dumps and how much between them: a
# `bench/soak.py --trace DIR` run's dumps allocate themselves (gc.get_objects, the referrer
# search), so a step in anonymous RSS right after a dump is the measurement, not the daemon.
#
#   .venv/bin/python bench/soak_dumps.py RESULT.json --every S [--from-minute 15] [--window 10]
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("result", type=Path, help="soak.py's JSON result")
    parser.add_argument("--every", type=float, required=True, help="the run's --trace-every")
    parser.add_argument("--from-minute", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=10.0, help="seconds after a due dump")
    args = parser.parse_args()
    samples = [s for s in json.loads(args.result.read_text())["samples"] if s["phase"] == "load"]
    at_dumps = elsewhere = 0.0
    for before, after in itertools.pairwise(samples):
        if after["t"] < args.from_minute * 60:
            continue
        change = after["rss_anon_mib"] - before["rss_anon_mib"]
        # A dump is due at each multiple of `every` and lands within a sample or two (the soak
        # checks the time between samples): the pairs around it are its.
        due = (after["t"] // args.every) * args.every
        if due > 0 and before["t"] < due + args.window and after["t"] >= due:
            at_dumps += change
        else:
            elsewhere += change
    print(
        f"anonymous RSS from minute {args.from_minute:g}: {elsewhere:+.3f} MiB between dumps, "
        f"{at_dumps:+.3f} MiB in the samples right after one"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
