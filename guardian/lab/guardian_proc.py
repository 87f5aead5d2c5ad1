# The guardian daemon as a lab process: `python -m guardian run -c FILE` inside a host namespace,
# started with a config text, considered up once it prints "guardian: ready" on stderr (the table is
# installed and the watchers registered), and stoppable the way an operator would (SIGTERM, SIGHUP,
# or kill -9 to prove the kernel timeouts hold on their own). LabServer: the daemons one test
# starts, and the host's reset after it.
from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from guardian.lab.netns import Lab, LabError
from guardian.lab.nft import flush_ruleset

READY_LINE = "guardian: ready"
_counter = itertools.count(1)


class GuardianStartError(LabError):
    """The daemon exited or stayed silent before announcing it was ready."""


@dataclass(frozen=True)
class GuardianHandle:
    """A guardian daemon running in a lab host; its stdout and stderr go to log_path."""

    lab: Lab
    host: str
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    socket_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0, *, after: int = 0) -> bool:
        """True once `text` appears in the log beyond character offset `after` (bounded poll)."""
        deadline = time.monotonic() + timeout
        while True:
            if text in self.log_text()[after:]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def hup(self) -> None:
        """Ask the daemon to reload its config (SIGHUP)."""
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; SIGKILL if it overstays. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=timeout)

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL (no cleanup at all) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=timeout)


def guardian_argv(config_path: Path, extra_args: Sequence[str] = ()) -> list[str]:
    # sys.executable is the venv's interpreter when tests or the demo run from .venv, which is
    # the one that can import guardian and Debian's nftables.
    return [sys.executable, "-m", "guardian", "run", "-c", str(config_path), *extra_args]


def start_guardian(
    lab: Lab,
    config_text: str,
    host: str = "server",
    extra_args: Sequence[str] = (),
    *,
    ready_timeout: float = 10.0,
    wait_ready: bool = True,
) -> GuardianHandle:
    """Write the config and run the daemon in `host`; wait (bounded) for "guardian: ready".

    With wait_ready=False it returns at once (for configs that must fail: check returncode).
    """
    serial = next(_counter)
    config_path = lab.workdir / f"guardian-{host}-{serial}.toml"
    config_path.write_text(config_text)
    log_path = lab.workdir / f"guardian-{host}-{serial}.log"
    # Each daemon gets its own control socket in the lab's directory: namespaces share the file
    # system, so the default /run/guardian/control.sock would be fought over by parallel labs.
    socket_path = lab.workdir / f"control-{host}.sock"
    # Likewise the state store and the logs it follows: the lab's own, never the host's.
    var_log = lab.workdir / "var_log"
    var_log.mkdir(exist_ok=True)
    own = (
        "--socket",
        str(socket_path),
        "--state",
        str(lab.workdir / f"state-{host}.db"),
        "--btmp",
        str(var_log / "btmp"),
        "--auth-log",
        str(var_log / "auth.log"),
    )
    argv = guardian_argv(config_path, (*own, *extra_args))
    with log_path.open("ab") as log:
        proc = lab.popen(host, argv, stdout=log, stderr=log)
    handle = GuardianHandle(lab, host, proc, config_path, log_path, socket_path)
    if not wait_ready:
        return handle
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if READY_LINE in handle.log_text():
            return handle
        if proc.poll() is not None:
            raise GuardianStartError(
                f"guardian exited ({proc.returncode}) before ready:\n{handle.log_text()}"
            )
        time.sleep(0.02)
    handle.kill()
    raise GuardianStartError(f"guardian not ready within {ready_timeout}s:\n{handle.log_text()}")


class LabServer:
    """The guardians a test starts in a lab host (the "server"), and the reset after it:
    cleanup() kills them, then empties the host's ruleset and conntrack table, so that neither
    a table nor a connection riding "ct state established" reaches the next test. Tests that
    need more (clients, hooks, a host firewall) subclass it and extend cleanup()."""

    def __init__(self, lab: Lab, host: str = "server") -> None:
        self.lab = lab
        self.host = host
        self.handles: list[GuardianHandle] = []

    def __enter__(self) -> Self:
        flush_ruleset(self.lab, self.host)  # whatever an earlier test left
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def start(
        self, config: str, extra_args: Sequence[str] = (), *, ready_timeout: float = 10.0
    ) -> GuardianHandle:
        handle = start_guardian(
            self.lab, config, self.host, extra_args, ready_timeout=ready_timeout
        )
        self.handles.append(handle)
        return handle

    def cleanup(self) -> None:
        for handle in self.handles:
            handle.kill()
        flush_ruleset(self.lab, self.host)
        self.lab.run(self.host, ["conntrack", "-F"])

    def forget_state(self) -> None:
        """Remove the daemon's state store (offences, positions, SPA replays) between tests."""
        for state in self.lab.workdir.glob(f"state-{self.host}.db*"):
            state.unlink()
