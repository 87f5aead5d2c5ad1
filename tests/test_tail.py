# FileFollower (guardian/watchers/tail.py) on real files in a temp directory, no root: start at the
# end, partial units, rename rotation with late writes to the old file, copytruncate (also refilled
# past our offset, and recovery from NAME.1), delete and recreate, a file created later, resume from
# a saved position (same file, rotated while down, copytruncated while down), bounded reads and
# the inotify fd waking the loop.
from __future__ import annotations

import os
import select
import shutil
from pathlib import Path

import pytest

from guardian.watchers import WatcherError
from guardian.watchers.tail import MAX_LINE, FileFollower, Position


class Clock:
    """A hand-moved monotonic clock (the rotation grace is measured on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def append(path: Path, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    with path.open("ab") as out:
        out.write(raw)


def readable(follower: FileFollower, timeout: float = 1.0) -> bool:
    return bool(select.select([follower.fileno()], [], [], timeout)[0])


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "auth.log"


def test_starts_at_end_and_reads_only_new_lines(log: Path) -> None:
    log.write_text("history 1\nhistory 2\n")
    with FileFollower(log) as f:
        assert f.read() == b""
        assert f.stats()["started_at_end"] == 1
        append(log, "new 1\nnew 2\n")
        assert readable(f)
        assert f.read() == b"new 1\nnew 2\n"
        assert f.read() == b""


def test_start_at_end_aligns_to_the_last_whole_line(log: Path) -> None:
    log.write_text("history\nhalf of a li")
    with FileFollower(log) as f:
        append(log, "ne\nnext\n")
        assert f.read() == b"half of a line\nnext\n"


def test_partial_line_is_kept_until_its_newline(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "one\ntw")
        assert f.read() == b"one\n"
        before = f.position()
        assert f.read() == b""
        append(log, "o\n")
        assert f.read() == b"two\n"
        assert f.position() != before


def test_partial_record_is_kept_until_complete(tmp_path: Path) -> None:
    path = tmp_path / "btmp"
    path.write_bytes(b"x" * 10)  # one record of history and a partial one: start at 8
    with FileFollower(path, record_size=8) as f:
        append(path, b"y" * 3)
        assert f.read() == b""
        append(path, b"z" * 10)
        assert f.read() == b"xxyyyzzz"
        assert f.read() == b""
        append(path, b"w")
        assert f.read() == b"zzzzzzzw"
        assert Position.parse(f.position()).offset == 24


def test_file_created_later_is_read_from_start(log: Path) -> None:
    with FileFollower(log) as f:
        assert not f.exists
        assert f.read() == b""
        log.write_text("first\n")
        assert readable(f)
        assert f.read() == b"first\n"
        assert f.stats()["appeared"] == 1


def test_rename_rotation_reads_the_old_file_to_its_end_first(log: Path) -> None:
    clock = Clock()
    log.write_text("")
    with FileFollower(log, clock=clock, rotate_grace=2.0) as f:
        append(log, "a1\n")
        assert f.read() == b"a1\n"
        rotated = log.with_name("auth.log.1")
        log.rename(rotated)
        append(rotated, "a2\n")  # the writer has not reopened yet
        log.write_text("")  # logrotate's create
        assert readable(f)
        assert f.read() == b"a2\n"
        append(rotated, "a3\n")  # still the old file
        assert f.read() == b"a3\n"
        append(log, "b1\n")  # reopened: writes go to the new file
        assert f.read() == b"b1\n"
        append(rotated, "a4\n")  # a late writer that opened before the rename (within grace)
        assert f.read() == b"a4\n"
        clock.now += 2.5
        assert f.read() == b""
        st = f.stats()
        assert (st["rotations"], st["retired"]) == (1, 1)
        append(rotated, "a5\n")  # after the grace the old file is closed
        append(log, "b2\n")
        assert f.read() == b"b2\n"


def test_retired_file_with_an_unterminated_line_yields_it(log: Path) -> None:
    clock = Clock()
    log.write_text("")
    with FileFollower(log, clock=clock, rotate_grace=1.0) as f:
        append(log, "a1\nunterminated")
        assert f.read() == b"a1\n"
        log.rename(log.with_name("auth.log.1"))
        log.write_text("b1\n")
        assert f.read() == b"b1\n"
        clock.now += 1.5
        assert f.read() == b"unterminated\n"


def test_delete_and_recreate(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a\n")
        assert f.read() == b"a\n"
        log.unlink()
        assert readable(f)
        assert f.read() == b""
        log.write_text("b\n")
        assert readable(f)
        assert f.read() == b"b\n"
        assert f.stats()["rotations"] == 1


def test_copytruncate_reads_from_zero_after_truncation(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a1\na2\n")
        assert f.read() == b"a1\na2\n"
        shutil.copyfile(log, log.with_name("auth.log.1"))
        os.truncate(log, 0)
        append(log, "b1\n")
        assert f.read() == b"b1\n"
        assert f.stats()["truncations"] == 1


def test_copytruncate_refilled_past_our_offset_is_detected(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a1\n")
        assert f.read() == b"a1\n"
        os.truncate(log, 0)
        append(log, "b-longer-line\n")  # bigger than what we had read: size alone misses it
        assert f.read() == b"b-longer-line\n"
        assert f.stats()["truncations"] == 1


def test_copytruncate_recovers_unread_lines_from_the_copy(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a1\n")
        assert f.read() == b"a1\n"
        append(log, "a2\na3\n")  # written, not read yet, then copied and truncated
        shutil.copyfile(log, log.with_name("auth.log.1"))
        os.truncate(log, 0)
        append(log, "b1\n")
        assert f.read() == b"a2\na3\nb1\n"
        st = f.stats()
        assert (st["truncations"], st["recovered"]) == (1, 1)


def test_resume_in_the_same_file(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a1\n")
        assert f.read() == b"a1\n"
        saved = f.position()
    append(log, "a2\n")  # written while we were down
    with FileFollower(log, start=saved) as f:
        assert f.stats()["resumed"] == 1
        assert f.read() == b"a2\n"


def test_resume_after_rotation_while_down(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a1\n")
        assert f.read() == b"a1\n"
        saved = f.position()
    append(log, "a2\n")
    log.rename(log.with_name("auth.log.1"))
    log.write_text("b1\n")
    with FileFollower(log, start=saved) as f:
        assert f.stats()["resume_rotated"] == 1
        assert f.read() == b"a2\nb1\n"


def test_resume_after_copytruncate_while_down(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a1\n")
        assert f.read() == b"a1\n"
        saved = f.position()
    append(log, "a2\n")
    shutil.copyfile(log, log.with_name("auth.log.1"))
    os.truncate(log, 0)
    append(log, "b1-and-more\n")
    with FileFollower(log, start=saved) as f:
        assert f.stats()["resume_rotated"] == 1
        assert f.read() == b"a2\nb1-and-more\n"


def test_resume_when_the_saved_file_is_gone_reads_the_new_file(log: Path) -> None:
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a1\n")
        f.read()
        saved = f.position()
    log.unlink()
    log.write_text("b1\n")
    with FileFollower(log, start=saved) as f:
        assert f.read() == b"b1\n"
        assert f.stats()["resume_lost"] == 1


def test_resume_position_while_the_file_was_missing(log: Path) -> None:
    with FileFollower(log) as f:
        saved = f.position()
    log.write_text("created while down\n")
    with FileFollower(log, start=saved) as f:
        assert f.read() == b"created while down\n"


def test_position_during_rotation_points_at_the_old_file(log: Path) -> None:
    """Saved while the old file is still being drained (new one empty): a restart reads the old
    file's rest, then the new file: nothing lost, nothing twice."""
    log.write_text("")
    with FileFollower(log) as f:
        append(log, "a1\n")
        f.read()
        log.rename(log.with_name("auth.log.1"))
        log.write_text("")
        assert f.read() == b""
        saved = f.position()
    append(log.with_name("auth.log.1"), "a2\n")
    append(log, "b1\n")
    with FileFollower(log, start=saved) as f:
        assert f.read() == b"a2\nb1\n"


def test_bounded_reads_and_more_pending(log: Path) -> None:
    log.write_text("")
    line = b"x" * 99 + b"\n"
    with FileFollower(log, max_bytes=MAX_LINE) as f:
        append(log, line * 2000)  # 200 kB
        got = []
        for _ in range(10):
            chunk = f.read()
            assert len(chunk) <= MAX_LINE
            got.append(chunk)
            if not f.more_pending:
                break
        assert b"".join(got) == line * 2000
        assert not f.more_pending


def test_overlong_line_is_cut(log: Path) -> None:
    """A "line" of MAX_LINE bytes with no newline in sight is returned cut (never an unbounded
    buffer); a long line whose newline is already there is returned whole."""
    log.write_text("")
    with FileFollower(log) as f:
        append(log, b"L" * (MAX_LINE * 2) + b"\n")
        assert f.read() == b"L" * (MAX_LINE * 2) + b"\n"
        append(log, b"y" * (MAX_LINE + 10))
        assert f.read() == b"y" * MAX_LINE
        assert f.stats()["overlong"] == 1
        append(log, b"\nz\n")
        assert f.read() == b"y" * 10 + b"\nz\n"


def test_position_round_trip_and_malformed_start(log: Path) -> None:
    pos = Position(1, 2, 3, 0xDEADBEEF)
    assert Position.parse(pos.serialise()) == pos
    for bad in ("", "v1 1 2", "v2 1 2 3 0", "v1 a b c d", "v1 1 2 -3 0"):
        with pytest.raises(ValueError):
            FileFollower(log, start=bad)


def test_missing_directory_is_a_watcher_error(tmp_path: Path) -> None:
    with pytest.raises(WatcherError):
        FileFollower(tmp_path / "nope" / "auth.log")
