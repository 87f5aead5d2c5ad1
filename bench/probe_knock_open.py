# Client side of the knock-to-open benchmark, run inside the lab's client namespace. For each trial
# it sends the open sequence (one SYN per knock, like the `knock` client), takes the time just
# before the last knock leaves, then tries to connect to the guarded port until the SYN is accepted;
# then it sends the close sequence and waits until the port refuses again. Every loop is bounded in
# count and time. Output: one JSON object on stdout with the latencies in milliseconds.
from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any


def knock(host: str, port: int) -> None:
    """One SYN to host:port, the way `knock` does it: non-blocking connect, then close."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        s.connect_ex((host, port))


def try_connect(host: str, port: int, timeout: float) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            return True
        except (ConnectionRefusedError, TimeoutError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT):
                return False
            raise


@dataclass(frozen=True)
class Opening:
    """perf_counter() readings around the first connection attempt that found the port as
    wanted (for the figure: the first one accepted)."""

    syn: float  # just before that attempt's connect(): its SYN left then
    last_refused_syn: float | None  # the same for the attempt before it (the gate was shut)
    connected: float  # when that connect() returned


def poll(host: str, port: int, want_open: bool, max_wait: float, gap: float) -> Opening | None:
    """Try to connect until the port is as wanted (open: an attempt accepted; shut: one
    refused), bounded in time and count; the readings around the attempt that showed it."""
    start = time.perf_counter()
    before: float | None = None
    for _ in range(200_000):
        syn = time.perf_counter()
        if syn - start >= max_wait:
            return None
        # A drop-style gate would make connect() block: a short timeout keeps the loop bounded.
        if try_connect(host, port, timeout=0.05) == want_open:
            return Opening(syn, before, time.perf_counter())
        before = syn
        time.sleep(gap)
    return None


def time_open(host: str, port: int, max_wait: float, gap: float) -> Opening | None:
    """Try to connect until one attempt is accepted (bounded in time and count)."""
    return poll(host, port, True, max_wait, gap)


def wait_until(host: str, port: int, want_open: bool, max_wait: float, gap: float) -> float | None:
    """perf_counter() at the moment the port's state is as wanted, or None after max_wait."""
    seen = poll(host, port, want_open, max_wait, gap)
    return None if seen is None else seen.connected


@dataclass
class Probed:
    """Per trial, in ms from the packet that should open: the figure and its bracket. The probe
    fills it (add) and prints it (as_json); the benchmark reads it back (of) and adds the
    rounds up (+=)."""

    latencies: list[float] = field(default_factory=list)  # the accepted SYN left (the figure)
    last_refused: list[float] = field(default_factory=list)  # the refused SYN before it left
    connect_returned: list[float] = field(default_factory=list)  # the accepted connect() returned
    failures: int = 0  # trials whose port never opened

    def add(self, t0: float, opening: Opening | None) -> None:
        if opening is None:
            self.failures += 1
            return
        self.latencies.append((opening.syn - t0) * 1000.0)
        if opening.last_refused_syn is not None:  # (none when the first attempt got in)
            self.last_refused.append((opening.last_refused_syn - t0) * 1000.0)
        self.connect_returned.append((opening.connected - t0) * 1000.0)

    def as_json(self) -> dict[str, object]:
        return {
            "latencies_ms": self.latencies,
            "last_refused_ms": self.last_refused,
            "connect_returned_ms": self.connect_returned,
            "failures": self.failures,
        }

    @classmethod
    def of(cls, data: dict[str, Any]) -> Probed:
        return cls(
            [float(x) for x in data["latencies_ms"]],
            [float(x) for x in data["last_refused_ms"] if x is not None],  # (older results)
            [float(x) for x in data["connect_returned_ms"]],
            int(data.get("failures", 0)),
        )

    def __iadd__(self, other: Probed) -> Probed:
        self.latencies += other.latencies
        self.last_refused += other.last_refused
        self.connect_returned += other.connect_returned
        self.failures += other.failures
        return self


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--port", type=int, default=22)
    ap.add_argument("--open", default="7000,8000,9000")
    ap.add_argument("--close", default="9000,8000,7000")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--max-wait", type=float, default=3.0)
    ap.add_argument("--gap", type=float, default=0.0002, help="seconds between connect attempts")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds between trials")
    ap.add_argument(
        "--cpu", type=int, help="run on this CPU only (the bench keeps the server side off it)"
    )
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    open_ports = [int(p) for p in args.open.split(",")]
    close_ports = [int(p) for p in args.close.split(",")]
    timings = Probed()
    if try_connect(args.server, args.port, 0.5):
        print(json.dumps({"error": "port already open before the first knock"}))
        return 1
    for _ in range(args.trials):
        for port in open_ports[:-1]:
            knock(args.server, port)
            time.sleep(0.002)  # keep knocks in order on the wire, as a real client would
        t0 = time.perf_counter()
        knock(args.server, open_ports[-1])
        timings.add(t0, time_open(args.server, args.port, args.max_wait, args.gap))
        for port in close_ports:
            knock(args.server, port)
            time.sleep(0.002)
        if wait_until(args.server, args.port, False, args.max_wait, 0.005) is None:
            print(json.dumps({"error": "close sequence did not close the port"}))
            return 1
        time.sleep(args.pause)
    print(json.dumps(timings.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
