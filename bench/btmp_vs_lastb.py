# btmp parse throughput (issue 4's benchmark): a 600 MiB btmp of 1,638,400 sshd records, written
# here with guardian.parsers.utmp.pack_utmp (brute force from thousands of sources, increasing
# times), parsed by our parser the way `guardian replay` reads a file (its btmp_records:
# parse_utmp over 4 MiB reads into one buffer, the partial tail carried over) against util-linux
# `lastb -f FILE > /dev/null`, in the same run, alternating, N runs each; medians. The file is
# read once before timing, so both read from the page cache; it is deleted at the end whatever
# happens.
# As extra information, one run of the whole `guardian replay FILE --json` (parser + ban engine).
#
#   sudo .venv/bin/python bench/btmp_vs_lastb.py [--runs 3] [--records 1638400]
#        [--json bench/results/btmp_vs_lastb.json] [--no-replay]
from __future__ import annotations

import argparse
import ipaddress
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steal import CpuTicks, stolen_share

from guardian.parsers.utmp import LOGIN_PROCESS, RECORD_SIZE, UtmpRecord, pack_utmp
from guardian.replay import btmp_records

RECORDS = 1_638_400  # 600 MiB
USERS = ["root", "admin", "test", "oracle", "ubuntu", "pi", "user", "git", "postgres", "guest"]


def write_btmp(path: Path, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    pool: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for _ in range(5000):
        if rng.random() < 0.1:
            text = f"2001:db8:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}"
        else:
            first = rng.choice([45, 61, 103, 141, 185])
            text = f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        pool.append(ipaddress.ip_address(text))
    start = int(time.time()) - count // 3
    pid = 10000
    with path.open("wb") as out:
        batch: list[bytes] = []
        for i in range(count):
            if i % 3 == 0:
                pid += rng.randrange(1, 7)
            address = rng.choice(pool)
            user = rng.choice(USERS) if rng.random() < 0.6 else f"user{rng.randrange(5000)}"
            record = UtmpRecord(
                LOGIN_PROCESS, pid, "ssh:notty", user, str(address), start + i // 3, address
            )
            batch.append(pack_utmp(record))
            if len(batch) == 65536:
                out.write(b"".join(batch))
                batch.clear()
        out.write(b"".join(batch))


def ours(path: Path, *, count_failures: bool = False) -> tuple[float, int, int]:
    """Seconds, records parsed, and (when asked: an untimed check) sshd failures with an
    address, what replay feeds the engine. Read as replay reads: guardian.replay.btmp_records."""
    started = time.perf_counter()
    records = failures = 0
    with path.open("rb", buffering=0) as handle:
        for parsed in btmp_records(handle):
            records += len(parsed)
            if count_failures:
                failures += sum(
                    1 for r in parsed if r.type == LOGIN_PROCESS and r.address is not None
                )
    return time.perf_counter() - started, records, failures


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def lastb(path: Path) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(
        ["lastb", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"lastb failed: {done.stderr.decode(errors='replace')}")
    return took, done.returncode


def lastb_lines(path: Path) -> int:
    """lastb's own count of the records it printed (for the record, once, not timed)."""
    done = subprocess.run(["lastb", "-f", str(path)], capture_output=True, check=True)
    lines = done.stdout.splitlines()
    return sum(1 for ln in lines if ln.strip() and not ln.startswith(b"btmp begins"))


def replay(path: Path) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "guardian", "replay", str(path), "--json"],
        capture_output=True,
        check=True,
        text=True,
    )
    report: dict[str, object] = json.loads(done.stdout)
    return time.perf_counter() - started, report


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--records", type=int, default=RECORDS)
    ap.add_argument("--json", default="bench/results/btmp_vs_lastb.json")
    ap.add_argument("--no-replay", action="store_true")
    args = ap.parse_args()
    if shutil.which("lastb") is None:
        raise SystemExit("lastb not found (util-linux)")
    directory = Path(tempfile.mkdtemp(prefix="guardian-btmp-bench-", dir="/var/tmp"))
    try:
        path = directory / "btmp"
        t0 = time.perf_counter()
        write_btmp(path, args.records)
        size = path.stat().st_size
        assert size == args.records * RECORD_SIZE
        print(
            f"wrote {args.records} records ({size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        with path.open("rb") as warm:  # page cache for both
            while warm.read(4 << 20):
                pass
        ours_s: list[float] = []
        lastb_s: list[float] = []
        ours_cpu: list[float] = []
        lastb_cpu: list[float] = []
        stolen: list[float] = []
        counted = (0, 0)
        for run in range(args.runs):
            ticks, cpu = CpuTicks.read(), time.process_time()
            took, records, _ = ours(path)
            ours_s.append(took)
            ours_cpu.append(time.process_time() - cpu)
            children = _children_cpu()
            took_lastb, _ = lastb(path)
            lastb_s.append(took_lastb)
            lastb_cpu.append(_children_cpu() - children)
            stolen.append(stolen_share(ticks, CpuTicks.read()))
            print(
                f"run {run + 1}: ours {ours_s[-1]:.2f} s, lastb {took_lastb:.2f} s "
                f"({stolen[-1]:.0%} stolen)",
                file=sys.stderr,
            )
        printed = lastb_lines(path)
        _, records, failures = ours(path, count_failures=True)
        counted = (records, failures)
        result: dict[str, object] = {
            "benchmark": "btmp parse: replay.btmp_records (parse_utmp, 4 MiB reads) vs lastb -f",
            "records": args.records,
            "bytes": size,
            "runs": args.runs,
            "ours": {
                "median_seconds": round(statistics.median(ours_s), 3),
                "runs_seconds": [round(x, 3) for x in ours_s],
                "records_per_second": round(args.records / statistics.median(ours_s)),
                "records_parsed": counted[0],
                "failures_with_address": counted[1],
            },
            "lastb": {
                "median_seconds": round(statistics.median(lastb_s), 3),
                "runs_seconds": [round(x, 3) for x in lastb_s],
                "records_per_second": round(args.records / statistics.median(lastb_s)),
                "lines_printed": printed,
            },
        }
        result["ours_speedup_vs_lastb"] = round(
            statistics.median(lastb_s) / statistics.median(ours_s), 2
        )
        # The machine's speed drifts between rounds by more than the difference measured, so
        # also: each round's ratio (the two ran back to back), and CPU seconds.
        per_round = [b / a for a, b in zip(ours_s, lastb_s, strict=True)]
        result["speedup_per_round"] = [round(x, 2) for x in per_round]
        result["speedup_per_round_median"] = round(statistics.median(per_round), 2)
        result["cpu_seconds_median"] = {
            "ours": round(statistics.median(ours_cpu), 3),
            "lastb": round(statistics.median(lastb_cpu), 3),
        }
        result["stolen_share"] = [round(x, 3) for x in stolen]
        if not args.no_replay:
            took, report = replay(path)
            result["guardian_replay_once"] = {
                "seconds": round(took, 2),
                "records_per_second": round(args.records / took),
                "units": report["units"],
                "failures": report["failures"],
                "bans": len(report["bans"]),  # type: ignore[arg-type]
            }
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
