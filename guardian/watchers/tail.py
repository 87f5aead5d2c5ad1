# Following one log file by name, across rotation, for one event loop: an inotify fd to wait on, and
# read() returning the new *whole* units (lines, or fixed-size records) since the last call, bounded
# per call. Shared by the btmp and auth.log watchers; it knows nothing of what the units mean.
#
# Theory of operation (spec/platform.md "Log files with inotify-simple"):
# - One inotify fd per follower, watching the directory (CREATE | MOVED_TO | MOVED_FROM | DELETE:
#   our name appearing or going) and each open file's inode (MODIFY | MOVE_SELF | DELETE_SELF |
#   ATTRIB). The file watch is added through /proc/self/fd/N, so it is on exactly the inode we
#   hold open, even if the name was rotated in between. Events are only wake-ups: every read()
#   re-checks the truth (stat of the name, fstat of the fds), so a missed, merged or overflowed
#   event cannot lose data.
# - The offset kept per file is the end of the last whole unit returned. A partial unit (a record
#   or line still being written) is not consumed: it stays in the file and is read again next time.
#   So position() is always on a unit boundary, and nothing needs to be buffered here.
# - Rename rotation (logrotate `create`, also delete-and-recreate): when the name points to another
#   inode, the old file becomes a "previous" file and the new one is read from 0. The writer may go
#   on appending to the old file until it reopens (rsyslog until its HUP; an sshd that opened btmp
#   just before the rename), so the old file is read first, to its end, before the new one on every
#   call; it is closed only once the new file has been read from for `rotate_grace` seconds
#   (lazily, on a later read: no timer). At most MAX_PREVIOUS are kept.
# - copytruncate: the file is truncated under us. Seen as size < offset, or — when the writer has
#   refilled it past our offset before we looked — as the bytes just before our offset no longer
#   being the ones we read (a check of TAIL_CHECK bytes). Then the copy (NAME.1) is read from our
#   offset if its bytes there match what we read (lines between our last read and the copy are not
#   lost), and the file from 0. Lines written after the copy and before the truncation, that we had
#   not read yet, exist nowhere any more: logrotate itself loses them. Reading on every MODIFY
#   makes that window small; it cannot be closed. Identical units (two byte-identical btmp records
#   at the same offset) can hide a truncation from the content check; the size check remains.
# - Start: with no saved position, at the END of a file present at start (never replaying history,
#   and O(1) however large the file is); a file that appears later is new, so it is read from 0.
#   With a saved position (dev, inode, offset and a CRC of the bytes before the offset), resume if
#   the same file is still there and unchanged up to the offset; if it was rotated while we were
#   down, read the rest of NAME.1 (when it is that file) and then the new file from 0.
# - Bounded: at most `max_bytes` per read() call; `more_pending` says to call again soon (no inotify
#   event will come for data already written).
from __future__ import annotations

import errno
import os
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify, flags

from guardian.watchers import WatcherError

MAX_BYTES = 1 << 20  # per read() call: a huge append cannot stall the loop
MAX_LINE = 64 * 1024  # a "line" this long without a newline is cut (counted as overlong)
ROTATE_GRACE = 2.0  # seconds an old file is still read after the new one got data
MAX_PREVIOUS = 4  # rotated files still read at once (more: the oldest is closed)
TAIL_CHECK = 64  # bytes before the offset compared to detect a truncated-and-refilled file
DIR_MASK = flags.CREATE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE | flags.ONLYDIR
FILE_MASK = flags.MODIFY | flags.MOVE_SELF | flags.DELETE_SELF | flags.ATTRIB
POSITION_VERSION = "v1"

STAT_KEYS = (
    "reads",  # read() calls
    "bytes",  # bytes of whole units returned
    "rotations",  # the name came to point at another file (rename rotation, delete + create)
    "truncations",  # the open file was truncated (copytruncate)
    "recovered",  # after a truncation or restart, the rest was read from the rotated copy NAME.1
    "retired",  # rotated files closed after their grace
    "appeared",  # the file did not exist at some point and then did
    "dropped_partial",  # bytes of an unfinished record left in a retired file (lines: emitted)
    "overlong",  # lines cut at MAX_LINE
    "dropped_rotated",  # rotated files closed unread because more than MAX_PREVIOUS piled up
    "started_at_end",  # 1 when the follower started at the end of an existing file
    "resumed",  # 1 when a saved position was resumed in the same file
    "resume_rotated",  # 1 when a saved position was found in NAME.1 (rotated while down)
    "resume_lost",  # 1 when the saved file was found nowhere (read the current file from 0)
    "inotify_overflows",  # the kernel's event queue overflowed (harmless: read() re-checks)
)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a follower stands: the file (device, inode) and the offset just after the last whole
    unit returned, with a CRC32 of the (up to TAIL_CHECK) bytes before it. (0, 0, 0, 0): nothing
    was open (the file did not exist)."""

    dev: int
    ino: int
    offset: int
    crc: int

    def serialise(self) -> str:
        return f"{POSITION_VERSION} {self.dev} {self.ino} {self.offset} {self.crc:08x}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """The inverse of serialise(); ValueError for anything else."""
        parts = text.split()
        if len(parts) != 5 or parts[0] != POSITION_VERSION:
            raise ValueError(f"not a file position: {text!r}")
        try:
            dev, ino, offset, crc = int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4], 16)
        except ValueError:
            raise ValueError(f"not a file position: {text!r}") from None
        if min(dev, ino, offset, crc) < 0 or crc > 0xFFFFFFFF:
            raise ValueError(f"not a file position: {text!r}")
        return cls(dev, ino, offset, crc)


@dataclass(slots=True)
class _File:
    """One open file being read. `offset`: end of the last whole unit returned."""

    fd: int
    dev: int
    ino: int
    offset: int
    wd: int | None = None
    size: int = 0  # st_size at the last fstat
    mtime: float = 0.0
    tail: bytes = b""  # the (up to TAIL_CHECK) bytes before offset, as read
    static: bool = False  # a rotated copy nobody writes: close it at its end
    started_at: float | None = None  # monotonic time this file first returned data
    at_end: bool = False  # the last read reached the end (only a partial unit may remain)


class FileFollower:
    """Follow `path` by name; read() returns the new whole units as bytes.

    record_size: fixed-size records (btmp: 384); None: newline-terminated lines.
    start: a position() string saved earlier (resume), or None (start at the end of the file
    if it exists now; a file created later is read from 0). ValueError if malformed.
    rotated_name: the name logrotate gives the previous file (default NAME.1), read to recover
    data after a truncation or a rotation while we were down.
    Errors from the system are WatcherError (a missing directory, a file we may not read)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        record_size: int | None = None,
        start: str | None = None,
        max_bytes: int = MAX_BYTES,
        rotate_grace: float = ROTATE_GRACE,
        rotated_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if record_size is not None and record_size <= 0:
            raise ValueError("record_size must be positive (or None for lines)")
        unit = record_size or MAX_LINE
        if max_bytes < unit:
            raise ValueError(f"max_bytes must hold at least one unit ({unit} bytes)")
        self.path = Path(path)
        self.record_size = record_size
        self.max_bytes = max_bytes
        self.rotate_grace = rotate_grace
        self.rotated_path = self.path.with_name(rotated_name or self.path.name + ".1")
        self._clock = clock
        self._pending_start = Position.parse(start) if start is not None else None
        self._counts = dict.fromkeys(STAT_KEYS, 0)
        self._current: _File | None = None
        self._previous: list[_File] = []
        self._more_pending = False
        self._closed = False
        self._inotify = INotify(nonblocking=True)
        try:
            self._dir_wd = self._inotify.add_watch(self.path.parent, DIR_MASK)
        except OSError as error:
            self._inotify.close()
            raise WatcherError(f"cannot watch {self.path.parent}: {error.strerror}") from error
        try:
            self._open_initial()
        except BaseException:
            self.close()
            raise

    # -- the loop's interface ----------------------------------------------------------------
    def fileno(self) -> int:
        """The inotify fd: readable when the file or its directory changed."""
        fd: int = self._inotify.fileno()
        return fd

    @property
    def more_pending(self) -> bool:
        """The last read() stopped at max_bytes: call it again without waiting for the fd."""
        return self._more_pending

    @property
    def exists(self) -> bool:
        """A file is open (False while waiting for it to be created)."""
        return self._current is not None

    @property
    def mtime(self) -> float | None:
        """Modification time (epoch seconds) of the current file at the last read."""
        return self._current.mtime if self._current is not None else None

    def read(self) -> bytes:
        """The whole units written since the last call (at most max_bytes), oldest first: the
        rest of rotated files (and of a copy after a truncation), then the current file. Never
        blocks."""
        if self._closed:
            raise WatcherError(f"follower of {self.path} is closed")
        self._counts["reads"] += 1
        self._drain_events()
        now = self._clock()
        self._check_name()
        current = self._current
        if current is not None:
            self._check_truncation(current)
        budget = self.max_bytes
        out: list[bytes] = []
        behind = False
        for old in list(self._previous):
            data = self._read_file(old, budget, now)
            out.append(data)
            budget -= len(data)
            if not old.at_end:
                behind = True  # the newer files wait: order is kept
                break
            if self._may_retire(old, now):
                out.append(self._retire(old))
        if current is not None and not behind:
            out.append(self._read_file(current, budget, now))
            behind = not current.at_end
        self._more_pending = behind
        data = b"".join(out)
        self._counts["bytes"] += len(data)
        return data

    def position(self) -> str:
        """Serialised position after the last unit returned: save it, pass it as `start`."""
        return self._position().serialise()

    def stats(self) -> dict[str, int]:
        """Counters since construction (keys: STAT_KEYS)."""
        return dict(self._counts)

    def close(self) -> None:
        """Close every fd (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for f in [*self._previous, *([self._current] if self._current else [])]:
            os.close(f.fd)
        self._previous.clear()
        self._current = None
        self._inotify.close()

    def __enter__(self) -> FileFollower:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- opening -----------------------------------------------------------------------------
    def _open_initial(self) -> None:
        opened = self._open_path()
        if opened is None:
            return  # wait for CREATE / MOVED_TO
        if self._pending_start is None:
            opened.offset = self._end_offset(opened)
            opened.tail = self._bytes_before(opened.fd, opened.offset)
            self._counts["started_at_end"] = 1
            self._install(opened)
        else:
            self._resume(opened, self._pending_start)
        self._pending_start = None

    def _open_path(self) -> _File | None:
        """Open the file the name points to now (None if there is none)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise WatcherError(f"cannot open {self.path}: {error.strerror}") from error
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise WatcherError(f"{self.path} is not a regular file")
        return _File(fd, st.st_dev, st.st_ino, 0, size=st.st_size, mtime=st.st_mtime)

    def _install(self, f: _File) -> None:
        f.wd = self._watch(f)
        self._current = f

    def _watch(self, f: _File) -> int:
        try:
            wd: int = self._inotify.add_watch(f"/proc/self/fd/{f.fd}", FILE_MASK)
        except OSError as error:
            raise WatcherError(f"cannot watch {self.path}: {error.strerror}") from error
        return wd

    def _end_offset(self, f: _File) -> int:
        """Where "the end" is at start: after the last whole unit."""
        size = f.size
        if self.record_size is not None:
            return size - size % self.record_size
        window = min(size, MAX_LINE)
        if not window:
            return 0
        data = os.pread(f.fd, window, size - window)
        cut = data.rfind(b"\n")
        # No newline in the last MAX_LINE bytes: not a line file we can align in; start at end.
        return size - window + cut + 1 if cut >= 0 else size

    def _resume(self, opened: _File, saved: Position) -> None:
        same = (opened.dev, opened.ino) == (saved.dev, saved.ino)
        if same and self._matches(opened.fd, opened.size, saved):
            opened.offset = saved.offset
            opened.tail = self._bytes_before(opened.fd, saved.offset)
            self._counts["resumed"] = 1
            self._install(opened)
            return
        # Rotated (renamed: NAME.1 is that inode) or copytruncated (NAME.1 is a copy holding
        # the same bytes before the offset) while we were down: finish NAME.1, then NAME from 0.
        copy = self._open_rotated(saved, allow_other_inode=same)
        if copy is not None:
            self._counts["resume_rotated"] = 1
            self._previous.append(copy)
        elif saved.ino:
            self._counts["resume_lost"] = 1
        self._install(opened)

    def _open_rotated(self, saved: Position, *, allow_other_inode: bool) -> _File | None:
        """NAME.1 positioned at saved.offset if it holds the saved file's bytes there."""
        try:
            fd = os.open(self.rotated_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        renamed = (st.st_dev, st.st_ino) == (saved.dev, saved.ino)
        if (
            not stat.S_ISREG(st.st_mode)
            or not (renamed or allow_other_inode)
            or (self._current is not None and st.st_ino == self._current.ino)
            or not self._matches(fd, st.st_size, saved)
        ):
            os.close(fd)
            return None
        copy = _File(fd, st.st_dev, st.st_ino, saved.offset, size=st.st_size, mtime=st.st_mtime)
        copy.tail = self._bytes_before(fd, saved.offset)
        copy.static = not renamed  # a copy is never written again; a renamed file may be
        copy.wd = self._watch(copy)
        return copy

    @staticmethod
    def _bytes_before(fd: int, offset: int) -> bytes:
        start = max(0, offset - TAIL_CHECK)
        return os.pread(fd, offset - start, start) if offset else b""

    def _matches(self, fd: int, size: int, saved: Position) -> bool:
        if size < saved.offset:
            return False
        return zlib.crc32(self._bytes_before(fd, saved.offset)) == saved.crc

    # -- watching the name -------------------------------------------------------------------
    def _drain_events(self) -> None:
        for event in self._inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                self._counts["inotify_overflows"] += 1

    def _check_name(self) -> None:
        """Has the name come to point at another file (or at one at all)?"""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # rotated away and not re-created yet: keep reading what we have
        except OSError as error:
            raise WatcherError(f"cannot stat {self.path}: {error.strerror}") from error
        current = self._current
        if current is not None and (st.st_dev, st.st_ino) == (current.dev, current.ino):
            return
        opened = self._open_path()
        if opened is None:
            return
        if current is None:
            self._counts["appeared"] += 1
            if self._pending_start is not None:
                self._resume(opened, self._pending_start)
                self._pending_start = None
            else:
                self._install(opened)  # created after we started: all of it is new
            return
        if (opened.dev, opened.ino) == (current.dev, current.ino):
            os.close(opened.fd)  # raced back to the same file
            return
        self._counts["rotations"] += 1
        self._previous.append(current)
        while len(self._previous) > MAX_PREVIOUS:
            self._counts["dropped_rotated"] += 1  # rotating faster than we can read: give up one
            self._retire(self._previous[0])
        self._install(opened)

    def _check_truncation(self, f: _File) -> None:
        st = os.fstat(f.fd)
        f.size, f.mtime = st.st_size, st.st_mtime
        if f.offset == 0:
            return
        if st.st_size >= f.offset and os.pread(f.fd, len(f.tail), f.offset - len(f.tail)) == (
            f.tail
        ):
            return
        self._counts["truncations"] += 1
        saved = Position(f.dev, f.ino, f.offset, zlib.crc32(f.tail))
        copy = self._open_rotated(saved, allow_other_inode=True)
        if copy is not None:
            copy.static = True
            self._counts["recovered"] += 1
            self._previous.append(copy)
        f.offset, f.tail, f.started_at = 0, b"", None

    # -- reading -----------------------------------------------------------------------------
    def _read_file(self, f: _File, budget: int, now: float) -> bytes:
        st = os.fstat(f.fd)
        f.size, f.mtime = st.st_size, st.st_mtime
        available = st.st_size - f.offset
        if available <= 0 or budget <= 0:
            f.at_end = available <= 0
            return b""
        n = min(available, budget)
        data = os.pread(f.fd, n, f.offset)
        # At the end when the read reached the file's end (what stays is a partial unit), or the
        # file shrank under us (the next call's truncation check sees that).
        f.at_end = n == available or len(data) < n
        whole = self._whole(data)
        if not whole:
            return b""
        chunk = data[:whole]
        self._advance(f, chunk, now)
        return chunk

    def _whole(self, data: bytes) -> int:
        """How many leading bytes of `data` are whole units."""
        if self.record_size is not None:
            return len(data) - len(data) % self.record_size
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) >= MAX_LINE:
            self._counts["overlong"] += 1
            return MAX_LINE
        return cut

    def _advance(self, f: _File, chunk: bytes, now: float) -> None:
        f.offset += len(chunk)
        f.tail = (f.tail + chunk[-TAIL_CHECK:])[-TAIL_CHECK:]
        if f.started_at is None:
            f.started_at = now

    def _may_retire(self, old: _File, now: float) -> bool:
        if old.static:
            return True
        current = self._current
        return (
            current is not None
            and current.started_at is not None
            and now - current.started_at >= self.rotate_grace
        )

    def _retire(self, old: _File) -> bytes:
        """Close a rotated file; an unterminated last line in it is returned as a line."""
        rest = b""
        try:
            size = os.fstat(old.fd).st_size
            if size > old.offset:
                tail = os.pread(old.fd, min(size - old.offset, MAX_LINE), old.offset)
                if self.record_size is None:
                    rest = tail + b"\n"
                else:
                    self._counts["dropped_partial"] += len(tail)
        finally:
            if old.wd is not None:
                try:
                    self._inotify.rm_watch(old.wd)
                except OSError as error:  # EINVAL: the kernel removed it (inode gone)
                    if error.errno != errno.EINVAL:
                        raise
            os.close(old.fd)
            self._previous.remove(old)
            self._counts["retired"] += 1
        return rest

    def _position(self) -> Position:
        # The first file not yet passed: a rotated file is passed once the file after it has
        # returned data (then only late appends, read during the grace, are still expected).
        current = self._current
        for old in self._previous:
            if old.static or current is None or current.offset == 0:
                return Position(old.dev, old.ino, old.offset, zlib.crc32(old.tail))
        if current is None:
            return self._pending_start or Position(0, 0, 0, 0)
        return Position(current.dev, current.ino, current.offset, zlib.crc32(current.tail))


__all__ = [
    "FILE_MASK",
    "MAX_BYTES",
    "MAX_LINE",
    "ROTATE_GRACE",
    "STAT_KEYS",
    "FileFollower",
    "Position",
]
