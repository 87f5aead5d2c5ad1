# The status sub-commands end to end against a real control socket (a ControlServer driven in a
# background thread with a fake handler): argparse wiring, --once, --json, grants/sessions/bans,
# events, and what happens when no daemon runs (a clear message, exit 1).
from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from guardian.ui.commands import add_status_commands
from tests.test_control_support import FakeHandler, running_server
from tests.test_ui_samples import busy_snapshot, legacy_snapshot

REPO = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="guardian")
    add_status_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def run(*argv: str) -> int:
    args = parse(*argv)
    code: int = args.func(args)
    return code


def test_parser_defaults() -> None:
    args = parse("status")
    assert args.socket == "/run/guardian/control.sock"
    assert (args.once, args.json, args.interval) == (False, False, 0.25)
    with pytest.raises(SystemExit):
        parse("status", "--once", "--json")  # one or the other


@pytest.mark.parametrize("command", ["status --once", "status --json", "grants", "bans --json"])
def test_no_daemon_says_so_and_exits_1(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "control.sock"
    assert run(*command.split(), "--socket", str(path)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"guardian is not running (no socket at {path})\n"


def test_live_status_without_a_daemon_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "control.sock"
    assert run("status", "--socket", str(path)) == 1
    assert "guardian is not running" in capsys.readouterr().err


def test_status_once_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "control.sock"
    handler = FakeHandler()
    with running_server(path, handler):
        assert run("status", "--once", "-s", str(path)) == 0
        out = capsys.readouterr().out
        assert "ssh-guardian 0.1.0" in out and "Grants (36)" in out and "Bans (31)" in out
        assert run("status", "--json", "-s", str(path)) == 0
        assert json.loads(capsys.readouterr().out) == handler.doc


def test_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "control.sock"
    with running_server(path, FakeHandler(legacy_snapshot().to_json())):
        assert run("grants", "-s", str(path)) == 0
        assert capsys.readouterr().out.splitlines()[1].split()[:3] == [
            "192.0.2.10",
            "ssh",
            "window",
        ]
        assert run("sessions", "-s", str(path)) == 0
        assert capsys.readouterr().out == "sessions are not tracked by this guardian\n"
        assert run("bans", "--json", "-s", str(path)) == 0
        assert capsys.readouterr().out == "null\n"
        assert run("grants", "--json", "-s", str(path)) == 0
        assert json.loads(capsys.readouterr().out)[0]["source"] == "192.0.2.10"


def test_a_bad_snapshot_is_reported_not_crashed_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "control.sock"
    doc = busy_snapshot().to_json()
    doc["grants"][0]["source"] = "not-an-address"
    with running_server(path, FakeHandler(doc)):
        assert run("status", "--once", "-s", str(path)) == 1
    assert "snapshot.grants[0].source: expected an IP address" in capsys.readouterr().err


def test_events_follows_the_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "control.sock"
    event = {"at": 0.0, "kind": "ban", "source": "192.0.2.66", "door": "", "detail": "flood"}
    with running_server(path) as loop:
        stopped = threading.Event()

        def publish_then_stop() -> None:
            if loop.server.subscriber_count:
                loop.server.publish(event)
                stopped.set()  # before the close: the client wakes up at the close
                loop.server.close()  # the daemon goes away: the command ends with exit 1
            else:
                loop.call(publish_then_stop)

        loop.call(publish_then_stop)
        assert run("events", "--json", "-s", str(path)) == 1
        assert stopped.is_set()
    captured = capsys.readouterr()
    assert json.loads(captured.out) == event
    assert "ended the stream" in captured.err


LIVE = """
import sys
from guardian.ui.live import run_live
sys.exit(run_live(sys.argv[1], interval=0.1))
"""


def test_live_dashboard_in_a_terminal_redraws_and_exits_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """The real rich Live loop in a pseudo-terminal: it draws frames from the socket, and SIGINT
    (Ctrl-C) ends it with exit 0 and the terminal's main screen restored."""
    path = tmp_path / "control.sock"
    handler = FakeHandler()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    output = b""
    with running_server(path, handler, snapshot_ttl=0.0):
        proc = subprocess.Popen(
            [sys.executable, "-c", LIVE, str(path)],
            cwd=REPO,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"},
        )
        os.close(slave)
        try:
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and handler.count("snapshot") < 5:
                output += _read_some(master)
            polls = handler.count("snapshot")
            proc.send_signal(signal.SIGINT)
            while time.monotonic() < deadline and proc.poll() is None:
                output += _read_some(master)
            output += _read_some(master)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            os.close(master)
    assert polls >= 5  # it kept polling (first fetch + redraws)
    assert proc.returncode == 0
    text = output.decode(errors="replace")
    assert "Grants (36)" in text and "ssh-guardian 0.1.0" in text
    assert "\x1b[?1049h" in text and "\x1b[?1049l" in text  # alternate screen entered and left
    assert "Traceback" not in text


def _read_some(fd: int) -> bytes:
    ready, _, _ = select.select([fd], [], [], 0.05)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO once the child has gone
        return b""
