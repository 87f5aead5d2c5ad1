# btmp rotated during an attack, no root: a writer thread appends numbered records the way sshd does
# (open O_APPEND, one write of 384 bytes, close; a missing file is retried, where sshd would skip
# the record) while the test rotates the file several times, and the watcher reads in a select
# loop like the daemon's.
# - Rename rotation (Debian's logrotate `create 0660 root utmp`): every record is read exactly once.
# - copytruncate: records that end up in no file (written after the copy, truncated before we read
#   them) are lost by logrotate itself; the test asserts that the watcher reads every record that
#   the file system kept, none twice, and prints how many the rotation itself destroyed.
from __future__ import annotations

import ipaddress
import os
import select
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guardian.parsers.utmp import LOGIN_PROCESS, RECORD_SIZE, UtmpRecord, pack_utmp, parse_utmp
from guardian.watchers.btmp import BtmpWatcher

MIN_RECORDS = 2000  # the writer goes on until every rotation is done, at most MAX_RECORDS
MAX_RECORDS = 20_000
ROTATIONS = 5
ROTATE_EVERY = 0.2  # seconds
WRITE_PAUSE_EVERY = 4  # records between 1 ms sleeps: about a thousand records per second
TIME_LIMIT = 30.0
ATTACKER = ipaddress.IPv4Address("198.51.100.7")


def numbered(seq: int) -> bytes:
    return pack_utmp(
        UtmpRecord(LOGIN_PROCESS, 100_000 + seq, "ssh:notty", f"u{seq}", str(ATTACKER), 1, ATTACKER)
    )


def sshd_like_writer(
    path: Path, done: threading.Event, rotated: threading.Event, stats: dict[str, int]
) -> None:
    try:
        for seq in range(MAX_RECORDS):
            if seq >= MIN_RECORDS and rotated.is_set():
                break
            for _ in range(1000):  # bounded: the rotator re-creates the file within a moment
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                    break
                except FileNotFoundError:
                    stats["retries"] += 1
                    time.sleep(0.001)
            else:
                raise AssertionError("btmp never came back")
            try:
                os.write(fd, numbered(seq))
            finally:
                os.close(fd)
            stats["written"] = seq + 1
            if seq % WRITE_PAUSE_EVERY == 0:
                time.sleep(0.001)
    finally:
        done.set()


def rename_rotate(path: Path, round_no: int) -> None:
    rotated = path.with_name(path.name + ".1")
    if rotated.exists():
        rotated.rename(path.with_name(f"{path.name}.old{round_no}"))
    path.rename(rotated)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
    os.close(fd)


def copytruncate_rotate(path: Path, round_no: int, gap: float = 0.0) -> None:
    """logrotate's copytruncate; `gap`: time between the end of the copy and the truncation
    (copying a big file takes that long, and what is written meanwhile is in neither file)."""
    rotated = path.with_name(path.name + ".1")
    if rotated.exists():
        rotated.rename(path.with_name(f"{path.name}.old{round_no}"))
    shutil.copyfile(path, rotated)
    if gap:
        time.sleep(gap)
    os.truncate(path, 0)


def run_attack(
    tmp_path: Path, rotate: Callable[[Path, int], None]
) -> tuple[list[int], dict[str, int], Path]:
    path = tmp_path / "btmp"
    path.write_bytes(b"")
    os.chmod(path, 0o660)
    done, rotated = threading.Event(), threading.Event()
    writer_stats = {"retries": 0, "written": 0}
    watcher = BtmpWatcher(path)
    seen: list[int] = []
    writer = threading.Thread(target=sshd_like_writer, args=(path, done, rotated, writer_stats))

    def rotator() -> None:
        try:
            for round_no in range(ROTATIONS):
                time.sleep(ROTATE_EVERY)
                if done.is_set():
                    return
                rotate(path, round_no)
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
            seen.extend(e.pid - 100_000 for e in events if e.pid is not None)
            if events or not done.is_set() or rotating.is_alive():
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 0.5:
                break
    finally:
        writer.join(TIME_LIMIT)
        rotating.join(TIME_LIMIT)
        stats = {**watcher.stats(), **writer_stats}
        watcher.close()
    return seen, stats, path


def kept_on_disk(path: Path) -> set[int]:
    kept: set[int] = set()
    for f in path.parent.iterdir():
        if f.name.startswith(path.name):
            records, _ = parse_utmp(f.read_bytes())
            kept.update(r.pid - 100_000 for r in records)
    return kept


def test_rename_rotation_during_an_attack_reads_every_record_once(tmp_path: Path) -> None:
    seen, stats, path = run_attack(tmp_path, rename_rotate)
    n = stats["written"]
    print(
        f"\nbtmp rename rotation: {len(seen)}/{n} records read, "
        f"{len(seen) - len(set(seen))} twice, rotations {stats['rotations']}, "
        f"writer retries {stats['retries']}"
    )
    assert stats["rotations"] == ROTATIONS
    assert sorted(seen) == list(range(n))  # every record, once, none invented
    assert seen == sorted(seen)  # in order
    assert kept_on_disk(path) == set(range(n))


@pytest.mark.parametrize("gap", [0.0, 0.02])
def test_copytruncate_during_an_attack_reads_what_the_files_kept(
    tmp_path: Path, gap: float
) -> None:
    seen, stats, path = run_attack(tmp_path, lambda p, r: copytruncate_rotate(p, r, gap))
    n = stats["written"]
    kept = kept_on_disk(path)
    destroyed = n - len(kept)
    print(
        f"\nbtmp copytruncate (copy-to-truncate gap {gap * 1e3:.0f} ms): {len(seen)}/{n} read, "
        f"{len(seen) - len(set(seen))} twice; truncations seen {stats['truncations']}, "
        f"recovered from .1 {stats['recovered']}; destroyed by the rotation itself "
        f"(in no file) {destroyed}, of which the watcher still read "
        f"{len(set(seen) - kept)}"
    )
    assert stats["truncations"] == ROTATIONS
    assert len(seen) == len(set(seen))  # none twice
    assert set(seen) <= set(range(n))
    assert kept <= set(seen)  # every record the files kept was read
    assert n >= MIN_RECORDS and RECORD_SIZE == 384
