# `guardian replay` (no root): the real command line on a real btmp captured from Debian 12's sshd
# (tests/data/sshd/debian12-btmp.bin), on a btmp written here with escalating repeat offenders,
# and on a synthetic auth.log from bench/gen_authlog.py. The expectations are derived here,
# independently of the code under test: records are unpacked with the spec's struct layout
# (spec/sshd-events.md §5), log lines are classified with hand-written regexes, and the bans come
# from a small reference model of the [ban] rules written in this file (ReferenceBans).
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BTMP = REPO / "tests" / "data" / "sshd" / "debian12-btmp.bin"
GEN_AUTHLOG = REPO / "bench" / "gen_authlog.py"

# The spec's layout of glibc's struct utmp on x86_64: type, pid, line, id, user, host, exit,
# session, tv_sec, tv_usec, addr_v6, reserved.
UTMP = struct.Struct("<hxxi32s4s32s256shhiii16s20x")
LOGIN_PROCESS, USER_PROCESS = 6, 7
OFFENCE_MEMORY = 30 * 86400.0  # the "offence history", as documented in config.py
V6_PREFIX = 64


# -- a reference model of the ban rules --------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    maxretry: int = 5
    findtime: float = 600.0
    bantime: float = 600.0
    factor: float = 2.0
    maxtime: float = 604800.0

    def toml(self) -> str:
        return (
            "[ban]\n"
            f"maxretry = {self.maxretry}\n"
            f'findtime = "{self.findtime:g}s"\n'
            f'bantime = "{self.bantime:g}s"\n'
            f"factor = {self.factor:g}\n"
            f'maxtime = "{self.maxtime:g}s"\n'
        )


@dataclass
class ReferenceBans:
    """fail2ban's rules with escalation, as the issue states them: `maxretry` failures of one
    source (IPv6: its /64) within `findtime` ban it for bantime * factor ** (offence - 1),
    capped at maxtime; failures while banned do not count; a ban empties the window."""

    policy: Policy
    windows: dict[str, list[float]] = field(default_factory=dict)
    banned_until: dict[str, float] = field(default_factory=dict)
    offences: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (n, last)
    bans: list[tuple[float, str, int, float]] = field(default_factory=list)  # at, net, n, secs

    def fail(self, at: float, address: str) -> None:
        key = source_key(address)
        if self.banned_until.get(key, -math.inf) > at:
            return
        floor = at - self.policy.findtime
        window = [t for t in self.windows.get(key, []) if t >= floor] + [at]
        if len(window) < self.policy.maxretry:
            self.windows[key] = window
            return
        self.windows.pop(key, None)
        previous, last = self.offences.get(key, (0, -math.inf))
        offence = previous + 1 if at - last <= OFFENCE_MEMORY else 1
        seconds = min(
            self.policy.bantime * self.policy.factor ** (offence - 1), self.policy.maxtime
        )
        self.offences[key] = (offence, at)
        self.banned_until[key] = at + seconds
        self.bans.append((at, key, offence, seconds))


def source_key(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/{V6_PREFIX}", strict=False))
    return f"{ip}/32"


# -- running the command under test ------------------------------------------------------------


def replay(path: Path, policy: Policy, tmp: Path, *extra: str) -> dict[str, object]:
    config = tmp / "replay.toml"
    config.write_text(policy.toml())
    argv = [sys.executable, "-m", "guardian", "replay", str(path), "--json", "-c", str(config)]
    done = subprocess.run(
        [*argv, *extra], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def reported_bans(report: dict[str, object]) -> list[tuple[float, str, int, float]]:
    bans = report["bans"]
    assert isinstance(bans, list)
    return [(b["at"], b["network"], b["offence"], b["seconds"]) for b in bans]


# -- btmp --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    type: int
    pid: int
    line: str
    user: str
    host: str
    tv_sec: int
    address: str | None


def unpack_btmp(data: bytes) -> list[Record]:
    assert len(data) % UTMP.size == 0
    out = []
    for fields in UTMP.iter_unpack(data):
        ut_type, pid, line, _id, user, host, _t, _e, _s, sec, _usec, addr, *_ = fields
        host_text = host.split(b"\0")[0].decode(errors="replace")
        address: str | None = None
        if addr != bytes(16):
            if addr[4:] == bytes(12):
                address = str(ipaddress.IPv4Address(addr[:4]))
            else:
                address = str(ipaddress.IPv6Address(addr))
        else:
            try:
                address = str(ipaddress.ip_address(host_text))
            except ValueError:
                address = None
        out.append(
            Record(
                ut_type,
                pid,
                line.split(b"\0")[0].decode(errors="replace"),
                user.split(b"\0")[0].decode(errors="replace"),
                host_text,
                sec,
                address,
            )
        )
    return out


def pack_record(r: Record) -> bytes:
    addr = bytes(16)
    if r.address is not None:
        ip = ipaddress.ip_address(r.address)
        addr = ip.packed + bytes(16 - len(ip.packed))
    return UTMP.pack(
        r.type,
        r.pid,
        r.line.encode(),
        b"",
        r.user.encode(),
        r.host.encode(),
        0,
        0,
        0,
        r.tv_sec,
        0,
        addr,
    )


def expected_from_btmp(records: Sequence[Record], policy: Policy) -> tuple[int, int, ReferenceBans]:
    """(failures, skipped without an address, reference bans): sshd's records are
    LOGIN_PROCESS on an ssh: line; a record without an address is never banned."""
    model = ReferenceBans(policy)
    failures = skipped = 0
    for r in records:
        if r.type != LOGIN_PROCESS or not r.line.startswith("ssh"):
            continue
        if r.address is None:
            skipped += 1
            continue
        failures += 1
        model.fail(float(r.tv_sec), r.address)
    return failures, skipped, model


POLICIES = [
    Policy(),  # the defaults: 5 in 10 min, 10 min
    Policy(maxretry=3, findtime=60.0, bantime=30.0),
    Policy(maxretry=2, findtime=3600.0, bantime=600.0),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"maxretry{p.maxretry}")
def test_replay_of_debian12_btmp(policy: Policy, tmp_path: Path) -> None:
    records = unpack_btmp(BTMP.read_bytes())
    failures, skipped, model = expected_from_btmp(records, policy)
    report = replay(BTMP, policy, tmp_path)
    assert report["kind"] == "btmp"
    assert report["units"] == len(records) == 18
    assert report["failures"] == failures
    assert report["skipped_no_address"] == skipped
    assert report["by_rule"] == {"btmp": failures}
    assert report["distinct_sources"] == len({r.address for r in records if r.address})
    assert reported_bans(report) == model.bans
    assert model.bans, "the capture must ban someone under every policy tried"


def test_replay_of_the_real_btmp_with_defaults_matches_the_capture() -> None:
    """A sanity anchor for the reference model itself, written out by hand from the records:
    192.0.2.2 reaches 5 failures at 08:14:56 (3 + 2), 2001:db8::2 at 08:15:42 (3 + 3)."""
    records = unpack_btmp(BTMP.read_bytes())
    _, _, model = expected_from_btmp(records, Policy())
    assert [(int(at), net, n, s) for at, net, n, s in model.bans] == [
        (1795248896, "192.0.2.2/32", 1, 600.0),
        (1795248942, "2001:db8::/64", 1, 600.0),
    ]


def escalating_btmp(start: int) -> list[Record]:
    """Repeat offenders every 100 s, background noise, and records replay must pass over."""
    records: list[Record] = []
    pid = 4000
    for burst in range(12):
        t = start + 100 * burst
        for i in range(3):
            pid += 1
            records.append(Record(6, pid, "ssh:notty", "root", "203.0.113.7", t + i, "203.0.113.7"))
            addr6 = str(ipaddress.ip_address(f"2001:db8:7:0:{burst:x}::{i + 1}"))  # one /64
            records.append(Record(6, pid, "ssh:notty", "admin", addr6, t + i, addr6))
        # One record each for many sources: never enough for a ban.
        for j in range(5):
            noise = f"198.51.100.{burst * 5 + j + 1}"
            records.append(Record(6, pid + j, "ssh:notty", "test", noise, t + 50, noise))
        records.append(Record(USER_PROCESS, 1, "pts/0", "alice", "192.0.2.9", t + 60, "192.0.2.9"))
        records.append(Record(6, pid, "ssh:notty", "root", "attacker.example", t + 61, None))
    return records


@pytest.mark.parametrize(
    "policy",
    [Policy(maxretry=3, findtime=60.0, bantime=60.0), Policy(maxretry=6, bantime=150.0)],
    ids=["escalates", "long-window"],
)
def test_replay_of_a_generated_btmp_escalates_repeat_offences(
    policy: Policy, tmp_path: Path
) -> None:
    records = escalating_btmp(1_780_000_000)
    path = tmp_path / "btmp"
    path.write_bytes(b"".join(pack_record(r) for r in records))
    assert unpack_btmp(path.read_bytes()) == records  # the packer is the spec's layout
    failures, skipped, model = expected_from_btmp(records, policy)
    report = replay(path, policy, tmp_path)
    assert report["kind"] == "btmp"
    assert (report["units"], report["failures"]) == (len(records), failures)
    assert report["skipped_no_address"] == skipped == 12
    assert reported_bans(report) == model.bans
    offences = Counter(n for _, _, n, _ in model.bans)
    assert max(offences) >= 2, "the data must make someone a repeat offender"


# -- auth.log ----------------------------------------------------------------------------------

ADDR = r"(?P<addr>[0-9a-fA-F:.]+)"
STAMP = r"^(?P<stamp>[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d) \S+ sshd\[(?P<pid>\d+)\]: "
# The counting rules of spec/sshd-events.md §4, for the messages the generator writes. A line
# that matches none of them counts nothing (PAM's "authentication failure" is the twin of the
# "Failed password" that follows it: one attempt).
NORMAL_RULES: dict[str, re.Pattern[str]] = {
    "invalid_user": re.compile(STAMP + rf"Invalid user \S* from {ADDR} port \d+$"),
    "failed_password": re.compile(
        STAMP + rf"Failed password for (?:invalid user )?\S+ from {ADDR} port \d+ ssh2$"
    ),
}
AGGRESSIVE_RULES: dict[str, re.Pattern[str]] = {
    **NORMAL_RULES,
    "connection_closed": re.compile(
        STAMP + rf"Connection closed by (?:authenticating user \S+ |invalid user \S+ )?"
        rf"{ADDR} port \d+ \[preauth\]$"
    ),
    "disconnected": re.compile(
        STAMP + rf"Disconnected from (?:invalid|authenticating) user \S+ {ADDR} port \d+ "
        r"\[preauth\]$"
    ),
    "negotiation_failed": re.compile(
        STAMP + rf"Unable to negotiate with {ADDR} port \d+: no matching .* found\..*$"
    ),
}


@dataclass(frozen=True)
class Failure:
    stamp: str
    rule: str
    address: str


def classify(lines: Iterable[str], rules: dict[str, re.Pattern[str]]) -> list[Failure]:
    found = []
    for line in lines:
        hits = [(name, m) for name, rx in rules.items() if (m := rx.match(line))]
        assert len(hits) <= 1, f"two rules match one line: {line!r}"
        if hits:
            name, m = hits[0]
            found.append(Failure(m["stamp"], name, m["addr"]))
    return found


def stamp_seconds(stamp: str, year: int) -> float:
    """A traditional syslog stamp in the local zone, in the given year."""
    parsed = datetime.strptime(f"{year} {stamp}", "%Y %b %d %H:%M:%S")
    return time.mktime(parsed.timetuple())


def stamp_of(epoch: float) -> str:
    text = time.strftime("%b %d %H:%M:%S", time.localtime(epoch))
    return text[:4] + (" " + text[5] if text[4] == "0" else text[4:6]) + text[6:]


@pytest.fixture(scope="module")
def authlog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("authlog") / "auth.log"
    subprocess.run(
        [sys.executable, str(GEN_AUTHLOG), str(path), "--lines", "20000", "--sources", "300"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


@pytest.mark.parametrize("mode", ["normal", "aggressive"])
@pytest.mark.parametrize(
    "policy",
    [Policy(), Policy(maxretry=3, findtime=3600.0, bantime=300.0)],
    ids=["defaults", "maxretry3"],
)
def test_replay_of_a_generated_authlog(
    authlog: Path, mode: str, policy: Policy, tmp_path: Path
) -> None:
    lines = authlog.read_text().splitlines()
    rules = AGGRESSIVE_RULES if mode == "aggressive" else NORMAL_RULES
    failures = classify(lines, rules)
    year = datetime.fromtimestamp(authlog.stat().st_mtime).year
    model = ReferenceBans(policy)
    for f in failures:
        model.fail(stamp_seconds(f.stamp, year), f.address)

    report = replay(authlog, policy, tmp_path, "--mode", mode)
    assert report["kind"] == "authlog"
    assert report["units"] == len(lines) == 20000
    assert report["by_rule"] == dict(Counter(f.rule for f in failures))
    assert report["failures"] == len(failures)
    assert report["distinct_sources"] == len({f.address for f in failures})
    assert report["skipped_no_address"] == 0
    got = reported_bans(report)
    # Times compared as the log's own stamps: the year and zone are the replay's to infer.
    assert [(stamp_of(at), net, n, s) for at, net, n, s in got] == [
        (stamp_of(at), net, n, s) for at, net, n, s in model.bans
    ]
    assert len(model.bans) >= 3, "the generated log must earn some bans"


def test_replay_prints_counts_per_rule_and_the_bans(authlog: Path, tmp_path: Path) -> None:
    """The human-readable report (like fail2ban-regex): one line per rule, then the bans."""
    config = tmp_path / "c.toml"
    config.write_text(Policy(maxretry=3, findtime=3600.0).toml())
    done = subprocess.run(
        [sys.executable, "-m", "guardian", "replay", str(authlog), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    counts = Counter(f.rule for f in classify(authlog.read_text().splitlines(), NORMAL_RULES))
    for rule, count in counts.items():
        assert re.search(rf"^\s+{count}\s+{rule}$", done.stdout, re.M), done.stdout
    assert re.search(r"^would ban \d+ time\(s\), \d+ source\(s\)$", done.stdout, re.M)


def test_replay_jobs_must_not_be_negative(authlog: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "guardian", "replay", str(authlog), "--jobs", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2 and "--jobs" in done.stderr and not done.stdout


def test_replay_reads_an_authlog_as_the_daemon_does(tmp_path: Path) -> None:
    """Replay reads auth.log with the auth.log watcher's bulk parser: lines split on "\\n" only,
    invalid UTF-8 replaced, every format the per-line parser knows. The reference here is that
    per-line parser (parse_syslog_line + SshdDetector), line by line, on the same lines."""
    from guardian.parsers.sshd import SshdDetector
    from guardian.parsers.syslog_line import parse_syslog_line
    from guardian.watchers.sshd_log import failure_from

    stamp = "2025-03-01T00:00:{s:02d}.{f:06d}+00:00"
    lines = []
    for i in range(3000):
        source = f"198.51.100.{i % 50}" if i % 9 else f"2001:db8::{i % 7:x}"
        t = stamp.format(s=i % 60, f=i)
        lines += [
            f"{t} host sshd[{5000 + i}]: Invalid user u{i % 5} from {source} port {i}",
            f"Mar  1 00:00:{i % 60:02d} host sshd[{5000 + i}]: Failed password for invalid user "
            f"u{i % 5} from {source} port {i} ssh2",
            f"<38>1 {t} host sshd {6000 + i} - - Failed password for root from {source} port 2",
            f"Mar  1 00:01:{i % 60:02d} host sshd: Failed password for root from {source} port 3",
            f"Mar  1 00:02:{i % 60:02d} host CRON[{i}]: pam_unix(cron:session): session opened",
        ]
    data = "\n".join(lines).encode() + b"\n\xff\xfe junk sshd\r\n" + lines[0].encode()
    path = tmp_path / "auth.log"
    path.write_bytes(data)  # no final newline: the last line counts too
    mtime = datetime(2025, 3, 2, 12).timestamp()
    os.utime(path, (mtime, mtime))

    reference = datetime.fromtimestamp(mtime).astimezone()
    detector = SshdDetector("normal")
    want: Counter[str] = Counter()
    failures = 0
    text_lines = data.decode("utf-8", "replace").split("\n")
    for line in text_lines:
        record = parse_syslog_line(line, reference=reference)
        if record is None:
            continue
        for detection in detector.feed(record.pid, record.message, record.wall_time):
            failure = failure_from(detection, "authlog")
            if failure is not None:
                failures += 1
                want[failure.rule] += failure.attempts

    report = replay(path, Policy(maxretry=3), tmp_path)
    assert report["units"] == len(text_lines) == len(lines) + 2
    assert report["failures"] == failures > 9000
    assert report["by_rule"] == dict(want)
