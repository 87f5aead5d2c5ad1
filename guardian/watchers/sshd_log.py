# sshd's log lines (from the journal today, auth.log later) turned into engine events. The watcher
# that reads lines decides nothing; the pure SshdDetector applies sshd's multi-line rules; this
# adapter only maps its detections onto the engine's vocabulary (sessions now, failures later).
from __future__ import annotations

from collections.abc import Iterable

from guardian.events import Event, SessionClosed, SessionOpened
from guardian.parsers.sshd import Detection, SshdDetector
from guardian.watchers.journal import JournalRecord


def detection_to_event(detection: Detection) -> Event | None:
    """A session-relevant detection as an event; failures are for the ban engine (not yet)."""
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


class SshdLogAdapter:
    """Feeds records through one detector (its per-PID state spans records) and yields events."""

    def __init__(self, mode: str = "normal") -> None:
        self.detector = SshdDetector("aggressive" if mode == "aggressive" else "normal")

    def events(self, records: Iterable[JournalRecord]) -> list[Event]:
        out: list[Event] = []
        for record in records:
            for detection in self.detector.feed(record.pid, record.message, record.realtime):
                event = detection_to_event(detection)
                if event is not None:
                    out.append(event)
        return out
