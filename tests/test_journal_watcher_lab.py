# Lab tests of the journal watcher against a real systemd-journald (started by guardian.lab.journald
# when none runs) and a real sshd 9.2 in a lab namespace logging through /dev/log: key logins and
# logouts read back with their real fields, latency with and without the fast timer, resuming from
# a saved cursor, start-up history, identifier matching, rotation/vacuum and a journald restart.
#
# The journal is host-global and other test runs may log sshd lines into it at the same time (their
# labs use the same documentation addresses): every assertion picks its records by the client port
# that the session itself reported ($SSH_CLIENT), or by a token unique to this run.
from __future__ import annotations

import os
import secrets
import select
import selectors
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from systemd import journal

from guardian.lab import Lab, SshdHandle, ssh_argv, start_sshd
from guardian.lab.journald import JournaldHandle, ensure_journald, restart_journald
from guardian.watchers import WatcherError
from guardian.watchers.journal import JournalRecord, JournalWatcher
from tests.conftest import REPO, require_root

pytestmark = pytest.mark.lab

TRIALS = 5  # latency trials per mode
FAST_LAG_MAX = 0.25  # seconds, any single fast-mode read (generous: 2 shared cores)
FAST_LAG_MEDIAN_MAX = 0.06
FD_LAG_MAX = 2.0  # the fd alone must still deliver (an idle daemon relies on it)


@dataclass(frozen=True)
class Seen:
    record: JournalRecord
    read_wall: float  # time.time() when read_records returned it
    read_mono: float


@pytest.fixture(scope="module")
def journald() -> JournaldHandle:
    require_root()
    handle = ensure_journald()
    assert handle.syslog_to_journal, "/dev/log does not reach journald: sshd's lines would be lost"
    return handle


@pytest.fixture(scope="module")
def jlab(journald: JournaldHandle) -> Iterator[tuple[Lab, SshdHandle]]:
    with Lab(hosts=("server", "client"), prefix="gj9") as lab:
        sshd = start_sshd(lab, log_to_stderr=False)
        yield lab, sshd


# -- helpers -------------------------------------------------------------------------------------


class Pump:
    """A miniature of the daemon's loop: wait on the watcher's fd or its next_poll deadline."""

    def __init__(self, watcher: JournalWatcher) -> None:
        self.watcher = watcher
        self.seen: list[Seen] = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(watcher.fileno(), selectors.EVENT_READ)
        self.extra: dict[int, float | None] = {}  # pidfd -> time it became readable

    def watch_exit(self, pid: int) -> int:
        fd = os.pidfd_open(pid)
        self.selector.register(fd, selectors.EVENT_READ)
        self.extra[fd] = None
        return fd

    def step(self, max_wait: float = 0.5) -> None:
        now = time.monotonic()
        due = self.watcher.next_poll(now)
        timeout = max_wait if due is None else min(max_wait, max(0.0, due - now))
        ready = self.selector.select(timeout)
        now = time.monotonic()
        journal_ready = False
        for key, _ in ready:
            if key.fd in self.extra:
                if self.extra[key.fd] is None:
                    self.extra[key.fd] = now
                self.selector.unregister(key.fd)
            else:
                journal_ready = True
        # Read only when the fd woke us or the timer is due, exactly as the daemon would: a read
        # on every loop turn would hide the fd's lag in the fd-only measurements.
        if journal_ready or (due is not None and now >= due):
            records = self.watcher.read_records(now=now)
            wall = time.time()
            self.seen.extend(Seen(r, wall, now) for r in records)

    def until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            self.step(max_wait=min(0.5, max(0.0, deadline - time.monotonic())))
        return done()

    def messages(self) -> list[str]:
        return [s.record.message for s in self.seen]

    def close(self) -> None:
        for fd in list(self.extra):
            os.close(fd)
        self.selector.close()


def session_argv(sshd: SshdHandle, lab: Lab, command: str) -> list[str]:
    # $SSH_CLIENT is "client-address client-port server-port": the port names this session's lines.
    # One argument: ssh joins its command words and the remote login shell parses the result.
    return ssh_argv(sshd, lab.addr("server"), (f'echo "$SSH_CLIENT"; {command}',))


def client_port(line: str) -> int:
    fields = line.split()
    assert len(fields) == 3, f"unexpected $SSH_CLIENT: {line!r}"
    return int(fields[1])


def accepted(lab: Lab, port: int) -> str:
    return f"Accepted publickey for root from {lab.addr('client')} port {port} ssh2: ED25519 "


def disconnected(lab: Lab, port: int) -> str:
    return f"Disconnected from user root {lab.addr('client')} port {port}"


def login(lab: Lab, sshd: SshdHandle) -> int:
    """One key login that runs a trivial command; returns its client port."""
    done = lab.run("client", session_argv(sshd, lab, "true"), timeout=20)
    assert done.returncode == 0, done.stderr
    return client_port(done.stdout.strip())


def find(seen: list[Seen], predicate: Callable[[str], bool]) -> list[Seen]:
    return [s for s in seen if predicate(s.record.message)]


def log_line(identifier: str, message: str, *extra: str) -> int:
    """Send one syslog line with util-linux logger; returns logger's PID."""
    proc = subprocess.Popen(["logger", *extra, "-t", identifier, "--", message])
    assert proc.wait(timeout=10) == 0
    return proc.pid


def cursor_fields(cursor: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in cursor.split(";"))


# -- tests ---------------------------------------------------------------------------------------


def test_journald_is_running_and_syslog_reaches_it(journald: JournaldHandle) -> None:
    again = ensure_journald()
    assert again.pid == journald.pid or not journald.alive()  # idempotent: reused, not restarted
    assert again.started is False
    token = f"gj9-{secrets.token_hex(4)}"
    subprocess.run(["systemd-cat", "-t", "gj9-cat"], input=token, text=True, check=True, timeout=10)
    log_line("gj9-logger", token)
    deadline = time.monotonic() + 5
    found: list[str] = []
    while time.monotonic() < deadline and len(found) < 2:
        out = subprocess.run(
            ["journalctl", "--no-pager", "-o", "cat", "-t", "gj9-cat", "-t", "gj9-logger"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        found = [line for line in out.splitlines() if line == token]
        time.sleep(0.05)
    assert len(found) == 2, "systemd-cat (native) and logger (/dev/log) lines must both arrive"


def test_key_login_and_logout_are_read_with_real_fields(jlab: tuple[Lab, SshdHandle]) -> None:
    lab, sshd = jlab
    with JournalWatcher(own_netns_only=False) as watcher:
        pump = Pump(watcher)
        try:
            port = login(lab, sshd)
            watcher.note_activity(time.monotonic())
            assert pump.until(lambda: bool(find(pump.seen, disconnected(lab, port).__eq__)), 5.0)
        finally:
            pump.close()
    mine = [s.record for s in pump.seen if f" port {port}" in s.record.message]
    print(f"\nsshd 9.2 lines for client port {port}:")
    for record in mine:
        print(f"  {record.identifier}[{record.pid}] {record.message}")
    acc = [r for r in mine if r.message.startswith(accepted(lab, port))]
    bye = [r for r in mine if r.message == disconnected(lab, port)]
    assert len(acc) == 1 and len(bye) == 1
    assert acc[0].identifier == "sshd" and acc[0].pid > 0
    assert acc[0].realtime <= bye[0].realtime
    assert abs(acc[0].realtime - time.time()) < 60
    # The journal's own fields for the Accepted line, read independently of the watcher.
    reader = journal.Reader()
    try:
        reader.seek_cursor(acc[0].cursor)
        entry = reader.get_next()
    finally:
        reader.close()
    assert entry["__CURSOR"] == acc[0].cursor
    assert entry["SYSLOG_IDENTIFIER"] == "sshd"
    assert entry["_TRANSPORT"] == "syslog"
    assert entry["_COMM"] == "sshd"
    assert entry["_EXE"] == "/usr/sbin/sshd"
    assert entry["SYSLOG_FACILITY"] == 4  # auth
    assert entry["PRIORITY"] == 6  # info
    assert entry["SYSLOG_PID"] == acc[0].pid
    print(f"  fields: _PID={entry['_PID']} SYSLOG_PID={entry['SYSLOG_PID']} _CMDLINE=", end="")
    print(f"{entry.get('_CMDLINE')!r}")


def _latency_trial(
    pump: Pump, lab: Lab, sshd: SshdHandle, fast: bool
) -> tuple[float, float, float]:
    """(journal-to-read lag of Accepted, of Disconnected, ssh-exit-to-read of Disconnected)."""
    time.sleep(0.6)  # let any pending change notification pass: start idle
    pump.step(max_wait=0.0)
    pump.seen.clear()
    if fast:
        # What the daemon does when conntrack sees a connection to port 22 open.
        pump.watcher.note_activity(time.monotonic())
    proc = lab.popen("client", session_argv(sshd, lab, "true"), stdout=subprocess.PIPE)
    pidfd = pump.watch_exit(proc.pid)
    assert pump.until(lambda: pump.extra[pidfd] is not None, 20.0)
    assert proc.wait(timeout=5) == 0
    assert proc.stdout is not None
    port = client_port(proc.stdout.read().decode().strip())
    proc.stdout.close()
    exited = pump.extra.pop(pidfd)
    os.close(pidfd)
    assert exited is not None
    want = disconnected(lab, port)
    assert pump.until(lambda: bool(find(pump.seen, want.__eq__)), 5.0)
    acc = find(pump.seen, lambda m: m.startswith(accepted(lab, port)))[0]
    bye = find(pump.seen, want.__eq__)[0]
    return (
        acc.read_wall - acc.record.realtime,
        bye.read_wall - bye.record.realtime,
        bye.read_mono - exited,
    )


def _latency_trials(lab: Lab, sshd: SshdHandle, fast: bool) -> list[tuple[float, float, float]]:
    # active_for=0: the timer never runs, so every read is an fd wake-up.
    with JournalWatcher(active_for=10.0 if fast else 0.0, own_netns_only=False) as watcher:
        pump = Pump(watcher)
        try:
            return [_latency_trial(pump, lab, sshd, fast) for _ in range(TRIALS)]
        finally:
            pump.close()


def test_latency_fast_timer_versus_fd_only(jlab: tuple[Lab, SshdHandle]) -> None:
    lab, sshd = jlab
    fast = _latency_trials(lab, sshd, fast=True)
    fd_only = _latency_trials(lab, sshd, fast=False)

    def ms(values: list[float]) -> str:
        return ", ".join(f"{v * 1000:.1f}" for v in values)

    print()
    for name, rows in (("fast timer (20 ms, after activity)", fast), ("fd only", fd_only)):
        acc, bye, exit_to_read = (list(col) for col in zip(*rows, strict=True))
        for label, values in (("Accepted", acc), ("Disconnected", bye)):
            median = statistics.median(values) * 1e3
            print(f"{name}: journal->read {label} ms [{ms(values)}] median {median:.1f}")
        print(f"{name}: ssh exit->read Disconnected ms [{ms(exit_to_read)}]")
    fast_lags = [lag for row in fast for lag in row[:2]]
    fd_lags = [lag for row in fd_only for lag in row[:2]]
    assert max(fast_lags) <= FAST_LAG_MAX, fast_lags
    assert statistics.median(fast_lags) <= FAST_LAG_MEDIAN_MAX, fast_lags
    assert max(fd_lags) <= FD_LAG_MAX, fd_lags
    assert min(fast_lags + fd_lags) >= 0.0  # read after journald received it: clocks agree


def test_resume_from_saved_cursor_reads_each_record_once(jlab: tuple[Lab, SshdHandle]) -> None:
    lab, sshd = jlab
    with JournalWatcher(own_netns_only=False) as first:
        pump = Pump(first)
        try:
            first.note_activity(time.monotonic())
            port1 = login(lab, sshd)
            assert pump.until(lambda: bool(find(pump.seen, disconnected(lab, port1).__eq__)), 5)
            # The daemon stops here; it had saved the cursor of session 1's Accepted line.
            saved = find(pump.seen, lambda m: m.startswith(accepted(lab, port1)))[0].record
            port2 = login(lab, sshd)  # logged while "the daemon is down" (first keeps reading)
            assert pump.until(lambda: bool(find(pump.seen, disconnected(lab, port2).__eq__)), 5)
        finally:
            pump.close()
    reference = [s.record for s in pump.seen]
    cut = reference.index(saved) + 1
    before, after = reference[:cut], reference[cut:]

    with JournalWatcher(own_netns_only=False, cursor=saved.cursor) as second:
        assert second.last_cursor == saved.cursor
        resumed: list[JournalRecord] = []
        for _ in range(100):  # bounded: the backlog is small
            batch = second.read_records(max_records=3)  # small slices exercise more_pending
            resumed.extend(batch)
            if len(batch) == 3:
                # A full slice: the daemon is told to come back at once, not to wait on the fd.
                assert second.more_pending
                assert second.next_poll(123.0) == 123.0
            if not batch:
                break
        assert second.stats()["resumed"] == 1 and second.stats()["resume_gap"] == 0
        last = second.last_cursor
    cursors = [r.cursor for r in resumed]
    assert len(cursors) == len(set(cursors)), "a record was read twice"
    assert cursors[: len(after)] == [r.cursor for r in after]
    assert not {r.cursor for r in before} & set(cursors), "a record before the cursor came back"
    assert any(r.message == disconnected(lab, port2) for r in resumed)
    assert last == resumed[-1].cursor

    # Resuming from the last cursor again returns nothing already seen.
    with JournalWatcher(own_netns_only=False, cursor=last) as third:
        again = third.read_records()
    assert not {r.cursor for r in again} & set(cursors + [r.cursor for r in before])


def test_resume_when_the_saved_entry_is_gone_keeps_the_next_one(
    jlab: tuple[Lab, SshdHandle],
) -> None:
    lab, sshd = jlab
    with JournalWatcher(own_netns_only=False) as watcher:
        pump = Pump(watcher)
        try:
            watcher.note_activity(time.monotonic())
            port = login(lab, sshd)
            assert pump.until(lambda: bool(find(pump.seen, disconnected(lab, port).__eq__)), 5)
        finally:
            pump.close()
    records = [s.record for s in pump.seen]
    index = next(i for i, r in enumerate(records) if r.message.startswith(accepted(lab, port)))
    here, following = records[index], records[index + 1]
    t_here = int(cursor_fields(here.cursor)["t"], 16)
    t_next = int(cursor_fields(following.cursor)["t"], 16)
    assert t_next - t_here >= 2, "need two distinct microseconds to aim between the entries"
    # A cursor that names no entry (as after a vacuum): a position between the two records.
    boot = cursor_fields(here.cursor)["b"]
    ghost = f"b={boot};t={(t_here + t_next) // 2:x}"
    with JournalWatcher(own_netns_only=False, cursor=ghost) as resumed:
        got = resumed.read_records()
        assert resumed.stats()["resume_gap"] == 1
    assert got[0].cursor == following.cursor  # kept, not skipped
    assert here.cursor not in {r.cursor for r in got}


def test_history_finds_accepted_line_of_a_session_older_than_the_watcher(
    jlab: tuple[Lab, SshdHandle],
) -> None:
    lab, sshd = jlab
    since = time.time() - 1
    proc = lab.popen("client", session_argv(sshd, lab, "sleep 30"), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 15)
        assert readable, "the long session did not start"
        port = client_port(proc.stdout.readline().decode().strip())
        want = accepted(lab, port)
        # journald handles sshd's datagram asynchronously: reopen until the line is stored.
        history: list[JournalRecord] = []
        for _ in range(50):
            with JournalWatcher(own_netns_only=False) as watcher:
                history = watcher.history(since)
                if any(r.message.startswith(want) for r in history):
                    live = watcher.read_records()
                    newest_only = watcher.history(since, max_records=1)
                    none_since = watcher.history(time.time() + 60)
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"history never showed {want!r}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    hit = [r for r in history if r.message.startswith(want)]
    assert len(hit) == 1
    assert all(r.realtime >= since for r in history)
    assert [r.realtime for r in history] == sorted(r.realtime for r in history)
    assert len({r.cursor for r in history}) == len(history)
    # history() ends where live reading starts: no record in both.
    assert not {r.cursor for r in live} & {r.cursor for r in history}
    assert newest_only == history[-1:]
    assert none_since == []


def test_only_the_given_identifiers_are_read_with_their_pid(journald: JournaldHandle) -> None:
    token = secrets.token_hex(4)
    with JournalWatcher(trusted_commands=None, identifiers=("gj9-a", "gj9-b")) as watcher:
        pump = Pump(watcher)
        try:
            watcher.note_activity(time.monotonic())
            pid_a = log_line("gj9-a", f"a {token}")
            log_line("gj9-c", f"c {token}")
            log_line("gj9-ab", f"ab {token}")
            # SYSLOG_PID is the sender's word; journald's own _PID wins (a forger could lie).
            pid_b = log_line("gj9-b", f"b {token}", "--id=4242")
            assert pump.until(lambda: f"b {token}" in pump.messages(), 5)
            pump.step(max_wait=0.1)
        finally:
            pump.close()
    mine = [s.record for s in pump.seen if s.record.message.endswith(token)]
    assert [(r.identifier, r.message) for r in mine] == [
        ("gj9-a", f"a {token}"),
        ("gj9-b", f"b {token}"),
    ]
    assert mine[0].pid == pid_a  # logger without --id sends no SYSLOG_PID: _PID is used
    assert mine[1].pid == pid_b


def test_reopening_resumes_after_the_last_record(journald: JournaldHandle) -> None:
    token = secrets.token_hex(4)
    watcher = JournalWatcher(trusted_commands=None, identifiers=("gj9-re",))
    watcher.open()
    try:
        pump = Pump(watcher)
        watcher.note_activity(time.monotonic())
        log_line("gj9-re", f"1 {token}")
        assert pump.until(lambda: f"1 {token}" in pump.messages(), 5)
        pump.close()
        watcher.close()
        log_line("gj9-re", f"2 {token}")  # while closed
        watcher.open()
        pump = Pump(watcher)
        watcher.note_activity(time.monotonic())
        log_line("gj9-re", f"3 {token}")
        assert pump.until(lambda: f"3 {token}" in pump.messages(), 5)
        pump.close()
    finally:
        watcher.close()
    assert [m for m in pump.messages() if m.endswith(token)] == [f"2 {token}", f"3 {token}"]


def test_bad_cursor_and_no_permission_are_clear_errors(journald: JournaldHandle) -> None:
    with pytest.raises(WatcherError, match="bad saved cursor"):
        JournalWatcher(own_netns_only=False, cursor="not-a-cursor").open()
    script = (
        "from guardian.watchers.journal import JournalWatcher\n"
        "from guardian.watchers import WatcherError\n"
        "try:\n    JournalWatcher().open()\nexcept WatcherError as e:\n    print(e)\n"
    )
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")},
    )
    assert "needs root or the systemd-journal group" in done.stdout, done.stdout + done.stderr


def test_fd_is_quiet_after_a_read(journald: JournaldHandle) -> None:
    # process() in read_records must consume the change notification, or an idle daemon would
    # spin on a readable fd. Another writer can make it readable again at any moment on a shared
    # host, so a quiet fd in any of a few tries passes; a spinning one never is.
    token = secrets.token_hex(4)
    with JournalWatcher(trusted_commands=None, identifiers=("gj9-q",), active_for=0.0) as watcher:
        log_line("gj9-q", token)
        quiet = False
        got: list[str] = []
        for _ in range(5):
            readable, _, _ = select.select([watcher.fileno()], [], [], 2.0)
            assert readable, "the fd never woke for a new line"
            got += [r.message for r in watcher.read_records()]
            assert watcher.next_poll(time.monotonic()) is None  # idle: the fd alone
            if not select.select([watcher.fileno()], [], [], 0.0)[0]:
                quiet = True
                break
    assert token in got
    assert quiet, "the fd stayed readable after read_records(): process() did not consume it"


def test_a_journal_directory_can_be_read_by_path(journald: JournaldHandle, tmp_path: Path) -> None:
    machine_dirs = sorted(Path("/run/log/journal").iterdir())
    assert machine_dirs, "journald keeps no runtime journal"
    log_line("gj9-path", "copied")
    time.sleep(0.3)
    for source in machine_dirs[0].glob("*.journal"):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    with JournalWatcher(
        trusted_commands=None, identifiers=("gj9-path",), path=str(tmp_path)
    ) as watcher:
        history = watcher.history(time.time() - 600, max_records=5)
        assert watcher.read_records() == []  # a copy never grows
    assert history and history[-1].message == "copied"


def _journalctl(*args: str) -> None:
    subprocess.run(["journalctl", *args], check=True, capture_output=True, timeout=30)


def test_reading_continues_across_rotation_and_vacuum(journald: JournaldHandle) -> None:
    token = secrets.token_hex(4)
    with JournalWatcher(trusted_commands=None, identifiers=("gj9-rot",)) as watcher:
        pump = Pump(watcher)
        try:
            watcher.note_activity(time.monotonic())
            log_line("gj9-rot", f"1 {token}")
            assert pump.until(lambda: f"1 {token}" in pump.messages(), 5)
            _journalctl("--rotate")
            log_line("gj9-rot", f"2 {token}")
            assert pump.until(lambda: f"2 {token}" in pump.messages(), 5)
            # Archive the file the reader stands in, then delete every archived file but the
            # newest: the entries 1 and 2 are gone from disk while the reader is positioned there.
            _journalctl("--rotate")
            _journalctl("--rotate")
            _journalctl("--vacuum-files=1")
            for n in (3, 4):
                log_line("gj9-rot", f"{n} {token}")
            assert pump.until(lambda: f"4 {token}" in pump.messages(), 5)
            invalidations = watcher.stats()["invalidations"]
        finally:
            pump.close()
    mine = [m for m in pump.messages() if m.endswith(token)]
    assert mine == [f"{n} {token}" for n in (1, 2, 3, 4)]
    print(f"\nrotation/vacuum: invalidations seen by process(): {invalidations}")


def test_reading_continues_across_a_journald_restart(
    jlab: tuple[Lab, SshdHandle], journald: JournaldHandle
) -> None:
    lab, sshd = jlab
    token = secrets.token_hex(4)
    with JournalWatcher(
        identifiers=("gj9-rs", "sshd", "sshd-session"), own_netns_only=False, trusted_commands=None
    ) as watcher:
        pump = Pump(watcher)
        try:
            watcher.note_activity(time.monotonic())
            log_line("gj9-rs", f"before {token}")
            assert pump.until(lambda: f"before {token}" in pump.messages(), 5)
            fresh = restart_journald(ensure_journald())
            assert fresh.started and fresh.syslog_to_journal
            watcher.note_activity(time.monotonic())
            log_line("gj9-rs", f"after {token}")
            port = login(lab, sshd)  # sshd reconnects to the new /dev/log by itself
            assert pump.until(lambda: f"after {token}" in pump.messages(), 5)
            assert pump.until(lambda: bool(find(pump.seen, disconnected(lab, port).__eq__)), 5)
        finally:
            pump.close()
    mine = [m for m in pump.messages() if m.endswith(token)]
    assert mine == [f"before {token}", f"after {token}"]
    print(f"\njournald restarted: pid {fresh.pid}; reading went on")


def test_lines_of_a_process_in_another_network_namespace_are_dropped(
    journald: JournaldHandle,
) -> None:
    """One journal per machine, one sshd (and one guardian) per network namespace: a line whose
    process lives in another namespace is not ours. Processes still alive are asked; the shell
    below stays alive (sleep) so its SYSLOG_PID can be checked."""
    ensure_journald()  # a test before this one may have restarted it: wait until it answers
    token = secrets.token_hex(4)
    namespace = f"gj9-nsf{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    # systemd-cat connects a stream to journald, then execs the shell: the entry's _PID is that
    # shell, which stays alive (sleep) so its namespace can be looked up.
    script = 'echo "$1"; sleep 3'
    try:
        with JournalWatcher(trusted_commands=None, identifiers=("gj9-ns",)) as watcher:
            pump = Pump(watcher)
            try:
                watcher.note_activity(time.monotonic())
                cat = ["systemd-cat", "-t", "gj9-ns", "sh", "-c", script, "sh"]
                foreign = subprocess.Popen(["ip", "netns", "exec", namespace, *cat, f"far {token}"])
                own = subprocess.Popen([*cat, f"near {token}"])
                ok = pump.until(lambda: f"near {token}" in pump.messages(), 5)
                assert ok, (pump.messages()[-5:], watcher.stats(), own.poll(), foreign.poll())
                assert pump.until(lambda: watcher.stats()["foreign_netns"] >= 1, 5)
                dropped = watcher.stats()["foreign_netns"]
            finally:
                pump.close()
            assert foreign.wait(timeout=10) == 0
            assert own.wait(timeout=10) == 0
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)
    messages = pump.messages()
    assert f"near {token}" in messages
    assert f"far {token}" not in messages
    assert dropped >= 1


def held_logger(identifier: str, *user: str) -> subprocess.Popen[str]:
    """A util-linux logger that sends each line written to its stdin and stays alive until stdin
    closes. journald reads _COMM from /proc/PID after the datagram arrives: a logger that already
    exited leaves no _COMM, and a root line without _COMM is kept as sshd's (see
    _sent_by_root_sshd). Holding the sender alive makes journald record who really sent it."""
    argv = [*user, "logger", "-t", identifier]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sender", ["root", "nobody"])
def test_forged_sshd_lines_are_dropped(journald: JournaldHandle, sender: str) -> None:
    """`logger -t sshd` sets SYSLOG_IDENTIFIER=sshd, but journald records who really sent it
    (_COMM=logger, and _UID from the kernel): such a line is not sshd's and must never open or
    close a session, whether root or another user forged it."""
    token = secrets.token_hex(4)
    user = ["runuser", "-u", "nobody", "--"] if sender == "nobody" else []
    with JournalWatcher(own_netns_only=False) as watcher:
        pump = Pump(watcher)
        forger = held_logger("sshd", *user)
        try:
            assert forger.stdin is not None
            watcher.note_activity(time.monotonic())
            forger.stdin.write(f"Accepted publickey for root from 192.0.2.99 port 4{token[:4]}\n")
            forger.stdin.flush()
            judged = pump.until(lambda: watcher.stats()["untrusted"] >= 1, 5)
            assert judged, (watcher.stats(), pump.messages()[-3:], forger.poll())
        finally:
            if forger.stdin is not None:
                forger.stdin.close()
            assert forger.wait(timeout=10) == 0
            pump.close()
    assert not [m for m in pump.messages() if token[:4] in m]
