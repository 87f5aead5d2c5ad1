# A/B of two btmp parsers and lastb, alternating in one process (session 9's change measured): the
# parser of an earlier revision, given as a file (`git show REV:guardian/parsers/utmp.py >
# /tmp/utmp_old.py`), read as replay read then (read() and the partial record prepended), against
# today's guardian.replay.btmp_records, and `lastb -f FILE > /dev/null`. Rounds alternate the
# order; each round's ratios are taken between runs made back to back, because this machine's
# speed drifts between rounds by more than the difference measured. The btmp is bench/
# btmp_vs_lastb.py's (1.6M records, 600 MiB), made if missing and left in --file for reuse.
#
#   git show 5b72e18:guardian/parsers/utmp.py > /tmp/utmp_old.py
#   sudo .venv/bin/python bench/btmp_ab.py /tmp/utmp_old.py [--rounds 12] [--json OUT]
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from btmp_vs_lastb import RECORDS, write_btmp

from guardian.replay import btmp_records


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("utmp_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("before", type=Path, help="an earlier guardian/parsers/utmp.py")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--file", type=Path, default=Path("/var/tmp/guardian-btmp-ab/btmp"))
    ap.add_argument("--json")
    args = ap.parse_args()
    before = load(args.before)
    path: Path = args.file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_btmp(path, RECORDS)

    def old() -> int:
        memo, count, tail = before.UtmpMemo(), 0, b""
        with path.open("rb") as handle:
            while chunk := handle.read(4 << 20):
                data = tail + chunk
                records, used = before.parse_utmp(data, memo)
                tail = data[used:]
                count += len(records)
        return count

    def new() -> int:
        with path.open("rb", buffering=0) as handle:
            return sum(len(records) for records in btmp_records(handle))

    def lastb() -> int:
        subprocess.run(["lastb", "-f", str(path)], stdout=subprocess.DEVNULL, check=True)
        return RECORDS

    runners: list[tuple[str, Callable[[], int]]] = [("before", old), ("now", new), ("lastb", lastb)]
    times: dict[str, list[float]] = {name: [] for name, _ in runners}
    counts = {name: runner() for name, runner in runners[:2]}  # also warms the page cache
    assert counts["before"] == counts["now"], counts
    for k in range(args.rounds):
        for name, runner in runners if k % 2 == 0 else runners[::-1]:
            started = time.perf_counter()
            runner()
            times[name].append(time.perf_counter() - started)
        print(f"round {k + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
              file=sys.stderr)  # fmt: skip

    def paired(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(times[a], times[b], strict=True)), 3)

    result = {
        "records": counts["now"],
        "rounds": args.rounds,
        "median_seconds": {n: round(statistics.median(t), 3) for n, t in times.items()},
        "seconds": {n: [round(x, 3) for x in t] for n, t in times.items()},
        "now_over_before_per_round_median": paired("now", "before"),
        "lastb_over_now_per_round_median": paired("lastb", "now"),
        "lastb_over_before_per_round_median": paired("lastb", "before"),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
