# btmp records (guardian.parsers.utmp): real records written by Debian 12's sshd in the lab
# (tests/data/sshd/debian12-btmp.bin, with the syslog lines of the same run beside it), the
# partial-tail contract, hostile bytes, and a throughput print against `lastb`.
from __future__ import annotations

import gc
import ipaddress
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guardian.parsers import utmp
from guardian.parsers.sshd import SshdDetector
from guardian.parsers.syslog_line import parse_syslog_line
from guardian.parsers.utmp import (
    LOGIN_PROCESS,
    RECORD,
    RECORD_SIZE,
    UtmpMemo,
    UtmpRecord,
    pack_utmp,
    parse_utmp,
)

DATA = Path(__file__).resolve().parent / "data" / "sshd"
BTMP = DATA / "debian12-btmp.bin"
SYSLOG = DATA / "debian12-btmp-syslog.tsv"
V4, V6 = ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("2001:db8::2")


def test_real_btmp_records() -> None:
    data = BTMP.read_bytes()
    records, consumed = parse_utmp(data)
    assert consumed == len(data) == 18 * RECORD_SIZE
    assert all(r.type == LOGIN_PROCESS and r.line == "ssh:notty" for r in records)
    assert not any(r.malformed for r in records)
    # One record per invalid-user lookup and one per wrong password; none for keys.
    assert Counter((r.user, r.address) for r in records) == {
        ("nosuchuser", V4): 8,  # 2 x (lookup + 2 passwords), 2 x lookup only (key offered)
        ("root", V4): 4,  # 2 connections x 2 wrong passwords
        ("admin", V6): 6,  # 2 x (lookup + 2 passwords)
    }
    assert {r.host for r in records} == {"192.0.2.2", "2001:db8::2"}
    first = records[0]
    assert (first.pid, first.tv_sec) == (
        14890,
        int(datetime(2026, 11, 21, 8, 14, 41, tzinfo=UTC).timestamp()),
    )


def test_nothing_is_kept_between_calls() -> None:
    """The daemon parses each btmp append as it comes, for weeks. A brute force that tries a new
    user name each time (the soak's "nosuch123456") must not leave one decoded name per attempt
    behind: the memos live for one call. (Kept across calls until a cap, they grew the daemon's
    live objects for hours: 4,900 names here kept ~9,800 blocks.)"""
    reads = [
        b"".join(
            pack_utmp(UtmpRecord(LOGIN_PROCESS, 1000 + i, "ssh:notty", f"nosuch{k}_{i}",
                                 "192.0.2.2", 1_700_000_000 + k, V4))
            for i in range(100)
        )
        for k in range(50)
    ]  # fmt: skip
    parse_utmp(reads[0])  # anything a first call sets up once
    gc.collect()
    before = sys.getallocatedblocks()
    for k, data in enumerate(reads[1:], start=1):
        records, _ = parse_utmp(data)
        assert [r.user for r in records[:2]] == [f"nosuch{k}_0", f"nosuch{k}_1"]
    del records
    gc.collect()
    assert sys.getallocatedblocks() - before < 300


def test_a_memo_spans_calls_changes_nothing_and_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """replay's UtmpMemo: the same records as without one, and each table emptied once it
    holds more than MEMO_LIMIT entries (here 50)."""
    monkeypatch.setattr(utmp, "MEMO_LIMIT", 50)
    rng = random.Random(7)

    def record(i: int) -> UtmpRecord:
        host = f"192.0.2.{rng.randrange(1, 90)}"
        binary = ipaddress.ip_address(host) if i % 2 else None  # else from the host text
        return UtmpRecord(LOGIN_PROCESS, 100 + i, "ssh:notty", f"u{rng.randrange(90)}", host,
                          1_700_000_000, binary)  # fmt: skip

    reads = [b"".join(pack_utmp(record(i)) for i in range(40)) for _ in range(30)]
    memo = UtmpMemo()
    for data in reads:
        assert parse_utmp(data, memo) == parse_utmp(data)
        # A read adds at most its line and 40 names, and 40 hosts.
        assert len(memo.texts) <= 50 + 41 and len(memo.hosts) <= 50 + 40
    assert memo.texts and memo.hosts


def test_btmp_joins_the_log_by_pid_user_second() -> None:
    """Every btmp record is one failure the log also reports: same PID, user and second. This is
    the key that lets one attempt count once when btmp and journal/auth.log both see it."""
    reference = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    detector = SshdDetector("normal")
    from_log: Counter[tuple[int | None, str | None, int]] = Counter()
    for row in SYSLOG.read_text().splitlines():
        if row.startswith("#"):
            continue
        datagram = row.split("\t", 1)[1]
        record = parse_syslog_line(datagram.split(">", 1)[1], reference=reference)
        assert record is not None and record.wall_time is not None
        for d in detector.feed(record.pid, record.message, record.wall_time):
            if d.kind == "failure" and d.rule in ("invalid_user", "failed_password"):
                assert d.wall_time is not None
                from_log[(d.pid, d.user, int(d.wall_time))] += 1
    records, _ = parse_utmp(BTMP.read_bytes())
    from_btmp = Counter((r.pid, r.user, r.tv_sec) for r in records)
    assert from_btmp == from_log


def test_partial_tail_is_left_for_the_caller() -> None:
    data = BTMP.read_bytes()
    records, consumed = parse_utmp(data[: 2 * RECORD_SIZE + 100])
    assert len(records) == 2 and consumed == 2 * RECORD_SIZE
    assert parse_utmp(data[:383]) == ([], 0)
    assert parse_utmp(b"") == ([], 0)
    # Reading in odd-sized pieces and carrying the tail gives the same records.
    carried, pieces = b"", []
    rng = random.Random(3)
    i = 0
    while i < len(data):
        step = rng.randrange(1, 900)
        carried += data[i : i + step]
        i += step
        got, used = parse_utmp(carried)
        pieces.extend(got)
        carried = carried[used:]
    assert carried == b"" and pieces == parse_utmp(data)[0]


def test_round_trip_and_address_fallbacks() -> None:
    v4 = UtmpRecord(
        6,
        10,
        "ssh:notty",
        "root",
        "198.51.100.4",
        1_700_000_000,
        ipaddress.ip_address("198.51.100.4"),
    )
    v6 = v4._replace(host="2001:db8::9", address=ipaddress.ip_address("2001:db8::9"))
    mapped_bin = RECORD.pack(6, 11, b"ssh:notty", b"", b"u", b"h", 0, 0, 0, 1, 0,
                             ipaddress.ip_address("::ffff:203.0.113.5").packed)  # fmt: skip
    text_only = RECORD.pack(
        6, 12, b"ssh:notty", b"", b"u", b"::ffff:203.0.113.6", 0, 0, 0, 1, 0, bytes(16)
    )
    name_only = RECORD.pack(
        6, 13, b"ssh:notty", b"", b"u", b"evil.example.com", 0, 0, 0, 1, 0, bytes(16)
    )
    records, _ = parse_utmp(pack_utmp(v4) + pack_utmp(v6) + mapped_bin + text_only + name_only)
    assert records[:2] == [v4, v6]
    assert records[2].address == ipaddress.ip_address("203.0.113.5")  # v4-mapped -> IPv4
    assert records[3].address == ipaddress.ip_address("203.0.113.6")  # from ut_host
    assert records[4].address is None and records[4].host == "evil.example.com"  # never resolved


def test_attacker_bytes_never_raise() -> None:
    # 32 bytes of user without a NUL, invalid UTF-8, embedded NULs and garbage after them.
    user = b"\xff\xfe" + b"A" * 30
    host = b"1.2.3.4\x00garbage\xff"
    raw = RECORD.pack(6, 99, b"ssh:notty", b"", user, host, 0, 0, 0, 5, 0, bytes(16))
    (record,), _ = parse_utmp(raw)
    assert record.user == "\ufffd\ufffd" + "A" * 30
    assert record.host == "1.2.3.4" and record.address == ipaddress.ip_address("1.2.3.4")
    rng = random.Random(5)
    noise = bytes(rng.randrange(256) for _ in range(RECORD_SIZE * 200))
    records, consumed = parse_utmp(noise)
    assert len(records) == 200 and consumed == len(noise)


def _text(raw: bytes) -> str:
    return raw.partition(b"\0")[0].decode("utf-8", "replace")


def _whole_fields(raw: bytes) -> UtmpRecord:
    """The reference decoder: every field unpacked whole, nothing remembered or skipped."""
    ut_type, pid, line, _, user, host, _, _, _, sec, _, addr = RECORD.unpack(raw)
    host_text = _text(host)
    address = utmp._address(addr, host_text)
    malformed = utmp._malformed(ut_type, pid, sec)
    return UtmpRecord(ut_type, pid, _text(line), _text(user), host_text, sec, address, malformed)


def test_records_match_a_whole_field_decoder() -> None:
    """parse_utmp reads only the host's first HOST_HEAD bytes unless no NUL is among them, and
    converts a line once per run of equal lines. Hosts of every length 0-256 (256: no NUL at
    all), garbage after the NUL, invalid UTF-8, long names equal in their first 48 bytes or more,
    lines that change from record to record or stay, binary and text-only addresses: every
    record equals the reference decoder's, with a memo kept across reads as replay keeps it."""
    rng = random.Random(9)
    hosts = []
    for length in range(257):
        for tail in (b"", b"\x00" + bytes(rng.randrange(1, 256) for _ in range(20))):
            text = bytes(rng.choice(b"abcdefghij.-:0123456789\xc3\xa9\xff") for _ in range(length))
            hosts.append((text + tail)[:256])
    shared = b"h" * 100  # the same first 100 bytes, different after: not one memo entry
    hosts += [shared + b".example.com", shared + b".example.org", shared + b"\x00x", shared]
    hosts += [b"198.51.100.7", b"2001:db8::7", b"::ffff:198.51.100.8"] * 40
    rng.shuffle(hosts)
    lines = [b"ssh:notty", b"pts/0", b"", b"ssh:notty\x00junk", b"\xff" * 32]
    addrs = [bytes(16), ipaddress.ip_address("203.0.113.9").packed + bytes(12),
             ipaddress.ip_address("2001:db8::9").packed]  # fmt: skip
    raws = [
        RECORD.pack(rng.choice((6, 6, 6, 7, 0, 42)), i, rng.choice(lines[:2]) if i % 7 else
                    rng.choice(lines), b"", rng.choice((b"root", b"x" * 32, b"\xc3")), host, 0, 0,
                    0, rng.choice((1, 1_700_000_000, -1)), 0, rng.choice(addrs))
        for i, host in enumerate(hosts)
    ]  # fmt: skip
    memo = UtmpMemo()
    for start in range(0, len(raws), 37):
        parsed, _ = parse_utmp(b"".join(raws[start : start + 37]), memo)
        assert parsed == [_whole_fields(raw) for raw in raws[start : start + 37]]
    assert utmp.HOST_HEAD == 48


def test_malformed_records_are_flagged_not_dropped() -> None:
    zero = bytes(RECORD_SIZE)
    bad_type = RECORD.pack(77, 1, b"", b"", b"", b"", 0, 0, 0, 1, 0, bytes(16))
    negative_time = RECORD.pack(6, 1, b"", b"", b"x", b"", 0, 0, 0, -5, 0, bytes(16))
    records, _ = parse_utmp(zero + bad_type + negative_time + BTMP.read_bytes()[:RECORD_SIZE])
    assert [r.malformed for r in records] == [True, True, True, False]


def test_throughput_print() -> None:
    """Not an assertion: records/s of parse_utmp on a synthetic btmp, and `lastb -f` on the same
    file when lastb exists (util-linux)."""
    rng = random.Random(11)
    sources = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(3000)]
    users = [b"root", b"admin", b"test", b"oracle", b"ubuntu", b"user", b"postgres", b"git"]
    template = [
        RECORD.pack(
            6,
            rng.randrange(1000, 4_000_000),
            b"ssh:notty",
            b"",
            rng.choice(users),
            str(src).encode(),
            0,
            0,
            0,
            1_790_000_000 + i,
            0,
            src.packed + bytes(12),
        )
        for i, src in enumerate(rng.choices(sources, k=20_000))
    ]
    count = 200_000
    data = b"".join(template) * (count // len(template))
    start = time.perf_counter()
    records, consumed = parse_utmp(data)
    elapsed = time.perf_counter() - start
    assert consumed == len(data) and len(records) == count
    line = f"\nparse_utmp: {count} records in {elapsed:.3f}s = {count / elapsed:,.0f} records/s"
    lastb = shutil.which("lastb")
    if lastb is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "btmp"
            path.write_bytes(data)
            start = time.perf_counter()
            subprocess.run([lastb, "-f", str(path)], stdout=subprocess.DEVNULL, timeout=300,
                           check=False, env={**os.environ, "LC_ALL": "C"})  # fmt: skip
            line += f"; lastb -f: {time.perf_counter() - start:.3f}s"
    print(line)


@pytest.mark.parametrize("size", [RECORD_SIZE - 1, RECORD_SIZE, RECORD_SIZE + 1])
def test_sizes(size: int) -> None:
    records, consumed = parse_utmp(bytes(size))
    assert consumed == (RECORD_SIZE if size >= RECORD_SIZE else 0)
    assert len(records) == consumed // RECORD_SIZE
