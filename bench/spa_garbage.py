# Garbage SPA packets the verifier absorbs per core (issue 5's second benchmark), two ways:
#
# 1. In-process, one core: the engine's SPA gate (guardian/engine/spa.py SpaGate.judge) and the
#    whole engine step (Engine.feed(SpaSeen(...)): counters, notices) over pre-built payloads of
#    each kind, timed with the process CPU clock. Kinds, cheapest to dearest:
#      random     random bytes, 1..1400 long (refused by the wire checks)
#      truncated  a valid packet cut short (wire checks, or the HMAC)
#      oversized  the right alphabet, 1501..8000 long (length check)
#      alphabet   the right alphabet and a valid packet's length, random content (mostly refused
#                 by the first-character check: only 4 of 64 characters can start a packet)
#      worst      as `alphabet` but starting with one of those 4 characters: passes every wire
#                 check and costs one HMAC-SHA256 per stanza whose source covers the sender
#    `worst` is also measured with 4 stanzas, to show the per-stanza cost.
# 2. The daemon end to end, in the lab (prefix "gspb"): the attacker host sends a mix of random,
#    truncated, alphabet and worst payloads (none over 1400 bytes: no IP fragments) to UDP 62201
#    at a bounded rate for a bounded time; the daemon's CPU time (user + system, /proc via psutil)
#    and its spa_refused / kernel-drop counters (`guardian status --json`) give packets per CPU
#    second. A valid packet sent right after must still open port 22 (checked and timed). The
#    same flood then hits fwknopd 2.6.10 in UDP-server mode (set up as in bench/spa_open.py): its
#    CPU time against the datagrams the kernel queued to its socket (/proc/net/snmp, the server's
#    namespace), for scale.
#
#   sudo .venv/bin/python bench/spa_garbage.py [--count 20000 --rate 20000 --seconds 5]
#        [--json bench/results/spa_garbage.json]
from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from guardian.config import Config, Guard, Spa, SpaStanza
from guardian.engine.core import Engine
from guardian.engine.spa import SpaAccepted, SpaGate
from guardian.events import SpaSeen
from guardian.lab.guardian_proc import GuardianHandle, start_guardian
from guardian.lab.netns import Lab
from guardian.parsers.spa import SpaKey
from guardian.spa_packet import encode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from spa_open import PREFIX, SPA_PORT, start_fwknopd, stop  # noqa: E402

ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
FIRST_CHARS = b"89+/"  # the only characters an fwknop packet can start with (parsers/spa.py)
KINDS = ("random", "truncated", "oversized", "alphabet", "worst")
FLOOD_KINDS = ("random", "truncated", "alphabet", "worst")  # <= 1400 bytes: one frame each
BENCH_NET = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544: sources of the in-process packets
OPEN_WAIT = 3.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

GUARDIAN_CONFIG = """\
[guard]
ports = [22]
[access]
window = "30s"
[spa]
port = {port}
[[spa.stanza]]
name = "bench"
key_base64_file = "{key_file}"
hmac_key_base64_file = "{hmac_file}"
hmac = "sha256"
open_ports = ["tcp/22"]
"""

# Runs in the attacker (or client) namespace: hex payloads from a file (cycled), one datagram each,
# at a bounded rate, stopping at `count` datagrams or the time limit. Prints what it sent.
SENDER = """
import json, socket, sys, time
target, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rate, seconds, count = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
payloads = [bytes.fromhex(line) for line in open(path).read().split()]
sent = 0
start = time.monotonic()
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    while sent < count and time.monotonic() - start < seconds:
        for _ in range(min(50, count - sent)):
            sock.sendto(payloads[sent % len(payloads)], (target, port))
            sent += 1
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(min(ahead, 0.1))
print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}))
"""


# -- payloads --------------------------------------------------------------------------------------


def valid_packet(key: SpaKey) -> bytes:
    return encode(
        key,
        username="bench",
        allow_ip="0.0.0.0",
        access=(("tcp", 22),),
        timestamp=int(time.time()),
    )


def garbage(kind: str, count: int, rng: random.Random, valid: bytes) -> list[bytes]:
    def alphabet(length: int) -> bytes:
        return bytes(rng.choices(ALPHABET, k=length))

    out: list[bytes] = []
    for _ in range(count):
        if kind == "random":
            out.append(rng.randbytes(rng.randrange(1, 1401)))
        elif kind == "truncated":
            out.append(valid[: rng.randrange(1, len(valid))])
        elif kind == "oversized":
            out.append(alphabet(rng.randrange(1501, 8001)))
        elif kind == "alphabet":
            out.append(alphabet(len(valid)))
        elif kind == "worst":
            out.append(bytes((rng.choice(FIRST_CHARS),)) + alphabet(len(valid) - 1))
        else:
            raise ValueError(kind)
    return out


# -- in-process ------------------------------------------------------------------------------------


def stanzas(key: SpaKey, count: int, rng: random.Random) -> tuple[SpaStanza, ...]:
    """`count` stanzas for any source; the real key is the last one's (the dearest case)."""
    made = [
        SpaStanza(name=f"decoy{i}", key=rng.randbytes(32), hmac_key=rng.randbytes(64))
        for i in range(count - 1)
    ]
    assert key.hmac_key is not None
    made.append(SpaStanza(name="bench", key=key.key, hmac_key=key.hmac_key))
    return tuple(made)


def packets_per_cpu_second(run: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Median over `repeats` of packets judged per second of this process's CPU time."""
    rates = []
    refused = 0
    for _ in range(repeats):
        start = time.process_time()
        refused = run()
        rates.append(refused / (time.process_time() - start))
    return statistics.median(rates), refused


def in_process(count: int, repeats: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    key = SpaKey(rng.randbytes(32), rng.randbytes(64), "sha256")
    valid = valid_packet(key)
    sources = [BENCH_NET[rng.randrange(2, BENCH_NET.num_addresses - 1)] for _ in range(4096)]
    results: dict[str, object] = {}
    cases = [(kind, 1) for kind in KINDS] + [("worst", 4)]
    for kind, stanza_count in cases:
        payloads = garbage(kind, count, rng, valid)
        config = Config(guard=Guard(ports=(22,)), spa=Spa(stanzas=stanzas(key, stanza_count, rng)))
        gate = SpaGate(config.spa, (22,))
        engine = Engine(config)
        wall = time.time()

        def judge_all(
            gate: SpaGate = gate, payloads: list[bytes] = payloads, wall: float = wall
        ) -> int:
            refused = 0
            for i, payload in enumerate(payloads):
                verdict, _ = gate.judge(sources[i & 4095], payload, wall)
                refused += not isinstance(verdict, SpaAccepted)
            return refused

        def feed_all(
            engine: Engine = engine, payloads: list[bytes] = payloads, wall: float = wall
        ) -> int:
            before = engine.snapshot(0.0).counters["spa_refused"]
            for i, payload in enumerate(payloads):
                engine.feed(SpaSeen(sources[i & 4095], SPA_PORT, payload), 1.0, wall=wall)
            return engine.snapshot(0.0).counters["spa_refused"] - before

        gate_rate, gate_refused = packets_per_cpu_second(judge_all, repeats)
        engine_rate, engine_refused = packets_per_cpu_second(feed_all, repeats)
        if gate_refused != count or engine_refused != count:
            raise RuntimeError(f"{kind}: garbage accepted ({gate_refused}, {engine_refused})")
        # The gate still works after the garbage: a fresh valid packet is accepted.
        verdict, _ = gate.judge(sources[0], valid_packet(key), wall)
        if not isinstance(verdict, SpaAccepted):
            raise RuntimeError(f"{kind}: a valid packet after the garbage was refused: {verdict}")
        name = kind if stanza_count == 1 else f"{kind}, {stanza_count} stanzas"
        results[name] = {
            "payloads": count,
            "gate_judge_per_cpu_s": round(gate_rate),
            "engine_feed_per_cpu_s": round(engine_rate),
            "engine_feed_us_per_packet": round(1e6 / engine_rate, 2),
        }
        print(f"  in-process {name}: {results[name]}", file=sys.stderr)
    return results


# -- the daemon ------------------------------------------------------------------------------------


def secret(lab: Lab, name: str, content: str) -> Path:
    path = lab.workdir / name
    path.write_text(content + "\n")
    os.chmod(path, 0o600)
    return path


def status(lab: Lab, handle: GuardianHandle) -> dict[str, object]:
    argv = [sys.executable, "-m", "guardian", "status", "--json", "-s", str(handle.socket_path)]
    done = lab.run("server", argv, timeout=30, check=True)
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def counters(lab: Lab, handle: GuardianHandle) -> dict[str, int]:
    found = status(lab, handle)["counters"]
    assert isinstance(found, dict)
    return {str(k): int(v) for k, v in found.items()}


def granted(lab: Lab, host: str) -> bool:
    done = lab.run("server", ["nft", "-j", "list", "set", "inet", "guardian", "allow4"], check=True)
    return f'"{lab.addr(host)}"' in done.stdout


def send(
    lab: Lab, host: str, payloads: list[bytes], rate: float, seconds: float, count: int
) -> int:
    path = lab.workdir / f"payloads-{host}.hex"
    path.write_text("\n".join(p.hex() for p in payloads) + "\n")
    argv = [
        sys.executable,
        "-c",
        SENDER,
        lab.addr("server"),
        str(SPA_PORT),
        str(path),
        str(rate),
        str(seconds),
        str(count),
    ]
    done = lab.run(host, argv, timeout=seconds + 30, check=True)
    return int(json.loads(done.stdout.strip().splitlines()[-1])["sent"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/PID/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def udp_stats(lab: Lab) -> dict[str, int]:
    """The server namespace's Udp counters from /proc/net/snmp (per network namespace)."""
    lines = [ln.split() for ln in lab.run("server", ["cat", "/proc/net/snmp"]).stdout.splitlines()]
    names, values = [ln for ln in lines if ln and ln[0] == "Udp:"][:2]
    return {k: int(v) for k, v in zip(names[1:], values[1:], strict=True)}


def open_after(lab: Lab, key: SpaKey) -> float | None:
    """Seconds from sending one valid packet from the client to its grant being in the set."""
    packet = valid_packet(key)
    started = time.monotonic()
    send(lab, "client", [packet], 1.0, 5.0, 1)
    while time.monotonic() - started < OPEN_WAIT:
        if granted(lab, "client"):
            return round(time.monotonic() - started, 3)
        time.sleep(0.01)
    return None


def flood(lab: Lab, pid: int, mix: list[bytes], rate: float, seconds: float) -> tuple[int, float]:
    """Send the mix from the attacker; (datagrams sent, CPU seconds `pid` spent meanwhile)."""
    cpu_before = cpu_seconds(pid)
    sent = send(lab, "attacker", mix, rate, seconds, int(rate * seconds))
    time.sleep(0.5)  # let the daemon drain what is still queued
    return sent, cpu_seconds(pid) - cpu_before


def flood_guardian(
    lab: Lab, key: SpaKey, mix: list[bytes], rate: float, seconds: float
) -> dict[str, object]:
    assert key.hmac_key is not None
    key_file = secret(lab, "bench.key", base64.b64encode(key.key).decode())
    hmac_file = secret(lab, "bench.hmac", base64.b64encode(key.hmac_key).decode())
    config = GUARDIAN_CONFIG.format(port=SPA_PORT, key_file=key_file, hmac_file=hmac_file)
    handle = start_guardian(lab, config)
    try:
        before = counters(lab, handle)
        sent, cpu = flood(lab, handle.pid, mix, rate, seconds)
        after = counters(lab, handle)
        opened = open_after(lab, key)
        if handle.returncode is not None:
            raise RuntimeError(f"the daemon died:\n{handle.log_text()[-2000:]}")
    finally:
        handle.stop()
        lab.run("server", ["nft", "flush", "set", "inet", "guardian", "allow4"], check=True)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    refused = delta.get("spa_refused", 0)
    return {
        "sent": sent,
        "spa_seen": delta.get("spa_seen", 0),
        "spa_refused": refused,
        "knock_kernel_drops": delta.get("knock_kernel_drops", 0),
        "cpu_s": round(cpu, 2),
        "cpu_share": round(cpu / seconds, 3),
        "refused_per_cpu_s": round(refused / cpu) if cpu > 0 else None,
        "valid_packet_after_flood_opened_s": opened,
    }


def flood_fwknopd(
    lab: Lab, key: SpaKey, mix: list[bytes], rate: float, seconds: float
) -> dict[str, object]:
    assert key.hmac_key is not None
    key_b64 = base64.b64encode(key.key).decode()
    hmac_b64 = base64.b64encode(key.hmac_key).decode()
    proc, log_path = start_fwknopd(lab, key_b64, hmac_b64, udp_server=True)
    try:
        before = udp_stats(lab)
        sent, cpu = flood(lab, proc.pid, mix, rate, seconds)
        after = udp_stats(lab)
        opened = open_after(lab, key)
        if proc.poll() is not None:
            raise RuntimeError(f"fwknopd died:\n{log_path.read_text(errors='replace')[-2000:]}")
    finally:
        stop(proc)
        lab.run("server", ["nft", "flush", "set", "inet", "guardian", "allow4"], check=True)
    if os.environ.get("SPA_GARBAGE_DEBUG"):
        print(log_path.read_text(errors="replace")[:3000], file=sys.stderr)
    received = after["InDatagrams"] - before["InDatagrams"]  # queued to its socket
    return {
        "sent": sent,
        "udp_in_datagrams": received,
        "udp_rcvbuf_errors": after["RcvbufErrors"] - before["RcvbufErrors"],
        "cpu_s": round(cpu, 2),
        "cpu_share": round(cpu / seconds, 3),
        "received_per_cpu_s": round(received / cpu) if cpu > 0 else None,
        "log_lines": len(log_path.read_bytes().splitlines()),  # it logs every packet it refuses
        "log_bytes": log_path.stat().st_size,
        "valid_packet_after_flood_opened_s": opened,
    }


def daemons(rate: float, seconds: float, seed: int, with_fwknopd: bool) -> dict[str, object]:
    rng = random.Random(seed)
    key = SpaKey(os.urandom(32), os.urandom(64), "sha256")
    valid = valid_packet(key)
    mix = [p for kind in FLOOD_KINDS for p in garbage(kind, 2500, rng, valid)]
    rng.shuffle(mix)
    result: dict[str, object] = {
        "rate_target_pps": rate,
        "seconds": seconds,
        "mix": f"{', '.join(FLOOD_KINDS)}: 2,500 each, shuffled, cycled",
    }
    with Lab(hosts=("server", "client", "attacker"), prefix=PREFIX) as lab:
        print("daemon flood: ssh-guardian", file=sys.stderr)
        result["ssh-guardian"] = flood_guardian(lab, key, mix, rate, seconds)  # installs the table
        if with_fwknopd:
            print("daemon flood: fwknopd (UDP server)", file=sys.stderr)
            result["fwknopd 2.6.10 (UDP server)"] = flood_fwknopd(lab, key, mix, rate, seconds)
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000, help="payloads per in-process kind")
    ap.add_argument("--repeats", type=int, default=3, help="in-process runs per kind (median)")
    ap.add_argument("--rate", type=float, default=20000, help="flood packets per second")
    ap.add_argument("--seconds", type=float, default=5.0, help="flood duration (cap)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-daemon", action="store_true", help="in-process part only")
    ap.add_argument("--no-fwknopd", action="store_true", help="flood ssh-guardian only")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not 0 < args.seconds <= 30 or not 0 < args.rate <= 200_000:
        ap.error("--seconds must be in (0, 30] and --rate in (0, 200000]")
    result: dict[str, object] = {
        "benchmark": "garbage SPA packets absorbed per core",
        "in_process": in_process(args.count, args.repeats, args.seed),
    }
    if not args.no_daemon:
        result["daemon"] = daemons(args.rate, args.seconds, args.seed, not args.no_fwknopd)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
