# Knock-to-open latency, ssh-guardian vs knockd 0.8, in one lab run (issue 2's benchmark).
#
# Both daemons gate the same nftables table (inet guardian, installed by ssh-guardian) and are
# driven by the same client probe (bench/probe_knock_open.py): the time runs from the moment the
# last knock leaves the client to the moment the client's SYN to port 22 is accepted by sshd.
# knockd's door runs `nft add element inet guardian allow4 { %IP% }` — the same set element our
# daemon adds in-process. Rounds alternate between the two daemons so machine noise hits both.
#
# The probe runs on one CPU and the daemon under test on the other (bench/cpus.py; --no-pin: not).
#
#   sudo .venv/bin/python bench/knock_open.py [--rounds 3 --trials 10] [--no-pin] [--json out.json]
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from cpus import CLIENT_CPU, SERVER_CPU, can_pin, pin
from probe_knock_open import Probed

from guardian.lab.guardian_proc import start_guardian
from guardian.lab.netns import Lab
from guardian.lab.sshd import start_sshd

HERE = Path(__file__).resolve().parent

GUARDIAN_CONFIG = """\
[guard]
ports = [22]
[access]
window = "30s"
[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/tcp"]
timeout = "5s"
close = ["9000/tcp", "8000/tcp", "7000/tcp"]
"""

# knockd's own reference configuration for the same door; commands run through /bin/sh by knockd
# (that is how knockd works: this text is knockd's, not ours).
KNOCKD_CONFIG = """\
[options]
    Interface = eth0
[openSSH]
    sequence    = 7000,8000,9000
    seq_timeout = 5
    tcpflags    = syn
    command     = /usr/sbin/nft add element inet guardian allow4 { %IP% timeout 30s }
[closeSSH]
    sequence    = 9000,8000,7000
    seq_timeout = 5
    tcpflags    = syn
    command     = /usr/sbin/nft delete element inet guardian allow4 { %IP% }
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def probe(lab: Lab, trials: int, pinned: bool) -> Probed:
    result = lab.run(
        "client",
        [
            sys.executable,
            str(HERE / "probe_knock_open.py"),
            "--server",
            lab.addr("server"),
            "--trials",
            str(trials),
            *(["--cpu", str(CLIENT_CPU)] if pinned else []),
        ],
        timeout=30 + trials * 8,
    )
    data = json.loads(result.stdout.strip().splitlines()[-1])
    if "error" in data:
        raise RuntimeError(f"probe: {data['error']}")
    if data["failures"]:
        print(f"  warning: {data['failures']} trial(s) never opened", file=sys.stderr)
    return Probed.of(data)


def run_guardian_round(lab: Lab, trials: int, pinned: bool) -> Probed:
    handle = start_guardian(lab, GUARDIAN_CONFIG)
    if pinned:
        pin(handle.pid, SERVER_CPU)
    try:
        return probe(lab, trials, pinned)
    finally:
        handle.stop()
        lab.run("server", ["nft", "flush", "set", "inet", "guardian", "allow4"], check=True)


def run_knockd_round(lab: Lab, trials: int, pinned: bool) -> Probed:
    config = lab.workdir / "knockd.conf"
    config.write_text(KNOCKD_CONFIG)
    proc = lab.popen("server", ["knockd", "-c", str(config), "-i", "eth0"])
    if pinned:
        pin(proc.pid, SERVER_CPU)  # and the shells and nft it forks per knock
    try:
        time.sleep(1.0)  # knockd has no readiness signal; pcap needs a moment to attach
        if proc.poll() is not None:
            raise RuntimeError("knockd exited at start")
        return probe(lab, trials, pinned)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        lab.run("server", ["nft", "flush", "set", "inet", "guardian", "allow4"], check=True)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 3),
        "p95_ms": round(percentile(values, 0.95), 3),
        "min_ms": round(min(values), 3),
        "max_ms": round(max(values), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=10, help="per round and daemon")
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="let probe and daemons share both CPUs (see bench/cpus.py)",
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    pinned = not args.no_pin and can_pin()
    ours_probed, theirs_probed = Probed(), Probed()
    with Lab(hosts=("server", "client")) as lab:
        start_sshd(lab)
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}: ssh-guardian", file=sys.stderr)
            ours_probed += run_guardian_round(lab, args.trials, pinned)
            print(f"round {round_no}: knockd", file=sys.stderr)
            theirs_probed += run_knockd_round(lab, args.trials, pinned)
    ours, theirs = ours_probed.latencies, theirs_probed.latencies
    result = {
        "benchmark": "knock-to-open (last knock leaves client -> SSH SYN accepted)",
        "pinned": {"client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU} if pinned else None,
        "ssh-guardian": summary(ours),
        "knockd 0.8": summary(theirs),
        "ratio_median_knockd_over_ours": round(
            statistics.median(theirs) / statistics.median(ours), 1
        ),
        # The bracket around the figure (probe_knock_open.py's header).
        "last_refused_syn": {
            "ssh-guardian": summary(ours_probed.last_refused),
            "knockd 0.8": summary(theirs_probed.last_refused),
        },
        "connect_returned": {
            "ssh-guardian": summary(ours_probed.connect_returned),
            "knockd 0.8": summary(theirs_probed.connect_returned),
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
