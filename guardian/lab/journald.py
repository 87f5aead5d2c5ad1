# A real systemd-journald for the lab, on machines whose PID 1 is not systemd (the test machines and
# CI). journald is host-global: one instance serves every namespace, because sshd in a lab namespace
# reaches it through the file-system sockets /dev/log and /run/systemd/journal/*, which network
# namespaces do not separate. So the lab shares one journald per machine instead of one per lab.
#
# Decisions (spec/platform.md "Journald without systemd as PID 1"):
# - ensure_journald() is idempotent and safe to call from concurrent processes (a lock file): a
#   journald whose socket answers is reused; otherwise one is started and *left running* when the
#   process exits. Stopping it at exit would pull it from under another test process that reused
#   it, and a running journald is what a real machine has anyway. JournaldHandle.stop() exists for
#   the tests that restart it on purpose.
# - journald does not create /dev/log. A missing or dead /dev/log (nobody answers) becomes a
#   symlink to journald's dev-log socket; a /dev/log that answers and is someone else's (rsyslog's
#   imuxsock) is left alone, and the handle says syslog lines do not reach the journal.
# - A journald started here reads a runtime drop-in (/run/systemd/journald.conf.d/, never /etc):
#   volatile storage only, capped size (here /run may be on the root disk, not tmpfs, so the 4 GB
#   default cap is real disk), no rate limit (without systemd every process counts as one
#   "service", and 10000 lines per 30 s would silently drop a brute-force lab's lines), and
#   ForwardToSyslog=yes: as on a systemd machine, an rsyslog for the auth.log lab gets every line by
#   listening on SYSLOG_FORWARD_SOCKET (imuxsock), leaving /dev/log to journald. Nobody listening
#   there costs nothing and logs nothing.
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from guardian.lab.netns import LabError

JOURNALD = Path("/lib/systemd/systemd-journald")
JOURNAL_RUN_DIR = Path("/run/systemd/journal")
JOURNAL_SOCKET = JOURNAL_RUN_DIR / "socket"  # native protocol (systemd-cat, sd_journal_send)
JOURNAL_DEV_LOG = JOURNAL_RUN_DIR / "dev-log"  # syslog protocol
SYSLOG_FORWARD_SOCKET = JOURNAL_RUN_DIR / "syslog"  # journald forwards copies here (for rsyslog)
DEV_LOG = Path("/dev/log")
DROPIN_DIR = Path("/run/systemd/journald.conf.d")
DROPIN = DROPIN_DIR / "50-guardian-lab.conf"
DROPIN_TEXT = (
    "# Written by guardian.lab.journald for a journald started by hand on a test machine.\n"
    "[Journal]\n"
    "Storage=volatile\n"
    "RuntimeMaxUse=256M\n"
    "RateLimitBurst=0\n"
    "ForwardToSyslog=yes\n"
)
LOCK_FILE = Path("/run/guardian-lab-journald.lock")
LOG_FILE = Path("/run/guardian-lab-journald.log")  # journald's own stderr, for start failures
MACHINE_ID = Path("/etc/machine-id")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_COMM = "systemd-journal"  # /proc/PID/comm is cut at 15 characters

# Children we started, kept referenced so the interpreter never warns about (or reaps) them.
_started: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class JournaldHandle:
    """A running journald and how syslog reaches it.

    started: this call started it (False: an existing journald was reused).
    syslog_to_journal: /dev/log is journald's syslog socket, so sshd's lines land in the journal.
    dev_log_linked: this call created (or repaired) the /dev/log symlink.
    """

    pid: int
    started: bool
    syslog_to_journal: bool
    dev_log_linked: bool

    def alive(self) -> bool:
        return _comm(self.pid) == _COMM

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM this journald and wait until it is gone (bounded; SIGKILL after timeout).

        Only for tests that restart journald on purpose: it is shared by every process here."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if not _wait_gone(self.pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if not _wait_gone(self.pid, timeout):
                raise LabError(f"journald (pid {self.pid}) did not exit")
        _reap()


def ensure_journald(timeout: float = START_TIMEOUT) -> JournaldHandle:
    """Make sure a journald runs and /dev/log reaches it; start one if needed (idempotent).

    Needs root. LabError when journald cannot be started (its stderr is in the message)."""
    with _locked():
        pid = _running_journald() if _answers(JOURNAL_SOCKET) else None
        started = pid is None
        if pid is None:
            pid = _start(timeout)
        linked = ensure_dev_log()
        return JournaldHandle(
            pid=pid,
            started=started,
            syslog_to_journal=_same_socket(DEV_LOG, JOURNAL_DEV_LOG),
            dev_log_linked=linked,
        )


def restart_journald(handle: JournaldHandle, timeout: float = START_TIMEOUT) -> JournaldHandle:
    """Stop `handle`'s journald and start a fresh one (for tests of readers across restarts)."""
    handle.stop()
    return ensure_journald(timeout)


def ensure_dev_log(dev_log: Path = DEV_LOG, target: Path = JOURNAL_DEV_LOG) -> bool:
    """Point `dev_log` at `target` unless a working one exists. True if it (re)linked it.

    LabError when `dev_log` is something else than a socket or a symlink (left alone)."""
    if os.path.lexists(dev_log) and _answers(dev_log):
        return False  # works (journald's or someone else's): never replace a working /dev/log
    try:
        mode: int | None = dev_log.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not (stat.S_ISLNK(mode) or stat.S_ISSOCK(mode)):
        raise LabError(f"{dev_log} exists and is neither a socket nor a symlink: left alone")
    # A dangling symlink or a socket file nobody serves: replace it atomically (rename over it),
    # so a syslog() call in another process never sees /dev/log missing.
    tmp = dev_log.with_name(f".{dev_log.name}.guardian-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, dev_log)
    return True


# -- internals -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # Two test processes calling ensure_journald at once must not start two journalds: the second
    # would steal the sockets of the first.
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _answers(path: Path) -> bool:
    """A datagram socket at `path` (symlinks followed) that a live process has bound."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False  # ENOENT: no file; ECONNREFUSED: a socket file nobody serves
    return True


def _comm(pid: int) -> str | None:
    """The command name of a live process (None if gone or a zombie waiting to be reaped)."""
    try:
        stat_text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = stat_text.rpartition(")")
    if tail.split()[:1] == ["Z"]:
        return None
    return head.partition("(")[2]


def _running_journald() -> int:
    """The PID of the running journald (the lowest if several claim the name)."""
    pids = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    for pid in pids:
        if _comm(pid) == _COMM:
            return pid
    raise LabError("the journal socket answers but no systemd-journald process was found")


def _start(timeout: float) -> int:
    if not JOURNALD.exists():
        raise LabError(f"{JOURNALD} not found: install the systemd package")
    if not MACHINE_ID.exists() or not MACHINE_ID.read_text().strip():
        # journald names its directory after the machine id and refuses to run without one.
        raise LabError(f"{MACHINE_ID} is missing or empty: run systemd-machine-id-setup first")
    JOURNAL_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    DROPIN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    DROPIN.write_text(DROPIN_TEXT)
    _reap()
    with LOG_FILE.open("ab") as log:
        proc = subprocess.Popen(
            [str(JOURNALD)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,  # outlives this process; no terminal signals reach it
        )
    _started.append(proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = LOG_FILE.read_text(errors="replace")[-2000:]
            raise LabError(f"systemd-journald exited ({proc.returncode}): {tail}")
        if _answers(JOURNAL_SOCKET) and _answers(JOURNAL_DEV_LOG):
            return proc.pid
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=STOP_TIMEOUT)
    raise LabError(f"systemd-journald did not open its sockets within {timeout}s")


def _same_socket(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap()
        if _comm(pid) != _COMM:
            return True
        time.sleep(0.02)
    return False


def _reap() -> None:
    # Collect our own exited journalds (zombies keep their comm until reaped).
    for proc in list(_started):
        if proc.poll() is not None:
            _started.remove(proc)
