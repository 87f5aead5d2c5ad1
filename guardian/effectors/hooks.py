# Event hooks ([[hook]]): run the configured commands on events, the event as ONE JSON object on
# stdin, never through a shell and never blocking the event loop.
#
# - Which events: a hook's `on` names hook kinds (config.HOOK_KINDS maps them to the engine's
#   Notice kinds: grant = grant_opened, revoke = grant_closed, ban, unban, everyone_opened,
#   everyone_closed, session_opened, session_closed, knock_failed).
# - The JSON: {"kind", "time" (epoch seconds), "source", "door", "user", "reason", "until"
#   (epoch seconds the grant / ban / everyone window lasts until, as first set)}; null where
#   unknown. It is far below a pipe's buffer (64 KiB), so one write to the fresh pipe never
#   blocks; stdin is closed right after (the fd is non-blocking anyway: a surprise is a failure,
#   not a stall).
# - Children: start_new_session (their own process group), stdout and stderr to /dev/null (an
#   unread pipe would stall a chatty hook until its timeout). Each child's pidfd is a selector
#   entry: the loop wakes when it exits and reaps it without waiting. A child still running at its
#   timeout gets SIGKILL on its whole process group.
# - Bounds: at most max_running children at once; further jobs wait in a FIFO of max_queued,
#   beyond which they are dropped (counted; a rate-limited log line says so).
# - Failures (spawn error, non-zero exit, killed by a signal, timeout) are logged one line per
#   failure, through a rate limiter so a broken hook on a busy event cannot flood the log.
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from guardian.actions import Action, Ban, Notice, OpenEveryone, OpenGrant
from guardian.addresses import normalize
from guardian.config import HOOK_KINDS, HOOK_MAX_QUEUED, HOOK_MAX_RUNNING, Hook
from guardian.journal_log import event_extra
from guardian.notices import RateLimiter

log = logging.getLogger("guardian")

# Notice kind -> hook kind (the inverse of HOOK_KINDS).
_KIND_OF_NOTICE: dict[str, str] = {notice: kind for kind, notice in HOOK_KINDS.items()}
_REAP_POLL = 0.05  # without a pidfd (kernel < 5.3) exited children are looked for this often


@dataclass(frozen=True, slots=True)
class HookEvent:
    """One event as hooks receive it."""

    kind: str
    time: float
    source: str | None
    door: str | None
    user: str | None
    reason: str | None
    until: float | None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "kind": self.kind,
            "time": self.time,
            "source": self.source,
            "door": self.door,
            "user": self.user,
            "reason": self.reason,
            "until": self.until,
        }
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def hook_events(actions: Sequence[Action], wall: float) -> list[HookEvent]:
    """The hook events of one engine step: its Notices of a hook kind, with `until` taken from
    the step's own OpenGrant / Ban / OpenEveryone (the notice follows the action it explains)."""
    events: list[HookEvent] = []
    for action in actions:
        if not isinstance(action, Notice) or action.kind not in _KIND_OF_NOTICE:
            continue
        kind = _KIND_OF_NOTICE[action.kind]
        events.append(
            HookEvent(
                kind=kind,
                time=wall,
                source=None if action.source is None else str(action.source),
                door=action.door or None,
                user=_user_of(action),
                reason=action.detail or None,
                until=_until_of(action, actions, wall),
            )
        )
    return events


def _user_of(notice: Notice) -> str | None:
    """Session notices read "USER port N ..." when sshd named the user, "port N ..." when not."""
    if notice.kind not in ("session_opened", "session_closed"):
        return None
    words = notice.detail.split(" ", 1)
    return None if not words[0] or words[0] == "port" else words[0]


def _until_of(notice: Notice, actions: Sequence[Action], wall: float) -> float | None:
    for action in actions:
        if notice.kind == "grant_opened" and isinstance(action, OpenGrant):
            if notice.source is not None and normalize(action.source) == notice.source:
                return wall + action.timeout
        elif notice.kind == "ban" and isinstance(action, Ban):
            if notice.source is not None and notice.source in action.network:
                return None if action.timeout is None else wall + action.timeout
        elif notice.kind == "everyone_opened" and isinstance(action, OpenEveryone):
            return wall + action.timeout
    return None


@dataclass
class _Job:
    hook: Hook
    payload: bytes


@dataclass
class _Running:
    job: _Job
    proc: subprocess.Popen[bytes]
    kill_at: float
    pidfd: int | None
    killed: bool = False


@dataclass(frozen=True)
class HookStats:
    started: int
    failed: int
    timed_out: int
    dropped: int
    running: int
    queued: int


class HookRunner:
    """Runs hooks for events. The daemon registers pidfds() in its selector and calls
    on_exit(fd) when one is readable, and on_deadline() when next_deadline() has come."""

    def __init__(
        self,
        hooks: Sequence[Hook],
        clock: Callable[[], float],
        *,
        max_running: int = HOOK_MAX_RUNNING,
        max_queued: int = HOOK_MAX_QUEUED,
    ) -> None:
        self.hooks = tuple(hooks)
        self.clock = clock
        self.max_running = max_running
        self._queue: deque[_Job] = deque()
        self._max_queued = max_queued
        self._running: dict[int, _Running] = {}  # by pid
        self._limiter = RateLimiter(rate=1.0, burst=10.0)
        self.started = self.failed = self.timed_out = self.dropped = 0
        self._poll_at: float | None = None

    # -- what the loop asks -----------------------------------------------------------------
    def pidfds(self) -> dict[int, int]:
        """pidfd -> pid of every running child that has one."""
        return {r.pidfd: pid for pid, r in self._running.items() if r.pidfd is not None}

    def next_deadline(self) -> float | None:
        deadlines = [r.kill_at for r in self._running.values() if not r.killed]
        if self._poll_at is not None:
            deadlines.append(self._poll_at)
        return min(deadlines) if deadlines else None

    def stats(self) -> HookStats:
        return HookStats(
            self.started,
            self.failed,
            self.timed_out,
            self.dropped,
            len(self._running),
            len(self._queue),
        )

    # -- inputs -----------------------------------------------------------------------------
    def submit(self, events: Sequence[HookEvent]) -> None:
        """One job per (event, hook that wants its kind): started at once while fewer than
        max_running run, else queued (FIFO), else dropped."""
        for event in events:
            for hook in self.hooks:
                if event.kind not in hook.on:
                    continue
                job = _Job(hook, event.to_json())
                if not self._queue and len(self._running) < self.max_running:
                    self._spawn(job)
                elif len(self._queue) < self._max_queued:
                    self._queue.append(job)
                else:
                    self.dropped += 1
                    self._warn("hook_dropped", f"queue full ({self._max_queued}): {event.kind}")

    def on_exit(self, pidfd: int) -> None:
        for pid, running in list(self._running.items()):
            if running.pidfd == pidfd:
                self._reap(pid, running)
        self._start_queued()

    def on_deadline(self) -> None:
        now = self.clock()
        self._poll_at = None
        for pid, running in list(self._running.items()):
            if not running.killed and now >= running.kill_at:
                running.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # its own session: the whole group goes
            # No pidfd to wake us, or killed just now: reap when it is gone (SIGKILL is quick;
            # until then, look again shortly).
            if (running.pidfd is None or running.killed) and not self._reap(pid, running):
                self._poll_at = now + _REAP_POLL
        self._start_queued()

    def close(self) -> None:
        """Shut-down: children still running are left to finish (bounded by nothing we own:
        they are in their own sessions); their pidfds are closed."""
        for running in self._running.values():
            if running.pidfd is not None:
                os.close(running.pidfd)
        self._running.clear()
        self._queue.clear()

    # -- internals --------------------------------------------------------------------------
    def _start_queued(self) -> None:
        while self._queue and len(self._running) < self.max_running:
            self._spawn(self._queue.popleft())

    def _spawn(self, job: _Job) -> None:
        argv = list(job.hook.run)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            self._failure(job, f"cannot run {argv[0]}: {exc.strerror or exc}")
            return
        self.started += 1
        assert proc.stdin is not None
        try:
            os.set_blocking(proc.stdin.fileno(), False)
            os.write(proc.stdin.fileno(), job.payload)
        except OSError as exc:  # it exited at once (EPIPE), or a pipe smaller than the JSON
            log.debug("hook %s: stdin not written: %s", argv[0], exc)
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        pidfd: int | None
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            pidfd = None
            self._poll_at = self.clock() + _REAP_POLL
        self._running[proc.pid] = _Running(job, proc, self.clock() + job.hook.timeout, pidfd)

    def _reap(self, pid: int, running: _Running) -> bool:
        code = running.proc.poll()
        if code is None:
            return False
        del self._running[pid]
        if running.pidfd is not None:
            os.close(running.pidfd)
        if running.killed:
            self.timed_out += 1
            self._failure(running.job, f"timed out after {running.job.hook.timeout:g}s: killed")
        elif code != 0:
            why = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
            self._failure(running.job, why)
        return True

    def _failure(self, job: _Job, why: str) -> None:
        self.failed += 1
        kind = json.loads(job.payload).get("kind", "?")
        self._warn("hook_failed", f"{job.hook.run[0]} on {kind}: {why}")

    def _warn(self, kind: str, text: str) -> None:
        admitted, suppressed = self._limiter.admit(kind, self.clock())
        if not admitted:
            return
        if suppressed:
            text += f" [{suppressed} more {kind} suppressed]"
        log.warning("%s %s", kind, text, extra=event_extra(kind, text))
