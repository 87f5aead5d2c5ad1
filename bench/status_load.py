# Does a crowd of `guardian status` clients slow knock-to-open? (issue 7: "100 concurrent `status`
# clients do not slow knock-to-open by more than 10 %").
#
# One lab run, one daemon: knock-to-open latency is measured by bench/probe_knock_open.py in the
# client namespace (last knock leaves the client -> the SYN to port 22 is accepted), alternately
# with no status clients and with CLIENTS clients polling the snapshot at RATE Hz each, the way
# `guardian status` does (one connection per client, {"cmd": "snapshot"} every 1/RATE s, the reply
# parsed as JSON). Rounds alternate the order (A B, B A, ...) so drift on a shared machine hits
# both conditions alike. For each condition it reports latency median and p95, the daemon's CPU
# (utime + stime from /proc over the wall time of the probe) and, with clients, the request rate
# the pollers really achieved (a load that was not applied proves nothing).
#
# The pollers are plain client processes in the root namespace (the control socket is a file; no
# network is involved), PROCS processes of CLIENTS/PROCS threads each: blocking socket calls let
# threads overlap, so requests really are concurrent at the daemon. They render nothing: the
# claim is about the daemon, and 100 rich renders at 4 Hz would measure the renderer's CPU
# competing with the probe on a 2-core machine instead.
#
#   sudo .venv/bin/python bench/status_load.py [--rounds 4 --trials 10] [--json out.json]
#   python bench/status_load.py poll --socket PATH --clients 25 --rate 4 --duration 120  (a poller)
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run as a script: make `guardian` importable from the checkout
    sys.path.insert(0, str(REPO))

from guardian.control_client import ControlClientError, ControlConnection  # noqa: E402

# The daemon's config: one door with a close sequence (the probe closes the port after each trial);
# a long window so a trial never races its own expiry.
CONFIG = """\
[guard]
ports = [22]
[access]
window = "30s"
linger = "2s"
[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/tcp"]
timeout = "5s"
close = ["9000/tcp", "8000/tcp", "7000/tcp"]
"""
# --no-journal: the journal is host-wide, and other labs' sshd lines (same 192.0.2.x addresses)
# would reach this daemon. Knock-to-open does not involve the journal at all.
DAEMON_ARGS = ("--no-journal",)

DEFAULT_CLIENTS = 100
DEFAULT_RATE = 4.0
DEFAULT_PROCS = 4
READY_TIMEOUT = 20.0  # for every poller to connect and get its first reply
POLLER_MAX_DURATION = 600.0  # a poller never outlives this, whatever happens to its parent
READY_WORD = "ready"


# ---- the poller (runs as its own process) --------------------------------------------------------


@dataclass
class PollerCounts:
    requests: int = 0
    errors: int = 0
    late: int = 0  # polls that were due more than one period ago (the client fell behind)
    first_errors: list[str] = field(default_factory=list)


def _poll_one(
    path: str,
    period: float,
    stop: threading.Event,
    deadline: float,
    counts: PollerCounts,
    lock: threading.Lock,
    first_done: threading.Barrier,
) -> None:
    connection = ControlConnection(path, timeout=2.0)
    next_at = time.monotonic() + random.uniform(0.0, period)  # spread the clients' phases
    first = True
    try:
        stop.wait(max(0.0, next_at - time.monotonic()))
        while not stop.is_set() and time.monotonic() < deadline:
            ok = True
            error = ""
            try:
                connection.request({"cmd": "snapshot"})
            except ControlClientError as exc:
                ok, error = False, str(exc)
            with lock:
                counts.requests += 1
                if not ok:
                    counts.errors += 1
                    if len(counts.first_errors) < 5:
                        counts.first_errors.append(error)
            if first:
                first = False
                with contextlib.suppress(threading.BrokenBarrierError):
                    first_done.wait(timeout=READY_TIMEOUT)
            next_at += period
            now = time.monotonic()
            if next_at < now - period:
                with lock:
                    counts.late += 1
                next_at = now  # do not burst to catch up: a real dashboard just redraws late
            stop.wait(max(0.0, next_at - now))
    finally:
        connection.close()


def run_poller(path: str, clients: int, rate: float, duration: float) -> int:
    """CLIENTS threads, one connection each, a snapshot every 1/RATE s, until SIGTERM or
    duration. Prints READY_WORD once every client has its first reply, then a JSON line."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    counts = PollerCounts()
    lock = threading.Lock()
    first_done = threading.Barrier(clients + 1)
    deadline = time.monotonic() + min(duration, POLLER_MAX_DURATION)
    threads = [
        threading.Thread(
            target=_poll_one,
            args=(path, 1.0 / rate, stop, deadline, counts, lock, first_done),
            daemon=True,
        )
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        first_done.wait(timeout=READY_TIMEOUT)
        print(READY_WORD, flush=True)
    except threading.BrokenBarrierError:
        print("not ready", flush=True)
    started = time.monotonic()
    with lock:
        at_start = counts.requests
    while not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.2)
    with lock:
        at_stop = counts.requests
    elapsed = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(timeout=5.0)
    print(
        json.dumps(
            {
                "clients": clients,
                "requests": counts.requests,
                "requests_after_ready": at_stop - at_start,
                "seconds_after_ready": round(elapsed, 3),
                "errors": counts.errors,
                "late": counts.late,
                "first_errors": counts.first_errors,
            }
        ),
        flush=True,
    )
    return 0


# ---- the orchestrator ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 3),
        "p95_ms": round(percentile(values, 0.95), 3),
        "min_ms": round(min(values), 3),
        "max_ms": round(max(values), 3),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class PollerGroup:
    """CLIENTS pollers in PROCS processes, started together; stop() returns their totals."""

    socket_path: str
    clients: int = DEFAULT_CLIENTS
    rate: float = DEFAULT_RATE
    procs: int = DEFAULT_PROCS
    max_duration: float = 300.0
    _procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self) -> None:
        per_proc = [
            self.clients // self.procs + (i < self.clients % self.procs) for i in range(self.procs)
        ]
        for count in per_proc:
            if count == 0:
                continue
            argv = [
                sys.executable,
                str(HERE / "status_load.py"),
                "poll",
                "--socket",
                self.socket_path,
                "--clients",
                str(count),
                "--rate",
                str(self.rate),
                "--duration",
                str(self.max_duration),
            ]
            self._procs.append(
                subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        for proc in self._procs:
            assert proc.stdout is not None
            # readline() blocks, but the poller answers within READY_TIMEOUT (its barrier's bound)
            # or exits, which ends the line too.
            line = proc.stdout.readline().strip()
            if line != READY_WORD:
                self.stop()
                raise RuntimeError(f"a poller did not get ready: {line!r}")

    def stop(self) -> dict[str, Any]:
        """SIGTERM every poller, collect their JSON lines, add them up (bounded waits)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        totals: dict[str, Any] = {
            "clients": 0,
            "requests": 0,
            "requests_after_ready": 0,
            "errors": 0,
            "late": 0,
            "first_errors": [],
        }
        seconds: list[float] = []
        for proc in self._procs:
            try:
                out, _err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _err = proc.communicate(timeout=5)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if not lines:
                continue
            doc = json.loads(lines[-1])
            for key in ("clients", "requests", "requests_after_ready", "errors", "late"):
                totals[key] += doc[key]
            totals["first_errors"] += doc["first_errors"][:2]
            seconds.append(doc["seconds_after_ready"])
        self._procs.clear()
        totals["seconds"] = round(max(seconds), 3) if seconds else 0.0
        totals["rate_per_s"] = (
            round(totals["requests_after_ready"] / totals["seconds"], 1) if seconds else 0.0
        )
        return totals

    def __enter__(self) -> PollerGroup:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._procs:
            self.stop()


def probe(lab: Any, trials: int, pause: float = 0.3) -> tuple[list[float], int]:
    """Knock-to-open latencies (ms) from the client namespace, and how many trials never opened."""
    result = lab.run(
        "client",
        [
            sys.executable,
            str(HERE / "probe_knock_open.py"),
            "--server",
            lab.addr("server"),
            "--trials",
            str(trials),
            "--pause",
            str(pause),
        ],
        timeout=30 + trials * 8,
    )
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"probe printed nothing: {result.stderr.strip()}")
    data = json.loads(lines[-1])
    if "error" in data:
        raise RuntimeError(f"probe: {data['error']}")
    return [float(x) for x in data["latencies_ms"]], int(data["failures"])


@dataclass
class Condition:
    """What one condition ("without" or "with" clients) collected over all rounds."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    daemon_cpu: float = 0.0  # seconds
    wall: float = 0.0  # seconds of probing
    pollers: list[dict[str, Any]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            **summary(self.latencies),
            "never_opened": self.failures,
            "daemon_cpu_percent": round(100.0 * self.daemon_cpu / self.wall, 2) if self.wall else 0,
        }
        if self.pollers:
            doc["status_clients"] = self.pollers[0]["clients"]
            doc["status_requests_per_s"] = [p["rate_per_s"] for p in self.pollers]
            doc["status_errors"] = sum(p["errors"] for p in self.pollers)
            doc["status_late_polls"] = sum(p["late"] for p in self.pollers)
            doc["status_first_errors"] = [e for p in self.pollers for e in p["first_errors"]][:5]
        return doc


@contextlib.contextmanager
def _measured(cond: Condition, daemon_pid: int) -> Iterator[None]:
    cpu0, t0 = cpu_seconds(daemon_pid), time.monotonic()
    yield
    cond.daemon_cpu += cpu_seconds(daemon_pid) - cpu0
    cond.wall += time.monotonic() - t0


def run_rounds(
    lab: Any,
    socket_path: str,
    daemon_pid: int,
    *,
    rounds: int,
    trials: int,
    clients: int = DEFAULT_CLIENTS,
    rate: float = DEFAULT_RATE,
    procs: int = DEFAULT_PROCS,
    log: Any = None,
) -> tuple[Condition, Condition]:
    """Alternate the two conditions for `rounds` rounds of `trials` each: (without, with)."""
    without, with_clients = Condition(), Condition()

    def run_without() -> None:
        with _measured(without, daemon_pid):
            lat, failed = probe(lab, trials)
        without.latencies += lat
        without.failures += failed

    def run_with() -> None:
        group = PollerGroup(socket_path, clients, rate, procs, max_duration=60 + trials * 8)
        with group:
            with _measured(with_clients, daemon_pid):
                lat, failed = probe(lab, trials)
            with_clients.pollers.append(group.stop())
        with_clients.latencies += lat
        with_clients.failures += failed

    for round_no in range(rounds):
        order = (run_without, run_with) if round_no % 2 == 0 else (run_with, run_without)
        for step in order:
            if log is not None:
                name = "without clients" if step is run_without else f"with {clients} clients"
                print(f"round {round_no + 1}/{rounds}: {name}", file=log, flush=True)
            step()
    return without, with_clients


def compare(without: Condition, with_clients: Condition) -> dict[str, Any]:
    base = statistics.median(without.latencies)
    loaded = statistics.median(with_clients.latencies)
    return {
        "benchmark": "knock-to-open with and without concurrent `guardian status` pollers",
        "without_status_clients": without.report(),
        "with_status_clients": with_clients.report(),
        "ratio_median_with_over_without": round(loaded / base, 3),
        "ratio_p95_with_over_without": round(
            percentile(with_clients.latencies, 0.95) / percentile(without.latencies, 0.95), 3
        ),
    }


def bench(args: argparse.Namespace) -> int:
    from guardian.lab.guardian_proc import start_guardian
    from guardian.lab.netns import Lab
    from guardian.lab.sshd import start_sshd

    with Lab(hosts=("server", "client")) as lab:
        start_sshd(lab)
        handle = start_guardian(lab, CONFIG, extra_args=DAEMON_ARGS)
        try:
            without, with_clients = run_rounds(
                lab,
                str(handle.socket_path),
                handle.pid,
                rounds=args.rounds,
                trials=args.trials,
                clients=args.clients,
                rate=args.rate,
                procs=args.procs,
                log=sys.stderr,
            )
        finally:
            handle.stop()
    result = compare(without, with_clients)
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="mode")
    poll = sub.add_parser("poll", help="run pollers against a control socket (used by the bench)")
    poll.add_argument("--socket", required=True)
    poll.add_argument("--clients", type=int, default=25)
    poll.add_argument("--rate", type=float, default=DEFAULT_RATE)
    poll.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--trials", type=int, default=10, help="per round and condition")
    ap.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE, help="polls per second per client")
    ap.add_argument("--procs", type=int, default=DEFAULT_PROCS, help="poller processes")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.mode == "poll":
        return run_poller(args.socket, args.clients, args.rate, args.duration)
    if os.geteuid() != 0:
        print("status_load: needs root (network namespaces)", file=sys.stderr)
        return 1
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
