# Parse throughput on a 1M-line synthetic auth.log (issue 4's benchmark), side by side in one run:
#   ours          guardian.parsers.authlog_chunk (scan_byte_chunks -> scan_chunk) + SshdDetector,
#                 in-process, one core: the file read in 1 MiB pieces, each piece's whole lines
#                 decoded and scanned (the bulk path the auth.log watcher and replay use)
#   ours per-line parse_syslog_line + SshdDetector.feed line by line (the reference the bulk path
#                 must equal; one run)
#   fail2ban      `fail2ban-regex FILE sshd` (fail2ban 1.0.2, the sshd filter, normal mode)
#   sshguard      `/usr/libexec/sshguard/sshg-parser < FILE` (sshguard 2.4's parser)
# Each reports how many failures it found, so speed is never bought with missed attacks. Peers are
# installed by bench/setup-peers.sh.
#
#   sudo .venv/bin/python bench/parse_throughput.py [--lines 1000000] [--runs 3] [--json out.json]
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from guardian.parsers.authlog_chunk import scan_byte_chunks
from guardian.parsers.sshd import SshdDetector
from guardian.parsers.syslog_line import parse_syslog_line

HERE = Path(__file__).resolve().parent
SSHG_PARSER = "/usr/libexec/sshguard/sshg-parser"
CHUNK = 1 << 20  # bytes per read, as a file follower would hand them over
REFERENCE = datetime(2025, 12, 31, tzinfo=UTC)  # "now" for the generator's traditional stamps


def ours(path: Path) -> tuple[float, dict[str, int]]:
    """The auth.log watcher's bulk path, minus the file following: the file read in pieces,
    each piece's whole lines scanned (scan_byte_chunks keeps the partial last line)."""
    detector = SshdDetector("normal")
    detections = attempts = 0
    start = time.perf_counter()
    with path.open("rb") as handle:
        pieces = iter(partial(handle.read, CHUNK), b"")
        for found in scan_byte_chunks(pieces, detector, REFERENCE):
            for detection in found:
                if detection.kind == "failure":
                    detections += 1
                    attempts += detection.attempts
    return time.perf_counter() - start, {"failures": detections, "attempts": attempts}


def ours_per_line(path: Path) -> tuple[float, dict[str, int]]:
    """The per-line pipeline (parse_syslog_line + SshdDetector.feed), for comparison."""
    reference = REFERENCE
    detector = SshdDetector("normal")
    detections = attempts = 0
    start = time.perf_counter()
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            record = parse_syslog_line(line, reference=reference)
            if record is None or record.identifier not in ("sshd", "sshd-session"):
                continue
            for detection in detector.feed(record.pid, record.message, record.wall_time):
                if detection.kind == "failure":
                    detections += 1
                    attempts += detection.attempts
    return time.perf_counter() - start, {"failures": detections, "attempts": attempts}


def fail2ban(path: Path) -> tuple[float, dict[str, int]]:
    start = time.perf_counter()
    done = subprocess.run(
        ["fail2ban-regex", str(path), "sshd"], capture_output=True, text=True, check=True
    )
    elapsed = time.perf_counter() - start
    summary = r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed"
    match = re.search(summary, done.stdout)
    if match is None:
        raise RuntimeError(f"unexpected fail2ban-regex output:\n{done.stdout[-2000:]}")
    return elapsed, {"matched": int(match.group(3))}


def sshguard(path: Path) -> tuple[float, dict[str, int]]:
    start = time.perf_counter()
    with path.open("rb") as handle:
        done = subprocess.run([SSHG_PARSER], stdin=handle, capture_output=True, check=True)
    elapsed = time.perf_counter() - start
    return elapsed, {"attacks": done.stdout.count(b"\n")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="runs of the fast parsers (median)")
    ap.add_argument("--file", default="/tmp/guardian-bench-auth.log")
    ap.add_argument("--json")
    args = ap.parse_args()
    path = Path(args.file)
    subprocess.run(
        [sys.executable, str(HERE / "gen_authlog.py"), str(path), "--lines", str(args.lines)],
        check=True,
    )
    lines = args.lines
    results: dict[str, dict[str, object]] = {}
    for name, runner, runs in (
        ("ssh-guardian", ours, args.runs),
        ("ssh-guardian per-line", ours_per_line, 1),
        ("sshg-parser (sshguard)", sshguard, args.runs),
        ("fail2ban-regex (sshd filter)", fail2ban, 1),  # ~50 s a run: one is enough
    ):
        times: list[float] = []
        found: dict[str, int] = {}
        for _ in range(runs):
            elapsed, found = runner(path)
            times.append(elapsed)
        median = statistics.median(times)
        results[name] = {
            "runs": runs,
            "median_seconds": round(median, 2),
            "lines_per_second": round(lines / median),
            **found,
        }
        print(f"{name}: {results[name]}", file=sys.stderr)
    ours_rate = results["ssh-guardian"]["lines_per_second"]
    assert isinstance(ours_rate, int)
    for res in results.values():
        rate = res["lines_per_second"]
        assert isinstance(rate, int)
        res["ours_vs_this"] = round(ours_rate / rate, 2)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
