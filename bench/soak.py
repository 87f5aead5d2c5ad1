# Soak (issue 8, item 6): the guardian as shipped, under continuous, modest, mixed load for
# --minutes (default 30), sampled every few seconds, to show that memory, open fds and the engine's
# backlog stay flat. Not a CI test: a bench run whose curves go in BENCHMARKS.md.
#
# One lab (prefix "gsok"): the real daemon in "server" with a knock door on port 22, an SPA stanza
# and bans from all three sources (journal, btmp, auth.log); a real sshd listening on 22 (guarded)
# and 2222 (not guarded: the brute force knocks on nothing, as on a host with bans and no door).
# The load, every piece bounded by the same deadline and paced, not flooding (2 shared cores):
# - "client": knock sequences (~2/s) from 10 extra addresses (some partial or wrong: attempts that
#   expire or reset), and from its own address a knock + short ssh login every ~3 s plus up to 3
#   long sessions (1-3 min) at a time;
# - "client2": an SPA packet every ~4 s (every 2nd followed by an ssh login; a replayed packet and
#   a garbage datagram now and then: the refusal paths);
# - "attacker": brute force, ~2 attempts/s from 3 threads over 24 extra addresses (wrong root
#   passwords through sshpass, invalid users, pre-auth closes). It reads the ban list from the
#   control socket (what a real attacker learns from timeouts) and uses sources that are not
#   banned; the operator (this process) unbans with `guardian unban` whenever fewer than 6 are
#   free, so bans keep coming;
# - rotations: btmp and auth.log renamed away every 30-60 s (a new btmp root:utmp 0660, as
#   logrotate's `create`), `journalctl --rotate` every 5 min, each followed by
#   `journalctl --vacuum-files=K` with K the most archived files any journal directory held at
#   the start (what journald's own SystemMaxFiles does, with a smaller number): the machine's
#   journal keeps its size, and the run keeps as many journal files as it started with.
#   `--no-journal-vacuum` rotates only (the file count, and sd-journal's fds, then grow by one
#   per rotation).
# The load runs in worker processes inside the namespaces (this file, `worker KIND`), so a knock
# or an SPA packet costs a socket call, not an interpreter start-up.
#
# Decisions:
# - auth.log: journald and the auth.log rsyslog are one per machine (guardian.lab.rsyslog), and
#   holding the machine's only syslog forward socket for half an hour would make other runs' lab
#   tests wait and fail. So by default a thread here writes sshd's journal entries to the lab's
#   auth.log in rsyslog's RSYSLOG_FileFormat, re-opening the path for every batch (what rsyslog
#   does after logrotate's HUP); entries of an sshd in another network namespace are left out, as
#   the daemon's journal watcher does. `--rsyslog` uses the real lab rsyslog instead.
# - Sampled per interval: the daemon's RSS, open fds, threads and CPU time (psutil), the snapshot
#   over the control socket (gauges timer_entries / attempts / attempt_records, grants, sessions,
#   bans, SPA replay digests, counters), the elements of every set in `table inet guardian`, and
#   the state store's size. "Backlog" is timer_entries: the engine's deadline heaps, which would
#   grow if anything were scheduled and never retired.
# - After the load stops, sampling goes on for --drain seconds: what is left must drain.
# - Slopes are least-squares fits, per 10 minutes, over the whole run and after a warm-up
#   (min(5 min, 20 % of the run)): the first minutes fill caches and reach the steady state.
# - The plot is an SVG written here, no matplotlib: one panel per metric, each with its own scale.
#
#   sudo nice -n 5 .venv/bin/python bench/soak.py [--minutes 30] [--sample 5]
#        [--json bench/results/soak.json] [--svg bench/results/soak.svg] [--rsyslog]
#   .venv/bin/python bench/soak.py plot [--json ...] [--svg ...]   (re-draw from a saved result)
#   .venv/bin/python bench/soak.py summary [--json ...]   (its summary, re-computed, as a table)
from __future__ import annotations

import argparse
import base64
import contextlib
import grp
import json
import math
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run as a script: make `guardian` importable from the checkout
    sys.path.insert(0, str(REPO))

from guardian.control_client import ControlClientError, request  # noqa: E402
from guardian.lab.sshd import password_attempt_argv  # noqa: E402

PREFIX = "gsok"
SSH_PORT = 22  # guarded: knock or SPA first
OPEN_PORT = 2222  # the same sshd, not guarded: the brute force goes here
SPA_PORT = 62201
DOOR = (("7000", "tcp"), ("8000", "tcp"), ("9000", "udp"))
KNOCK_EXTRAS = [f"192.0.2.{n}" for n in range(200, 210)]  # on "client"
ATTACK_EXTRAS = [f"192.0.2.{n}" for n in range(220, 244)]  # on "attacker"
MIN_FREE_ATTACKERS = 6  # the operator unbans when fewer attacker sources are free
UNBAN_BATCH = 3
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - wrong on purpose
KEY_B64 = base64.b64encode(bytes(range(100, 132))).decode()  # throwaway lab keys
HMAC_B64 = base64.b64encode(bytes(range(64))).decode()
JOURNAL_ROTATE_EVERY = 300.0
ROTATE_MIN, ROTATE_MAX = 30.0, 60.0
OPERATOR_EVERY = 5.0
WORKER_GRACE = 90.0  # a worker gets this long after its deadline to finish its last sessions
MAX_MINUTES = 240.0
# The longest horizon of the daemon's own bounded state: the sshd detector keeps a connection's
# pre-authentication state for max_age (15 minutes of log time), the failure joiner and windows
# for findtime (10 minutes). Until then memory fills by design; after it, a flat daemon's
# curves are flat, so slopes are also reported from here ("settled"), for runs twice as long.
SETTLE_S = 900.0
PER_SAMPLE_COUNTERS = (
    "knocks_seen",
    "knocks_completed",
    "knocks_failed",
    "grants_opened",
    "grants_closed",
    "sessions_opened",
    "sessions_closed",
    "failures_seen",
    "failures_counted",
    "bans",
    "bans_expired",
    "unbans",
    "spa_accepted",
    "spa_refused",
)

CONFIG = """\
[guard]
ports = [{ssh_port}]
answer = "reset"

[access]
window = "15s"
linger = "3s"
lease = "60s"
require_auth = true

[[door]]
name = "ssh"
sequence = ["7000/tcp", "8000/tcp", "9000/udp"]
timeout = "5s"

[ban]
sources = ["journal", "btmp", "authlog"]
mode = "normal"
maxretry = 5
findtime = "10m"
bantime = "30s"
factor = 2
maxtime = "4m"

[spa]
port = {spa_port}

[[spa.stanza]]
name = "alice"
key_base64_file = "{key}"
hmac_key_base64_file = "{hmac}"
require_username = "alice"
"""


# ==== workers: run inside a lab namespace, print one JSON line of counts at the end =============


def _knock_one(src: str, dst: str, port: int, proto: str) -> None:
    family = socket.AF_INET
    if proto == "tcp":  # one SYN: a non-blocking connect closed at once (as guardian knock)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((src, 0))
            sock.setblocking(False)
            sock.connect_ex((dst, port))
    else:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((src, 0))
            sock.sendto(b"\x00", (dst, port))


def _knock_sequence(src: str, dst: str, steps: Sequence[tuple[str, str]]) -> None:
    for index, (port, proto) in enumerate(steps):
        if index:
            time.sleep(0.02)
        _knock_one(src, dst, int(port), proto)


def _ssh_argv(key: str, dst: str, port: int, command: Sequence[str]) -> list[str]:
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        key,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=3",
        "-o",
        "ServerAliveInterval=10",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(port),
        "-l",
        "root",
        "--",
        dst,
        *command,
    ]


def _short_login(key: str, dst: str) -> tuple[bool, float]:
    started = time.monotonic()
    try:
        done = subprocess.run(
            _ssh_argv(key, dst, SSH_PORT, ["true"]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=False,
        )
        ok = done.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return ok, time.monotonic() - started


def _pace(next_at: float, interval: float, deadline: float) -> float:
    """Sleep until next_at (never past the deadline); the next slot, jittered +-20 %."""
    time.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))
    return max(next_at, time.monotonic() - interval) + interval * random.uniform(0.8, 1.2)


def worker_knocks(args: argparse.Namespace) -> dict[str, Any]:
    """Knock sequences from the extra addresses: most complete, some stop after the first step
    (the attempt expires), some hit a decoy port or go out of order (the attempt resets)."""
    deadline = time.monotonic() + args.seconds
    counts = {"complete": 0, "partial": 0, "decoy": 0, "wrong_order": 0, "errors": 0}
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        src = random.choice(args.sources)
        roll = random.random()
        try:
            if roll < 0.8:
                _knock_sequence(src, args.target, DOOR)
                counts["complete"] += 1
            elif roll < 0.9:
                _knock_sequence(src, args.target, DOOR[:1])
                counts["partial"] += 1
            elif roll < 0.95:
                _knock_sequence(src, args.target, [DOOR[0], ("8003", "tcp")])
                counts["decoy"] += 1
            else:
                _knock_sequence(src, args.target, [DOOR[1], DOOR[0], DOOR[2]])
                counts["wrong_order"] += 1
        except OSError:
            counts["errors"] += 1
        next_at = _pace(next_at, 1.0 / args.rate, deadline)
    return counts


def worker_logins(args: argparse.Namespace) -> dict[str, Any]:
    """From the host's own address: knock, then a short ssh login, every ~interval seconds; and
    up to 3 long sessions (1-3 min) at a time, started every ~40 s."""
    deadline = time.monotonic() + args.seconds
    counts: dict[str, Any] = {"short_ok": 0, "short_failed": 0, "long_started": 0}
    counts.update({"long_ok": 0, "long_failed": 0, "short_seconds_max": 0.0})
    long_sessions: list[subprocess.Popen[bytes]] = []
    next_long = time.monotonic() + 5.0
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        for proc in [p for p in long_sessions if p.poll() is not None]:
            long_sessions.remove(proc)
            counts["long_ok" if proc.returncode == 0 else "long_failed"] += 1
        try:
            _knock_sequence(args.source, args.target, DOOR)
        except OSError:
            counts["knock_errors"] = counts.get("knock_errors", 0) + 1
        time.sleep(0.05)
        ok, took = _short_login(args.key, args.target)
        counts["short_ok" if ok else "short_failed"] += 1
        counts["short_seconds_max"] = round(max(counts["short_seconds_max"], took), 3)
        left = deadline - time.monotonic()
        if time.monotonic() >= next_long and len(long_sessions) < 3 and left > 70:
            seconds = int(min(random.uniform(60, 180), left - 10))
            argv = _ssh_argv(args.key, args.target, SSH_PORT, ["sleep", str(seconds)])
            long_sessions.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            counts["long_started"] += 1
            next_long = time.monotonic() + random.uniform(30, 50)
        next_at = _pace(next_at, args.interval, deadline)
    for proc in long_sessions:  # each was given less time than is left: they end on their own
        try:
            rc = proc.wait(timeout=WORKER_GRACE - 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(timeout=5)
        counts["long_ok" if rc == 0 else "long_failed"] += 1
    return counts


def worker_spa(args: argparse.Namespace) -> dict[str, Any]:
    """SPA packets from the host's address; every 2nd one followed by a login. Now and then the
    previous packet again (a replay) or random bytes (garbage): refused, never a grant."""
    from guardian.parsers.spa import SpaKey
    from guardian.spa_packet import encode

    key = SpaKey(
        base64.b64decode(Path(args.key_file).read_text().strip()),
        base64.b64decode(Path(args.hmac_file).read_text().strip()),
        "sha256",
    )
    deadline = time.monotonic() + args.seconds
    counts = {"sent": 0, "replays": 0, "garbage": 0, "login_ok": 0, "login_failed": 0}
    previous: bytes | None = None
    n = 0
    next_at = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((args.source, 0))
        while time.monotonic() < deadline:
            n += 1
            packet = encode(
                key,
                username="alice",
                allow_ip="0.0.0.0",  # "the packet's source", fwknop's -s
                access=(("tcp", SSH_PORT),),
                timestamp=int(time.time()),
            )
            sock.sendto(packet, (args.target, SPA_PORT))
            counts["sent"] += 1
            if n % 10 == 5 and previous is not None:
                sock.sendto(previous, (args.target, SPA_PORT))
                counts["replays"] += 1
            if n % 10 == 8:
                sock.sendto(random.randbytes(random.randrange(1, 400)), (args.target, SPA_PORT))
                counts["garbage"] += 1
            previous = packet
            if n % 2 == 0:
                time.sleep(0.2)
                ok, _ = _short_login(args.key, args.target)
                counts["login_ok" if ok else "login_failed"] += 1
            next_at = _pace(next_at, args.interval, deadline)
    return counts


@dataclass
class _BruteState:
    sources: list[str]
    socket_path: str
    banned: set[str] = field(default_factory=set)
    refreshed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def free_source(self) -> str | None:
        with self.lock:
            if time.monotonic() - self.refreshed > 2.0:
                self.refreshed = time.monotonic()
                try:
                    bans = request(self.socket_path, {"cmd": "bans"}, timeout=5.0)["bans"] or []
                    self.banned = {str(b["source"]).removesuffix("/32") for b in bans}
                except (ControlClientError, KeyError, TypeError):
                    self.counts["ban_list_errors"] = self.counts.get("ban_list_errors", 0) + 1
            free = [s for s in self.sources if s not in self.banned]
        return random.choice(free) if free else None


def _brute_attempt(src: str, target: str, user: str) -> int | None:
    argv = password_attempt_argv(target, user, port=OPEN_PORT, source=src)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    env["SSHPASS"] = WRONG_PASSWORD
    try:
        return subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=8, check=False
        ).returncode
    except subprocess.TimeoutExpired:  # banned under it: the packets are dropped
        return None


def _brute_thread(state: _BruteState, target: str, interval: float, deadline: float) -> None:
    next_at = time.monotonic() + random.uniform(0, interval)
    while time.monotonic() < deadline:
        src = state.free_source()
        if src is None:
            state.count("all_banned_waits")
        else:
            roll = random.random()
            if roll < 0.9:
                user = "root" if roll < 0.6 else f"nosuch{random.randrange(10**6)}"
                rc = _brute_attempt(src, target, user)
                state.count("root_password" if user == "root" else "invalid_user")
                if rc is None:
                    state.count("timed_out")
                elif rc == 0:
                    state.count("unexpected_success")
            else:  # a TCP connection closed before the banner (counts in aggressive mode only)
                try:
                    socket.create_connection((target, OPEN_PORT), 2.0, (src, 0)).close()
                    state.count("preauth_close")
                except OSError:
                    state.count("preauth_failed")
        next_at = _pace(next_at, interval, deadline)


def worker_brute(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.seconds
    state = _BruteState(list(args.sources), args.socket)
    threads = [
        threading.Thread(
            target=_brute_thread, args=(state, args.target, args.interval, deadline), daemon=True
        )
        for _ in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.seconds + 30)
    with state.lock:
        return dict(state.counts)


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "knocks": worker_knocks,
    "logins": worker_logins,
    "spa": worker_spa,
    "brute": worker_brute,
}


def run_worker(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="soak.py worker")
    ap.add_argument("kind", choices=sorted(WORKERS))
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--source", default="")
    ap.add_argument("--sources", nargs="*", default=[])
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--key", default="")
    ap.add_argument("--key-file", default="")
    ap.add_argument("--hmac-file", default="")
    ap.add_argument("--socket", default="")
    args = ap.parse_args(argv)
    args.seconds = min(args.seconds, MAX_MINUTES * 60)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the lab's close: just go
    started = time.monotonic()
    counts = WORKERS[args.kind](args)
    counts["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(counts), flush=True)
    return 0


# ==== the auth.log writer (see the header) ======================================================


class AuthlogMirror(threading.Thread):
    """sshd's journal entries -> `path` in RSYSLOG_FileFormat, until stop is set."""

    def __init__(self, path: Path, netns_inode: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.netns_inode = netns_inode
        self.stop = stop
        self.lines = 0
        self.foreign = 0
        self.error = ""
        self.host = socket.gethostname()

    def _foreign(self, pid: int) -> bool:
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino != self.netns_inode
        except OSError:
            return False  # gone: keep it (the daemon's journal watcher decides the same way)

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported in the results; the soak goes on without it
            self.error = repr(exc)

    def _run(self) -> None:
        from systemd import journal

        reader = journal.Reader()
        try:
            reader.add_match(SYSLOG_IDENTIFIER="sshd")
            reader.seek_tail()
            reader.get_previous()
            while not self.stop.is_set():
                batch: list[str] = []
                for entry in reader:
                    pid = int(entry.get("_PID", 0))
                    if pid and self._foreign(pid):
                        self.foreign += 1
                        continue
                    stamp = entry["__REALTIME_TIMESTAMP"].astimezone()
                    message = str(entry.get("MESSAGE", "")).replace("\n", " ")
                    batch.append(
                        f"{stamp.isoformat(timespec='microseconds')} {self.host} "
                        f"sshd[{pid}]: {message}\n"
                    )
                if batch:
                    with self.path.open("a") as out:  # by path: follows a rename rotation
                        out.write("".join(batch))
                    self.lines += len(batch)
                reader.wait(0.5)
        finally:
            reader.close()


# ==== the soak itself ==========================================================================


def _secret(path: Path, content: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content + "\n")
    return path


def _add_addresses(lab: Any, host: str, addresses: Sequence[str]) -> None:
    batch = "".join(f"addr add {a}/24 dev eth0\n" for a in addresses)
    subprocess.run(
        ["ip", "-n", lab.ns(host), "-batch", "-"],
        input=batch,
        text=True,
        capture_output=True,
        timeout=30,
        check=True,
    )


def _nft_elements(lab: Any) -> dict[str, int]:
    done = lab.run("server", ["nft", "-j", "list", "table", "inet", "guardian"], timeout=30)
    if done.returncode != 0:
        return {}
    found: dict[str, int] = {}
    for item in json.loads(done.stdout).get("nftables", []):
        nft_set = item.get("set")
        if nft_set is not None:
            found[nft_set["name"]] = len(nft_set.get("elem", []))
    return found


def _rotate_btmp(btmp: Path) -> None:
    os.replace(btmp, btmp.with_name("btmp.1"))
    fd = os.open(btmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.chown(btmp, 0, grp.getgrnam("utmp").gr_gid)  # logrotate's `create 0660 root utmp`
    os.chmod(btmp, 0o660)


@dataclass
class Sampler:
    lab: Any
    pid: int
    socket_path: Path
    state_path: Path
    t0: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0
    _last_cpu: tuple[float, float] | None = None

    def sample(self, phase: str) -> dict[str, Any] | None:
        import psutil  # type: ignore[import-untyped]

        now = time.monotonic()
        try:
            proc = psutil.Process(self.pid)
            with proc.oneshot():
                rss = proc.memory_info().rss
                fds = proc.num_fds()
                threads = proc.num_threads()
                times = proc.cpu_times()
        except psutil.Error:
            self.errors += 1
            return None
        cpu = times.user + times.system
        cpu_pct = None
        if self._last_cpu is not None and now > self._last_cpu[0]:
            cpu_pct = round(100.0 * (cpu - self._last_cpu[1]) / (now - self._last_cpu[0]), 2)
        self._last_cpu = (now, cpu)
        row: dict[str, Any] = {
            "t": round(now - self.t0, 2),
            "phase": phase,
            "rss_mib": round(rss / 2**20, 3),
            **_rss_split(self.pid),
            "fds": fds,
            **_journal_fds(self.pid),
            "threads": threads,
            "cpu_s": round(cpu, 3),
            "cpu_pct": cpu_pct,
        }
        try:
            snap = request(str(self.socket_path), {"cmd": "snapshot"}, timeout=5.0)["snapshot"]
        except ControlClientError:
            self.errors += 1
            snap = None
        if snap is not None:
            gauges = snap.get("gauges", {})
            row["timer_entries"] = int(gauges.get("timer_entries", 0))
            row["attempts"] = int(gauges.get("attempts", 0))
            row["attempt_records"] = int(gauges.get("attempt_records", 0))
            row["python_blocks"] = int(gauges.get("python_blocks", 0))
            row["grants"] = len(snap.get("grants") or [])
            row["sessions"] = len(snap.get("sessions") or [])
            row["bans"] = len(snap.get("bans") or [])
            row["spa_replays"] = int((snap.get("spa") or {}).get("replays", 0))
            counters = snap.get("counters", {})
            row["counters"] = {k: counters.get(k, 0) for k in PER_SAMPLE_COUNTERS}
            row["_all_counters"] = counters
        elements = _nft_elements(self.lab)
        row["nft_elements"] = sum(elements.values())
        row["nft_sets"] = elements
        # The state store and its write-ahead log apart: a WAL grows to sqlite's checkpoint size
        # and is reused from there, the database itself is what would show a leak.
        for key, suffix in (("state_db_kib", ""), ("state_wal_kib", "-wal")):
            with contextlib.suppress(OSError):
                size = Path(str(self.state_path) + suffix).stat().st_size
                row[key] = round(size / 1024, 1)
        self.samples.append(row)
        return row


def _archived_journal_files() -> int:
    """The most archived journal files (NAME@SEQNUM.journal) in any one journal directory."""
    most = 0
    for root in (Path("/var/log/journal"), Path("/run/log/journal")):
        with contextlib.suppress(OSError):
            for directory in root.iterdir():
                if directory.is_dir():
                    most = max(most, sum(1 for f in directory.glob("*@*.journal")))
    return most


def _journal_fds(pid: int) -> dict[str, int]:
    """The fds on journal files apart from the rest: sd_journal keeps every file of the journal
    directory open, archived ones too, so these follow the files on disk (one more per rotation,
    until journald's vacuum removes one), not anything the daemon holds on to."""
    journal = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(entry.path)
                if target.endswith((".journal", ".journal~")):
                    journal += 1
    return {"journal_fds": journal}


def _rss_split(pid: int) -> dict[str, float]:
    """RSS by kind, from /proc/PID/status: anonymous (the heap: what a leak grows) and file-backed
    (mapped files, e.g. the journal files the journal watcher reads, which rotations replace)."""
    found: dict[str, float] = {}
    names = {"RssAnon:": "rss_anon_mib", "RssFile:": "rss_file_mib", "RssShmem:": "rss_shmem_mib"}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in names and len(fields) >= 2 and fields[1].isdigit():
                found[names[fields[0]]] = round(int(fields[1]) / 1024, 3)
    return found


def _slope_per_10min(points: Sequence[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 600.0


def _window(points: Sequence[tuple[float, float]], from_t: float) -> dict[str, Any]:
    """A metric's samples from from_t on: first, last, range and least-squares slope."""
    part = [(t, v) for t, v in points if t >= from_t]
    values = [v for _, v in part]
    slope = _slope_per_10min(part)
    return {
        "from_t": from_t,
        "start": values[0] if values else None,
        "end": values[-1] if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "slope_per_10min": None if slope is None else round(slope, 4),
    }


def summarize(samples: Sequence[dict[str, Any]], warmup: float, metrics: Sequence[str]) -> Any:
    """Per metric: the whole load phase, after the warm-up, and (for runs of at least twice
    SETTLE_S) after SETTLE_S; and the value after the drain."""
    load = [s for s in samples if s["phase"] == "load"]
    settled = bool(load) and load[-1]["t"] >= 2 * SETTLE_S
    out: dict[str, Any] = {}
    for metric in metrics:
        points = [(s["t"], float(s[metric])) for s in load if s.get(metric) is not None]
        if not points:
            continue
        values = [v for _, v in points]
        whole = _slope_per_10min(points)
        out[metric] = {
            "start": values[0],
            "end": values[-1],
            "min": min(values),
            "max": max(values),
            "mean": round(sum(values) / len(values), 3),
            "slope_per_10min": None if whole is None else round(whole, 4),
            "after_warmup": _window(points, warmup),
        }
        if settled:
            out[metric]["after_settle"] = _window(points, SETTLE_S)
        drained = [float(s[metric]) for s in samples if s["phase"] == "drain" and metric in s]
        if drained:
            out[metric]["after_drain"] = drained[-1]
    return out


# ---- the plot ---------------------------------------------------------------------------------

# One panel per quantity, each with its own scale: (title, [(metric, legend, colour), ...]).
PANELS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    (
        "RSS (MiB)",
        (
            ("rss_mib", "total", "#1f77b4"),
            ("rss_anon_mib", "anonymous", "#ff7f0e"),
            ("rss_file_mib", "file-backed", "#7f7f7f"),
        ),
    ),
    (
        "open fds",
        (("fds", "total", "#2ca02c"), ("journal_fds", "journal files", "#7f7f7f")),
    ),
    ("backlog: engine timer entries", (("timer_entries", "", "#d62728"),)),
    ("nft set elements", (("nft_elements", "", "#9467bd"),)),
)


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    # Counts and sizes are drawn from zero: a flat line must look flat, and an autoscaled axis
    # would blow a 1 % wobble up to the panel's full height.
    if lo >= 0:
        return 0.0, hi * 1.1 if hi > 0 else 1.0
    pad = max(1.0, (hi - lo) * 0.08)
    return lo - pad, hi + pad


def render_svg(samples: Sequence[dict[str, Any]], title: str, load_end: float | None) -> str:
    width, left, right = 960, 70, 20
    panel_h, gap, top = 170, 40, 50
    height = top + len(PANELS) * (panel_h + gap) + 20
    t_max = max((s["t"] for s in samples), default=1.0) or 1.0
    plot_w = width - left - right

    def x(t: float) -> float:
        return left + plot_w * t / t_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="24" font-size="15" font-weight="bold">{_xml(title)}</text>',
    ]
    tick_every = 300.0 if t_max > 900 else 60.0
    for index, (label, series) in enumerate(PANELS):
        y0 = top + index * (panel_h + gap)
        lines = [
            ([(s["t"], float(s[metric])) for s in samples if s.get(metric) is not None], name, c)
            for metric, name, c in series
        ]
        values = [v for points, _, _ in lines for _, v in points]
        lo, hi = _nice_range(min(values, default=0.0), max(values, default=1.0))

        def y(v: float, y0: float = y0, lo: float = lo, hi: float = hi) -> float:
            return y0 + panel_h - panel_h * (v - lo) / (hi - lo)

        parts.append(
            f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" '
            'stroke="#999"/>'
        )
        parts.append(f'<text x="{left}" y="{y0 - 6}" font-weight="bold">{_xml(label)}</text>')
        for frac in (0.0, 0.5, 1.0):
            value = lo + (hi - lo) * frac
            ty = y(value)
            parts.append(
                f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" '
                'stroke="#eee"/>'
            )
            parts.append(
                f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{_fmt(value)}</text>'
            )
        tick = 0.0
        while tick <= t_max + 1e-6:
            tx = x(tick)
            parts.append(
                f'<line x1="{tx:.1f}" y1="{y0 + panel_h}" x2="{tx:.1f}" y2="{y0 + panel_h + 4}" '
                'stroke="#999"/>'
            )
            parts.append(
                f'<text x="{tx:.1f}" y="{y0 + panel_h + 16}" text-anchor="middle">'
                f"{tick / 60:g} min</text>"
            )
            tick += tick_every
        if load_end is not None and load_end < t_max:
            lx = x(load_end)
            parts.append(
                f'<line x1="{lx:.1f}" y1="{y0}" x2="{lx:.1f}" y2="{y0 + panel_h}" '
                'stroke="#888" stroke-dasharray="4,3"/>'
            )
        legend_x = left + plot_w
        for points, name, colour in lines:
            if points:
                path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>'
                )
            if name:
                parts.append(
                    f'<text x="{legend_x}" y="{y0 - 6}" text-anchor="end" fill="{colour}">'
                    f"{_xml(name)}</text>"
                )
                legend_x -= 8 * len(name) + 14
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_result(result: dict[str, Any]) -> str:
    """The plot of a whole result document (also `soak.py plot` on a saved one)."""
    title = (
        f"ssh-guardian soak: {result['minutes']:g} min of knocks, SPA, sessions, brute force and "
        f"rotations (sample every {result['sample_interval_s']:g} s; dashed: load ends)"
    )
    return render_svg(result["samples"], title, result.get("load_seconds_measured"))


def dump_result(result: dict[str, Any]) -> str:
    """The result as JSON: indented, but one line per sample (hundreds of them)."""
    head = {k: v for k, v in result.items() if k != "samples"}
    text = json.dumps(head, indent=1)
    rows = ",\n".join("  " + json.dumps(s, separators=(",", ":")) for s in result["samples"])
    return text[: text.rindex("}")].rstrip() + ',\n "samples": [\n' + rows + "\n ]\n}\n"


def print_summary(summary: dict[str, Any]) -> None:
    """The summary as a table: slopes per 10 minutes over the whole load, after the warm-up
    ("steady") and after SETTLE_S ("settled", "-" for a shorter run)."""
    print(
        f"{'metric':<16}{'start':>10}{'end':>10}{'max':>10}{'slope/10min':>13}"
        f"{'steady':>10}{'settled':>10}{'drained':>10}"
    )
    for metric, row in summary.items():
        steady = row["after_warmup"]["slope_per_10min"]
        settled = row.get("after_settle", {}).get("slope_per_10min")
        print(
            f"{metric:<16}{row['start']:>10g}{row['end']:>10g}{row['max']:>10g}"
            f"{row['slope_per_10min'] or 0:>13.3f}{steady or 0:>10.3f}"
            f"{'-' if settled is None else f'{settled:.3f}':>10}"
            f"{row.get('after_drain', float('nan')):>10g}"
        )


def run_summary(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="soak.py summary", description="re-compute and print the summary of a saved result"
    )
    ap.add_argument("--json", default=str(HERE / "results" / "soak.json"))
    args = ap.parse_args(argv)
    result = json.loads(Path(args.json).read_text())
    print_summary(summarize(result["samples"], result["warmup_s"], list(result["summary"])))
    return 0


def run_plot(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="soak.py plot", description="re-draw the SVG of a result")
    ap.add_argument("--json", default=str(HERE / "results" / "soak.json"))
    ap.add_argument("--svg", default=str(HERE / "results" / "soak.svg"))
    args = ap.parse_args(argv)
    Path(args.svg).write_text(render_result(json.loads(Path(args.json).read_text())))
    print(f"wrote {args.svg}")
    return 0


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


# ---- the run ----------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    out: Path

    def result(self) -> dict[str, Any]:
        try:
            lines = self.out.read_text().strip().splitlines()
            doc: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        except (OSError, ValueError):
            doc = {}
        doc["exit_code"] = self.proc.poll()
        return doc


def _start_worker(
    lab: Any, host: str, name: str, kind: str, seconds: float, extra: Sequence[str]
) -> Worker:
    out = lab.workdir / f"worker-{name}.out"
    argv = [sys.executable, str(Path(__file__).resolve()), "worker", kind, "--seconds"]
    argv += [f"{seconds:.1f}", *extra]
    with out.open("wb") as sink:
        proc = lab.popen(host, argv, stdout=sink, stderr=sink, cwd=REPO)
    return Worker(name, proc, out)


def _operator_unban(lab: Any, socket_path: Path, pool: set[str]) -> int:
    """Unban the oldest bans of the attacker pool when fewer than MIN_FREE_ATTACKERS are free:
    the operator's own command (`guardian unban`), run in the server."""
    try:
        bans = request(str(socket_path), {"cmd": "bans"}, timeout=5.0)["bans"] or []
    except ControlClientError:
        return 0
    ours = sorted(
        (b for b in bans if str(b["source"]).removesuffix("/32") in pool),
        key=lambda b: float(b["since"]),
    )
    if len(pool) - len(ours) >= MIN_FREE_ATTACKERS:
        return 0
    done = 0
    for ban in ours[:UNBAN_BATCH]:
        address = str(ban["source"]).removesuffix("/32")
        argv = [sys.executable, "-m", "guardian", "unban", address, "-s", str(socket_path)]
        result = lab.run("server", argv, timeout=30, cwd=REPO)
        done += result.returncode == 0
    return done


def _trace_daemon(directory: Path, light: bool) -> None:
    """Make start_guardian run the daemon under bench/trace_daemon.py (allocation dumps)."""
    from guardian.lab import guardian_proc

    directory.mkdir(parents=True, exist_ok=True)
    os.environ["GUARDIAN_TRACE_DIR"] = str(directory.resolve())
    os.environ["GUARDIAN_TRACE_MODE"] = "light" if light else "full"
    wrapper = str(HERE / "trace_daemon.py")

    def traced_argv(config_path: Path, extra_args: Sequence[str] = ()) -> list[str]:
        return [sys.executable, wrapper, "run", "-c", str(config_path), *extra_args]

    guardian_proc.guardian_argv = traced_argv


def run(args: argparse.Namespace) -> int:
    import psutil  # noqa: F401 - fail before building anything when it is missing

    from guardian.lab.guardian_proc import start_guardian
    from guardian.lab.journald import ensure_journald
    from guardian.lab.netns import Lab, cleanup_stale
    from guardian.lab.rsyslog import RsyslogHandle, check_forwarding, ensure_rsyslog
    from guardian.lab.sshd import prepare_var_log, start_sshd

    minutes = min(args.minutes, MAX_MINUTES)
    load_seconds = minutes * 60.0
    cleanup_stale(PREFIX)
    journald = ensure_journald()
    started_wall = datetime.now().astimezone()
    lab = Lab(hosts=("server", "client", "client2", "attacker"), prefix=PREFIX)
    rsyslog: RsyslogHandle | None = None
    stop_mirror = threading.Event()
    mirror: AuthlogMirror | None = None
    result: dict[str, Any] = {}
    try:
        lab.start()
        server = lab.addr("server")
        var_log = lab.workdir / "var_log"  # start_guardian's --btmp / --auth-log live here
        btmp = prepare_var_log(var_log)
        auth_log = var_log / "auth.log"
        auth_log.touch(mode=0o640)
        if args.rsyslog:
            rsyslog = ensure_rsyslog(auth_log, lab=lab)
            check_forwarding(rsyslog)
        else:
            server_ns = os.stat(f"/run/netns/{lab.ns('server')}").st_ino
            mirror = AuthlogMirror(auth_log, server_ns, stop_mirror)
            mirror.start()
        sshd = start_sshd(
            lab,
            log_to_stderr=False,
            var_log=var_log,
            login_grace_time=15,  # connections a ban left hanging free their slot soon
            extra_config={
                "Port": [str(SSH_PORT), str(OPEN_PORT)],
                "MaxStartups": "100:30:200",  # the brute force never crowds out the clients
                "ClientAliveInterval": "15",
            },
        )
        _add_addresses(lab, "client", KNOCK_EXTRAS)
        _add_addresses(lab, "attacker", ATTACK_EXTRAS)
        key = _secret(lab.workdir / "alice.key", KEY_B64)
        hmac = _secret(lab.workdir / "alice.hmac", HMAC_B64)
        config = CONFIG.format(ssh_port=SSH_PORT, spa_port=SPA_PORT, key=key, hmac=hmac)
        state_path = lab.workdir / "state-server.db"
        if args.trace:
            _trace_daemon(Path(args.trace), args.trace_light)
        handle = start_guardian(lab, config, ready_timeout=30.0)
        print(f"lab {lab.name}: guardian pid {handle.pid}, load for {minutes:g} min", flush=True)
        t0 = time.monotonic()
        sampler = Sampler(lab, handle.pid, handle.socket_path, state_path, t0)
        sampler.sample("load")
        client_key = str(sshd.client_key)
        workers = [
            _start_worker(
                lab,
                "client",
                "knocks",
                "knocks",
                load_seconds,
                ["--target", server, "--rate", str(args.knock_rate), "--sources", *KNOCK_EXTRAS],
            ),
            _start_worker(
                lab,
                "client",
                "logins",
                "logins",
                load_seconds,
                ["--target", server, "--source", lab.addr("client"), "--key", client_key],
            ),
            _start_worker(
                lab,
                "client2",
                "spa",
                "spa",
                load_seconds,
                [
                    *("--target", server, "--source", lab.addr("client2"), "--key", client_key),
                    *("--key-file", str(key), "--hmac-file", str(hmac), "--interval", "4"),
                ],
            ),
            _start_worker(
                lab,
                "attacker",
                "brute",
                "brute",
                load_seconds,
                [
                    *("--target", server, "--socket", str(handle.socket_path)),
                    *("--interval", "1.5", "--threads", "3", "--sources", *ATTACK_EXTRAS),
                ],
            ),
        ]
        rotations = {"btmp": 0, "authlog": 0, "journal": 0, "vacuum": 0, "journal_errors": 0}
        keep_archived = None if args.no_journal_vacuum else max(1, _archived_journal_files())
        unbans = 0
        deadline = t0 + load_seconds
        next_sample = t0 + args.sample
        next_btmp = t0 + random.uniform(ROTATE_MIN, ROTATE_MAX)
        next_authlog = t0 + random.uniform(ROTATE_MIN, ROTATE_MAX)
        next_journal = t0 + JOURNAL_ROTATE_EVERY / 2
        next_operator = t0 + OPERATOR_EVERY
        last_report = t0
        next_trace = t0 + args.trace_every if args.trace else math.inf
        pool = set(ATTACK_EXTRAS)
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if handle.returncode is not None:
                print(f"the guardian exited ({handle.returncode})", file=sys.stderr)
                break
            if now >= next_sample:
                row = sampler.sample("load")
                next_sample += args.sample
                if row is not None and now - last_report >= 60:
                    last_report = now
                    print(
                        f"t={row['t'] / 60:5.1f} min rss={row['rss_mib']:.1f} MiB "
                        f"fds={row['fds']} timers={row.get('timer_entries')} "
                        f"grants={row.get('grants')} bans={row.get('bans')} "
                        f"nft={row['nft_elements']} cpu={row['cpu_pct']}%",
                        flush=True,
                    )
            if now >= next_btmp:
                _rotate_btmp(btmp)
                rotations["btmp"] += 1
                print(f"t={(now - t0) / 60:5.1f} min: btmp rotated", flush=True)
                next_btmp = now + random.uniform(ROTATE_MIN, ROTATE_MAX)
            if now >= next_authlog:
                if auth_log.exists():
                    os.replace(auth_log, auth_log.with_name("auth.log.1"))
                    if rsyslog is not None:
                        rsyslog.proc.send_signal(signal.SIGHUP)  # logrotate's postrotate
                    rotations["authlog"] += 1
                next_authlog = now + random.uniform(ROTATE_MIN, ROTATE_MAX)
            if now >= next_journal:
                done = subprocess.run(
                    ["journalctl", "--rotate"], capture_output=True, timeout=30, check=False
                )
                rotations["journal" if done.returncode == 0 else "journal_errors"] += 1
                if keep_archived is not None:
                    vacuum = [f"--vacuum-files={keep_archived}"]
                    done = subprocess.run(
                        ["journalctl", *vacuum], capture_output=True, timeout=30, check=False
                    )
                    rotations["vacuum" if done.returncode == 0 else "journal_errors"] += 1
                next_journal = now + JOURNAL_ROTATE_EVERY
            if now >= next_trace:
                os.kill(handle.pid, signal.SIGUSR2)  # trace_daemon.py dumps its allocations
                next_trace = now + args.trace_every
            if now >= next_operator:
                unbans += _operator_unban(lab, handle.socket_path, pool)
                next_operator = now + OPERATOR_EVERY
            time.sleep(max(0.05, min(next_sample, deadline) - time.monotonic()))
        load_end = time.monotonic() - t0
        # The workers stop at the same deadline; long sessions end within their given time.
        for worker in workers:
            try:
                worker.proc.wait(
                    timeout=max(1.0, t0 + load_seconds + WORKER_GRACE - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                worker.proc.kill()
        drain_end = time.monotonic() + args.drain
        while time.monotonic() < drain_end and handle.returncode is None:
            sampler.sample("drain")
            time.sleep(args.sample)
        alive = handle.returncode is None
        final = sampler.samples[-1] if sampler.samples else {}
        stop_mirror.set()
        exit_code = handle.stop(timeout=15)
        warmup = min(300.0, 0.2 * load_seconds)
        metrics = [
            "rss_mib",
            "rss_anon_mib",
            "rss_file_mib",
            "fds",
            "journal_fds",
            "threads",
            "timer_entries",
            "attempts",
            "attempt_records",
            "python_blocks",
            "grants",
            "sessions",
            "bans",
            "spa_replays",
            "nft_elements",
            "state_db_kib",
            "state_wal_kib",
            "cpu_pct",
        ]
        first_counters: dict[str, int] = next(
            (s["_all_counters"] for s in sampler.samples if "_all_counters" in s), {}
        )
        last_counters = final.get("_all_counters", {})
        cpu_samples = [s for s in sampler.samples if s["phase"] == "load"]
        cpu_used = (
            cpu_samples[-1]["cpu_s"] - cpu_samples[0]["cpu_s"] if len(cpu_samples) > 1 else None
        )
        result = {
            "benchmark": "soak: continuous knocks, SPA, sessions, brute force and rotations",
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "started_at": started_wall.isoformat(timespec="seconds"),
            "minutes": minutes,
            "sample_interval_s": args.sample,
            "drain_s": args.drain,
            "load_seconds_measured": round(load_end, 1),
            "warmup_s": warmup,
            "authlog_writer": "rsyslog" if args.rsyslog else "journal mirror",
            "journald_started_by_lab": journald.started,
            "config": config,
            "daemon": {
                "alive_at_end_of_load": alive,
                "exit_code_on_sigterm": exit_code,
                "cpu_seconds_during_load": None if cpu_used is None else round(cpu_used, 2),
                "cpu_percent_mean": None
                if cpu_used is None or load_end <= 0
                else round(100 * cpu_used / (cpu_samples[-1]["t"] - cpu_samples[0]["t"]), 2),
                "sampling_errors": sampler.errors,
            },
            "load": {
                "workers": {w.name: w.result() for w in workers},
                "rotations": rotations,
                "operator_unbans": unbans,
                "authlog_mirror": None
                if mirror is None
                else {
                    "lines": mirror.lines,
                    "foreign_skipped": mirror.foreign,
                    "error": mirror.error,
                },
            },
            "counters_first_sample": first_counters,
            "counters_last_sample": last_counters,
            "summary": summarize(sampler.samples, warmup, metrics),
            "samples": [
                {k: v for k, v in s.items() if k != "_all_counters"} for s in sampler.samples
            ],
        }
        Path(args.svg).parent.mkdir(parents=True, exist_ok=True)
        Path(args.svg).write_text(render_result(result))
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(dump_result(result))
        print_summary(result["summary"])
        print(json.dumps(result["load"]))
        print(json.dumps(result["daemon"]))
        print(f"wrote {args.json} and {args.svg}")
    finally:
        stop_mirror.set()
        if rsyslog is not None:
            rsyslog.stop()
        lab.close()
        if mirror is not None:
            mirror.join(timeout=5)
    return 0 if result and result["daemon"]["alive_at_end_of_load"] else 1


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["worker"]:
        return run_worker(argv[1:])
    if argv[:1] == ["plot"]:
        return run_plot(argv[1:])
    if argv[:1] == ["summary"]:
        return run_summary(argv[1:])
    ap = argparse.ArgumentParser(description="30-minute soak of the guardian (needs root)")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--drain", type=float, default=30.0, help="seconds sampled after the load")
    ap.add_argument("--knock-rate", type=float, default=2.0, help="knock sequences per second")
    ap.add_argument(
        "--trace",
        default="",
        help="run the daemon under bench/trace_daemon.py and dump its allocations into this "
        "directory every --trace-every seconds (for bench/trace_compare.py)",
    )
    ap.add_argument("--trace-every", type=float, default=120.0)
    ap.add_argument(
        "--trace-light",
        action="store_true",
        help="with --trace: no tracemalloc (it grows the heap itself); objects by type, the "
        "largest containers and the small-object allocator's statistics instead",
    )
    ap.add_argument("--json", default=str(HERE / "results" / "soak.json"))
    ap.add_argument("--svg", default=str(HERE / "results" / "soak.svg"))
    ap.add_argument("--rsyslog", action="store_true", help="the lab rsyslog writes auth.log")
    ap.add_argument(
        "--no-journal-vacuum",
        action="store_true",
        help="rotate the journal without vacuuming it (its file count then grows)",
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:  # run()'s finally has removed the lab by now
        print("interrupted: no results written; the lab is removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
