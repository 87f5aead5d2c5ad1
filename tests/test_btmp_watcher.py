# BtmpWatcher on temp files, no root: which records become AuthFailed (sshd's LOGIN_PROCESS
# "ssh:notty" records with an address) and which are only counted; whole records only; resume;
# and start-up with a 600 MB btmp present (sparse but for its last megabyte): opening and the first
# read take milliseconds, and no history is replayed.
from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

from guardian.events import AuthFailed
from guardian.parsers.utmp import (
    DEAD_PROCESS,
    LOGIN_PROCESS,
    RECORD_SIZE,
    USER_PROCESS,
    UtmpRecord,
    pack_utmp,
)
from guardian.watchers.btmp import BtmpWatcher

V4 = ipaddress.IPv4Address("198.51.100.7")
V6 = ipaddress.IPv6Address("2001:db8::7")


def record(
    user: str = "root",
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = V4,
    *,
    pid: int = 4242,
    tv_sec: int = 1_740_787_200,
    ut_type: int = LOGIN_PROCESS,
    line: str = "ssh:notty",
    host: str | None = None,
) -> bytes:
    host_text = host if host is not None else (str(address) if address else "")
    return pack_utmp(UtmpRecord(ut_type, pid, line, user, host_text, tv_sec, address))


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


def test_sshd_records_become_auth_failed(tmp_path: Path) -> None:
    btmp = tmp_path / "btmp"
    btmp.write_bytes(record("history"))
    with BtmpWatcher(btmp) as watcher:
        assert watcher.read_events() == []
        append(btmp, record("admin", V4, pid=11, tv_sec=100) + record("root", V6, pid=12))
        events = watcher.read_events()
    assert events == [
        AuthFailed(V4, "btmp", "btmp", user="admin", pid=11, wall_time=100.0),
        AuthFailed(V6, "btmp", "btmp", user="root", pid=12, wall_time=1_740_787_200.0),
    ]


def test_v4_mapped_address_is_normalised(tmp_path: Path) -> None:
    btmp = tmp_path / "btmp"
    btmp.write_bytes(b"")
    mapped = ipaddress.IPv6Address("::ffff:198.51.100.7")
    with BtmpWatcher(btmp) as watcher:
        append(btmp, record("u", mapped, host="::ffff:198.51.100.7"))
        (event,) = watcher.read_events()
    assert event.source == V4


def test_other_records_are_counted_not_reported(tmp_path: Path) -> None:
    btmp = tmp_path / "btmp"
    btmp.write_bytes(b"")
    with BtmpWatcher(btmp) as watcher:
        append(btmp, record(ut_type=USER_PROCESS))  # not a failed login
        append(btmp, record(line="tty1", address=None))  # login(1) on a console
        append(btmp, record(ut_type=DEAD_PROCESS))
        append(btmp, record(address=None, host="attacker.example"))  # UseDNS yes: a name
        append(btmp, bytes(RECORD_SIZE))  # a hole left by a crash
        append(btmp, record("kept"))
        events = watcher.read_events()
        stats = watcher.stats()
    assert [e.user for e in events] == ["kept"]
    assert stats["records"] == 6
    assert (stats["ignored"], stats["no_address"], stats["malformed"]) == (3, 1, 1)
    assert stats["events"] == 1


def test_partial_record_waits_for_the_rest(tmp_path: Path) -> None:
    btmp = tmp_path / "btmp"
    btmp.write_bytes(b"")
    data = record("first") + record("second")
    with BtmpWatcher(btmp) as watcher:
        append(btmp, data[:500])
        assert [e.user for e in watcher.read_events()] == ["first"]
        assert watcher.read_events() == []
        append(btmp, data[500:])
        assert [e.user for e in watcher.read_events()] == ["second"]


def test_resume_reads_each_record_once(tmp_path: Path) -> None:
    btmp = tmp_path / "btmp"
    btmp.write_bytes(b"")
    with BtmpWatcher(btmp) as watcher:
        append(btmp, record("a") + record("b")[:100])
        assert [e.user for e in watcher.read_events()] == ["a"]
        saved = watcher.position()
    append(btmp, record("b")[100:] + record("c"))
    with BtmpWatcher(btmp, start=saved) as watcher:
        assert [e.user for e in watcher.read_events()] == ["b", "c"]


def test_bounded_read_of_a_large_append(tmp_path: Path) -> None:
    btmp = tmp_path / "btmp"
    btmp.write_bytes(b"")
    n = 10_000  # 3.84 MB appended at once
    with BtmpWatcher(btmp, max_bytes=1 << 20) as watcher:
        append(btmp, record("flood") * n)
        total, calls = 0, 0
        while calls < 20:
            calls += 1
            got = watcher.read_events()
            assert len(got) <= (1 << 20) // RECORD_SIZE
            total += len(got)
            if not watcher.more_pending:
                break
    assert total == n
    assert calls == 4


def test_start_with_a_600_mb_btmp_is_fast_and_replays_nothing(tmp_path: Path) -> None:
    """The issue's home server: 600 MB of btmp (1.6M records) at start. Sparse except for the
    last MiB of real records, so the test costs no disk; the watcher never reads what is
    before its start anyway, and the numbers show it."""
    btmp = tmp_path / "btmp"
    size = 600 * 1024 * 1024 - (600 * 1024 * 1024) % RECORD_SIZE
    tail = record("old") * ((1 << 20) // RECORD_SIZE)
    try:
        with btmp.open("wb") as out:
            out.truncate(size - len(tail))
            out.seek(size - len(tail))
            out.write(tail)
        assert btmp.stat().st_size == size
        t0 = time.perf_counter()
        watcher = BtmpWatcher(btmp)
        t1 = time.perf_counter()
        first = watcher.read_events()
        t2 = time.perf_counter()
        append(btmp, record("new", pid=99))
        new = watcher.read_events()
        t3 = time.perf_counter()
        watcher.close()
        print(
            f"\n600 MB btmp ({size // RECORD_SIZE} records): open {1e3 * (t1 - t0):.2f} ms, "
            f"first read {1e3 * (t2 - t1):.2f} ms ({len(first)} events), "
            f"append + read {1e3 * (t3 - t2):.2f} ms"
        )
        assert first == []
        assert [(e.user, e.pid) for e in new] == [("new", 99)]
        assert t1 - t0 < 0.5 and t2 - t1 < 0.5
    finally:
        btmp.unlink(missing_ok=True)
    assert not os.path.exists(btmp)
