# Chaos in the lab (issue 8, item 2; item 5 "Lockout" for live sessions): the real daemon is killed
# with SIGKILL at random points and started again, CYCLES times, while clients knock (Debian's
# `knock`), log in and out (ssh), long ssh sessions run across many restarts, and an attacker
# brute-forces sshd with wrong passwords (sshpass). After every cycle, once the new daemon is ready
# and has settled, the kernel's table (`nft -j list table inet guardian`) and the daemon's snapshot
# (what `guardian status --json` prints: the control socket's "snapshot"; every tenth cycle through
# the real CLI) are checked against what the test itself did:
#   - every grant (allow4 element) is explained by a knock whose whole sequence one daemon could
#     have seen, within its window, or by a session that is live or ended within its linger (or,
#     when no daemon was there to see the end, within the lease the kernel element last got);
#   - no live session is cut: every long session prints "still-here" at its end, and while it lives
#     the new daemon lists it and holds its source's grant in_session;
#   - no ban lost, doubled, moved or escalated wrongly: the attacker's ban stays until its kernel
#     timeout (same expiry across restarts), one element covers it, the offence in the snapshot is
#     the count of bans so far (from the state store across restarts), each ban lasts bantime *
#     factor ** (offence - 1), and each needs maxretry btmp failures newer than the previous ban;
#   - no duplicates (sources in the snapshot's grants, bans and sessions appear once) and table and
#     snapshot agree: the same sources, and the kernel never lets a grant or a ban run out before
#     the daemon's deadline for it (beyond the tolerances below);
#   - no client and no trusted network is ever banned; the table keeps its shape (trusted4, empty
#     IPv6 and everyone sets); no daemon logs a traceback or an ERROR line.
#
# Decisions:
# - One scripted cycle at a time (kill point chosen by scenario: right after start, during start-up,
#   mid-knock, a knock split across a restart, mid-login, at logout, right after a failure, a mix),
#   with the short operations of a cycle finished before its check, so the check sees a quiet system
#   (only long sessions, which do nothing, and timers). Each scenario runs equally often (shuffled
#   rounds); every random choice comes from random.Random(seed). The seed is in every failure
#   message; GUARDIAN_CHAOS_SEED=<seed> replays the same choices (timing can still differ).
# - A check lists the table, takes the snapshot, lists again: what changes meanwhile (a timer, a
#   ban made from a failure sshd wrote late) is in one listing and not the other, and is fine;
#   what the snapshot has and neither listing (or both and not the snapshot) is not, unless it is
#   within NEAR of its end.
# - The slack, exactly: WINDOW/LINGER/LEASE come from the config below; TOL = 1 s is added to every
#   closing time (nft lists whole seconds; a timer or a kernel GC runs a little late); a grant is
#   judged at the instant before its listing. A knock counts only if some daemon lived from before
#   its first packet to after its last (a split knock never does) and then allows until the later of
#   its end and that daemon's ready, + WINDOW + TOL. A session that ended at e allows e + LINGER +
#   TOL when a ready daemon saw the end and lived PROCESS_SLACK past it; otherwise also until the
#   next ready + LINGER (the new daemon listed it live) and every kill until then + LEASE (the
#   element's last lease). An ssh counts as a session unless its connect failed (refused): with
#   require_auth = false a TCP connection is a session even if the login then went wrong.
# - Failures come from btmp only (sshd writes the lab's own btmp, guardian.lab.sshd var_log), the
#   daemon runs --no-journal: other labs' sshd lines in the machine's journal can't reach it. So
#   `require_auth = false` (no journal: a connection is a session on sight).
# - The attacker brute-forces a second sshd port (2222) that is not guarded: it needs no knock and
#   never has a grant; its ban (scope "all") drops it everywhere. sshd gets LoginGraceTime 10 and
#   MaxStartups 100 so attempts left hanging by a ban never crowd out the clients' logins.
# - Cost: about 2.5 min for 55 cycles on the 2-core CI machine (a daemon start is 0.4-2 s of it).
#   `pytest -s` prints the seed and a summary (kills, grants judged and by what, bans).
#   GUARDIAN_CHAOS_CYCLES=N runs longer; the scratch fault injections this was tried with (an
#   element added or removed by hand, a session reset with `ss -K`, every kernel timeout given
#   1.5 s shorter than the engine records) each failed the check.
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from guardian.control_client import request
from guardian.lab import (
    GuardianHandle,
    Lab,
    SshdHandle,
    cleanup_stale,
    knock_argv,
    ssh_argv,
    start_guardian,
    start_sshd,
)
from guardian.lab.guardian_proc import READY_LINE
from guardian.lab.sshd import prepare_var_log
from tests.conftest import require_root, save_artifacts

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]
PREFIX = "gcha"
CYCLES = int(os.environ.get("GUARDIAN_CHAOS_CYCLES", "55"))
DOOR = ("7000/tcp", "8000/tcp", "9000/tcp")
CLIENTS = ("client", "client2")
ATTACK_PORT = 2222  # sshd listens here too, unguarded: the attacker's target
TRUSTED = "198.51.100.0/24"  # no lab host: only to see trusted4 survive every restart

WINDOW, LINGER, LEASE = 3.0, 2.0, 4.0
MAXRETRY, BANTIME, FACTOR = 3, 20, 2
CONFIG = f"""\
[guard]
ports = [22]
trusted = ["{TRUSTED}"]
answer = "reset"

[access]
window = "{WINDOW:g}s"
linger = "{LINGER:g}s"
lease = "{LEASE:g}s"
require_auth = false

[[door]]
name = "ssh"
sequence = {json.dumps(list(DOOR))}
timeout = "5s"

[ban]
sources = ["btmp"]
maxretry = {MAXRETRY}
findtime = "10m"
bantime = "{BANTIME}s"
factor = {FACTOR}
maxtime = "1h"
"""
DAEMON_ARGS = ("--no-journal", "--no-journal-log")

TOL = 1.0  # added to every closing time (see the header)
PROCESS_SLACK = 1.0  # a daemon killed this soon after a session's end may not have seen it
NEAR = 1.2  # an element this close to its end may be in one listing and not the other
EPS = 0.3  # clock reads around a listing, a snapshot taken a moment later
GRANT_WAIT = 3.0  # a knock to a ready daemon shows up in allow4 within this (loaded machine)
READY_TIMEOUT = 30.0
SETTLE = 0.3  # after the cycle's last operation, before the check
BTMP_RECORD = 384  # sizeof(struct utmp) on x86-64 Linux
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - wrong on purpose
SSH_CLIENT = re.compile(r"^(\d+\.\d+\.\d+\.\d+) (\d+) 22$")
BAD_LOG_LINE = re.compile(r"Traceback|\b(ERROR|CRITICAL)\b")
SCENARIOS = (
    "after_start",
    "during_startup",
    "mid_knock",
    "split_knock",
    "mid_login",
    "logout",
    "after_failure",
    "mixed",
)


# -- the lab ---------------------------------------------------------------------------------


@dataclass
class ChaosLab:
    lab: Lab
    sshd: SshdHandle
    btmp: Path


@pytest.fixture
def chaos_lab(request: pytest.FixtureRequest) -> Iterator[ChaosLab]:
    require_root()
    cleanup_stale(PREFIX)
    failed_before = request.session.testsfailed
    lab = Lab(prefix=PREFIX)
    ok = False
    try:
        lab.start()
        btmp = prepare_var_log(lab.workdir / "var_log")  # start_guardian passes this btmp
        sshd = start_sshd(
            lab,
            var_log=btmp.parent,
            extra_config={
                "Port": ["22", str(ATTACK_PORT)],
                "LoginGraceTime": "10",
                "MaxStartups": "100",
            },
        )
        yield ChaosLab(lab, sshd, btmp)
        ok = request.session.testsfailed == failed_before
    finally:
        if not ok:
            saved = save_artifacts(lab, request.node.nodeid)
            if saved is not None:
                print(f"lab artifacts kept in {saved}")
        lab.close()


# -- processes followed by a thread ----------------------------------------------------------


class Run:
    """A process in a lab host; a thread stamps its output lines and its end, so the main thread is
    free to kill the daemon at the moment it chose."""

    def __init__(
        self, lab: Lab, host: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> None:
        self.started = time.monotonic()
        self.proc = lab.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.lines: list[tuple[float, str]] = []
        self.ended: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
        self.proc.wait()
        self.ended = time.monotonic()
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._done.wait(5.0)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)


# -- what the test did ----------------------------------------------------------------------


@dataclass
class Life:
    """One daemon: started (before its Popen), ready (when we saw "guardian: ready"; None if it
    was killed before we waited for it), killed (just before SIGKILL), dead (reaped)."""

    handle: GuardianHandle
    started: float
    ready: float | None
    killed: float | None = None
    dead: float | None = None

    def alive_until(self) -> float:
        return self.dead if self.dead is not None else float("inf")


@dataclass
class Knock:
    """A door's sequence from one source, sent as one or more invocations of `knock` (parts)."""

    source: str
    parts: list[tuple[float, float]] = field(default_factory=list)

    @property
    def end(self) -> float:
        return self.parts[-1][1]


@dataclass
class Conn:
    """An ssh login: short (a command and out) or long (sleeps `planned` s across restarts)."""

    source: str
    run: Run
    long: bool
    planned: float = 0.0
    verified: bool = False  # its end was checked

    def client_line(self) -> tuple[float, int] | None:
        for at, line in self.run.lines:
            m = SSH_CLIENT.match(line)
            if m:
                return at, int(m.group(2))
        return None

    @property
    def sport(self) -> int | None:
        seen = self.client_line()
        return None if seen is None else seen[1]

    @property
    def established(self) -> float | None:
        seen = self.client_line()
        return None if seen is None else seen[0]

    def may_have_connected(self) -> bool:
        # Running: perhaps still logging in (a slow machine). Ended: unless the connect itself
        # failed ("ssh: connect to host ...: Connection refused"), a TCP connection may have been
        # a session to the daemon (require_auth = false) even if the login went wrong later.
        if self.run.running or self.client_line() is not None:
            return True
        return "connect to host" not in self.run.output


@dataclass
class BanTrack:
    """The attacker's bans as the kernel shows them, check after check."""

    offence: int = 0
    lo: float | None = None  # the live ban's kernel expiry lies in [lo, hi] (monotonic)
    hi: float | None = None
    timeout: int | None = None
    records_at_ban: int = 0  # btmp records at the last check that saw the latest ban
    bans: list[str] = field(default_factory=list)

    def banned_at(self, now: float) -> bool:
        return self.hi is not None and now < self.hi

    def update(
        self, present: tuple[int | None, float, float] | None, obs: Observation, snap: int | None
    ) -> list[str]:
        """present: (timeout, lo, hi) of the attacker's ban element in the later listing (its
        expiry on the monotonic clock); snap: its offence in the snapshot."""
        problems: list[str] = []
        at = obs.after
        if present is None:
            if self.lo is not None:
                if at.t1 < self.lo - EPS:
                    problems.append(
                        f"ban lost: the attacker's ban is gone {self.lo - at.t1:.1f}s before its "
                        f"kernel timeout (offence {self.offence})"
                    )
                self.lo = self.hi = self.timeout = None
            return problems
        timeout, lo, hi = present
        if timeout is None:
            return ["the attacker's ban has no timeout"]
        if self.lo is not None and self.hi is not None:
            if lo <= self.hi + EPS and hi >= self.lo - EPS:  # the same ban, the same expiry
                self.lo, self.hi = max(self.lo, lo), max(min(self.hi, hi), max(self.lo, lo))
                if timeout != self.timeout:
                    problems.append(f"ban re-added with timeout {timeout}s (was {self.timeout}s)")
                if snap is not None and snap != self.offence:
                    problems.append(f"offence {snap} under the live ban of offence {self.offence}")
                self.records_at_ban = obs.btmp_records
                return problems
            if at.t0 < self.lo - EPS:
                problems.append(
                    f"ban moved: kernel expiry expected in [{self.lo:.1f}, {self.hi:.1f}], now "
                    f"[{lo:.1f}, {hi:.1f}] (extended or re-banned while banned)"
                )
        self.offence += 1
        expected = BANTIME * FACTOR ** (self.offence - 1)
        new_failures = obs.btmp_records - self.records_at_ban
        self.bans.append(
            f"offence {self.offence}: {timeout}s, seen at {at.t0:.1f} ({new_failures} new failures)"
        )
        if timeout != expected:
            problems.append(
                f"ban {self.offence} lasts {timeout}s, not {expected}s: the offence count "
                "did not carry over"
            )
        if snap is not None and snap != self.offence:
            problems.append(f"ban {self.offence} has offence {snap} in the snapshot")
        if new_failures < MAXRETRY:
            problems.append(
                f"ban {self.offence} after only {new_failures} failure(s) since the previous "
                f"ban (maxretry {MAXRETRY}): failures counted twice"
            )
        self.lo, self.hi, self.timeout = lo, hi, timeout
        self.records_at_ban = obs.btmp_records
        return problems


Elements = dict[str, tuple[int | None, int | None]]  # element -> (timeout, expires), whole seconds


@dataclass
class Listing:
    """One `nft -j list table inet guardian`, with the clocks read around it."""

    t0: float  # monotonic, just before
    t1: float  # just after
    w0: float  # the same instants on the wall clock
    w1: float
    sets: dict[str, Elements]

    def get(self, name: str) -> Elements:
        return self.sets.get(name, {})

    def expiry(self, name: str, element: str, *, wall: bool = True) -> tuple[float, float]:
        """When the element's kernel timeout runs out: [lo, hi] (nft lists whole seconds)."""
        expires = self.sets[name][element][1] or 0
        start, end = (self.w0, self.w1) if wall else (self.t0, self.t1)
        return start + expires, end + expires + 1


@dataclass
class Observation:
    """A listing, the daemon's snapshot, another listing: what changed during the check (a timer,
    a ban made from a late failure) is in one listing and not the other."""

    before: Listing
    snap: dict[str, Any]
    after: Listing
    btmp_records: int  # read after the second listing
    via_cli: bool

    @property
    def taken(self) -> float:
        value: float = self.snap["header"]["taken_at"]
        return value


def _element_key(val: Any) -> str:
    if isinstance(val, dict) and "prefix" in val:
        return f"{val['prefix']['addr']}/{val['prefix']['len']}"
    if isinstance(val, dict) and "range" in val:
        return "-".join(map(str, val["range"]))
    return str(val)


def table_sets(lab: Lab) -> dict[str, Elements]:
    """Every set of table inet guardian in one listing: element -> (timeout, expires)."""
    done = lab.run("server", ["nft", "-j", "list", "table", "inet", "guardian"], timeout=30)
    assert done.returncode == 0, f"table inet guardian is gone: {done.stderr}"
    sets: dict[str, Elements] = {}
    for item in json.loads(done.stdout)["nftables"]:
        nft_set = item.get("set")
        if nft_set is None:
            continue
        elements: Elements = {}
        for elem in nft_set.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                inner = elem["elem"]
                elements[_element_key(inner["val"])] = (inner.get("timeout"), inner.get("expires"))
            else:
                elements[_element_key(elem)] = (None, None)
        sets[nft_set["name"]] = elements
    return sets


def listing(lab: Lab) -> Listing:
    t0, w0 = time.monotonic(), time.time()
    sets = table_sets(lab)
    return Listing(t0, time.monotonic(), w0, time.time(), sets)


def windows(
    listing: Listing, names: Sequence[str], key: Callable[[str], str] = str
) -> dict[str, tuple[float, float]]:
    """Elements of some sets of one listing, keyed as the daemon writes them: (lo, hi) of the
    wall-clock instant their kernel timeout runs out."""
    return {key(e): listing.expiry(n, e) for n in names for e in listing.get(n)}


def agree(
    kind: str,
    first: dict[str, tuple[float, float]],
    second: dict[str, tuple[float, float]],
    engine: dict[str, float | None],
    obs: Observation,
    compare: Callable[[str, float, float, float | None], list[str]],
) -> list[str]:
    """The kernel (the check's two listings) against the daemon's deadlines (wall clock; None:
    none). compare(key, k_lo, k_hi, deadline) judges an element both have; what only one of them
    has must be at its end (within NEAR), or have changed between the two listings.

    The snapshot is taken between the listings, and a timer can fire in between (an in-session
    grant's lease refresh comes every lease / 2): the daemon's deadline then matches the second
    listing, not the first. So an element is judged on [its end in the first listing that holds
    it, its end in the last]; an element no timer touched has the same end in both."""
    problems = []
    for key in sorted(set(first) | set(second) | set(engine)):
        deadline = engine.get(key)
        if key in engine and key not in first and key not in second:
            if deadline is None or deadline > obs.before.w1 + NEAR:
                problems.append(f"{kind} {key} in the daemon (until {deadline}), not the kernel")
        elif key in first and key in second and key not in engine:
            if second[key][0] > obs.taken + NEAR:
                problems.append(f"{kind} {key} in the kernel {second[key]}, not in the daemon")
        elif key in engine:
            lo = (first.get(key) or second[key])[0]
            hi = (second.get(key) or first[key])[1]
            problems += compare(key, lo, hi, deadline)
    return problems


def host_network(element: str) -> str:
    return str(ipaddress.ip_network(element, strict=False))


# -- the chaos -------------------------------------------------------------------------------


class Chaos:
    def __init__(self, env: ChaosLab, seed: int) -> None:
        self.env = env
        self.lab = env.lab
        self.seed = seed
        self.rng = random.Random(seed)
        self.server = self.lab.addr("server")
        self.attacker = self.lab.addr("attacker")
        self.lives: list[Life] = []
        self.knocks: list[Knock] = []
        self.conns: list[Conn] = []
        self.cycle_runs: list[Run] = []  # short operations of the current cycle
        self.attacks: list[Run] = []
        self.ban = BanTrack()
        self.trace: list[str] = []
        self.cycle = 0
        self.scenario = "start"
        self.survived: Counter[int] = Counter()  # long session (index) -> kills it lived through
        self.stats: Counter[str] = Counter()

    # ---- bookkeeping -----------------------------------------------------------------------
    def note(self, text: str) -> None:
        self.trace.append(f"[{time.monotonic():.2f}] cycle {self.cycle} {self.scenario}: {text}")

    def context(self) -> str:
        return f"seed={self.seed} cycle={self.cycle} scenario={self.scenario}"

    def fail(self, problems: Sequence[str]) -> None:
        logs = []
        for life in self.lives[-3:]:
            tail = "\n".join(life.handle.log_text().splitlines()[-25:])
            logs.append(f"--- {life.handle.log_path.name} (pid {life.handle.pid}):\n{tail}")
        pytest.fail(
            f"{self.context()} (replay: GUARDIAN_CHAOS_SEED={self.seed})\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nlast steps:\n"
            + "\n".join(self.trace[-25:])
            + "\n"
            + "\n".join(logs),
            pytrace=False,
        )

    @property
    def life(self) -> Life:
        return self.lives[-1]

    def btmp_records(self) -> int:
        return self.env.btmp.stat().st_size // BTMP_RECORD

    def allow4(self) -> Elements:
        return table_sets(self.lab).get("allow4", {})

    # ---- the daemon --------------------------------------------------------------------------
    def start_daemon(self, *, wait: bool = True) -> Life:
        started = time.monotonic()
        handle = start_guardian(
            self.lab, CONFIG, extra_args=DAEMON_ARGS, ready_timeout=READY_TIMEOUT, wait_ready=wait
        )
        life = Life(handle, started, time.monotonic() if wait else None)
        self.lives.append(life)
        self.note(f"daemon {handle.pid} {'ready' if wait else 'starting'}")
        return life

    def kill_daemon(self) -> None:
        life = self.life
        life.killed = time.monotonic()
        life.handle.kill()
        life.dead = time.monotonic()
        self.stats["kills"] += 1
        if life.ready is None and READY_LINE not in life.handle.log_text():
            self.stats["killed_during_startup"] += 1
        for index, conn in enumerate(self.conns):
            if conn.long and conn.run.running and conn.established is not None:
                self.survived[index] += 1
        self.note(f"killed daemon {life.handle.pid}")
        bad = [ln for ln in life.handle.log_text().splitlines() if BAD_LOG_LINE.search(ln)]
        if bad:
            self.fail([f"daemon {life.handle.pid} logged errors:", *bad[:20]])

    def gap(self) -> float:
        r = self.rng.random()
        if r < 0.4:
            return 0.0
        if r < 0.94:
            return self.rng.uniform(0.05, 1.0)
        return self.rng.uniform(LEASE + 0.5, LEASE + 1.5)  # grants lapse in the kernel meanwhile

    def kill_and_restart(self) -> None:
        self.kill_daemon()
        pause = self.gap()
        self.note(f"dead for {pause:.2f}s")
        time.sleep(pause)
        self.start_daemon()

    # ---- clients ---------------------------------------------------------------------------
    def knock_part(self, host: str, steps: Sequence[str], record: Knock) -> None:
        start = time.monotonic()
        done = self.lab.run(host, knock_argv(self.server, steps), timeout=15)
        record.parts.append((start, time.monotonic()))
        assert done.returncode == 0, f"{self.context()}: knock failed: {done.stderr}"

    def new_knock(self, host: str) -> Knock:
        record = Knock(self.lab.addr(host))
        self.knocks.append(record)
        return record

    def knock_open(self, host: str) -> None:
        """Knock the whole sequence to the ready daemon: the grant must appear (liveness)."""
        self.knock_part(host, DOOR, self.new_knock(host))
        source = self.lab.addr(host)
        deadline = time.monotonic() + GRANT_WAIT
        while source not in self.allow4():
            if time.monotonic() > deadline:
                self.fail([f"a knock from {source} to the ready daemon opened nothing"])
            time.sleep(0.02)

    def ssh(self, host: str, command: Sequence[str], *, long: bool, planned: float = 0.0) -> Conn:
        argv = ssh_argv(
            self.env.sshd,
            self.server,
            ["echo", "$SSH_CLIENT", ";", *command],
            ("-o", "ConnectTimeout=3"),
        )
        conn = Conn(self.lab.addr(host), Run(self.lab, host, argv), long, planned)
        self.conns.append(conn)
        if not long:
            self.cycle_runs.append(conn.run)
        return conn

    def maybe_long_session(self) -> None:
        live = [c for c in self.conns if c.long and c.run.running]
        if len(live) >= 3 or self.cycle > CYCLES - 10 or self.rng.random() > 0.4:
            return
        host = self.rng.choice(CLIENTS)
        planned = round(self.rng.uniform(6.0, 22.0), 1)
        self.knock_open(host)
        self.ssh(host, ["sleep", f"{planned:g}", ";", "echo", "still-here"], long=True,
                 planned=planned)  # fmt: skip
        self.note(f"long session from {host} for {planned:g}s")

    def attack(self, count: int) -> list[Run]:
        """`count` wrong-password logins at once on the unguarded port (1 btmp record each)."""
        argv = [
            "sshpass", "-e", "ssh", "-F", "/dev/null",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
            "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR",
            "-p", str(ATTACK_PORT), "-l", "root", self.server, "true",
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env["SSHPASS"] = WRONG_PASSWORD
        runs = [Run(self.lab, "attacker", argv, env) for _ in range(count)]
        self.attacks += runs
        self.stats["attack_attempts"] += count
        self.note(f"attacker: {count} attempt(s)")
        return runs

    # ---- scenarios (each ends with the new daemon ready) -----------------------------------
    def s_after_start(self) -> None:
        time.sleep(self.rng.uniform(0.0, 0.25))
        self.kill_and_restart()

    def s_during_startup(self) -> None:
        time.sleep(self.rng.uniform(0.0, 0.3))
        self.kill_daemon()
        self.start_daemon(wait=False)
        time.sleep(self.rng.uniform(0.0, 0.8))
        self.kill_and_restart()

    def s_mid_knock(self) -> None:
        host = self.rng.choice(CLIENTS)
        record = self.new_knock(host)
        delays = [self.rng.uniform(0.05, 0.4) for _ in DOOR[1:]]
        kill_at = self.rng.uniform(0.0, sum(delays) + 0.1)

        def sequence() -> None:
            for i, step in enumerate(DOOR):
                if i:
                    time.sleep(delays[i - 1])
                self.knock_part(host, [step], record)

        sender = threading.Thread(target=sequence, daemon=True)
        self.note(f"knock from {host}, steps {[round(d, 2) for d in delays]}s apart")
        sender.start()
        time.sleep(kill_at)
        self.kill_and_restart()
        sender.join(30.0)
        assert not sender.is_alive(), self.context()

    def s_split_knock(self) -> None:
        host = self.rng.choice(CLIENTS)
        record = self.new_knock(host)
        j = self.rng.choice((1, 2))
        self.knock_part(host, DOOR[:j], record)
        self.note(f"{host} sent {DOOR[:j]}; the rest goes to the next daemon")
        self.kill_and_restart()
        self.knock_part(host, DOOR[j:], record)

    def s_mid_login(self) -> None:
        host = self.rng.choice(CLIENTS)
        self.knock_open(host)
        stay = self.rng.choice((0.0, round(self.rng.uniform(0.1, 0.6), 2)))
        self.ssh(host, ["sleep", f"{stay:g}"], long=False)
        self.note(f"login from {host} (stays {stay:g}s)")
        time.sleep(self.rng.uniform(0.0, 1.0))
        self.kill_and_restart()

    def s_logout(self) -> None:
        host = self.rng.choice(CLIENTS)
        self.knock_open(host)
        stay = round(self.rng.uniform(0.3, 1.0), 2)
        conn = self.ssh(host, ["sleep", f"{stay:g}"], long=False)
        deadline = time.monotonic() + 10.0
        while conn.established is None and conn.run.running and time.monotonic() < deadline:
            time.sleep(0.01)
        logged_in = conn.established or time.monotonic()
        time.sleep(max(0.0, logged_in + stay + self.rng.uniform(-0.15, 0.3) - time.monotonic()))
        self.note(f"logout from {host} around now (stayed {stay:g}s)")
        self.kill_and_restart()

    def s_after_failure(self) -> None:
        if self.ban.banned_at(time.monotonic() + 3.0):
            self.s_mixed()  # a banned attacker's attempts never reach sshd: no failure to wait for
            return
        before = self.btmp_records()
        self.attack(self.rng.randint(1, 3))
        deadline = time.monotonic() + 8.0
        while self.btmp_records() == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(self.rng.uniform(0.0, 0.05))
        self.note(f"btmp {before} -> {self.btmp_records()} records")
        self.kill_and_restart()

    def s_mixed(self) -> None:
        record = self.new_knock("client2")
        sender = threading.Thread(
            target=self.knock_part, args=("client2", DOOR, record), daemon=True
        )
        sender.start()
        self.knock_open("client")
        self.ssh("client", ["sleep", "0.3"], long=False)
        self.attack(1)
        time.sleep(self.rng.uniform(0.0, 1.2))
        self.kill_and_restart()
        sender.join(30.0)

    # ---- a cycle -----------------------------------------------------------------------------
    def run_cycle(self, index: int, scenario: str) -> None:
        self.cycle, self.scenario = index, scenario
        self.cycle_runs = []
        self.maybe_long_session()
        if self.rng.random() < 0.35:
            self.attack(self.rng.randint(1, 2))
        getattr(self, f"s_{scenario}")()
        self.finish_cycle_runs()
        time.sleep(SETTLE)
        self.check()

    def finish_cycle_runs(self) -> None:
        for run in self.cycle_runs:
            if not run.wait(20.0):
                run.kill()
                self.fail([f"a short operation did not end within 20s: {run.output}"])
        for run in self.attacks:
            if not run.wait(max(0.0, run.started + 3.0 - time.monotonic())):
                run.kill()  # dropped by a ban: hanging until its ConnectTimeout or longer
        self.attacks = [r for r in self.attacks if r.running]

    # ---- justification of grants -------------------------------------------------------------
    def seen_by(self, record: Knock) -> Life | None:
        """A daemon alive around every part of the knock, if any (packets come and go with
        the daemon's capture socket: no daemon, no knock)."""
        for life in self.lives:
            if all(s <= life.alive_until() and e >= life.started for s, e in record.parts):
                return life
        return None

    def session_bound(self, ended: float) -> float:
        served = any(
            life.ready is not None
            and life.ready <= ended
            and (life.killed is None or life.killed >= ended + PROCESS_SLACK)
            for life in self.lives
        )
        bound = ended + LINGER
        if served:
            return bound + TOL
        next_ready = min(
            (life.ready for life in self.lives if life.ready is not None and life.ready >= ended),
            default=float("inf"),
        )
        bound = max(bound, next_ready + LINGER)
        for life in self.lives:
            if life.killed is not None and ended - PROCESS_SLACK <= life.killed <= next_ready:
                bound = max(bound, life.killed + LEASE)
        return bound + TOL

    def justify(self, source: str, at: float) -> str | None:
        for record in self.knocks:
            if record.source != source or not record.parts:
                continue
            life = self.seen_by(record)
            if life is None:
                continue
            ready = life.ready if life.ready is not None else life.alive_until()
            if at <= max(record.end, ready) + WINDOW + TOL:
                return f"knock ended at {record.end:.2f}"
        for conn in self.conns:
            if conn.source != source or conn.run.started > at or not conn.may_have_connected():
                continue
            if conn.run.ended is None:
                return "session live"
            if at <= conn.run.ended + LINGER + TOL:
                return f"linger after a session ended at {conn.run.ended:.2f}"
            if at <= self.session_bound(conn.run.ended):
                return f"lease after a session ended at {conn.run.ended:.2f} with no daemon"
        return None

    def history(self, source: str) -> str:
        knocks = [
            [(round(s, 2), round(e, 2)) for s, e in k.parts] for k in self.knocks[-8:]
            if k.source == source
        ]  # fmt: skip
        conns = [
            (round(c.run.started, 2), c.run.ended and round(c.run.ended, 2), c.sport, c.long)
            for c in self.conns[-8:]
            if c.source == source
        ]
        lives = [
            (round(x.started, 2), x.ready and round(x.ready, 2), x.killed and round(x.killed, 2))
            for x in self.lives[-5:]
        ]
        return f"knocks {knocks}; sessions {conns}; daemons (started, ready, killed) {lives}"

    # ---- the check ---------------------------------------------------------------------------
    def observe(self, via_cli: bool) -> Observation:
        before = listing(self.lab)
        if via_cli:  # the real `guardian status --json`
            done = subprocess.run(
                [sys.executable, "-m", "guardian", "status", "--json", "-s",
                 str(self.life.handle.socket_path)],
                capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{self.context()}: guardian status: {done.stderr}"
            snap: dict[str, Any] = json.loads(done.stdout)
        else:
            reply = request(str(self.life.handle.socket_path), {"cmd": "snapshot"}, timeout=10.0)
            snap = reply["snapshot"]
        after = listing(self.lab)
        return Observation(before, snap, after, self.btmp_records(), via_cli)

    def check(self) -> None:
        obs = self.observe(via_cli=self.cycle % 10 == 0)
        problems: list[str] = []
        problems += self.check_shape(obs)
        problems += self.check_grants(obs)
        problems += self.check_sessions(obs)
        problems += self.check_bans(obs)
        problems += self.check_long_sessions()
        self.stats["checks"] += 1
        self.stats["grants_seen"] += len(obs.before.get("allow4"))
        if problems:
            self.fail(problems)

    def check_shape(self, obs: Observation) -> list[str]:
        problems = []
        if obs.snap["header"]["pid"] != self.life.handle.pid:
            problems.append(f"the snapshot is from pid {obs.snap['header']['pid']}")
        for seen in (obs.before, obs.after):
            if set(seen.get("trusted4")) != {TRUSTED}:
                problems.append(f"trusted4 is {seen.get('trusted4')}, not {{{TRUSTED}}}")
            for name in ("allow6", "ban6_64", "bannet6", "everyone"):
                if seen.get(name):
                    problems.append(f"{name} holds {seen.get(name)} (nobody used IPv6/everyone)")
            for name in ("allow4", "ban4", "bannet4"):
                for element, (timeout, expires) in seen.get(name).items():
                    if timeout is None or expires is None:
                        problems.append(f"{name} element {element} has no timeout")
        return problems

    def check_grants(self, obs: Observation) -> list[str]:
        problems = []
        longest = max(WINDOW, LINGER, LEASE)
        for seen in (obs.before, obs.after):
            for source, (timeout, expires) in seen.get("allow4").items():
                if timeout is not None and timeout > longest:
                    problems.append(f"grant {source} with timeout {timeout}s > {longest:g}s")
                why = self.justify(source, seen.t0)
                self.stats[f"grant_by_{why.split(' ')[0] if why else 'nothing'}"] += 1
                if why is None:
                    problems.append(
                        f"grant without a knock or a session: {source} (expires in {expires}s) "
                        f"at {seen.t0:.2f}; {self.history(source)}"
                    )
            if problems:
                break
        grants = obs.snap["grants"]
        dups = [s for s, n in Counter(g["source"] for g in grants).items() if n > 1]
        if dups:
            problems.append(f"the snapshot lists grants twice: {dups}")
        states = {g["source"]: g["state"] for g in grants}

        def compare(source: str, k_lo: float, k_hi: float, deadline: float | None) -> list[str]:
            # The kernel never ends a grant before the daemon's deadline for it (the window's or
            # linger's end; in session, the next lease refresh), and neither outlasts a promise.
            assert deadline is not None
            found = []
            if k_hi < deadline - EPS:
                found.append(
                    f"grant {source} ({states[source]}): the kernel drops it "
                    f"{deadline - k_hi:.1f}s before the daemon's deadline"
                )
            if deadline > max(obs.after.w1, obs.taken) + longest + EPS:
                found.append(f"grant {source}: deadline {deadline - obs.taken:.1f}s away")
            if k_lo > obs.after.w1 + longest + EPS:
                found.append(f"grant {source}: kernel timeout {k_lo - obs.after.w1:.1f}s away")
            return found

        engine: dict[str, float | None] = {g["source"]: g["expires_at"] for g in grants}
        first, second = windows(obs.before, ["allow4"]), windows(obs.after, ["allow4"])
        return problems + agree("grant", first, second, engine, obs, compare)

    def check_sessions(self, obs: Observation) -> list[str]:
        problems = []
        pairs = [(s["source"], s["sport"]) for s in obs.snap["sessions"]]
        dups = [p for p, n in Counter(pairs).items() if n > 1]
        if dups:
            problems.append(f"the snapshot lists sessions twice: {dups}")
        grants = {g["source"]: g for g in obs.snap["grants"]}
        kernel = set(obs.before.get("allow4")) & set(obs.after.get("allow4"))
        by_port = {(c.source, c.sport): c for c in self.conns if c.sport is not None}
        at = obs.before.t0
        for source, sport in pairs:
            conn = by_port.get((source, sport))
            recent = [
                c for c in self.conns
                if c.source == source and (c.run.ended is None or c.run.ended > at - NEAR)
            ]  # fmt: skip
            if conn is None and not recent:
                problems.append(f"the daemon lists a session {source}:{sport} nobody made")
            elif conn is not None and conn.run.ended is not None and conn.run.ended < at - NEAR:
                problems.append(
                    f"the daemon still lists session {source}:{sport}, which ended "
                    f"{at - conn.run.ended:.1f}s ago"
                )
        for conn in self.conns:
            established = conn.established
            if not conn.long or established is None or not conn.run.running:
                continue
            if obs.after.t1 > established + conn.planned - 1.5:
                continue  # about to end: it may be ending under the check
            where = f"live session {conn.source}:{conn.sport} (since {established:.1f})"
            if (conn.source, conn.sport) not in pairs:
                problems.append(f"{where} missing from the daemon's sessions")
            grant = grants.get(conn.source)
            if grant is None or grant["state"] != "in_session":
                problems.append(f"{where}: its grant is {grant}, not in_session")
            if conn.source not in kernel:
                problems.append(f"{where}: no grant in the kernel")
        return problems

    def check_bans(self, obs: Observation) -> list[str]:
        problems = []
        attacker = ipaddress.ip_address(self.attacker)
        for seen in (obs.before, obs.after):
            covering = []
            for name in ("ban4", "bannet4"):
                for element in seen.get(name):
                    if attacker in ipaddress.ip_network(element, strict=False):
                        covering.append(element)
                    else:
                        problems.append(f"{element} is banned: only the attacker failed logins")
            if len(covering) > 1:
                problems.append(f"the attacker is banned twice in the kernel: {covering}")
        bans = obs.snap["bans"] or []
        dups = [s for s, n in Counter(b["source"] for b in bans).items() if n > 1]
        if dups:
            problems.append(f"the snapshot lists bans twice: {dups}")

        def compare(network: str, k_lo: float, k_hi: float, until: float | None) -> list[str]:
            # A ban adopted at start-up has the kernel's time left, read in whole seconds.
            if until is None or not k_lo - 1 - EPS <= until <= k_hi + EPS:
                return [f"ban {network}: until {until} in the daemon, kernel [{k_lo}, {k_hi}]"]
            return []

        engine: dict[str, float | None] = {b["source"]: b["until"] for b in bans}
        names = ("ban4", "bannet4")
        first = windows(obs.before, names, host_network)
        second = windows(obs.after, names, host_network)
        problems += agree("ban", first, second, engine, obs, compare)
        # The attacker's ban, followed from check to check in the later listing.
        key = f"{self.attacker}/32"
        present = None
        for name in names:
            for element, (timeout, _expires) in obs.after.get(name).items():
                if host_network(element) == key:
                    lo, hi = obs.after.expiry(name, element, wall=False)
                    present = (timeout, lo, hi)
        offence = next((b["offence"] for b in bans if b["source"] == key), None)
        problems += self.ban.update(present, obs, offence)
        return problems

    def check_long_sessions(self) -> list[str]:
        problems = []
        for index, conn in enumerate(self.conns):
            if not conn.long or conn.verified or conn.run.running:
                continue
            conn.verified = True
            if conn.established is None:
                self.stats["long_not_established"] += 1
                self.note(f"long session {index} never connected: {conn.run.output!r}")
                continue
            self.stats["long_survived"] += 1
            if conn.run.proc.returncode != 0 or "still-here" not in conn.run.output:
                problems.append(
                    f"live session cut: {conn.source}:{conn.sport} (exit "
                    f"{conn.run.proc.returncode}, output {conn.run.output!r}) after "
                    f"{self.survived[index]} kill(s)"
                )
        return problems

    # ---- the end -----------------------------------------------------------------------------
    def finish(self) -> None:
        self.cycle, self.scenario = self.cycle + 1, "end"
        for conn in self.conns:
            established = conn.established or conn.run.started
            budget = max(1.0, established + conn.planned + 15.0 - time.monotonic())
            if not conn.run.wait(budget):
                conn.run.kill()
                self.fail([f"session {conn.source}:{conn.sport} outlived its sleep by 15s"])
        for run in self.attacks:
            run.kill()
        problems = self.check_long_sessions()
        if problems:
            self.fail(problems)
        # Quiet: nothing knocks, nothing is connected; every grant closes within its promise.
        deadline = time.monotonic() + max(WINDOW, LINGER) + TOL + 2.0
        while self.allow4() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(SETTLE)
        self.check()
        obs = self.observe(via_cli=True)
        leftover = [obs.after.get("allow4"), obs.snap["grants"], obs.snap["sessions"]]
        if any(leftover):
            self.fail([f"grants or sessions left when all is quiet: {leftover}"])
        bad = [ln for ln in self.life.handle.log_text().splitlines() if BAD_LOG_LINE.search(ln)]
        if bad:
            self.fail([f"daemon {self.life.handle.pid} logged errors:", *bad[:20]])


def test_kill_and_restart_at_random_points_loses_nothing(chaos_lab: ChaosLab) -> None:
    seed = int(os.environ.get("GUARDIAN_CHAOS_SEED", str(random.SystemRandom().randrange(10**9))))
    print(f"\nchaos seed {seed} (replay: GUARDIAN_CHAOS_SEED={seed}), {CYCLES} cycles")
    chaos = Chaos(chaos_lab, seed)
    began = time.monotonic()
    order: list[str] = []
    while len(order) < CYCLES:
        batch = list(SCENARIOS)
        chaos.rng.shuffle(batch)
        order += batch
    try:
        chaos.start_daemon()
        for index, scenario in enumerate(order[:CYCLES]):
            chaos.run_cycle(index, scenario)
        chaos.finish()
    finally:
        for run in [c.run for c in chaos.conns] + chaos.attacks:
            if run.running:
                run.kill()
        if chaos.lives:
            chaos.life.handle.stop()
    took = time.monotonic() - began
    long_sessions = [c for c in chaos.conns if c.long and c.established is not None]
    print(
        f"chaos: {CYCLES} cycles, {chaos.stats['kills']} kills "
        f"({chaos.stats['killed_during_startup']} during start-up) in {took:.0f}s; "
        f"{chaos.stats['grants_seen']} grants listed; {len(chaos.knocks)} knocks; "
        f"{sum(1 for c in chaos.conns if not c.long)} short logins; {len(long_sessions)} long "
        f"sessions survived {sum(chaos.survived.values())} kills in all; "
        f"{chaos.stats['attack_attempts']} attack attempts, {chaos.btmp_records()} btmp "
        f"records; bans: {chaos.ban.bans}; {dict(chaos.stats)}"
    )
    context = f"seed={seed}: {dict(chaos.stats)}"
    # Not vacuous: restarts happened, sessions lived through them, the attacker was banned and
    # banned again for longer after the first ban ran out.
    assert chaos.stats["kills"] >= CYCLES, context
    assert len(long_sessions) >= 3 and sum(chaos.survived.values()) >= 10, context
    assert chaos.ban.offence >= 2, f"{context}; bans {chaos.ban.bans}"
