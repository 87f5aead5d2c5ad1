# An rsyslog for the auth.log lab, on machines whose PID 1 is not systemd: rsyslogd started by hand
# with its own small config, writing the auth and authpriv facilities to a file of the caller's
# choosing in Debian 12's format (RFC 3339 timestamps with microseconds: RSYSLOG_FileFormat).
#
# Decisions:
# - It listens where journald forwards (ForwardToSyslog=yes, set by guardian.lab.journald):
#   /run/systemd/journal/syslog, exactly as Debian's rsyslog does under systemd. So the chain is
#   the real one: sshd -> /dev/log -> journald -> forward socket -> rsyslog -> auth.log. /dev/log
#   stays journald's: imuxsock's system socket is renamed to the forward socket, no other input is
#   loaded (no imklog: the host's kernel log is not ours to read).
# - One per machine (journald forwards to one socket path): a lock file serialises starts; an
#   rsyslog this process started for the same file and socket is reused (`ensure`); a listener
#   that is somebody else's is refused with a LabError naming it, never killed — except one left
#   by a crashed lab process (its owner record names a process that is gone), which is stopped.
# - Cleanup: the handle stops it (stop(), or `with`); passing `lab` makes the lab kill it on close;
#   an atexit hook stops what this process started and forgot.
# - Ready means proven: ensure_rsyslog() sends a probe line to the socket and waits until it is in
#   the file. check_forwarding() does the same through /dev/log, proving journald forwards.
from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from guardian.lab.journald import DEV_LOG, SYSLOG_FORWARD_SOCKET
from guardian.lab.netns import Lab, LabError

RSYSLOGD = Path("/usr/sbin/rsyslogd")
STATE_DIR = Path("/run/guardian-lab-rsyslog")
LOCK_FILE = Path("/run/guardian-lab-rsyslog.lock")
OWNER_FILE = STATE_DIR / "owner"  # "<rsyslogd pid> <owner pid> <owner start time>"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PROBE_TAG = "guardian-lab-probe"
_AUTH_INFO = 4 * 8 + 6  # facility auth (4), severity info (6)
_COMM = "rsyslogd"

CONFIG_TEMPLATE = """\
# Written by guardian.lab.rsyslog: a lab rsyslog listening where journald forwards.
global(workDirectory="{workdir}")
module(load="imuxsock"
       SysSock.Use="on"
       SysSock.Name="{socket}"
       SysSock.RateLimit.Interval="0")
auth,authpriv.* action(type="omfile" file="{auth_log}" template="RSYSLOG_FileFormat"
                       fileCreateMode="0640")
"""


@dataclass
class RsyslogHandle:
    """A running lab rsyslogd writing auth,authpriv.* to `auth_log`."""

    proc: subprocess.Popen[bytes]
    auth_log: Path
    socket_path: Path
    directory: Path  # config, work dir, rsyslogd's own output
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def config_path(self) -> Path:
        return self.directory / "rsyslog.conf"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """rsyslogd's own stdout/stderr (start errors)."""
        try:
            return (self.directory / "rsyslogd.out").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM it and wait (SIGKILL after timeout). Idempotent."""
        if not self._stopped:
            self._stopped = True
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
            with contextlib.suppress(FileNotFoundError):
                if _owner_record()[:1] == [self.pid]:
                    OWNER_FILE.unlink()
            shutil.rmtree(self.directory, ignore_errors=True)
        if self in _running:
            _running.remove(self)

    def __enter__(self) -> RsyslogHandle:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


_running: list[RsyslogHandle] = []
_atexit_installed = False


def ensure_rsyslog(
    auth_log: Path,
    *,
    lab: Lab | None = None,
    socket_path: Path = SYSLOG_FORWARD_SOCKET,
    timeout: float = START_TIMEOUT,
) -> RsyslogHandle:
    """An rsyslogd listening on `socket_path` and writing auth,authpriv.* to `auth_log`.

    Reuses one this process started with the same file and socket; starts one otherwise.
    LabError if rsyslogd is missing, another syslog daemon holds the socket, or the probe line
    does not reach the file in time. Needs root."""
    auth_log = Path(auth_log).absolute()
    for text in (str(auth_log), str(socket_path)):
        if any(c in text for c in '"\\\n'):
            raise LabError(f"path not usable in an rsyslog config: {text!r}")
    for handle in list(_running):
        if handle.alive() and (handle.auth_log, handle.socket_path) == (auth_log, socket_path):
            if lab is not None:
                lab.track(handle.proc)
            return handle
    if not RSYSLOGD.exists():
        raise LabError(f"{RSYSLOGD} not found: install the rsyslog package (scripts/setup.sh)")
    with _locked():
        _clear_stale(socket_path)
        if _answers(socket_path):
            raise LabError(
                f"another syslog daemon already listens on {socket_path}: "
                "stop it, or use the auth.log it writes"
            )
        handle = _start(auth_log, socket_path, timeout)
    if lab is not None:
        lab.track(handle.proc)
    return handle


def send_line(message: str, *, target: Path, tag: str = PROBE_TAG) -> None:
    """One syslog datagram (facility auth, severity info) to a unix socket."""
    datagram = f"<{_AUTH_INFO}>{tag}[{os.getpid()}]: {message}".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram, str(target))


def wait_for_line(path: Path, token: str, timeout: float) -> float | None:
    """Seconds until `token` appeared in `path` (polled), or None after timeout."""
    start = time.monotonic()
    needle = token.encode()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(FileNotFoundError):
            if needle in path.read_bytes()[-65536:]:
                return time.monotonic() - start
        time.sleep(0.005)
    return None


def check_forwarding(
    handle: RsyslogHandle, *, dev_log: Path = DEV_LOG, timeout: float = 5.0
) -> float:
    """Send a line to /dev/log (journald's) and wait for it in auth.log: proves the whole chain
    journald -> forward socket -> rsyslog. Returns the seconds it took; LabError if it never
    arrives (journald without ForwardToSyslog=yes, or /dev/log not journald's)."""
    token = f"forwarded-{secrets.token_hex(6)}"
    send_line(token, target=dev_log)
    took = wait_for_line(handle.auth_log, token, timeout)
    if took is None:
        raise LabError(
            f"a line sent to {dev_log} did not reach {handle.auth_log} within {timeout}s: "
            "is journald forwarding to syslog (ForwardToSyslog=yes)?"
        )
    return took


# -- internals -----------------------------------------------------------------------------------


def _start(auth_log: Path, socket_path: Path, timeout: float) -> RsyslogHandle:
    global _atexit_installed
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    directory = STATE_DIR / f"{os.getpid()}-{secrets.token_hex(3)}"
    directory.mkdir(mode=0o700)
    workdir = directory / "spool"
    workdir.mkdir(mode=0o700)
    auth_log.parent.mkdir(parents=True, exist_ok=True)
    config = directory / "rsyslog.conf"
    config.write_text(
        CONFIG_TEMPLATE.format(workdir=workdir, socket=socket_path, auth_log=auth_log)
    )
    check = subprocess.run(
        [str(RSYSLOGD), "-N1", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        raise LabError(f"rsyslog rejected its config: {check.stderr.strip() or check.stdout}")
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with (directory / "rsyslogd.out").open("ab") as out:
        proc = subprocess.Popen(
            [str(RSYSLOGD), "-n", "-f", str(config), "-i", str(directory / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd="/",
            start_new_session=True,  # its own process group: a lab's close() kills it cleanly
        )
    handle = RsyslogHandle(proc, auth_log, socket_path, directory)
    _running.append(handle)
    if not _atexit_installed:
        _atexit_installed = True
        atexit.register(_stop_all)
    start = _process_start_time(os.getpid())
    OWNER_FILE.write_text(f"{proc.pid} {os.getpid()} {start}\n")
    try:
        _wait_ready(handle, timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


def _wait_ready(handle: RsyslogHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(handle.socket_path):
        if not handle.alive():
            raise LabError(f"rsyslogd exited ({handle.proc.returncode}): {handle.output()}")
        if time.monotonic() > deadline:
            raise LabError(f"rsyslogd did not open {handle.socket_path} within {timeout}s")
        time.sleep(0.01)
    token = f"ready-{secrets.token_hex(6)}"
    send_line(token, target=handle.socket_path)
    if wait_for_line(handle.auth_log, token, max(0.5, deadline - time.monotonic())) is None:
        raise LabError(f"rsyslogd did not write a probe line to {handle.auth_log}")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _owner_record() -> list[int]:
    try:
        return [int(x) for x in OWNER_FILE.read_text().split()]
    except (OSError, ValueError):
        return []


def _process_start_time(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return -1


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _clear_stale(socket_path: Path) -> None:
    """Stop an rsyslogd a crashed lab process left behind (its owner is gone)."""
    record = _owner_record()
    if len(record) != 3:
        return
    rsyslog_pid, owner_pid, owner_start = record
    if _process_start_time(owner_pid) == owner_start:
        return  # its owner lives (another test process): not ours to stop
    if _comm(rsyslog_pid) == _COMM:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rsyslog_pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _comm(rsyslog_pid) == _COMM and time.monotonic() < deadline:
            time.sleep(0.02)
    with contextlib.suppress(FileNotFoundError):
        OWNER_FILE.unlink()


def _stop_all() -> None:
    for handle in list(_running):
        with contextlib.suppress(Exception):
            handle.stop()


__all__ = [
    "RsyslogHandle",
    "check_forwarding",
    "ensure_rsyslog",
    "send_line",
    "wait_for_line",
]
