# Fuzz: journal entries -> JournalRecord -> detections -> engine events. Untrusted input: a
# journal entry's MESSAGE, SYSLOG_IDENTIFIER and SYSLOG_PID are whatever the sender wrote (any local
# user can `logger -t sshd --id=...`); only _PID, _UID and _COMM are journald's own. Surfaces:
# guardian/watchers/journal.py _record (one entry's fields, read through the reader's _get, here a
# fake reader: no journal needed) and _sent_by_root_sshd, guardian/watchers/sshd_log.py
# SshdLogAdapter.events, detection_to_event and failure_from.
#
# Invariants: an entry becomes a JournalRecord (or the watcher's WatcherError), never another
# exception: read_records() lets anything else escape into the daemon's loop; records become
# only well-typed SessionOpened / SessionClosed / AuthFailed events.
from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardian.events import AuthFailed, SessionClosed, SessionOpened
from guardian.parsers.sshd import Detection
from guardian.watchers import WatcherError
from guardian.watchers.journal import JournalRecord, _record, _sent_by_root_sshd
from guardian.watchers.sshd_log import SshdLogAdapter, detection_to_event, failure_from
from tests.test_fuzz_sshd import ADDRESSES, INJECTION_TEMPLATES, MESSAGES, PORTS, USERS
from tests.test_fuzz_support import counted, fuzz_settings, outcome

FIELDS = ("SYSLOG_IDENTIFIER", "SYSLOG_PID", "_PID", "_COMM", "_UID", "MESSAGE")


class FakeReader:
    """What _record reads from a systemd.journal.Reader standing on one entry."""

    def __init__(self, fields: dict[str, bytes], realtime: int, cursor: str) -> None:
        self.fields = fields
        self.realtime = realtime
        self.cursor = cursor

    def _get(self, name: str) -> bytes:
        return self.fields[name]  # KeyError for a missing field, like the real reader

    def _get_realtime(self) -> int:
        return self.realtime

    def _get_cursor(self) -> str:
        return self.cursor


# Field values: what journald stores (bytes, maybe not UTF-8), biased to numbers of every kind.
_NUMBERS = st.one_of(
    st.integers(0, 2**64).map(lambda n: str(n).encode()),
    st.sampled_from(
        [b"", b"-1", b"+1", b" 1", b"0x10", b"1_000", b"\xd9\xa3", b"007", b"\xc2\xb2"]
    ),
    st.integers(4000, 4400).map(lambda n: b"9" * n),
)
_VALUES = st.one_of(_NUMBERS, st.binary(max_size=40), st.text(max_size=40).map(str.encode))
ENTRIES = st.dictionaries(st.sampled_from(FIELDS), _VALUES, max_size=len(FIELDS))


def check_entry(fields: dict[str, bytes], realtime: int) -> None:
    reader = FakeReader(fields, realtime, "s=0;i=1")
    record = outcome("journal", lambda: _record(reader), (WatcherError,))
    if isinstance(record, BaseException):
        return
    assert isinstance(record, JournalRecord)
    assert isinstance(record.pid, int) and record.pid >= 0
    assert record.uid is None or (isinstance(record.uid, int) and record.uid >= 0)
    assert isinstance(record.message, str) and isinstance(record.identifier, str)
    trusted = outcome("journal", lambda: _sent_by_root_sshd(record, frozenset({"sshd"})))
    assert trusted in (True, False)
    assert not trusted or record.uid == 0


@fuzz_settings(300)
@given(fields=ENTRIES, realtime=st.integers(0, 2**63))
@counted("journal_entry")
def test_an_entry_becomes_a_record_or_a_watcher_error(
    fields: dict[str, bytes], realtime: int
) -> None:
    check_entry(fields, realtime)


@pytest.mark.parametrize(
    "fields",
    [
        {
            "SYSLOG_PID": "²".encode(),
            "MESSAGE": b"Accepted password for a from 192.0.2.1 port 2 ssh2",
        },
        {"SYSLOG_PID": b"9" * 5000, "MESSAGE": b"x"},
        {"_PID": b"1", "_UID": "\u00b9".encode(), "MESSAGE": b"x"},
    ],
    ids=["superscript-pid", "huge-pid", "superscript-uid"],
)
def test_a_journal_entry_with_odd_digits_is_a_record_or_a_watcher_error(
    fields: dict[str, bytes],
) -> None:
    try:
        record = _record(FakeReader(fields, 1_700_000_000_000_000, "c"))
    except WatcherError:
        return
    assert isinstance(record.pid, int)


# ---- records -> events ---------------------------------------------------------------------------
RECORDS = st.lists(
    st.builds(
        JournalRecord,
        identifier=st.sampled_from(["sshd", "sshd-session", "logger", ""]),
        pid=st.one_of(st.integers(0, 8), st.integers(0, 2**22)),
        message=st.one_of(
            MESSAGES,
            st.builds(
                lambda t, u, h, p: t[0].format(u=u, h=h, p=p),
                st.sampled_from(INJECTION_TEMPLATES),
                USERS,
                ADDRESSES,
                PORTS,
            ),
        ),
        realtime=st.floats(0, 2e9),
        cursor=st.text(max_size=8),
        command=st.sampled_from(["sshd", "sshd-session", "", "logger"]),
        uid=st.one_of(st.none(), st.just(0), st.integers(0, 2**32)),
    ),
    max_size=30,
)


def check_adapter(records: list[JournalRecord], mode: str, failures: bool, since: Any) -> None:
    adapter = SshdLogAdapter(mode, failures=failures)
    events = outcome("journal", lambda: adapter.events(records, sessions_since=since))
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, SessionOpened | SessionClosed | AuthFailed), event
        assert isinstance(event.source, ipaddress.IPv4Address | ipaddress.IPv6Address)
        if isinstance(event, AuthFailed):
            assert failures and event.origin == "journal" and event.attempts >= 1
        else:
            assert 0 <= event.sport < 10**10 and isinstance(event.user, str)


@fuzz_settings(200)
@given(
    records=RECORDS,
    mode=st.sampled_from(["normal", "aggressive", "bogus"]),
    failures=st.booleans(),
    since=st.one_of(st.none(), st.floats(0, 2e9)),
)
@counted("journal_events")
def test_records_become_only_well_typed_events(
    records: list[JournalRecord], mode: str, failures: bool, since: float | None
) -> None:
    check_adapter(records, mode, failures, since)


DETECTIONS = st.builds(
    Detection,
    kind=st.sampled_from(["failure", "success", "session_closed"]),
    rule=st.text(max_size=10),
    source=st.one_of(st.none(), st.ip_addresses()),
    port=st.one_of(st.none(), PORTS),
    user=st.one_of(st.none(), st.text(max_size=10)),
    pid=st.one_of(st.none(), st.integers(0, 2**31)),
    wall_time=st.one_of(st.none(), st.floats(allow_nan=False)),
    attempts=st.integers(1, 64),
    host_name=st.one_of(st.none(), st.text(max_size=10)),
    method=st.one_of(st.none(), st.text(max_size=10)),
)


@fuzz_settings(300)
@given(detection=DETECTIONS)
@counted("journal_detections")
def test_detections_map_to_events_or_none(detection: Detection) -> None:
    event = outcome("journal", lambda: detection_to_event(detection))
    if event is not None:
        assert detection.kind in ("success", "session_closed") and detection.source is not None
    failure = outcome("journal", lambda: failure_from(detection, "journal"))
    if failure is not None:
        assert detection.kind == "failure" and failure.source == detection.source
