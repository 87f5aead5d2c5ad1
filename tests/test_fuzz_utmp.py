# Fuzz: btmp/utmp records (guardian/parsers/utmp.py parse_utmp) and the btmp watcher that reads
# them (guardian/watchers/btmp.py). Untrusted input: sshd writes the attempted user name into
# ut_user byte for byte (no NUL needed at 32), and a crashed writer leaves holes and torn records.
#
# Invariants: parse_utmp(data) never raises, returns exactly len(data) // 384 records and
# consumes exactly that many bytes (the partial tail is the caller's), with text fields free of
# NULs and an address that is an IP address or None; whatever bytes land in btmp, in whatever
# pieces, the watcher turns only sshd's login failures with an address into AuthFailed events and
# never more events than whole records written.
from __future__ import annotations

import ipaddress
import os
import tempfile

from hypothesis import given
from hypothesis import strategies as st

from guardian.events import AuthFailed
from guardian.parsers.utmp import (
    LOGIN_PROCESS,
    RECORD_SIZE,
    UtmpRecord,
    pack_utmp,
    parse_utmp,
)
from guardian.watchers.btmp import BtmpWatcher
from tests.test_fuzz_support import assert_fast, counted, fuzz_settings, outcome

_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["ssh:notty", "root", "", "192.0.2.1", "2001:db8::1", "::ffff:192.0.2.9"]),
)
RECORDS = st.builds(
    UtmpRecord,
    type=st.one_of(st.sampled_from([LOGIN_PROCESS, 0, 7, 8]), st.integers(-(2**15), 2**15 - 1)),
    pid=st.integers(-(2**31), 2**31 - 1),
    line=_TEXT,
    user=_TEXT,
    host=_TEXT,
    tv_sec=st.integers(-(2**31), 2**31 - 1),
    address=st.one_of(st.none(), st.ip_addresses()),
)


@st.composite
def _btmp_bytes(draw: st.DrawFn) -> bytes:
    """Whole records written by pack_utmp, with bytes flipped, holes, and a torn tail."""
    data = bytearray(b"".join(pack_utmp(r) for r in draw(st.lists(RECORDS, max_size=5))))
    for at, value in draw(
        st.lists(st.tuples(st.integers(0, 5 * RECORD_SIZE), st.integers(0, 255)), max_size=6)
    ):
        if at < len(data):
            data[at] = value
    if draw(st.booleans()):
        data += bytes(RECORD_SIZE)  # a hole
    return bytes(data) + draw(st.binary(max_size=RECORD_SIZE))


UTMP = st.one_of(_btmp_bytes(), st.binary(max_size=3 * RECORD_SIZE + 10))


def check_utmp(data: bytes) -> None:
    for view in (data, bytearray(data), memoryview(data)):
        result = outcome("utmp", lambda view=view: parse_utmp(view))
        assert not isinstance(result, BaseException)
        records, consumed = result
        assert consumed == len(data) - len(data) % RECORD_SIZE
        assert len(records) == len(data) // RECORD_SIZE
        for record in records:
            assert isinstance(record, UtmpRecord)
            assert "\0" not in record.user + record.line + record.host
            assert record.address is None or isinstance(
                record.address, ipaddress.IPv4Address | ipaddress.IPv6Address
            )
            assert record.malformed in (True, False)


@fuzz_settings(250)
@given(data=UTMP)
@counted("utmp")
def test_parse_utmp_takes_whole_records_and_never_raises(data: bytes) -> None:
    check_utmp(data)


@fuzz_settings(40)
@given(pieces=st.lists(UTMP, max_size=4))
@counted("btmp_watcher")
def test_the_btmp_watcher_turns_any_bytes_into_well_typed_events(pieces: list[bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="gs-fuzz-btmp-") as directory:
        path = os.path.join(directory, "btmp")
        open(path, "wb").close()
        written = b""
        events: list[AuthFailed] = []
        with BtmpWatcher(path) as watcher:
            for piece in [*pieces, b""]:
                with open(path, "ab") as handle:
                    handle.write(piece)
                written += piece
                found = outcome("utmp", watcher.read_events)
                assert isinstance(found, list)
                events += found
        assert len(events) <= len(written) // RECORD_SIZE
        for event in events:
            assert isinstance(event, AuthFailed) and event.origin == "btmp"
            assert isinstance(event.source, ipaddress.IPv4Address | ipaddress.IPv6Address)


def test_a_big_btmp_parses_fast() -> None:
    """8 MB of random bytes (21845 records, every one distinct: no memo helps)."""
    data = os.urandom(RECORD_SIZE * 21845)
    records, consumed = assert_fast(lambda: parse_utmp(data), 1.0, "parse_utmp on 8 MB")
    assert consumed == len(data) and len(records) == 21845
