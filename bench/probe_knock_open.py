# Client side of the knock-to-open benchmark, run inside the lab's client namespace. For each trial
# it sends the open sequence (one SYN per knock, like the `knock` client), takes the time just
# before the last knock leaves, then tries to connect to the guarded port until the SYN is accepted;
# then it sends the close sequence and waits until the port refuses again. Every loop is bounded in
# count and time. Output: one JSON object on stdout with the latencies in milliseconds.
from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import time


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


def wait_until(host: str, port: int, want_open: bool, max_wait: float, gap: float) -> float | None:
    """perf_counter() at the moment the port's state is as wanted, or None after max_wait."""
    start = time.perf_counter()
    attempts = 0
    while time.perf_counter() - start < max_wait and attempts < 200_000:
        attempts += 1
        # A drop-style gate would make connect() block: a short timeout keeps the loop bounded.
        if try_connect(host, port, timeout=0.05) == want_open:
            return time.perf_counter()
        time.sleep(gap)
    return None


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
    args = ap.parse_args()
    open_ports = [int(p) for p in args.open.split(",")]
    close_ports = [int(p) for p in args.close.split(",")]
    latencies: list[float] = []
    failures = 0
    if try_connect(args.server, args.port, 0.5):
        print(json.dumps({"error": "port already open before the first knock"}))
        return 1
    for _ in range(args.trials):
        for port in open_ports[:-1]:
            knock(args.server, port)
            time.sleep(0.002)  # keep knocks in order on the wire, as a real client would
        t0 = time.perf_counter()
        knock(args.server, open_ports[-1])
        opened_at = wait_until(args.server, args.port, True, args.max_wait, args.gap)
        if opened_at is None:
            failures += 1
        else:
            latencies.append((opened_at - t0) * 1000.0)
        for port in close_ports:
            knock(args.server, port)
            time.sleep(0.002)
        if wait_until(args.server, args.port, False, args.max_wait, 0.005) is None:
            print(json.dumps({"error": "close sequence did not close the port"}))
            return 1
        time.sleep(args.pause)
    print(json.dumps({"latencies_ms": latencies, "failures": failures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
