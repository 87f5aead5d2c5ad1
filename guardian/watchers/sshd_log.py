# sshd's log lines (from the journal today, auth.log later) turned into engine events. The watcher
# that reads lines decides nothing; the pure SshdDetector applies sshd's multi-line rules; this
# adapter only maps its detections onto the engine's vocabulary (sessions now, failures later).
from __future__ import annotations

from collections.abc import Iterable

from guardian.events import AuthFailed, Event, SessionClosed, SessionOpened
from guardian.parsers.sshd import Detection, SshdDetector
from guardian.watchers.journal import JournalRecord


def detection_to_event(detection: Detection) -> Event | None:
    """A session detection as a session event (failures: see failure_from)."""
    if detection.source is None or detection.port is None:
        return None
    if detection.kind == "success":
        return SessionOpened(
            detection.source, detection.port, detection.user or "", detection.pid or 0
        )
    if detection.kind == "session_closed":
        return SessionClosed(
            detection.source, detection.port, detection.user or "", detection.pid or 0
        )
    return None


def failure_from(detection: Detection, origin: str) -> AuthFailed | None:
    """A failure detection with an address as AuthFailed (host names are never banned)."""
    if detection.kind != "failure" or detection.source is None:
        return None
    return AuthFailed(
        detection.source,
        origin,
        detection.rule,
        detection.user,
        detection.pid,
        detection.wall_time,
        detection.attempts,
    )


class SshdLogAdapter:
    """Feeds records through one detector (its per-PID state spans records) and yields events:
    sessions always, failures (origin "journal") when asked to."""

    def __init__(self, mode: str = "normal", *, failures: bool = False) -> None:
        self.detector = SshdDetector("aggressive" if mode == "aggressive" else "normal")
        self.failures = failures

    def events(
        self, records: Iterable[JournalRecord], *, sessions_since: float | None = None
    ) -> list[Event]:
        """sessions_since drops session lines logged before it (a resumed cursor's backlog)."""
        out: list[Event] = []
        for record in records:
            old = sessions_since is not None and record.realtime < sessions_since
            for detection in self.detector.feed(record.pid, record.message, record.realtime):
                if detection.kind == "failure":
                    failure = failure_from(detection, "journal") if self.failures else None
                    if failure is not None:
                        out.append(failure)
                    continue
                event = None if old else detection_to_event(detection)
                if event is not None:
                    out.append(event)
        return out
