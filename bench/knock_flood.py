# Spoofed knock flood (issue 2's second benchmark): 20k SYNs/s to the knock ports from ~50k spoofed
# sources (198.18.0.0/15) for 10 s, from the lab's attacker host. Meanwhile the real client sends a
# valid knock halfway through and tries to connect. Measured for ssh-guardian and knockd 0.8 in the
# same run: the daemon's RSS over time (VmRSS, sampled every 250 ms), its CPU time, whether the
# valid knock opened and how long it took.
#
#   sudo .venv/bin/python bench/knock_flood.py [--rate 20000 --seconds 10] [--json out.json]
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from guardian.lab.guardian_proc import start_guardian
from guardian.lab.netns import Lab
from guardian.lab.sshd import start_sshd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from knock_open import GUARDIAN_CONFIG, KNOCKD_CONFIG  # noqa: E402

CLOCK_TICKS = 100  # USER_HZ on Linux


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Sampler(threading.Thread):
    """Samples a process's RSS until stopped (bounded by max_seconds)."""

    def __init__(self, pid: int, max_seconds: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.max_seconds = pid, max_seconds
        self.samples: list[tuple[float, int]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop_flag.is_set() and time.monotonic() - start < self.max_seconds:
            value = rss_kib(self.pid)
            if value is not None:
                self.samples.append((round(time.monotonic() - start, 2), value))
            time.sleep(0.25)


CONNECT_PROBE = """
import socket, sys, time
t0 = time.perf_counter()
while time.perf_counter() - t0 < 3.0:
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect((sys.argv[1], 22)); print(round((time.perf_counter() - t0) * 1000, 2)); break
    except OSError:
        time.sleep(0.002)
    finally:
        s.close()
else:
    print("never")
"""


def valid_knock_during_flood(lab: Lab) -> str:
    server = lab.addr("server")
    # Our own client sends the door's knocks; then a bounded connect loop measures the opening.
    lab.run(
        "client",
        [sys.executable, "-m", "guardian", "knock", server, "--sequence", "7000,8000,9000"],
        timeout=10,
    )
    probe = lab.run("client", [sys.executable, "-c", CONNECT_PROBE, server], timeout=10)
    return probe.stdout.strip()


def flood(lab: Lab, rate: int, seconds: float) -> subprocess.Popen[bytes]:
    return lab.popen(
        "attacker",
        [
            sys.executable,
            str(HERE / "flood_spoofed.py"),
            "--server",
            lab.addr("server"),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
    )


def measure(lab: Lab, pid: int, rate: int, seconds: float) -> dict[str, object]:
    sampler = Sampler(pid, seconds + 15)
    cpu0 = cpu_seconds(pid)
    rss0 = rss_kib(pid)
    sampler.start()
    proc = flood(lab, rate, seconds)
    time.sleep(seconds / 2)
    opened = valid_knock_during_flood(lab)
    out, _ = proc.communicate(timeout=seconds + 30)
    time.sleep(1.0)
    sampler.stop_flag.set()
    sampler.join()
    cpu1 = cpu_seconds(pid)
    rss = [v for _, v in sampler.samples]
    flood_stats = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "flood": flood_stats,
        "rss_kib_start": rss0,
        "rss_kib_peak": max(rss),
        "rss_kib_end": rss[-1],
        "cpu_seconds": round(cpu1 - cpu0, 2),
        "valid_knock_open_ms": opened,
        "rss_samples": sampler.samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    results: dict[str, object] = {}
    with Lab(hosts=("server", "client", "attacker")) as lab:
        start_sshd(lab)
        handle = start_guardian(lab, GUARDIAN_CONFIG)
        try:
            results["ssh-guardian"] = measure(lab, handle.pid, args.rate, args.seconds)
        finally:
            handle.stop()
            lab.run("server", ["nft", "flush", "set", "inet", "guardian", "allow4"], check=True)
        config = lab.workdir / "knockd.conf"
        config.write_text(KNOCKD_CONFIG)
        knockd = lab.popen("server", ["knockd", "-c", str(config), "-i", "eth0"])
        try:
            time.sleep(1.0)
            results["knockd 0.8"] = measure(lab, knockd.pid, args.rate, args.seconds)
        finally:
            knockd.terminate()
            knockd.wait(timeout=10)
    for name, res in results.items():
        assert isinstance(res, dict)
        brief = {k: v for k, v in res.items() if k != "rss_samples"}
        print(f"{name}: {json.dumps(brief)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
