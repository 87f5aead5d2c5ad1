# The journal watcher: sshd's lines (identifiers "sshd" and "sshd-session") from the systemd
# journal, as raw JournalRecords. It decides nothing and parses nothing: guardian.parsers.sshd turns
# messages into detections. Shared by the sessions issue (Accepted / Disconnected) and the bans
# issue (failures).
#
# Why this shape (spec/sshd-events.md §1-2; checked in tests/test_journal_watcher_lab.py):
# - One systemd.journal reader with the matches SYSLOG_IDENTIFIER=sshd OR =sshd-session: on Debian
#   the unit is ssh.service, and 9.8+ logs per-connection lines as sshd-session.
# - Start at the tail: seek_tail() then one previous() (seek_tail followed by next() would return
#   the old last entry again). Resume from a saved cursor: seek_cursor() then one next() returns
#   that same entry, which was handled before the restart, so it is skipped; if it is gone
#   (vacuumed) the entry next() lands on is newer and is kept. Nothing is read twice or skipped.
# - Latency without busy polling: the reader's fd (inotify on the journal files) wakes ~0.4 s late,
#   because journald coalesces its change notifications. So the daemon waits on the fd always, and
#   *while there is activity* also polls on a short timer (poll_interval, 20 ms): note_activity(now)
#   (called by the daemon when something sshd-related happens: a connection to a guarded port opened
#   or closed, a knock) and every read that returns records keep the timer running for `active_for`
#   seconds; next_poll(now) returns None once that has passed, and an idle daemon sleeps on the fd
#   only. The fd wakes on any journal write, not only sshd's (inotify sees files, not matches), but
#   journald coalesces those to a few per second at most, and none while nothing is logged.
# - After every wake-up (fd or timer), process() first: it consumes the inotify events (otherwise
#   the fd stays readable) and picks up rotated or new journal files; then iterate, bounded by
#   max_records, so a backlog is eaten in slices (more_pending tells the daemon to come back soon).
# - history(): a second, throw-away reader that reads backward from the position the live reader
#   started at, so at start-up past "Accepted" lines of still-live connections are found, and the
#   two never overlap: history() returns entries up to the start position, read_records() after it.
# - The PID is SYSLOG_PID (the "sshd[PID]" of the line, what btmp and auth.log carry), falling back
#   to the trusted _PID; the time is __REALTIME_TIMESTAMP (when journald received the line). In the
#   lab (9.2, UsePAM yes or no) every line of one connection, pre- and post-auth, has one PID.
from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from systemd import journal

from guardian.decimal_text import short_decimal
from guardian.watchers import WatcherError

IDENTIFIERS: tuple[str, ...] = ("sshd", "sshd-session")
FAST_INTERVAL = 0.02  # seconds between timer reads while active (the fd alone lags ~0.4 s)
ACTIVE_FOR = 10.0  # seconds the timer keeps running after the last activity (covers PAM's delay)
MAX_RECORDS = 1000  # records per read_records call: a backlog is read in slices
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")  # answers while journald runs
SYSTEM_JOURNAL_DIRS = (Path("/run/log/journal"), Path("/var/log/journal"))

STAT_KEYS = (
    "untrusted",  # records not sent by a root sshd / sshd-session process (forged), dropped
    "command_unknown",  # root records kept without _COMM: the sender exited before journald looked
    "foreign_netns",  # records of an sshd living in another network namespace, dropped
    "reads",  # read_records calls
    "records",  # records returned by read_records
    "invalidations",  # process() said journal files were added or removed (rotation, vacuum)
    "sliced",  # read_records calls that stopped at max_records with more pending
    "resumed",  # 1 when open() resumed from a cursor whose entry still existed
    "resume_gap",  # 1 when the saved cursor's entry was gone (vacuumed): resumed just after it
    "history_records",  # records returned by history()
)


TRUSTED_COMMANDS = ("sshd", "sshd-session")  # _COMM values of the processes we believe


@dataclass(frozen=True)
class JournalRecord:
    """One sshd line from the journal, unparsed."""

    identifier: str  # SYSLOG_IDENTIFIER: "sshd" or "sshd-session" (sender-chosen)
    pid: int  # _PID (journald's, trusted; else SYSLOG_PID); 0 if the entry carries neither
    message: str  # MESSAGE, UTF-8 (undecodable bytes replaced)
    realtime: float  # wall-clock seconds (journald's receive time)
    cursor: str  # __CURSOR: save the last one to resume after a restart
    command: str = ""  # _COMM: the sending process's name, as journald saw it (trusted)
    uid: int | None = None  # _UID: the sending process's user (trusted)


class FastPollTimer:
    """When to read the journal on a timer: every `interval` s until `active_for` s after the
    last activity, never while idle. Pure (times are arguments, monotonic seconds)."""

    def __init__(self, interval: float = FAST_INTERVAL, active_for: float = ACTIVE_FOR) -> None:
        if not interval > 0 or active_for < 0:
            raise ValueError("the interval must be positive and active_for not negative")
        self.interval = float(interval)
        self.active_for = float(active_for)
        self._active_until = float("-inf")
        self._last_read = float("-inf")

    def note_activity(self, now: float) -> None:
        self._active_until = max(self._active_until, now + self.active_for)

    def note_read(self, now: float) -> None:
        self._last_read = now

    def active(self, now: float) -> bool:
        return now < self._active_until

    def next_poll(self, now: float) -> float | None:
        """The next timer read (`now` when already due), or None while idle."""
        if not self.active(now):
            return None
        # Never later than the end of the active period, so the last read happens in it.
        return max(now, min(self._last_read + self.interval, self._active_until))


def _netns_inode(pid: int) -> int | None:
    """The inode of a process's network namespace, or None when it cannot be read (gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


class JournalWatcher:
    """sshd's journal lines for one event loop: fd plus a short timer while active.

    open() positions the reader (tail, or just after `cursor`); then call read_records() when
    fileno() is readable and whenever next_poll(now) is due. `path` reads the journal files of one
    directory instead of the local system journal. Failures are WatcherError."""

    def __init__(
        self,
        identifiers: Sequence[str] = IDENTIFIERS,
        cursor: str | None = None,
        path: str | None = None,
        *,
        fast_interval: float = FAST_INTERVAL,
        active_for: float = ACTIVE_FOR,
        journal_socket: Path | None = JOURNAL_SOCKET,
        own_netns_only: bool = True,
        trusted_commands: Sequence[str] | None = TRUSTED_COMMANDS,
    ) -> None:
        # SYSLOG_IDENTIFIER is chosen by the sender: any local user can `logger -t sshd` a fake
        # "Accepted ..." line. Only lines that journald itself saw come from a root process named
        # sshd / sshd-session (_COMM, _UID: fields the sender cannot set) are believed. None
        # turns the check off (tests reading their own `logger` lines).
        self._trusted_commands = None if trusted_commands is None else frozenset(trusted_commands)
        # The journal is one per machine, but network namespaces (containers, labs) each have
        # their own sshd and their own guardian: lines of an sshd living in another namespace
        # are not ours. A process already gone cannot be asked and is kept.
        self._own_netns = _netns_inode(os.getpid()) if own_netns_only else None
        idents = tuple(identifiers)
        if not idents or any(not i or "=" in i or "\n" in i for i in idents):
            raise ValueError(f"identifiers must be non-empty names, got {identifiers!r}")
        self.identifiers = idents
        self.timer = FastPollTimer(fast_interval, active_for)
        self._path = path
        # Only the system journal is written by a journald we can ask; a directory may be a copy.
        self._journal_socket = journal_socket if path is None else None
        self._reader: Any = None
        self._anchor: str | None = None  # the entry the live reader started after (or None)
        self._last_cursor: str | None = cursor
        self._held = False  # the reader stands on an entry not yet returned (after a resume gap)
        self._reseek = False  # the last read reached the end: resume from _last_cursor
        self._opened_at_usec: int | None = None  # when opened with no entry to anchor on
        self._more_pending = False
        self._counts = dict.fromkeys(STAT_KEYS, 0)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open the journal and position the reader; WatcherError if there is nothing to read.

        The first open starts at the tail, or just after the `cursor` given; opening again after
        close() resumes just after last_cursor, so nothing is lost or repeated across a reopen."""
        if self._reader is not None:
            raise WatcherError("journal watcher: already open")
        self._check_source()
        reader = self._new_reader()
        try:
            self._position(reader)
        except BaseException:
            reader.close()
            raise
        self._reader = reader

    def close(self) -> None:
        """Close the reader (counters and last_cursor survive). Idempotent."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> JournalWatcher:
        self.open()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The fd to wait on for readability (inotify on the journal files)."""
        fd: int = self._open_reader().fileno()
        return fd

    # -- the timer ---------------------------------------------------------------------------
    @property
    def poll_interval(self) -> float:
        """Seconds between timer reads while active."""
        return self.timer.interval

    def note_activity(self, now: float) -> None:
        """Something sshd-related happened (monotonic `now`): poll fast for `active_for` s."""
        self.timer.note_activity(now)

    def next_poll(self, now: float) -> float | None:
        """When read_records() should run next regardless of the fd (monotonic, never before
        `now`; `now` means at once), or None while idle: then wait on the fd alone."""
        if self._reader is None:
            return None
        if self._more_pending:
            return now
        return self.timer.next_poll(now)

    @property
    def more_pending(self) -> bool:
        """The last read_records() stopped at max_records: more records are waiting."""
        return self._more_pending

    # -- reading -----------------------------------------------------------------------------
    @property
    def last_cursor(self) -> str | None:
        """Cursor of the last record read_records() returned (initially the start position):
        store it, and pass it as `cursor` after a restart."""
        return self._last_cursor

    def read_records(
        self, max_records: int = MAX_RECORDS, *, now: float | None = None
    ) -> list[JournalRecord]:
        """The new records (at most max_records), oldest first; never blocks.

        `now` is the loop's monotonic clock (default time.monotonic()): the read is remembered
        for next_poll(), and records found keep the fast timer running."""
        reader = self._open_reader()
        records: list[JournalRecord] = []
        try:
            if reader.process() == journal.INVALIDATE:
                self._counts["invalidations"] += 1
            if self._held and max_records > 0:
                self._held = False
                records.append(_record(reader))
            elif self._reseek and self._last_cursor is not None and max_records > 0:
                # sd-journal (systemd 252) can lose its place once next() has hit the end with
                # matches and entries are appended: the first new one was skipped about once in
                # fifteen opens. Resume from our own cursor instead: seek to it, step past it.
                reader.seek_cursor(self._last_cursor)
                if reader._next(1) and not reader.test_cursor(self._last_cursor):
                    records.append(_record(reader))  # our entry is gone (vacuumed): this is new
            elif self._reseek and self._opened_at_usec is not None:
                # No matching entry existed when we opened, so no cursor to resume from: start
                # at the moment of opening (journald stamps entries when it receives them).
                reader.seek_realtime(self._opened_at_usec)
            self._reseek = False
            while len(records) < max_records and reader._next(1):
                records.append(_record(reader))
            if len(records) < max_records:
                self._reseek = True  # reached the end: next time, start from the cursor
        except OSError as error:
            raise WatcherError(f"journal watcher: reading the journal: {error}") from error
        self._more_pending = len(records) >= max_records > 0
        self._counts["reads"] += 1
        self._counts["records"] += len(records)
        self._counts["sliced"] += int(self._more_pending)
        if records:
            self._last_cursor = records[-1].cursor
        records = self._ours(records)
        if now is None:
            now = time.monotonic()
        self.timer.note_read(now)
        if records:
            self.timer.note_activity(now)
        return records

    def _ours(self, records: list[JournalRecord]) -> list[JournalRecord]:
        """Drop records not written by a root sshd (forged), and those of an sshd living in
        another network namespace."""
        if self._trusted_commands is not None and records:
            trusted = self._trusted_commands
            genuine = [r for r in records if _sent_by_root_sshd(r, trusted)]
            self._counts["untrusted"] += len(records) - len(genuine)
            self._counts["command_unknown"] += sum(1 for r in genuine if not r.command)
            records = genuine
        if self._own_netns is None or not records:
            return records
        kept = [r for r in records if _netns_inode(r.pid) in (None, self._own_netns)]
        self._counts["foreign_netns"] += len(records) - len(kept)
        return kept

    def history(self, since_realtime: float, max_records: int = MAX_RECORDS) -> list[JournalRecord]:
        """Records from `since_realtime` (wall seconds) up to where the live reading started,
        oldest first; at most the newest max_records. For start-up: which live connections have
        an "Accepted" line. Uses its own reader; the live position is not touched."""
        self._open_reader()
        if self._anchor is None or max_records <= 0:
            return []
        reader = self._new_reader()
        found: list[JournalRecord] = []
        try:
            reader.seek_cursor(self._anchor)
            if not (reader._next(1) and reader.test_cursor(self._anchor)):
                # The anchor entry is gone (vacuumed): step back to the last one before it.
                stepped = reader._previous(1)
            else:
                stepped = True
            while stepped and len(found) < max_records:
                record = _record(reader)
                if record.realtime < since_realtime:
                    break
                found.append(record)
                stepped = reader._previous(1)
        except (OSError, ValueError) as error:
            raise WatcherError(f"journal watcher: reading history: {error}") from error
        finally:
            reader.close()
        found.reverse()
        found = self._ours(found)
        self._counts["history_records"] += len(found)
        return found

    def stats(self) -> dict[str, int]:
        """Counters since construction (keys: STAT_KEYS)."""
        return dict(self._counts)

    # -- internals ---------------------------------------------------------------------------
    def _open_reader(self) -> Any:
        if self._reader is None:
            raise WatcherError("journal watcher: not open")
        return self._reader

    def _check_source(self) -> None:
        if self._path is not None:
            directory = Path(self._path)
            if not directory.is_dir():
                raise WatcherError(f"journal watcher: {directory} is not a directory")
            if not any(directory.rglob("*.journal")):
                raise WatcherError(f"journal watcher: no journal files in {directory}")
            return
        if self._journal_socket is not None and not _socket_answers(self._journal_socket):
            raise WatcherError(
                f"journal watcher: systemd-journald is not running ({self._journal_socket} "
                "does not answer): sshd's lines reach no journal"
            )

    def _new_reader(self) -> Any:
        try:
            if self._path is None:
                reader = journal._Reader(journal.LOCAL_ONLY, None, None, None)
            else:
                reader = journal._Reader(0, self._path, None, None)
        except OSError as error:
            raise WatcherError(f"journal watcher: cannot open the journal: {error}") from error
        if self._path is None and not (reader.has_runtime_files() or reader.has_persistent_files()):
            reader.close()
            raise WatcherError(f"journal watcher: {_why_no_files()}")
        try:
            for number, identifier in enumerate(self.identifiers):
                if number:
                    reader.add_disjunction()
                reader.add_match(f"SYSLOG_IDENTIFIER={identifier}")
        except OSError as error:
            reader.close()
            raise WatcherError(f"journal watcher: cannot filter the journal: {error}") from error
        return reader

    def _position(self, reader: Any) -> None:
        cursor = self._last_cursor
        self._held = False
        self._reseek = True
        self._more_pending = False
        try:
            if cursor is None:
                self._opened_at_usec = int(time.time() * 1_000_000)
                reader.seek_tail()
                # The last matching entry, if any: everything after it is new.
                self._anchor = reader._get_cursor() if reader._previous(1) else None
                self._last_cursor = self._anchor
                return
            try:
                reader.seek_cursor(cursor)
            except ValueError as error:
                raise WatcherError(f"journal watcher: bad saved cursor: {error}") from error
            self._anchor = cursor
            if reader._next(1):
                if reader.test_cursor(cursor):
                    self._counts["resumed"] = 1  # the saved entry itself: handled before
                else:
                    self._counts["resume_gap"] = 1
                    self._held = True  # a newer entry: the first read returns it
        except OSError as error:
            raise WatcherError(f"journal watcher: cannot position the reader: {error}") from error


def _sent_by_root_sshd(record: JournalRecord, trusted: frozenset[str]) -> bool:
    """Whether journald's own fields say a root sshd sent the line. _UID comes from the kernel
    (SCM_CREDENTIALS) and cannot be forged by an unprivileged user; _COMM is read by journald from
    /proc/PID/comm *after* the fact, so it is missing when the sender already exited: sshd's child
    for a connection closed before the banner logs its last line and exits within microseconds,
    and on a loaded machine journald then records no _COMM (seen in CI: the "Connection closed by
    ADDR" line of exactly that case was dropped as forged). Root is trusted anyway, so a root line
    without _COMM is kept; a root line with another _COMM (`logger -t sshd`) is not sshd's."""
    if record.uid != 0:
        return False
    return record.command in trusted or not record.command


def _record(reader: Any) -> JournalRecord:
    fields = {}
    for name in ("SYSLOG_IDENTIFIER", "SYSLOG_PID", "_PID", "_COMM", "_UID", "MESSAGE"):
        try:
            fields[name] = bytes(reader._get(name)).decode("utf-8", errors="replace")
        except KeyError:
            fields[name] = ""
    # _PID, _COMM and _UID are journald's own (trusted) fields, taken from the sending process;
    # SYSLOG_PID and SYSLOG_IDENTIFIER are whatever the sender wrote (`logger --id -t sshd`).
    pid = _small_number(fields["_PID"])
    return JournalRecord(
        identifier=fields["SYSLOG_IDENTIFIER"],
        pid=_small_number(fields["SYSLOG_PID"]) or 0 if pid is None else pid,
        message=fields["MESSAGE"],
        realtime=int(reader._get_realtime()) / 1e6,
        cursor=str(reader._get_cursor()),
        command=fields["_COMM"],
        uid=_small_number(fields["_UID"]),
    )


def _small_number(text: str) -> int | None:
    """A PID or UID field as a number, or None. SYSLOG_PID is whatever the sender wrote: a forged
    line must be dropped, never raise into the event loop."""
    return short_decimal(text, 10)


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _why_no_files() -> str:
    if os.geteuid() != 0 and any(d.is_dir() for d in SYSTEM_JOURNAL_DIRS):
        return (
            "no readable journal files: reading the system journal needs root "
            "or the systemd-journal group"
        )
    return "no journal files in /run/log/journal or /var/log/journal"
