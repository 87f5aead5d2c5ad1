# The auth.log watcher: sshd's lines from a syslog file (Debian's /var/log/auth.log, written by
# rsyslog) as engine events, for one event loop (fileno / read_events). It follows the file by name
# with inotify (guardian.watchers.tail: rename and copytruncate rotation, resume), and hands each
# read's whole lines to the pure bulk parser guardian.parsers.authlog_chunk, which feeds sshd's
# messages through one SshdDetector (its per-PID state spans reads). It decides nothing about bans
# or sessions.
#
# Why this shape (spec/sshd-events.md §1, §4):
# - Failures become AuthFailed(origin="authlog") with the detector's rule and attempt count; a
#   failure whose line names a host instead of an address (UseDNS yes) is counted, never resolved.
# - Successes and session ends become SessionOpened / SessionClosed (the same mapping as the
#   journal's, guardian.watchers.sshd_log), so a host with auth.log but no journal still sees
#   sessions; `sessions=False` leaves them to the journal watcher.
# - The bulk parser, not parse_syslog_line line by line: a backlog after a restart or an attack
#   of thousands of lines a second is read several times faster, with the same detections (its
#   equivalence with the per-line parser is tested, tests/test_authlog_chunk.py).
# - Lines are split on "\n" only (never str.splitlines, which also breaks on \x1c, \u2028 ...: bytes
#   an attacker can put in a user name); invalid UTF-8 is replaced, counted, and still parsed.
# - A traditional timestamp ("Mar  1 00:00:00") has no year and no zone: the reference is the
#   file's modification time (floored to the hour, so the parser's memo stays warm) in `zone`
#   (default: the system's local zone from /etc/localtime). Every line in the file is older than
#   its mtime, so "the mtime's year, or the one before" places each line right, even when the
#   watcher resumes old lines after a restart. RFC 3339 lines (Debian 12's rsyslog) need nothing.
# - Nothing in a line can make read_events() raise: an unexpected parser error is counted.
from __future__ import annotations

import os
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from guardian.events import AuthFailed, SessionClosed, SessionOpened
from guardian.parsers.authlog_chunk import ScanCounts, scan_text
from guardian.parsers.sshd import Detection, SshdDetector
from guardian.parsers.sshd_messages import Mode
from guardian.watchers.sshd_log import detection_to_event, failure_from
from guardian.watchers.tail import MAX_BYTES, ROTATE_GRACE, FileFollower

AUTH_LOG = "/var/log/auth.log"
ORIGIN = "authlog"
LOCALTIME = Path("/etc/localtime")
MODES: tuple[Mode, ...] = ("normal", "aggressive")

AuthLogEvent = AuthFailed | SessionOpened | SessionClosed

STAT_KEYS = (
    "lines",  # whole lines read
    "sshd_lines",  # lines written by sshd or sshd-session
    "other",  # lines of other programs (or not syslog lines at all)
    "undecodable",  # lines with invalid UTF-8 (parsed with replacement characters)
    "untimed",  # failures and sessions whose line's timestamp could not be placed (no time)
    "errors",  # lines whose parsing raised (a parser bug; the line is skipped)
    "failures",  # AuthFailed events produced
    "no_address",  # failures whose line names a host, not an address (UseDNS yes)
    "sessions_opened",  # SessionOpened events produced
    "sessions_closed",  # SessionClosed events produced
)

_HOUR = 3600


def local_zone(localtime: Path = LOCALTIME) -> tzinfo:
    """The system's zone (with its daylight-saving rules), UTC if it cannot be read."""
    try:
        with localtime.open("rb") as source:
            return ZoneInfo.from_file(source, key="localtime")
    except (OSError, ValueError):
        return UTC


class AuthLogWatcher:
    """sshd's failures (and sessions) from a syslog file.

    mode: "normal" or "aggressive" (the detector's rule set). start: a position() saved
    earlier, or None to start at the end of the file (a file created later is read from 0).
    WatcherError when the directory cannot be watched or the file cannot be read."""

    def __init__(
        self,
        path: str | os.PathLike[str] = AUTH_LOG,
        mode: str = "normal",
        start: str | None = None,
        *,
        sessions: bool = True,
        zone: tzinfo | None = None,
        max_bytes: int = MAX_BYTES,
        rotate_grace: float = ROTATE_GRACE,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode: Mode = "aggressive" if mode == "aggressive" else "normal"
        self.sessions = sessions
        self.zone = zone if zone is not None else local_zone()
        self.detector = SshdDetector(self.mode)
        self._follower = FileFollower(
            path, start=start, max_bytes=max_bytes, rotate_grace=rotate_grace
        )
        self.path = self._follower.path
        self._counts = dict.fromkeys(STAT_KEYS, 0)
        self._scanned = ScanCounts()  # the bulk parser's running totals (lines, sshd lines, ...)
        self._reference_hour: float | None = None
        self._reference: datetime | None = None

    def fileno(self) -> int:
        """Wait for this fd to be readable, then call read_events()."""
        return self._follower.fileno()

    @property
    def more_pending(self) -> bool:
        """The last read stopped at max_bytes: call read_events() again soon."""
        return self._follower.more_pending

    def read_events(self) -> list[AuthLogEvent]:
        """Events from the lines appended since the last call, in file order."""
        data = self._follower.read()
        if not data:
            return []
        return self.feed_text(data.decode("utf-8", "replace"))

    def feed_text(self, text: str) -> list[AuthLogEvent]:
        """Parse whole lines of text (split on "\n"; the follower's reads end with one) through
        this watcher's detector; for read_events and for tests. Counts as read_events does."""
        if not text:
            return []
        counts = self._counts
        scanned = self._scanned
        before = (scanned.lines, scanned.sshd_lines, scanned.untimed, scanned.errors)
        out: list[AuthLogEvent] = []
        for detections in scan_text(text, self.detector, self._current_reference(), counts=scanned):
            for detection in detections:
                self._map(detection, out)
        lines = scanned.lines - before[0]
        sshd_lines = scanned.sshd_lines - before[1]
        counts["lines"] += lines
        counts["sshd_lines"] += sshd_lines
        counts["other"] += lines - sshd_lines
        counts["untimed"] += scanned.untimed - before[2]
        counts["errors"] += scanned.errors - before[3]
        if "\ufffd" in text:
            counts["undecodable"] += sum(1 for line in text.split("\n") if "\ufffd" in line)
        return out

    def feed_lines(self, lines: list[str]) -> list[AuthLogEvent]:
        """feed_text for lines without their newline."""
        return self.feed_text("\n".join(lines) + "\n") if lines else []

    def position(self) -> str:
        """Save this after handling read_events()'s result; pass it as `start` after a restart."""
        return self._follower.position()

    def stats(self) -> dict[str, int]:
        """This watcher's counters plus the follower's (rotations, truncations, ...)."""
        return {**self._follower.stats(), **self._counts}

    def close(self) -> None:
        self._follower.close()

    def __enter__(self) -> AuthLogWatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------
    def _map(self, detection: Detection, out: list[AuthLogEvent]) -> None:
        counts = self._counts
        if detection.kind == "failure":
            failed = failure_from(detection, ORIGIN)
            if failed is None:
                counts["no_address"] += 1
            else:
                counts["failures"] += 1
                out.append(failed)
            return
        if not self.sessions:
            return
        event = detection_to_event(detection)
        if isinstance(event, SessionOpened):
            counts["sessions_opened"] += 1
            out.append(event)
        elif isinstance(event, SessionClosed):
            counts["sessions_closed"] += 1
            out.append(event)

    def _current_reference(self) -> datetime:
        """The reference for traditional timestamps: the file's mtime, floored to the hour."""
        mtime = self._follower.mtime
        if mtime is None:
            mtime = datetime.now(UTC).timestamp()  # no file open: lines are fed by hand
        hour = mtime - mtime % _HOUR
        if hour != self._reference_hour or self._reference is None:
            self._reference_hour = hour
            self._reference = datetime.fromtimestamp(hour, self.zone)
        return self._reference


__all__ = ["AUTH_LOG", "AuthLogEvent", "AuthLogWatcher", "local_zone"]
