# Golden renders of the `guardian status` dashboard: fixed snapshots through a pinned console,
# compared with tests/data/ui/*.txt. To accept a deliberate change of the rendering, run
#   GUARDIAN_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_ui_status.py
# and review the diff of tests/data/ui/ like code. Trailing blanks (rich pads every line to the
# console width) are stripped before comparing, so editors cannot break the files.
from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from guardian.snapshot import StatusSnapshot, WatcherStatus
from guardian.ui.live import frame, rows_per_table
from guardian.ui.status import render_status
from tests.test_ui_samples import busy_snapshot, empty_snapshot, legacy_snapshot

GOLDEN = Path(__file__).resolve().parent / "data" / "ui"
UPDATE = os.environ.get("GUARDIAN_UPDATE_GOLDEN") == "1"


def pinned_console(width: int) -> Console:
    return Console(
        width=width,
        file=io.StringIO(),
        color_system=None,
        force_terminal=False,
        legacy_windows=False,
    )


def render(snapshot: StatusSnapshot, width: int, max_rows: int | None = None) -> str:
    console = pinned_console(width)
    console.print(render_status(snapshot, width, max_rows=max_rows))
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


CASES: dict[str, tuple[Callable[[], StatusSnapshot], int, int | None]] = {
    "empty_100": (empty_snapshot, 100, None),
    "busy_100": (busy_snapshot, 100, None),
    "busy_80": (busy_snapshot, 80, None),
    "busy_80_rows8": (busy_snapshot, 80, 8),
    "legacy_80": (legacy_snapshot, 80, None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_render(name: str) -> None:
    make, width, max_rows = CASES[name]
    got = normalised(render(make(), width, max_rows))
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert path.is_file(), f"no golden file {path}: run with GUARDIAN_UPDATE_GOLDEN=1 and review"
    assert got == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("make", [empty_snapshot, busy_snapshot, legacy_snapshot])
@pytest.mark.parametrize("width", [80, 100, 132])
def test_every_line_fits_the_width(make: Callable[[], StatusSnapshot], width: int) -> None:
    text = render(make(), width)
    assert max(len(line) for line in text.splitlines()) <= width


def test_at_80_columns_sources_are_never_cut() -> None:
    """Columns collapse by dropping secondary columns, not by cutting addresses."""
    snapshot = busy_snapshot()
    text = render(snapshot, 80)
    for grant in snapshot.grants:
        assert grant.source in text
    assert snapshot.bans is not None
    for ban in snapshot.bans:
        assert ban.source in text

    def grants_header(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("source"))

    assert "opened" not in grants_header(text)  # the wide-only grant column went
    assert "opened" in grants_header(render(snapshot, 100))


def test_render_shows_what_the_issue_asks_for() -> None:
    text = render(busy_snapshot(), 100)
    for expected in (
        "up 3d04h",  # uptime
        "journal DOWN (journald not reachable)",  # watchers with reasons
        "table inet guardian installed",
        "on-demand sshd running",
        "in session",
        "linger",
        "window",  # grant states
        "2 (+1 logging in)",  # sessions of a grant
        "in 10m00s",  # a ban's until
        "permanent",
        "#4",  # offence number
        "spa refused",  # an event
        "knock packets: seen 1000",
        "failed logins: reported 1624 · attempts 812 · while banned 40",
        "bans: for failures 31 · by operator 2 · adopted 5 · expired 25 · lifted 1",
    ):
        assert expected in text, expected


def test_a_watcher_turned_off_reads_off_not_down() -> None:
    watchers = (
        WatcherStatus("journal", False, "journald not reachable"),
        WatcherStatus("authlog", False, "not in [ban] sources", off=True),
    )
    snapshot = busy_snapshot()
    header = dataclasses.replace(snapshot.header, watchers=watchers)
    text = render(dataclasses.replace(snapshot, header=header), 100)
    assert "journal DOWN (journald not reachable)" in text
    assert "authlog off (not in [ban] sources)" in text
    assert "authlog DOWN" not in text


def test_missing_sections_are_left_out_and_empty_ones_say_so() -> None:
    legacy = render(legacy_snapshot(), 100)
    assert "Sessions" not in legacy and "Bans" not in legacy
    assert "No sessions" not in legacy and "No bans" not in legacy
    assert "NOT INSTALLED" in legacy and "knock DOWN (no such device: eth9)" in legacy
    empty = render(empty_snapshot(), 100)
    assert "No grants" in empty and "No sessions." in empty and "No bans." in empty


def test_max_rows_limits_tables_and_says_how_many_are_hidden() -> None:
    snapshot = busy_snapshot()
    text = render(snapshot, 100, max_rows=5)
    assert f"… and {len(snapshot.grants) - 4} more" in text
    assert snapshot.grants[3].source in text and snapshot.grants[4].source not in text


def test_rendering_is_pure() -> None:
    """Same snapshot, same text, whenever it is rendered; the snapshot is not touched."""
    snapshot = busy_snapshot()
    before = dataclasses.replace(snapshot)
    assert render(snapshot, 100) == render(snapshot, 100)
    assert snapshot == before


def test_live_frame_fits_the_terminal_height() -> None:
    snapshot = busy_snapshot()
    console = Console(width=100, height=50, file=io.StringIO(), color_system=None)
    console.print(frame(snapshot, console))
    assert isinstance(console.file, io.StringIO)
    assert len(console.file.getvalue().splitlines()) <= 50
    assert rows_per_table(snapshot, 10) >= 2  # a tiny terminal still shows something


def test_live_frame_says_when_the_daemon_is_gone() -> None:
    console = Console(width=80, height=40, file=io.StringIO(), color_system=None)
    console.print(frame(legacy_snapshot(), console, "guardian is not running (no socket at /x)"))
    assert isinstance(console.file, io.StringIO)
    first = console.file.getvalue().splitlines()[0]
    assert first.startswith("guardian is not running (no socket at /x) (showing the last snapshot")


def test_snapshot_strings_are_never_markup_or_emoji() -> None:
    """An IPv6 address holds ":1234:" (an emoji code to rich) and a door name may hold "[bold]":
    both must come out exactly as they are."""
    busy = busy_snapshot()
    grant = dataclasses.replace(
        busy.grants[0], source="2001:db8:85a3:1234:5678:8a2e:370:7334", door="[bold]x[/]"
    )
    watchers = (*busy.header.watchers, WatcherStatus("[red]w:smile:", False, "[link=x]y"))
    snapshot = dataclasses.replace(
        busy,
        grants=(grant,),
        header=dataclasses.replace(busy.header, version="[blink]1:100:", watchers=watchers),
    )
    text = render(snapshot, 120)
    for literal in (grant.source, "[bold]x[/]", "[red]w:smile:", "[link=x]y", "[blink]1:100:"):
        assert literal in text, literal
