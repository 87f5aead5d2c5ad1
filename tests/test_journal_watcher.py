# Pure tests of the journal watcher (no root, no journald): the fast-poll timer that keeps latency
# low only while there is activity, argument checks, and the errors raised before any journal is
# opened. The real journal is exercised in test_journal_watcher_lab.py.
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from guardian.watchers import WatcherError
from guardian.watchers.journal import (
    ACTIVE_FOR,
    FAST_INTERVAL,
    IDENTIFIERS,
    TRUSTED_COMMANDS,
    FastPollTimer,
    JournalRecord,
    JournalWatcher,
    _sent_by_root_sshd,
)


def test_defaults_match_both_sshd_identifiers_and_a_short_timer() -> None:
    assert IDENTIFIERS == ("sshd", "sshd-session")
    assert 0 < FAST_INTERVAL <= 0.1  # the spec: a <= 20-100 ms timer brings latency to <= 20 ms
    watcher = JournalWatcher()
    assert watcher.identifiers == IDENTIFIERS
    assert watcher.poll_interval == FAST_INTERVAL
    assert watcher.timer.active_for == ACTIVE_FOR


def test_timer_is_idle_until_activity() -> None:
    timer = FastPollTimer(interval=0.02, active_for=10.0)
    assert timer.next_poll(0.0) is None
    assert timer.next_poll(1e9) is None


def test_timer_polls_every_interval_while_active_then_falls_back_to_idle() -> None:
    timer = FastPollTimer(interval=0.02, active_for=10.0)
    timer.note_activity(100.0)
    assert timer.next_poll(100.0) == 100.0  # never read yet: due at once
    timer.note_read(100.0)
    assert timer.next_poll(100.001) == pytest.approx(100.02)
    assert timer.next_poll(100.5) == 100.5  # overdue: now, never in the past
    timer.note_read(109.99)
    assert timer.next_poll(109.995) == pytest.approx(110.0)  # clamped to the end of activity
    assert timer.next_poll(110.0) is None
    assert timer.next_poll(200.0) is None


def test_timer_activity_extends_but_never_shortens() -> None:
    timer = FastPollTimer(interval=0.05, active_for=5.0)
    timer.note_activity(10.0)
    timer.note_activity(12.0)
    assert timer.active(16.9)
    assert not timer.active(17.0)
    timer.note_activity(1.0)  # an older time must not cut the active period short
    assert timer.active(16.9)


def test_timer_with_zero_active_for_never_runs() -> None:
    timer = FastPollTimer(interval=0.02, active_for=0.0)
    timer.note_activity(5.0)
    assert timer.next_poll(5.0) is None


@pytest.mark.parametrize(("interval", "active_for"), [(0.0, 1.0), (-1.0, 1.0), (0.02, -1.0)])
def test_timer_rejects_bad_settings(interval: float, active_for: float) -> None:
    with pytest.raises(ValueError):
        FastPollTimer(interval, active_for)
    with pytest.raises(ValueError):
        JournalWatcher(fast_interval=interval, active_for=active_for)


@pytest.mark.parametrize("identifiers", [(), ("",), ("sshd", "a=b"), ("x\ny",)])
def test_watcher_rejects_bad_identifiers(identifiers: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        JournalWatcher(identifiers=identifiers)


def test_record_is_frozen_data() -> None:
    record = JournalRecord("sshd", 42, "Accepted publickey for root", 1.5, "s=1;i=2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.pid = 43  # type: ignore[misc]
    assert record == JournalRecord("sshd", 42, "Accepted publickey for root", 1.5, "s=1;i=2")


def test_watcher_used_before_open_says_so() -> None:
    watcher = JournalWatcher()
    assert watcher.next_poll(0.0) is None
    assert watcher.last_cursor is None
    for call in (watcher.fileno, watcher.read_records, lambda: watcher.history(0.0)):
        with pytest.raises(WatcherError, match="not open"):
            call()
    watcher.close()  # closing an unopened watcher is fine


def test_a_saved_cursor_is_the_last_cursor_until_something_is_read() -> None:
    assert JournalWatcher(cursor="s=abc;i=1").last_cursor == "s=abc;i=1"


def test_journald_not_answering_is_a_clear_error(tmp_path: Path) -> None:
    watcher = JournalWatcher(journal_socket=tmp_path / "no-such-socket")
    with pytest.raises(WatcherError, match="systemd-journald is not running"):
        watcher.open()


def test_a_path_that_is_not_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WatcherError, match="not a directory"):
        JournalWatcher(path=str(tmp_path / "missing")).open()


def test_a_directory_without_journal_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "system.log").write_text("not a journal\n")
    with pytest.raises(WatcherError, match="no journal files"):
        JournalWatcher(path=str(tmp_path)).open()


def _line(command: str, uid: int | None) -> JournalRecord:
    return JournalRecord(
        "sshd", 7, "Connection closed by 192.0.2.9 port 4000", 1.0, "c", command, uid
    )


def test_a_root_line_without_comm_is_kept_because_the_sender_had_exited() -> None:
    """sshd's child for a connection closed before the banner exits at once; journald then has
    no _COMM for its last lines. Dropping them lost real failures on a loaded CI machine."""
    trusted = frozenset(TRUSTED_COMMANDS)
    assert _sent_by_root_sshd(_line("", 0), trusted)
    assert _sent_by_root_sshd(_line("sshd", 0), trusted)
    assert _sent_by_root_sshd(_line("sshd-session", 0), trusted)


def test_forged_or_unprivileged_lines_are_not_sshds() -> None:
    trusted = frozenset(TRUSTED_COMMANDS)
    assert not _sent_by_root_sshd(_line("logger", 0), trusted)  # root's `logger -t sshd`
    assert not _sent_by_root_sshd(_line("sshd", 1000), trusted)  # a user's program named sshd
    assert not _sent_by_root_sshd(_line("", 1000), trusted)  # a user's, exited
    assert not _sent_by_root_sshd(_line("", None), trusted)  # no credentials at all
