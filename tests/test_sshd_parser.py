# The sshd parsers against our own annotated corpus (tests/data/sshd/*.txt), plus the properties a
# corpus cannot show: bounded state, no crash on any input, and a throughput print.
#
# Corpus format (one expectation above each line; every file runs in both modes, in order, through
# one SshdDetector per mode, lines keyed by their PID):
#   # reference: 2026-11-21T12:00:00+00:00     "now" for traditional timestamps (default below)
#   # expect: {json}
#   <an auth.log line>
# Keys of the expectation:
#   syslog: null             parse_syslog_line must reject the line (then nothing else is checked)
#   time, pid, ident, host   parse_syslog_line's fields (time as UTC ISO 8601, seconds precision
#                            or with the fraction when given)
#   kind (required)          parse_message's kind, null for "not in the catalog"
#   rule, source, port, user, method, host_name, invalid_user, preauth, held
#                            parse_message's fields (source as text, normalised)
#   detect                   the exact list of detections the detector returns for the line,
#                            each {"kind": ..., and any other Detection field, e.g. source,
#                            port, user, attempts, rule, host_name, pid, wall_time};
#                            absent means: none
#   normal / aggressive      a dict of keys that replace the above in that mode
from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from guardian.addresses import parse_address
from guardian.parsers.sshd import Detection, Mode, SshdDetector, parse_message
from guardian.parsers.syslog_line import (
    TraditionalClock,
    _traditional_seconds,
    parse_syslog_line,
    traditional_clock,
)

DATA = Path(__file__).resolve().parent / "data" / "sshd"
CORPUS_FILES = sorted(DATA.glob("*.txt"))
MODES: tuple[Mode, ...] = ("normal", "aggressive")
DEFAULT_REFERENCE = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
_MESSAGE_FIELDS = (
    "rule", "port", "user", "method", "host_name", "invalid_user", "preauth", "held",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    lineno: int
    line: str
    expect: dict[str, Any]
    reference: datetime


def read_corpus(path: Path) -> Iterator[Case]:
    reference = DEFAULT_REFERENCE
    expect: dict[str, Any] | None = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.startswith("# reference:"):
            reference = datetime.fromisoformat(raw.split(":", 1)[1].strip())
        elif raw.startswith("# expect:"):
            expect = json.loads(raw.split(":", 1)[1])
        elif raw.startswith("#") or not raw.strip():
            continue
        else:
            assert expect is not None, f"{path.name}:{lineno}: line without # expect"
            yield Case(lineno, raw, expect, reference)
            expect = None


def _in_mode(expect: dict[str, Any], mode: Mode) -> dict[str, Any]:
    merged = {k: v for k, v in expect.items() if k not in MODES}
    merged.update(expect.get(mode, {}))
    return merged


def _iso(when: float) -> str:
    text = datetime.fromtimestamp(when, UTC).isoformat()
    return text.replace("+00:00", "Z")


def _check_detection(got: Detection, want: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in want.items():
        actual = getattr(got, key)
        if key == "source" and value is not None:
            value = parse_address(value)
        if actual != value:
            problems.append(f"detection {key}: {actual!r} != {value!r}")
    return problems


def check_case(case: Case, mode: Mode, detector: SshdDetector) -> list[str]:
    expect = _in_mode(case.expect, mode)
    record = parse_syslog_line(case.line, reference=case.reference)
    if "syslog" in expect and expect["syslog"] is None:
        return [] if record is None else [f"syslog: expected no record, got {record}"]
    if record is None:
        return ["syslog: not parsed"]
    problems = []
    if "time" in expect:
        got_time = None if record.wall_time is None else _iso(record.wall_time)
        want = expect["time"]
        if got_time is None or (got_time != want and got_time[:19] + "Z" != want):
            problems.append(f"time: {got_time} != {want}")
    for key, attr in (("pid", "pid"), ("ident", "identifier"), ("host", "host")):
        if key in expect and getattr(record, attr) != expect[key]:
            problems.append(f"{key}: {getattr(record, attr)!r} != {expect[key]!r}")

    msg = parse_message(record.message, mode)
    if "kind" not in expect:
        problems.append("expectation lacks 'kind'")
    elif expect["kind"] is None:
        if msg is not None:
            problems.append(f"kind: expected not in catalog, got {msg}")
    elif msg is None:
        problems.append(f"kind: expected {expect['kind']}, not recognised")
    else:
        if msg.kind != expect["kind"]:
            problems.append(f"kind: {msg.kind} != {expect['kind']}")
        if "source" in expect:
            want_source = None if expect["source"] is None else parse_address(expect["source"])
            if msg.source != want_source:
                problems.append(f"source: {msg.source} != {want_source}")
        for key in _MESSAGE_FIELDS:
            if key in expect and getattr(msg, key) != expect[key]:
                problems.append(f"{key}: {getattr(msg, key)!r} != {expect[key]!r}")

    detections = detector.feed(record.pid, record.message, record.wall_time)
    wanted = expect.get("detect", [])
    if len(detections) != len(wanted):
        problems.append(f"detections: got {detections}, want {wanted}")
    else:
        for got, want in zip(detections, wanted, strict=True):
            problems.extend(_check_detection(got, want))
    return problems


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_annotated_corpus(path: Path, mode: Mode) -> None:
    detector = SshdDetector(mode)
    failures = []
    cases = 0
    for case in read_corpus(path):
        cases += 1
        for problem in check_case(case, mode, detector):
            failures.append(f"{path.name}:{case.lineno} [{mode}] {problem}\n    {case.line}")
    print(f"\n{path.name} [{mode}]: {cases} lines, {len(failures)} problems")
    assert cases > 0
    assert not failures, "\n".join(failures)


def test_corpus_files_exist() -> None:
    names = {p.stem for p in CORPUS_FILES}
    assert {"debian12-openssh-9.2", "openssh-9.8-sshd-session", "injection"} <= names


# ---- properties --------------------------------------------------------------------------------


def test_state_is_bounded_by_count() -> None:
    detector = SshdDetector(max_connections=100)
    for pid in range(10_000):  # a flood of connections that never finish
        detector.feed(pid, "Disconnecting: Too many authentication failures [preauth]", None)
    assert detector.tracked == 100


def test_state_is_bounded_by_age() -> None:
    detector = SshdDetector(max_age=60.0)
    detector.feed(1, "Disconnecting: Too many authentication failures [preauth]", 1000.0)
    detector.feed(2, "Disconnecting: Too many authentication failures [preauth]", 1030.0)
    assert detector.tracked == 2
    detector.feed(3, "Connection from 192.0.2.9 port 4 on 192.0.2.1 port 22", 1070.0)
    assert detector.tracked == 2  # pid 1 aged out
    # ... so its late address resolves nothing:
    assert detector.feed(1, "Connection closed by 192.0.2.1 port 5 [preauth]", 1071.0) == []
    out = detector.feed(2, "Connection closed by 192.0.2.2 port 5 [preauth]", 1072.0)
    assert [d.kind for d in out] == ["failure"]


def _session_lines(pid: int, pam: bool) -> list[str]:
    src, port = f"192.0.2.{pid % 250 + 1}", 40000 + pid % 20000
    lines = [
        f"Accepted publickey for alice from {src} port {port} ssh2: ED25519 SHA256:x",
        f"Received disconnect from {src} port {port}:11: disconnected by user",
        f"Disconnected from user alice {src} port {port}",
    ]
    if pam:
        lines.append("pam_unix(sshd:session): session closed for user alice")
    return lines


@pytest.mark.parametrize("pam", [False, True], ids=["without-pam", "with-pam"])
def test_ended_sessions_leave_nothing_behind(pam: bool) -> None:
    # Without PAM no "session closed" line ever comes: ended sessions used to stay until 4,096
    # newer ones pushed them out (the soak's slow memory growth). Now a short ring holds them.
    detector = SshdDetector()
    for pid in range(10_000):
        for line in _session_lines(pid, pam):
            detector.feed(pid, line, 1000.0 + pid)
    assert detector.sessions_held <= 256
    assert detector.tracked == 0


def test_pam_close_after_disconnect_still_names_the_source() -> None:
    detector = SshdDetector()
    closes: list[Detection] = []
    for pid in (101, 102):  # interleaved: 102's lines come between 101's disconnect and close
        detector.feed(pid, _session_lines(pid, True)[0], 1000.0)
    for line in _session_lines(101, True)[1:3]:
        closes += detector.feed(101, line, 1001.0)
    for line in _session_lines(102, True)[1:]:
        closes += detector.feed(102, line, 1002.0)
    closes += detector.feed(101, _session_lines(101, True)[3], 1003.0)
    assert [d.kind for d in closes] == ["session_closed"] * 6
    pam_closes = [d for d in closes if d.rule == "pam_session_closed"]
    assert [(d.pid, str(d.source), d.user) for d in pam_closes] == [
        (102, "192.0.2.103", "alice"),
        (101, "192.0.2.102", "alice"),
    ]
    assert detector.sessions_held == 0


def test_held_attempts_and_users_are_bounded() -> None:
    detector = SshdDetector()
    for i in range(1000):
        detector.feed(
            7, f"Failed publickey for root from 192.0.2.7 port 1 ssh2: ED25519 SHA256:{i}"
        )
    out = detector.feed(7, "error: maximum authentication attempts exceeded for root from "
                           "192.0.2.7 port 1 ssh2 [preauth]")  # fmt: skip
    assert len(out) == 1 and out[0].attempts <= 33


def test_garbage_never_raises() -> None:
    rng = random.Random(7)
    words = ["Failed", "password", "for", "invalid", "user", "from", "port", "ssh2:", "[preauth]",
             "Connection", "closed", "by", "authenticating", "::ffff:1.2.3.4", "2001:db8::1", ":",
             "Received", "disconnect", "11:", "3:", "Auth", "fail", "error:", "PAM:", "User",
             "not", "allowed", "because", "pam_unix(sshd:auth):", "rhost=", "user=", "drop",
             "connection", "#1", "[1.2.3.4]:5", "on", "penalty:", "\x00", "\udcff", "", " ",
             "Disconnecting:"]  # fmt: skip
    detector = SshdDetector("aggressive", max_connections=50)
    for i in range(20_000):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 14)))
        for mode in MODES:
            parse_message(text, mode)
        detector.feed(rng.randrange(5), text, float(i))
        parse_syslog_line(f"2026-11-21T00:00:00Z h sshd[{i}]: {text}")
        parse_syslog_line(f"Nov 21 00:00:00 h sshd[{i}]: {text}", reference=DEFAULT_REFERENCE)


def test_hostile_shapes_never_raise() -> None:
    long_user = "x from 198.51.100.9 port 1 ssh2" * 300
    for text in (
        "[ID 1 a.b] " * 5000 + "Failed password for root from 192.0.2.1 port 1 ssh2",
        f"Failed password for invalid user {long_user} from 192.0.2.1 port 1 ssh2",
        f"Connection closed by invalid user {long_user} 192.0.2.1 port 1 [preauth]",
        "Received disconnect from " + ":" * 5000,
        "pam_unix(sshd:auth): authentication failure; " + " rhost=" * 5000,
    ):
        for mode in MODES:
            parse_message(text, mode)
    # The real source survives the long injected user name:
    msg = parse_message(f"Failed password for invalid user {long_user} from 192.0.2.1 port 1 ssh2")
    assert msg is not None and str(msg.source) == "192.0.2.1"


def test_throughput_print() -> None:
    """Not an assertion: prints lines/s of parse_syslog_line + SshdDetector on a mixed sample."""
    sample = [c.line for p in CORPUS_FILES for c in read_corpus(p)]
    noise = [
        "2026-11-21T08:00:00.123456+00:00 lab CRON[123]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",  # noqa: E501
        "2026-11-21T08:00:00.123456+00:00 lab systemd-logind[1]: New session 5 of user root.",
    ]
    lines = (sample + noise * (len(sample) // 2)) * 40
    detector = SshdDetector()
    start = time.perf_counter()
    for line in lines:
        record = parse_syslog_line(line, reference=DEFAULT_REFERENCE)
        if record is not None:
            detector.feed(record.pid, record.message, record.wall_time)
    elapsed = time.perf_counter() - start
    rate = len(lines) / elapsed
    print(f"\nsshd pipeline: {len(lines)} lines in {elapsed:.3f}s = {rate:,.0f} lines/s")


# ---- the traditional-timestamp clock ------------------------------------------------------------

_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@pytest.mark.parametrize(
    "zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC"]
)
@pytest.mark.parametrize("reference_day", ["2026-01-05T06:00", "2024-07-01T23:30"])
def test_traditional_clock_matches_its_definition(zone: str, reference_day: str) -> None:
    """TraditionalClock (hour start + minutes, per-second near DST changes) equals the plain
    datetime computation for every hour of the year, the DST changes' hours minute by minute
    (Lord Howe shifts by 30 minutes), invalid dates and times, and last year's December."""
    tz = ZoneInfo(zone)
    reference = datetime.fromisoformat(reference_day).replace(tzinfo=tz)
    clock = TraditionalClock(reference)
    rng = random.Random(zone)
    checked = 0
    start = datetime(reference.year, 1, 1, tzinfo=UTC)
    for hour in range(366 * 24 + 24):
        when = (start + timedelta(hours=hour)).astimezone(tz)
        minutes = range(60) if when.dst() != (when + timedelta(hours=1)).dst() else (0, 29, 59)
        for minute in minutes:
            hms = f"{when.hour:02d}:{minute:02d}:{rng.randrange(60):02d}"
            mon, day = _MONTH_NAMES[when.month - 1], str(when.day)
            for text in (f"{mon} {day:>2} {hms}", f"{mon} {day:0>2} {hms}", f"{mon} {day} {hms}"):
                assert clock.stamp(text) == _traditional_seconds(mon, day, hms, reference), text
            _assert_minute_is_linear(clock, f"{mon} {day:>2} {hms[:5]}", rng)
            checked += 1
    # The minutes around the reference plus a day, where a stamp becomes last year's.
    limit = datetime.fromtimestamp(reference.timestamp() + 86400, tz)
    for minutes in range(-3, 4):
        when = limit + timedelta(minutes=minutes)
        mon, day = _MONTH_NAMES[when.month - 1], str(when.day)
        _assert_minute_is_linear(clock, f"{mon} {day:>2} {when.hour:02d}:{when.minute:02d}", rng)
    assert clock.minute(f"{_MONTH_NAMES[limit.month - 1]} {limit.day:>2} {limit:%H:%M}") is None
    for mon, day, hms in (("Feb", "29", "12:00:00"), ("Feb", "30", "00:00:00"),
                          ("Apr", "31", "00:00:00"), ("Dec", "31", "23:59:59"),
                          ("Jan", "1", "24:00:00"), ("Jan", "1", "00:60:00"),
                          ("Jan", "1", "00:00:60"), ("Foo", "1", "00:00:00"),
                          ("Jan", "\u0661", "00:00:00"), ("Jan", "1", "0\u0661:00:00"),
                          ("Jan", "1", "00:\u0661\u0661:00")):  # fmt: skip
        assert clock.stamp(f"{mon} {day:>2} {hms}") == _traditional_seconds(
            mon, day, hms, reference
        )
    assert checked > 26_000


def _assert_minute_is_linear(clock: TraditionalClock, minute: str, rng: random.Random) -> None:
    """TraditionalClock.minute's promise: when it gives a start, each second of the minute is
    stamp()ed as that start plus the second."""
    start = clock.minute(minute)
    if start is None:
        return
    for second in (0, 1, 58, 59, rng.randrange(60)):
        assert clock.stamp(f"{minute}:{second:02d}") == start + second, minute


def test_traditional_clock_is_memoised_per_zone() -> None:
    berlin = datetime(2026, 1, 5, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    same_instant_utc = berlin.astimezone(UTC)
    assert berlin == same_instant_utc  # equal as datetimes, yet they place stamps differently
    assert traditional_clock(berlin) is traditional_clock(berlin)
    assert traditional_clock(berlin) is not traditional_clock(same_instant_utc)
    assert traditional_clock(None) is None
    line = "Jan  5 08:00:00 h sshd[1]: Invalid user x from 192.0.2.1 port 1"
    in_berlin = parse_syslog_line(line, reference=berlin)
    in_utc = parse_syslog_line(line, reference=same_instant_utc)
    assert in_berlin is not None and in_utc is not None
    assert in_utc.wall_time is not None and in_berlin.wall_time == in_utc.wall_time - 3600
