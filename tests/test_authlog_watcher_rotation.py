# auth.log rotated during an attack, no root: a writer thread appends numbered "Failed password"
# lines the way rsyslog does (one fd held open with O_APPEND; after a rename rotation it goes on
# writing to the old file until its HUP, then reopens the name), while the test rotates the file
# several times and the watcher reads in a select loop like the daemon's.
# - Rename rotation (Debian's `create` + `postrotate rsyslog-rotate`): every line exactly once.
# - copytruncate: lines written after the copy and truncated before we read them are in no file
#   (logrotate loses them); the watcher must read every line the files kept, none twice. The gap
#   between copy and truncation is 0 and 20 ms (a big file's copy takes time): the test prints how
#   many lines the rotation destroyed and how many of those the watcher had still read in time.
from __future__ import annotations

import os
import re
import select
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import pytest

from guardian.events import AuthFailed
from guardian.watchers.authlog import AuthLogWatcher

MIN_LINES = 2000  # the writer goes on until every rotation is done, at most MAX_LINES
MAX_LINES = 20_000
ROTATIONS = 5
ROTATE_EVERY = 0.2
HUP_DELAY = 0.02  # logrotate's postrotate runs a moment after the create
TIME_LIMIT = 30.0
LINE = (
    "2025-03-01T00:00:00.{seq:06d}+00:00 host sshd[{pid}]: Failed password for root "
    "from 198.51.100.7 port 40000 ssh2\n"
)
PID_BASE = 100_000
_PID = re.compile(rb"sshd\[(\d+)\]")


class RsyslogLikeWriter(threading.Thread):
    def __init__(self, path: Path, rotated: threading.Event) -> None:
        super().__init__()
        self.path = path
        self.rotated = rotated
        self.hup = threading.Event()
        self.done = threading.Event()
        self.written = 0

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            for seq in range(MAX_LINES):
                if seq >= MIN_LINES and self.rotated.is_set():
                    break
                if self.hup.is_set():
                    self.hup.clear()
                    os.close(fd)
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                os.write(fd, LINE.format(seq=seq, pid=PID_BASE + seq).encode())
                self.written = seq + 1
                if seq % 4 == 0:
                    time.sleep(0.001)
        finally:
            os.close(fd)
            self.done.set()


def shift_rotated(path: Path, round_no: int) -> Path:
    rotated = path.with_name(path.name + ".1")
    if rotated.exists():
        rotated.rename(path.with_name(f"{path.name}.old{round_no}"))
    return rotated


def rename_rotate(path: Path, round_no: int, writer: RsyslogLikeWriter) -> None:
    path.rename(shift_rotated(path, round_no))
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    time.sleep(HUP_DELAY)  # the writer still appends to the renamed file meanwhile
    writer.hup.set()


def copytruncate_rotate(path: Path, round_no: int, gap: float) -> None:
    shutil.copyfile(path, shift_rotated(path, round_no))
    if gap:
        time.sleep(gap)
    os.truncate(path, 0)


def run_attack(
    tmp_path: Path, rotate: Callable[[Path, int, RsyslogLikeWriter], None]
) -> tuple[list[int], dict[str, int], int, Path]:
    path = tmp_path / "auth.log"
    path.write_text("")
    rotated = threading.Event()
    writer = RsyslogLikeWriter(path, rotated)
    watcher = AuthLogWatcher(path, zone=UTC)
    seen: list[int] = []

    def rotator() -> None:
        try:
            for round_no in range(ROTATIONS):
                time.sleep(ROTATE_EVERY)
                if writer.done.is_set():
                    return
                rotate(path, round_no, writer)
        finally:
            rotated.set()

    rotating = threading.Thread(target=rotator)
    writer.start()
    rotating.start()
    deadline = time.monotonic() + TIME_LIMIT
    idle_since: float | None = None
    try:
        while time.monotonic() < deadline:
            select.select([watcher.fileno()], [], [], 0.05)
            events = watcher.read_events()
            while watcher.more_pending:
                events += watcher.read_events()
            seen.extend(
                e.pid - PID_BASE for e in events if isinstance(e, AuthFailed) and e.pid is not None
            )
            if events or not writer.done.is_set() or rotating.is_alive():
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 0.5:
                break
    finally:
        writer.join(TIME_LIMIT)
        rotating.join(TIME_LIMIT)
        stats = watcher.stats()
        watcher.close()
    return seen, stats, writer.written, path


def kept_on_disk(path: Path) -> set[int]:
    kept: set[int] = set()
    for f in path.parent.iterdir():
        if f.name.startswith(path.name):
            for line in f.read_bytes().split(b"\n"):
                m = _PID.search(line)
                if m and line.endswith(b"ssh2"):  # whole lines only
                    kept.add(int(m[1]) - PID_BASE)
    return kept


def test_rename_rotation_during_an_attack_reads_every_line_once(tmp_path: Path) -> None:
    seen, stats, n, path = run_attack(tmp_path, rename_rotate)
    print(
        f"\nauth.log rename rotation: {len(seen)}/{n} lines read, "
        f"{len(seen) - len(set(seen))} twice, rotations {stats['rotations']}, "
        f"errors {stats['errors']}"
    )
    assert stats["rotations"] == ROTATIONS
    assert sorted(seen) == list(range(n))
    assert seen == sorted(seen)
    assert stats["errors"] == 0 and stats["other"] == 0
    assert kept_on_disk(path) == set(range(n))


@pytest.mark.parametrize("gap", [0.0, 0.02])
def test_copytruncate_during_an_attack_reads_what_the_files_kept(
    tmp_path: Path, gap: float
) -> None:
    seen, stats, n, path = run_attack(
        tmp_path, lambda p, r, _writer: copytruncate_rotate(p, r, gap)
    )
    kept = kept_on_disk(path)
    destroyed = set(range(n)) - kept
    print(
        f"\nauth.log copytruncate (copy-to-truncate gap {gap * 1e3:.0f} ms): {len(seen)}/{n} "
        f"read, {len(seen) - len(set(seen))} twice; truncations seen {stats['truncations']}, "
        f"recovered from .1 {stats['recovered']}; destroyed by the rotation (in no file) "
        f"{len(destroyed)}, of which the watcher still read {len(destroyed & set(seen))}"
    )
    assert stats["truncations"] == ROTATIONS
    assert len(seen) == len(set(seen))
    assert set(seen) <= set(range(n))
    assert kept <= set(seen)
    assert n >= MIN_LINES
