# Log rotation and journal vacuum under fire (issue 8, item 4), against the product as shipped: a
# real sshd 9.2 (LogLevel VERBOSE) in the server namespace logs to /dev/log -> the machine's
# journald -> a lab rsyslog writing auth.log (guardian.lab.rsyslog), and writes its own btmp (a lab
# directory bind-mounted over its /var/log). Attackers are real clients (sshpass + ssh, a wrong
# password for root: one failure, one btmp record each). While they attack, a rotator works every
# ROTATE_EVERY seconds: auth.log renamed (+ SIGHUP to rsyslog, what logrotate's postrotate does)
# or copied and truncated, btmp rotated by name (a new root:utmp 0660 file takes it; rotate_btmp
# says why not in logrotate's exact steps), `journalctl --rotate`, and `journalctl
# --vacuum-files=1` / `--vacuum-time=1s`. At the end every failure must have been
# counted exactly once: per origin, and across origins.
#
# What tests/test_lab_bans.py already shows: one rename or copytruncate of auth.log, or a rename of
# btmp, between attempts one at a time (each attempt read before the next). Here the rotations run
# on their own clock while attempts arrive from four sources at once, the journal is rotated and
# vacuumed too, and the counts are exact per origin.
#
# Decisions:
# - Per origin: the status document has no per-origin breakdown (the engine's failures_by_origin is
#   not exported), so each origin has a daemon of its own: [ban] sources = ["journal"] in the
#   server namespace (journal lines are only believed from an sshd of the daemon's own namespace),
#   ["btmp"] and ["authlog"] in two observer namespaces of their own (they read the same files; a
#   namespace each keeps their nftables tables apart). Across origins: a fourth daemon with all
#   three sources, beside the journal one in the server namespace (same table, same config, no
#   grants and no bans: it only counts).
# - Exact counts on a shared machine: journald is one per machine and rsyslog writes every sshd
#   line of every lab, so other test runs' failures reach these daemons too. The attack comes from
#   198.51.100.224/28, addresses no other lab uses, and every daemon trusts everything else
#   (0.0.0.0/0 minus that /28, and ::/0): a trusted source's reports only add to failures_seen and
#   failures_trusted. So failures_seen - failures_trusted is exactly this test's reports and
#   failures_counted exactly its attempts, whoever else logs.
# - copytruncate waits until the auth.log daemon has read what was written (the attackers pause):
#   lines written between logrotate's copy and its truncate are lost for every reader (logrotate(8)
#   says so), so no tail of the live file can promise them. Renames happen in the middle of the
#   attack, with lines still unread.
# - Ground truth: attempts whose ssh client saw "Permission denied" (the password was asked and
#   refused); cross-checked against the files themselves (every auth.log copy and every btmp copy
#   is kept under its own name) before the daemons are judged.
# - The vacuum deletes archived journal files of the machine's journal (as
#   tests/test_journal_watcher_lab.py does): on the test machines that is the journald
#   guardian.lab.journald started (volatile storage, PID 1 is not systemd).
from __future__ import annotations

import contextlib
import dataclasses
import grp
import ipaddress
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guardian.control_client import ControlClientError, request
from guardian.lab import Lab
from guardian.lab.guardian_proc import GuardianHandle, start_guardian
from guardian.lab.journald import ensure_journald
from guardian.lab.netns import LabError
from guardian.lab.rsyslog import RsyslogHandle, check_forwarding, ensure_rsyslog
from guardian.lab.sshd import SshdHandle, prepare_var_log, start_sshd
from tests.conftest import require_root, save_artifacts

pytestmark = pytest.mark.lab

PREFIX = "gfld"
HOSTS = ("server", "attacker", "obsb", "obsa")
SERVER = "198.51.100.200"
ATTACK_NET = ipaddress.IPv4Network("198.51.100.224/28")
SOURCES = [f"198.51.100.{n}" for n in range(225, 229)]  # inside ATTACK_NET
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - wrong on purpose
ATTEMPTS_PER_SOURCE = 30  # 120 attempts in all: at maxretry 100 per source, nobody is banned
PAUSE = 0.3  # between one source's attempts (four sources: ~8 attempts/s on this machine)
ATTACK_LIMIT = 60.0  # seconds; the attack stops then whatever it reached
ATTEMPT_TIMEOUT = 20.0
ROTATE_EVERY = 2.0  # seconds between rotation rounds
SYNC_TIMEOUT = 10.0  # copytruncate: the auth.log daemon catches up within this
SETTLE_TIMEOUT = 15.0  # after the attack: every report reaches every daemon within this
RSYSLOG_WAIT = 180.0  # another test run may hold the machine's one forward socket for a while
UTMP = struct.Struct("<hxxi32s4s32s256shhiii16s20x")  # spec/sshd-events.md §5
DENIED = "Permission denied"


def trusted_but_attackers() -> list[str]:
    """Every address except ATTACK_NET: other labs' failures count as trusted, never as ours."""
    everyone = ipaddress.IPv4Network("0.0.0.0/0")
    return [*sorted(str(n) for n in everyone.address_exclude(ATTACK_NET)), "::/0"]


def config_text(sources: list[str]) -> str:
    return (
        "[guard]\n"
        "ports = [2222]\n"  # nothing listens there: sshd on 22 answers everyone
        f"trusted = {json.dumps(trusted_but_attackers())}\n\n"
        "[ban]\n"
        f"sources = {json.dumps(sources)}\n"
        'mode = "normal"\nmaxretry = 100\nfindtime = "10m"\nbantime = "10m"\n'
    )


# -- the lab ---------------------------------------------------------------------------------------


@dataclass
class Daemon:
    name: str
    origins: int  # reports each attempt makes for this daemon (its sources)
    handle: GuardianHandle


@dataclass
class RotLab:
    lab: Lab
    sshd: SshdHandle
    var_log: Path
    rsyslog: RsyslogHandle
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def auth_log(self) -> Path:
        return self.var_log / "auth.log"

    @property
    def btmp(self) -> Path:
        return self.var_log / "btmp"


def _start_rsyslog(auth_log: Path, lab: Lab) -> RsyslogHandle:
    deadline = time.monotonic() + RSYSLOG_WAIT
    while True:
        try:
            return ensure_rsyslog(auth_log, lab=lab)
        except LabError as exc:
            if "another syslog daemon" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def _ip(lab: Lab, host: str, *argv: str) -> None:
    done = lab.run(host, ["ip", *argv], timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def rotlab(request: pytest.FixtureRequest) -> Iterator[RotLab]:
    require_root()
    journald = ensure_journald()
    assert journald.syslog_to_journal, "/dev/log does not reach journald"
    lab = Lab(hosts=HOSTS, prefix=PREFIX)
    rsyslog: RsyslogHandle | None = None
    env: RotLab | None = None
    failed_before = request.session.testsfailed
    try:
        lab.start()
        _ip(lab, "server", "addr", "add", f"{SERVER}/24", "dev", "eth0")
        for source in SOURCES:
            _ip(lab, "attacker", "addr", "add", f"{source}/24", "dev", "eth0")
        # start_guardian passes --btmp and --auth-log in lab.workdir/var_log, whatever the host:
        # the observers in their own namespaces read the very files the server's sshd writes.
        var_log = lab.workdir / "var_log"
        prepare_var_log(var_log)
        rsyslog = _start_rsyslog(var_log / "auth.log", lab)
        check_forwarding(rsyslog)
        sshd = start_sshd(lab, log_to_stderr=False, var_log=var_log)
        env = RotLab(lab, sshd, var_log, rsyslog)
        for name, host, sources, extra in (
            ("journal", "server", ["journal"], ()),
            ("btmp", "obsb", ["btmp"], ("--no-journal",)),
            ("authlog", "obsa", ["authlog"], ("--no-journal",)),
            ("all", "server", ["journal", "btmp", "authlog"], ()),
        ):
            own: tuple[str, ...] = ()
            if name == "all":  # the second daemon in the server: its own socket and state
                socket_path = lab.workdir / "control-all.sock"
                own = ("--socket", str(socket_path), "--state", str(lab.workdir / "state-all.db"))
            handle = start_guardian(
                lab, config_text(sources), host=host, extra_args=(*extra, *own), ready_timeout=20
            )
            if name == "all":  # argparse takes the last --socket: this one
                handle = dataclasses.replace(handle, socket_path=socket_path)
            env.daemons.append(Daemon(name, len(sources), handle))
        yield env
    finally:
        if request.session.testsfailed != failed_before:
            print(f"lab artifacts kept in {save_artifacts(lab, 'lab_rotation_vacuum')}")
        if env is not None:
            for daemon in env.daemons:
                daemon.handle.kill()
        if rsyslog is not None:
            rsyslog.stop()
        lab.close()


# -- observing -------------------------------------------------------------------------------------


def counters(handle: GuardianHandle) -> dict[str, int]:
    reply = request(str(handle.socket_path), {"cmd": "snapshot"}, timeout=10.0)
    found: dict[str, int] = reply["snapshot"]["counters"]
    return found


def ours(have: dict[str, int]) -> int:
    """Reports of the attack's sources: everything else is trusted (see the header)."""
    return have.get("failures_seen", 0) - have.get("failures_trusted", 0)


def wait_reports(handle: GuardianHandle, want: int, timeout: float) -> dict[str, int]:
    """Poll (bounded) until the daemon has `want` reports of ours; then a moment more, so that
    anything counted twice arrives too. The caller asserts equality."""
    deadline = time.monotonic() + timeout
    have: dict[str, int] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(ControlClientError):
            have = counters(handle)
        if ours(have) >= want:
            time.sleep(0.5)
            return counters(handle)
        time.sleep(0.05)
    return have


def addresses_in_btmp(data: bytes) -> Counter[str]:
    found: Counter[str] = Counter()
    for offset in range(0, len(data) - len(data) % UTMP.size, UTMP.size):
        host = UTMP.unpack_from(data, offset)[5].split(b"\0", 1)[0].decode(errors="replace")
        found[host] += 1
    return found


def files_truth(env: RotLab) -> tuple[Counter[str], Counter[str]]:
    """Failures per attack source in every auth.log copy and every btmp copy (the files)."""
    lines: Counter[str] = Counter()
    for path in env.var_log.glob("auth.log*"):
        for line in path.read_text(errors="replace").splitlines():
            if "Failed password for root from " in line:
                source = line.split(" from ", 1)[1].split()[0]
                if source in SOURCES:
                    lines[source] += 1
    records: Counter[str] = Counter()
    for path in env.var_log.glob("btmp*"):
        for host, n in addresses_in_btmp(path.read_bytes()).items():
            if host in SOURCES:
                records[host] += n
    return lines, records


# -- the attack and the rotator --------------------------------------------------------------------


@dataclass
class Attack:
    gate: threading.Event = field(default_factory=threading.Event)  # set: attempts may start
    in_flight: int = 0
    denied: Counter[str] = field(default_factory=Counter)  # attempts refused by sshd, per source
    other: list[str] = field(default_factory=list)  # attempts that ended any other way
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        with self.lock:
            return sum(self.denied.values())

    def enter(self) -> bool:
        """May an attempt start now? (Checked and counted in one step: quiet() cannot miss it.)"""
        with self.lock:
            if self.gate.is_set():
                self.in_flight += 1
                return True
            return False

    def quiet(self, timeout: float) -> bool:
        """Close the gate and wait (bounded) until no attempt is in flight."""
        with self.lock:
            self.gate.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.in_flight == 0:
                    return True
            time.sleep(0.02)
        return False


def attempt(env: RotLab, source: str) -> str:
    argv = ["sshpass", "-e", "ssh", "-F", "/dev/null", "-b", source]
    for option in (
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "PreferredAuthentications=password",
        "PubkeyAuthentication=no",
        "NumberOfPasswordPrompts=1",
        "ConnectTimeout=5",
        "LogLevel=ERROR",
    ):
        argv += ["-o", option]
    argv += ["-p", str(env.sshd.port), "-l", "root", SERVER, "true"]
    run_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    run_env["SSHPASS"] = WRONG_PASSWORD
    try:
        done = env.lab.run("attacker", argv, env=run_env, timeout=ATTEMPT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "timeout"
    return "denied" if done.returncode != 0 and DENIED in done.stderr else done.stderr.strip()


def attacker(env: RotLab, attack: Attack, source: str, deadline: float) -> None:
    for _ in range(ATTEMPTS_PER_SOURCE):
        while not attack.enter():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        outcome = None  # past the deadline (or the attempt raised): nothing to record
        try:
            if time.monotonic() <= deadline:
                outcome = attempt(env, source)
        finally:
            with attack.lock:
                attack.in_flight -= 1
                if outcome == "denied":
                    attack.denied[source] += 1
                elif outcome is not None:
                    attack.other.append(f"{source}: {outcome}")
        time.sleep(PAUSE * random.uniform(0.5, 1.5))


def journalctl(*args: str) -> None:
    done = subprocess.run(
        ["journalctl", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"journalctl {' '.join(args)}: {done.stderr}"


def rotate_authlog_rename(env: RotLab, serial: int) -> None:
    os.replace(env.auth_log, env.auth_log.with_name(f"auth.log.{serial}"))
    env.rsyslog.proc.send_signal(signal.SIGHUP)  # what logrotate's postrotate does


def rotate_authlog_copytruncate(env: RotLab, attack: Attack, serial: int, base: int) -> str:
    """Pause the attack, let the auth.log daemon read everything, copy and truncate, resume.
    `base`: that daemon's reports of ours before the attack."""
    assert attack.quiet(ATTEMPT_TIMEOUT), "attempts still in flight"
    try:
        authlog = next(d for d in env.daemons if d.name == "authlog")
        reached = ours(wait_reports(authlog.handle, base + attack.done, SYNC_TIMEOUT)) - base
        shutil.copyfile(env.auth_log, env.auth_log.with_name(f"auth.log.{serial}"))
        os.truncate(env.auth_log, 0)
    finally:
        attack.gate.set()
    return f"copytruncate at {attack.done} attempts (the auth.log daemon had {reached})"


def rotate_btmp(env: RotLab, serial: int) -> None:
    """A rename rotation with no moment when btmp is missing. sshd opens btmp without O_CREAT
    (loginrec.c, record_failed_login) and writes nothing if it is not there, so a failure that
    lands between logrotate's rename and its create is in no file at all: lost for every reader,
    like copytruncate's window, and the attempts are no longer the files' truth (most likely what
    cost one btmp record in session 8's CI run; a 0.5 s gap loses ~20 of 120). So the new file is
    made first under another name, the old one gets its rotated name by a hard link, and the new
    one takes the name in one rename(2). To a follower it is what logrotate leaves: the name on a
    new empty inode, the old inode as btmp.N, and sshd still appending to the old one if it
    opened it before the swap."""
    staged = env.btmp.with_name("btmp.staged")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.chown(staged, 0, grp.getgrnam("utmp").gr_gid)  # logrotate: create 0660 root utmp
    os.chmod(staged, 0o660)
    os.link(env.btmp, env.btmp.with_name(f"btmp.{serial}"))
    os.replace(staged, env.btmp)


def rotator(env: RotLab, attack: Attack, stop: threading.Event, log: list[str], base: int) -> None:
    """A rotation round every ROTATE_EVERY seconds until `stop` (the attack's end)."""
    serial = 0
    while not stop.wait(ROTATE_EVERY):
        serial += 1
        if serial % 4 == 2:
            log.append(rotate_authlog_copytruncate(env, attack, serial, base))
        elif serial % 2 == 1:
            rotate_authlog_rename(env, serial)
            log.append(f"auth.log renamed at {attack.done} attempts")
        rotate_btmp(env, serial)
        journalctl("--rotate")
        done = f"round {serial}: btmp renamed, journal rotated"
        if serial % 2 == 0:
            vacuum = "--vacuum-files=1" if serial % 4 == 0 else "--vacuum-time=1s"
            journalctl(vacuum)
            done += f" and vacuumed ({vacuum})"
        log.append(f"{done}, at {attack.done} attempts")


# -- the test --------------------------------------------------------------------------------------


def test_every_failure_counted_once_per_origin_while_logs_rotate_and_the_journal_is_vacuumed(
    rotlab: RotLab,
) -> None:
    env = rotlab
    before = {d.name: counters(d.handle) for d in env.daemons}
    attack = Attack()
    attack.gate.set()
    stop = threading.Event()
    log: list[str] = []
    deadline = time.monotonic() + ATTACK_LIMIT
    errors: list[BaseException] = []

    def guarded(target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported by the test below, not lost in a thread
            errors.append(exc)
            attack.gate.set()

    started = time.monotonic()
    threads = [
        threading.Thread(target=guarded, args=(attacker, env, attack, source, deadline))
        for source in SOURCES
    ]
    base = ours(before["authlog"])
    rotation = threading.Thread(target=guarded, args=(rotator, env, attack, stop, log, base))
    for thread in threads:
        thread.start()
    rotation.start()
    for thread in threads:
        thread.join(ATTACK_LIMIT + ATTEMPT_TIMEOUT + 5)
    stop.set()
    rotation.join(SYNC_TIMEOUT + ATTEMPT_TIMEOUT + 30)
    took = time.monotonic() - started
    assert not errors, errors
    assert not any(t.is_alive() for t in [*threads, rotation])
    attempts = attack.done
    rounds = sum(1 for line in log if line.startswith("round "))
    print(
        f"\n{attempts} attempts in {took:.1f} s, {rounds} rotation rounds:\n  " + "\n  ".join(log)
    )
    assert not attack.other, f"attempts that were not refused by sshd: {attack.other}"
    assert attempts == ATTEMPTS_PER_SOURCE * len(SOURCES), attack.denied
    # Round 2 copies and truncates auth.log and vacuums by time, round 4 vacuums by files.
    assert rounds >= 4, "too few rotations during the attack to mean anything"
    assert any(line.startswith("copytruncate") for line in log)

    # The files themselves hold every attempt once: the premise the daemons are judged by.
    lines, records = files_truth(env)
    assert lines == attack.denied, f"auth.log copies: {lines} vs attempts {attack.denied}"
    assert records == attack.denied, f"btmp copies: {records} vs attempts {attack.denied}"

    results = {}
    for daemon in env.daemons:
        want = attempts * daemon.origins
        have = wait_reports(daemon.handle, ours(before[daemon.name]) + want, SETTLE_TIMEOUT)
        seen = ours(have) - ours(before[daemon.name])
        counted = have.get("failures_counted", 0) - before[daemon.name].get("failures_counted", 0)
        results[daemon.name] = (seen, counted)
    print(f"(reports, attempts counted) per daemon: {results}")
    for name in ("journal", "btmp", "authlog"):
        assert results[name] == (attempts, attempts), (name, results, log)
    assert results["all"] == (3 * attempts, attempts), results
    for daemon in env.daemons:
        assert daemon.handle.returncode is None, daemon.handle.log_text()[-2000:]
