# AuthLogWatcher on temp files, no root: sshd's lines (RFC 3339 and traditional, sshd and
# sshd-session, IPv4/IPv6) become AuthFailed with the detector's rule, user, pid, time and attempt
# count; sessions become SessionOpened/SessionClosed; other programs' lines, invalid UTF-8 and
# junk are counted and never raise; a partial last line waits for its newline; the reference year
# of traditional timestamps comes from the file's mtime; and start-up with a 1 GB auth.log present
# is fast and replays nothing.
from __future__ import annotations

import ipaddress
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guardian.events import AuthFailed, SessionClosed, SessionOpened
from guardian.parsers.sshd import SshdDetector
from guardian.parsers.syslog_line import parse_syslog_line
from guardian.watchers.authlog import AuthLogWatcher
from guardian.watchers.sshd_log import detection_to_event, failure_from

A4 = ipaddress.IPv4Address("198.51.100.7")
A6 = ipaddress.IPv6Address("2001:db8::5")
T0 = "2025-03-01T00:00:00.048394+00:00"
T0_EPOCH = datetime(2025, 3, 1, tzinfo=UTC).timestamp() + 0.048394


def append(path: Path, data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    with path.open("ab") as out:
        out.write(raw)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "auth.log"
    path.write_text(f"{T0} host sshd[1]: Failed password for root from 192.0.2.99 port 1 ssh2\n")
    return path


def test_failed_password_and_invalid_user(log: Path) -> None:
    with AuthLogWatcher(log, zone=UTC) as watcher:
        assert watcher.read_events() == []  # history is not replayed
        append(
            log,
            f"{T0} host sshd[100]: Invalid user admin from 198.51.100.7 port 4242\n"
            f"{T0} host sshd[100]: Failed password for invalid user admin from 198.51.100.7 "
            "port 4242 ssh2\n"
            f"{T0} host sshd-session[101]: Failed password for root from 2001:db8::5 port 22 "
            "ssh2\n",
        )
        events = watcher.read_events()
    assert events == [
        AuthFailed(A4, "authlog", "invalid_user", "admin", 100, T0_EPOCH),
        AuthFailed(A4, "authlog", "failed_password", "admin", 100, T0_EPOCH),
        AuthFailed(A6, "authlog", "failed_password", "root", 101, T0_EPOCH),
    ]


def test_user_name_injection_takes_the_address_from_the_tail(log: Path) -> None:
    with AuthLogWatcher(log, zone=UTC) as watcher:
        append(
            log,
            f"{T0} host sshd[7]: Failed password for invalid user x from 10.10.1.1 from "
            "198.51.100.7 port 2 ssh2\n",
        )
        (event,) = watcher.read_events()
    assert isinstance(event, AuthFailed)
    assert event.source == A4
    assert event.user == "x from 10.10.1.1"


def test_sessions_are_reported_unless_disabled(log: Path) -> None:
    lines = (
        f"{T0} host sshd[9]: Accepted publickey for root from 192.0.2.3 port 5555 ssh2: "
        "ED25519 SHA256:abc\n"
        f"{T0} host sshd[9]: Disconnected from user root 192.0.2.3 port 5555\n"
    )
    source = ipaddress.IPv4Address("192.0.2.3")
    with AuthLogWatcher(log, zone=UTC) as watcher:
        append(log, lines)
        events = watcher.read_events()
        assert watcher.stats()["sessions_opened"] == 1
    assert events[0] == SessionOpened(source, 5555, "root", 9)
    assert SessionClosed(source, 5555, "root", 9) in events[1:]
    with AuthLogWatcher(log, sessions=False, zone=UTC) as watcher:
        append(log, lines)
        assert watcher.read_events() == []


def test_host_name_failures_are_counted_not_reported(log: Path) -> None:
    with AuthLogWatcher(log, zone=UTC) as watcher:
        append(log, f"{T0} host sshd[5]: Failed password for root from evil.example port 2 ssh2\n")
        assert watcher.read_events() == []
        assert watcher.stats()["no_address"] == 1


def test_aggressive_mode_counts_preauth_disconnects(log: Path) -> None:
    line = (
        f"{T0} host sshd[6]: Connection closed by authenticating user root 198.51.100.7 port 3 "
        "[preauth]\n"
    )
    with AuthLogWatcher(log, "normal", zone=UTC) as normal:
        append(log, line)
        assert normal.read_events() == []
    with AuthLogWatcher(log, "aggressive", zone=UTC) as aggressive:
        append(log, line)
        assert [e.source for e in aggressive.read_events()] == [A4]
    with pytest.raises(ValueError):
        AuthLogWatcher(log, "paranoid")


def test_partial_last_line_waits_for_its_newline(log: Path) -> None:
    line = f"{T0} host sshd[8]: Failed password for root from 198.51.100.7 port 9 ssh2\n"
    with AuthLogWatcher(log, zone=UTC) as watcher:
        append(log, line[:40])
        assert watcher.read_events() == []
        append(log, line[40:])
        assert len(watcher.read_events()) == 1
        assert watcher.stats()["lines"] == 1


def test_traditional_timestamps_take_the_year_from_the_file_mtime(log: Path) -> None:
    with AuthLogWatcher(log, zone=UTC) as watcher:
        append(
            log,
            "Dec 31 23:59:59 host sshd[3]: Failed password for root from 198.51.100.7 port 1\n"
            "Jan  1 00:00:01 host sshd[3]: Failed password for root from 198.51.100.7 port 1\n",
        )
        new_year = datetime(2031, 1, 1, 0, 0, 5, tzinfo=UTC).timestamp()
        os.utime(log, (new_year, new_year))
        events = watcher.read_events()
    assert [e.wall_time for e in events if isinstance(e, AuthFailed)] == [
        datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp(),
        datetime(2031, 1, 1, 0, 0, 1, tzinfo=UTC).timestamp(),
    ]


def test_junk_never_raises_and_is_counted(log: Path) -> None:
    rng = random.Random(15)
    junk = b"".join(
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b"\n" for _ in range(300)
    )
    valid = f"{T0} host sshd[4]: Failed password for root from 198.51.100.7 port 1 ssh2\n"
    with AuthLogWatcher(log, zone=UTC) as watcher:
        append(log, junk + b"\xff\xfe sshd[1]: \x00\n" + valid.encode())
        events = watcher.read_events()
        stats = watcher.stats()
    assert [e.source for e in events] == [A4]
    assert stats["lines"] == junk.count(b"\n") + 2
    assert stats["undecodable"] >= 1
    assert stats["errors"] == 0
    assert stats["other"] == stats["lines"] - stats["sshd_lines"]


def test_only_newline_splits_lines(log: Path) -> None:
    """\\u2028 or \\x1c inside a message must not start a new "line" (str.splitlines would)."""
    with AuthLogWatcher(log, zone=UTC) as watcher:
        append(
            log,
            f"{T0} host sshd[2]: Failed password for invalid user a\u2028{T0} host sshd[3]: "
            "Failed password for root from 10.0.0.1 port 1 ssh2 from 198.51.100.7 port 5 ssh2\n",
        )
        events = watcher.read_events()
        assert watcher.stats()["lines"] == 1
    assert [e.source for e in events] == [A4]


def test_reads_a_large_backlog_through_the_bulk_parser_as_line_by_line(tmp_path: Path) -> None:
    """A backlog of ~40k lines of mixed formats (a generated auth.log, RFC 3339 and RFC 5424
    lines, lines without a PID, invalid UTF-8) read in 1 MiB reads through the bulk parser
    gives exactly the events and counts the per-line parser gives for the same lines."""
    path = tmp_path / "auth.log"
    path.write_bytes(b"")
    rng = random.Random(16)
    body: list[bytes] = []
    for i in range(40_000):
        pid, source = 2000 + i // 4, f"198.51.{rng.randrange(4)}.{rng.randrange(1, 250)}"
        shape = rng.randrange(6)
        if shape == 0:
            line = f"{T0} host sshd[{pid}]: Invalid user u{i % 7} from {source} port {i}"
        elif shape == 1:
            line = f"Mar  1 00:00:0{i % 10} host sshd[{pid}]: Failed password for root from "
            line += f"{source} port {i} ssh2"
        elif shape == 2:
            line = f"<38>1 2025-03-01T00:00:01Z host sshd {pid} - - Invalid user x from {source}"
        elif shape == 3:
            line = f"Mar  1 00:00:02 host sshd: Failed password for root from {source} port 1 ssh2"
        elif shape == 4:
            line = f"Mar  1 00:00:03 host CRON[{pid}]: pam_unix(cron:session): session opened"
        else:
            line = f"{T0} host sshd[{pid}]: Connection closed by {source} port {i} [preauth]"
        body.append(line.encode() + (b"\xff" if i % 1000 == 0 else b"") + b"\n")
    data = b"".join(body)
    with AuthLogWatcher(path, "aggressive", zone=UTC) as watcher:
        append(path, data)
        os.utime(path, (1_741_000_000, 1_741_000_000))  # 2025-03-03: the traditional year
        events: list[object] = []
        while True:
            more = watcher.read_events()
            events += more
            if not more and not watcher.more_pending:
                break
        stats = watcher.stats()
    reference = datetime.fromtimestamp(1_741_000_000 - 1_741_000_000 % 3600, UTC)
    detector = SshdDetector("aggressive")
    want: list[object] = []
    sshd_lines = 0
    for line in data.decode("utf-8", "replace").split("\n")[:-1]:
        record = parse_syslog_line(line, reference=reference)
        if record is not None:
            sshd_lines += 1
            for detection in detector.feed(record.pid, record.message, record.wall_time):
                event = failure_from(detection, "authlog") or detection_to_event(detection)
                if event is not None:
                    want.append(event)
    assert events == want and len(want) > 10_000
    assert stats["lines"] == 40_000 and stats["sshd_lines"] == sshd_lines
    assert stats["other"] == 40_000 - sshd_lines and stats["undecodable"] == 40
    assert stats["errors"] == 0 and stats["reads"] >= 2


def test_resume_reads_each_line_once(log: Path) -> None:
    line = "{T} host sshd[{pid}]: Failed password for root from 198.51.100.7 port 1 ssh2\n"
    with AuthLogWatcher(log, zone=UTC) as watcher:
        append(log, line.format(T=T0, pid=1001))
        assert [e.pid for e in watcher.read_events()] == [1001]
        saved = watcher.position()
    append(log, line.format(T=T0, pid=1002))
    with AuthLogWatcher(log, start=saved, zone=UTC) as watcher:
        assert [e.pid for e in watcher.read_events()] == [1002]


def test_start_with_a_1_gb_auth_log_is_fast_and_replays_nothing(tmp_path: Path) -> None:
    """1 GB of auth.log at start: sparse but for its last MiB of real attack lines (no disk
    cost; the watcher never reads what is before its start)."""
    path = tmp_path / "auth.log"
    size = 1 << 30
    line = f"{T0} host sshd[77]: Failed password for root from 198.51.100.7 port 1 ssh2\n"
    tail = (line * ((1 << 20) // len(line))).encode()
    try:
        with path.open("wb") as out:
            out.truncate(size - len(tail))
            out.seek(size - len(tail))
            out.write(tail)
        t0 = time.perf_counter()
        watcher = AuthLogWatcher(path, zone=UTC)
        t1 = time.perf_counter()
        first = watcher.read_events()
        t2 = time.perf_counter()
        append(path, line.replace("[77]", "[78]"))
        new = watcher.read_events()
        t3 = time.perf_counter()
        watcher.close()
        print(
            f"\n1 GB auth.log: open {1e3 * (t1 - t0):.2f} ms, first read "
            f"{1e3 * (t2 - t1):.2f} ms ({len(first)} events), append + read "
            f"{1e3 * (t3 - t2):.2f} ms"
        )
        assert first == []
        assert [e.pid for e in new] == [78]
        assert t1 - t0 < 0.5 and t2 - t1 < 0.5
    finally:
        path.unlink(missing_ok=True)
    assert not path.exists()
