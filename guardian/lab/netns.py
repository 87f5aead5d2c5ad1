# The network-namespace lab shared by the lab tests, the demo and the benchmarks: a switch namespace
# holding a bridge, and one namespace per host ("server", "client", "client2", "attacker") wired to
# it by a veth pair, with documentation addresses and no route out. Nothing here touches the root
# namespace's links, routes or firewall: veth pairs are created inside the switch namespace with
# their far end placed straight into the host's namespace. Every lab is removed again (context
# manager, atexit, SIGTERM/SIGHUP), and `cleanup_stale` removes what a crashed run left behind.
from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guardian.lab.sshd import SshdHandle

DEFAULT_HOSTS: tuple[str, ...] = ("server", "client", "client2", "attacker")
DEFAULT_PREFIX = "gl"
SWITCH_ROLE = "sw"
BRIDGE = "br0"
HOST_IFNAME = "eth0"  # the host side of every veth pair, inside the host's namespace
# Documentation networks (RFC 5737, RFC 3849): they can never be confused with a real peer.
NET4_PREFIX = "192.0.2."
NET6_PREFIX = "2001:db8::"
PREFIXLEN4 = 24
PREFIXLEN6 = 64
# Per-lab working directory (keys, configs, logs) and the owner record that tells a live lab from
# a crashed one. /run is root-only tmpfs on Debian, so nothing survives a reboot.
STATE_DIR = Path("/run/guardian-lab")

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,5}")
_ROLE_RE = re.compile(r"[a-z][a-z0-9]{0,14}")  # also a veth name in the switch: ≤ 15 chars
_FileArg = int | IO[Any] | None

# Bounds on teardown: processes get this long to exit after SIGTERM before SIGKILL.
_TERM_GRACE = 2.0
_KILL_ROUNDS = 5


class LabError(RuntimeError):
    """A lab could not be built or a command in it failed."""


def _lab_name_re(prefix: str) -> re.Pattern[str]:
    # "<prefix><4 hex>-<role>": the only shape this module ever creates or removes.
    return re.compile(rf"(?P<lab>{re.escape(prefix)}[0-9a-f]{{4}})-(?P<role>[a-z][a-z0-9]*)")


def _ip(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(
        ["ip", *argv], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if check and done.returncode != 0:
        raise LabError(f"ip {' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def list_namespaces() -> list[str]:
    """Names of all network namespaces known to `ip netns` (any owner)."""
    names = []
    for line in _ip(["netns", "list"]).splitlines():
        if line.strip():
            names.append(line.split()[0])
    return names


def namespace_pids(ns: str) -> list[int]:
    """PIDs of the processes living in namespace `ns` (empty if it is gone)."""
    out = _ip(["netns", "pids", ns], check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _process_start_time(pid: int) -> str | None:
    # Field 22 of /proc/PID/stat (after the parenthesised comm) identifies a process across PID
    # reuse: a recycled PID has a different start time.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _owner_alive(owner_file: Path) -> bool:
    try:
        pid_text, start = owner_file.read_text().split()
    except (OSError, ValueError):
        return False
    return _process_start_time(int(pid_text)) == start


def _kill_namespace_processes(namespaces: Sequence[str]) -> None:
    """SIGTERM, then SIGKILL, whatever still runs in the namespaces (bounded rounds)."""
    for round_no in range(_KILL_ROUNDS):
        pids = {pid for ns in namespaces for pid in namespace_pids(ns)}
        pids.discard(os.getpid())
        if not pids:
            return
        sig = signal.SIGTERM if round_no == 0 else signal.SIGKILL
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (_TERM_GRACE if round_no == 0 else 0.5)
        while time.monotonic() < deadline:
            if not any(namespace_pids(ns) for ns in namespaces):
                return
            time.sleep(0.05)


def _delete_namespaces(namespaces: Sequence[str]) -> None:
    if namespaces:
        # -force: keep deleting the others when one is already gone.
        batch = "".join(f"netns del {ns}\n" for ns in namespaces)
        _ip(["-force", "-batch", "-"], stdin=batch, check=False)


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces (and work dirs) of labs whose owning process is gone.

    Only names of the lab's own shape ("<prefix><4 hex>-<role>") are considered, and a lab whose
    owner is still running (another test run, the demo) is left alone. Returns the namespaces
    removed.
    """
    pattern = _lab_name_re(prefix)
    by_lab: dict[str, list[str]] = {}
    for ns in list_namespaces():
        match = pattern.fullmatch(ns)
        if match:
            by_lab.setdefault(match["lab"], []).append(ns)
    if STATE_DIR.is_dir():
        for entry in STATE_DIR.iterdir():
            if re.fullmatch(rf"{re.escape(prefix)}[0-9a-f]{{4}}", entry.name):
                by_lab.setdefault(entry.name, [])
    removed: list[str] = []
    for lab_id, namespaces in sorted(by_lab.items()):
        workdir = STATE_DIR / lab_id
        if _owner_alive(workdir / "owner"):
            continue
        _kill_namespace_processes(namespaces)
        _delete_namespaces(namespaces)
        shutil.rmtree(workdir, ignore_errors=True)
        removed.extend(namespaces)
    return removed


class Lab:
    """A set of network namespaces joined by one bridge; use as a context manager.

    `with Lab() as lab:` builds it; leaving the block (or `close()`, atexit, SIGTERM, SIGHUP)
    kills every process in it and deletes the namespaces. Commands run through
    `ip netns exec NS argv...` with argv lists only.
    """

    def __init__(
        self,
        hosts: Sequence[str] = DEFAULT_HOSTS,
        *,
        prefix: str = DEFAULT_PREFIX,
        keep_workdir: bool = False,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"lab prefix {prefix!r} must match {_PREFIX_RE.pattern}")
        if len(hosts) == 0 or len(hosts) > 250 or len(set(hosts)) != len(hosts):
            raise ValueError("hosts must be 1..250 distinct names")
        for host in hosts:
            if not _ROLE_RE.fullmatch(host) or host == SWITCH_ROLE:
                raise ValueError(f"host name {host!r} must match {_ROLE_RE.pattern}, not 'sw'")
        self.hosts: tuple[str, ...] = tuple(hosts)
        self.prefix = prefix
        self.keep_workdir = keep_workdir
        self.name = ""  # "<prefix><4 hex>", set by start()
        self.workdir = Path()
        # The sshd started by guardian.lab.sshd.start_sshd (the fixtures start one on "server").
        self.sshd: SshdHandle | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._owner_pid = os.getpid()
        self._started = False
        self._closed = False
        self._finished = False

    # -- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Build the namespaces, bridge, links and addresses (once)."""
        if self._started:
            return
        self._started = True
        self._claim_name()
        _register(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _claim_name(self) -> None:
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = set(list_namespaces())
        for _ in range(64):
            name = f"{self.prefix}{secrets.token_hex(2)}"
            if any(ns.startswith(name + "-") for ns in existing):
                continue
            try:
                (STATE_DIR / name).mkdir(mode=0o700)  # atomic claim of the lab id
            except FileExistsError:
                continue
            self.name = name
            self.workdir = STATE_DIR / name
            start = _process_start_time(os.getpid())
            (self.workdir / "owner").write_text(f"{os.getpid()} {start}\n")
            return
        raise LabError("could not find a free lab name")

    def _build(self) -> None:
        switch = self.ns(SWITCH_ROLE)
        all_ns = [switch, *(self.ns(h) for h in self.hosts)]
        _ip(["-batch", "-"], stdin="".join(f"netns add {ns}\n" for ns in all_ns))
        # DAD off before any link exists, so IPv6 addresses (link-local too) are usable at once;
        # the switch carries no addresses at all.
        for ns in all_ns:
            settings = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
            if ns == switch:
                settings = [
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ]
            self._exec_checked(ns, ["sysctl", "-q", "-w", *settings])
        # forward_delay 0 and no STP: bridge ports forward as soon as they are up.
        switch_batch = [
            f"link add {BRIDGE} type bridge forward_delay 0 stp_state 0",
            "link set lo up",
        ]
        for host in self.hosts:
            switch_batch.append(
                f"link add {host} type veth peer name {HOST_IFNAME} netns {self.ns(host)}"
            )
            switch_batch.append(f"link set {host} master {BRIDGE} up")
        switch_batch.append(f"link set {BRIDGE} up")
        _ip(["-n", switch, "-batch", "-"], stdin="".join(line + "\n" for line in switch_batch))
        for host in self.hosts:
            host_batch = [
                "link set lo up",
                f"addr add {self.addr(host, 4)}/{PREFIXLEN4} dev {HOST_IFNAME}",
                f"addr add {self.addr(host, 6)}/{PREFIXLEN6} dev {HOST_IFNAME} nodad",
                f"link set {HOST_IFNAME} up",
            ]
            _ip(["-n", self.ns(host), "-batch", "-"], stdin="".join(ln + "\n" for ln in host_batch))

    def close(self) -> None:
        """Kill everything started in the lab and delete its namespaces (idempotent).

        Every step can be repeated, so a signal handler that interrupts a close in progress
        simply runs it again to the end.
        """
        if self._finished or not self._started or os.getpid() != self._owner_pid:
            return
        self._closed = True
        try:
            for proc in reversed(self._procs):
                _terminate_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + _TERM_GRACE
            for proc in self._procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                if proc.poll() is None:
                    _terminate_group(proc, signal.SIGKILL)
            if self.name:
                _kill_namespace_processes(self.namespaces)
            for proc in self._procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)
            if self.name:
                _delete_namespaces(self.namespaces)
                if not self.keep_workdir:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                else:
                    # The lab is gone; a kept work dir must not look like a live lab's.
                    (self.workdir / "owner").unlink(missing_ok=True)
            self._finished = True
        finally:
            _unregister(self)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- names and addresses ---------------------------------------------------------------------

    def ns(self, host: str) -> str:
        """The namespace name of `host` ("sw" is the switch)."""
        if host != SWITCH_ROLE and host not in self.hosts:
            raise KeyError(f"no host {host!r} in this lab (hosts: {', '.join(self.hosts)})")
        return f"{self.name}-{host}"

    @property
    def namespaces(self) -> list[str]:
        """All namespace names of this lab, switch first."""
        return [self.ns(SWITCH_ROLE), *(self.ns(h) for h in self.hosts)]

    def addr(self, host: str, v: int = 4) -> str:
        """The documentation address of `host`: 192.0.2.N or 2001:db8::N (N = position + 1)."""
        index = self.hosts.index(host) + 1
        if v == 4:
            return f"{NET4_PREFIX}{index}"
        if v == 6:
            return f"{NET6_PREFIX}{index:x}"
        raise ValueError(f"v must be 4 or 6, not {v!r}")

    # -- running things --------------------------------------------------------------------------

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside `host`'s namespace (ip netns exec)."""
        if isinstance(argv, str):
            raise TypeError("argv must be a list of strings, not a string")
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 30.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in `host` and wait (bounded); stdout/stderr captured as text."""
        return subprocess.run(
            self.exec_argv(host, argv),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
            env=env,
            cwd=cwd,
        )

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        *,
        stdin: _FileArg = subprocess.DEVNULL,
        stdout: _FileArg = subprocess.DEVNULL,
        stderr: _FileArg = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start argv in `host` in its own session; the lab kills it (and its group) on close."""
        if self._closed or not self._started:
            raise LabError("the lab is not running")
        proc = subprocess.Popen(
            self.exec_argv(host, argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,  # one process group per start: teardown kills children too
        )
        self._procs.append(proc)
        return proc

    def track(self, proc: subprocess.Popen[bytes]) -> None:
        """Have the lab kill a process started elsewhere (e.g. in the root namespace) on close."""
        self._procs.append(proc)

    def set_link(self, host: str, up: bool) -> None:
        """Bring `host`'s eth0 down or up (for watchers that must survive link changes)."""
        state = "up" if up else "down"
        _ip(["-n", self.ns(host), "link", "set", HOST_IFNAME, state])

    def _exec_checked(self, ns: str, argv: Sequence[str]) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise LabError(f"{' '.join(argv)} in {ns} failed: {done.stderr.strip()}")


def _terminate_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)  # popen() starts a new session, so pgid == pid
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


# -- process-wide safety net: atexit and fatal signals close every live lab ----------------------

_live_labs: list[Lab] = []
_registry_lock = threading.RLock()  # the signal handler may run while it is held
_hooks_installed = False
_previous_handlers: dict[int, Any] = {}
_in_signal_cleanup = False
_SignalHandler = Callable[[int, types.FrameType | None], Any]


def _register(lab: Lab) -> None:
    global _hooks_installed
    with _registry_lock:
        _live_labs.append(lab)
        if _hooks_installed:
            return
        _hooks_installed = True
    atexit.register(close_all_labs)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN:
                continue  # the process chose to ignore it (nohup): so do we
            _previous_handlers[signum] = previous
            signal.signal(signum, _on_fatal_signal)


def _unregister(lab: Lab) -> None:
    with _registry_lock:
        if lab in _live_labs:
            _live_labs.remove(lab)


def close_all_labs() -> None:
    """Close every lab this process still has open (atexit and signal handler)."""
    with _registry_lock:
        labs = list(reversed(_live_labs))
    for lab in labs:
        try:
            lab.close()
        except Exception as exc:  # keep closing the others; say why this one stayed
            print(f"guardian.lab: cleanup of {lab.name} failed: {exc!r}", file=sys.stderr)


def _on_fatal_signal(signum: int, frame: types.FrameType | None) -> None:
    global _in_signal_cleanup
    if _in_signal_cleanup:
        return  # a second signal must not cut the first one's cleanup short
    _in_signal_cleanup = True
    try:
        close_all_labs()
    finally:
        _in_signal_cleanup = False
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        handler: _SignalHandler = previous
        handler(signum, frame)
        return
    # Default action: die of the same signal, as if we had not been here.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
