# Where the soak's slow RSS growth went: the engine fed sshd failures at the soak's rate (each
# attempt reported by the journal, btmp and auth.log, one sshd PID per attempt, from 1,000
# sources cycling), traced with tracemalloc every 6,000 attempts. The join table keeps one entry
# per sshd connection; before join keys expired with findtime it grew to its cap
# (MAX_FAILURE_JOINS) and the traced memory flattened only there (11.06 MiB); now it holds only
# the last findtime's connections. In-process, pure, no root.
#
#   .venv/bin/python bench/engine_memory.py --json bench/results/engine_memory.json
from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import tracemalloc

from guardian.config import MAX_FAILURE_JOINS, Ban, Config
from guardian.engine import Engine
from guardian.events import AuthFailed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attempts", type=int, default=60_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    engine = Engine(Config(ban=Ban(maxretry=10**6)))  # count everything, ban nothing
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    samples: list[dict[str, float]] = []
    for n in range(1, args.attempts + 1):
        source = ipaddress.ip_address(f"203.0.{(n // 250) % 4}.{n % 250 + 1}")
        at = 1000.0 + n * 0.6  # 1.6 attempts/s, the soak's rate
        for origin in ("journal", "btmp", "authlog"):
            event = AuthFailed(source, origin, "password", "root", pid=10_000 + n, wall_time=at)
            engine.feed(event, at, wall=at)
        if n % 6000 == 0:
            gc.collect()
            traced = (tracemalloc.get_traced_memory()[0] - base) / 2**20
            samples.append({"attempts": n, "traced_mib": round(traced, 2)})
            print(f"{n:7d} attempts: {traced:6.2f} MiB traced")
    counters = engine.snapshot(1e9).counters
    result = {
        "benchmark": "engine memory under sustained failures (tracemalloc)",
        "join_cap": MAX_FAILURE_JOINS,
        "samples": samples,
        "failure_joins_evicted": counters["failure_joins_evicted"],
        "failures_counted": counters["failures_counted"],
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
