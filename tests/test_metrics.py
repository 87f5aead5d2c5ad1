# Prometheus text exposition from a snapshot (pure, checked line by line against the format's
# rules) and the atomic text-file writer (a reader never sees half a file; failures leave the old
# file and no temp file behind).
from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from guardian.metrics import label_value, metric_name, render_prometheus, write_textfile
from guardian.snapshot import StatusSnapshot, WatcherStatus
from tests.test_ui_samples import busy_snapshot, empty_snapshot, legacy_snapshot

SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="([^"\\\n]|\\.)*",?)*\})? -?[0-9.e+]+$'
)


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.parametrize("make", [empty_snapshot, busy_snapshot, legacy_snapshot])
def test_exposition_format(make: Callable[[], StatusSnapshot]) -> None:
    text = render_prometheus(make())
    assert text.endswith("\n")
    declared: list[str] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            declared.append(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name == declared[-1] and kind in ("counter", "gauge")
        else:
            assert SAMPLE.match(line), line
            assert line.split("{")[0].split(" ")[0] == declared[-1]  # samples follow their family
    assert len(declared) == len(set(declared))  # each family once


def test_values() -> None:
    values = samples(render_prometheus(busy_snapshot()))
    assert values['guardian_info{version="0.1.0"}'] == 1
    assert values["guardian_uptime_seconds"] == 3 * 86400 + 4 * 3600 + 5 * 60 + 6
    assert values["guardian_table_installed"] == 1
    assert values['guardian_watcher_up{watcher="journal"}'] == 0
    assert values['guardian_grants{state="in_session"}'] == 18
    assert values['guardian_grants{state="window"}'] == 9
    assert values['guardian_sessions{authenticated="false"}'] == 3
    assert values["guardian_bans"] == 31
    assert values["guardian_knocks_seen_total"] == 1000
    assert values["guardian_spa_refused_total"] == 3
    assert values["guardian_attempts"] == 17


def test_sections_a_daemon_does_not_track_are_absent_and_states_never_vanish() -> None:
    values = samples(render_prometheus(legacy_snapshot()))
    assert not any(k.startswith(("guardian_sessions", "guardian_bans")) for k in values)
    assert values['guardian_grants{state="linger"}'] == 0  # zero, not missing


def test_a_watcher_turned_off_is_not_listed_as_down() -> None:
    """watcher_up == 0 is what an alert fires on: a source the config leaves out is no fault."""
    watchers = (
        WatcherStatus("btmp", True),
        WatcherStatus("journal", False, "journald not reachable"),
        WatcherStatus("authlog", False, "not in [ban] sources", off=True),
    )
    header = dataclasses.replace(empty_snapshot().header, watchers=watchers)
    values = samples(render_prometheus(dataclasses.replace(empty_snapshot(), header=header)))
    assert values['guardian_watcher_up{watcher="btmp"}'] == 1
    assert values['guardian_watcher_up{watcher="journal"}'] == 0
    assert not any("authlog" in key for key in values)


def test_hostile_names_and_labels_are_escaped() -> None:
    snapshot = dataclasses.replace(
        empty_snapshot(),
        header=dataclasses.replace(
            empty_snapshot().header, watchers=(WatcherStatus('we"ird\\na\nme', True),)
        ),
        counters={"9 lives\n# TYPE x counter": 3},
    )
    text = render_prometheus(snapshot)
    assert 'guardian_watcher_up{watcher="we\\"ird\\\\na\\nme"} 1' in text
    assert "guardian__9_lives__#" not in text and "\n# TYPE x counter" not in text
    assert metric_name("9 lives") == "_9_lives"
    assert label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    for line in text.splitlines():
        assert line.startswith("#") or SAMPLE.match(line), line


def test_write_textfile_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "guardian.prom"
    path.write_text("old\n")
    big = render_prometheus(busy_snapshot()) * 20
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(path.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(30):
            write_textfile(str(path), big)
            write_textfile(str(path), "old\n")
    finally:
        stop.set()
        thread.join()
    assert seen <= {"old\n", big}  # never a partial file
    assert sorted(os.listdir(tmp_path)) == ["guardian.prom"]  # no temp files left
    assert (path.stat().st_mode & 0o777) == 0o644


def test_write_textfile_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "guardian.prom"
    path.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_textfile(str(path), "bad \udc80 surrogate")
    assert path.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["guardian.prom"]
    with pytest.raises(OSError):
        write_textfile(str(tmp_path / "missing-dir" / "x.prom"), "x")
