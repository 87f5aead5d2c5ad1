# The wire schema: JSON round trips (Hypothesis), validation that names the bad field and never
# leaks KeyError/TypeError, optional sections, and build_status() against a real engine.
from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardian.actions import Notice
from guardian.config import Config, Door, KnockStep
from guardian.engine import Engine
from guardian.events import SYN, KnockSeen
from guardian.snapshot import (
    SCHEMA_VERSION,
    BanInfo,
    EventInfo,
    GrantInfo,
    Header,
    RecentEvents,
    SessionInfo,
    SnapshotError,
    SpaStatus,
    SshdStatus,
    StatusSnapshot,
    WatcherStatus,
    build_status,
    event_from_notice,
    from_json,
)
from tests.test_ui_samples import busy_snapshot, empty_snapshot, legacy_snapshot

# ---- strategies ---------------------------------------------------------------------------------

times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
durations = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
texts = st.text(max_size=30)
addresses = st.ip_addresses().map(str)
networks = st.one_of(
    addresses,
    st.builds(
        lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
        st.ip_addresses(v=4),
        st.integers(8, 32),
    ),
)
ports = st.integers(0, 65535)
counts = st.integers(0, 2**40)

watchers = st.builds(
    WatcherStatus, st.text(min_size=1, max_size=12), st.booleans(), texts, st.booleans()
)
headers = st.builds(
    Header,
    version=texts,
    pid=st.integers(0, 2**22),
    taken_at=times,
    uptime=durations,
    config_path=texts,
    table_installed=st.booleans(),
    watchers=st.lists(watchers, max_size=4).map(tuple),
    sshd=st.none() | st.builds(SshdStatus, st.text(max_size=10), texts),
)
grants = st.builds(
    GrantInfo,
    source=addresses,
    door=texts,
    state=st.sampled_from(["window", "in_session", "linger", "future_state"]),
    sessions=st.integers(0, 1000),
    opened_at=times,
    expires_at=times,
    time_left=durations,
    pending=st.integers(0, 100),
)
sessions = st.builds(
    SessionInfo,
    source=addresses,
    sport=ports,
    dport=ports,
    user=st.none() | st.text(min_size=1, max_size=12),
    since=times,
    authenticated=st.booleans(),
    origin=texts,
    auth=st.sampled_from(["", "pending", "accepted", "assumed", "expired"]),
)
bans = st.builds(
    BanInfo,
    source=networks,
    reason=texts,
    since=times,
    until=st.none() | times,
    offence=st.integers(1, 100),
)
events = st.builds(
    EventInfo,
    at=times,
    kind=st.text(min_size=1, max_size=20),
    source=st.none() | addresses,
    door=texts,
    detail=texts,
)
snapshots = st.builds(
    StatusSnapshot,
    header=headers,
    grants=st.lists(grants, max_size=5).map(tuple),
    sessions=st.none() | st.lists(sessions, max_size=5).map(tuple),
    bans=st.none() | st.lists(bans, max_size=5).map(tuple),
    spa=st.none() | st.builds(SpaStatus, texts, st.lists(texts, max_size=3).map(tuple)),
    events=st.lists(events, max_size=5).map(tuple),
    counters=st.dictionaries(st.text(min_size=1, max_size=20), counts, max_size=6),
    gauges=st.dictionaries(st.text(min_size=1, max_size=20), durations, max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(snapshots)
def test_json_round_trip(snapshot: StatusSnapshot) -> None:
    wire = json.dumps(snapshot.to_json(), allow_nan=False)
    assert from_json(json.loads(wire)) == snapshot


@pytest.mark.parametrize("make", [empty_snapshot, busy_snapshot, legacy_snapshot])
def test_samples_round_trip(make: Any) -> None:
    snapshot = make()
    assert StatusSnapshot.from_json(json.loads(json.dumps(snapshot.to_json()))) == snapshot


def test_absent_sections_stay_absent_and_empty_ones_stay_empty() -> None:
    legacy = legacy_snapshot().to_json()
    assert legacy["sessions"] is None and legacy["bans"] is None and legacy["spa"] is None
    empty = empty_snapshot().to_json()
    assert empty["sessions"] == [] and empty["bans"] == []
    # A document of an older daemon may leave the optional keys out entirely.
    for key in ("sessions", "bans", "spa", "counters", "gauges"):
        del legacy[key]
    del legacy["header"]["sshd"]
    loaded = from_json(legacy)
    assert (loaded.sessions, loaded.bans, loaded.spa, loaded.header.sshd) == (
        None,
        None,
        None,
        None,
    )
    assert loaded.counters == {} and loaded.gauges == {}


def test_unknown_keys_are_ignored() -> None:
    doc = busy_snapshot().to_json()
    doc["something_new"] = {"x": 1}
    doc["header"]["hostname"] = "h"
    doc["grants"][0]["via"] = "spa"
    assert from_json(doc) == busy_snapshot()


def test_a_watcher_without_the_off_flag_reads_as_not_off() -> None:
    """A daemon from before the flag (the CLI may be newer than the running daemon)."""
    doc = empty_snapshot().to_json()
    doc["header"]["watchers"] = [{"name": "authlog", "up": False, "reason": "x"}]
    assert from_json(doc).header.watchers == (WatcherStatus("authlog", False, "x", off=False),)
    doc["header"]["watchers"][0]["off"] = True
    assert from_json(doc).header.watchers == (WatcherStatus("authlog", False, "x", off=True),)


# ---- validation ---------------------------------------------------------------------------------


def _mutated(path: list[Any], value: Any) -> dict[str, Any]:
    doc = empty_snapshot().to_json()
    doc["grants"] = [copy.deepcopy(legacy_snapshot().to_json()["grants"][0])]
    doc["bans"] = [copy.deepcopy(busy_snapshot().to_json()["bans"][0])]
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["schema"], 2, "snapshot.schema: version 2 is not supported"),
        (["schema"], "1", "snapshot.schema: expected an integer"),
        (["header"], KeyError, "snapshot.header: missing"),
        (["header"], [], "snapshot.header: expected an object, got a list"),
        (["header", "pid"], True, "snapshot.header.pid: expected an integer, got a boolean"),
        (["header", "pid"], -1, "snapshot.header.pid: -1 is out of range"),
        (["header", "uptime"], "3s", "snapshot.header.uptime: expected a number, got a string"),
        (["header", "table_installed"], 1, "snapshot.header.table_installed: expected true or"),
        (["header", "watchers"], {}, "snapshot.header.watchers: expected a list"),
        (
            ["header", "watchers"],
            [{"name": "n", "up": False, "reason": "", "off": "yes"}],
            "snapshot.header.watchers[0].off: expected true or false",
        ),
        (["grants", 0, "source"], "not-an-ip", "snapshot.grants[0].source: expected an IP address"),
        (["grants", 0, "source"], "192.0.2.0/24", "snapshot.grants[0].source: expected an IP"),
        (["grants", 0, "state"], "", "snapshot.grants[0].state: must not be empty"),
        (["grants", 0, "time_left"], None, "snapshot.grants[0].time_left: expected a number"),
        (["grants", 0], "x", "snapshot.grants[0]: expected an object, got a string"),
        (["bans", 0, "offence"], 0, "snapshot.bans[0].offence: 0 is out of range"),
        (["bans", 0, "source"], "nope", "snapshot.bans[0].source: expected an IP address or"),
        (["sessions"], "none", "snapshot.sessions: expected a list, got a string"),
        (["counters", "knocks_seen"], 1.5, "snapshot.counters.knocks_seen: expected an integer"),
        (["gauges", "attempts"], "x", "snapshot.gauges.attempts: expected a number"),
    ],
)
def test_bad_documents_name_the_field(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(SnapshotError) as info:
        from_json(_mutated(path, value))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("doc", [None, [], "snapshot", 3, {"schema": 1}])
def test_not_a_snapshot(doc: object) -> None:
    with pytest.raises(SnapshotError):
        from_json(doc)


def test_non_finite_numbers_are_refused() -> None:
    # Python's json accepts NaN and Infinity; the schema does not.
    doc = json.loads(
        json.dumps(legacy_snapshot().to_json()).replace('"uptime": 3725.0', '"uptime": NaN')
    )
    assert math.isnan(doc["header"]["uptime"])
    with pytest.raises(SnapshotError, match="finite"):
        from_json(doc)
    doc["header"]["uptime"] = 10**400  # valid JSON, but no float holds it
    with pytest.raises(SnapshotError, match="finite"):
        from_json(doc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_is_a_snapshot_error_or_a_valid_snapshot(data: st.DataObject) -> None:
    """Replace or delete one node anywhere in a busy document: from_json either accepts it or
    raises SnapshotError; no KeyError, TypeError or AttributeError gets out."""
    doc = busy_snapshot().to_json()
    target: Any = doc
    while True:
        keys = list(target.keys()) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        child = target[key]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            target = child
            continue
        if isinstance(target, dict) and data.draw(st.booleans()):
            del target[key]
        else:
            target[key] = data.draw(json_values)
        break
    try:
        result = from_json(doc)
    except SnapshotError:
        return
    assert isinstance(result, StatusSnapshot)


# ---- building a snapshot from the engine --------------------------------------------------------


def _engine_with_a_grant() -> Engine:
    door = Door("ssh", (KnockStep(7000), KnockStep(8000)), timeout=5.0)
    engine = Engine(Config(doors=(door,)))
    source = ipaddress.ip_address("192.0.2.7")
    engine.feed(KnockSeen(source, 7000, "tcp", SYN), 100.0)
    engine.feed(KnockSeen(source, 8000, "tcp", SYN), 101.0)
    return engine


def test_build_status_converts_monotonic_instants_to_wall_clock() -> None:
    engine = _engine_with_a_grant()
    snap = engine.snapshot(111.0)
    status = build_status(
        snap,
        wall_now=1_700_000_000.0,
        started_at=90.0,
        version="9.9",
        pid=123,
        config_path="/etc/guardian/guardian.toml",
        table_installed=True,
        watchers=(WatcherStatus("knock", True),),
    )
    assert status.header.taken_at == 1_700_000_000.0
    assert status.header.uptime == 21.0
    [grant] = status.grants
    assert grant.source == "192.0.2.7" and grant.door == "ssh" and grant.state == "window"
    # Opened at monotonic 101, taken at 111: ten seconds before the wall-clock time of the snapshot.
    assert grant.opened_at == 1_700_000_000.0 - 10.0
    assert grant.time_left == snap.grants[0].time_left > 0
    assert grant.expires_at == pytest.approx(1_700_000_000.0 + grant.time_left)
    assert status.counters["knocks_completed"] == 1
    assert status.gauges["attempts"] == 0
    assert "python_blocks" not in status.gauges  # the daemon's to add (extra_gauges)
    assert status.sessions == ()  # the engine tracks sessions: none yet
    assert status.bans is None and status.spa is None  # not given: not tracked
    assert from_json(json.loads(json.dumps(status.to_json()))) == status


def test_build_status_passes_daemon_sections_through() -> None:
    snap = _engine_with_a_grant().snapshot(105.0)
    ban = BanInfo("198.51.100.9", "knock flood", 1.0, None, 2)
    event = EventInfo(5.0, "ban", "198.51.100.9")
    status = build_status(
        snap,
        wall_now=1000.0,
        started_at=100.0,
        version="0.1.0",
        pid=1,
        config_path="c",
        table_installed=False,
        sshd=SshdStatus("stopped"),
        bans=[ban],
        spa=SpaStatus("udp/62201", ("laptop",), {"too_old": 2}, 1),
        events=[event],
        extra_counters={"control_refused": 3},
        extra_gauges={"python_blocks": 123456.0},  # what only the process knows
    )
    assert status.bans == (ban,) and status.events == (event,)
    assert status.gauges["python_blocks"] == 123456.0 and "timer_entries" in status.gauges
    assert from_json(json.loads(json.dumps(status.to_json()))) == status
    assert status.header.sshd == SshdStatus("stopped")
    assert status.counters["control_refused"] == 3 and "knocks_seen" in status.counters


def test_event_from_notice_and_recent_events() -> None:
    notice = Notice("knock_completed", ipaddress.ip_address("2001:db8::1"), "ssh", "detail")
    event = event_from_notice(notice, 1234.5)
    assert event == EventInfo(1234.5, "knock_completed", "2001:db8::1", "ssh", "detail")
    assert EventInfo.from_json(event.to_json()) == event
    assert event_from_notice(Notice("x", None), 1.0).source is None
    recent = RecentEvents(size=3)
    for i in range(5):
        recent.add(EventInfo(float(i), "k"))
    assert [e.at for e in recent.items()] == [2.0, 3.0, 4.0] and len(recent) == 3


def test_schema_version_is_written() -> None:
    assert empty_snapshot().to_json()["schema"] == SCHEMA_VERSION


def test_build_status_counts_failures_per_origin() -> None:
    snap = dataclasses.replace(
        _engine_with_a_grant().snapshot(111.0), failures_by_origin={"journal": 4, "btmp": 3}
    )
    status = build_status(
        snap,
        wall_now=1_700_000_000.0,
        started_at=90.0,
        version="9.9",
        pid=123,
        config_path="g.toml",
        table_installed=True,
    )
    assert status.counters["failures_seen_journal"] == 4
    assert status.counters["failures_seen_btmp"] == 3
    assert "failures_seen_authlog" not in status.counters  # no report from it: no key
