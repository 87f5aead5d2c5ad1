# Failure-to-ban latency in the lab (issue 4's benchmark): from the failed attempt to the source
# address being in the kernel's ban set. Real sshd 9.2 logging to a real journald (and through
# journald's forwarding to a lab rsyslog writing auth.log), writing its own btmp; the guardian as
# shipped; fail2ban 1.0.2 beside it when installed (bench/setup-peers.sh).
#
# What is measured, per trial: one attacker address (a fresh one per trial, added to the
# attacker's interface) tries one wrong password for root (sshpass + ssh -b ADDR), with
# maxretry = 1, so that one failure bans.
#   start: the journal's receive time (__REALTIME_TIMESTAMP) of sshd's "Failed password for root
#          from ADDR" line: the moment sshd logged the failure. sshd writes the btmp record right
#          after that line (openssh auth.c: auth_log() logs, then record_failed_login()), so for
#          the btmp source this start is at most a few µs early: the latency is an upper bound.
#   end:   the time `nft monitor`, running in the server namespace, printed the "add element" of
#          that address into the ban set (timestamped on arrival, as bench/session_close.py
#          does for grants). Namespaces share CLOCK_REALTIME, so the two compare directly.
# Variants (each with its own addresses, state store and table; nothing carries over):
#   ours-btmp            [ban] sources = ["btmp"], --no-journal
#   ours-journal         [ban] sources = ["journal"]; sshd's port is not a guarded port
#   ours-journal-knock   the same, but port 22 guarded: every address knocks first (what the
#                        guardian is built for: the connection to a guarded port makes it read
#                        the journal fast for a while)
#   ours-authlog         [ban] sources = ["authlog"], --no-journal
#   fail2ban-authlog     fail2ban-server, jail sshd on the lab's auth.log (pyinotify backend),
#                        banaction nftables-allports
#   fail2ban-journal     fail2ban-server, jail sshd with backend = systemd (journalmatch
#                        SYSLOG_IDENTIFIER=sshd: the lab's sshd is not a systemd unit)
# Medians and p95 per variant; results in bench/results/ban_latency.json.
#
#   sudo .venv/bin/python bench/ban_latency.py [--trials 35] [--variants a,b,...]
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from systemd import journal

from guardian.lab.guardian_proc import GuardianHandle, start_guardian
from guardian.lab.journald import ensure_journald
from guardian.lab.netns import Lab, LabError
from guardian.lab.rsyslog import RsyslogHandle, check_forwarding, ensure_rsyslog
from guardian.lab.sshd import SshdHandle, prepare_var_log, start_sshd

VARIANTS = (
    "ours-btmp",
    "ours-journal",
    "ours-journal-knock",
    "ours-authlog",
    "fail2ban-authlog",
    "fail2ban-journal",
)
TARGETS_MS = {"ours-btmp": 10.0, "ours-journal": 150.0, "ours-journal-knock": 150.0}
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - wrong on purpose
BAN_WAIT = 10.0  # seconds a trial waits for the ban before it counts as missed
KNOCK = (7000, 8000, 9000)

OURS_CONFIG = """\
[guard]
ports = [{port}]
{doors}
[ban]
sources = ["{source}"]
maxretry = 1
findtime = "10m"
bantime = "10m"
"""
DOOR = '[[door]]\nname = "ssh"\nsequence = ["7000/tcp", "8000/tcp", "9000/tcp"]\ntimeout = "5s"\n'

KNOCK_SCRIPT = """
import socket, sys
src, host = sys.argv[1], sys.argv[2]
for port in sys.argv[3:]:
    try:
        socket.create_connection((host, int(port)), timeout=0.5, source_address=(src, 0)).close()
    except OSError:
        pass
"""

F2B_LOCAL = """\
[DEFAULT]
loglevel = INFO
logtarget = {dir}/fail2ban.log
socket = {dir}/fail2ban.sock
pidfile = {dir}/fail2ban.pid
dbfile = :memory:
"""
F2B_JAIL = """\
[DEFAULT]
banaction = nftables-allports
banaction_allports = nftables-allports
ignoreself = false
[sshd]
enabled = true
mode = normal
maxretry = 1
findtime = 600
bantime = 600
{backend}
"""


class SetMonitor(threading.Thread):
    """`nft monitor` lines in the server namespace: the arrival time of each element added to a
    ban set (ours: inet guardian ban4; fail2ban: inet f2b-table addr-set-sshd)."""

    ADD = re.compile(r"^add element inet (guardian ban4|f2b-table addr-set-sshd) \{ (.*) \}")

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.added: dict[str, float] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            at = time.time()
            m = self.ADD.match(raw.decode(errors="replace").strip())
            if not m:
                continue
            for token in re.findall(r"\d+\.\d+\.\d+\.\d+", m[2]):
                with self.lock:
                    self.added.setdefault(token, at)

    def added_at(self, address: str) -> float | None:
        with self.lock:
            return self.added.get(address)


@dataclass
class Env:
    lab: Lab
    sshd: SshdHandle
    var_log: Path
    rsyslog: RsyslogHandle


def attempt_argv(env: Env, src: str) -> list[str]:
    return [
        "sshpass",
        "-e",
        "ssh",
        "-F",
        "/dev/null",
        "-b",
        src,
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "ConnectTimeout=3",
        "-o",
        "LogLevel=ERROR",
        "-l",
        "root",
        env.lab.addr("server"),
        "true",
    ]


def end_sshd_children(env: Env) -> None:
    """Connections a ban left hanging would fill sshd's MaxStartups: end them (ours only)."""
    done = subprocess.run(
        ["pgrep", "-P", str(env.sshd.pid)], capture_output=True, text=True, timeout=10, check=False
    )
    for pid in (int(p) for p in done.stdout.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def failure_times(since: float, addresses: set[str]) -> dict[str, float]:
    """Journal receive time of the first "Failed password for root from ADDR" per address."""
    found: dict[str, float] = {}
    pattern = re.compile(r"^Failed password for root from (\S+) port \d+")
    reader = journal.Reader()
    try:
        reader.add_match(SYSLOG_IDENTIFIER="sshd")
        reader.seek_realtime(since)
        for entry in reader:
            m = pattern.match(entry.get("MESSAGE", ""))
            if m and m[1] in addresses and m[1] not in found:
                found[m[1]] = entry["__REALTIME_TIMESTAMP"].timestamp()
    finally:
        reader.close()
    return found


def start_ours(env: Env, variant: str) -> Callable[[], None]:
    source = variant.split("-")[1]
    guarded = variant.endswith("-knock")
    config = OURS_CONFIG.format(
        port=22 if guarded else 2222, doors=DOOR if guarded else "", source=source
    )
    extra: tuple[str, ...] = ("--state", str(env.lab.workdir / f"state-{variant}.db"))
    if source != "journal":
        extra += ("--no-journal",)
    handle: GuardianHandle = start_guardian(env.lab, config, extra_args=extra, ready_timeout=20)

    def stop() -> None:
        handle.stop()

    return stop


def start_fail2ban(env: Env, variant: str) -> Callable[[], None]:
    directory = env.lab.workdir / f"f2b-{variant}"
    shutil.copytree("/etc/fail2ban", directory, ignore=shutil.ignore_patterns("jail.d", "*.local"))
    (directory / "jail.d").mkdir()
    (directory / "fail2ban.local").write_text(F2B_LOCAL.format(dir=directory))
    if variant == "fail2ban-authlog":
        backend = f"backend = pyinotify\nlogpath = {env.var_log / 'auth.log'}\n"
    else:
        backend = "backend = systemd\njournalmatch = SYSLOG_IDENTIFIER=sshd\n"
    (directory / "jail.local").write_text(F2B_JAIL.format(backend=backend))
    argv = ["fail2ban-server", "-f", "-x", "-c", str(directory)]
    argv += ["-s", str(directory / "fail2ban.sock"), "-p", str(directory / "fail2ban.pid")]
    out = (directory / "server.out").open("ab")
    proc = env.lab.popen("server", argv, stdout=out, stderr=out)
    log = directory / "fail2ban.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Jail 'sshd' started" in text:
            break
        if proc.poll() is not None:
            raise SystemExit(f"fail2ban-server exited: {(directory / 'server.out').read_text()}")
        time.sleep(0.1)
    else:
        raise SystemExit(f"fail2ban did not start its jail: {log.read_text()[-2000:]}")
    time.sleep(1.0)  # its first pass over the file / journal

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()

    return stop


def start_rsyslog(auth_log: Path, lab: Lab, wait: float = 300.0) -> RsyslogHandle:
    """The machine has one journald forward socket: wait (bounded) while another run holds it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return ensure_rsyslog(auth_log, lab=lab)
        except LabError as exc:
            if "another syslog daemon" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_variant(env: Env, variant: str, addresses: list[str]) -> dict[str, object]:
    lab = env.lab
    lab.run("server", ["nft", "flush", "ruleset"], check=True)
    end_sshd_children(env)
    monitor_proc = lab.popen("server", ["nft", "monitor"], stdout=subprocess.PIPE)
    monitor = SetMonitor(monitor_proc)
    monitor.start()
    time.sleep(0.3)
    since = time.time()
    stop = (
        start_fail2ban(env, variant) if variant.startswith("fail2ban") else start_ours(env, variant)
    )
    missed: list[str] = []
    run_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    run_env["SSHPASS"] = WRONG_PASSWORD
    try:
        for src in addresses:
            if variant.endswith("-knock"):
                knock = [sys.executable, "-I", "-S", "-c", KNOCK_SCRIPT, src, lab.addr("server")]
                lab.run("attacker", [*knock, *map(str, KNOCK)], timeout=20, check=True)
            proc = lab.popen("attacker", attempt_argv(env, src), env=run_env)
            deadline = time.monotonic() + BAN_WAIT
            while monitor.added_at(src) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if monitor.added_at(src) is None:
                missed.append(src)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            end_sshd_children(env)
            time.sleep(0.2)
    finally:
        stop()
        monitor_proc.terminate()
    failed_at = failure_times(since - 1, set(addresses))
    samples = []
    for src in addresses:
        banned, failed = monitor.added_at(src), failed_at.get(src)
        if banned is not None and failed is not None:
            samples.append((banned - failed) * 1000.0)
    result: dict[str, object] = {"trials": len(addresses), "measured": len(samples)}
    result["missed"] = missed
    if samples:
        result.update(
            median_ms=round(statistics.median(samples), 1),
            p95_ms=round(percentile(samples, 0.95), 1),
            min_ms=round(min(samples), 1),
            max_ms=round(max(samples), 1),
            samples_ms=[round(x, 1) for x in samples],
        )
    if variant in TARGETS_MS:
        result["target_ms"] = TARGETS_MS[variant]
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=35)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default="bench/results/ban_latency.json")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {sorted(unknown)}")
    if any(v.startswith("fail2ban") for v in variants) and shutil.which("fail2ban-server") is None:
        raise SystemExit("fail2ban-server not found: run bench/setup-peers.sh, or drop fail2ban-*")
    if len(variants) * args.trials > 240:
        raise SystemExit("too many addresses for one /24: fewer trials or variants")
    ensure_journald()
    results: dict[str, dict[str, object]] = {}
    with Lab(hosts=("server", "attacker"), prefix="gbb") as lab:
        var_log = lab.workdir / "var_log"
        prepare_var_log(var_log)
        rsyslog = start_rsyslog(var_log / "auth.log", lab)
        try:
            check_forwarding(rsyslog)
            sshd = start_sshd(lab, log_to_stderr=False, var_log=var_log)
            env = Env(lab, sshd, var_log, rsyslog)
            base = 10
            for variant in variants:
                addresses = [f"192.0.2.{base + i}" for i in range(args.trials)]
                base += args.trials
                batch = "".join(f"addr add {a}/24 dev eth0\n" for a in addresses)
                subprocess.run(
                    ["ip", "-n", lab.ns("attacker"), "-batch", "-"],
                    input=batch,
                    text=True,
                    check=True,
                    timeout=30,
                )
                print(f"{variant}: {args.trials} trials ...", file=sys.stderr, flush=True)
                results[variant] = run_variant(env, variant, addresses)
                summary = {k: v for k, v in results[variant].items() if k != "samples_ms"}
                print(f"  {json.dumps(summary)}", file=sys.stderr, flush=True)
        finally:
            rsyslog.stop()
    doc = {
        "benchmark": "failure-to-ban: journal receive time of sshd's 'Failed password' line -> "
        "'add element' of the source in the ban set (nft monitor, server namespace)",
        "maxretry": 1,
        "results": results,
    }
    print(f"{'variant':<22}{'n':>4}{'median ms':>11}{'p95 ms':>9}{'min':>8}{'max':>9}  target")
    for variant, r in results.items():
        if "median_ms" not in r:
            print(f"{variant:<22}{r['measured']:>4}  (no samples; missed: {r['missed']})")
            continue
        target = f"<= {r['target_ms']:g}" if "target_ms" in r else ""
        print(
            f"{variant:<22}{r['measured']:>4}{r['median_ms']:>11}{r['p95_ms']:>9}"
            f"{r['min_ms']:>8}{r['max_ms']:>9}  {target}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
