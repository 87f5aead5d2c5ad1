# sshd on demand ([sshd] on_demand): run the configured `start` argv when the first grant opens
# and `stop` once the last grant is gone, so no sshd listens between visits. Commands run without
# a shell, one at a time, never waited for in the loop: each child's pidfd is a selector entry
# (the loop wakes when it exits) and a deadline kills it after SSHD_COMMAND_TIMEOUT. A failed
# command is logged and retried after a backoff that doubles up to SSHD_RETRY_MAX. A failed start
# never widens anything: the firewall grants only the knocking source either way, so the worst
# outcome is "connection refused" for that source until a retry succeeds.
from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from guardian.config import SSHD_COMMAND_TIMEOUT, SSHD_RETRY_MAX, SSHD_RETRY_MIN, Sshd
from guardian.journal_log import event_extra

log = logging.getLogger("guardian")

Verb = Literal["start", "stop"]


@dataclass(frozen=True)
class SwitchStats:
    starts: int
    stops: int
    failures: int
    up: bool | None


class SshdSwitch:
    """Keeps sshd's listener in step with `want(bool)`; the daemon calls on_child_exit() when
    the pidfd is readable and on_deadline() when next_deadline() has come."""

    def __init__(
        self,
        config: Sshd,
        clock: Callable[[], float],
        *,
        timeout: float = SSHD_COMMAND_TIMEOUT,
        retry_min: float = SSHD_RETRY_MIN,
        retry_max: float = SSHD_RETRY_MAX,
    ) -> None:
        self.config = config
        self.clock = clock
        self.timeout = timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.wanted = False
        # None: unknown (at start-up, after a failed stop): the first want() acts either way,
        # so a daemon restarted after a crash stops an sshd it had left running.
        self.up: bool | None = None
        self.starts = self.stops = self.failures = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._verb: Verb | None = None
        self._pidfd: int | None = None
        self._kill_at: float | None = None
        self._retry_at: float | None = None
        self._backoff = retry_min

    # -- what the loop asks -----------------------------------------------------------------
    @property
    def pidfd(self) -> int | None:
        """The running command's pidfd (readable when it exits), or None."""
        return self._pidfd

    def next_deadline(self) -> float | None:
        present = [d for d in (self._kill_at, self._retry_at) if d is not None]
        return min(present) if present else None

    def stats(self) -> SwitchStats:
        return SwitchStats(self.starts, self.stops, self.failures, self.up)

    # -- inputs -----------------------------------------------------------------------------
    def want(self, on: bool) -> None:
        """Grants are open (on) or none is left (off)."""
        if on != self.wanted:
            # A new wish is worth an immediate try, whatever the backoff of the old one.
            self._retry_at = None
            self._backoff = self.retry_min
        self.wanted = on
        self._act()

    def on_child_exit(self) -> None:
        self._reap(block=False)
        self._act()

    def on_deadline(self) -> None:
        now = self.clock()
        if self._kill_at is not None and now >= self._kill_at and self._proc is not None:
            log.error("sshd %s command timed out after %gs; killing it", self._verb, self.timeout)
            self._proc.kill()
            self._reap(block=True)
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
        self._act()

    def close(self) -> None:
        """Shut-down: a command still running is left to finish on its own (reaped if done)."""
        if self._proc is not None:
            self._reap(block=False)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    # -- internals --------------------------------------------------------------------------
    def _act(self) -> None:
        if self._proc is not None or self._retry_at is not None:
            return  # one command at a time; a backoff waits for its deadline
        if self.wanted and self.up is not True:
            self._spawn("start")
        elif not self.wanted and self.up is not False:
            self._spawn("stop")

    def _spawn(self, verb: Verb) -> None:
        argv = self.config.start if verb == "start" else self.config.stop
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
                start_new_session=True,  # a SIGINT to the daemon's terminal is not for it
            )
        except OSError as exc:
            self._failed(verb, f"cannot run {argv[0]}: {exc.strerror or exc}")
            return
        self._proc, self._verb = proc, verb
        self._kill_at = self.clock() + self.timeout
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except OSError:
            # A kernel before 5.3 has no pidfd: wait here, bounded by the timeout (rare, short).
            try:
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
            self._reap(block=True)

    def _reap(self, *, block: bool) -> None:
        proc, verb = self._proc, self._verb
        if proc is None or verb is None:
            return
        code = proc.wait(timeout=5.0) if block else proc.poll()
        if code is None:
            return
        stderr = b""
        if proc.stderr is not None:
            stderr = proc.stderr.read(4096)  # the child is gone: this cannot block
            proc.stderr.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._proc = self._verb = None
        self._kill_at = None
        if code == 0:
            self._backoff = self.retry_min
            self.up = verb == "start"
            if verb == "start":
                self.starts += 1
            else:
                self.stops += 1
            kind = "sshd_started" if verb == "start" else "sshd_stopped"
            log.info("%s", kind, extra=event_extra(kind))
            return
        said = stderr.decode(errors="replace").strip().replace("\n", " | ")
        self._failed(verb, f"exit status {code}" + (f": {said}" if said else ""))

    def _failed(self, verb: Verb, why: str) -> None:
        self.failures += 1
        if verb == "stop":
            self.up = None  # it may still be listening: keep trying to stop it
        self._retry_at = self.clock() + self._backoff
        reason = f"{verb} failed ({why}); retry in {self._backoff:g}s"
        log.error("sshd_failed %s", reason, extra=event_extra("sshd_failed", reason))
        self._backoff = min(self._backoff * 2, self.retry_max)
