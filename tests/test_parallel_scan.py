# guardian.parallel_scan: a file scanned in pieces (the first, larger one in this process, the
# others by forked workers) gives exactly the sequential scan's detections, counts and final
# detector state, and leaves no worker behind — when each worker's warm-up reached the
# state the piece before it left (its detections used), and when it did not (the piece rescanned
# here): a session open across a cut, a worker that raised or died, a line longer than MAX_LINE
# on the read grid, sparse logs that need a longer warm-up. Also the detector's state() and
# restore(), and the age rules that let a warm-up converge (the check once per log second, the
# ended-session ring's age limit).
from __future__ import annotations

import multiprocessing
import os
import random
from datetime import UTC, datetime
from functools import partial
from ipaddress import ip_address
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from guardian import parallel_scan
from guardian.config import Config
from guardian.parallel_scan import ParallelStats, cut_points, scan_file
from guardian.parsers.authlog_chunk import MAX_LINE, ScanCounts, scan_byte_stream
from guardian.parsers.sshd import Detection, DetectionKind, Mode, SshdDetector
from guardian.replay import replay_file
from tests.test_authlog_chunk import _LINE, ADVERSARIAL, generated

REFERENCE = datetime(2025, 12, 31, tzinfo=UTC)


def sequential(
    path: Path, mode: Mode = "normal"
) -> tuple[list[Detection], ScanCounts, SshdDetector]:
    """The reference: one scan_byte_stream over the file read in CHUNK pieces."""
    detector, counts = SshdDetector(mode), ScanCounts()
    with path.open("rb") as handle:
        chunks = iter(partial(handle.read, parallel_scan.CHUNK), b"")
        found = [
            d for ds in scan_byte_stream(chunks, detector, REFERENCE, counts=counts) for d in ds
        ]
    return found, counts, detector


def parallel(
    path: Path,
    jobs: int,
    mode: Mode = "normal",
    kinds: frozenset[DetectionKind] | None = None,
) -> tuple[list[Detection], ScanCounts, SshdDetector, ParallelStats]:
    detector, counts, stats = SshdDetector(mode), ScanCounts(), ParallelStats()
    scan = scan_file(
        path, mode, REFERENCE, jobs=jobs, kinds=kinds, counts=counts, stats=stats, detector=detector
    )
    found = [d for ds in scan for d in ds]
    return found, counts, detector, stats


def assert_same_as_sequential(path: Path, jobs: int, mode: Mode = "normal") -> ParallelStats:
    want, want_counts, want_detector = sequential(path, mode)
    got, counts, detector, stats = parallel(path, jobs, mode)
    assert len(got) == len(want)
    assert got == want
    assert counts == want_counts
    assert detector.state() == want_detector.state()
    assert stats.pieces > 1, "the test must exercise more than one piece"
    return stats


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of a few hundred KiB, so test files of a few MB are split; a short first warm-up,
    so it must grow on the way."""
    monkeypatch.setattr(parallel_scan, "MIN_PIECE", 64 << 10)
    monkeypatch.setattr(parallel_scan, "FIRST_WARMUP", 16 << 10)


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize(("jobs", "mode"), [(2, "normal"), (3, "aggressive"), (5, "normal")])
def test_generated_log_in_pieces_is_the_sequential_scan(
    tmp_path: Path, jobs: int, mode: Mode
) -> None:
    path = tmp_path / "auth.log"
    path.write_text(generated(tmp_path, seed=jobs, lines=40_000))
    stats = assert_same_as_sequential(path, jobs, mode)
    assert stats.pieces == jobs
    # The generator's connections and sessions end within a second: every warm-up converges.
    # (The first piece is scanned here, from the file's start: no worker, no warm-up.)
    assert stats.from_workers == jobs - 1 and stats.rescanned == 0, stats
    assert len(stats.warmup_bytes) == jobs - 1, stats
    assert all(w > parallel_scan.FIRST_WARMUP for w in stats.warmup_bytes), stats


@pytest.mark.usefixtures("small_pieces")
def test_more_pieces_than_jobs_when_pieces_would_be_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel_scan, "MAX_PIECE", 256 << 10)
    path = tmp_path / "auth.log"
    path.write_text(generated(tmp_path, seed=4, lines=30_000))
    stats = assert_same_as_sequential(path, 2)
    assert stats.pieces == -(-path.stat().st_size // (256 << 10)) >= 10, stats
    assert stats.from_workers == stats.pieces - 1, stats


@pytest.mark.usefixtures("small_pieces")
def test_only_the_kinds_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "auth.log"
    path.write_text(generated(tmp_path, seed=7, lines=30_000))
    want = [d for d in sequential(path)[0] if d.kind == "failure"]
    got, _, _, stats = parallel(path, 3, kinds=frozenset({"failure"}))
    assert got == want and len(want) > 1000
    assert stats.from_workers == 2


def _line(second: int, pid: int, message: str) -> str:
    stamp = f"Mar  1 {second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
    return f"{stamp} h sshd[{pid}]: {message}\n"


def _attack(second: int, pid: int, rng: random.Random) -> str:
    src = f"203.0.113.{rng.randrange(1, 250)}"
    port = rng.randrange(1024, 65535)
    return _line(second, pid, f"Failed password for root from {src} port {port} ssh2") + _line(
        second, pid, f"Connection closed by authenticating user root {src} port {port} [preauth]"
    )


def _long_session_log(path: Path, *, closed: bool, logins: int = 0) -> None:
    """An Accepted on the first line; ~4.5 MB of brute force (so that no warm-up reaches back
    to it), with `logins` short sessions among it; the session's end on the last lines if
    `closed`."""
    rng = random.Random(3)
    parts = [_line(0, 77, "Accepted publickey for alice from 192.0.2.7 port 50000 ssh2")]
    for i in range(30_000):
        parts.append(_attack(1 + i // 4, 1000 + i, rng))
        if logins and i % (30_000 // logins) == 15_000 // logins:
            pid, second = 50_000 + i, 1 + i // 4
            parts.append(_line(second, pid, "Accepted password for bob from 192.0.2.8 port 2 ssh2"))
            parts.append(_line(second, pid, "pam_unix(sshd:session): session closed for user bob"))
    if closed:
        parts.append(_line(8000, 77, "Received disconnect from 192.0.2.7 port 50000:11: bye"))
        parts.append(_line(8000, 77, "pam_unix(sshd:session): session closed for user alice"))
    path.write_text("".join(parts))


@pytest.mark.usefixtures("small_pieces")
def test_a_session_open_across_cuts_is_carried_over_the_pieces_that_never_see_it(
    tmp_path: Path,
) -> None:
    """The sequential state holds alice's session at every cut; no warm-up can know it. The
    middle piece has no line of its PID: its detections are used all the same (reconciled).
    The last piece ends the session: it is rescanned here, and the end names alice's address
    from the Accepted line far back."""
    path = tmp_path / "auth.log"
    _long_session_log(path, closed=True)
    stats = assert_same_as_sequential(path, 3)
    assert (stats.from_workers, stats.reconciled, stats.rescanned) == (1, 1, 1), stats
    assert all(0 < w < 2 << 20 for w in stats.warmup_bytes), stats
    closes = [d for d in sequential(path)[0] if d.kind == "session_closed"]
    assert [(str(d.source), d.user) for d in closes] == [("192.0.2.7", "alice")] * 2


@pytest.mark.usefixtures("small_pieces")
def test_a_session_open_to_the_end_costs_no_rescan(tmp_path: Path) -> None:
    path = tmp_path / "auth.log"
    _long_session_log(path, closed=False, logins=30)
    stats = assert_same_as_sequential(path, 4)
    assert (stats.from_workers, stats.reconciled, stats.rescanned) == (3, 3, 0), stats
    assert sequential(path)[2].sessions_held == 1  # alice's, to the end


@pytest.mark.usefixtures("small_pieces")
def test_no_reconciling_when_sessions_could_be_evicted(tmp_path: Path) -> None:
    """With room for 4 sessions and more logins than that in a piece, the sequential scan
    could evict the old session where the worker's would not: those pieces are rescanned."""
    path = tmp_path / "auth.log"
    _long_session_log(path, closed=False, logins=30)
    detector, stats = SshdDetector(max_sessions=4), ParallelStats()
    scan = scan_file(path, reference=REFERENCE, jobs=3, stats=stats, detector=detector)
    got = [d for ds in scan for d in ds]
    reference = SshdDetector(max_sessions=4)
    with path.open("rb") as handle:
        chunks = iter(partial(handle.read, parallel_scan.CHUNK), b"")
        want = [d for ds in scan_byte_stream(chunks, reference, REFERENCE) for d in ds]
    assert got == want and detector.state() == reference.state()
    assert (stats.from_workers, stats.reconciled, stats.rescanned) == (0, 0, 2), stats


@pytest.mark.usefixtures("small_pieces")
def test_a_worker_that_raises_or_dies_costs_speed_not_detections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "auth.log"
    path.write_text(generated(tmp_path, seed=11, lines=30_000))
    real = parallel_scan._scan_piece

    def flaky(job: parallel_scan._Job) -> parallel_scan._Outcome:
        if job.start == cuts[1]:
            raise RuntimeError("boom")
        if job.start == cuts[2]:
            os._exit(9)  # dies without sending anything
        return real(job)

    cuts = cut_points(path, path.stat().st_size, 4)
    monkeypatch.setattr(parallel_scan, "_scan_piece", flaky)
    stats = assert_same_as_sequential(path, 4)
    assert stats.rescanned == 2 and stats.from_workers == 1, stats
    assert any("RuntimeError: boom" in e for e in stats.worker_errors), stats.worker_errors
    assert any("no result" in e for e in stats.worker_errors), stats.worker_errors


@pytest.mark.usefixtures("small_pieces")
def test_lines_longer_than_max_line_are_cut_where_the_sequential_reader_cuts_them(
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    parts = [_attack(i // 3, 2000 + i, rng) for i in range(3_000)]
    # A line of 2.5 MiB (its own "sshd" lines inside, as an injection would put them) near the
    # middle, where a cut falls, and adversarial lines around it.
    inner = " ".join(ADVERSARIAL[:5]).replace("\n", " ")
    giant = _line(1000, 99, "x" * (5 * MAX_LINE // 2 - 200) + " " + inner)
    parts.insert(1500, giant)
    parts[1501:1501] = [line + "\n" for line in ADVERSARIAL]
    path = tmp_path / "auth.log"
    path.write_text("".join(parts))
    assert_same_as_sequential(path, 3)
    assert_same_as_sequential(path, 6)


@pytest.mark.usefixtures("small_pieces")
def test_a_dense_log_grows_its_warm_up_until_it_spans_the_detector_memory(
    tmp_path: Path,
) -> None:
    """20 connections a second: 16 KiB of warm-up is 5 s of log time, 1 MiB about 6 minutes, of
    a 15-minute memory; the warm-up grows (x4 each time) until it spans it, and converges."""
    rng = random.Random(9)
    parts = [_attack(i // 20, 3000 + i, rng) for i in range(60_000)]
    path = tmp_path / "auth.log"
    path.write_text("".join(parts))
    stats = assert_same_as_sequential(path, 2)
    assert stats.from_workers == 1, stats
    assert stats.warmup_bytes[0] > 2 << 20, stats


def test_state_restore_round_trip_and_limits() -> None:
    a = SshdDetector()
    a.feed(10, "Failed password for root from 203.0.113.5 port 4000 ssh2", 100.0)
    a.feed(11, "Accepted password for bob from 192.0.2.9 port 5000 ssh2", 101.0)
    a.feed(12, "Failed none for alice from 192.0.2.10 port 5001 ssh2", 102.0)  # held
    b = SshdDetector()
    b.restore(a.state())
    assert b.state() == a.state()
    # Equal states, equal futures.
    line = (12, "Failed password for alice from 192.0.2.10 port 5001 ssh2", 103.0)
    assert a.feed(*line) == b.feed(*line)
    assert a.state() == b.state()
    with pytest.raises(ValueError, match="other limits"):
        SshdDetector(max_age=60.0).restore(a.state())
    with pytest.raises(ValueError, match="another mode"):
        SshdDetector("aggressive").restore(a.state())


def _history(detector: SshdDetector, pids: range, start: float) -> None:
    for i, pid in enumerate(pids):
        detector.feed(pid, f"Invalid user u{pid} from 198.51.100.{pid % 200} port 7", start + i)


def test_detectors_with_different_pasts_converge_after_max_age() -> None:
    """The age check's schedule follows log seconds, not the first line a detector saw, and
    old pre-auth state and ended sessions age out: the same last 16 minutes give equal states."""
    old, fresh = SshdDetector(), SshdDetector()
    _history(old, range(100, 400), 0.25)  # connections that never closed: they age out
    old.feed(500, "Accepted password for bob from 192.0.2.9 port 5000 ssh2", 350.5)
    old.feed(500, "Received disconnect from 192.0.2.9 port 5000:11: bye", 351.5)  # to the ring
    assert old.sessions_held == 1
    for detector in (old, fresh):
        for i in range(1000):  # the same 1,000 s of lines, some in the same second
            t = 2000.0 + i + (0.3 if i % 3 else 0.7)
            detector.feed(900 + i, f"Invalid user v from 198.51.100.9 port {i}", t)
            if i % 7 == 0:
                detector.feed(900 + i, "Connection closed by 198.51.100.9 port 1 [preauth]", t)
    assert old.sessions_held == 0
    assert old.state() == fresh.state()


def test_ended_ring_ages_out() -> None:
    d = SshdDetector(max_age=100.0)
    d.feed(5, "Accepted password for bob from 192.0.2.9 port 5000 ssh2", 10.0)
    d.feed(5, "Disconnected from user bob 192.0.2.9 port 5000", 11.0)
    assert d.sessions_held == 1  # waiting for PAM's close line
    d.feed(6, "Invalid user x from 198.51.100.1 port 1", 50.0)
    assert d.sessions_held == 1
    d.feed(6, "Invalid user x from 198.51.100.1 port 1", 112.0)  # 101 s later
    assert d.sessions_held == 0


@pytest.mark.usefixtures("small_pieces")
def test_replay_on_several_cores_reports_what_one_core_reports(tmp_path: Path) -> None:
    path = tmp_path / "auth.log"
    path.write_text(generated(tmp_path, seed=12, lines=40_000))
    one = replay_file(path, Config(), jobs=1).to_json()
    three = replay_file(path, Config(), jobs=3).to_json()
    assert one.pop("scan") == {
        "pieces": 1, "pieces_from_workers": 0, "pieces_rescanned": 0, "worker_errors": []
    }  # fmt: skip
    assert three.pop("scan") == {
        "pieces": 3, "pieces_from_workers": 2, "pieces_rescanned": 0, "worker_errors": []
    }  # fmt: skip
    assert one == three
    assert one["failures"] > 1000 and one["bans"]


@pytest.mark.usefixtures("small_pieces")
def test_a_log_without_usable_times_stops_growing_its_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traditional stamps and no reference: no line has a time, so no warm-up ever "spans"
    the detector's memory; it stops at MAX_WARMUP and the state check decides."""
    monkeypatch.setattr(parallel_scan, "MAX_WARMUP", 64 << 10)
    path = tmp_path / "auth.log"
    path.write_text(generated(tmp_path, seed=21, lines=30_000))
    detector, stats = SshdDetector(), ParallelStats()
    got = [d for ds in scan_file(path, jobs=3, stats=stats, detector=detector) for d in ds]
    reference = SshdDetector()
    with path.open("rb") as handle:
        chunks = iter(partial(handle.read, parallel_scan.CHUNK), b"")
        want = [d for ds in scan_byte_stream(chunks, reference) for d in ds]
    assert got == want and detector.state() == reference.state()
    assert all(w <= 64 << 10 for w in stats.warmup_bytes), stats
    assert stats.pieces == 3 and all(d.wall_time is None for d in got)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_LINE, min_size=20, max_size=120), jobs=st.integers(2, 4))
def test_random_logs_in_tiny_pieces_are_the_sequential_scan(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], jobs: int
) -> None:
    """Lines assembled from sshd's fragments (test_authlog_chunk's), cut into pieces of a few
    hundred bytes with warm-ups of a few lines: whatever the workers conclude, the result is
    the sequential scan's, in both modes."""
    path = tmp_path_factory.mktemp("random") / "auth.log"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parallel_scan, "MIN_PIECE", 64)
        patch.setattr(parallel_scan, "FIRST_WARMUP", 32)
        for mode in ("normal", "aggressive"):
            want, want_counts, want_detector = sequential(path, mode)  # type: ignore[arg-type]
            got, counts, detector, stats = parallel(path, jobs, mode)  # type: ignore[arg-type]
            assert got == want
            assert counts == want_counts
            assert detector.state() == want_detector.state()
            assert not stats.worker_errors
            event(f"{stats.pieces} pieces, {stats.from_workers} from workers")


@pytest.mark.usefixtures("small_pieces")
def test_a_caller_that_stops_early_leaves_no_worker_behind(tmp_path: Path) -> None:
    """The first piece is scanned in this process while workers scan the next ones: a caller
    that stops in the middle of it (replay interrupted) must not leave them running."""
    path = tmp_path / "auth.log"
    path.write_text(generated(tmp_path, seed=13, lines=30_000))
    stats = ParallelStats()
    scan = scan_file(path, reference=REFERENCE, jobs=3, stats=stats)
    first = next(scan)
    assert multiprocessing.active_children(), "the workers start with the first piece"
    scan.close()
    assert multiprocessing.active_children() == []
    assert stats.pieces == 3 and stats.from_workers == 0 and isinstance(first, list)


def test_the_first_piece_is_larger_by_first_weight(tmp_path: Path) -> None:
    """This process scans the first piece with no warm-up and nothing to send: it gets
    FIRST_WEIGHT times the bytes of each worker's piece (to within a line)."""
    path = tmp_path / "auth.log"
    path.write_text(generated(tmp_path, seed=14, lines=20_000))
    size = path.stat().st_size
    cuts = [*cut_points(path, size, 4), size]
    sizes = [b - a for a, b in pairwise(cuts)]
    assert len(sizes) == 4
    longest_line = max(len(line) for line in path.read_bytes().split(b"\n")) + 1
    share = size / (parallel_scan.FIRST_WEIGHT + 3)
    assert abs(sizes[0] - parallel_scan.FIRST_WEIGHT * share) <= longest_line, sizes
    for other in sizes[1:]:
        assert abs(other - share) <= 2 * longest_line, sizes
    assert all(path.read_bytes()[cut - 1 : cut] == b"\n" for cut in cuts[1:-1])


def test_packed_rows_send_each_repeated_name_and_source_once() -> None:
    """A worker's rows hold one object per distinct user name, method and source (pickle then
    sends each once), note what _reconciled needs, and unpack to the detections packed."""
    source = ip_address("203.0.113.9")

    def fresh(text: str) -> str:  # an equal string that is a distinct object, as a parse makes
        return "".join(list(text))

    found = [
        Detection("failure", "failed_password", source, 2000 + i, fresh("root"), 100 + i, 1.0,
                  1, None, fresh("password"))
        for i in range(3)
    ]  # fmt: skip
    found.append(Detection("success", "accepted", source, 9, "bob", 7, 2.0, method="publickey"))
    found.append(Detection("session_closed", "pam_session_closed", None, None, "bob", 8, 3.0))
    assert found[0].user is not found[1].user
    outcome = parallel_scan._Outcome((), (), [], [], ScanCounts(), 0, set(), 0)
    parallel_scan._pack(found, frozenset({"failure"}), outcome, {}, {})
    rows = outcome.rows
    assert len(rows) == 3 and outcome.addresses == [source]
    assert rows[0][4] is rows[1][4] is rows[2][4] and rows[0][9] is rows[2][9]
    assert outcome.session_pids == {7, 8} and outcome.successes == 1
    assert parallel_scan._unpack(outcome.addresses, rows) == found[:3]
