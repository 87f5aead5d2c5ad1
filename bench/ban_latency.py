# Failure-to-ban latency in the lab (issue 4's benchmark): from the failed attempt to the source
# address being in the kernel's ban set. Real sshd 9.2 logging to a real journald (and through
# journald's forwarding to a lab rsyslog writing auth.log), writing its own btmp; the guardian as
# shipped; fail2ban 1.0.2 beside it when installed (bench/setup-peers.sh).
#
# What is measured, per trial: one attacker address (a fresh one per trial, added to the
# attacker's interface) tries one wrong password for root (sshpass + ssh -b ADDR), with
# maxretry = 1, so that one failure bans.
#   start: for the btmp source, the moment sshd's btmp record landed in the file (an inotify
#          watcher of this script, on the same file, timestamps new records as they arrive);
#          for the others, the journal's receive time (__REALTIME_TIMESTAMP) of sshd's "Failed
#          password for root from ADDR" line: the moment sshd logged the failure. (sshd logs the
#          line, then writes btmp: openssh auth.c, auth_log() then record_failed_login(). The
#          journal's receive time can still come a little after the btmp write when journald is
#          busy, so it is not used for btmp.) Both starts are in the JSON for every variant.
#   end:   the time `nft monitor`, running in the server namespace, printed the "add element" of
#          that address into the ban set (timestamped on arrival, as bench/session_close.py
#          does for grants). Namespaces share CLOCK_REALTIME, so the two compare directly.
# Variants (each with its own addresses, state store and table; nothing carries over; the
# addresses are in a random /24 of 198.18.0.0/15 per run, never reused):
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
import random
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

from inotify_simple import INotify, flags
from systemd import journal

from guardian.lab.guardian_proc import GuardianHandle, start_guardian
from guardian.lab.journald import ensure_journald
from guardian.lab.netns import Lab, LabError
from guardian.lab.rsyslog import RsyslogHandle, check_forwarding, ensure_rsyslog
from guardian.lab.sshd import SshdHandle, password_attempt_argv, prepare_var_log, start_sshd
from guardian.parsers.utmp import parse_utmp

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


class BtmpStamps(threading.Thread):
    """When each address's first btmp record landed in the file: inotify on the file, read the
    new whole records at once, timestamp them. The btmp variant's start."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.written: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.inotify = INotify()
        self.inotify.add_watch(path, flags.MODIFY)
        self.offset = path.stat().st_size

    def run(self) -> None:
        with self.path.open("rb") as handle:
            while not self.stopping.is_set():
                if not self.inotify.read(timeout=200):
                    continue
                at = time.time()
                handle.seek(self.offset)
                data = handle.read()
                records, used = parse_utmp(data)
                self.offset += used
                with self.lock:
                    for r in records:
                        if r.address is not None:
                            self.written.setdefault(str(r.address), at)

    def written_at(self, address: str) -> float | None:
        with self.lock:
            return self.written.get(address)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=2)
        self.inotify.close()


@dataclass
class Env:
    lab: Lab
    sshd: SshdHandle
    var_log: Path
    rsyslog: RsyslogHandle


def attempt_argv(env: Env, src: str) -> list[str]:
    return password_attempt_argv(env.lab.addr("server"), "root", port=env.sshd.port, source=src)


def descendants(root: int) -> list[int]:
    """Every process below `root` (sshd's per-connection monitors and their pre-auth children:
    killing only the monitors leaves the children holding MaxStartups slots)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end_sshd_children(env: Env) -> None:
    """Connections a ban left hanging would fill sshd's MaxStartups: end them (ours only)."""
    children = descendants(env.sshd.pid)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while children and time.monotonic() < deadline:
        children = [p for p in children if Path(f"/proc/{p}").exists()]
        time.sleep(0.02)


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
    btmp = BtmpStamps(env.var_log / "btmp")
    btmp.start()
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
            err = lab.workdir / f"attempt-{src}.err"
            with err.open("wb") as err_file:
                proc = lab.popen("attacker", attempt_argv(env, src), env=run_env, stderr=err_file)
            deadline = time.monotonic() + BAN_WAIT
            while monitor.added_at(src) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if monitor.added_at(src) is None:
                why = err.read_text(errors="replace").strip()
                missed.append(f"{src}: exit {proc.poll()} {why[-200:]}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            end_sshd_children(env)
            time.sleep(0.2)
    finally:
        stop()
        monitor_proc.terminate()
        btmp.stop()
    banned_set = {a for a in addresses if monitor.added_at(a) is not None}
    logged_at = failure_times(since - 1, set(addresses))
    for _ in range(10):  # a reader can come up short while journald rotates or restarts
        if banned_set <= set(logged_at):
            break
        time.sleep(1.0)
        logged_at = failure_times(since - 1, set(addresses))
    from_log: list[float] = []
    from_btmp: list[float] = []
    for src in addresses:
        banned, logged, written = monitor.added_at(src), logged_at.get(src), btmp.written_at(src)
        if banned is not None and logged is not None:
            from_log.append((banned - logged) * 1000.0)
        if banned is not None and written is not None:
            from_btmp.append((banned - written) * 1000.0)
    # The btmp source starts when the record is written; the others when sshd logged the line
    # (journald's receive time, which can itself lag the btmp write by a little).
    samples = from_btmp if variant == "ours-btmp" else from_log
    result: dict[str, object] = {
        "trials": len(addresses),
        "measured": len(samples),
        "start": "btmp record written (inotify)" if variant == "ours-btmp" else "journal receive",
    }
    result["missed"] = missed
    if samples:
        result.update(
            median_ms=round(statistics.median(samples), 1),
            p95_ms=round(percentile(samples, 0.95), 1),
            min_ms=round(min(samples), 1),
            max_ms=round(max(samples), 1),
            samples_ms=[round(x, 1) for x in samples],
        )
    for name, values in (("from_journal_receive", from_log), ("from_btmp_write", from_btmp)):
        if values:
            result[name] = {
                "median_ms": round(statistics.median(values), 1),
                "p95_ms": round(percentile(values, 0.95), 1),
            }
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
            # Attackers come from a /24 of 198.18.0.0/15 picked at random per run, on the lab's
            # link (a route on the server): no address is ever reused across runs. A peer that
            # reads back in history at start (fail2ban's journal backend reads findtime back)
            # would otherwise ban a reused address before its trial.
            net = f"198.18.{random.randrange(256)}"
            lab.run("server", ["ip", "route", "add", f"{net}.0/24", "dev", "eth0"], check=True)
            base = 10
            for variant in variants:
                addresses = [f"{net}.{base + i}" for i in range(args.trials)]
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
