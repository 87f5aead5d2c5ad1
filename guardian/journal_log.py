# Logging to the systemd journal with structured fields, so `journalctl GUARDIAN_EVENT=ban` and
# `journalctl MESSAGE_ID=...` work. A notice's fields (GUARDIAN_EVENT, SOURCE_ADDRESS, DOOR,
# REASON, a stable MESSAGE_ID per kind, PRIORITY) ride on the log record (`extra=` of
# notice_extra); the handler sends them with systemd.journal.send when journald answers.
# Plain "guardian: LEVEL text" lines go to stderr unless stderr already is the journal (systemd
# says so in $JOURNAL_STREAM): under the service the journal gets each line once, structured;
# in a terminal, a test lab or a container without journald, stderr gets them all.
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from guardian.actions import Notice

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "guardian"
FIELDS_ATTRIBUTE = "journal_fields"  # the LogRecord attribute carrying a notice's fields

# One MESSAGE_ID per event kind, fixed forever (journalctl MESSAGE_ID=... and catalogs rely on
# them). New kinds get a new random 128-bit id here; an id is never reused for another kind.
MESSAGE_IDS: dict[str, str] = {
    "knock_completed": "a45e631d5ddf4a1b90d9c3d9b345bcb4",
    "knock_failed": "62e3b7a4a53a4f4b887163f32b6587f1",
    "grant_opened": "e6930aab766348ab8abe3e8d80d2243e",
    "grant_adopted": "38d65116ba644971aea7a6ae2d20e5d6",
    "grant_in_session": "3f08d1e6c1844d57b6c2a6c45ac6ffd1",
    "grant_refreshed": "c5ec0b09c25640dd8c2bb79838c9ebad",
    "grant_lingering": "9d4d7a43273c49db9f0dabd08e9aa8a5",
    "grant_closed": "73718e0742544d97ab2b6aa959b96eec",
    "grant_refused": "65142a3373274d049037712300c5c74d",
    "unauthenticated_expired": "e3feea01f2dd40588f5b6992ca37ec37",
    "ban": "222e008a275e43c1b83d469c063bf9f4",
    "ban_refused": "bfb438a1ed5d479788ebf5f6e7baf5f8",
    "unban": "cce05bf9bba4489cb1fd38c6c4962d82",
    "spa_refused": "aba16988bc1e4e35bef5b604b140b072",
    "sshd_started": "5df8aca4220a412892720fb0f08b095c",
    "sshd_stopped": "38572001fb1d4f1ea2a24d658edda5fd",
    "sshd_failed": "25052c520c3e4327962bbd16628139bb",
    "table_restored": "2577252d04134443bb582b9985ed84b2",
}

# syslog priorities: 3 err, 4 warning, 5 notice, 6 info, 7 debug.
_KIND_PRIORITY: dict[str, int] = {
    "ban": 5,
    "unban": 5,
    "grant_opened": 5,
    "grant_closed": 5,
    "sshd_failed": 3,
    "table_restored": 4,
}
_LEVEL_PRIORITY = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

Sender = Callable[..., None]  # systemd.journal.send's shape: (MESSAGE, **FIELDS)


def notice_fields(notice: Notice) -> dict[str, str]:
    """The structured fields of one notice (values as the journal stores them: text)."""
    fields = {"GUARDIAN_EVENT": notice.kind}
    if notice.source is not None:
        fields["SOURCE_ADDRESS"] = str(notice.source)
    if notice.door:
        fields["DOOR"] = notice.door
    if notice.detail:
        fields["REASON"] = notice.detail
    message_id = MESSAGE_IDS.get(notice.kind)
    if message_id is not None:
        fields["MESSAGE_ID"] = message_id
    if notice.kind in _KIND_PRIORITY:
        fields["PRIORITY"] = str(_KIND_PRIORITY[notice.kind])
    return fields


def notice_extra(notice: Notice) -> dict[str, Any]:
    """`extra=` for logger calls: how a notice's fields reach the handler."""
    return {FIELDS_ATTRIBUTE: notice_fields(notice)}


def event_extra(kind: str, reason: str = "") -> dict[str, Any]:
    """`extra=` for the daemon's own events (sshd_started, table_restored, ...)."""
    return notice_extra(Notice(kind, None, detail=reason))


def level_priority(levelno: int) -> int:
    for level, priority in _LEVEL_PRIORITY:
        if levelno >= level:
            return priority
    return 7


class JournalHandler(logging.Handler):
    """Sends each record to the journal: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, plus the
    notice's fields when it carries them. A failed send is counted, never raised."""

    def __init__(self, sender: Sender) -> None:
        super().__init__()
        self.sender = sender
        self.failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, str] = {
            "PRIORITY": str(level_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
        }
        extra = getattr(record, FIELDS_ATTRIBUTE, None)
        if isinstance(extra, Mapping):
            fields.update({str(k): str(v) for k, v in extra.items()})
        try:
            self.sender(record.getMessage(), **fields)
        except Exception:  # logging must never take the daemon down
            self.failures += 1


def journal_sender(socket_path: Path = JOURNAL_SOCKET) -> Sender | None:
    """systemd.journal.send when python3-systemd imports and journald answers, else None."""
    if not socket_path.exists():
        return None
    try:
        from systemd import journal
    except ImportError:
        return None
    send: Sender = journal.send
    return send


def stderr_is_journal(
    environ: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> bool:
    """True when systemd connected stderr to the journal ($JOURNAL_STREAM is "DEV:INODE" of it)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


def build_handlers(
    sender: Sender | None, stderr_journal: bool, stream: TextIO | None = None
) -> list[logging.Handler]:
    """The journal handler when there is a journal; stderr lines unless they would be duplicates
    of it (always stderr when there is no journal to send to)."""
    handlers: list[logging.Handler] = []
    if sender is not None:
        handlers.append(JournalHandler(sender))
    if sender is None or not stderr_journal:
        plain = logging.StreamHandler(stream or sys.stderr)
        plain.setFormatter(logging.Formatter("guardian: %(levelname)s %(message)s"))
        handlers.append(plain)
    return handlers
