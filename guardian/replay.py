# `guardian replay`: what the ban rules would have done with a log, offline (like fail2ban-regex).
# It reads an auth.log (with the auth.log watcher's bulk parser), a btmp file or the journal
# through the same parsers and the same pure engine the daemon uses, with time taken from the log
# itself (each line's own timestamp is both `now` and the wall clock), and reports counts per
# message rule and the bans it would have made.
# An auth.log large enough is parsed on several cores (parallel_scan: exactly the sequential
# scan's failures, in order); the ban engine runs here, in order.
# Nothing here touches the firewall, the state store or the network.
from __future__ import annotations

import io
import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from guardian.actions import Ban
from guardian.addresses import IPNetwork
from guardian.config import Config
from guardian.engine import Engine
from guardian.events import AuthFailed
from guardian.parallel_scan import ParallelStats, scan_file
from guardian.parsers.authlog_chunk import ScanCounts
from guardian.parsers.sshd import DetectionKind
from guardian.parsers.utmp import RECORD_SIZE, UtmpMemo, UtmpRecord, parse_utmp
from guardian.watchers.sshd_log import failure_from

CHUNK = 4 << 20  # bytes read at a time: memory stays flat on a 1 GB file
UTMP_LOGIN_PROCESS = 6


@dataclass
class ReplayReport:
    """What a replay found; `bans` are in the order the engine would have made them."""

    kind: str  # "authlog", "btmp" or "journal"
    units: int = 0  # lines or records read
    failures: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    bans: list[tuple[float, Ban]] = field(default_factory=list)
    skipped_no_address: int = 0
    scan: ParallelStats | None = None  # an auth.log's: how it was read

    def banned_networks(self) -> list[IPNetwork]:
        return [ban.network for _, ban in self.bans]

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "units": self.units,
            "failures": self.failures,
            "by_rule": dict(self.by_rule.most_common()),
            "distinct_sources": len(self.sources),
            "bans": [
                {
                    "at": at,
                    "network": str(ban.network),
                    "offence": ban.offence,
                    "seconds": ban.timeout,
                    "reason": ban.reason,
                }
                for at, ban in self.bans
            ],
            "skipped_no_address": self.skipped_no_address,
            **({} if self.scan is None else {"scan": _scan_json(self.scan)}),
        }


def _scan_json(stats: ParallelStats) -> dict[str, object]:
    return {
        "pieces": stats.pieces,
        "pieces_from_workers": stats.from_workers,
        "pieces_rescanned": stats.rescanned,
        "worker_errors": stats.worker_errors,
    }


def looks_like_btmp(path: Path) -> bool:
    """A utmp file: whole 384-byte records whose first one has a plausible type."""
    size = path.stat().st_size
    if size == 0 or size % RECORD_SIZE:
        return False
    with path.open("rb") as handle:
        head = handle.read(RECORD_SIZE)
    return int.from_bytes(head[:2], "little") in range(0, 10) and b"\n" not in head[:4]


def _drive(report: ReplayReport, config: Config, failures: Iterable[AuthFailed]) -> None:
    engine = Engine(config)
    for failure in failures:
        report.failures += 1
        report.by_rule[failure.rule] += failure.attempts
        report.sources[str(failure.source)] += 1
        at = failure.wall_time or 0.0
        for action in engine.feed(failure, at, wall=at):
            if isinstance(action, Ban):
                report.bans.append((at, action))


def _authlog_failures(
    path: Path, mode: str, report: ReplayReport, jobs: int
) -> Iterator[AuthFailed]:
    """The failures in an auth.log, through the daemon's own bulk parser (authlog_chunk, lines
    split on "\n" only, invalid UTF-8 replaced, as the auth.log watcher reads them), on up to
    `jobs` cores (0: all this process may use)."""
    reference = datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    counts = ScanCounts()
    report.scan = ParallelStats()
    for detections in scan_file(
        path,
        "aggressive" if mode == "aggressive" else "normal",
        reference,
        jobs=jobs,
        kinds=_FAILURES,
        counts=counts,
        stats=report.scan,
    ):
        for detection in detections:
            failure = failure_from(detection, "authlog")
            if failure is None:
                report.skipped_no_address += 1
            else:
                yield failure
    report.units = counts.lines


_FAILURES: frozenset[DetectionKind] = frozenset({"failure"})


def btmp_records(handle: io.RawIOBase) -> Iterator[list[UtmpRecord]]:
    """A btmp file's whole records, CHUNK bytes at a time, read into one buffer used again and
    again (a partial record moved to its front). Why not read() and prepend the partial record:
    each made two fresh 4 MiB objects, whose pages the kernel faulted in one by one: ~100k
    faults per 600 MB, a fifth of the time (measured: BENCHMARKS.md "btmp parse"). A partial
    record at the end of the file is left out, as the btmp watcher leaves it until completed."""
    memo = UtmpMemo()  # sources and names repeat across the file's chunks
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    filled = 0
    while got := handle.readinto(view[filled:]):
        filled += got
        records, used = parse_utmp(view[:filled], memo)
        yield records
        buffer[: filled - used] = buffer[used:filled]  # the partial record; equal lengths
        filled -= used


def _btmp_failures(path: Path, report: ReplayReport) -> Iterator[AuthFailed]:
    with path.open("rb", buffering=0) as handle:
        for records in btmp_records(handle):
            for record in records:
                report.units += 1
                if record.type != UTMP_LOGIN_PROCESS or not record.line.startswith("ssh"):
                    continue
                if record.address is None:
                    report.skipped_no_address += 1
                    continue
                yield AuthFailed(
                    record.address, "btmp", "btmp", record.user, record.pid, float(record.tv_sec)
                )


def replay_file(path: Path, config: Config, mode: str = "normal", *, jobs: int = 0) -> ReplayReport:
    """Replay an auth.log (text) or a btmp file (binary), told apart by their content; an
    auth.log is parsed on up to `jobs` cores (0: all this process may use, 1: this one)."""
    if looks_like_btmp(path):
        report = ReplayReport("btmp")
        _drive(report, config, _btmp_failures(path, report))
    else:
        report = ReplayReport("authlog")
        _drive(report, config, _authlog_failures(path, mode, report, jobs))
    return report


def replay_journal(config: Config, since_wall: float, mode: str = "normal") -> ReplayReport:
    """Replay sshd's lines in the journal from `since_wall` (epoch seconds) until now."""
    from guardian.watchers.journal import JournalWatcher
    from guardian.watchers.sshd_log import SshdLogAdapter

    watcher = JournalWatcher(own_netns_only=False)
    watcher.open()
    try:
        records = watcher.history(since_wall, max_records=10_000_000)
    finally:
        watcher.close()
    report = ReplayReport("journal", units=len(records))
    adapter = SshdLogAdapter(mode, failures=True)
    failures = [e for e in adapter.events(records) if isinstance(e, AuthFailed)]
    _drive(report, config, failures)
    return report


def parse_network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text.strip(), strict=False)
