# Plain-text and JSON views for `guardian grants/sessions/bans/events` (pure functions of a
# snapshot), and the formatters they share with the dashboard.
from __future__ import annotations

import json
from datetime import UTC, timedelta, timezone

import pytest

from guardian.snapshot import EventInfo
from guardian.ui.format import ago, span, state_label, until
from guardian.ui.text import (
    bans_text,
    columns,
    event_line,
    grants_text,
    section_json,
    sessions_text,
)
from tests.test_ui_samples import TAKEN_AT, busy_snapshot, empty_snapshot, legacy_snapshot


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.4, "0s"),
        (59.6, "1m00s"),
        (61, "1m01s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (86399, "23h59m"),
        (90061, "1d01h"),
        (-5, "0s"),
    ],
)
def test_span(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_relative_times_come_from_the_snapshot() -> None:
    assert ago(1000.0, 880.0) == "2m00s ago"
    assert until(1000.0, 1600.0) == "in 10m00s"
    assert until(1000.0, None) == "permanent"
    assert state_label("in_session") == "in session" and state_label("new_thing") == "new thing"


def test_columns_align_and_do_not_pad_the_last_column() -> None:
    text = columns(("A", "LONGER"), [("x", "1"), ("yyyy", "22")])
    assert text == "A     LONGER\nx     1\nyyyy  22\n"


def test_grants_text() -> None:
    lines = grants_text(busy_snapshot()).splitlines()
    assert lines[0].split() == ["SOURCE", "DOOR", "STATE", "SESSIONS", "TIME", "LEFT", "OPENED"]
    assert len(lines) == 1 + len(busy_snapshot().grants)
    assert lines[2].split()[:3] == ["192.0.2.11", "laptop", "in"]
    assert "2 (+1 logging in)" in lines[2]
    assert grants_text(empty_snapshot()) == "no grants\n"


def test_sessions_text() -> None:
    busy = busy_snapshot()
    lines = sessions_text(busy).splitlines()
    assert lines[0].split() == ["USER", "SOURCE", "SPORT", "DPORT", "SINCE", "AUTH", "SEEN", "BY"]
    assert busy.sessions is not None and len(lines) == 1 + len(busy.sessions)
    assert any(line.split()[:4] == ["(pending)", "192.0.2.11", "50001", "22"] for line in lines)
    assert any(" ? " in line for line in lines)  # dport 0: only the journal knows it
    assert sessions_text(empty_snapshot()) == "no sessions\n"
    assert sessions_text(legacy_snapshot()) == "sessions are not tracked by this guardian\n"


def test_bans_text() -> None:
    lines = bans_text(busy_snapshot()).splitlines()
    assert lines[0].split() == ["SOURCE", "UNTIL", "OFFENCE", "BANNED", "REASON"]
    assert lines[1].split()[:4] == ["2001:db8:4000::3e8:3e8", "in", "10m00s", "#1"]
    assert lines[-1].split()[:3] == ["198.51.100.0/24", "permanent", "#1"]
    assert bans_text(legacy_snapshot()) == "bans are not enabled in this guardian\n"


def test_section_json_is_the_wire_form() -> None:
    busy = busy_snapshot()
    assert json.loads(section_json(busy, "grants")) == busy.to_json()["grants"]
    assert json.loads(section_json(legacy_snapshot(), "bans")) is None


def test_event_line() -> None:
    event = EventInfo(TAKEN_AT, "knock_failed", "192.0.2.7", "ssh", "wrong port")
    assert event_line(event, UTC) == (
        "2023-11-14T22:13:20+00:00 knock_failed 192.0.2.7 door=ssh (wrong port)"
    )
    plus2 = timezone(timedelta(hours=2))
    assert event_line(EventInfo(TAKEN_AT, "reload"), plus2) == "2023-11-15T00:13:20+02:00 reload"
