# The btmp and auth.log watchers against a real sshd 9.2 (needs root): the lab sshd, with a lab
# directory bind-mounted over its /var/log (guardian.lab.sshd.prepare_var_log), writes btmp
# records; it logs to /dev/log -> journald -> forward socket -> a lab rsyslog -> auth.log
# (guardian.lab.rsyslog), the real Debian chain. An attacker namespace tries wrong passwords
# (sshpass, one password per connection) for root and for an invalid user.
# Checked: both watchers report AuthFailed with the attacker's address, the user and sshd's PID
# (the same PID in both, and in the journal); every attempt counted once, also while btmp and
# auth.log are rotated during the attack (rename + create; rsyslog reopened by SIGHUP as
# logrotate's postrotate does). Latency is measured from the journal's receive time of the sshd
# line that goes with the record (sshd logs it just before writing btmp) to the event leaving
# read_events(), in a select loop like the daemon's.
from __future__ import annotations

import grp
import ipaddress
import os
import secrets
import select
import signal
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from systemd import journal

from guardian.events import AuthFailed
from guardian.lab import Lab, SshdHandle, cleanup_stale, start_sshd
from guardian.lab.journald import ensure_journald
from guardian.lab.rsyslog import RsyslogHandle, check_forwarding, ensure_rsyslog
from guardian.lab.sshd import password_attempt_argv, prepare_var_log
from guardian.watchers.authlog import AuthLogWatcher
from guardian.watchers.btmp import BtmpWatcher
from tests.conftest import require_root, save_artifacts

pytestmark = pytest.mark.lab

PREFIX = "gt15"
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - a wrong password, on purpose
ATTEMPT_TIMEOUT = 20.0
SETTLE = 3.0  # seconds to wait for the last lines after the attack


@dataclass
class AttackLab:
    lab: Lab
    sshd: SshdHandle
    btmp: Path
    auth_log: Path
    rsyslog: RsyslogHandle


@dataclass(frozen=True)
class Arrival:
    event: AuthFailed
    wall: float  # time.time() when read_events() returned it


@pytest.fixture(scope="module")
def attack_lab(request: pytest.FixtureRequest) -> Iterator[AttackLab]:
    require_root()
    cleanup_stale(PREFIX)
    journald = ensure_journald()
    assert journald.syslog_to_journal, "/dev/log does not reach journald"
    lab = Lab(hosts=("server", "attacker"), prefix=PREFIX)
    rsyslog: RsyslogHandle | None = None
    failed_before = request.session.testsfailed
    try:
        lab.start()
        var_log = lab.workdir / "varlog"
        btmp = prepare_var_log(var_log)
        auth_log = lab.workdir / "auth.log"
        rsyslog = ensure_rsyslog(auth_log, lab=lab)
        check_forwarding(rsyslog)
        sshd = start_sshd(lab, log_to_stderr=False, var_log=var_log)
        yield AttackLab(lab, sshd, btmp, auth_log, rsyslog)
    finally:
        if request.session.testsfailed != failed_before:
            saved = save_artifacts(lab, "btmp_authlog_lab")
            print(f"lab artifacts kept in {saved}")
        if rsyslog is not None:
            rsyslog.stop()
        lab.close()


def attempt_argv(lab: Lab, sshd: SshdHandle, user: str) -> list[str]:
    return password_attempt_argv(lab.addr("server"), user, port=sshd.port)


class Attack(threading.Thread):
    """Wrong passwords from the attacker, one connection per attempt, sequentially."""

    def __init__(self, env: AttackLab, users: list[str]) -> None:
        super().__init__()
        self.env = env
        self.users = users
        self.results: list[int] = []
        self.between: threading.Event | None = None  # set after each attempt (for rotations)
        self.attempted = 0

    def run(self) -> None:
        lab = self.env.lab
        run_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        run_env["SSHPASS"] = WRONG_PASSWORD
        for user in self.users:
            done = lab.run(
                "attacker",
                attempt_argv(lab, self.env.sshd, user),
                env=run_env,
                timeout=ATTEMPT_TIMEOUT,
            )
            self.results.append(done.returncode)
            self.attempted += 1
            if self.between is not None:
                self.between.set()


def pump(
    watchers: list[BtmpWatcher | AuthLogWatcher],
    until_done: threading.Thread,
    expected: dict[str, int],
    on_tick: Callable[[], None] | None = None,
) -> dict[str, list[Arrival]]:
    """The daemon's loop in miniature: select on the watchers' fds, read, timestamp arrivals.
    Runs until the attack is over and the expected counts are in (or SETTLE s after it)."""
    arrivals: dict[str, list[Arrival]] = {"btmp": [], "authlog": []}
    fds = {w.fileno(): w for w in watchers}
    ended_at: float | None = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select(list(fds), [], [], 0.05)
        for fd in ready:
            watcher = fds[fd]
            while True:
                events = watcher.read_events()
                wall = time.time()
                for event in events:
                    if isinstance(event, AuthFailed):
                        arrivals[event.origin].append(Arrival(event, wall))
                if not watcher.more_pending:
                    break
        if on_tick is not None:
            on_tick()
        if not until_done.is_alive():
            if ended_at is None:
                ended_at = time.monotonic()
            have = {k: len(v) for k, v in arrivals.items()}
            if all(have[k] >= n for k, n in expected.items()):
                break
            if time.monotonic() - ended_at > SETTLE:
                break
    return arrivals


def journal_times(pids: set[int], since: float) -> dict[int, list[tuple[float, str]]]:
    """(realtime, message) of sshd's journal lines of those PIDs, since `since` (wall)."""
    reader = journal.Reader()
    try:
        reader.add_match(SYSLOG_IDENTIFIER="sshd")
        reader.seek_realtime(since - 1)
        found: dict[int, list[tuple[float, str]]] = defaultdict(list)
        for entry in reader:
            try:
                pid = int(entry.get("SYSLOG_PID", 0))
            except (TypeError, ValueError):
                continue
            if pid in pids:
                found[pid].append((entry["__REALTIME_TIMESTAMP"].timestamp(), entry["MESSAGE"]))
    finally:
        reader.close()
    return found


def latencies(arrivals: list[Arrival], lines: dict[int, list[tuple[float, str]]]) -> list[float]:
    """Per attempt (PID): first event's arrival minus the receive time of the first sshd line
    that goes with a btmp record (Invalid user / Failed password)."""
    first: dict[int, float] = {}
    for arrival in arrivals:
        pid = arrival.event.pid
        if pid is not None and pid not in first:
            first[pid] = arrival.wall
    out = []
    for pid, wall in first.items():
        refs = [t for t, msg in lines.get(pid, []) if msg.startswith(("Invalid user", "Failed"))]
        if refs:
            out.append(wall - min(refs))
    return out


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    ms = sorted(v * 1e3 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms "
        f"(n={len(ms)})"
    )


def test_the_lab_sshd_writes_the_lab_btmp_only(attack_lab: AttackLab) -> None:
    btmp = attack_lab.btmp
    st = btmp.stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o660")
    assert st.st_gid == grp.getgrnam("utmp").gr_gid
    # The bind mount lives in sshd's mount namespace only: the host's /var/log is untouched.
    host_mounts = Path("/proc/self/mountinfo").read_text()
    assert str(btmp.parent) not in host_mounts
    sshd_mounts = Path(f"/proc/{attack_lab.sshd.pid}/mountinfo").read_text()
    assert " /var/log " in sshd_mounts


def test_wrong_passwords_reach_both_watchers_with_address_user_and_pid(
    attack_lab: AttackLab,
) -> None:
    env = attack_lab
    invalid = f"{PREFIX}{secrets.token_hex(3)}"
    users = ["root", invalid] * 6
    attacker = ipaddress.ip_address(env.lab.addr("attacker"))
    btmp = BtmpWatcher(env.btmp)
    authlog = AuthLogWatcher(env.auth_log)
    started = time.time()
    attack = Attack(env, users)
    try:
        attack.start()
        # Per attempt: btmp has 1 record for root (the password), 2 for the invalid user (the
        # lookup, then the password); auth.log the same failures (Invalid user + Failed password).
        expected = users.count("root") + 2 * users.count(invalid)
        arrivals = pump([btmp, authlog], attack, {"btmp": expected})
    finally:
        attack.join(ATTEMPT_TIMEOUT * len(users))
        btmp_stats, authlog_stats = btmp.stats(), authlog.stats()
        btmp.close()
        authlog.close()
    assert all(code != 0 for code in attack.results), "a wrong password was accepted?"
    assert len(attack.results) == len(users)

    from_btmp = [a.event for a in arrivals["btmp"]]
    assert len(from_btmp) == expected, (from_btmp, btmp_stats)
    assert {e.source for e in from_btmp} == {attacker}
    assert Counter(e.user for e in from_btmp) == {"root": 6, invalid: 12}
    pids = {e.pid for e in from_btmp if e.pid is not None}
    assert len(pids) == len(users)  # one sshd monitor per connection
    assert all(abs(e.wall_time - started) < 120 for e in from_btmp if e.wall_time)

    # auth.log carries every sshd on this machine (journald is shared): ours have our PIDs.
    from_log = [a.event for a in arrivals["authlog"] if a.event.pid in pids]
    assert {e.source for e in from_log} == {attacker}
    by_pid: dict[int | None, list[AuthFailed]] = defaultdict(list)
    for event in from_log:
        by_pid[event.pid].append(event)
    assert set(by_pid) == pids  # the same PIDs as btmp: the engine can join them
    for pid_events in by_pid.values():
        user = pid_events[0].user
        rules = sorted(e.rule for e in pid_events)
        if user == "root":
            assert rules == ["failed_password"]
        else:
            assert user == invalid
            assert rules == ["failed_password", "invalid_user"]
    assert authlog_stats["errors"] == 0

    lines = journal_times(pids, started)
    btmp_latency = latencies(arrivals["btmp"], lines)
    log_latency = latencies([a for a in arrivals["authlog"] if a.event.pid in pids], lines)
    print(
        f"\nfailed attempt -> AuthFailed, {len(users)} attempts: btmp {summary(btmp_latency)}; "
        f"auth.log (journald -> rsyslog -> file) {summary(log_latency)}"
    )
    assert len(btmp_latency) == len(users) and len(log_latency) == len(users)
    assert statistics.median(btmp_latency) < 0.1
    assert statistics.median(log_latency) < 1.0


def test_rotation_during_the_attack_counts_every_attempt_once(attack_lab: AttackLab) -> None:
    """btmp rotated like logrotate's `create 0660 root utmp`; auth.log renamed, re-created and
    rsyslog sent SIGHUP (Debian's postrotate), twice each, while attempts go on."""
    env = attack_lab
    invalid = f"{PREFIX}{secrets.token_hex(3)}"
    users = ["root", invalid] * 6
    btmp = BtmpWatcher(env.btmp)
    authlog = AuthLogWatcher(env.auth_log)
    attack = Attack(env, users)
    attack.between = threading.Event()
    rotations = {"done": 0}
    utmp_gid = grp.getgrnam("utmp").gr_gid

    def rotate_some() -> None:
        assert attack.between is not None
        if not attack.between.is_set() or attack.attempted not in (3, 6, 9, 10):
            return
        attack.between.clear()
        round_no = rotations["done"]
        if round_no % 2 == 0:
            env.btmp.rename(env.btmp.with_name(f"btmp.{round_no}"))
            fd = os.open(env.btmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchown(fd, 0, utmp_gid)
            os.fchmod(fd, 0o660)
            os.close(fd)
        else:
            env.auth_log.rename(env.auth_log.with_name(f"auth.log.{round_no}"))
            os.close(os.open(env.auth_log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
            os.kill(env.rsyslog.pid, signal.SIGHUP)
        rotations["done"] += 1

    try:
        attack.start()
        expected = users.count("root") + 2 * users.count(invalid)
        arrivals = pump([btmp, authlog], attack, {"btmp": expected}, on_tick=rotate_some)
        # The auth.log lines of the last attempt may trail btmp's records: give them a moment.
        settle = time.monotonic() + SETTLE
        while time.monotonic() < settle:
            select.select([authlog.fileno()], [], [], 0.05)
            arrivals["authlog"] += [
                Arrival(e, time.time()) for e in authlog.read_events() if isinstance(e, AuthFailed)
            ]
    finally:
        attack.join(ATTEMPT_TIMEOUT * len(users))
        btmp_stats, authlog_stats = btmp.stats(), authlog.stats()
        btmp.close()
        authlog.close()
    print(
        f"\nrotations done: {rotations['done']} (btmp follower saw {btmp_stats['rotations']}, "
        f"auth.log follower {authlog_stats['rotations']}); btmp events "
        f"{len(arrivals['btmp'])}/{expected}"
    )
    assert rotations["done"] >= 4
    assert btmp_stats["rotations"] == 2 and authlog_stats["rotations"] == 2
    from_btmp = [a.event for a in arrivals["btmp"]]
    pids = {e.pid for e in from_btmp}
    assert len(from_btmp) == expected
    assert len(pids) == len(users)
    per_pid = Counter(e.pid for e in from_btmp)
    assert sorted(per_pid.values()) == sorted([1] * 6 + [2] * 6)  # once each, none twice
    from_log = [a.event for a in arrivals["authlog"] if a.event.pid in pids]
    log_per_pid = Counter(e.pid for e in from_log)
    assert log_per_pid == per_pid  # auth.log: the same attempts, each once
