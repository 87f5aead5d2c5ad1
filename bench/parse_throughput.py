# Parse throughput on a 1M-line synthetic auth.log (issue 4's benchmark), side by side in one run:
#   ours          the bulk path the auth.log watcher and `guardian replay` use:
#                 guardian.parsers.authlog_chunk (scan_byte_stream -> scan_text) + SshdDetector,
#                 in-process, one core; the file read in 1 MiB pieces, as the file follower hands
#                 them over, each piece's whole lines decoded and scanned
#   ours, N jobs  the same scan on N cores (guardian.parallel_scan, what `guardian replay` uses):
#                 the file cut into pieces, the first scanned in-process, the others each by a
#                 forked worker after a warm-up, the pieces' detections used once their start
#                 state is checked equal to the sequential one (exactly the same failures; CPU
#                 seconds include the workers')
#   ours per-line parse_syslog_line + SshdDetector.feed line by line (the reference the bulk path
#                 must equal; what the watcher and replay used before; one run)
#   sshguard      `/usr/libexec/sshguard/sshg-parser < FILE` (sshguard 2.4's parser)
#   fail2ban      `fail2ban-regex FILE sshd` (fail2ban 1.0.2, the sshd filter, normal mode; one run,
#                 ~50 s)
# Ours and sshguard alternate, `--runs` rounds of each (a busy machine slows both alike); the
# figure is the median of the wall-clock times; CPU seconds (ours in-process, each peer's own as
# a child process) are recorded too, less disturbed by other work on the machine. Each reports how
# many failures it found, so speed is never bought with missed attacks: ours must find what
# the per-line path finds. Each round also records the share of CPU time the hypervisor stole
# meanwhile (bench/steal.py): a round with much stolen says more about the host than about the
# parser. Peers: bench/setup-peers.sh.
#
#   sudo .venv/bin/python bench/parse_throughput.py [--lines 1000000] [--runs 3] [--json out.json]
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from steal import CpuTicks, stolen_share

from guardian.parallel_scan import ParallelStats, default_jobs, scan_file
from guardian.parsers.authlog_chunk import scan_byte_stream
from guardian.parsers.sshd import DetectionKind, SshdDetector
from guardian.parsers.syslog_line import parse_syslog_line

HERE = Path(__file__).resolve().parent
SSHG_PARSER = "/usr/libexec/sshguard/sshg-parser"
CHUNK = 1 << 20  # bytes per read, as a file follower would hand them over
REFERENCE = datetime(2025, 12, 31, tzinfo=UTC)  # "now" for the generator's traditional stamps
Timing = tuple[float, float]  # (wall-clock seconds, CPU seconds)
FAILURES: frozenset[DetectionKind] = frozenset({"failure"})


def _clocks() -> tuple[float, float, float]:
    """Wall clock, this process's CPU time, and its waited-for children's: a busy machine
    stretches the first (the process waits for a core), hardly the others."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time(), children.ru_utime + children.ru_stime


def _since(start: tuple[float, float, float], *, child: bool = False) -> Timing:
    """(wall, CPU) since start: CPU of this process (ours, in-process), or of the child (a
    peer, without our time reading its output)."""
    wall, own, children = _clocks()
    return wall - start[0], (children - start[2]) if child else (own - start[1])


def ours(path: Path) -> tuple[Timing, dict[str, int]]:
    """The auth.log watcher's bulk path, minus the file following: the file read in pieces,
    each piece's whole lines scanned (scan_byte_stream keeps the partial last line), the
    failures taken from the detections as the watcher and replay take them."""
    detector = SshdDetector("normal")
    detections = attempts = 0
    start = _clocks()
    with path.open("rb") as handle:
        pieces = iter(partial(handle.read, CHUNK), b"")
        for found in scan_byte_stream(pieces, detector, REFERENCE):
            for detection in found:
                if detection.kind == "failure":
                    detections += 1
                    attempts += detection.attempts
    return _since(start), {"failures": detections, "attempts": attempts}


def ours_parallel(path: Path, jobs: int) -> tuple[Timing, dict[str, int]]:
    """scan_file on `jobs` processes, failures only (what replay asks for)."""
    stats = ParallelStats()
    detections = attempts = 0
    start = _clocks()
    for found in scan_file(path, "normal", REFERENCE, jobs=jobs, kinds=FAILURES, stats=stats):
        for detection in found:
            detections += 1
            attempts += detection.attempts
    wall, own = _since(start)
    _, workers = _since(start, child=True)
    counts = {"failures": detections, "attempts": attempts}
    return (wall, own + workers), counts | {"pieces_from_workers": stats.from_workers}


def ours_per_line(path: Path) -> tuple[Timing, dict[str, int]]:
    """The per-line pipeline (parse_syslog_line + SshdDetector.feed), for comparison."""
    reference = REFERENCE
    detector = SshdDetector("normal")
    detections = attempts = 0
    start = _clocks()
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            record = parse_syslog_line(line, reference=reference)
            if record is None or record.identifier not in ("sshd", "sshd-session"):
                continue
            for detection in detector.feed(record.pid, record.message, record.wall_time):
                if detection.kind == "failure":
                    detections += 1
                    attempts += detection.attempts
    return _since(start), {"failures": detections, "attempts": attempts}


def fail2ban(path: Path) -> tuple[Timing, dict[str, int]]:
    start = _clocks()
    done = subprocess.run(
        ["fail2ban-regex", str(path), "sshd"], capture_output=True, text=True, check=True
    )
    elapsed = _since(start, child=True)
    summary = r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed"
    match = re.search(summary, done.stdout)
    if match is None:
        raise RuntimeError(f"unexpected fail2ban-regex output:\n{done.stdout[-2000:]}")
    return elapsed, {"matched": int(match.group(3))}


def sshguard(path: Path) -> tuple[Timing, dict[str, int]]:
    start = _clocks()
    with path.open("rb") as handle:
        done = subprocess.run([SSHG_PARSER], stdin=handle, capture_output=True, check=True)
    elapsed = _since(start, child=True)
    return elapsed, {"attacks": done.stdout.count(b"\n")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="rounds of the fast parsers (median)")
    ap.add_argument("--file", default="/tmp/guardian-bench-auth.log")
    ap.add_argument("--json")
    ap.add_argument("--jobs", type=int, default=default_jobs(), help="for the parallel scan")
    args = ap.parse_args()
    path = Path(args.file)
    subprocess.run(
        [sys.executable, str(HERE / "gen_authlog.py"), str(path), "--lines", str(args.lines)],
        check=True,
    )
    lines = args.lines
    load_before = os.getloadavg()
    times: dict[str, list[Timing]] = {}
    stolen: dict[str, list[float]] = {}
    found: dict[str, dict[str, int]] = {}

    def run(name: str, runner: Callable[[Path], tuple[Timing, dict[str, int]]]) -> None:
        ticks = CpuTicks.read()
        (wall, cpu), counted = runner(path)
        steal = stolen_share(ticks, CpuTicks.read())
        found[name] = counted
        times.setdefault(name, []).append((wall, cpu))
        stolen.setdefault(name, []).append(steal)
        print(
            f"{name}: {lines / wall:,.0f} lines/s ({lines / cpu:,.0f} per CPU second, "
            f"{steal:.0%} stolen) {found[name]}",
            file=sys.stderr,
        )

    parallel = f"ssh-guardian, {args.jobs} processes"
    for _ in range(args.runs):  # alternating rounds
        run("ssh-guardian", ours)
        run(parallel, partial(ours_parallel, jobs=args.jobs))
        run("sshg-parser (sshguard)", sshguard)
    run("ssh-guardian per-line", ours_per_line)
    run("fail2ban-regex (sshd filter)", fail2ban)
    load_after = os.getloadavg()
    results: dict[str, object] = {}
    rates: dict[str, int] = {}
    for name, runs in times.items():
        median = statistics.median(wall for wall, _ in runs)
        cpu = statistics.median(cpu for _, cpu in runs)
        rates[name] = round(lines / median)
        results[name] = {
            "runs": len(runs),
            "seconds": [round(wall, 3) for wall, _ in runs],
            "cpu_seconds": [round(cpu, 3) for _, cpu in runs],
            "stolen_share": [round(share, 3) for share in stolen[name]],
            "median_seconds": round(median, 3),
            "lines_per_second": rates[name],
            "lines_per_cpu_second": round(lines / cpu),
            **found[name],
        }
    for name, res in results.items():
        assert isinstance(res, dict)
        res["ours_vs_this"] = round(rates["ssh-guardian"] / rates[name], 2)
        res["ours_parallel_vs_this"] = round(rates[parallel] / rates[name], 2)
    per_line = found["ssh-guardian per-line"]
    results["same_failures_as_per_line"] = found["ssh-guardian"] == per_line
    results["parallel_same_failures_as_per_line"] = all(
        found[parallel][key] == per_line[key] for key in per_line
    )
    results["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in load_after],
    }
    results["python"] = sys.version.split()[0]
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
