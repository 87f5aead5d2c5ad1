# Event hooks (guardian/effectors/hooks.py) and the two recipes in scripts/, without root: which
# Notices become hook events and with what JSON, and the runner driven like the daemon drives it
# (a selector on the children's pidfds, the runner's deadlines), with real child processes: the
# event reaches stdin, a hanging hook is killed at its timeout (its whole process group), a failing
# one is logged once per failure, the concurrency cap and the bounded queue hold. The recipes run
# against a fake sendmail on PATH and a local http.server on 127.0.0.1. Every wait is bounded.
from __future__ import annotations

import contextlib
import email
import email.policy
import http.server
import ipaddress
import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guardian.actions import Action, Ban, Notice, OpenEveryone, OpenGrant
from guardian.config import Hook
from guardian.effectors.hooks import HookEvent, HookRunner, hook_events

REPO = Path(__file__).resolve().parents[1]
A = ipaddress.ip_address("192.0.2.7")
KEYS = {"kind", "time", "source", "door", "user", "reason", "until"}


# -- hook_events: Notices -> events ------------------------------------------------------------


def test_grant_event_carries_until_from_its_open_grant() -> None:
    actions: list[Action] = [
        OpenGrant(A, 30.0, "ssh"),
        Notice("knock_completed", A, "ssh"),
        Notice("grant_opened", A, "ssh"),
    ]
    [event] = hook_events(actions, 1000.0)
    doc = json.loads(event.to_json())
    assert doc == {
        "kind": "grant",
        "time": 1000.0,
        "source": "192.0.2.7",
        "door": "ssh",
        "user": None,
        "reason": None,
        "until": 1030.0,
    }


def test_every_hook_kind_maps_from_its_notice() -> None:
    net = ipaddress.ip_network("192.0.2.7/32")
    actions: list[Action] = [
        Ban(net, 600.0, "maxretry", 1),
        Notice("ban", A, detail="192.0.2.7/32 for 10m"),
        Notice("unban", A, detail="operator"),
        Notice("grant_closed", A, "ssh", "window ended"),
        OpenEveryone("all", 180.0),
        Notice("everyone_opened", A, "all", "open"),
        Notice("everyone_closed", None, "all", "window ended"),
        Notice("session_opened", A, "ssh", "alice port 40000"),
        Notice("session_closed", A, "ssh", "port 40000 (authentication assumed)"),
        Notice("knock_failed", A, "ssh", "wrong port"),
        Notice("grant_refreshed", A, "ssh"),  # not a hook kind
    ]
    events = hook_events(actions, 50.0)
    assert [e.kind for e in events] == [
        "ban",
        "unban",
        "revoke",
        "everyone_opened",
        "everyone_closed",
        "session_opened",
        "session_closed",
        "knock_failed",
    ]
    by_kind = {e.kind: e for e in events}
    assert by_kind["ban"].until == 650.0
    assert by_kind["everyone_opened"].until == 230.0
    assert by_kind["everyone_closed"].source is None
    assert by_kind["session_opened"].user == "alice"
    assert by_kind["session_closed"].user is None
    assert by_kind["revoke"].reason == "window ended"
    for event in events:
        assert set(json.loads(event.to_json())) == KEYS


def test_permanent_ban_has_null_until() -> None:
    net = ipaddress.ip_network("192.0.2.0/24")
    actions: list[Action] = [Ban(net, None, "op", 1), Notice("ban", A, detail="x")]
    [event] = hook_events(actions, 5.0)
    assert event.until is None


# -- the runner, driven like the daemon drives it ----------------------------------------------


def drive(runner: HookRunner, until: Callable[[], bool], limit: float) -> None:
    """The daemon's loop in small: wait on the pidfds and the runner's deadline (bounded)."""
    end = time.monotonic() + limit
    with selectors.DefaultSelector() as selector:
        registered: dict[int, int] = {}  # pidfd -> pid: a closed pidfd's number is reused
        while not until():
            now = time.monotonic()
            assert now < end, "the runner did not get there in time"
            current = runner.pidfds()
            for fd, pid in registered.items():
                if current.get(fd) != pid:
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(fd)
            for fd, pid in current.items():
                if registered.get(fd) != pid:
                    selector.register(fd, selectors.EVENT_READ, fd)
            registered = current
            deadline = runner.next_deadline()
            timeout = min(end - now, 0.2 if deadline is None else max(0.0, deadline - now))
            for key, _ in selector.select(timeout):
                runner.on_exit(key.data)
            deadline = runner.next_deadline()
            if deadline is not None and deadline <= time.monotonic():
                runner.on_deadline()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: Callable[[], bool], limit: float) -> bool:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)
    return True


def event(kind: str = "grant") -> HookEvent:
    return HookEvent(kind, 1.0, "192.0.2.7", "ssh", None, None, 31.0)


def recorder(tmp_path: Path, name: str = "rec") -> tuple[list[str], Path]:
    out = tmp_path / f"{name}.jsonl"
    script = tmp_path / f"{name}.py"
    script.write_text(
        f"import sys\nwith open({str(out)!r}, 'ab') as f:\n    f.write(sys.stdin.buffer.read())\n"
    )
    return [sys.executable, str(script)], out


def test_hook_gets_the_event_json_on_stdin(tmp_path: Path) -> None:
    argv, out = recorder(tmp_path)
    runner = HookRunner([Hook(("grant",), tuple(argv), 5.0)], time.monotonic)
    runner.submit([event("grant"), event("ban")])  # ban: not in `on`
    drive(runner, lambda: runner.stats().running == 0, 10.0)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        json.loads(event("grant").to_json())
    ]
    assert runner.stats().started == 1 and runner.stats().failed == 0


def test_hanging_hook_is_killed_at_its_timeout_with_its_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pidfile = tmp_path / "child.pid"
    # The hook forks a grandchild that also hangs: SIGKILL to the group takes both.
    script = (
        "import os, subprocess, sys, time\n"
        "sys.stdin.read()\n"
        "child = subprocess.Popen(['sleep', '1000'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(1000)\n"
    )
    runner = HookRunner([Hook(("grant",), (sys.executable, "-c", script), 0.5)], time.monotonic)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="guardian"):
        runner.submit([event()])
        drive(runner, lambda: runner.stats().running == 0, 10.0)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.0
    assert runner.stats().timed_out == 1
    grandchild = int(pidfile.read_text())
    # Gone, or a zombie waiting for whoever inherited it (the hook itself is dead): not running.
    assert wait_until(lambda: not alive(grandchild), 3.0)
    failures = [r.getMessage() for r in caplog.records if "hook_failed" in r.getMessage()]
    assert len(failures) == 1 and "timed out after 0.5s" in failures[0]


def test_failing_hook_is_logged_once_per_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = HookRunner([Hook(("grant",), ("false",), 5.0)], time.monotonic)
    with caplog.at_level(logging.WARNING, logger="guardian"):
        runner.submit([event(), event()])
        drive(runner, lambda: runner.stats().running == 0, 10.0)
    failures = [r.getMessage() for r in caplog.records if "hook_failed" in r.getMessage()]
    assert failures == ["hook_failed false on grant: exit status 1"] * 2
    assert runner.stats().failed == 2


def test_failure_log_is_rate_limited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runner = HookRunner([Hook(("grant",), ("/nonexistent/hook",), 5.0)], time.monotonic)
    with caplog.at_level(logging.WARNING, logger="guardian"):
        runner.submit([event()] * 50)  # spawn errors: immediate
    failures = [r.getMessage() for r in caplog.records if "hook_failed" in r.getMessage()]
    assert runner.stats().failed == 50
    assert 1 <= len(failures) <= 12  # a burst of 10, then about one a second


def test_concurrency_cap_and_bounded_queue(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = Hook(("grant",), (sys.executable, "-c", "import time; time.sleep(0.3)"), 5.0)
    runner = HookRunner([hook], time.monotonic, max_running=2, max_queued=3)
    with caplog.at_level(logging.WARNING, logger="guardian"):
        runner.submit([event()] * 6)
    stats = runner.stats()
    # 2 start at once, 3 wait in the queue, the sixth is dropped.
    assert (stats.running, stats.queued, stats.dropped) == (2, 3, 1)
    assert any("hook_dropped" in r.getMessage() for r in caplog.records)
    drive(runner, lambda: runner.stats().running == 0 and runner.stats().queued == 0, 10.0)
    assert runner.stats().started == 5 and runner.stats().failed == 0


# -- the recipes -------------------------------------------------------------------------------


def test_sendmail_recipe_pipes_a_mail_to_sendmail_t(tmp_path: Path) -> None:
    captured = tmp_path / "mail.txt"
    fake = tmp_path / "sendmail"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(captured)!r}, 'wb').write(' '.join(sys.argv[1:]).encode() + b'\\n' + "
        "sys.stdin.buffer.read())\n"
    )
    fake.chmod(0o755)
    payload = event("ban").to_json()
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "hook-sendmail"), "root@example.org"],
        input=payload,
        env={**os.environ, "GUARDIAN_SENDMAIL": str(fake)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    args, _, raw = captured.read_bytes().partition(b"\n")
    assert args == b"-t -oi"
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert mail["To"] == "root@example.org"
    assert mail["Subject"].startswith("[ssh-guardian] ")
    assert mail["Subject"].endswith(": ban 192.0.2.7")
    body = mail.get_body()
    assert body is not None
    content = body.get_content()
    assert "kind: ban" in content and "until: " in content
    assert json.loads(content.strip().splitlines()[-1]) == json.loads(payload)


def test_sendmail_recipe_refuses_bad_input(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "hook-sendmail"), "root@example.org"],
        input=b"not json",
        env={**os.environ, "GUARDIAN_SENDMAIL": "/bin/false"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2


def test_webhook_recipe_posts_the_json(tmp_path: Path) -> None:
    received: list[tuple[str, str, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.append(
                (self.path, self.headers.get("Content-Type", ""), self.rfile.read(length))
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        payload = event("grant").to_json()
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "hook-webhook"), url],
            input=payload,
            capture_output=True,
            timeout=30,
            check=False,
        )
        thread.join(timeout=10)
    finally:
        server.server_close()
    assert done.returncode == 0, done.stderr
    [(path, ctype, body)] = received
    assert path == "/hook" and ctype == "application/json"
    assert json.loads(body) == json.loads(payload)


def test_webhook_recipe_fails_on_an_error_answer() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(500)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "hook-webhook"), url],
            input=event().to_json(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        thread.join(timeout=10)
    finally:
        server.server_close()
    assert done.returncode == 1
