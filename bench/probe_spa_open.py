# Client side of the SPA-to-open benchmark, run inside the lab's client namespace with the repo's
# interpreter. For each trial it builds one fresh SPA packet (a new timestamp and new random digits:
# both daemons refuse a replay), takes the time just before the datagram leaves, then tries to
# connect to the guarded port until the SYN is accepted (timed as probe_knock_open.py's header
# says); then it waits until the grant has expired
# (the port refuses again) so the next trial starts from a closed gate. Building happens before the
# clock starts, so the real `fwknop` client (--builder fwknop, one process per packet) and our
# encoder (--builder guardian) measure the same thing. Every loop is bounded in count and time.
# Output: one JSON object on stdout with the latencies in milliseconds.
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from probe_knock_open import Probed, time_open, try_connect, wait_until

SPA_PORT = 62201


def read_b64(path: str) -> bytes:
    return base64.b64decode(Path(path).read_text().strip(), validate=True)


def build_guardian(key_file: str, hmac_file: str, username: str) -> bytes:
    # Imported here: the fwknop builder must work without the repo on sys.path.
    from guardian.parsers.spa import SpaKey
    from guardian.spa_packet import encode

    key = SpaKey(read_b64(key_file), read_b64(hmac_file), "sha256")
    return encode(
        key,
        username=username,
        allow_ip="0.0.0.0",
        access=(("tcp", 22),),
        timestamp=int(time.time()),
    )


def build_fwknop(key_file: str, hmac_file: str, server: str, workdir: str) -> bytes:
    """The packet the real client would send (`-s`: allow the packet's source), not sent (-T)."""
    out = Path(workdir) / "packet.txt"
    out.unlink(missing_ok=True)
    argv = [
        "fwknop",
        "--no-rc-file",
        "--no-home-dir",  # nothing read from or saved to ~ (-E names the unused args file)
        "-E",
        str(Path(workdir) / "fwknop.args"),
        "--no-save-args",
        "-A",
        "tcp/22",
        "-s",
        "-D",
        server,
        "--key-base64-rijndael",
        Path(key_file).read_text().strip(),
        "--key-base64-hmac",
        Path(hmac_file).read_text().strip(),
        "--use-hmac",
        "-T",
        "-B",
        str(out),
    ]
    subprocess.run(argv, capture_output=True, check=True, timeout=10)
    return out.read_text().strip().encode()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--port", type=int, default=22)
    ap.add_argument("--spa-port", type=int, default=SPA_PORT)
    ap.add_argument("--key-file", required=True, help="base64 Rijndael key (KEY_BASE64)")
    ap.add_argument("--hmac-file", required=True, help="base64 HMAC-SHA256 key")
    ap.add_argument("--username", default="bench")
    ap.add_argument("--builder", choices=("guardian", "fwknop"), default="guardian")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--max-wait", type=float, default=3.0, help="seconds to wait for the open")
    ap.add_argument("--close-wait", type=float, default=8.0, help="seconds to wait for expiry")
    ap.add_argument("--gap", type=float, default=0.0002, help="seconds between connect attempts")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between trials")
    ap.add_argument(
        "--cpu", type=int, help="run on this CPU only (the bench keeps the server side off it)"
    )
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    timings = Probed()
    sendto_ms: list[float] = []  # how long sendto() itself took (the kernel's own path)
    sent_wall: list[float] = []  # time.time() at each sendto: to line up with a daemon trace
    family = socket.AF_INET6 if ":" in args.server else socket.AF_INET
    if try_connect(args.server, args.port, 0.5):
        print(json.dumps({"error": "port already open before the first packet"}))
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="probe-spa-") as workdir,
        socket.socket(family, socket.SOCK_DGRAM) as sock,
    ):
        for _ in range(args.trials):
            if args.builder == "fwknop":
                packet = build_fwknop(args.key_file, args.hmac_file, args.server, workdir)
            else:
                packet = build_guardian(args.key_file, args.hmac_file, args.username)
            sent_wall.append(time.time())
            t0 = time.perf_counter()
            sock.sendto(packet, (args.server, args.spa_port))
            sendto_ms.append((time.perf_counter() - t0) * 1000.0)
            timings.add(t0, time_open(args.server, args.port, args.max_wait, args.gap))
            if wait_until(args.server, args.port, False, args.close_wait, 0.01) is None:
                print(json.dumps({"error": "the grant did not expire"}))
                return 1
            time.sleep(args.pause)
    print(json.dumps({**timings.as_json(), "sent_wall": sent_wall, "sendto_ms": sendto_ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
