# Idle cost (issue 3's second benchmark): with no traffic for N seconds, how often does the daemon
# wake up (voluntary context switches, /proc/PID/status) and how much CPU does it use
# (utime+stime, /proc/PID/stat)? ssh-guardian runs with every watcher (knock capture, conntrack
# events, journal, socket-table reconciliation, control socket); knockd 0.8 is measured in the same
# lab run for reference. The journal is shared with the host: other programs writing to it wake the
# journal fd too, which is part of the honest cost.
#
#   sudo .venv/bin/python bench/idle_cost.py [--seconds 60] [--json out.json]
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from guardian.lab.guardian_proc import start_guardian
from guardian.lab.journald import ensure_journald
from guardian.lab.netns import Lab
from guardian.lab.sshd import start_sshd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from knock_open import GUARDIAN_CONFIG, KNOCKD_CONFIG  # noqa: E402

CLOCK_TICKS = 100


def sample(pid: int) -> tuple[int, int, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    voluntary = next(int(x.split()[1]) for x in status if x.startswith("voluntary_ctxt_switches"))
    involuntary = next(
        int(x.split()[1]) for x in status if x.startswith("nonvoluntary_ctxt_switches")
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return voluntary, involuntary, cpu


def measure(pid: int, seconds: float) -> dict[str, float]:
    time.sleep(2.0)  # let start-up settle
    v0, i0, c0 = sample(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    v1, i1, c1 = sample(pid)
    elapsed = time.monotonic() - t0
    return {
        "seconds": round(elapsed, 1),
        "wakeups_per_s": round((v1 - v0) / elapsed, 3),
        "involuntary_per_s": round((i1 - i0) / elapsed, 3),
        "cpu_percent_of_a_core": round(100.0 * (c1 - c0) / elapsed, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    ensure_journald()
    results: dict[str, object] = {}
    with Lab(hosts=("server", "client")) as lab:
        start_sshd(lab, log_to_stderr=False)
        guardian = start_guardian(lab, GUARDIAN_CONFIG)
        try:
            results["ssh-guardian"] = measure(guardian.pid, args.seconds)
        finally:
            guardian.stop()
        config = lab.workdir / "knockd.conf"
        config.write_text(KNOCKD_CONFIG)
        knockd = lab.popen("server", ["knockd", "-c", str(config), "-i", "eth0"])
        try:
            results["knockd 0.8"] = measure(knockd.pid, args.seconds)
        finally:
            knockd.terminate()
            knockd.wait(timeout=10)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
