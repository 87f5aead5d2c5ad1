# SPA-to-open latency, ssh-guardian vs fwknopd 2.6.10 (UDP-server mode and pcap mode), in one lab
# run (issue 5's benchmark).
#
# All three gate the same nftables table (inet guardian, installed by ssh-guardian), hold the same
# key pair (HMAC-SHA256) and are driven by the same client probe (bench/probe_spa_open.py): the
# time runs from the moment the SPA datagram leaves the client to the moment the client's SYN to
# port 22 is accepted by sshd. fwknopd opens access with an access.conf command cycle,
# `nft add element inet guardian allow4 { $SRC timeout 1s }`: the same set element our daemon
# adds in-process (fwknopd has no nftables support of its own; its iptables rules would be a
# different gate). Every grant lasts 1 s (our stanza's access_timeout; fwknopd's element timeout),
# and the probe waits for it to lapse before the next trial. While fwknopd runs, our daemon is
# stopped (its table and rules stay in the kernel, as after any stop), exactly as
# bench/knock_open.py does for knockd. fwknopd runs with its defaults otherwise (in pcap mode
# that includes PCAP_LOOP_SLEEP = 100 ms between polls). Rounds alternate the three daemons so
# machine noise hits each of them.
#
# The probe runs on one CPU and the daemon under test on the other (bench/cpus.py; --no-pin: not).
#
#   sudo .venv/bin/python bench/spa_open.py [--rounds 3 --trials 12] [--no-pin] [--json out.json]
from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cpus import CLIENT_CPU, SERVER_CPU, can_pin, pin
from probe_knock_open import Probed

from guardian.lab.guardian_proc import start_guardian
from guardian.lab.netns import Lab
from guardian.lab.sshd import start_sshd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PREFIX = "gspb"
SPA_PORT = 62201
GRANT_SECONDS = 1
NFT = "/usr/sbin/nft"
OURS = "ssh-guardian"
FWKNOPD_UDP = "fwknopd 2.6.10 (UDP server)"
FWKNOPD_PCAP = "fwknopd 2.6.10 (pcap)"
FWKNOPD_READY = 10.0  # seconds fwknopd gets to say its loop is running
# fwknopd 2.6.10's last start-up line in UDP-server and in pcap mode.
READY_LINES = ("Kicking off UDP server", "Starting fwknopd main event loop")
_fwknopd_serial = itertools.count(1)

GUARDIAN_CONFIG = """\
[guard]
ports = [22]
[access]
window = "30s"
linger = "0s"
[spa]
port = {port}
[[spa.stanza]]
name = "bench"
key_base64_file = "{key_file}"
hmac_key_base64_file = "{hmac_file}"
hmac = "sha256"
open_ports = ["tcp/22"]
access_timeout = "{grant}s"
"""

# fwknopd's own files (its syntax, not ours). The command cycle is fwknopd's way to drive a
# firewall it does not support; fwknopd splits the command into argv itself (no shell).
FWKNOPD_CONF = """\
PCAP_INTF                   eth0;
PCAP_FILTER                 udp port {port};
UDPSERV_PORT                {port};
FWKNOP_RUN_DIR              {run_dir};
"""
ACCESS_CONF = """\
SOURCE                      ANY
KEY_BASE64                  {key}
HMAC_KEY_BASE64             {hmac}
HMAC_DIGEST_TYPE            sha256
CMD_CYCLE_OPEN              {nft} add element inet guardian allow4 {{ $SRC timeout {grant}s }}
CMD_CYCLE_CLOSE             NONE
CMD_CYCLE_TIMER             {grant}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def secret(lab: Lab, name: str, content: str) -> Path:
    path = lab.workdir / name
    path.write_text(content + "\n")
    os.chmod(path, 0o600)
    return path


class Bench:
    """The lab, the keys, and one round per daemon."""

    def __init__(self, lab: Lab, trials: int, builder: str, pinned: bool) -> None:
        self.lab = lab
        self.pinned = pinned
        self.trials = trials
        self.builder = builder
        self.key_b64 = base64.b64encode(os.urandom(32)).decode()
        self.hmac_b64 = base64.b64encode(os.urandom(64)).decode()
        self.key_file = secret(lab, "bench.key", self.key_b64)
        self.hmac_file = secret(lab, "bench.hmac", self.hmac_b64)
        self.guardian_config = GUARDIAN_CONFIG.format(
            port=SPA_PORT, key_file=self.key_file, hmac_file=self.hmac_file, grant=GRANT_SECONDS
        )

    def probe(self) -> Probed:
        lab = self.lab
        argv = [
            sys.executable,
            str(HERE / "probe_spa_open.py"),
            "--server",
            lab.addr("server"),
            "--key-file",
            str(self.key_file),
            "--hmac-file",
            str(self.hmac_file),
            "--builder",
            self.builder,
            "--trials",
            str(self.trials),
            *(["--cpu", str(CLIENT_CPU)] if self.pinned else []),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = lab.run("client", argv, timeout=30 + self.trials * 12, env=env)
        lines = result.stdout.strip().splitlines()
        if not lines:
            raise RuntimeError(f"probe printed nothing: {result.stderr.strip()}")
        data = json.loads(lines[-1])
        if "error" in data:
            raise RuntimeError(f"probe: {data['error']}")
        if data["failures"]:
            print(f"  warning: {data['failures']} trial(s) never opened", file=sys.stderr)
        return Probed.of(data)

    def flush(self) -> None:
        self.lab.run("server", ["nft", "flush", "set", "inet", "guardian", "allow4"], check=True)

    def guardian_round(self) -> Probed:
        handle = start_guardian(self.lab, self.guardian_config)
        if self.pinned:
            pin(handle.pid, SERVER_CPU)
        try:
            return self.probe()
        finally:
            handle.stop()
            self.flush()

    def fwknopd_round(self, udp_server: bool) -> Probed:
        proc, _ = start_fwknopd(self.lab, self.key_b64, self.hmac_b64, udp_server=udp_server)
        if self.pinned:
            pin(proc.pid, SERVER_CPU)
        try:
            return self.probe()
        finally:
            stop(proc)
            self.flush()


def start_fwknopd(
    lab: Lab, key_b64: str, hmac_b64: str, *, udp_server: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    """fwknopd in the server namespace with its own files in a fresh directory of the lab's work
    dir (config, access.conf, pid, digest cache, log); returns once its loop runs."""
    run_dir = lab.workdir / f"fwknopd-{next(_fwknopd_serial)}"
    run_dir.mkdir(mode=0o700)
    conf = run_dir / "fwknopd.conf"
    conf.write_text(FWKNOPD_CONF.format(port=SPA_PORT, run_dir=run_dir))
    access = run_dir / "access.conf"
    access.write_text(ACCESS_CONF.format(key=key_b64, hmac=hmac_b64, grant=GRANT_SECONDS, nft=NFT))
    for path in (conf, access):
        os.chmod(path, 0o600)  # fwknopd warns about (and we never want) readable keys
    argv = [
        "fwknopd",
        "-f",
        "-c",
        str(conf),
        "-a",
        str(access),
        "-i",
        "eth0",
        "-p",
        str(run_dir / "fwknopd.pid"),
        "-d",
        str(run_dir / "digest.cache"),
    ]
    if udp_server:
        argv.append("--udp-server")
    log_path = run_dir / "fwknopd.log"
    with log_path.open("ab") as log:
        proc = lab.popen("server", argv, stdout=log, stderr=log)
    try:
        wait_ready(proc, log_path)
    except BaseException:
        stop(proc)
        raise
    return proc, log_path


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_ready(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """fwknopd has no readiness signal: wait (bounded) for the line that starts its loop."""
    deadline = time.monotonic() + FWKNOPD_READY
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fwknopd exited at start:\n{log_path.read_text(errors='replace')}")
        text = log_path.read_text(errors="replace")
        if any(line in text for line in READY_LINES):
            time.sleep(0.5)  # the line comes just before pcap/the socket is polled
            return
        time.sleep(0.05)
    raise RuntimeError(f"fwknopd not ready:\n{log_path.read_text(errors='replace')}")


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        raise RuntimeError("no trial opened")
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
    ap.add_argument("--trials", type=int, default=12, help="per round and daemon")
    ap.add_argument(
        "--builder",
        choices=("guardian", "fwknop"),
        default="guardian",
        help="who builds each packet before the clock starts: guardian.spa_packet or `fwknop -T`",
    )
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="let probe and daemons share both CPUs (see bench/cpus.py)",
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    pinned = not args.no_pin and can_pin()
    probed = {OURS: Probed(), FWKNOPD_UDP: Probed(), FWKNOPD_PCAP: Probed()}
    load_before = os.getloadavg()
    with Lab(hosts=("server", "client"), prefix=PREFIX) as lab:
        start_sshd(lab)
        bench = Bench(lab, args.trials, args.builder, pinned)
        rounds: list[tuple[str, Callable[[], Probed]]] = [
            (OURS, bench.guardian_round),
            (FWKNOPD_UDP, lambda: bench.fwknopd_round(udp_server=True)),
            (FWKNOPD_PCAP, lambda: bench.fwknopd_round(udp_server=False)),
        ]
        for round_no in range(1, args.rounds + 1):
            for name, run in rounds:
                print(f"round {round_no}: {name}", file=sys.stderr)
                probed[name] += run()
    results = {name: p.latencies for name, p in probed.items()}
    ours = statistics.median(results[OURS])
    result = {
        "benchmark": "SPA-to-open (SPA datagram leaves client -> SSH SYN accepted)",
        "packet_builder": args.builder,
        "rounds": args.rounds,
        "trials_per_round": args.trials,
        "pinned": {"client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU} if pinned else None,
        **{name: summary(values) for name, values in results.items()},
        "ratio_median_fwknopd_udp_over_ours": round(
            statistics.median(results[FWKNOPD_UDP]) / ours, 1
        ),
        "ratio_median_fwknopd_pcap_over_ours": round(
            statistics.median(results[FWKNOPD_PCAP]) / ours, 1
        ),
        # The bracket around the figure (probe_knock_open.py's header): the refused SYN just
        # before the accepted one, and when the accepted connect() returned (the old measure).
        "last_refused_syn": {name: summary(p.last_refused) for name, p in probed.items()},
        "connect_returned": {name: summary(p.connect_returned) for name, p in probed.items()},
        # The machine is shared: its load (1-minute average) around the run, and every trial
        # in order (rounds of `trials_per_round`), so a noisy round can be seen.
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "latencies_ms": {name: [round(v, 3) for v in values] for name, values in results.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
