# The bulk path (guardian.parsers.authlog_chunk.scan_chunk) must be the per-line path, only
# faster: on generated auth.logs, on the corpus lines in both syslog formats, on adversarial lines
# (injected " from 1.2.3.4 port 22", IPv6 and v4-mapped sources, odd white space, hosts the fast
# regex must refuse) and on any text Hypothesis invents, cut into chunks anywhere, it feeds the
# detector exactly the same messages in the same order and yields exactly the same detections.
#
# The per-line path is the reference: the text split on "\n" only (as the auth.log watcher splits
# it), each line through parse_syslog_line, each sshd record through SshdDetector.feed.
from __future__ import annotations

import gc
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardian.parsers import authlog_chunk
from guardian.parsers.authlog_chunk import (
    ScanCounts,
    scan_byte_chunks,
    scan_byte_stream,
    scan_chunk,
    scan_text,
)
from guardian.parsers.sshd import Detection, Mode, SshdDetector
from guardian.parsers.syslog_line import parse_syslog_line

REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "bench" / "gen_authlog.py"
OWN_CORPUS = sorted((REPO / "tests" / "data" / "sshd").glob("*.txt"))
FAIL2BAN = REPO.parent / "shared" / "corpus" / "fail2ban-sshd"
MODES: tuple[Mode, ...] = ("normal", "aggressive")
UTC_REFERENCE = datetime(2025, 12, 31, tzinfo=UTC)
BERLIN_REFERENCE = datetime(2026, 11, 21, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))


class Recorder(SshdDetector):
    """A detector that also records what it was fed: both paths must feed the same fields."""

    __slots__ = ("fed", "out")

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self.fed: list[tuple[Any, ...]] = []
        self.out: list[Detection] = []  # the detections, in order

    def feed_fields(self, *fields: Any) -> list[Detection]:
        self.fed.append(fields)
        return super().feed_fields(*fields)

    def feed_message(self, pid: Any, msg: Any, wall_time: Any = None) -> list[Detection]:
        if pid is None:
            self.fed.append(("stateless", msg, wall_time))
        return super().feed_message(pid, msg, wall_time)


def per_line(text: str, mode: Mode, reference: datetime | None) -> Recorder:
    detector = Recorder(mode)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for line in lines:
        record = parse_syslog_line(line, reference=reference)
        if record is not None:
            detector.out += detector.feed(record.pid, record.message, record.wall_time)
    return detector


def chunked(
    text: str, mode: Mode, reference: datetime | None, cuts: list[int] | None = None
) -> Recorder:
    """scan_chunk over pieces of `text` cut at `cuts` (offsets), keeping each partial line."""
    detector = Recorder(mode)
    tail = ""
    for start, end in zip([0, *(cuts or [])], [*(cuts or []), len(text)], strict=True):
        buffer = tail + text[start:end]
        detections, consumed = scan_chunk(buffer, detector, reference)
        assert "\n" not in buffer[consumed:]  # all whole lines were taken ...
        assert consumed == 0 or buffer[consumed - 1] == "\n"  # ... and only whole lines
        detector.out += detections
        tail = buffer[consumed:]
    detections, consumed = scan_chunk(tail, detector, reference, final=True)
    assert consumed == len(tail)
    detector.out += detections
    return detector


def assert_equivalent(
    text: str, reference: datetime | None = UTC_REFERENCE, cuts: list[int] | None = None
) -> int:
    """Both paths, both modes; returns how many detections were compared."""
    compared = 0
    for mode in MODES:
        want = per_line(text, mode, reference)
        got = chunked(text, mode, reference, cuts)
        assert got.fed == want.fed, _first_difference(got.fed, want.fed)
        assert got.out == want.out, _first_difference(got.out, want.out)
        compared += len(want.out)
    return compared


def _first_difference(got: list[Any], want: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"first difference at {i}:\n  chunk:    {a}\n  per-line: {b}"
    return f"lengths differ: chunk {len(got)}, per-line {len(want)}"


def random_cuts(text: str, rng: random.Random, pieces: int) -> list[int]:
    return sorted(rng.sample(range(1, len(text)), min(pieces, len(text) - 1))) if text else []


# ---- inputs ---------------------------------------------------------------------------------


def generated(tmp_path: Path, seed: int, lines: int = 20_000) -> str:
    out = tmp_path / f"auth-{seed}.log"
    subprocess.run(
        [sys.executable, str(GENERATOR), str(out), "--lines", str(lines), "--seed", str(seed)],
        check=True,
        capture_output=True,
    )
    return out.read_text()


def corpus_lines() -> Iterator[str]:
    """Every data line of our annotated corpus and of fail2ban's (its journal file as
    "host sshd[PID]: MESSAGE" lines)."""
    paths = [*OWN_CORPUS, FAIL2BAN / "sshd", FAIL2BAN / "sshd-journal"]
    for path in paths:
        if not path.is_file():
            pytest.fail(f"corpus file missing: {path}", pytrace=False)
        for raw in path.read_text().splitlines():
            if raw.strip() and not raw.startswith("#"):
                yield raw


def rewrapped(lines: Iterator[str]) -> str:
    """The corpus lines as they are, and each sshd message rewrapped in both formats the fast
    path knows (traditional, RFC 3339 with and without a fraction), as sshd and sshd-session;
    fail2ban's journal lines ("host sshd[PID]: msg") become syslog lines the same way."""
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        record = parse_syslog_line(line, reference=UTC_REFERENCE)
        if record is not None:
            pid, message = record.pid, record.message
        else:
            _, _, rest = line.partition(" ")  # the journal line's host
            ident, _, rest = rest.partition("[")
            pid_text, _, message = rest.partition("]: ")
            if not (ident in ("sshd", "sshd-session") and pid_text.isdigit()):
                continue
            pid = int(pid_text)
        pid = pid if pid is not None else 1000 + i
        second = i % 60
        out.append(f"Nov 21 08:{i % 60:02d}:{second:02d} h sshd[{pid}]: {message}")
        out.append(f"2026-11-21T08:00:{second:02d}.{i:06d}+01:00 h sshd-session[{pid}]: {message}")
        out.append(f"2026-11-21T08:00:{second:02d}Z h sshd[{pid}]: {message}")
    return "\n".join(out) + "\n"


INJECTED_USER = "x from 198.51.100.66 port 22"
ADVERSARIAL = [
    # injection: user names that carry a fake tail
    f"Nov 21 08:00:00 h sshd[1]: Invalid user {INJECTED_USER} from 192.0.2.1 port 4001",
    f"Nov 21 08:00:01 h sshd[1]: Failed password for invalid user {INJECTED_USER} from "
    "192.0.2.1 port 4001 ssh2",
    f"Nov 21 08:00:01 h sshd[1]: Connection closed by invalid user {INJECTED_USER} 192.0.2.1 "
    "port 4001 [preauth]",
    "Nov 21 08:00:01 h sshd[2]: Failed password for invalid user port from 192.0.2.2 port 1 ssh2",
    "Nov 21 08:00:01 h sshd[2]: Disconnected from invalid user port 192.0.2.2 port 1 [preauth]",
    "Nov 21 08:00:02 h sshd[3]: Failed password for root from 192.0.2.3 port 5 ssh2: x from "
    "198.51.100.7 port 9 ssh2",
    "Nov 21 08:00:02 h sshd[3]: Accepted publickey for root:x from 192.0.2.3 port 5 ssh2",
    "Nov 21 08:00:02 h sshd[4]: Invalid user  from 192.0.2.4 port 6",
    "Nov 21 08:00:02 h sshd[4]: Failed password for invalid user  from 192.0.2.4 port 6 ssh2",
    "Nov 21 08:00:02 h sshd[5]: Failed password for sshd from 192.0.2.5 port 7 ssh2",
    "Nov 21 08:00:02 h sshd[5]: Accepted password for invalid user x from 192.0.2.5 port 7 ssh2",
    # IPv6, v4-mapped, hosts the fast path must leave to the full parser
    "Nov 21 08:00:03 h sshd[6]: Invalid user a from 2001:db8::1 port 7",
    "Nov 21 08:00:03 h sshd[6]: Failed password for invalid user a from 2001:db8::1 port 7 ssh2",
    "Nov 21 08:00:03 h sshd[7]: Failed password for root from ::ffff:192.0.2.7 port 8 ssh2",
    "Nov 21 08:00:03 h sshd[7]: Connection closed by authenticating user root ::ffff:192.0.2.7 "
    "port 8 [preauth]",
    "Nov 21 08:00:03 h sshd[8]: Unable to negotiate with 2001:db8:: port 9: no matching host key "
    "type found. Their offer: ssh-dss [preauth]",
    "Nov 21 08:00:03 h sshd[8]: Unable to negotiate with 192.0.2.8: port 9: no matching cipher",
    "Nov 21 08:00:03 h sshd[8]: Unable to negotiate with 192.0.2.8 port 9: ",
    "Nov 21 08:00:03 h sshd[8]: Unable to negotiate with 192.0.2.8 port 9: x [preauth] ",
    "Nov 21 08:00:03 h sshd[9]: Received disconnect from 192.0.2.9: port 1:11: Bye [preauth]",
    "Nov 21 08:00:03 h sshd[9]: Failed password for root from host.example port 1 ssh2",
    "Nov 21 08:00:03 h sshd[9]: Failed password for root from 1.2.3.4.5 port 1 ssh2",
    "Nov 21 08:00:03 h sshd[9]: Invalid user x from -bad- port 1",
    # odd white space and endings
    "Nov 21 08:00:04 h sshd[10]: Failed password for root from 192.0.2.10 port 11 ssh2 ",
    "Nov 21 08:00:04 h sshd[10]: Failed password for root from 192.0.2.10 port 11 ssh2\r",
    "Nov 21 08:00:04 h sshd[10]: Connection closed by 192.0.2.10 port 11  [preauth]",
    "Nov 21 08:00:04 h sshd[11]: Received disconnect from 192.0.2.11 port 12:11: Bye Bye  "
    "[preauth]",
    "Nov 21 08:00:04 h sshd[11]: Received disconnect from 192.0.2.11 port 12:3: "
    "com.jcraft.jsch.JSchException: Auth fail [preauth]",
    "Nov 21 08:00:04 h sshd[11]: Received disconnect from 192.0.2.11 port 12:3: Auth fail  ",
    "Nov 21 08:00:04 h sshd[11]: Received disconnect from 192.0.2.11 port 12:11: Bye [preauth] ",
    "Nov 21 08:00:04 h sshd[11]: Received disconnect from 192.0.2.11 port 12:11: Bye [preauth]\t",
    "Nov 21 08:00:04 h sshd[11]: Received disconnect from 192.0.2.11 port 12:11:[preauth]",
    "Nov 21 08:00:04 h sshd[11]: Received disconnect from 192.0.2.11 port 12:011: x [preauth]",
    "Nov 21 08:00:04 h sshd[12]: Received disconnect from 192.0.2.12 port 13:14: No supported "
    "authentication methods available [preauth]",
    "Nov 21 08:00:04 h sshd[12]: Received disconnect from 192.0.2.12 port 13:11: [preauth]",
    "Nov 21 08:00:05 h sshd[13]: pam_unix(sshd:auth): authentication failure; logname= uid=0 "
    "euid=0 tty=ssh ruser= rhost=192.0.2.13  user=",
    "Nov 21 08:00:05 h sshd[13]: pam_unix(sshd:auth): authentication failure; logname= uid=0 "
    "euid=0 tty=ssh ruser=bob rhost=192.0.2.13",
    "Nov 21 08:00:05 h sshd[13]: pam_unix(sshd:auth): check pass; user unknown [preauth]",
    "Nov 21 08:00:05 h sshd[13]: pam_unix(sshd:session): session opened for user [preauth]",
    "Nov 21 08:00:05 h sshd[13]: Failed password for nobody from 192.0.2.13 port 1 ssh2",
    # ports and PIDs of absurd length
    "Nov 21 08:00:06 h sshd[14]: Invalid user x from 192.0.2.14 port " + "9" * 11,
    "Nov 21 08:00:06 h sshd[14]: Invalid user x from 192.0.2.14 port " + "9" * 5000,
    "Nov 21 08:00:06 h sshd[" + "7" * 11 + "]: Invalid user x from 192.0.2.14 port 1",
    "Nov 21 08:00:06 h sshd[" + "7" * 5000 + "]: Invalid user x from 192.0.2.14 port 1",
    # timestamps: unpadded day, fraction, invalid dates, RFC 3339 zones, RFC 5424, no host
    "Nov 1 08:00:07 h sshd[15]: Invalid user x from 192.0.2.15 port 1",
    "Nov  1 08:00:07.250 h sshd[15]: Invalid user x from 192.0.2.15 port 1",
    "Feb 30 08:00:07 h sshd[15]: Invalid user x from 192.0.2.15 port 1",
    "Nov 21 24:00:07 h sshd[15]: Invalid user x from 192.0.2.15 port 1",
    "Nov 21 08:61:07 h sshd[15]: Invalid user x from 192.0.2.15 port 1",
    "Dec 31 23:59:59 h sshd[15]: Invalid user x from 192.0.2.15 port 1",
    "2026-11-21T08:00:08.123456-05:00 h sshd[16]: Invalid user x from 192.0.2.16 port 1",
    "2026-11-21T08:00:08z h sshd[16]: Invalid user x from 192.0.2.16 port 1",
    "2026-11-21T08:00:08+0100 h sshd[16]: Invalid user x from 192.0.2.16 port 1",
    "2026-13-21T08:00:08Z h sshd[16]: Invalid user x from 192.0.2.16 port 1",
    "2026-11-21 08:00:08Z h sshd[16]: Invalid user x from 192.0.2.16 port 1",
    "<38>1 2026-11-21T08:00:09Z h sshd 17 - - Invalid user x from 192.0.2.17 port 1",
    "Nov 21 08:00:09 sshd[17]: Invalid user x from 192.0.2.17 port 1",
    "Nov 21 08:00:09 [sshd]: Invalid user x from 192.0.2.17 port 1",
    "Nov 21 08:00:09 h sshd: Invalid user x from 192.0.2.17 port 1",
    "Nov 21 08:00:09 h\tx sshd[17]: Invalid user x from 192.0.2.17 port 1",
    "Nov 21 08:00:09 h sshd[17]:  Invalid user x from 192.0.2.17 port 1",
    "Nov 21 08:00:09 sshd CRON[17]: Invalid user x from 192.0.2.17 port 1",
    # stamps _SCAN matches loosely (15 characters, then up to a space) but only the per-line
    # parser may place: the shape is checked once per new stamp, then remembered
    "xxxxxxxxxxxxxxx h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:00:0x h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:00:60 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:00:0\u0661 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:\u0660\u0660:01 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:00:01. h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:00:01.5x h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:00:01.5 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "nov 21 08:00:01 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 1  08:00:01 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:00:01:2 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08x00:01 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 21 08:00x01 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "2026-11-21T08:00:08.+01:00 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "2026-11-21T08:00:08.25Z h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "2026-11-21T08:00:08.\u0662Z h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "2026-11-21T08:00:08+01:0x h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "2026-11-21T08:00:08Zx h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "2026-11-21T08:00:08 h sshd[18]: Invalid user x from 192.0.2.18 port 1",
    "Nov 1 08:00:07 h sshd[18]: pam_unix(sshd:auth): check pass; user unknown",
    "xxxxxxxxxxxxxxx h sshd[18]: pam_unix(sshd:auth): check pass; user unknown",
    # other programs, some mentioning sshd
    "Nov 21 08:00:10 h sudo[18]: alice : COMMAND=/usr/sbin/sshd -t",
    "Nov 21 08:00:10 h CRON[18]: pam_unix(cron:session): session opened for user root(uid=0)",
    "Nov 21 08:00:10 h sshd-keygen[18]: Invalid user x from 192.0.2.18 port 1",
    "",
    "sshd",
    "\ufffd\ufffd sshd[1]: \x00",
    # a session, and stateful multi-line rules across the fast and the slow path
    "Nov 21 08:00:11 h sshd[19]: Failed publickey for alice from 192.0.2.19 port 2 ssh2: "
    "ED25519 SHA256:abc",
    "Nov 21 08:00:11 h sshd[19]: Failed password for bob from 192.0.2.19 port 2 ssh2",
    "Nov 21 08:00:11 h sshd[19]: Accepted password for carol from 192.0.2.19 port 2 ssh2",
    "Nov 21 08:00:11 h sshd[19]: pam_unix(sshd:session): session opened for user carol(uid=1)",
    "Nov 21 08:00:12 h sshd[19]: Received disconnect from 192.0.2.19 port 2:11: disconnected",
    "Nov 21 08:00:12 h sshd[19]: Disconnected from user carol 192.0.2.19 port 2",
    "Nov 21 08:00:12 h sshd[19]: pam_unix(sshd:session): session closed for user carol",
    "Nov 21 08:00:12 h sshd[20]: Disconnecting: Too many authentication failures [preauth]",
    "Nov 21 08:00:12 h sshd[20]: Connection reset by 192.0.2.20 port 3 [preauth]",
    "Nov 21 08:00:13 h sshd-session[21]: Connection closed by user dave 192.0.2.21 port 4",
    "Nov 21 08:00:13 h sshd-session[21]: Timeout before authentication for 192.0.2.21 port 4",
]


# ---- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_logs_equivalent(tmp_path: Path, seed: int) -> None:
    text = generated(tmp_path, seed)
    rng = random.Random(seed)
    compared = assert_equivalent(text, cuts=random_cuts(text, rng, 40))
    assert compared > 5000  # the generator's attacks really produced detections


def test_generated_log_with_a_reference_in_another_zone(tmp_path: Path) -> None:
    text = generated(tmp_path, 4, lines=5000)
    assert assert_equivalent(text, reference=BERLIN_REFERENCE) > 1000
    assert_equivalent(text, reference=None)  # traditional stamps unplaced: wall_time None


def test_corpus_lines_in_both_formats_equivalent() -> None:
    text = rewrapped(corpus_lines())
    assert text.count("\n") > 1500
    for reference in (UTC_REFERENCE, BERLIN_REFERENCE):
        assert assert_equivalent(text, reference) > 500
    rng = random.Random(5)
    assert_equivalent(text, cuts=random_cuts(text, rng, 200))


def test_adversarial_lines_equivalent() -> None:
    text = "\n".join(ADVERSARIAL) + "\n"
    assert assert_equivalent(text) > 10
    rng = random.Random(6)
    for _ in range(20):  # shuffled: other neighbours, other gaps between fast lines
        lines = ADVERSARIAL[:]
        rng.shuffle(lines)
        shuffled = "\n".join(lines)  # no final newline: the last line is a final partial one
        assert_equivalent(shuffled, cuts=random_cuts(shuffled, rng, 30))


def test_chunk_boundaries_everywhere() -> None:
    lines = [line for line in ADVERSARIAL if line.startswith("Nov 21 08:00:0")][:12]
    text = "\n".join(lines) + "\n"
    for cut in range(1, len(text)):
        assert_equivalent(text, cuts=[cut])
    assert_equivalent(text, cuts=list(range(1, len(text))))  # one character at a time


@pytest.mark.parametrize("piece", [1, 37, 500, 1 << 16])
def test_scan_text_in_pieces_equivalent(tmp_path: Path, piece: int) -> None:
    """scan_text cuts a text into pieces after a newline (each piece's first line starts at the
    previous piece's last "\n"): any piece size gives the per-line path's detections."""
    text = generated(tmp_path, 8, lines=2000) + "\n".join(ADVERSARIAL)  # no final newline
    for mode in MODES:
        want = per_line(text, mode, UTC_REFERENCE)
        got = Recorder(mode)
        counts = ScanCounts()
        pieces = 0
        for found in scan_text(text, got, UTC_REFERENCE, counts=counts, piece=piece):
            got.out += found
            pieces += 1
        assert got.fed == want.fed, _first_difference(got.fed, want.fed)
        assert got.out == want.out
        assert counts.lines == len(text.split("\n")) and counts.errors == 0
        assert pieces >= min(len(text) // max(piece, 1000), 2)
    assert list(scan_text("", SshdDetector())) == []


def test_partial_line_is_left_to_the_caller() -> None:
    detector = SshdDetector()
    line = "Nov 21 08:00:00 h sshd[1]: Invalid user x from 192.0.2.1 port 1"
    assert scan_chunk(line, detector, UTC_REFERENCE) == ([], 0)
    assert scan_chunk("", detector, UTC_REFERENCE) == ([], 0)
    detections, consumed = scan_chunk(line + "\n" + line[:20], detector, UTC_REFERENCE)
    assert consumed == len(line) + 1 and [d.rule for d in detections] == ["invalid_user"]
    detections, consumed = scan_chunk(line, detector, UTC_REFERENCE, final=True)
    assert consumed == len(line)
    assert [(d.rule, str(d.source)) for d in detections] == [("invalid_user", "192.0.2.1")]


def test_byte_stream_pieces_equivalent() -> None:
    """scan_byte_chunks: pieces cut anywhere, also inside a UTF-8 sequence, with invalid bytes,
    decode like the whole text does and give the per-line path's detections."""
    extra = [
        "Nov 21 08:00:20 h sshd[30]: Invalid user jürgen€ from 192.0.2.30 port 1",
        "Nov 21 08:00:20 h sshd[30]: Failed password for invalid user jürgen€ from 192.0.2.30 "
        "port 1 ssh2",
    ]
    data = ("\n".join(ADVERSARIAL + extra) + "\n").encode()
    data += b"Nov 21 08:00:21 h sshd[31]: Invalid user \xff\xc3 from 192.0.2.31 port 1\n"
    data += "Nov 21 08:00:22 h sshd[32]: Invalid user ü from 192.0.2.32 port 1".encode()
    text = data.decode("utf-8", "replace")
    rng = random.Random(7)
    for mode in MODES:
        want = per_line(text, mode, UTC_REFERENCE)
        for _ in range(10):
            cuts = sorted(rng.sample(range(1, len(data)), 40))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
            got = Recorder(mode)
            for found in scan_byte_chunks(pieces, got, UTC_REFERENCE):
                got.out += found
            assert got.fed == want.fed and got.out == want.out
            streamed = Recorder(mode)
            for found in scan_byte_stream(pieces, streamed, UTC_REFERENCE):
                streamed.out += found
            assert streamed.fed == want.fed and streamed.out == want.out
    assert any(d.user == "jürgen€" for d in want.out)
    assert any(d.user == "\ufffd\ufffd" for d in want.out)


def test_byte_stream_memory_is_bounded() -> None:
    """A line without end is scanned in pieces once it outgrows max_line: the held tail never
    exceeds max_line plus one piece."""
    pieces = [b"x" * 100] * 50 + [b"\nNov 21 08:00:00 h sshd[1]: Invalid user x from 192.0.2.1 "]
    pieces += [b"port 1\n"]
    counts = ScanCounts()
    found = [d for ds in scan_byte_chunks(pieces, SshdDetector(), None, counts=counts, max_line=300)
             for d in ds]  # fmt: skip
    assert counts.lines >= 5000 // 400  # the 5000-byte "line" went through in pieces
    assert [str(d.source) for d in found] == ["192.0.2.1"]


def test_counts() -> None:
    text = "\n".join(ADVERSARIAL) + "\n"
    counts = ScanCounts()
    detections, _ = scan_chunk(text, SshdDetector(), None, counts=counts)
    assert counts.lines == len(ADVERSARIAL)
    sshd = [line for line in ADVERSARIAL if parse_syslog_line(line) is not None]
    assert counts.sshd_lines == len(sshd)
    assert counts.untimed == sum(1 for d in detections if d.wall_time is None) > 0
    assert counts.errors == 0


# Hypothesis: lines assembled from the fragments sshd lines are made of, and raw text.
_FRAGMENTS = [
    "Nov 21 08:00:00 h sshd[1]: ", "Nov  2 08:00:0", "2026-11-21T08:00:00Z h sshd[2]: ",
    "2026-11-21T08:00:00.5+01:00 h sshd-session[3]: ", " sshd[", "]: ", "Failed ", "password ",
    "publickey ", "Accepted ", "for ", "invalid user ", "user ", "from ", "port ", "22", " ssh2",
    ": ", "192.0.2.1", "2001:db8::", "::ffff:192.0.2.2", "Invalid ", "Connection closed by ",
    "Connection reset by ", "Disconnected from ", "authenticating user ", "Received disconnect ",
    ":11:", ":3:", ":14:", " [preauth]", "Unable to negotiate with ", "pam_unix(sshd:auth): ",
    "authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=", "  user=",
    "check pass;", "pam_unix(sshd:session): session opened for user ", "closed ", " ", "  ",
    "\t", "\r", ":", "x", "\ufffd", "\x00", "\u2028", "\x85", "0", "99999999999",
]  # fmt: skip
_LINE = st.lists(st.sampled_from(_FRAGMENTS), max_size=14).map("".join)
_TEXT = st.one_of(
    st.lists(_LINE, max_size=12).map("\n".join),
    st.text(max_size=300),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT, data=st.data())
def test_random_text_never_raises_and_stays_equivalent(text: str, data: st.DataObject) -> None:
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=4))))
    cuts = [cut for cut in cuts if 0 < cut < len(text)]
    assert_equivalent(text, cuts=cuts)
    counts = ScanCounts()
    for mode in MODES:
        scan_chunk(text, SshdDetector(mode), UTC_REFERENCE, final=True, counts=counts)
    assert counts.errors == 0


def test_old_references_leave_little_behind() -> None:
    """The auth.log watcher takes a new reference every hour, for weeks. The seconds memoised
    for old references must not pile up: 64 references were kept (the old code kept ~6,500
    blocks here), now a few."""
    detector = SshdDetector("normal")
    start = datetime(2026, 3, 1, tzinfo=UTC)

    def hour_of_lines(hour: int) -> str:  # 200 distinct seconds, lines that change nothing
        at = start + timedelta(hours=hour)
        stamps = (at + timedelta(seconds=s) for s in range(200))
        return "".join(
            f"{t:%b} {t.day:2} {t:%H:%M:%S} h sshd[7]: pam_unix(sshd:session): session opened "
            f"for user alice(uid=1000) by (uid=0)\n"
            for t in stamps
        )

    texts = [hour_of_lines(hour) for hour in range(80)]
    scan_chunk(texts[0], detector, start)
    gc.collect()
    before = sys.getallocatedblocks()
    for hour, text in enumerate(texts[1:], start=1):
        assert scan_chunk(text, detector, start + timedelta(hours=hour)) == ([], len(text))
    gc.collect()
    assert sys.getallocatedblocks() - before < 4000


def test_only_messages_without_a_client_port_are_memoised() -> None:
    """A message carrying a client port never repeats: memoising it only filled the memo (the
    soak's saw tooth). Port-less messages repeat and are memoised; both parse the same."""
    memo = authlog_chunk._memos["normal"]
    memo.clear()
    with_port = [
        f"Nov 21 08:00:0{i} h sshd[{100 + i}]: Timeout before authentication for 192.0.2.{i} "
        f"port {4000 + i}"
        for i in range(5)
    ]
    without = "error: kex_exchange_identification: Connection closed by remote host"
    lines = [*with_port, *(f"Nov 21 08:00:09 h sshd[{200 + i}]: {without}" for i in range(3))]
    text = "\n".join(lines) + "\n"
    assert_equivalent(text)
    memo.clear()
    scan_chunk(text, SshdDetector("normal"), UTC_REFERENCE)
    assert list(memo) == [without]
