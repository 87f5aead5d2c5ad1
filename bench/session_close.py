# Session-end-to-close (issue 3's benchmark): from the client's last FIN (the moment its ssh
# process exits after logout) to the grant leaving the kernel set, minus the configured linger.
# The kernel side is observed with `nft monitor` in the server namespace (an event per element
# change, timestamped on arrival), not by polling. Real sshd logging to a real journald, real
# conntrack; the guardian as shipped. Clocks: namespaces share CLOCK_REALTIME, so client and
# server timestamps compare directly.
#
#   sudo .venv/bin/python bench/session_close.py [--trials 30 --linger 1] [--json out.json]
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from guardian.lab.guardian_proc import start_guardian
from guardian.lab.journald import ensure_journald
from guardian.lab.netns import Lab
from guardian.lab.sshd import ssh_argv, start_sshd

CONFIG = """\
[access]
window = "30s"
linger = "{linger}s"
lease = "60s"
[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/tcp"]
timeout = "5s"
"""


EXIT_STAMP = (
    "import subprocess, sys, time; "
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(time.time()); sys.exit(rc)"
)


class SetMonitor(threading.Thread):
    """Reads `nft monitor` lines and timestamps every add/delete of an allow4 element.

    A refresh is `add; delete; add` in one transaction, so a delete alone proves nothing: the
    element has left the kernel when the last event for the source is a delete."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.changes: list[tuple[float, str, str]] = []  # (time, "add"|"delete", line)
        self.lock = threading.Lock()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            at = time.time()
            line = raw.decode(errors="replace").strip()
            for verb in ("add", "delete"):
                if line.startswith(f"{verb} element inet guardian allow4"):
                    with self.lock:
                        self.changes.append((at, verb, line))

    def removed_after(self, t0: float, source: str) -> float | None:
        """When the element was removed for good after t0, or None while it is still there."""
        with self.lock:
            mine = [(at, verb) for at, verb, line in self.changes if source in line]
        if not mine or mine[-1][1] != "delete" or mine[-1][0] < t0:
            return None
        return mine[-1][0]


class FinMonitor(threading.Thread):
    """Reads `conntrack -E` in the server namespace and timestamps the first closing state
    (FIN_WAIT and later: the first FIN seen) of each connection to port 22."""

    CLOSING = ("FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE ")

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.fins: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            at = time.time()
            line = raw.decode(errors="replace")
            if "[UPDATE]" in line and any(state in line for state in self.CLOSING):
                with self.lock:
                    self.fins.append((at, line))

    def first_fin_after(self, t0: float, source: str) -> float | None:
        with self.lock:
            times = [at for at, line in self.fins if at >= t0 and f"src={source} " in line]
        return min(times) if times else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--linger", type=float, default=1.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    ensure_journald()
    results: list[float] = []
    with Lab(hosts=("server", "client")) as lab:
        sshd = start_sshd(lab, log_to_stderr=False)
        guardian = start_guardian(lab, CONFIG.format(linger=int(args.linger)))
        monitor_proc = lab.popen("server", ["nft", "monitor"], stdout=subprocess.PIPE)
        monitor = SetMonitor(monitor_proc)
        monitor.start()
        conntrack_proc = lab.popen(
            "server",
            ["conntrack", "-E", "-e", "UPDATE", "-p", "tcp", "--dport", "22"],
            stdout=subprocess.PIPE,
        )
        fins = FinMonitor(conntrack_proc)
        fins.start()
        time.sleep(0.3)
        server, client = lab.addr("server"), lab.addr("client")
        knock = [sys.executable, "-m", "guardian", "knock", server, "--sequence", "7000,8000,9000"]
        from_exit: list[float] = []
        for trial in range(args.trials):
            started = time.time()
            lab.run("client", knock, check=True, timeout=10)
            # The wrapper runs inside the client namespace and prints the wall clock the moment
            # ssh has exited (its FIN went out just before), free of `ip netns exec`'s overhead.
            done = lab.run(
                "client",
                [sys.executable, "-c", EXIT_STAMP, *ssh_argv(sshd, server, command=("true",))],
                timeout=20,
            )
            if done.returncode != 0:
                print(f"trial {trial}: ssh failed: {done.stderr.strip()}", file=sys.stderr)
                continue
            logged_out = float(done.stdout.strip().splitlines()[-1])
            deadline = logged_out + args.linger + 5
            closed = None
            while closed is None and time.time() < deadline:
                time.sleep(0.05)
                closed = monitor.removed_after(logged_out + args.linger / 2, client)
            if closed is None:
                print(f"trial {trial}: grant not removed within linger + 5 s", file=sys.stderr)
                continue
            fin = fins.first_fin_after(started, client)
            if fin is None:
                print(f"trial {trial}: no FIN seen by conntrack -E", file=sys.stderr)
                continue
            results.append((closed - fin - args.linger) * 1000.0)
            from_exit.append((closed - logged_out - args.linger) * 1000.0)
            time.sleep(0.2)
        guardian.stop()
        monitor_proc.terminate()
        conntrack_proc.terminate()
    summary = {
        "benchmark": "session end (first FIN, conntrack) -> grant out of the kernel, minus linger",
        "trials": args.trials,
        "measured": len(results),
        "linger_s": args.linger,
        "median_ms": round(statistics.median(results), 1),
        "p95_ms": round(percentile(results, 0.95), 1),
        "min_ms": round(min(results), 1),
        "max_ms": round(max(results), 1),
        "samples_ms": [round(x, 1) for x in results],
        "from_ssh_exit_median_ms": round(statistics.median(from_exit), 1),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "samples_ms"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
