# An auth.log file scanned in pieces on several cores, with exactly the detections (in order) of
# one sequential scan_byte_stream over it: for `guardian replay` and the parse benchmark, where a
# 1 GB auth.log is read whole. The daemon's watcher reads new lines as they come and never uses it.
#
# Theory of operation:
#   * The file (as long as it is when the scan starts) is cut at line starts into pieces: one
#     per job, or more so that none exceeds MAX_PIECE (what a worker sends back is held in memory
#     until it is taken). This process scans the first piece itself, from the file's start with
#     the caller's detector: it needs no warm-up, and its detections need no transfer. Forked
#     worker processes scan the others, in order (jobs - 1 of them while this process scans, up
#     to `jobs` once it only collects), each with a fresh SshdDetector that first reads a
#     warm-up: the lines just before its piece, their detections thrown away. This process
#     takes the pieces' detections in order, and runs the caller's consumer (replay's ban
#     engine) meanwhile.
#   * The detector's state after a warm-up that spans more than its memory (max_age of log time:
#     pre-auth connections and ended sessions age out by then) is usually exactly the state the
#     sequential scan has at the same line. "Usually" is not enough, so it is checked: the worker
#     returns its state at the start of its piece (SshdDetector.state()), and its piece's
#     detections are used only if that equals the state at the end of the piece before (the first
#     piece starts fresh). The detector is deterministic, so equal states and equal lines mean
#     equal detections. Authenticated sessions have no age limit, so one opened before a warm-up
#     and still open (an admin's week-long session) is the one difference a warm-up cannot
#     remove: _reconciled accepts it when the piece provably never looks at it. When the states
#     differ otherwise, this process scans that piece itself, from the exact state. Either way
#     the result is the sequential scan's; only the speed differs (ParallelStats says which
#     pieces were taken from the workers).
#   * Every piece is read on the same 1 MiB grid of file offsets as the sequential reader, so a
#     line longer than authlog_chunk's MAX_LINE is cut at the same places.
# Workers are forked (the parsers' memos and compiled regexes come along, no re-import) from a
# process that must not be running threads; results come back pickled. A worker that fails
# (killed, out of memory) is an error, not a silent gap: the piece is scanned here instead.
# Speed: pickling Detection tuples as they are costs more than scanning them (each address
# object is rebuilt by its constructor on loading: ~10 µs per detection both ways, measured), so
# a worker sends plain tuples with each distinct address once (_pack), rebuilt here (_unpack).
# Taking them is still ~0.1 s per 50k failures, about half of it CPython's garbage collector
# walking the young tuples as they are made; they cannot form cycles, so it is paused meanwhile.
# That cost and the transfer are why the first piece is not a worker's, and is the larger one
# (FIRST_WEIGHT); measured in BENCHMARKS.md ("auth.log parse throughput", session 6).
from __future__ import annotations

import multiprocessing
import os
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import BinaryIO, TypeAlias

from guardian.addresses import IPAddress
from guardian.gc_pause import collector_paused
from guardian.parsers.authlog_chunk import ScanCounts, scan_byte_stream
from guardian.parsers.sshd import Detection, DetectionKind, DetectorState, Mode, SshdDetector

__all__ = ["CHUNK", "ParallelStats", "cut_points", "default_jobs", "scan_file"]

CHUNK = 1 << 20  # bytes per read, on the grid of file offsets every reader here keeps
FIRST_WARMUP = 1 << 20  # bytes of warm-up tried first; quadrupled until it spans enough log time
MAX_WARMUP = 64 << 20  # ... or until this (a log without usable times never spans any)
MIN_PIECE = 8 << 20  # a smaller file (or share of one) is not worth a process
MAX_PIECE = 128 << 20  # bounds what a worker holds (~130k failures from a brute-force log)
# The first piece (this process's) is this much larger than the others: a worker's piece also
# costs its warm-up, packing and sending (~20 % more per byte, measured on the benchmark's log).
FIRST_WEIGHT = 1.2


@dataclass(slots=True)
class ParallelStats:
    """How a scan_file went: pieces, and which were scanned where."""

    pieces: int = 0  # the first is scanned here; the others are the workers'
    from_workers: int = 0  # pieces whose worker's start state matched: its detections used
    reconciled: int = 0  # of those, matched but for older open sessions (_reconciled)
    rescanned: int = 0  # worker pieces scanned again here (state differed, or the worker failed)
    warmup_bytes: list[int] = field(default_factory=list)  # per worker piece, in order
    worker_errors: list[str] = field(default_factory=list)


def default_jobs() -> int:
    """The CPUs this process may run on (its affinity mask), at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return 1


def cut_points(path: Path, size: int, pieces: int) -> list[int]:
    """Offsets where pieces start: 0, then one line start at or after each target (duplicates
    dropped: a line longer than a piece), each a byte after a "\\n". The first piece is
    FIRST_WEIGHT times as large as each of the others (it is this process's: see the header)."""
    cuts = [0]
    with path.open("rb") as handle:
        shares = FIRST_WEIGHT + pieces - 1
        for k in range(1, pieces):
            target = int(size * (FIRST_WEIGHT + k - 1) / shares)
            at = _line_start_at_or_after(handle, target, size)
            if cuts[-1] < at < size:
                cuts.append(at)
    return cuts


def scan_file(
    path: Path,
    mode: Mode = "normal",
    reference: datetime | None = None,
    *,
    jobs: int = 0,
    kinds: frozenset[DetectionKind] | None = None,
    counts: ScanCounts | None = None,
    stats: ParallelStats | None = None,
    detector: SshdDetector | None = None,
) -> Iterator[list[Detection]]:
    """The detections of scan_byte_stream(file read in CHUNK pieces, a fresh detector, reference)
    in the same order, lists as they come, using up to `jobs` processes, this one included (0:
    default_jobs(); 1: no worker, the file is scanned here).
    kinds: only detections of these kinds (None: all); fewer to send back is faster.
    `detector`, if given, must be fresh; it ends in the state the sequential scan leaves."""
    detector = detector if detector is not None else SshdDetector(mode)
    stats = stats if stats is not None else ParallelStats()
    size = path.stat().st_size
    jobs = jobs or default_jobs()
    pieces = min(max(jobs, -(-size // MAX_PIECE)), size // MIN_PIECE)
    if jobs <= 1 or pieces <= 1:
        stats.pieces = 1
        yield from _only(kinds, _scan_range(path, 0, size, detector, reference, counts))
        return
    cuts = [*cut_points(path, size, pieces), size]
    stats.pieces = len(cuts) - 1
    context = multiprocessing.get_context("fork")
    running: deque[tuple[BaseProcess, Connection]] = deque()
    started = 1  # pieces handed out (the first is this process's)
    limits = (detector.mode, detector.max_connections, detector.max_age, detector.max_sessions)

    def start_up_to(workers: int) -> None:
        nonlocal started
        while len(running) < workers and started < stats.pieces:
            receiver, sender = context.Pipe(duplex=False)
            job = _Job(str(path), cuts[started], cuts[started + 1], *limits, reference, kinds)
            child = context.Process(target=_work, args=(job, sender), daemon=True)
            child.start()
            sender.close()
            running.append((child, receiver))
            started += 1

    try:
        start_up_to(jobs - 1)  # one core is this process's, for the first piece
        yield from _only(kinds, _scan_range(path, 0, cuts[1], detector, reference, counts))
        for k in range(1, stats.pieces):
            start_up_to(jobs)  # (before this piece is used: they run while the caller consumes)
            child, receiver = running.popleft()
            outcome = _receive(k, receiver, stats)
            receiver.close()
            child.join()
            end_state = None if outcome is None else _end_state(detector, outcome, stats)
            if outcome is not None and end_state is not None:
                stats.from_workers += 1
                detector.restore(end_state)
                if counts is not None:
                    _add_counts(counts, outcome.counts)
                with collector_paused():
                    found = _unpack(outcome.addresses, outcome.rows)
                del outcome
                yield found
            else:
                stats.rescanned += 1
                piece = _scan_range(path, cuts[k], cuts[k + 1], detector, reference, counts)
                yield from _only(kinds, piece)
    finally:  # (also when the caller stops early)
        for child, receiver in running:
            receiver.close()
            if child.is_alive():
                child.kill()
            child.join()


def _end_state(
    detector: SshdDetector, outcome: _Outcome, stats: ParallelStats
) -> DetectorState | None:
    """The state the sequential scan has after the worker's piece, when the worker's detections
    are the sequential ones; None when they may not be (the piece must be rescanned)."""
    state = detector.state()
    if outcome.start_state == state:
        return outcome.end_state
    reconciled = _reconciled(state, outcome, detector.max_sessions)
    stats.reconciled += reconciled is not None
    return reconciled


def _reconciled(state: DetectorState, outcome: _Outcome, max_sessions: int) -> DetectorState | None:
    """The one difference a warm-up cannot remove: authenticated sessions opened before it and
    still open (they never age out; an admin's week-long session). If the exact state is the
    worker's start state plus such older sessions in front, and the piece has no line of those
    PIDs that reads or writes sessions (success, session end), and the sessions never reach
    max_sessions (nothing is evicted), then they lie untouched through the piece: the
    detections are the worker's, and the end state is the worker's with them in front."""
    start = outcome.start_state
    if state[:7] != start[:7] or state[8:] != start[8:]:
        return None
    sessions, known = state[7], start[7]
    older = len(sessions) - len(known)
    if older <= 0 or sessions[older:] != known:
        return None
    if any(pid in outcome.session_pids for pid, _ in sessions[:older]):
        return None
    if len(known) + outcome.successes > max_sessions - older:
        return None
    end = outcome.end_state
    return (*end[:7], sessions[:older] + end[7], *end[8:])


def _receive(k: int, receiver: Connection, stats: ParallelStats) -> _Outcome | None:
    """A worker's outcome, or None (noted in stats) if it sent none."""
    try:
        with collector_paused():
            outcome = receiver.recv()
    except (EOFError, OSError) as exc:  # it died before sending (killed, out of memory)
        stats.worker_errors.append(f"piece {k}: no result ({type(exc).__name__})")
        return None
    if isinstance(outcome, str):  # it raised: its traceback
        stats.worker_errors.append(f"piece {k}: {outcome}")
        return None
    assert isinstance(outcome, _Outcome)
    stats.warmup_bytes.append(outcome.warmup_bytes)
    return outcome


def _only(
    kinds: frozenset[DetectionKind] | None, lists: Iterator[list[Detection]]
) -> Iterator[list[Detection]]:
    if kinds is None:
        yield from lists
    else:
        for found in lists:
            yield [d for d in found if d.kind in kinds]


# A Detection with its source as an index into the worker's address table.
_Row: TypeAlias = tuple[
    str, str, int, int | None, str | None, int | None, float | None, int, str | None, str | None
]


@dataclass(slots=True)
class _Outcome:
    """What a worker sends back for its piece."""

    start_state: DetectorState  # after the warm-up, at the piece's first line
    end_state: DetectorState  # after the piece's last line
    addresses: list[IPAddress | None]  # each distinct source once
    rows: list[_Row]  # the detections, the source as an index into `addresses`
    counts: ScanCounts
    warmup_bytes: int
    session_pids: set[int]  # PIDs of the piece's success and session-end lines
    successes: int  # its success lines (each adds at most one session)


@dataclass(frozen=True, slots=True)
class _Job:
    """One worker's piece: [start, stop) of the file, scanned as a fresh detector with the
    caller's mode and limits would."""

    path: str
    start: int
    stop: int
    mode: Mode
    max_connections: int
    max_age: float
    max_sessions: int
    reference: datetime | None
    kinds: frozenset[DetectionKind] | None


def _work(job: _Job, sender: Connection) -> None:
    """A worker process's body: its outcome (or the traceback of what went wrong) sent back."""
    try:
        result: _Outcome | str = _scan_piece(job)
    except Exception:
        result = traceback.format_exc(limit=8)
    sender.send(result)
    sender.close()


def _scan_piece(job: _Job) -> _Outcome:
    """Scan the job's piece after a warm-up long enough in log time (see the header)."""
    start, path = job.start, Path(job.path)
    warmup = FIRST_WARMUP
    while True:
        detector = SshdDetector(
            job.mode,
            max_connections=job.max_connections,
            max_age=job.max_age,
            max_sessions=job.max_sessions,
        )
        begin = max(0, start - warmup)
        with path.open("rb") as handle:
            begin = _line_start_at_or_after(handle, begin, start)
        first_time: float | None = None
        for _ in _scan_range(path, begin, start, detector, job.reference, None):
            if first_time is None:
                first_time = detector.latest
        latest = detector.latest
        spans = (
            first_time is not None
            and latest is not None
            and latest - first_time > detector.max_age + 60
        )
        if begin == 0 or spans or warmup >= MAX_WARMUP:
            break
        warmup *= 4
    start_state = detector.state()
    counts = ScanCounts()
    outcome = _Outcome(start_state, start_state, [], [], counts, start - begin, set(), 0)
    index: dict[IPAddress | None, int] = {}
    strings: dict[str, str] = {}
    for found in _scan_range(path, start, job.stop, detector, job.reference, counts):
        _pack(found, job.kinds, outcome, index, strings)
    outcome.end_state = detector.state()
    return outcome


def _pack(
    found: list[Detection],
    kinds: frozenset[DetectionKind] | None,
    outcome: _Outcome,
    index: dict[IPAddress | None, int],
    strings: dict[str, str],
) -> None:
    """Detections as plain tuples into outcome.rows, the source replaced by its index in
    outcome.addresses; the PIDs whose sessions the piece touched noted (_reconciled).
    Repeated user names and methods become one object (`strings`): pickle then sends each once,
    and the main process, the critical path at the end, builds each once (measured on the
    benchmark's worker piece, 47k failures: pickling 38 -> 14 ms, unpickling 19 -> 8 ms)."""
    addresses, rows, add_session_pid = outcome.addresses, outcome.rows, outcome.session_pids.add
    share, successes = strings.setdefault, 0
    for kind, rule, source, port, user, pid, wall_time, attempts, host_name, method in found:
        if kind != "failure":  # success or session_closed: the only kinds whose lines read
            if pid is not None:  # or write the detector's sessions
                add_session_pid(pid)
            if kind == "success":
                successes += 1
        if kinds is not None and kind not in kinds:
            continue
        at = index.get(source)
        if at is None:
            at = index[source] = len(addresses)
            addresses.append(source)
        if user is not None:
            user = share(user, user)
        if method is not None:
            method = share(method, method)
        rows.append((kind, rule, at, port, user, pid, wall_time, attempts, host_name, method))
    outcome.successes += successes


def _unpack(addresses: list[IPAddress | None], rows: list[_Row]) -> list[Detection]:
    new, build = tuple.__new__, Detection
    return [new(build, (r[0], r[1], addresses[r[2]], *r[3:])) for r in rows]


def _scan_range(
    path: Path,
    start: int,
    stop: int,
    detector: SshdDetector,
    reference: datetime | None,
    counts: ScanCounts | None,
) -> Iterator[list[Detection]]:
    with path.open("rb") as handle:
        yield from scan_byte_stream(_grid_reads(handle, start, stop), detector, reference,
                                    counts=counts)  # fmt: skip


def _grid_reads(handle: BinaryIO, start: int, stop: int) -> Iterator[bytes]:
    """The bytes of [start, stop), read so that every read but the first ends on a multiple of
    CHUNK, as a sequential reader's reads do (where a too-long line is cut depends on it)."""
    handle.seek(start)
    at = start
    while at < stop:
        want = min(CHUNK - at % CHUNK, stop - at)
        data = handle.read(want)
        if not data:
            return
        at += len(data)
        yield data


def _line_start_at_or_after(handle: BinaryIO, offset: int, limit: int) -> int:
    """The first offset >= `offset` just after a "\\n" (or `limit` if none comes before it);
    `offset` itself when the byte before it is a "\\n"."""
    if offset <= 0:
        return 0
    handle.seek(offset - 1)
    at = offset - 1
    while at < limit:
        data = handle.read(min(1 << 16, limit - at))
        if not data:
            break
        found = data.find(b"\n")
        if found >= 0:
            return min(at + found + 1, limit)
        at += len(data)
    return limit


def _add_counts(total: ScanCounts, part: ScanCounts) -> None:
    total.lines += part.lines
    total.sshd_lines += part.sshd_lines
    total.untimed += part.untimed
    total.errors += part.errors
